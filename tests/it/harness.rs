//! Starts a tenant and a gateway on ephemeral ports; sends requests.

use std::net::SocketAddr;
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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::config::Config;
use tollgate::policy::reload::Policies;
use tollgate::proxy::Gateway;
use tollgate::sandbox::{Received, Sandbox};
use tollgate::server;

pub const TOKEN: &str = "Bearer test-token";

/// A gateway in front of a tenant.
pub struct Harness {
    pub addr: SocketAddr,
    pub tenant: Sandbox,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
    /// The policy directory (empty unless the test writes rules).
    pub policy_dir: tempfile::TempDir,
    pub policies: Arc<Policies>,
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

/// Starts a sandbox tenant on an ephemeral port.
pub async fn start_sandbox() -> (Sandbox, SocketAddr) {
    let tenant = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tenant");
    let addr = listener.local_addr().expect("tenant addr");
    tokio::spawn(server::serve(
        listener,
        Arc::new(tenant.clone()),
        64,
        std::future::pending(),
    ));
    (tenant, addr)
}

impl Harness {
    /// A gateway with default configuration in front of the sandbox.
    pub async fn start() -> Harness {
        Harness::with_config("").await
    }

    /// A gateway configured by `toml` in front of the sandbox.
    pub async fn with_config(toml: &str) -> Harness {
        let (tenant, tenant_addr) = start_sandbox().await;
        Harness::in_front_of(toml, &format!("http://{tenant_addr}"), tenant).await
    }

    /// A gateway judging by these policy files, in front of the sandbox.
    pub async fn with_policies(toml: &str, files: &[(&str, &str)]) -> Harness {
        let (tenant, tenant_addr) = start_sandbox().await;
        Harness::build(toml, &format!("http://{tenant_addr}"), tenant, files).await
    }

    /// A gateway configured by `toml` in front of the tenant at `url`
    /// (`tenant` is the sandbox behind it, if any).
    pub async fn in_front_of(toml: &str, url: &str, tenant: Sandbox) -> Harness {
        Harness::build(toml, url, tenant, &[]).await
    }

    async fn build(toml: &str, url: &str, tenant: Sandbox, files: &[(&str, &str)]) -> Harness {
        let policy_dir = tempfile::tempdir().expect("policy dir");
        for (name, text) in files {
            std::fs::write(policy_dir.path().join(name), text).expect("write policy");
        }
        let env = vec![
            ("TOLLGATE_UPSTREAM_URL".to_owned(), url.to_owned()),
            ("TOLLGATE_LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ];
        let config = Config::load(toml, "test.toml", env).expect("test config");
        let policies = Arc::new(Policies::load(policy_dir.path()).expect("policies load"));
        let gateway = Gateway::new(config, policies.clone()).expect("gateway");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let addr = listener.local_addr().expect("gateway addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, Arc::new(gateway), 64, async {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness {
            addr,
            tenant,
            client,
            stop: Some(stop),
            task: Some(task),
            policy_dir,
            policies,
        }
    }

    /// Asks the server to shut down gracefully.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("gateway answered in time")
            .expect("gateway answered");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Writes raw bytes on a new connection and reads until it closes.
    pub async fn raw(&self, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Requests the tenant received, other than the ones tests make directly.
    pub fn received(&self) -> Vec<Received> {
        self.tenant.received()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown();
    }
}
