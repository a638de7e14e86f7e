//! One fetch for all: the broker's token and the JWKS are fetched
//! single-flight. Concurrent waiters share one attempt and its result,
//! success or failure; the attempt runs on its own task, so it ends within
//! its own deadline whoever still waits; a failure is remembered for a
//! back-off (a 429's `Retry-After`, if longer), during which callers are
//! answered at once instead of asking a failing endpoint again.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// The longest `Retry-After` honoured: a tenant asking for more is asked
/// again after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why an attempt failed, and when the endpoint asked to be asked again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub retry_after: Option<Duration>,
}

/// What a caller gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched<T> {
    Ok(T),
    /// This attempt failed.
    Failed(Failure),
    /// A recent attempt failed; not asked again until `retry_in` has passed.
    BackingOff {
        message: String,
        retry_in: Duration,
    },
    /// The attempt did not end within the caller's wait.
    TimedOut,
}

type Attempt<T> = Shared<BoxFuture<'static, Result<T, Failure>>>;

struct State<T> {
    running: Option<Attempt<T>>,
    /// The last failure, and until when it stands.
    failed: Option<(Failure, Instant)>,
    /// When the last attempt ended, whatever its result.
    ended: Option<Instant>,
}

/// Attempts at one fetch, one at a time.
pub struct Flight<T: Clone + Send + Sync + 'static> {
    state: Arc<Mutex<State<T>>>,
    backoff: Duration,
    name: &'static str,
}

impl<T: Clone + Send + Sync + 'static> Flight<T> {
    /// `name` labels `tollgate_{name}_fetches_total{result}`.
    pub fn new(name: &'static str, backoff: Duration) -> Flight<T> {
        Flight {
            state: Arc::new(Mutex::new(State {
                running: None,
                failed: None,
                ended: None,
            })),
            backoff,
            name,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the last attempt ended (success or failure), if one did.
    pub fn last_ended(&self) -> Option<Instant> {
        self.state().ended
    }

    /// The result of the attempt in flight, or of a new one made with
    /// `fetch`, waiting at most `wait`; during a failure's back-off, that
    /// failure at once.
    pub async fn get<F, Fut>(&self, fetch: F, wait: Duration) -> Fetched<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let attempt = {
            let mut state = self.state();
            if let Some((f, until)) = &state.failed {
                let now = Instant::now();
                if now < *until {
                    return Fetched::BackingOff {
                        message: f.message.clone(),
                        retry_in: *until - now,
                    };
                }
            }
            match &state.running {
                Some(a) => a.clone(),
                None => {
                    let a = fetch().boxed().shared();
                    state.running = Some(a.clone());
                    self.settle_when_done(a.clone());
                    a
                }
            }
        };
        match tokio::time::timeout(wait, attempt).await {
            Ok(Ok(v)) => Fetched::Ok(v),
            Ok(Err(f)) => Fetched::Failed(f),
            Err(_) => Fetched::TimedOut,
        }
    }

    /// Drives the attempt on its own task and records how it ended.
    fn settle_when_done(&self, attempt: Attempt<T>) {
        let state = self.state.clone();
        let backoff = self.backoff;
        let name = self.name;
        tokio::spawn(async move {
            let result = attempt.await;
            let now = Instant::now();
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            state.running = None;
            state.ended = Some(now);
            let label = match &result {
                Ok(_) => {
                    state.failed = None;
                    "success"
                }
                Err(f) => {
                    let wait = f
                        .retry_after
                        .map_or(backoff, |r| r.min(MAX_RETRY_AFTER).max(backoff));
                    state.failed = Some((f.clone(), now + wait));
                    "failure"
                }
            };
            metrics::counter!(format!("tollgate_{name}_fetches_total"), "result" => label)
                .increment(1);
        });
    }
}

/// A `Retry-After` in seconds, as a 429 or 503 carries it.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn failing(
        calls: &Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl Future<Output = Result<u32, Failure>> + Send + 'static {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            Err(Failure {
                message: "500".into(),
                retry_after: None,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_one_failing_attempt_then_back_off() {
        let flight = Arc::new(Flight::<u32>::new("test", Duration::from_secs(2)));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        for _ in 0..50 {
            let (f, c) = (flight.clone(), calls.clone());
            waiters.push(tokio::spawn(async move {
                f.get(
                    || failing(&c, Duration::from_millis(100)),
                    Duration::from_secs(10),
                )
                .await
            }));
        }
        for w in waiters {
            assert!(matches!(w.await.expect("join"), Fetched::Failed(_)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt for all");
        tokio::task::yield_now().await;
        // Within the back-off: answered at once, nothing asked.
        let again = flight
            .get(|| failing(&calls, Duration::ZERO), Duration::from_secs(10))
            .await;
        assert!(matches!(again, Fetched::BackingOff { .. }), "{again:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let later = flight
            .get(|| failing(&calls, Duration::ZERO), Duration::from_secs(10))
            .await;
        assert!(matches!(later, Fetched::Failed(_)));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "asked again after the back-off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_waiter_waits_longer_than_its_wait() {
        let flight = Flight::<u32>::new("test", Duration::from_secs(2));
        let calls = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let slow = flight
            .get(
                || failing(&calls, Duration::from_secs(30)),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(slow, Fetched::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // A second waiter joins the same attempt rather than starting one.
        let joined = flight
            .get(|| failing(&calls, Duration::ZERO), Duration::from_secs(5))
            .await;
        assert_eq!(joined, Fetched::TimedOut);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429s_retry_after_is_honoured() {
        let flight = Flight::<u32>::new("test", Duration::from_secs(1));
        let limited = async {
            Err(Failure {
                message: "429".into(),
                retry_after: Some(Duration::from_secs(20)),
            })
        };
        let first = flight.get(|| limited, Duration::from_secs(5)).await;
        assert!(matches!(first, Fetched::Failed(_)));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        match flight.get(|| async { Ok(1) }, Duration::from_secs(5)).await {
            Fetched::BackingOff { retry_in, .. } => assert!(retry_in <= Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(
            flight.get(|| async { Ok(1) }, Duration::from_secs(5)).await,
            Fetched::Ok(1)
        );
    }
}
