//! The reviewers' page on the admin listener: its own token, a cookie,
//! every value escaped.

use http::{Method, StatusCode};

use crate::harness::Harness;

async fn reviewer_harness() -> (Harness, String) {
    let h = Harness::with_config(
        "[admin]\ntoken = \"admin-secret\"\nreviewer_token = \"review-secret-0123456\"\n",
    )
    .await;
    let admin = h.app.as_ref().expect("running").admin_addr.to_string();
    (h, admin)
}

fn form(token: &str) -> String {
    format!("token={token}")
}

async fn login(admin: &str, token: &str) -> crate::harness::Answer {
    let req = http::Request::post(format!("http://{admin}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(form(token))))
        .expect("request");
    crate::harness::answer_of(req).await
}

async fn get(admin: &str, path: &str, cookie: &str) -> crate::harness::Answer {
    let req = http::Request::get(format!("http://{admin}{path}"))
        .header("cookie", cookie)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    crate::harness::answer_of(req).await
}

#[tokio::test]
async fn reviewers_log_in_with_their_own_token_and_see_everything_escaped() {
    let (h, admin) = reviewer_harness().await;
    let planted = r#"{"organization_connection_name":"<script>alert(1)</script>"}"#;
    let a = h.patch(planted).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let id = a.audit_id();
    h.audit.flush().await;

    // Without a session: to the login form.
    let a = get(&admin, "/ui/", "").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers["location"], "/ui/login");
    // The admin token is not the reviewer token.
    assert_eq!(
        login(&admin, "admin-secret").await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = login(&admin, "review-secret-0123456").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let cookie = a.headers["set-cookie"].to_str().expect("cookie").to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("pair").to_owned();

    let list = get(&admin, "/ui/?since=1h", &session).await;
    assert_eq!(list.status, StatusCode::OK);
    let html = String::from_utf8_lossy(&list.body);
    assert!(html.contains(&id), "{html}");
    assert_eq!(list.headers["x-frame-options"], "DENY");
    assert!(
        list.headers["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("default-src 'none'")
    );
    // An audited write shows its operation, method and path.
    let role = h
        .send(
            Method::POST,
            "/api/v2/roles",
            Some(r#"{"name":"<b>r</b>"}"#),
        )
        .await;
    h.audit.flush().await;
    let list = get(&admin, "/ui/?since=1h", &session).await;
    let html = String::from_utf8_lossy(&list.body);
    assert!(html.contains(&role.audit_id()), "{html}");
    assert!(html.contains("role.create POST /api/v2/roles"), "{html}");
    // A filter that matches nothing.
    let none = get(&admin, "/ui/?since=1h&decision=deny", &session).await;
    assert!(!String::from_utf8_lossy(&none.body).contains(&id));

    let detail = get(&admin, &format!("/ui/exchanges/{id}"), &session).await;
    let html = String::from_utf8_lossy(&detail.body);
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "nothing runs: {html}");
    assert!(
        html.contains("class=\"changed\""),
        "the changed field is marked"
    );

    let csv = get(&admin, "/ui/export.csv?since=1h", &session).await;
    assert!(
        csv.headers["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/csv")
    );
    assert!(String::from_utf8_lossy(&csv.body).contains(&id));
    let chains = get(&admin, "/ui/chains", &session).await;
    let chains = String::from_utf8_lossy(&chains.body).into_owned();
    assert!(chains.contains("1/1 chains valid"), "{chains}");
    // What `audit verify` would add, the page says too.
    assert!(chains.contains("no signed checkpoints"), "{chains}");
    // A value a spreadsheet would run is exported as text.
    let odd = h
        .patch_at(
            "/api/v2/organizations/%3DHYPERLINK(1)/connections/con_saml",
            "{}",
        )
        .await;
    assert_eq!(odd.status, StatusCode::NOT_FOUND);
    h.audit.flush().await;
    let csv = get(&admin, "/ui/export.csv?since=1h", &session).await;
    let text = String::from_utf8_lossy(&csv.body);
    assert!(text.contains(",'=HYPERLINK(1),"), "{text}");
    // Logging out ends the session on the server: the cookie opens nothing.
    let req = http::Request::post(format!("http://{admin}/ui/logout"))
        .header("cookie", &session)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(
        crate::harness::answer_of(req).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        get(&admin, "/ui/", &session).await.status,
        StatusCode::SEE_OTHER
    );
    // A forged cookie opens nothing.
    let forged = get(&admin, "/ui/", "tollgate_review=0000").await;
    assert_eq!(forged.status, StatusCode::SEE_OTHER);
    let _ = Method::GET;
}

/// The chains page verifies as `audit verify --checkpoint-dir` does:
/// checkpoint rows deleted from the store are caught through the files kept
/// outside it.
#[tokio::test]
async fn the_chains_page_checks_the_checkpoints_kept_as_files() {
    let dir = tempfile::tempdir().expect("dir");
    let (signed, _) = crate::audit::signed_log(crate::harness::Backend::Sqlite, dir.path()).await;
    let sqlite = crate::harness::Backend::Sqlite;
    crate::audit::exec(&signed.store, crate::audit::drop_triggers(sqlite)).await;
    crate::audit::exec(&signed.store, "DELETE FROM audit_checkpoints").await;
    let h = Harness::setup()
        .store_url(&signed.store_url)
        .config(&format!(
            "[admin]\ntoken = \"admin-secret\"\nreviewer_token = \"review-secret-0123456\"\n[audit]\nsigning_key = {:?}\ncheckpoint_interval = \"1h\"\ncheckpoint_dir = {:?}\n",
            dir.path().join("signing.key").display().to_string(),
            dir.path().join("checkpoints").display().to_string(),
        ))
        .start()
        .await;
    let admin = h.app.as_ref().expect("running").admin_addr.to_string();
    let a = login(&admin, "review-secret-0123456").await;
    let cookie = a.headers["set-cookie"].to_str().expect("cookie").to_owned();
    let session = cookie.split(';').next().expect("pair").to_owned();
    let chains = get(&admin, "/ui/chains", &session).await;
    assert_eq!(chains.status, StatusCode::OK);
    let page = String::from_utf8_lossy(&chains.body);
    assert!(page.contains("missing from the store"), "{page}");
    assert!(page.contains("class=\"broken\""), "{page}");
}

/// Guessing the reviewer token: after five wrong tokens an address waits,
/// longer each time — the right token included — and is told how long.
#[tokio::test]
async fn wrong_reviewer_tokens_make_an_address_wait() {
    let (_h, admin) = reviewer_harness().await;
    for i in 0..5 {
        assert_eq!(
            login(&admin, &format!("guess-{i}")).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // The sixth wrong one: counted, and from now on the address waits.
    assert_eq!(
        login(&admin, "guess-5").await.status,
        StatusCode::UNAUTHORIZED
    );
    let locked = login(&admin, "review-secret-0123456").await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS, "{locked:?}");
    assert!(locked.headers.contains_key("retry-after"));
    // Once the wait is over, the right token works.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        login(&admin, "review-secret-0123456").await.status,
        StatusCode::SEE_OTHER
    );
}
