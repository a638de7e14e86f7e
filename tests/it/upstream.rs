//! The tenant connection: TLS with a private CA, failures answered as 502 and
//! 504 in the tenant's shape, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tollgate::BoxBody;
use tollgate::sandbox::Sandbox;
use tollgate::sandbox::seed::*;
use tollgate::server::Handler;

use crate::harness::{Harness, item};

const BODY: Option<&str> = Some(r#"{"show_as_button":false}"#);

/// The answers to a governed PATCH and an ungoverned GET.
async fn governed_and_other(h: &Harness) -> [crate::harness::Answer; 2] {
    [
        h.send(Method::PATCH, &item(), BODY).await,
        h.send(Method::GET, "/api/v2/organizations", None).await,
    ]
}

on_both_backends! {
async fn a_tenant_that_is_down_is_502(backend: Backend) {
    let (_reserved, addr) = crate::harness::refused_address();
    let h = Harness::setup()
        .backend(backend)
        .tenant_at(addr, Sandbox::new())
        .start()
        .await;
    for a in governed_and_other(&h).await {
        assert_eq!(a.status, StatusCode::BAD_GATEWAY);
        assert_eq!(a.error_code(), "tollgate_upstream_error");
        assert_eq!(a.json()["statusCode"], 502);
        assert!(
            !a.json()["message"]
                .as_str()
                .unwrap_or_default()
                .contains("127.0.0.1")
        );
    }
}
}

/// Accepts connections and never answers.
async fn silent_tenant() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

on_both_backends! {
async fn a_tenant_that_stalls_is_504(backend: Backend) {
    let addr = silent_tenant().await;
    let h = Harness::setup()
        .backend(backend)
        .config("[upstream]\ntimeout = \"300ms\"\n")
        .tenant_at(addr, Sandbox::new())
        .start()
        .await;
    for a in governed_and_other(&h).await {
        assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(a.error_code(), "tollgate_upstream_error");
        assert_eq!(a.json()["error"], "Gateway Timeout");
    }
}
}

/// A test CA and a leaf certificate for `localhost` signed by it.
struct Pki {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

fn make_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    Pki {
        ca_pem: ca.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

/// Serves the sandbox over TLS with the given certificate.
async fn tls_tenant(pki: &Pki) -> (Sandbox, SocketAddr) {
    let certs = vec![CertificateDer::from_pem_slice(pki.leaf_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tenant = Sandbox::new();
    let served = tenant.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tenant = served.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tenant = tenant.clone();
                    async move { Ok::<_, Infallible>(tenant.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (tenant, addr)
}

on_both_backends! {
async fn tls_to_the_tenant_with_a_private_ca(backend: Backend) {
    let pki = make_pki();
    let (tenant, addr) = tls_tenant(&pki).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write ca");
    let config = format!(
        "[upstream]\nca_file = {:?}\n",
        ca_file.display().to_string()
    );
    let url = format!("https://localhost:{}", addr.port());
    let h = Harness::setup()
        .backend(backend)
        .config(&config)
        .upstream(&url, tenant)
        .start()
        .await;
    let a = h.send(Method::PATCH, &item(), BODY).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(h.received().len(), 1);
    assert_eq!(h.received()[0].target, item());

    // A tenant whose certificate chains to another CA is refused.
    let other = make_pki();
    std::fs::write(&ca_file, &other.ca_pem).expect("write other ca");
    let h2 = Harness::setup()
        .backend(backend)
        .config(&config)
        .upstream(&url, h.tenant.clone())
        .start()
        .await;
    let a = h2.send(Method::PATCH, &item(), BODY).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.error_code(), "tollgate_upstream_error");
    assert_eq!(h.received().len(), 1, "nothing more reached the tenant");
}
}

/// The sandbox, answering after a delay.
struct Slow {
    inner: Sandbox,
    delay: Duration,
}

impl Handler for Slow {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        tokio::time::sleep(self.delay).await;
        self.inner.handle(req).await
    }
}

on_both_backends! {
async fn shutdown_drains_in_flight_exchanges(backend: Backend) {
    // The tenant holds the change 500 ms before it acts and answers; it
    // records the request on arrival, so the shutdown below lands while the
    // exchange is in flight, not after the tenant answered.
    let mut h = Harness::setup().backend(backend).start().await;
    h.tenant.set_stall(Duration::from_millis(500));
    let gateway = h.addr;

    let h = {
        let in_flight = tokio::spawn({
            let path = item();
            let client =
                hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
            async move {
                let req = Request::patch(format!("http://{gateway}{path}"))
                    .header("authorization", crate::harness::TOKEN)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        br#"{"show_as_button":false}"#,
                    )))
                    .expect("request");
                client.request(req).await.map(|r| r.status())
            }
        });
        // Wait until the request is in the tenant's hands, then stop.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !h.received().iter().any(|r| r.method == Method::PATCH) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the change reached the tenant");
        h.shutdown();
        let status = tokio::time::timeout(Duration::from_secs(5), in_flight)
            .await
            .expect("answered in time")
            .expect("join")
            .expect("answered");
        assert_eq!(status, StatusCode::OK, "the in-flight exchange completed");
        assert_eq!(
            h.tenant.association(ORG_ACME, CON_SAML).expect("exists")["show_as_button"],
            false,
            "and the change was applied"
        );
        h
    };
    let mut h = h;
    tokio::time::timeout(Duration::from_secs(5), h.stopped())
        .await
        .expect("server stopped");
    assert!(
        tokio::net::TcpStream::connect(gateway).await.is_err(),
        "no longer accepting"
    );
}
}

/// The seed PATCH with `body`, as bytes on the wire.
fn raw_patch(body: &str) -> String {
    format!(
        "PATCH {} HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        item(),
        crate::harness::TOKEN,
        body.len()
    )
}

on_both_backends! {
async fn a_caller_that_hangs_up_does_not_cancel_the_exchange(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    use tollgate::audit::query;

    let tenant = Sandbox::new();
    let slow = Slow {
        inner: tenant.clone(),
        delay: Duration::from_millis(300),
    };
    let addr = crate::harness::serve_on_port_0(slow).await;
    let h = Harness::setup().backend(backend).config("").tenant_at(addr, tenant).start().await;

    // The caller sends a change and hangs up before the tenant answers.
    let body = r#"{"show_as_button":false}"#;
    let request = raw_patch(body);
    let mut stream = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);

    // The change still reached the tenant, and the log holds its outcome,
    // not an `unknown`.
    let mut rows = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.audit.flush().await;
        let filter = query::Filter {
            limit: 10,
            ..Default::default()
        };
        rows = query::exchanges(&h.store, &filter).await.expect("query");
        if rows.first().is_some_and(|e| e.outcome != "unknown") {
            break;
        }
    }
    assert_eq!(h.received().len(), 1, "the change reached the tenant");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, "completed", "{rows:?}");
    assert_eq!(rows[0].status, Some(200));
}
}

on_both_backends! {
/// A caller hangs up mid-exchange and the gateway is stopped at once: the
/// stop waits for the exchange, so its outcome is in the log, not
/// `unknown`.
async fn shutdown_waits_for_an_exchange_whose_caller_hung_up(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    use tollgate::audit::query;

    // The tenant takes the change on arrival and answers 500 ms later.
    let mut h = Harness::setup().backend(backend).start().await;
    h.tenant.set_stall(Duration::from_millis(500));
    let body = r#"{"show_as_button":false}"#;
    let request = raw_patch(body);
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    tokio::time::timeout(Duration::from_secs(5), async {
        while !h.received().iter().any(|r| r.method == Method::PATCH) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the change reached the tenant");
    drop(stream);
    // Let the connection close before the stop, so only the exchange is left.
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.shutdown();
    tokio::time::timeout(Duration::from_secs(10), h.stopped())
        .await
        .expect("stopped");
    let filter = query::Filter {
        limit: 10,
        ..Default::default()
    };
    let rows = query::exchanges(&h.store, &filter).await.expect("query");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, "completed", "{backend:?}: {rows:?}");
}
}

/// A handler with a bug.
struct Panics;

impl Handler for Panics {
    async fn handle(&self, _req: Request<Incoming>) -> Response<BoxBody> {
        panic!("a bug in a handler")
    }
}

#[tokio::test]
async fn a_panicking_exchange_is_a_500_in_the_tenant_shape() {
    let addr = crate::harness::serve_on_port_0(Panics).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for _ in 0..2 {
        let resp = client
            .get(
                format!("http://{addr}/api/v2/organizations")
                    .parse()
                    .expect("uri"),
            )
            .await
            .expect("answered, not reset");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["errorCode"], "tollgate_internal_error");
        assert_eq!(json["statusCode"], 500);
    }
}
