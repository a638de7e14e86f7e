//! The `tollgate` binary, as a user runs it.

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs the binary in a new directory, with the repository's `policies/`,
/// a cleared environment but for `env` (no `TOLLGATE_*` of the caller's
/// leaks in, no `./tollgate.toml` is read), ephemeral listen ports (a
/// `serve` that should have failed cannot take 8080), and a deadline (it
/// cannot hang the suite). Nothing it writes lands in the checkout.
fn tollgate(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    // An empty configuration file of its own: a `tollgate.toml` someone
    // left in the repository is never read.
    let config = tempfile::NamedTempFile::new().expect("config");
    let cwd = tempfile::tempdir().expect("dir");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd.path())
        .env_clear()
        .env("TOLLGATE_CONFIG", config.path())
        .env("TOLLGATE_POLICY_DIR", format!("{REPO}/policies"))
        .env("TOLLGATE_LISTEN_ADDR", "127.0.0.1:0")
        .env("TOLLGATE_ADMIN_ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("tollgate finished within 60 s")
        .expect("run tollgate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn curl(addr: &str, body: &str) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::patch(format!(
        "http://{addr}/api/v2/organizations/org_acme/connections/con_saml"
    ))
    .header("authorization", "Bearer sandbox")
    .header("content-type", "application/json")
    .body(http_body_util::Full::new(bytes::Bytes::from(
        body.to_owned(),
    )))
    .expect("request");
    let resp = client.request(req).await.expect("answer");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The README's first command, end to end: serve --sandbox, the two curl
/// examples, SIGTERM, then the log from the command line.
#[tokio::test]
async fn serve_sandbox_judges_records_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("audit.db").display());
    // In a directory of its own: the sandbox enforces its built-in starter set.
    let served = crate::harness::Served::start(
        dir.path(),
        &["--sandbox"],
        &[("TOLLGATE_AUDIT_URL", db.clone())],
    )
    .await;
    let (child, addr) = (served.child, served.addr);

    let (status, body) = curl(&addr, r#"{"organization_access_level":"full"}"#).await;
    assert_eq!(status, 403);
    assert_eq!(body["rules"][0]["id"], "no-full-access");
    let (status, body) = curl(&addr, r#"{"organization_access_level":"limited"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(body["organization_access_level"], "limited");

    crate::harness::terminate(child).await;

    let env = [("TOLLGATE_AUDIT_URL", db.as_str())];
    let out = tollgate(&["audit", "query", "--format", "json"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    assert_eq!(rows[0]["decision"], "allow");
    assert_eq!(
        rows[0]["outcome"], "completed",
        "the last outcome was written before exit"
    );
    assert_eq!(rows[1]["decision"], "deny");
    let out = tollgate(&["audit", "verify"], &env);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("3/3 events valid"),
        "{}",
        text(&out.stdout)
    );
    let out = tollgate(
        &["audit", "query", "--decision", "deny", "--format", "csv"],
        &env,
    );
    assert_eq!(text(&out.stdout).lines().count(), 2);
    let id = rows[1]["exchange_id"].as_str().expect("id");
    let out = tollgate(&["audit", "show", id], &env);
    assert!(text(&out.stdout).contains("\"kind\": \"decision\""));
}

#[test]
fn policy_commands_report_and_exit_as_documented() {
    let out = tollgate(&["policy", "check"], &[]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("ok: 3 rules in 2 files, version "));
    let out = tollgate(&["policy", "test"], &[]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).trim_end().ends_with("passed, 0 failed"));

    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("tests")).expect("mkdir");
    std::fs::write(
        dir.path().join("r.toml"),
        "[[rule]]\nid = \"r\"\ndeny = 'after.show_as_button == false'\nmessage = \"m\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("tests/t.toml"),
        "[[case]]\nname = \"hidden is fine\"\noperation = \"organization_connection.update\"\nbody = { show_as_button = false }\nexpect = \"allow\"\n",
    )
    .expect("write");
    let d = dir.path().to_str().expect("utf-8");
    let out = tollgate(&["policy", "test", d], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL t.toml: hidden is fine: expected allow, got deny (violated: r)"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("0 passed, 1 failed"));

    // expect_rules: among the violated (a second rule firing too is fine);
    // expect_exact_rules: all of them; an expect that is no decision fails.
    std::fs::write(
        dir.path().join("r2.toml"),
        "[[rule]]\nid = \"w\"\nmode = \"warn\"\ndeny = 'after.show_as_button == false'\nmessage = \"m\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("tests/t.toml"),
        "[[case]]\nname = \"subset\"\noperation = \"organization_connection.update\"\nbody = { show_as_button = false }\nexpect = \"deny\"\nexpect_rules = [\"r\"]\n\n[[case]]\nname = \"exact\"\noperation = \"organization_connection.update\"\nbody = { show_as_button = false }\nexpect = \"deny\"\nexpect_exact_rules = [\"r\"]\n\n[[case]]\nname = \"typo\"\noperation = \"organization_connection.update\"\nbody = {}\nexpect = \"denied\"\n",
    )
    .expect("write");
    let out = tollgate(&["policy", "test", d], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok   t.toml: subset"), "{stdout}");
    assert!(
        stdout.contains(r#"FAIL t.toml: exact: expected exactly rules ["r"], got ["r", "w"]"#),
        "{stdout}"
    );
    assert!(
        stdout
            .contains(r#"FAIL t.toml: typo: expect = "denied" is no decision; one of allow, deny"#),
        "{stdout}"
    );
    std::fs::remove_file(dir.path().join("r2.toml")).expect("remove");

    // An empty file beside the rules: reported, exit 1.
    std::fs::write(dir.path().join("signup.toml"), "").expect("write");
    let out = tollgate(&["policy", "check", d], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("error: signup.toml: holds no rule and no exception"),
        "{}",
        text(&out.stdout)
    );
    std::fs::remove_file(dir.path().join("signup.toml")).expect("remove");

    std::fs::write(
        dir.path().join("r.toml"),
        "[[rule]]\nid = \"r\"\ndeny = 'after.x === 1'\nmessage = \"m\"\n",
    )
    .expect("write");
    let out = tollgate(&["policy", "check", d], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("r.toml: rule r: deny: line 1, column"),
        "{}",
        text(&out.stderr)
    );

    let out = tollgate(
        &[
            "policy",
            "explain",
            "--operation",
            "organization_connection.update",
            "--body",
            r#"{"is_signup_enabled":true}"#,
            "--strategy",
            "samlp",
        ],
        &[],
    );
    // A denial exits 1 (an allowed change 0, a bad invocation or a policy
    // set that does not load 2).
    assert_eq!(out.status.code(), Some(1));
    let unjudged = tollgate(
        &[
            "policy",
            "explain",
            "--operation",
            "organization_connection.update",
            "--body",
            "{}",
        ],
        &[("TOLLGATE_POLICY_DIR", "/nonexistent/policies")],
    );
    assert_eq!(unjudged.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("decision: deny"), "{stdout}");
    assert!(
        stdout.contains("signup-on-database-only      enforce  violated"),
        "{stdout}"
    );
}

/// An exception that expired while the set was in force exempts nothing,
/// and the operator is told when the set is loaded (`policy check` refuses
/// it; `serve` loads it, warns, and denies as if it were not there).
#[tokio::test]
async fn serve_warns_of_an_expired_exception_and_denies() {
    let dir = tempfile::tempdir().expect("dir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    std::fs::write(
        policies.join("r.toml"),
        format!(
            r#"{}
[[exception]]
id = "old-migration"
rules = ["no-full-access"]
expires = "2020-01-01T00:00:00Z"
reason = "done long ago"
"#,
            crate::harness::NO_FULL_ACCESS
        ),
    )
    .expect("write");
    let served = crate::harness::Served::start(
        dir.path(),
        &["--sandbox"],
        &[("TOLLGATE_POLICY_DIR", policies.display().to_string())],
    )
    .await;
    let (status, body) = curl(&served.addr, r#"{"organization_access_level":"full"}"#).await;
    assert_eq!(status, 403, "{body}");
    let log = served.log();
    assert!(
        log.contains("has expired") && log.contains("old-migration"),
        "{log}"
    );
    crate::harness::terminate(served.child).await;
}

/// `keys new --signing --out DIR` makes the directory, writes the pair
/// (the private key readable by its owner only), and never overwrites it.
#[test]
fn a_signing_key_pair_is_written_once_into_a_new_directory() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("keys-2026-12");
    let o = out.to_str().expect("utf-8");
    let run = tollgate(&["keys", "new", "--signing", "--out", o], &[]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let public = std::fs::read_to_string(out.join("signing.pub")).expect("public");
    tollgate::audit::signing::Keys::parse(&public).expect("a public key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("signing.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    let again = tollgate(&["keys", "new", "--signing", "--out", o], &[]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("not overwritten"),
        "{}",
        text(&again.stderr)
    );
}

/// `tollgate policy test | head`: a reader that went away ends the command
/// quietly, with success, instead of a panic on stderr.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let config = tempfile::NamedTempFile::new().expect("config");
    let cwd = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(BIN)
        .args(["policy", "test"])
        .current_dir(cwd.path())
        .env_clear()
        .env("TOLLGATE_CONFIG", config.path())
        .env("TOLLGATE_POLICY_DIR", format!("{REPO}/policies"))
        .stdout(writer)
        .output()
        .expect("run tollgate");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{:?} {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let out = tollgate(&["serve"], &[("TOLLGATE_LIMITS_MAX_BODY", "lots")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("TOLLGATE_LIMITS_MAX_BODY"),
        "{}",
        text(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tollgate.toml");
    std::fs::write(&file, "[upstream]\nurl = \"http://tenant.example.com\"\n").expect("write");
    let out = tollgate(
        &["serve", "--config", file.to_str().expect("utf-8")],
        &[("TOLLGATE_AUDIT_URL", "sqlite://:memory:")],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("upstream.url"),
        "{}",
        text(&out.stderr)
    );
    let out = tollgate(&["serve", "--config", "/nonexistent/tollgate.toml"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/tollgate.toml"));
    // A retired-keys file that does not read stops serve, named.
    let out = tollgate(
        &["serve", "--sandbox"],
        &[
            ("TOLLGATE_AUDIT_URL", "sqlite://:memory:"),
            ("TOLLGATE_AUDIT_RETIRED_KEYS", "/nonexistent/retired.pub"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("audit.retired_keys /nonexistent/retired.pub"),
        "{}",
        text(&out.stderr)
    );
    // An in-memory store leaves no lock file where the command ran.
    let stray: Vec<_> = std::fs::read_dir(REPO)
        .expect("repo")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("file:sqlx-in-memory")
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

// `migrate`, `audit verify` (text, `--json`, exit 1 on a break) and
// `policy replay`, from the command line, on a log the binary wrote.
on_both_backends! {
async fn store_commands_migrate_verify_and_replay(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let db = crate::harness::fresh_store_url(backend, dir.path()).await;
    let env = [("TOLLGATE_AUDIT_URL", db.as_str())];
    let out = tollgate(&["migrate"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let name = if db.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    assert!(
        text(&out.stdout).starts_with(&format!("audit store migrated ({name})")),
        "{}",
        text(&out.stdout)
    );
    // Again: nothing to do, and no database notice about it on stderr.
    let out = tollgate(&["migrate"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    let served = crate::harness::Served::start(
        dir.path(),
        &["--sandbox"],
        &[("TOLLGATE_AUDIT_URL", db.clone())],
    )
    .await;
    let (status, _) = curl(&served.addr, r#"{"show_as_button":false}"#).await;
    assert_eq!(status, 200);
    crate::harness::terminate(served.child).await;

    let out = tollgate(&["audit", "verify", "--json"], &env);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["events"], 2, "{report}");

    // A candidate set that forbids hiding connections changes that decision.
    let candidate = tempfile::tempdir().expect("candidate");
    std::fs::write(
        candidate.path().join("r.toml"),
        "[[rule]]\nid = \"keep-buttons\"\ndeny = 'after.show_as_button == false'\nmessage = \"m\"\n",
    )
    .expect("write");
    let c = candidate.path().to_str().expect("utf-8");
    let out = tollgate(&["policy", "replay", c], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("allow -> deny  keep-buttons"), "{stdout}");
    assert!(stdout.trim_end().ends_with("1 would change"), "{stdout}");

    // An edited row: verify says where, and exits 1.
    let store = tollgate::audit::Store::open(&db).await.expect("store");
    let edit = "UPDATE audit_events SET body = replace(body, 'false', 'true') WHERE seq = 1";
    match &store {
        tollgate::audit::Store::Sqlite(pool) => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TRIGGER audit_events_no_update; {edit}"
        )))
        .execute(pool)
        .await
        .map(|_| ()),
        tollgate::audit::Store::Postgres(pool) => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TRIGGER audit_events_no_change ON audit_events; {edit}"
        )))
        .execute(pool)
        .await
        .map(|_| ()),
    }
    .expect("tamper");
    let out = tollgate(&["audit", "verify"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("broken at seq 1"),
        "{}",
        text(&out.stdout)
    );
    let out = tollgate(&["audit", "verify", "--json"], &env);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["breaks"][0]["seq"], 1, "{report}");
}
}

/// `policy test` with rules but no case fails: a guardrail nobody tested.
#[test]
fn policy_test_without_cases_exits_1() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("r.toml"),
        "[[rule]]\nid = \"r\"\ndeny = 'false'\nmessage = \"m\"\n",
    )
    .expect("write");
    let out = tollgate(
        &["policy", "test", dir.path().to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
}

/// `tollgate ARGS` run in `dir`, with no configuration but `env`.
fn tollgate_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let config = tempfile::NamedTempFile::new().expect("config");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("TOLLGATE_CONFIG", config.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run")
}

/// Read commands never create a log, nor report an empty one as clean: run
/// from the wrong directory, `audit verify` fails naming where it looked.
#[test]
fn reading_a_log_that_is_not_there_fails_clearly() {
    let dir = tempfile::tempdir().expect("dir");
    for args in [
        &["audit", "verify"][..],
        &["audit", "query"][..],
        &["approvals", "list"][..],
    ] {
        let out = tollgate_in(dir.path(), args, &[]);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("no audit log at sqlite://tollgate.db"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !dir.path().join("tollgate.db").exists(),
        "no log was created"
    );
    // An existing, empty log: nothing verified is a failure unless allowed.
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    let env = [("TOLLGATE_AUDIT_URL", url.as_str())];
    assert!(tollgate_in(dir.path(), &["migrate"], &env).status.success());
    let out = tollgate_in(dir.path(), &["audit", "verify"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("holds no event"),
        "{}",
        text(&out.stderr)
    );
    let out = tollgate_in(dir.path(), &["audit", "verify", "--allow-empty"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A list cut at its limit says so; a limit of 0 is refused.
#[tokio::test]
async fn a_query_cut_at_its_limit_says_so() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    let h = crate::harness::Harness::setup()
        .store_url(&url)
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(
            h.patch(r#"{"show_as_button":true}"#).await.status,
            http::StatusCode::OK
        );
    }
    h.audit.flush().await;
    let env = [("TOLLGATE_AUDIT_URL", url.as_str())];
    let out = tollgate_in(
        dir.path(),
        &["audit", "query", "--limit", "2", "--format", "jsonl"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 2);
    assert!(
        text(&out.stderr).contains("showing the newest 2 exchanges; more match"),
        "{}",
        text(&out.stderr)
    );
    let out = tollgate_in(
        dir.path(),
        &["audit", "query", "--limit", "3", "--format", "jsonl"],
        &env,
    );
    assert!(
        !text(&out.stderr).contains("more match"),
        "{}",
        text(&out.stderr)
    );
    let out = tollgate_in(dir.path(), &["audit", "query", "--limit", "0"], &env);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--limit must be at least 1"),
        "{}",
        text(&out.stderr)
    );
}

/// `tollgate routes`: every write operation of the registry, with its level
/// and the rules naming it; a rule naming one tollgate records but does not
/// judge yet is refused, saying so.
#[test]
fn routes_lists_every_write_operation_with_its_level() {
    let out = tollgate(&["routes"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(": 236 write operations"), "{stdout}");
    assert!(
        stdout.contains("8 governed, 228 audited, 0 pass, 0 denied"),
        "{stdout}"
    );
    let line = |id: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("{id} in:\n{stdout}"))
            .to_owned()
    };
    let update = line("organization_connection.update");
    assert!(update.starts_with("governed"), "{update}");
    assert!(update.contains("no-full-access"), "{update}");
    let client = line("client.update");
    assert!(client.starts_with("audited"), "{client}");
    assert!(client.contains("PATCH  /api/v2/clients/{id}"), "{client}");

    // routes.other decides the rest.
    let out = tollgate(
        &["routes", "--format", "json"],
        &[("TOLLGATE_ROUTES_OTHER", "deny")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ops = doc["operations"].as_array().expect("operations");
    assert_eq!(ops.len(), 236);
    let levels = |l: &str| ops.iter().filter(|o| o["level"] == l).count();
    assert_eq!((levels("governed"), levels("denied")), (8, 228));
    assert!(
        doc["schema"]["sha256"]
            .as_str()
            .is_some_and(|s| s.len() == 64)
    );

    // One object a line, or CSV; reads too with --all.
    let out = tollgate(&["routes", "--format", "jsonl"], &[]);
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 236);
    let out = tollgate(&["routes", "--format", "csv", "--all"], &[]);
    let csv = text(&out.stdout);
    assert_eq!(
        csv.lines().next(),
        Some("operation,method,path,level,rules")
    );
    assert_eq!(csv.lines().count(), 1 + 406);
    assert!(
        csv.contains("\norganization.list,GET,/api/v2/organizations,pass,\"\"\n"),
        "{csv}"
    );
    // Without a policy directory the levels are still listed, with a warning.
    let out = tollgate(
        &["routes"],
        &[("TOLLGATE_POLICY_DIR", "/nonexistent/policies")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("rules are not shown"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("8 governed, 228 audited"));

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("clients.toml"),
        "[[rule]]\nid = \"c\"\noperations = [\"client.update\"]\ndeny = 'true'\nmessage = \"m\"\n",
    )
    .expect("write");
    let d = dir.path().to_str().expect("utf-8");
    let out = tollgate(&["policy", "check", d], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "\"client.update\" (PATCH /api/v2/clients/{id}) is recorded but not yet judged"
        ),
        "{}",
        text(&out.stderr)
    );
}

/// `tollgate config check`: the configuration in effect, as TOML that
/// loads again, with secrets and URL passwords redacted; a bad value is
/// refused naming the variable it came from.
#[test]
fn config_check_prints_the_configuration_in_effect_without_secrets() {
    let out = tollgate(
        &["config", "check"],
        &[
            ("TOLLGATE_ADMIN_TOKEN", "sekrit-admin-token"),
            (
                "TOLLGATE_AUDIT_URL",
                "postgres://tollgate:pa55word@db/tollgate",
            ),
            ("TOLLGATE_LIMITS_MAX_ELEMENTS", "7"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("sekrit") && !stdout.contains("pa55word"),
        "{stdout}"
    );
    assert!(stdout.contains("TOLLGATE_ADMIN_TOKEN"), "{stdout}");
    let table: toml::Table = toml::from_str(&stdout).expect("TOML");
    assert_eq!(table["admin"]["token"].as_str(), Some("<redacted>"));
    assert_eq!(table["limits"]["max_elements"].as_integer(), Some(7));
    assert_eq!(table["listen"]["addr"].as_str(), Some("127.0.0.1:0"));
    // What it prints loads as a configuration file.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tollgate.toml");
    std::fs::write(&file, &stdout).expect("write");
    let again = tollgate(
        &["--config", file.to_str().expect("utf-8"), "config", "check"],
        &[],
    );
    assert!(again.status.success(), "{}", text(&again.stderr));

    // A misspelled variable is named as the variable, not blamed on a file.
    let typo = tollgate(&["config", "check"], &[("TOLLGATE_LIMITS_MAX_BODDY", "1")]);
    assert!(!typo.status.success());
    assert!(
        text(&typo.stderr).contains(
            "environment variable TOLLGATE_LIMITS_MAX_BODDY: [limits] has no key max_boddy (expected one of `max_body`"
        ),
        "{}",
        text(&typo.stderr)
    );

    let bad = tollgate(
        &["config", "check"],
        &[("TOLLGATE_LIMITS_MAX_ELEMENTS", "many")],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr)
            .contains("environment variable TOLLGATE_LIMITS_MAX_ELEMENTS: expected an integer"),
        "{}",
        text(&bad.stderr)
    );
}

/// `keys new NAME --approver`: an approver's token and the lines that
/// configure it, not a caller's key.
#[test]
fn keys_new_approver_prints_an_approver_token() {
    let out = tollgate(&["keys", "new", "alice", "--approver"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[[admin.approver_tokens]]\nname = \"alice\"\nhash = \""),
        "{stdout}"
    );
    assert!(!stdout.contains("[[identity.keys]]"), "{stdout}");
}

/// A user's error is one line with its causes, even with RUST_BACKTRACE
/// set (backtraces are for panics).
#[test]
fn user_errors_are_one_line_without_a_backtrace() {
    let out = tollgate(
        &["serve"],
        &[
            ("TOLLGATE_LIMITS_MAX_BODY", "lots"),
            ("RUST_BACKTRACE", "1"),
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("Error: "), "{stderr}");
    assert!(stderr.contains("TOLLGATE_LIMITS_MAX_BODY"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// `tollgate completions SHELL` prints a completion script naming every
/// command.
#[test]
fn completions_name_every_command() {
    let out = tollgate(&["completions", "bash"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    for command in [
        "serve", "policy", "audit", "scan", "routes", "config", "approve",
    ] {
        assert!(script.contains(command), "{command} in:\n{script}");
    }
    assert!(script.contains("complete -F _tollgate"), "{script}");
    let zsh = tollgate(&["completions", "zsh"], &[]);
    assert!(
        text(&zsh.stdout).starts_with("#compdef tollgate"),
        "{}",
        text(&zsh.stdout)
    );
}
