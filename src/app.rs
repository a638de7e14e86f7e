//! One way to run tollgate: `tollgate serve` and the test harness both
//! start it with [`App::start`] from a [`Config`], and stop it through its
//! one shutdown token.
//!
//! Started: the sandbox tenant (if asked), the policy set and its watcher,
//! the audit store (claimed) and its writer, the listener certificates, the
//! admin listener and the gateway's listener. Stopped: both listeners drain,
//! then the audit log writes what is still queued.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::audit::{self, AuditLog, Store};
use crate::config::Config;
use crate::policy::reload::{Policies, Watch};
use crate::proxy::Gateway;
use crate::sandbox::Sandbox;
use crate::server;
use crate::tls::{ServerTls, TlsFiles};

/// A running tollgate.
pub struct App {
    /// The gateway's address.
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    pub policies: Arc<Policies>,
    pub audit: Arc<AuditLog>,
    pub store: Store,
    /// Cancelled: both listeners stop accepting and drain.
    pub shutdown: CancellationToken,
    /// `serve --sandbox` without `listen.tls_*`: the CA clients trust to
    /// reach the gateway over HTTPS (plain HTTP is served on the same port).
    pub sandbox_ca: Option<std::path::PathBuf>,
    /// `serve --sandbox`: the simulated tenant's own URL (to scan it, or
    /// change it "outside" tollgate).
    pub sandbox_tenant: Option<String>,
    reloader: Reloader,
    gateway: JoinHandle<()>,
    admin: JoinHandle<()>,
    _watch: Option<Watch>,
    _claim: Option<std::fs::File>,
}

impl App {
    /// Starts everything `config` describes. `sandbox`: in front of a
    /// simulated tenant started here, enforcing the built-in starter set
    /// where there is no policy directory.
    pub async fn start(mut config: Config, sandbox: bool) -> anyhow::Result<App> {
        // The route registry is parsed now, not on the first write that
        // needs it (a few milliseconds, once).
        let _ = crate::registry::registry();
        let sandbox_tenant = if sandbox {
            let url = start_sandbox().await?;
            config.upstream.url = Some(url.clone());
            // The sandbox accepts any token: its scans need none configured.
            if config.scan.token.is_none() {
                config.scan.token = Some(crate::config::Secret::new("sandbox"));
            }
            Some(url)
        } else {
            None
        };
        let policies = Arc::new(load_policies(&config, sandbox)?);
        let watch = watch(&policies);
        let store = Store::open(&config.audit.url).await?;
        let claim = audit::store::claim(&config.audit.url)?;
        let audit = Arc::new(
            AuditLog::start_signed(
                store.clone(),
                crate::audit::writer::MAX_BATCH,
                signer(&config)?,
            )
            .await?,
        );
        info!(
            store = store.backend(),
            url = %audit::redact_url(&config.audit.url),
            chain = audit.chain_id(),
            "audit log open"
        );
        let (listen_tls, sandbox_ca) = listen_tls(&config, sandbox)?;
        let a = &config.admin;
        let admin_tls = tls_for("admin", &a.tls_cert, &a.tls_key, &None)?;
        let shutdown = CancellationToken::new();
        let gateway = Gateway::new(config.clone(), policies.clone(), audit.clone())?;
        let (admin_addr, admin) = start_admin(
            &config,
            &store,
            &policies,
            &gateway,
            &audit,
            admin_tls.clone(),
            &shutdown,
        )
        .await?;
        let (addr, gateway) =
            start_gateway(&config, gateway, listen_tls.clone(), &shutdown).await?;
        if let Some(every) = config.scan.interval {
            scan_every(
                every.0,
                config.clone(),
                policies.clone(),
                audit.clone(),
                &shutdown,
            );
        }
        Ok(App {
            addr,
            admin_addr,
            policies: policies.clone(),
            audit,
            store,
            shutdown,
            sandbox_ca,
            sandbox_tenant,
            reloader: Reloader {
                policies: Arc::clone(&policies),
                tls: [listen_tls, admin_tls].into_iter().flatten().collect(),
            },
            gateway,
            admin,
            _watch: watch,
            _claim: claim,
        })
    }

    /// What SIGHUP does: reloads the policy set and the listeners'
    /// certificates. What does not load leaves what is in force.
    pub async fn reload(&self) {
        self.reloader.reload().await;
    }

    /// The one signal task: SIGTERM or SIGINT cancel the shutdown token,
    /// SIGHUP reloads. `signals` were listened for before the listeners
    /// opened, so a signal sent as soon as they answer is not lost.
    pub fn on_signals(&self, mut signals: Signals) -> JoinHandle<()> {
        let reloader = self.reloader.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            while signals.next().await == Signal::Reload {
                info!("SIGHUP: reloading policies and certificates");
                reloader.reload().await;
            }
            info!("shutdown requested");
            shutdown.cancel();
        })
    }

    /// Waits until both listeners have stopped (after the shutdown token is
    /// cancelled), then writes the outcomes still queued.
    pub async fn stopped(mut self) {
        let _ = (&mut self.gateway).await;
        // The admin listener records too (the log stream): drained first.
        let _ = (&mut self.admin).await;
        // Outcomes of the last exchanges are still queued: write them, and
        // sign the chain's head as final.
        self.audit.close().await;
        info!("stopped");
    }
}

/// What a reload touches: the policy set (if read from a directory) and
/// the listeners' certificates.
#[derive(Clone)]
struct Reloader {
    policies: Arc<Policies>,
    tls: Vec<Arc<ServerTls>>,
}

impl Reloader {
    async fn reload(&self) {
        if self.policies.dir().is_some() {
            let _ = self.policies.reload().await;
        }
        for t in &self.tls {
            match t.reload() {
                Ok(()) => info!("TLS certificate reloaded"),
                Err(e) => warn!(error = %e, "TLS certificate not reloaded; the previous one stays"),
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The writer's signer, with `audit.signing_key`.
pub fn signer(config: &Config) -> anyhow::Result<Option<crate::audit::writer::Signer>> {
    // A key file that does not read is a mistake found now, not when an
    // auditor verifies.
    let configured = crate::audit::signing::Keys::configured(&config.audit)?;
    let Some(path) = &config.audit.signing_key else {
        warn!(
            "audit.signing_key is not set: the chains' heads are not signed, so one who can write the store and recomputes the hashes can rewrite or shorten the log unseen (tollgate keys new --signing)"
        );
        return Ok(None);
    };
    let key = crate::audit::signing::SigningKey::load(path)?;
    if let Some(dir) = &config.audit.checkpoint_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("audit.checkpoint_dir {}: {e}", dir.display()))?;
    }
    info!(key = %key.public().key_id(), "the chain's head is signed");
    let keys = crate::audit::signing::Keys::from(key.public());
    let keys = match configured {
        Some(configured) => keys.and(configured),
        None => keys,
    };
    Ok(Some(crate::audit::writer::Signer {
        key,
        interval: config.audit.checkpoint_interval.0,
        dir: config.audit.checkpoint_dir.clone(),
        keys,
    }))
}

/// Scans the tenant now and every `every` until shutdown: each scan
/// recorded, its enforce violations in `tollgate_scan_violations`.
fn scan_every(
    every: std::time::Duration,
    config: Config,
    policies: Arc<Policies>,
    audit: Arc<AuditLog>,
    shutdown: &CancellationToken,
) {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let policy = policies.current();
            let store = audit.store().clone();
            let log = crate::scan::outside::Log {
                store: &store,
                audit: &audit,
            };
            match crate::scan::run(&config, &policy, &[], None, &log).await {
                Ok(report) => {
                    let found = report.count(crate::policy::Mode::Enforce);
                    metrics::gauge!("tollgate_scan_violations").set(found as f64);
                    info!(scan = %report.id, violations = found, associations = report.associations, tenant_calls = report.tenant_calls, "scan done");
                    if let Err(e) = audit.record(report.event()).await {
                        warn!(error = %e, "scan not recorded");
                    }
                }
                Err(e) => {
                    metrics::counter!("tollgate_scan_failures_total").increment(1);
                    warn!(error = %e, "scan failed");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {},
                () = shutdown.cancelled() => return,
            }
        }
    });
}

async fn start_sandbox() -> anyhow::Result<String> {
    let tenant = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = tenant.local_addr()?;
    tokio::spawn(server::serve(
        tenant,
        Arc::new(Sandbox::new()),
        1024,
        std::future::pending(),
    ));
    info!(%addr, "sandbox tenant listening");
    Ok(format!("http://{addr}"))
}

async fn start_admin(
    config: &Config,
    store: &Store,
    policies: &Arc<Policies>,
    gateway: &Gateway,
    audit: &Arc<AuditLog>,
    tls: Option<Arc<ServerTls>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(config.admin.addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin.addr {}: {e}", config.admin.addr))?;
    let addr = listener.local_addr()?;
    info!(%addr, tls = tls.is_some(), "admin listening");
    if config.admin.token.is_none() {
        warn!("admin.token is not set: the /v1 admin API answers 401");
    }
    // The recorder is installed here (with the admin listener): the
    // policy gauges set at load are set again now that it records.
    let recorder = crate::telemetry::metrics();
    crate::policy::reload::gauge_rules(&policies.current());
    let admin = Admin::new(store.clone(), policies.clone(), config.admin.token.clone())
        .with_upstream(gateway.upstream().clone())
        .with_metrics(recorder)
        .with_log_stream(config.scan.log_stream_token.clone(), audit.clone())
        .with_approvers(config.admin.approver_tokens.clone())
        .with_audit(audit.clone())
        .with_reviewers(reviewers(config, tls.is_some())?);
    let task = tokio::spawn(server::serve_with(
        listener,
        Arc::new(admin),
        server::ConnLimits::new(64),
        shutdown.clone().cancelled_owned(),
        tls,
    ));
    Ok((addr, task))
}

async fn start_gateway(
    config: &Config,
    gateway: Gateway,
    tls: Option<Arc<ServerTls>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen.addr)
        .await
        .map_err(|e| anyhow::anyhow!("listen.addr {}: {e}", config.listen.addr))?;
    let addr = listener.local_addr()?;
    info!(
        %addr,
        tls = tls.is_some(),
        client_certificates = config.listen.client_ca.is_some(),
        upstream = %audit::redact_url(config.upstream.url.as_deref().unwrap_or_default()),
        "tollgate listening"
    );
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let limits = server::ConnLimits {
        max_connections: count(config.limits.max_connections),
        max_per_ip: count(config.limits.max_connections_per_ip),
        header_timeout: config.limits.header_timeout.0,
    };
    let task = tokio::spawn(server::serve_with(
        listener,
        Arc::new(gateway),
        limits,
        shutdown.clone().cancelled_owned(),
        tls,
    ));
    Ok((addr, task))
}

/// The reviewers' page, when `admin.reviewer_token` is set.
fn reviewers(config: &Config, secure: bool) -> anyhow::Result<Option<crate::ui::Reviewers>> {
    let Some(token) = config.admin.reviewer_token.clone() else {
        return Ok(None);
    };
    let key = crate::audit::signing::Keys::configured(&config.audit)?;
    Ok(Some(crate::ui::Reviewers {
        token,
        key,
        checkpoint_dir: config.audit.checkpoint_dir.clone(),
        secure,
    }))
}

/// The policy set `serve` enforces: `policy.dir`, which must hold rules
/// (unless `policy.allow_empty`). The sandbox, run where there is no policy
/// directory, enforces the starter set built into the binary instead.
fn load_policies(config: &Config, sandbox: bool) -> anyhow::Result<Policies> {
    let dir = &config.policy.dir;
    if sandbox && !dir.exists() {
        let policies = Policies::starter();
        let set = policies.current();
        warn!(
            dir = %crate::policy::absolute(dir),
            rules = set.rules.len(),
            version = %set.version,
            "no policy directory: the sandbox enforces the built-in starter set (policies/ of the repository)"
        );
        return Ok(policies);
    }
    let policies =
        Policies::load(dir, config.policy.allow_empty).map_err(|e| crate::cli::load_errors(&e))?;
    let set = policies.current();
    info!(
        dir = %crate::policy::absolute(dir),
        rules = set.rules.len(),
        version = %set.version,
        "policy set loaded"
    );
    if set.rules.is_empty() {
        warn!("no policy rule in force (policy.allow_empty = true): every change is forwarded");
    }
    Ok(policies)
}

/// Watches the policy directory; without a watcher, SIGHUP still reloads.
fn watch(policies: &Arc<Policies>) -> Option<Watch> {
    let dir = policies.dir()?;
    match policies.watch() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, dir = %dir.display(), "policy directory not watched; SIGHUP still reloads");
            None
        }
    }
}

fn tls_for(
    section: &'static str,
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    client_ca: &Option<std::path::PathBuf>,
) -> anyhow::Result<Option<Arc<ServerTls>>> {
    let files: Option<TlsFiles> = crate::config::tls_files(section, cert, key, client_ca)?;
    let Some(files) = files else { return Ok(None) };
    let tls = ServerTls::load(files).map_err(|e| anyhow::anyhow!("{section}.{e}"))?;
    Ok(Some(Arc::new(tls)))
}

#[derive(PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

/// The signals that mean something to tollgate, listened for once.
/// SIGTERM, SIGINT and SIGHUP, listened for (from `listen` on: the
/// default action, ending the process on the spot, no longer applies).
pub struct Signals {
    #[cfg(unix)]
    unix: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    pub fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
                _ => {
                    warn!("cannot listen for SIGTERM, SIGINT and SIGHUP; Ctrl-C still stops");
                    None
                }
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some([term, int, hup]) = &mut self.unix {
            return tokio::select! {
                _ = term.recv() => Signal::Stop,
                _ = int.recv() => Signal::Stop,
                _ = hup.recv() => Signal::Reload,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
    }
}

/// The gateway listener's TLS: the configured certificate, or in the
/// sandbox without one, a local CA's certificate (made once, reused) served
/// beside plain HTTP on the same port; with the sandbox CA's file.
fn listen_tls(
    config: &Config,
    sandbox: bool,
) -> anyhow::Result<(Option<Arc<ServerTls>>, Option<std::path::PathBuf>)> {
    let l = &config.listen;
    let configured = tls_for("listen", &l.tls_cert, &l.tls_key, &l.client_ca)?;
    if !sandbox || configured.is_some() {
        return Ok((configured, None));
    }
    let dir = crate::policy::absolute(std::path::Path::new(crate::sandbox::cert::DIR));
    let certs = crate::sandbox::cert::ensure(std::path::Path::new(&dir))?;
    let tls = ServerTls::load(certs.files).map_err(|e| anyhow::anyhow!("sandbox TLS: {e}"))?;
    Ok((Some(Arc::new(tls.with_plaintext_too())), Some(certs.ca)))
}
