//! Starts a tenant and a gateway on ephemeral ports; sends requests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::app::App;
use tollgate::audit::{AuditLog, Store};
use tollgate::config::Config;
use tollgate::policy::reload::Policies;
use tollgate::sandbox::{Received, Sandbox};
use tollgate::server;
use tollgate::tls::TlsFiles;

pub const TOKEN: &str = "Bearer test-token";

/// The seed association's item route: the request most tests send.
pub fn item() -> String {
    use tollgate::sandbox::seed::{CON_SAML, ORG_ACME};
    format!("/api/v2/organizations/{ORG_ACME}/connections/{CON_SAML}")
}

/// Where the audit log is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One storage test, run as two: `NAME::sqlite` and `NAME::postgres`, so a
/// failure names its backend and one backend's failure does not hide the
/// other's.
macro_rules! on_both_backends {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident: Backend) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            async fn run($backend: crate::harness::Backend) $body

            #[tokio::test]
            async fn sqlite() {
                run(crate::harness::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                run(crate::harness::Backend::Postgres).await
            }
        }
    };
}

/// The Postgres server the storage tests use.
pub fn postgres_base_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Every event the audit store at `db` holds, as stored (the canonical
/// text that was hashed), and how many exchanges they belong to.
pub async fn stored_events(db: &str) -> (usize, String) {
    let store = tollgate::audit::Store::open(db).await.expect("store");
    let filter = tollgate::audit::query::Filter {
        limit: 10_000,
        ..Default::default()
    };
    let exchanges = tollgate::audit::query::exchanges(&store, &filter)
        .await
        .expect("query");
    let mut text = String::new();
    for x in &exchanges {
        for row in store.exchange_events(&x.exchange_id).await.expect("rows") {
            text.push_str(&row.body);
            text.push('\n');
        }
    }
    (exchanges.len(), text)
}

/// An address on which nobody listens, kept so for as long as the returned
/// socket lives: bound but not listening, so connections are refused and no
/// other test can take the port meanwhile (unlike binding and dropping).
pub fn refused_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// A fresh, empty audit store URL: a SQLite file in `dir`, or a new schema
/// of the test database. Postgres must be there: a storage test is never
/// skipped for lack of it.
pub async fn fresh_store_url(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("audit.db").display()),
        Backend::Postgres => {
            let base = postgres_base_url();
            let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
            let pool = sqlx::PgPool::connect(&base).await.unwrap_or_else(|e| {
                panic!("PostgreSQL at {base} is required for the storage tests: {e}")
            });
            drop_old_schemas(&pool).await;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&pool)
                .await
                .expect("create schema");
            pool.close().await;
            format!("{base}?options[search_path]={schema}")
        }
    }
}

/// Drops, once per test run, the schemas earlier runs left behind: a test
/// cannot drop its own (it may fail halfway), but its schema's name
/// (`t_` + a UUIDv7) says when it was made, and one over an hour old belongs
/// to no run in progress.
async fn drop_old_schemas(pool: &sqlx::PgPool) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname ~ '^t_[0-9a-f]{32}$'",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for name in names {
            let made_ms = u64::from_str_radix(&name[2..14], 16).unwrap_or(u64::MAX);
            if now_ms.saturating_sub(made_ms) > 3_600_000 {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE"
                )))
                .execute(pool)
                .await;
            }
        }
    })
    .await;
}

/// A gateway in front of a tenant.
pub struct Harness {
    pub addr: SocketAddr,
    pub tenant: Sandbox,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The running gateway, started as `tollgate serve` starts it.
    pub app: Option<App>,
    /// The policy directory (empty unless the test writes rules).
    pub policy_dir: tempfile::TempDir,
    pub policies: Arc<Policies>,
    pub audit: Arc<AuditLog>,
    pub store: Store,
    pub store_url: String,
    /// The tenant's URL.
    pub tenant_url: String,
}

/// How a harness is set up.
pub struct Setup {
    toml: String,
    files: Vec<(String, String)>,
    backend: Backend,
    store_url: Option<String>,
    upstream: Option<(String, Sandbox)>,
    tls: Option<TlsFiles>,
}

impl Setup {
    pub fn config(mut self, toml: &str) -> Setup {
        self.toml = toml.to_owned();
        self
    }

    pub fn policies(mut self, files: &[(&str, &str)]) -> Setup {
        self.files = files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        self
    }

    /// Judges by one policy file holding `rules`.
    pub fn rule(self, rules: &str) -> Setup {
        self.policies(&[("r.toml", rules)])
    }

    /// In front of `tenant`, served at `addr`.
    pub fn tenant_at(self, addr: SocketAddr, tenant: Sandbox) -> Setup {
        self.upstream(&format!("http://{addr}"), tenant)
    }

    pub fn backend(mut self, backend: Backend) -> Setup {
        self.backend = backend;
        self
    }

    /// Writes to this store (shared with another harness).
    pub fn store_url(mut self, url: &str) -> Setup {
        self.store_url = Some(url.to_owned());
        self
    }

    /// Serves HTTPS with the certificate in these files (`listen.tls_*`).
    pub fn tls(mut self, files: TlsFiles) -> Setup {
        self.tls = Some(files);
        self
    }

    pub fn upstream(mut self, url: &str, tenant: Sandbox) -> Setup {
        self.upstream = Some((url.to_owned(), tenant));
        self
    }

    pub async fn start(self) -> Harness {
        let (url, tenant) = match self.upstream {
            Some(u) => u,
            None => {
                let (tenant, addr) = start_sandbox().await;
                (format!("http://{addr}"), tenant)
            }
        };
        let policy_dir = tempfile::tempdir().expect("policy dir");
        for (name, text) in &self.files {
            std::fs::write(policy_dir.path().join(name), text).expect("write policy");
        }
        let store_url = match self.store_url {
            Some(u) => u,
            None => fresh_store_url(self.backend, policy_dir.path()).await,
        };
        let path = |p: &Path| p.display().to_string();
        let tenant_url = url.clone();
        let mut env = vec![
            ("TOLLGATE_UPSTREAM_URL".to_owned(), url),
            ("TOLLGATE_LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("TOLLGATE_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("TOLLGATE_AUDIT_URL".to_owned(), store_url.clone()),
            ("TOLLGATE_POLICY_DIR".to_owned(), path(policy_dir.path())),
            // Tests judge by the rules they write; many write none.
            ("TOLLGATE_POLICY_ALLOW_EMPTY".to_owned(), "true".to_owned()),
        ];
        if let Some(tls) = &self.tls {
            env.push(("TOLLGATE_LISTEN_TLS_CERT".to_owned(), path(&tls.cert)));
            env.push(("TOLLGATE_LISTEN_TLS_KEY".to_owned(), path(&tls.key)));
            if let Some(ca) = &tls.client_ca {
                env.push(("TOLLGATE_LISTEN_CLIENT_CA".to_owned(), path(ca)));
            }
        }
        let config = Config::load(&self.toml, "test.toml", env).expect("test config");
        let app = App::start(config, false).await.expect("gateway starts");
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness {
            addr: app.addr,
            tenant,
            client,
            policy_dir,
            policies: app.policies.clone(),
            audit: app.audit.clone(),
            store: app.store.clone(),
            store_url,
            tenant_url,
            app: Some(app),
        }
    }
}

/// An answer, as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `errorCode` of a tollgate or tenant error body.
    pub fn error_code(&self) -> String {
        self.json()["errorCode"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn audit_id(&self) -> String {
        self.headers
            .get("x-tollgate-audit-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request on a new client, under a deadline.
pub async fn answer_of(req: Request<Full<Bytes>>) -> Answer {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    answer_on(&client, req).await
}

/// Sends one request on `client`, under a deadline; the whole answer.
async fn answer_on(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Serves a handler on an ephemeral port until the test ends.
pub async fn serve_on_port_0<H: server::Handler>(handler: H) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        Arc::new(handler),
        64,
        std::future::pending(),
    ));
    addr
}

/// A `tollgate serve` process, with what it logged so far.
pub struct Served {
    pub child: tokio::process::Child,
    pub addr: String,
    pub admin: String,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The value of `key=` in a log line.
fn log_field(line: &str, key: &str) -> Option<String> {
    line.split(&format!(" {key}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

impl Served {
    /// Runs `tollgate serve ARGS` in `dir` with a cleared environment but
    /// for `env` (and ephemeral listen and admin ports); waits until it
    /// listens.
    pub async fn start(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Served {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = serve_command(dir, args, env);
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tollgate");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        let (addr, admin) = tokio::time::timeout(Duration::from_secs(30), async {
            let mut admin = None;
            while let Some(line) = lines.next_line().await.expect("read") {
                seen.lock().expect("log").push(line.clone());
                if line.contains("admin listening") {
                    admin = log_field(&line, "addr");
                }
                if line.contains("tollgate listening")
                    && let Some(addr) = log_field(&line, "addr")
                {
                    return (addr, admin.unwrap_or_default());
                }
            }
            let log = seen.lock().expect("log").join("\n");
            panic!("tollgate exited before listening:\n{log}");
        })
        .await
        .expect("listening in time");
        // Keep reading the log so the process never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.lock().expect("log").push(line);
            }
        });
        Served {
            child,
            addr,
            admin,
            log,
        }
    }

    /// `tollgate serve` in front of the tenant at `tenant`, with the starter
    /// policies, a SQLite log in a new directory (returned with the store's
    /// URL; the directory lives as long as it does) and these extra
    /// variables.
    pub async fn in_front_of(
        tenant: SocketAddr,
        extra: &[(&str, &str)],
    ) -> (Served, tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("dir");
        let db = format!("sqlite://{}", dir.path().join("a.db").display());
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let mut env = vec![
            ("TOLLGATE_UPSTREAM_URL", format!("http://{tenant}")),
            ("TOLLGATE_AUDIT_URL", db.clone()),
            ("TOLLGATE_POLICY_DIR", policies.display().to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let served = Served::start(dir.path(), &[], &env).await;
        (served, dir, db)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// PATCHes `path` on the running binary with `body`.
    pub async fn patch(&self, path: &str, body: &str) -> Answer {
        Harness::client_send(&self.addr, Method::PATCH, path, body).await
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }
}

/// The rule most tests judge by, as a policy file spells it.
pub const NO_FULL_ACCESS: &str = r#"
[[rule]]
id = "no-full-access"
deny = 'after.organization_access_level == "full"'
message = "no full access"
"#;

/// `tollgate serve ARGS` in `dir`, with a cleared environment but for `env`
/// (after ephemeral listen and admin ports and `RUST_LOG=info`, so `env`
/// can override them), killed if dropped.
fn serve_command(dir: &Path, args: &[&str], env: &[(&str, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("serve")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("TOLLGATE_LISTEN_ADDR", "127.0.0.1:0")
        .env("TOLLGATE_ADMIN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `tollgate serve ARGS` in `dir` with a cleared environment but for
/// `env`, expecting it to exit: its status and what it logged.
pub async fn serve_exits(
    dir: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> (std::process::ExitStatus, String) {
    let mut cmd = serve_command(dir, args, env);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("exited in time")
        .expect("run tollgate");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends `signal` (`HUP`, `TERM`) to a running `tollgate serve`.
pub fn send_signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// Sends SIGTERM and waits for a successful exit.
pub async fn terminate(mut child: tokio::process::Child) {
    send_signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stopped in time")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

/// Starts a sandbox tenant on an ephemeral port.
pub async fn start_sandbox() -> (Sandbox, SocketAddr) {
    let tenant = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tenant");
    let addr = listener.local_addr().expect("tenant addr");
    tokio::spawn(server::serve(
        listener,
        Arc::new(tenant.clone()),
        256,
        std::future::pending(),
    ));
    (tenant, addr)
}

impl Harness {
    pub fn setup() -> Setup {
        Setup {
            toml: String::new(),
            files: Vec::new(),
            backend: Backend::Sqlite,
            store_url: None,
            upstream: None,
            tls: None,
        }
    }

    /// A gateway with default configuration in front of the sandbox.
    pub async fn start() -> Harness {
        Harness::setup().start().await
    }

    /// A gateway configured by `toml` in front of the sandbox.
    pub async fn with_config(toml: &str) -> Harness {
        Harness::setup().config(toml).start().await
    }

    /// A gateway judging by these policy files, in front of the sandbox.
    pub async fn with_policies(toml: &str, files: &[(&str, &str)]) -> Harness {
        Harness::setup().config(toml).policies(files).start().await
    }

    /// A gateway configured by `toml`, judging by `rule`, in front of the
    /// sandbox.
    pub async fn with_rule(toml: &str, rule: &str) -> Harness {
        Harness::setup().config(toml).rule(rule).start().await
    }

    /// A gateway configured by `toml` in front of the tenant at `url`
    /// (`tenant` is the sandbox behind it, if any).
    pub async fn in_front_of(toml: &str, url: &str, tenant: Sandbox) -> Harness {
        Harness::setup()
            .config(toml)
            .upstream(url, tenant)
            .start()
            .await
    }

    /// Asks the server to shut down gracefully.
    pub fn shutdown(&mut self) {
        if let Some(app) = &self.app {
            app.shutdown.cancel();
        }
    }

    /// What SIGHUP does: reloads policies and certificates.
    pub async fn reload(&self) {
        if let Some(app) = &self.app {
            app.reload().await;
        }
    }

    /// Waits until the server has stopped (after [`Harness::shutdown`]).
    pub async fn stopped(&mut self) {
        if let Some(app) = self.app.take() {
            app.stopped().await;
        }
    }

    /// PATCHes the seed association ([`item`]) with `body`.
    pub async fn patch(&self, body: &str) -> Answer {
        self.patch_at(&item(), body).await
    }

    /// PATCHes the seed association with `body`, presenting `authorization`.
    pub async fn patch_as(&self, authorization: &str, body: &[u8]) -> Answer {
        let headers = [
            ("authorization", authorization),
            ("content-type", "application/json"),
        ];
        self.send_with(Method::PATCH, &item(), &headers, body).await
    }

    /// PATCHes `path` with `body`.
    pub async fn patch_at(&self, path: &str, body: &str) -> Answer {
        self.send(Method::PATCH, path, Some(body)).await
    }

    /// Sends a request with a bearer token and, when `body` is given, a JSON
    /// content type.
    pub async fn send(&self, method: Method, path: &str, body: Option<&str>) -> Answer {
        let mut headers = vec![("authorization", TOKEN)];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.send_with(method, path, &headers, body.unwrap_or_default().as_bytes())
            .await
    }

    /// Sends a request with exactly these headers and body bytes.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request");
        answer_on(&self.client, req).await
    }

    /// Sends a request with a bearer token and a JSON body to a gateway at
    /// `addr` (a spawned `tollgate serve`).
    pub async fn client_send(addr: &str, method: Method, path: &str, body: &str) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("authorization", TOKEN)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .expect("request");
        answer_of(req).await
    }

    /// GETs `path` from `addr` (an admin listener).
    pub async fn client_get(addr: &str, path: &str) -> Answer {
        let req = Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        answer_of(req).await
    }

    /// Sends `body` (JSON) to `addr` with an `Authorization` header.
    pub async fn client_send_with(
        addr: &str,
        method: Method,
        path: &str,
        body: &str,
        authorization: &str,
    ) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        answer_of(req).await
    }

    /// The tenant's address.
    pub fn tenant_addr(&self) -> SocketAddr {
        self.tenant_url
            .trim_start_matches("http://")
            .parse()
            .expect("the tenant's address")
    }

    /// GETs `path` from `addr` with an `Authorization` header.
    pub async fn client_get_with(addr: &str, path: &str, authorization: &str) -> Answer {
        let req = Request::get(format!("http://{addr}{path}"))
            .header("authorization", authorization)
            .body(Full::new(Bytes::new()))
            .expect("request");
        answer_of(req).await
    }

    /// Writes raw bytes on a new connection and reads until it closes.
    pub async fn raw(&self, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Requests the tenant received.
    pub fn received(&self) -> Vec<Received> {
        self.tenant.received()
    }

    /// How many `method` requests reached the tenant.
    pub fn forwarded(&self, method: Method) -> usize {
        self.received()
            .iter()
            .filter(|r| r.method == method)
            .count()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits until a session of the gateway whose store URL set
/// `application_name = app` waits on a table lock (its audit commit held
/// up by a test).
pub async fn until_a_commit_waits(admin: &sqlx::PgPool, app: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(app)
        .fetch_one(admin)
        .await
        .expect("activity");
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the decision never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
