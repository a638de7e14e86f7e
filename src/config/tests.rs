use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn an_empty_file_means_defaults() {
    let c = Config::load("", "t", env(&[])).expect("defaults");
    assert_eq!(c.listen.addr.to_string(), "127.0.0.1:8080");
    assert_eq!(c.limits.max_body, 65536);
    assert_eq!(c.upstream.timeout, HumanDuration(Duration::from_secs(10)));
    assert_eq!(c.schema.unknown_fields, UnknownFields::Reject);
    assert_eq!(c.other_routes(&http::Method::GET), OtherRoutes::Forward);
    assert_eq!(c.other_routes(&http::Method::POST), OtherRoutes::Audit);
}

#[test]
fn the_file_sets_keys() {
    let c = Config::load(
        r#"
        [listen]
        addr = "0.0.0.0:9000"
        [upstream]
        url = "https://example.eu.auth0.com"
        timeout = "1500ms"
        [routes]
        other = "deny"
        [limits]
        max_body = 1024
        [schema]
        unknown_fields = "forward"
        "#,
        "t",
        env(&[]),
    )
    .expect("valid");
    assert_eq!(c.listen.addr.port(), 9000);
    assert_eq!(c.upstream.timeout.0, Duration::from_millis(1500));
    assert_eq!(c.other_routes(&http::Method::GET), OtherRoutes::Deny);
    assert_eq!(c.limits.max_body, 1024);
    assert_eq!(c.schema.unknown_fields, UnknownFields::Forward);
}

#[test]
fn environment_overrides_the_file() {
    let c = Config::load(
        "[limits]\nmax_body = 1024\n",
        "t",
        env(&[
            ("TOLLGATE_LIMITS_MAX_BODY", "2048"),
            ("TOLLGATE_LISTEN_ADDR", "127.0.0.1:0"),
            ("TOLLGATE_UPSTREAM_URL", "http://127.0.0.1:1"),
            ("TOLLGATE_ROUTES_OTHER", "forward"),
            ("TOLLGATE_CONFIG", "ignored.toml"),
            ("TOLLGATE_TEST_POSTGRES_URL", "postgres://x"),
            ("PATH", "/bin"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.limits.max_body, 2048);
    assert_eq!(c.listen.addr.port(), 0);
    assert_eq!(c.upstream.url.as_deref(), Some("http://127.0.0.1:1"));
}

fn error(text: &str, vars: &[(&str, &str)]) -> String {
    match Config::load(text, "tollgate.toml", env(vars)) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("accepted: {c:?}"),
    }
}

#[test]
fn errors_name_the_key() {
    let e = error("[listen]\nadr = \"x\"\n", &[]);
    assert!(e.contains("adr"), "{e}");
    let e = error("[limits]\nmax_body = \"big\"\n", &[]);
    assert!(e.contains("max_body"), "{e}");
    let e = error("[upstream]\nurl = \"ftp://x\"\n", &[]);
    assert!(e.contains("upstream.url"), "{e}");
    let e = error("[upstream]\nurl = \"http://tenant.example.com\"\n", &[]);
    assert!(e.contains("upstream.url") && e.contains("https"), "{e}");
    let e = error("[upstream]\ntimeout = \"5 fortnights\"\n", &[]);
    assert!(e.contains("timeout"), "{e}");
    let e = error("[limits]\nmax_body = 0\n", &[]);
    assert!(e.contains("limits.max_body"), "{e}");
    let e = error("[routes]\nother = \"maybe\"\n", &[]);
    assert!(e.contains("other") || e.contains("maybe"), "{e}");
    let e = error("[nope]\n", &[]);
    assert!(e.contains("nope"), "{e}");
    let e = error("", &[("TOLLGATE_LIMITS_MAX_BODY", "lots")]);
    assert!(e.contains("TOLLGATE_LIMITS_MAX_BODY"), "{e}");
    let e = error("", &[("TOLLGATE_LISTN_ADDR", "x")]);
    assert!(e.contains("TOLLGATE_LISTN_ADDR"), "{e}");
    let e = error("", &[("TOLLGATE_LISTEN_PORT", "1")]);
    assert!(e.contains("port"), "{e}");
}

/// API keys are parsed once, into their types: a bad hash or an unknown
/// operation is an error naming it, never a key silently dropped.
#[test]
fn api_keys_are_typed_values() {
    let hash = format!("sha256:{}", "ab".repeat(32));
    let key = |h: &str, ops: &str| {
        format!("[[identity.keys]]\nname = \"ci\"\nhash = \"{h}\"\noperations = [{ops}]\n")
    };
    let e = error(&key("sha256:abc", ""), &[]);
    assert!(e.contains("hash") && e.contains("64 hex digits"), "{e}");
    let e = error(&key(&hash, "\"organization_connection.updat\""), &[]);
    assert!(
        e.contains("operations") && e.contains("unknown operation"),
        "{e}"
    );
    let c = Config::load(
        &key(&hash, "\"organization_connection.update\""),
        "t",
        env(&[]),
    )
    .expect("loads");
    let k = &c.identity.keys[0];
    assert_eq!(k.hash.0, [0xab; 32]);
    assert_eq!(
        k.operations.as_deref(),
        Some(&[crate::route::Operation::OrganizationConnectionUpdate][..])
    );
}

#[test]
fn durations() {
    for (s, d) in [
        ("250ms", Duration::from_millis(250)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("24h", Duration::from_secs(86400)),
        ("30d", Duration::from_secs(30 * 86400)),
        ("7", Duration::from_secs(7)),
    ] {
        assert_eq!(s.parse::<HumanDuration>(), Ok(HumanDuration(d)), "{s}");
    }
    assert!("".parse::<HumanDuration>().is_err());
    assert!("5y".parse::<HumanDuration>().is_err());
    assert!("-5s".parse::<HumanDuration>().is_err());
}

/// An empty token is a mistake, not an open door; reviewers do not share
/// the admin token.
#[test]
fn tokens_are_not_empty_and_not_shared() {
    let e = error("[admin]\nreviewer_token = \"\"\n", &[]);
    assert!(e.contains("admin.reviewer_token"), "{e}");
    let e = error("", &[("TOLLGATE_SCAN_LOG_STREAM_TOKEN", "")]);
    assert!(e.contains("scan.log_stream_token"), "{e}");
    let e = error(
        "[admin]\ntoken = \"same-token-0123456\"\nreviewer_token = \"same-token-0123456\"\n",
        &[],
    );
    assert!(e.contains("must differ"), "{e}");
    // A reviewer token short enough to guess is refused.
    let e = error("[admin]\nreviewer_token = \"review\"\n", &[]);
    assert!(e.contains("at least 16 characters"), "{e}");
    let e = error("[audit]\ncheckpoint_interval = \"0s\"\n", &[]);
    assert!(e.contains("audit.checkpoint_interval"), "{e}");
    for ttl in ["0s", "31d", "99999999d"] {
        let e = error(&format!("[approvals]\nttl = \"{ttl}\"\n"), &[]);
        assert!(e.contains("approvals.ttl"), "{ttl}: {e}");
    }
}

/// `TOLLGATE_APPROVER_TOKEN` is `tollgate approve`'s, not a configuration key.
#[test]
fn the_approver_token_variable_is_not_a_key() {
    Config::load("", "t", env(&[("TOLLGATE_APPROVER_TOKEN", "x")])).expect("loads");
}
