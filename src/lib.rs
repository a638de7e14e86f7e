//! tollgate: a policy-enforcing audit gateway for the Auth0 Management API.
//!
//! # Layout
//!
//! - [`cli`]: the command line; [`config`]: `tollgate.toml` and its
//!   environment overrides, parsed once into typed values; [`app`]: starts
//!   and stops everything `serve` runs (the tests start it the same way).
//! - [`server`]: accepting connections (HTTP/1.1, HTTP/2), connection
//!   limits, graceful shutdown; [`tls`]: the listeners' certificates.
//! - [`proxy`]: the request pipeline, one method per phase, carrying an
//!   [`exchange::Exchange`]. A governed request is classified by [`route`],
//!   its caller named by [`identity`], its body read by [`body`] and
//!   validated by [`schema`] (the association's fields are declared in
//!   [`association`]), its associations locked by [`lock`], the tenant state
//!   its rules read fetched by [`context`], judged by [`policy`], recorded by
//!   [`audit`], then forwarded as judged by [`upstream`] and the tenant's
//!   answer judged again; everything else passes through under
//!   `routes.other`.
//! - [`error`]: every answer tollgate writes itself, in the tenant's shape,
//!   and the decision each refusal is recorded with.
//! - [`admin`]: the admin listener (health, metrics, the audit and policy API).
//! - [`sandbox`]: the simulated tenant behind `serve --sandbox`.
//! - [`telemetry`]: logs, traces, metrics.
//!
//! A request's path: client → `server` → `proxy` (screen → classify →
//! identify → read body → validate → lock the associations → fetch context
//! → judge → record → forward → post-check → record → answer) → tenant.
//! docs/ARCHITECTURE.md has the chart and where to add what.

pub mod admin;
pub mod app;
pub mod association;
pub mod audit;
pub mod body;
pub mod cli;
pub mod config;
pub mod context;
pub mod error;
pub mod exchange;
pub mod identity;
pub mod lock;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod route;
pub mod sandbox;
pub mod scan;
pub mod schema;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod ui;
pub mod upstream;

use bytes::Bytes;
use http_body_util::BodyExt;

/// An error inside a body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response tollgate handles.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub fn full(bytes: Bytes) -> BoxBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed()
}

impl server::Handler for proxy::Gateway {
    async fn handle(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<BoxBody> {
        proxy::Gateway::handle(self, req).await
    }
}
