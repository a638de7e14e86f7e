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
use http_body_util::BodyExt;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tracing::{debug, error, info, warn};

use crate::BoxBody;

/// How long shutdown waits for in-flight exchanges before it gives up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's address, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

/// In every request's extensions: cancelled when the caller stops waiting
/// for the answer (it hung up, or reset its HTTP/2 stream). The exchange
/// then goes on detached, and decides what of its work still serves
/// anyone: nothing that was not yet forwarded.
#[derive(Clone, Debug, Default)]
pub struct Hangup(tokio_util::sync::CancellationToken);

impl Hangup {
    /// Completes when the caller has left.
    pub async fn left(&self) {
        self.0.cancelled().await;
    }

    /// Whether the caller has left.
    pub fn has_left(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Exchanges one connection may have running, its detached ones included:
/// HTTP/2's own stream limit, which a client resetting streams would
/// otherwise step around (a reset frees the stream, not the work behind it).
pub const MAX_EXCHANGES_PER_CONNECTION: usize = 200;

/// Callers leaving with work started that make a connection look like an
/// attack: this many within [`ABANDON_WINDOW`] (a leaky bucket draining at
/// that rate) closes it (GOAWAY on HTTP/2), as hyper does for streams reset
/// before they start.
const ABANDON_LIMIT: u32 = 100;
const ABANDON_WINDOW: Duration = Duration::from_secs(10);

/// Something that answers requests: the gateway, the sandbox tenant.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<BoxBody>> + Send;
}

/// How many connections a listener serves, and how long they may dawdle.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections served at once. At the cap, the connection idle the
    /// longest is closed to make room; further ones wait in the kernel.
    pub max_connections: usize,
    /// Connections one client address may hold; past it, new ones are
    /// closed at once.
    pub max_per_ip: usize,
    /// How long a connection may take to send a request's headers, and how
    /// long an idle keep-alive connection waits for its next request.
    pub header_timeout: Duration,
}

impl ConnLimits {
    /// `max_connections`, no per-address cap, hyper's 30 s header deadline.
    pub fn new(max_connections: usize) -> ConnLimits {
        ConnLimits {
            max_connections,
            max_per_ip: max_connections,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then stops
/// accepting and waits (up to [`DRAIN_TIMEOUT`]) for open exchanges to end.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let limits = ConnLimits::new(max_connections);
    serve_with(listener, handler, limits, shutdown, None).await;
}

/// As [`serve`], within `limits`, over TLS when `tls` is given (its
/// certificate can be reloaded while serving: each new connection uses the
/// current one).
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
    tls: Option<Arc<crate::tls::ServerTls>>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently runs no header deadline at all; with
    // one, the deadline also ends keep-alive connections left idle.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let accepting = Accepting {
        builder,
        handler,
        tls,
        open: Arc::new(Open::default()),
        stopping,
        idle: limits.header_timeout,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
        // An address past its share is turned away before it can cost
        // anyone else their connection.
        let open = &accepting.open;
        if !open.has_room_for(peer.ip(), limits.max_per_ip) {
            debug!(%peer, "connection refused: too many from this address");
            continue;
        }
        let Some(permit) = slot(&permits, open, shutdown.as_mut()).await else {
            break;
        };
        let Some(conn) = open.admit(peer.ip(), limits.max_per_ip) else {
            debug!(%peer, "connection refused: too many from this address");
            continue;
        };
        accepting.spawn(stream, peer, conn, permit);
    }
    drop(listener);
    info!("draining open connections");
    let _ = stop.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, accepting.open.drained())
        .await
        .is_err()
    {
        warn!("connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}

/// A slot for a new client: a free one, or, at the cap, one made by closing
/// the connection idle the longest (a client that sends nothing, or reads
/// nothing, must not keep the next one out). Excess clients wait in the
/// kernel's accept queue meanwhile. `None`: stopping.
async fn slot(
    permits: &Arc<Semaphore>,
    open: &Open,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(p) = permits.clone().try_acquire_owned() {
        return Some(p);
    }
    open.close_longest_idle();
    tokio::select! {
        p = permits.clone().acquire_owned() => p.ok(),
        () = shutdown => None,
    }
}

/// What every accepted connection is served with.
struct Accepting<H> {
    builder: auto::Builder<TokioExecutor>,
    handler: Arc<H>,
    tls: Option<Arc<crate::tls::ServerTls>>,
    open: Arc<Open>,
    stopping: tokio::sync::watch::Receiver<bool>,
    idle: Duration,
}

impl<H: Handler> Accepting<H> {
    /// Serves one admitted connection on its own task; its slot is given
    /// back when it ends.
    fn spawn(
        &self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        conn: Arc<Conn>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let _ = stream.set_nodelay(true);
        // The connection's slot (and its count against the address) is held
        // by the connection and by each of its exchanges, detached ones
        // included: given back when the last of them ends.
        let slot = Arc::new(Slot {
            open: self.open.clone(),
            conn: conn.clone(),
            _permit: permit,
        });
        let service = service(self.handler.clone(), peer, slot.clone());
        let builder = self.builder.clone();
        let tls = self.tls.clone();
        let stopping = self.stopping.clone();
        let idle = self.idle;
        tokio::spawn(async move {
            // Before its first request a connection may be closed to make
            // room, or by shutdown, whatever stage its handshake is at.
            let mut stop = stopping.clone();
            let opened = tokio::select! {
                io = open_stream(stream, tls, idle) => io,
                () = conn.close.notified() => None,
                _ = stop.wait_for(|stop| *stop) => None,
            };
            let Some(io) = opened else {
                debug!(%peer, "connection closed before its first request");
                drop(slot);
                return;
            };
            let result = run(&builder, TokioIo::new(io), service, &conn, stopping, idle).await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

type Stream = Either<tokio::net::TcpStream, tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// The connection as it is served: plain, or once its TLS handshake is done
/// (`None`: the handshake failed). On a sniffing listener (the sandbox),
/// the first byte tells TLS from plain HTTP.
async fn open_stream(
    stream: tokio::net::TcpStream,
    tls: Option<Arc<crate::tls::ServerTls>>,
    wait: Duration,
) -> Option<Stream> {
    let Some(tls) = tls else {
        return Some(Either::Left(stream));
    };
    if tls.sniffs() && tls.serves_plaintext(first_byte(&stream, wait).await) {
        return Some(Either::Left(stream));
    }
    match tls.accept(stream).await {
        Ok(stream) => Some(Either::Right(stream)),
        Err(e) => {
            debug!(error = %e, "TLS handshake failed");
            None
        }
    }
}

/// The first byte a client sends, without consuming it (`None`: nothing
/// within `wait`).
async fn first_byte(stream: &tokio::net::TcpStream, wait: Duration) -> Option<u8> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0]),
        _ => None,
    }
}

fn service<H: Handler>(
    handler: Arc<H>,
    peer: std::net::SocketAddr,
    slot: Arc<Slot>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<BoxBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<BoxBody>, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let handler = handler.clone();
        let conn = slot.conn.clone();
        // Detached exchanges count against their connection: a client that
        // resets streams cannot run more than its streams' worth of work.
        let crowded =
            conn.busy.load(std::sync::atomic::Ordering::Acquire) >= MAX_EXCHANGES_PER_CONNECTION;
        let busy = conn.busy(slot.clone());
        let running = slot.open.running();
        let hangup = Hangup::default();
        req.extensions_mut().insert(Peer(peer));
        req.extensions_mut().insert(hangup.clone());
        // A caller that hangs up must not cancel the exchange halfway
        // (a change judged and forwarded still gets its outcome
        // recorded): if the connection drops the exchange, it finishes
        // in a task of its own, told that its caller left. It runs inline
        // otherwise; a task per exchange costs a cross-thread hand-off on
        // every request.
        let progress = conn.clone();
        let exchange = AssertUnwindSafe(async move {
            let resp = if crowded {
                too_many_exchanges()
            } else {
                handler.handle(req).await
            };
            drop(busy);
            drop(running);
            // While the answer is being written, each part the client takes
            // counts as activity: an honest slow reader is not idle, a
            // client that stops reading soon is.
            resp.map(|inner| {
                Progress {
                    inner,
                    conn: progress,
                }
                .boxed()
            })
        });
        let exchange = exchange.catch_unwind();
        let exchange = Detach {
            inner: Some(Box::pin(exchange)),
            hangup,
            conn,
        };
        async move {
            Ok::<_, std::convert::Infallible>(exchange.await.unwrap_or_else(|_| {
                error!(%peer, "an exchange panicked");
                internal_error()
            }))
        }
    })
}

/// A connection's slot: its place among `max_connections` and its count
/// against its address, given back when the connection and every exchange
/// it started have ended.
struct Slot {
    open: Arc<Open>,
    conn: Arc<Conn>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.remove(&self.conn);
    }
}

/// How long a connection asked to make room, or idle past its deadline,
/// may take to finish what it is writing before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves one connection until it ends. On shutdown it finishes what is in
/// flight and closes. Chosen to make room, or idle (no exchange running)
/// for `idle`, it closes too, and is dropped if that takes longer than
/// [`CLOSE_GRACE`]: a client that stops reading (an HTTP/2 window of zero,
/// a full socket buffer) cannot hold its slot by never letting the close
/// complete. HTTP/2 has no header deadline of its own; this covers it.
async fn run<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    service: S,
    conn: &Conn,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    idle: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let served = builder.serve_connection_with_upgrades(io, service);
    let mut served = std::pin::pin!(served);
    let stop = tokio::select! {
        result = served.as_mut() => return result,
        _ = stopping.wait_for(|stop| *stop) => true,
        () = conn.close.notified() => false,
        () = conn.idle_for(idle) => false,
    };
    served.as_mut().graceful_shutdown();
    if stop {
        return served.await;
    }
    match tokio::time::timeout(CLOSE_GRACE, served).await {
        Ok(result) => result,
        Err(_) => {
            debug!(ip = %conn.ip, "connection dropped: it did not close in time");
            Ok(())
        }
    }
}

/// The open connections of one listener.
#[derive(Default)]
struct Open {
    conns: std::sync::Mutex<OpenInner>,
    drained: tokio::sync::Notify,
}

#[derive(Default)]
struct OpenInner {
    next: u64,
    by_id: std::collections::HashMap<u64, Arc<Conn>>,
    per_ip: std::collections::HashMap<std::net::IpAddr, usize>,
    /// Exchanges running, on a connection or, their caller gone, on their
    /// own: shutdown waits for them too.
    exchanges: usize,
}

impl OpenInner {
    fn idle(&self) -> bool {
        self.by_id.is_empty() && self.exchanges == 0
    }
}

/// An exchange running, counted until it completes.
struct Running(Arc<Open>);

impl Drop for Running {
    fn drop(&mut self) {
        let mut inner = self.0.inner();
        inner.exchanges -= 1;
        if inner.idle() {
            self.0.drained.notify_waiters();
        }
    }
}

/// One open connection.
struct Conn {
    id: u64,
    ip: std::net::IpAddr,
    /// Exchanges running on it.
    busy: std::sync::atomic::AtomicUsize,
    /// When it last became idle (ms on [`since_start`]'s clock).
    idle_since: std::sync::atomic::AtomicU64,
    /// Asks it to finish what is in flight and close.
    close: tokio::sync::Notify,
    /// Whether it was asked to close to make room (not asked twice).
    closing: std::sync::atomic::AtomicBool,
    /// Callers that left with work started, as a level that drains at
    /// [`ABANDON_LIMIT`] per [`ABANDON_WINDOW`]: (when last noted, in ms on
    /// [`since_start`]'s clock; the level then).
    abandoned: std::sync::Mutex<(u64, f64)>,
}

/// An answer's body that marks its connection active at every part it
/// hands over (hyper asks for the next part only once the client has taken
/// the last).
struct Progress {
    inner: BoxBody,
    conn: Arc<Conn>,
}

impl http_body::Body for Progress {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.conn
                .idle_since
                .store(since_start(), std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a running exchange on its connection, and holds the
/// connection's slot while it runs.
struct Busy(Arc<Conn>, #[allow(dead_code)] Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0.idle_since.store(since_start(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Conn {
    /// Completes once no exchange has run on the connection for `idle`.
    async fn idle_for(&self, idle: Duration) {
        use std::sync::atomic::Ordering;
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            let since = self.idle_since.load(Ordering::Relaxed);
            let now = since_start();
            if self.busy.load(Ordering::Acquire) == 0 && now.saturating_sub(since) >= idle_ms {
                return;
            }
            let left = idle_ms.saturating_sub(now.saturating_sub(since)).max(100);
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
    }

    fn busy(self: &Arc<Self>, slot: Arc<Slot>) -> Busy {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(self.clone(), slot)
    }

    /// Notes a caller that left with work started; past [`ABANDON_LIMIT`]
    /// within [`ABANDON_WINDOW`], asks the connection to close.
    fn abandoned(&self) {
        // A leaky bucket, not a fixed window: no boundary to time bursts
        // around; a steady rate above the limit's fills it too.
        let now = since_start();
        let rate = f64::from(ABANDON_LIMIT) / ABANDON_WINDOW.as_millis() as f64;
        let mut a = self.abandoned.lock().unwrap_or_else(|p| p.into_inner());
        let drained = now.saturating_sub(a.0) as f64 * rate;
        let before = (a.1 - drained).max(0.0);
        *a = (now, before + 1.0);
        if before < f64::from(ABANDON_LIMIT) && a.1 >= f64::from(ABANDON_LIMIT) {
            warn!(ip = %self.ip, "closing a connection whose callers keep leaving with work started (GOAWAY)");
            self.close.notify_one();
        }
    }
}

/// Milliseconds since the first call: a cheap monotonic clock for idleness.
fn since_start() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Open {
    fn inner(&self) -> std::sync::MutexGuard<'_, OpenInner> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `ip` holds fewer than `max_per_ip` connections.
    fn has_room_for(&self, ip: std::net::IpAddr, max_per_ip: usize) -> bool {
        self.inner().per_ip.get(&ip).copied().unwrap_or(0) < max_per_ip
    }

    /// Registers a connection from `ip`, unless that address already holds
    /// `max_per_ip`.
    fn admit(&self, ip: std::net::IpAddr, max_per_ip: usize) -> Option<Arc<Conn>> {
        let mut inner = self.inner();
        let n = inner.per_ip.entry(ip).or_default();
        if *n >= max_per_ip {
            return None;
        }
        *n += 1;
        inner.next += 1;
        let conn = Arc::new(Conn {
            id: inner.next,
            ip,
            busy: std::sync::atomic::AtomicUsize::new(0),
            idle_since: std::sync::atomic::AtomicU64::new(since_start()),
            close: tokio::sync::Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            abandoned: std::sync::Mutex::new((since_start(), 0.0)),
        });
        inner.by_id.insert(conn.id, conn.clone());
        Some(conn)
    }

    fn remove(&self, conn: &Conn) {
        let mut inner = self.inner();
        inner.by_id.remove(&conn.id);
        if let Some(n) = inner.per_ip.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                inner.per_ip.remove(&conn.ip);
            }
        }
        if inner.idle() {
            self.drained.notify_waiters();
        }
    }

    /// Counts an exchange until the returned guard is dropped.
    fn running(self: &Arc<Self>) -> Running {
        self.inner().exchanges += 1;
        Running(self.clone())
    }

    /// Asks the connection idle the longest (no exchange running) to close.
    fn close_longest_idle(&self) {
        use std::sync::atomic::Ordering;
        let inner = self.inner();
        let idle = inner
            .by_id
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.closing.load(Ordering::Acquire))
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        if let Some(c) = idle {
            debug!(ip = %c.ip, "closing an idle connection to make room");
            c.closing.store(true, Ordering::Release);
            c.close.notify_one();
        }
    }

    /// Completes once no connection is open and no exchange runs.
    async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.inner().idle() {
                return;
            }
            notified.await;
        }
    }
}

/// A future that, dropped before it completes (its caller left), finishes
/// in a spawned task, told so through its [`Hangup`].
struct Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    inner: Option<Pin<Box<F>>>,
    hangup: Hangup,
    conn: Arc<Conn>,
}

impl<F> Future for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Pending; // polled after completion: never again ready
        };
        let out = std::task::ready!(inner.as_mut().poll(cx));
        self.inner = None;
        Poll::Ready(out)
    }
}

impl<F> Drop for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            self.hangup.0.cancel();
            self.conn.abandoned();
            let detached = metrics::gauge!("tollgate_detached_exchanges");
            detached.increment(1.0);
            rt.spawn(async move {
                let _ = inner.await;
                detached.decrement(1.0);
            });
        }
    }
}

/// The answer to an exchange over its connection's limit.
fn too_many_exchanges() -> Response<BoxBody> {
    use crate::error::{error_body, json_response};
    let status = http::StatusCode::SERVICE_UNAVAILABLE;
    let body = error_body(
        status,
        "tollgate_too_many_exchanges",
        "this connection has too many exchanges running (streams reset while their work goes on count too); retry later",
    );
    let mut resp = json_response(status, &body).map(crate::full);
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
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
