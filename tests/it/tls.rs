//! TLS on the gateway listener: a test CA, client certificates, reload.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tollgate::tls::{ServerTls, TlsFiles};

use crate::harness::Harness;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
                .expect("ca"),
        }
    }

    /// A leaf certificate and key, PEM.
    fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

fn write_server_files(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> TlsFiles {
    let (cert, key) = ca.leaf("localhost");
    std::fs::write(dir.join("cert.pem"), cert).expect("write");
    std::fs::write(dir.join("key.pem"), key).expect("write");
    let client_ca = client_ca.map(|c| {
        std::fs::write(dir.join("client-ca.pem"), c.pem()).expect("write");
        dir.join("client-ca.pem")
    });
    TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca,
    }
}

/// A client trusting `ca`, presenting `identity` if given.
fn client(
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client auth"),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn get(
    c: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    port: u16,
) -> Result<StatusCode, String> {
    let req = Request::get(format!("https://localhost:{port}/api/v2/organizations"))
        .header("authorization", "Bearer t")
        .body(Full::new(Bytes::new()))
        .expect("request");
    c.request(req)
        .await
        .map(|r| r.status())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_gateway_serves_https_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let files = write_server_files(dir.path(), &ca, None);
    let h = Harness::setup().tls(files).start().await;
    let port = h.addr.port();
    assert_eq!(
        get(&client(&ca.pem(), None), port).await,
        Ok(StatusCode::OK)
    );
    // Plain HTTP to the TLS port gets no answer.
    let out = h
        .raw(b"GET /api/v2/organizations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(
        !out.contains("HTTP/1."),
        "no HTTP answer over plain text: {out}"
    );

    // A certificate from another CA is picked up by reload (what SIGHUP
    // does), without a restart.
    let ca2 = Ca::new();
    write_server_files(dir.path(), &ca2, None);
    h.reload().await;
    assert_eq!(
        get(&client(&ca2.pem(), None), port).await,
        Ok(StatusCode::OK)
    );
    assert!(
        get(&client(&ca.pem(), None), port).await.is_err(),
        "the old certificate is gone"
    );

    // A broken file leaves the certificate in force.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").expect("write");
    h.reload().await;
    assert_eq!(
        get(&client(&ca2.pem(), None), port).await,
        Ok(StatusCode::OK)
    );
}

#[tokio::test]
async fn client_certificates_are_required_when_configured() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let clients = Ca::new();
    let files = write_server_files(dir.path(), &ca, Some(&clients));
    let h = Harness::setup().tls(files).start().await;
    let port = h.addr.port();
    assert!(
        get(&client(&ca.pem(), None), port).await.is_err(),
        "no client certificate"
    );
    let stranger = Ca::new();
    assert!(
        get(&client(&ca.pem(), Some(stranger.leaf("ci-bot"))), port)
            .await
            .is_err(),
        "a certificate from another CA"
    );
    assert_eq!(
        get(&client(&ca.pem(), Some(clients.leaf("ci-bot"))), port).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(
        h.received().len(),
        1,
        "only the authenticated client reached the tenant"
    );
}

/// HTTPS clients that offer HTTP/2 get it (ALPN); the admin listener
/// serves HTTPS the same way.
#[tokio::test]
async fn http2_over_alpn_and_an_https_admin_listener() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let files = write_server_files(dir.path(), &ca, None);
    let tls = Arc::new(ServerTls::load(files.clone()).expect("tls"));
    let h = Harness::setup().tls(files).start().await;
    let c = client(&ca.pem(), None);
    let req = Request::get(format!(
        "https://localhost:{}/api/v2/organizations",
        h.addr.port()
    ))
    .header("authorization", "Bearer t")
    .body(Full::new(Bytes::new()))
    .expect("request");
    let resp = c.request(req).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let admin = tollgate::admin::Admin::new(h.store.clone(), h.policies.clone(), None);
    tokio::spawn(tollgate::server::serve_with(
        listener,
        Arc::new(admin),
        tollgate::server::ConnLimits::new(8),
        std::future::pending(),
        Some(tls),
    ));
    let req = Request::get(format!("https://localhost:{port}/healthz"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = c.request(req).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
}

/// `systemctl reload` (SIGHUP) gives the running binary its new
/// certificate, without a restart.
#[tokio::test]
async fn sighup_reloads_the_running_binarys_certificate() {
    let (served, ca, dir) = sandbox_with_tls("LISTEN", &[]).await;
    let port = served.port();
    assert_eq!(
        get(&client(&ca.pem(), None), port).await,
        Ok(StatusCode::OK)
    );
    let ca2 = Ca::new();
    write_server_files(dir.path(), &ca2, None);
    crate::harness::send_signal(&served.child, "HUP");
    let reloaded = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if get(&client(&ca2.pem(), None), port).await == Ok(StatusCode::OK) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        reloaded.is_ok(),
        "the new certificate is served after SIGHUP"
    );
    assert!(
        get(&client(&ca.pem(), None), port).await.is_err(),
        "the old one is gone"
    );
    crate::harness::terminate(served.child).await;
}

/// `serve --sandbox` makes its own CA and serves HTTPS with it, and plain
/// HTTP on the same port: the SDKs and curl both reach it unchanged.
#[tokio::test]
async fn serve_sandbox_serves_https_with_its_own_ca_and_http_on_one_port() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("audit.db").display());
    let served =
        crate::harness::Served::start(dir.path(), &["--sandbox"], &[("TOLLGATE_AUDIT_URL", db)])
            .await;
    let port = served.port();
    let ca =
        std::fs::read_to_string(dir.path().join(".tollgate/sandbox-tls/ca.pem")).expect("the CA");
    // HTTPS, trusting only the sandbox's CA.
    assert_eq!(get(&client(&ca, None), port).await, Ok(StatusCode::OK));
    // Another CA is not trusted.
    assert!(get(&client(&Ca::new().pem(), None), port).await.is_err());
    // Plain HTTP, same port.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = tokio::net::TcpStream::connect(&served.addr)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /api/v2/organizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    crate::harness::terminate(served.child).await;
}

/// Connections stalled half-way through a TLS handshake are closed to make
/// room at the connection cap, like idle ones: they cannot keep others out.
#[tokio::test]
async fn stalled_handshakes_do_not_hold_the_connection_cap() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let files = write_server_files(dir.path(), &ca, None);
    let h = Harness::setup()
        .config("[limits]\nmax_connections = 3\n")
        .tls(files)
        .start()
        .await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(h.addr)
            .await
            .expect("connect");
        // The start of a TLS record, and nothing more.
        s.write_all(b"\x16\x03\x01").await.expect("write");
        stalled.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    assert_eq!(
        get(&client(&ca.pem(), None), h.addr.port()).await,
        Ok(StatusCode::OK)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "a new client waited {:?}",
        started.elapsed()
    );
}

/// `admin.tls_cert` / `admin.tls_key` on the running binary: the admin
/// listener speaks HTTPS only, and the reviewers' session cookie it sets
/// is `Secure`.
#[tokio::test]
async fn the_running_binarys_admin_listener_serves_https_and_a_secure_cookie() {
    let reviewer = (
        "TOLLGATE_ADMIN_REVIEWER_TOKEN",
        "review-secret-0123456".into(),
    );
    let (served, ca, _dir) = sandbox_with_tls("ADMIN", &[reviewer]).await;
    let port = served
        .admin
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("admin port");
    let c = client(&ca.pem(), None);
    let health = Request::get(format!("https://localhost:{port}/healthz"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        c.request(health).await.expect("answer").status(),
        StatusCode::OK
    );
    let login = Request::post(format!("https://localhost:{port}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from("token=review-secret-0123456")))
        .expect("request");
    let resp = c.request(login).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    // Plain HTTP on the admin port gets no HTTP answer.
    let plain = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&served.admin)
            .await
            .expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
    crate::harness::terminate(served.child).await;
}

/// `serve --sandbox` with a certificate from a new CA on one listener
/// (`LISTEN` or `ADMIN`) and these extra variables; the CA, and the
/// directory it all lives in.
async fn sandbox_with_tls(
    listener: &str,
    extra: &[(&str, String)],
) -> (crate::harness::Served, Ca, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let files = write_server_files(dir.path(), &ca, None);
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let (cert, key) = (
        format!("TOLLGATE_{listener}_TLS_CERT"),
        format!("TOLLGATE_{listener}_TLS_KEY"),
    );
    let mut env = vec![
        (cert.as_str(), files.cert.display().to_string()),
        (key.as_str(), files.key.display().to_string()),
        ("TOLLGATE_AUDIT_URL", db),
    ];
    env.extend(extra.iter().cloned());
    let served = crate::harness::Served::start(dir.path(), &["--sandbox"], &env).await;
    (served, ca, dir)
}
