//! Logs, traces and metrics.
//!
//! - Logs through `tracing`: readable or JSON lines on stderr, filtered by
//!   `RUST_LOG` (default `info`).
//! - Traces over OTLP (HTTP, protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set, with the standard `OTEL_*` variables; only tollgate's own spans
//!   are exported (not hyper's or the exporter's), and the W3C
//!   `traceparent` of the exchange goes to the tenant.
//! - Prometheus metrics, rendered on the admin listener's `/metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Pretty,
    /// One JSON object per event.
    Json,
}

/// Flushes exported spans when dropped (at exit).
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber: logs to stderr (so commands that print
/// results keep stdout clean) and, when configured, OTLP traces.
pub fn init(format: LogFormat) -> Guard {
    // Postgres' notices ("relation … already exists, skipping" on every
    // migration check) are not the operator's news.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let ansi = std::io::stderr().is_terminal();
    let fmt = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .compact()
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .boxed(),
    };
    let provider = otlp_provider();
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("tollgate"))
            // The exchange and its stages; not the HTTP stack's own spans.
            .with_filter(Targets::new().with_target("tollgate", LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Guard { provider }
}

fn otlp_provider() -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())?;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OTLP exporter not started: {e}");
            return None;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("tollgate")
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Puts the current span's W3C trace context (`traceparent`) on a request
/// to the tenant (nothing when tracing is off).
pub fn inject_trace_context(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// Latency buckets (seconds): 0.5 ms to 10 s.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static METRICS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its
/// handle; `None` if another recorder was installed first.
pub fn metrics() -> Option<PrometheusHandle> {
    METRICS
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("tollgate_audit_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let h = handle.clone();
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(10));
                    loop {
                        tick.tick().await;
                        h.run_upkeep();
                    }
                });
            }
            Some(handle)
        })
        .clone()
}

/// Samples the gauges that are read rather than counted: the runtime's
/// live tasks and, on Linux, the process's resident memory and open
/// descriptors. Called on every scrape, so leaks show on a dashboard.
pub fn sample_process() {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        metrics::gauge!("tollgate_runtime_alive_tasks").set(rt.metrics().num_alive_tasks() as f64);
    }
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
}

/// Resident set size: `VmRSS` of `/proc/self/status`, in kB there.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "tollgate_runtime_alive_tasks",
        "Tasks alive in the async runtime (connections, exchanges, background work)."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the process."
    );
    describe_gauge!("process_open_fds", "Open file descriptors of the process.");
    describe_counter!(
        "tollgate_requests_total",
        "Requests answered, by operation, decision and status class."
    );
    describe_histogram!(
        "tollgate_request_duration_seconds",
        Unit::Seconds,
        "Time from request to answer, by operation."
    );
    describe_histogram!(
        "tollgate_upstream_duration_seconds",
        Unit::Seconds,
        "Time the tenant took to answer, by operation."
    );
    describe_histogram!(
        "tollgate_audit_write_duration_seconds",
        Unit::Seconds,
        "Time to commit one batch of audit events."
    );
    describe_histogram!("tollgate_audit_batch_size", "Audit events per commit.");
    describe_counter!(
        "tollgate_audit_write_failures_total",
        "Audit events that could not be written."
    );
    describe_counter!(
        "tollgate_policy_reloads_total",
        "Policy reloads, by result (success, failure)."
    );
    describe_counter!(
        "tollgate_context_cache_total",
        "Tenant context lookups served from the cache, by result (hit, miss)."
    );
    describe_counter!(
        "tollgate_broker_token_refreshes_total",
        "Management API tokens obtained in broker mode."
    );
    describe_counter!(
        "tollgate_jwks_fetches_total",
        "Fetches of the tenant's signing keys, by result (success, failure)."
    );
    describe_counter!(
        "tollgate_broker_token_fetches_total",
        "Client-credentials requests for a Management API token, by result (success, failure)."
    );
    describe_counter!(
        "tollgate_lock_lost_total",
        "Association locks (Postgres) that could not be proved held, before or after the forward."
    );
    describe_gauge!(
        "tollgate_policy_rules",
        "Rules in force, by mode (enforce, warn, dry-run)."
    );
    describe_gauge!(
        "tollgate_detached_exchanges",
        "Exchanges still running after their caller left (changes on their way to the tenant)."
    );
    describe_counter!(
        "tollgate_abandoned_exchanges_total",
        "Exchanges whose caller left before anything was forwarded: not forwarded."
    );
}
