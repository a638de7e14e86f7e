//! Accepting connections: HTTP/1.1 and HTTP/2 (hyper-util's auto builder),
//! a cap on concurrent connections, graceful shutdown that drains in-flight
//! exchanges.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::BoxBody;

/// How long shutdown waits for in-flight exchanges before it gives up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's address, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

/// Something that answers requests: the gateway, the sandbox tenant.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<BoxBody>> + Send;
}

/// Serves `handler` on `listener` until `shutdown` completes, then stops
/// accepting and waits (up to [`DRAIN_TIMEOUT`]) for open exchanges to end.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    serve_tls(listener, handler, max_connections, shutdown, None).await;
}

/// As [`serve`], over TLS when `tls` is given (its certificate can be
/// reloaded while serving: each new connection uses the current one).
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    tls: Option<Arc<crate::tls::ServerTls>>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Wait for a free slot first, so excess connections queue in the
        // kernel instead of costing a task each.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            conn = listener.accept() => match conn {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors, typically: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let handler = handler.clone();
            req.extensions_mut().insert(Peer(peer));
            // A caller that hangs up must not cancel the exchange halfway
            // (a change judged and forwarded still gets its outcome
            // recorded): if the connection drops the exchange, it finishes
            // in a task of its own. It runs inline otherwise; a task per
            // exchange costs a cross-thread hand-off on every request.
            let exchange = AssertUnwindSafe(async move { handler.handle(req).await });
            let exchange = exchange.catch_unwind();
            let exchange = Detach(Some(Box::pin(exchange)));
            async move {
                Ok::<_, std::convert::Infallible>(exchange.await.unwrap_or_else(|_| {
                    error!(%peer, "an exchange panicked");
                    internal_error()
                }))
            }
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Err(e) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    info!("draining open connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}

/// A future that, dropped before it completes, finishes in a spawned task.
struct Detach<F>(Option<Pin<Box<F>>>)
where
    F: Future + Send + 'static,
    F::Output: Send;

impl<F> Future for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(inner) = self.0.as_mut() else {
            return Poll::Pending; // polled after completion: never again ready
        };
        let out = std::task::ready!(inner.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(out)
    }
}

impl<F> Drop for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    fn drop(&mut self) {
        if let Some(inner) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(inner);
        }
    }
}

/// The answer when an exchange panicked: the tenant's error shape,
/// nothing of the cause (that is in the log).
fn internal_error() -> Response<BoxBody> {
    use crate::error::{error_body, json_response};
    let status = http::StatusCode::INTERNAL_SERVER_ERROR;
    let body = error_body(
        status,
        "tollgate_internal_error",
        "tollgate could not complete the exchange",
    );
    json_response(status, &body).map(crate::full)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutdown requested");
}
