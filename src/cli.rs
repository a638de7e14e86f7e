//! The command line: the commands and `serve`; `audit` and `policy` live in
//! their own files.

mod audit;
mod policy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::audit::{AuditLog, Store};
use crate::config::Config;
use crate::policy::reload::Policies;
use crate::proxy::Gateway;
use crate::sandbox::Sandbox;
use crate::server;
use crate::telemetry::LogFormat;

/// A policy-enforcing audit gateway for the Auth0 Management API.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    /// Configuration file. A missing ./tollgate.toml means built-in defaults.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_CONFIG",
        default_value = "tollgate.toml"
    )]
    pub config: PathBuf,
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Run in front of a built-in simulated tenant (no Auth0 account needed).
        #[arg(long)]
        sandbox: bool,
    },
    /// Check, test, explain and replay policy rules.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Query, show and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Apply the audit store's migrations (serve does it too).
    Migrate,
    /// Manage broker-mode API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key: prints it once, and the lines for tollgate.toml.
    New {
        /// The caller's name, as rules and the audit log will see it.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// One row per exchange, decision and outcome joined.
    Query(QueryArgs),
    /// Both events of an exchange, in full.
    Show { exchange_id: String },
    /// Recompute every hash chain; exit 1 on any break.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Start of the window: a duration back from now (24h, 30d) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End of the window (exclusive), same forms.
    #[arg(long)]
    pub until: Option<String>,
    /// Organization id.
    #[arg(long)]
    pub org: Option<String>,
    /// Connection id.
    #[arg(long)]
    pub connection: Option<String>,
    /// Caller: the token's client id (or API key name).
    #[arg(long)]
    pub caller: Option<String>,
    /// Operation id (or `other`).
    #[arg(long)]
    pub operation: Option<String>,
    /// allow, deny, warn, dry_run_deny, invalid or unavailable.
    #[arg(long)]
    pub decision: Option<crate::policy::Decision>,
    /// A rule that matched.
    #[arg(long)]
    pub rule: Option<String>,
    /// Most rows, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::audit::query::Format,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and compile a policy directory (default: policy.dir).
    Check { dir: Option<PathBuf> },
    /// Run the test cases in DIR/tests/*.toml.
    Test { dir: Option<PathBuf> },
    /// Judge one request by hand and show each rule's verdict.
    Explain(ExplainArgs),
    /// Re-judge recorded requests with a candidate policy set; list those
    /// whose decision would change.
    Replay {
        /// The candidate policy directory.
        dir: PathBuf,
        /// How far back: a duration (30d, 12h) or an RFC 3339 time.
        #[arg(long, default_value = "30d")]
        since: String,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The operation id, e.g. organization_connection.update.
    #[arg(long)]
    pub operation: String,
    /// The request body, as JSON.
    #[arg(long, default_value = "{}")]
    pub body: String,
    /// The connection's strategy (auth0, samlp, oidc, google-oauth2, …).
    #[arg(long)]
    pub strategy: Option<String>,
    /// The association as it stands, as JSON (absent: it does not exist).
    #[arg(long)]
    pub before: Option<String>,
    /// The caller, as JSON (client_id, subject, grant_type, scopes).
    #[arg(long)]
    pub caller: Option<String>,
    /// The policy directory (default: policy.dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Reads the configuration: the file (a missing default file means
/// defaults), then `TOLLGATE_*` variables from the process environment.
pub fn load_config(path: &Path, explicit: bool) -> anyhow::Result<Config> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    Ok(Config::load(
        &text,
        &path.display().to_string(),
        std::env::vars(),
    )?)
}

/// Runs a command.
pub async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { sandbox } => serve(config, sandbox).await.map(|()| ExitCode::SUCCESS),
        Command::Policy(cmd) => policy::policy_command(cmd, &config).await,
        Command::Audit(cmd) => audit::audit_command(cmd, &config).await,
        Command::Keys(KeysCommand::New { name }) => {
            let (key, hash) = crate::identity::new_key();
            println!(
                "API key for {name} (shown once; give it to the caller, keep no copy):\n\n  {key}\n"
            );
            println!(
                "Add to tollgate.toml:\n\n[[identity.keys]]\nname = {name:?}\nhash = \"{hash}\"\n# operations = [\"organization_connection.update\"]   # optional: only these"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = Store::open(&config.audit.url).await?;
            println!(
                "audit store migrated ({}): {}",
                store.backend(),
                audit::redact_url(&config.audit.url)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_errors(errors: &[crate::policy::LoadError]) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("the policy set does not load:\n  {}", lines.join("\n  "))
}

/// Runs `tollgate serve`.
pub async fn serve(mut config: Config, sandbox: bool) -> anyhow::Result<()> {
    if sandbox {
        let tenant = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = tenant.local_addr()?;
        tokio::spawn(server::serve(
            tenant,
            Arc::new(Sandbox::new()),
            1024,
            std::future::pending(),
        ));
        info!(%addr, "sandbox tenant listening");
        config.upstream.url = Some(format!("http://{addr}"));
    }
    let policies = Arc::new(load_policies(&config, sandbox)?);
    let _watch = match policies.dir() {
        None => None,
        Some(dir) => match policies.watch() {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, dir = %dir.display(), "policy directory not watched; SIGHUP still reloads");
                None
            }
        },
    };
    let store = Store::open(&config.audit.url).await?;
    let _claim = crate::audit::store::claim(&config.audit.url)?;
    let audit = Arc::new(AuditLog::start(store.clone()).await?);
    info!(
        store = store.backend(),
        url = %audit::redact_url(&config.audit.url),
        chain = audit.chain_id(),
        "audit log open"
    );
    let listen_tls = tls_for(
        "listen",
        &config.listen.tls_cert,
        &config.listen.tls_key,
        &config.listen.client_ca,
    )?;
    let admin_tls = tls_for(
        "admin",
        &config.admin.tls_cert,
        &config.admin.tls_key,
        &None,
    )?;
    reload_tls_on_sighup([listen_tls.clone(), admin_tls.clone()]);
    let admin_listener = TcpListener::bind(config.admin.addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin.addr {}: {e}", config.admin.addr))?;
    info!(addr = %admin_listener.local_addr()?, tls = admin_tls.is_some(), "admin listening");
    if config.admin.token.is_none() {
        warn!("admin.token is not set: the /v1 admin API answers 401");
    }
    let gateway = Gateway::new(config.clone(), policies.clone(), audit.clone())?;
    let admin = Admin::new(store.clone(), policies, config.admin.token.clone())
        .with_upstream(gateway.upstream().clone())
        .with_metrics(crate::telemetry::metrics());
    let admin_task = tokio::spawn(server::serve_tls(
        admin_listener,
        Arc::new(admin),
        64,
        server::shutdown_signal(),
        admin_tls,
    ));
    let listener = TcpListener::bind(config.listen.addr)
        .await
        .map_err(|e| anyhow::anyhow!("listen.addr {}: {e}", config.listen.addr))?;
    info!(
        addr = %listener.local_addr()?,
        tls = listen_tls.is_some(),
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
    server::serve_with(
        listener,
        Arc::new(gateway),
        limits,
        server::shutdown_signal(),
        listen_tls,
    )
    .await;
    // Outcomes of the last exchanges are still queued: write them.
    audit.flush().await;
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
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
    let policies = Policies::load(dir, config.policy.allow_empty).map_err(|e| load_errors(&e))?;
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

fn tls_for(
    section: &'static str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    client_ca: &Option<PathBuf>,
) -> anyhow::Result<Option<Arc<crate::tls::ServerTls>>> {
    let files = crate::config::tls_files(section, cert, key, client_ca)?;
    let Some(files) = files else { return Ok(None) };
    let tls = crate::tls::ServerTls::load(files).map_err(|e| anyhow::anyhow!("{section}.{e}"))?;
    Ok(Some(Arc::new(tls)))
}

/// Reloads listener certificates on SIGHUP; a certificate that does not
/// load leaves the one in force.
fn reload_tls_on_sighup<const N: usize>(tls: [Option<Arc<crate::tls::ServerTls>>; N]) {
    let tls: Vec<_> = tls.into_iter().flatten().collect();
    if tls.is_empty() {
        return;
    }
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            for t in &tls {
                match t.reload() {
                    Ok(()) => info!("TLS certificate reloaded"),
                    Err(e) => {
                        warn!(error = %e, "TLS certificate not reloaded; the previous one stays")
                    }
                }
            }
        }
    });
}
