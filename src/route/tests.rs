use super::*;

fn gov(method: Method, path: &str) -> Governed {
    match classify(&method, path, None) {
        Ok(Route::Governed(g)) => g,
        other => panic!("{method} {path}: expected governed, got {other:?}"),
    }
}

#[test]
fn every_operation_is_classified() {
    let cases = [
        (
            Method::POST,
            "/api/v2/organizations/org_1/connections",
            "organization_connection.create",
        ),
        (
            Method::PATCH,
            "/api/v2/organizations/org_1/connections/con_1",
            "organization_connection.update",
        ),
        (
            Method::DELETE,
            "/api/v2/organizations/org_1/connections/con_1",
            "organization_connection.delete",
        ),
        (
            Method::POST,
            "/api/v2/organizations/org_1/enabled_connections",
            "organization_enabled_connection.create",
        ),
        (
            Method::PATCH,
            "/api/v2/organizations/org_1/enabled_connections/con_1",
            "organization_enabled_connection.update",
        ),
        (
            Method::DELETE,
            "/api/v2/organizations/org_1/enabled_connections/con_1",
            "organization_enabled_connection.delete",
        ),
        (Method::POST, "/api/v2/organizations", "organization.create"),
        (
            Method::POST,
            "/api/v2/self-service-profiles/ssp_1/sso-ticket",
            "sso_ticket.create",
        ),
    ];
    for (method, path, op) in cases {
        let g = gov(method, path);
        assert_eq!(g.operation.id(), op);
        assert_eq!(g.path, path, "canonical path of {op}");
    }
}

#[test]
fn tenant_routing_semantics_are_reproduced() {
    let g = gov(
        Method::PATCH,
        "/API/V2/Organizations/org_1/CONNECTIONS/con_1/",
    );
    assert_eq!(g.operation, Operation::OrganizationConnectionUpdate);
    assert_eq!(g.path, "/api/v2/organizations/org_1/connections/con_1");
    assert_eq!(g.connection_id.as_deref(), Some("con_1"));

    let g = gov(
        Method::PATCH,
        "/api/v2/organizations/%6Frg_1/connections/con%5F1",
    );
    assert_eq!(g.id.as_deref(), Some("org_1"));
    assert_eq!(g.path, "/api/v2/organizations/org_1/connections/con_1");

    let g = gov(Method::POST, "/api/v2/%6Frganizations/");
    assert_eq!(g.operation, Operation::OrganizationCreate);
    assert_eq!(g.path, "/api/v2/organizations");
}

#[test]
fn parameters_are_reencoded_canonically() {
    let g = gov(
        Method::DELETE,
        "/api/v2/organizations/acme%20corp/connections/con%7C1",
    );
    assert_eq!(g.id.as_deref(), Some("acme corp"));
    assert_eq!(
        g.path,
        "/api/v2/organizations/acme%20corp/connections/con|1"
    );
}

#[test]
fn dangerous_segments_are_refused_everywhere() {
    let m = Method::PATCH;
    let refused = [
        ("/api/v2/organizations/org_1/connections/..", "dot"),
        (
            "/api/v2/users/../organizations/org_1/connections/con_1",
            "dot",
        ),
        ("/api/v2/organizations/org_1/connections/%2e%2E", "dot"),
        ("/api/v2/organizations/org_1/./connections/con_1", "dot"),
        ("/api/v2/organizations/org_1%2Fconnections/con_1", "slash"),
        (
            "/api/v2/organizations/org_1%5cconnections/con_1",
            "backslash",
        ),
        ("/api/v2//organizations/org_1/connections/con_1", "empty"),
        ("/api/v2/organizations/org_1/connections/con_1//", "empty"),
        ("/api/v2/organizations/%ff/connections/con_1", "utf8"),
        ("/api/v2/organizations/org%00/connections/con_1", "control"),
        ("api/v2/organizations", "origin"),
    ];
    for (path, why) in refused {
        assert!(
            classify(&m, path, None).is_err(),
            "{why}: {path} was accepted"
        );
    }
    assert!(classify(&Method::GET, "/api/v2/users/%2e%2e/x", None).is_err());
}

#[test]
fn unlisted_methods_on_association_paths_are_405() {
    for (m, path, allowed) in [
        (
            Method::PUT,
            "/api/v2/organizations/o/connections/c",
            "GET, HEAD, PATCH, DELETE",
        ),
        (
            Method::POST,
            "/api/v2/organizations/o/enabled_connections/c",
            "GET, HEAD, PATCH, DELETE",
        ),
        (
            Method::PATCH,
            "/api/v2/organizations/o/connections",
            "GET, HEAD, POST",
        ),
        (
            Method::DELETE,
            "/api/v2/organizations/o/enabled_connections",
            "GET, HEAD, POST",
        ),
        (Method::PUT, "/api/v2/organizations", "GET, HEAD, POST"),
        (
            Method::DELETE,
            "/api/v2/self-service-profiles/p/sso-ticket",
            "GET, HEAD, POST",
        ),
    ] {
        // The Allow header names exactly what the route answers.
        match classify(&m, path, None) {
            Err(RouteError::MethodNotAllowed { allow, .. }) => {
                assert_eq!(allow, allowed, "{m} {path}");
            }
            other => panic!("{m} {path}: {other:?}"),
        }
    }
}

#[test]
fn reads_and_unrelated_routes_are_other() {
    for (m, path) in [
        (Method::GET, "/api/v2/organizations/o/connections/c"),
        (Method::GET, "/api/v2/organizations/o/connections"),
        (Method::GET, "/api/v2/organizations"),
        (Method::PATCH, "/api/v2/organizations/o"),
        (Method::PATCH, "/api/v2/clients/abc"),
        (Method::GET, "/api/v2/self-service-profiles/p/sso-ticket"),
        (Method::PATCH, "/api/v2/organizations/o/members/c"),
        (Method::GET, "/"),
    ] {
        assert_eq!(classify(&m, path, None), Ok(Route::Other), "{m} {path}");
    }
}

#[test]
fn query_strings_are_refused_on_governed_routes_only() {
    assert_eq!(
        classify(
            &Method::PATCH,
            "/api/v2/organizations/o/connections/c",
            Some("x=1")
        ),
        Err(RouteError::QueryString)
    );
    assert_eq!(
        classify(&Method::GET, "/api/v2/organizations", Some("page=1")),
        Ok(Route::Other)
    );
}

#[test]
fn path_parameter_lengths() {
    let long = "a".repeat(51);
    let ok = "a".repeat(50);
    assert!(
        classify(
            &Method::PATCH,
            &format!("/api/v2/organizations/{long}/connections/c"),
            None
        )
        .is_err()
    );
    assert!(
        classify(
            &Method::PATCH,
            &format!("/api/v2/organizations/o/connections/{long}"),
            None
        )
        .is_err()
    );
    gov(
        Method::PATCH,
        &format!("/api/v2/organizations/{ok}/connections/{ok}"),
    );
}

#[test]
fn operation_ids_round_trip() {
    for op in Operation::ALL {
        assert_eq!(Operation::from_id(op.id()), Some(op));
    }
    assert_eq!(Operation::from_id("nope"), None);
}

#[test]
fn method_case_variants_on_governed_paths_are_405() {
    for name in ["post", "Post", "pOST", "patch", "delete", "get"] {
        let m = Method::from_bytes(name.as_bytes()).expect("a method token");
        for path in [
            "/api/v2/organizations",
            "/api/v2/organizations/o/connections",
            "/api/v2/organizations/o/enabled_connections/c",
            "/api/v2/self-service-profiles/p/sso-ticket",
        ] {
            assert!(
                matches!(
                    classify(&m, path, None),
                    Err(RouteError::MethodNotAllowed { .. })
                ),
                "{name} {path}"
            );
        }
    }
}

#[test]
fn lengths_are_counted_as_the_tenant_counts_them() {
    // 25 emoji are 50 UTF-16 code units: at the limit; 26 are over it.
    let at = "\u{1F600}".repeat(25);
    let over = "\u{1F600}".repeat(26);
    let path = |id: &str| format!("/api/v2/organizations/{}/connections/c", encode_segment(id));
    assert!(classify(&Method::PATCH, &path(&at), None).is_ok());
    assert!(matches!(
        classify(&Method::PATCH, &path(&over), None),
        Err(RouteError::ParamLength { .. })
    ));
}

#[test]
fn query_values_are_redacted_names_kept() {
    assert_eq!(redact_target("/a/b"), "/a/b");
    assert_eq!(
        redact_target("/x?access_token=eyJhbGciOi.x.y&page=2"),
        "/x?access_token=<redacted>&page=<redacted>"
    );
    assert_eq!(redact_target("/x?eyJsecret"), "/x?<redacted>");
    assert_eq!(redact_target("/x?a=1&&b="), "/x?a=<redacted>&&b=<redacted>");
    let long = "n".repeat(65);
    assert_eq!(redact_target(&format!("/x?{long}=v")), "/x?<redacted>");
    assert_eq!(redact_target("/x?"), "/x?");
}
