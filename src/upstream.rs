//! The client to the tenant: hyper over rustls, one base URL, a deadline on
//! every call.
//!
//! Requests go only to the configured tenant: the target is rebuilt from the
//! base URL and the canonical path, so neither a client's `Host` header nor
//! an absolute-form request target can point tollgate anywhere else.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::BoxBody;

/// A failed call to the tenant. Its details are logged, not sent back.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the tenant did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the tenant could not be reached: {0}")]
    Connect(String),
    #[error("the tenant's answer could not be read: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// What the caller is told: no addresses, no TLS internals.
    pub fn public_message(&self) -> String {
        match self {
            UpstreamError::Timeout(d) => format!("the tenant did not answer within {d:?}"),
            UpstreamError::Connect(_) => "the tenant could not be reached".into(),
            UpstreamError::Protocol(_) => "the tenant's answer could not be read".into(),
        }
    }
}

/// The client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream.url: {0}")]
    Url(String),
    #[error("upstream.ca_file {path}: {message}")]
    CaFile { path: String, message: String },
}

/// The tenant, as tollgate calls it.
#[derive(Clone)]
pub struct Upstream {
    /// When the tenant last answered anything (ms since the Unix epoch, 0:
    /// never): readiness asks whether it was reachable recently.
    last_answer: Arc<AtomicU64>,
    client: Client<HttpsConnector<HttpConnector>, BoxBody>,
    scheme: Scheme,
    authority: Authority,
    /// A path the base URL carries, without its trailing slash.
    prefix: String,
    timeout: Duration,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not
/// the message, so a proxy drops them in both directions.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Removes hop-by-hop headers, including those a `Connection` header names.
/// `Transfer-Encoding` goes too: hyper frames each side itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

impl Upstream {
    /// A client for the tenant at `url` (checked by
    /// [`crate::config::parse_upstream_url`]), trusting the web PKI roots and
    /// the certificates in `ca_file`.
    pub fn new(url: &str, timeout: Duration, ca_file: Option<&Path>) -> Result<Self, SetupError> {
        let uri = crate::config::parse_upstream_url(url).map_err(SetupError::Url)?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| SetupError::Url("must name a host".into()))?;
        let prefix = uri.path().trim_end_matches('/').to_owned();

        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let ca_err = |message: String| SetupError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no certificate found".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SetupError::Url(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // Idle connections are closed 5 to 10 s after their last use (the
        // timer checks every 5 s; without it they would wait for the next
        // checkout) and only a few are kept, so descriptors return to their
        // baseline after a burst.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .build(connector);
        Ok(Upstream {
            last_answer: Arc::new(AtomicU64::new(0)),
            client,
            scheme,
            authority,
            prefix,
            timeout,
        })
    }

    /// The tenant's URI for a path (and query) of the Management API.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.prefix, path_and_query))
            .build()
            .map_err(|e| UpstreamError::Protocol(e.to_string()))
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a request; the deadline covers connecting and the answer's
    /// headers. The answer's body streams afterwards.
    pub async fn send(
        &self,
        mut req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // The client derives Host from the target; a caller's Host must not survive.
        req.headers_mut().remove(header::HOST);
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Protocol(error_chain(&e))),
            Ok(Ok(resp)) => {
                self.last_answer.store(now_ms(), Ordering::Relaxed);
                Ok(resp)
            }
        }
    }

    /// Whether the tenant answered within `recently`; if not, asks it now
    /// (any HTTP answer counts: reachable is not the same as authorised).
    pub async fn reachable(&self, recently: Duration) -> bool {
        let last = self.last_answer.load(Ordering::Relaxed);
        if last > 0 && now_ms().saturating_sub(last) < recently.as_millis() as u64 {
            return true;
        }
        let Ok(uri) = self.uri("/") else { return false };
        let mut req = Request::new(crate::full(Bytes::new()));
        *req.uri_mut() = uri;
        self.send(req).await.is_ok()
    }

    /// Sends a request and reads the whole answer, all within the deadline.
    /// GETs `path_and_query` with `auth`, asking for JSON; the answer
    /// buffered (context lookups, scans).
    pub async fn get_json(
        &self,
        path_and_query: &str,
        auth: Option<&http::HeaderValue>,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let mut req = Request::new(crate::full(Bytes::new()));
        *req.method_mut() = http::Method::GET;
        *req.uri_mut() = self.uri(path_and_query)?;
        if let Some(auth) = auth {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, auth.clone());
        }
        req.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        self.send_buffered(req).await
    }

    pub async fn send_buffered(
        &self,
        req: Request<BoxBody>,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let bytes = match tokio::time::timeout_at(deadline, body.collect()).await {
            Err(_) => return Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(UpstreamError::Protocol(error_chain(&e))),
            Ok(Ok(c)) => c.to_bytes(),
        };
        Ok(Response::from_parts(parts, bytes))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// An error and its causes, on one line, for the log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
