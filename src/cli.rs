//! The command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::audit::{AuditLog, Store, query, verify};
use crate::config::Config;
use crate::policy::reload::Policies;
use crate::policy::testcases::{self, Given};
use crate::policy::{self, Verdict};
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
    /// allow, deny, warn, dry_run_deny or invalid.
    #[arg(long)]
    pub decision: Option<String>,
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
        Command::Policy(cmd) => policy_command(cmd, &config).await,
        Command::Audit(cmd) => audit_command(cmd, &config).await,
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
                redact_url(&config.audit.url)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A database URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn audit_command(cmd: AuditCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.audit.url).await?;
    match cmd {
        AuditCommand::Query(q) => {
            let now = chrono::Utc::now();
            let time = |t: &str| query::parse_time(t, now).map_err(|e| anyhow::anyhow!(e));
            let filter = query::Filter {
                since_us: Some(time(&q.since)?),
                until_us: q.until.as_deref().map(time).transpose()?,
                org: q.org,
                connection: q.connection,
                caller: q.caller,
                operation: q.operation,
                decision: q.decision,
                rule: q.rule,
                limit: q.limit.max(1),
            };
            let rows = query::exchanges(&store, &filter).await?;
            print!("{}", query::render(&rows, q.format));
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Show { exchange_id } => {
            let events = query::show(&store, &exchange_id).await?;
            if events.is_empty() {
                eprintln!("no exchange {exchange_id}");
                return Ok(ExitCode::FAILURE);
            }
            let decided = events.iter().any(|e| e["event"]["kind"] == "decision");
            let outcome = events.iter().any(|e| e["event"]["kind"] == "outcome");
            println!("{}", serde_json::to_string_pretty(&events)?);
            if decided && !outcome {
                println!("outcome: unknown (no outcome was recorded)");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { json } => {
            let report = verify::verify(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_verify(&report));
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn render_verify(r: &verify::Report) -> String {
    let mut out = format!(
        "Results found for {} events in {} {}:\n{}/{} events valid\n{}/{} chains valid\n",
        r.events,
        r.chains,
        if r.chains == 1 { "chain" } else { "chains" },
        r.valid_events,
        r.events,
        r.valid_chains,
        r.chains
    );
    for b in &r.breaks {
        out.push_str(&format!(
            "chain {} broken at seq {} (event {}): {}\n",
            b.chain_id, b.seq, b.event_id, b.reason
        ));
    }
    out
}

async fn replay(config: &Config, dir: &Path, since: &str) -> anyhow::Result<ExitCode> {
    let candidate = policy::load_dir(dir).map_err(|e| load_errors(&e))?;
    let since_us = query::parse_time(since, chrono::Utc::now()).map_err(|e| anyhow::anyhow!(e))?;
    let store = Store::open(&config.audit.url).await?;
    let result = crate::audit::replay::replay(&store, &candidate, since_us).await?;
    for c in &result.changed {
        let to = c
            .candidate
            .clone()
            .unwrap_or_else(|| "undecidable (context not recorded)".into());
        println!(
            "{}  {}  {}  org={} connection={}  {} -> {}  {}",
            c.exchange_id,
            c.time,
            c.operation,
            c.org_id.as_deref().unwrap_or("-"),
            c.connection_id.as_deref().unwrap_or("-"),
            c.recorded,
            to,
            if c.rules.is_empty() {
                "-".into()
            } else {
                c.rules.join(",")
            }
        );
    }
    println!(
        "{} exchanges re-judged with policy version {}; {} would change",
        result.judged,
        candidate.version,
        result.changed.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn load_errors(errors: &[policy::LoadError]) -> anyhow::Error {
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
    let policies = Arc::new(Policies::load(&config.policy.dir).map_err(|e| load_errors(&e))?);
    let current = policies.current();
    info!(
        dir = %config.policy.dir.display(),
        rules = current.rules.len(),
        version = %current.version,
        "policy set loaded"
    );
    let _watch = match policies.watch() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, dir = %config.policy.dir.display(), "policy directory not watched; SIGHUP still reloads");
            None
        }
    };
    let store = Store::open(&config.audit.url).await?;
    let audit = Arc::new(AuditLog::start(store.clone()).await?);
    info!(
        store = store.backend(),
        url = %redact_url(&config.audit.url),
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
        upstream = config.upstream.url.as_deref().unwrap_or_default(),
        "tollgate listening"
    );
    let max = usize::try_from(config.limits.max_connections).unwrap_or(usize::MAX);
    server::serve_tls(
        listener,
        Arc::new(gateway),
        max,
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

async fn policy_command(cmd: PolicyCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let dir_or = |d: Option<PathBuf>| d.unwrap_or_else(|| config.policy.dir.clone());
    let (dir, result) = match cmd {
        PolicyCommand::Check { dir } => {
            let dir = dir_or(dir);
            (
                dir.clone(),
                policy::load_dir(&dir).map(|set| {
                    println!(
                        "ok: {} rules in {} files, version {}",
                        set.rules.len(),
                        set.files.len(),
                        set.version
                    );
                    ExitCode::SUCCESS
                }),
            )
        }
        PolicyCommand::Test { dir } => {
            let dir = dir_or(dir);
            (
                dir.clone(),
                policy::load_dir(&dir).map(|set| {
                    let report = testcases::run(&set, &dir);
                    for line in &report.lines {
                        println!("{line}");
                    }
                    println!("{} passed, {} failed", report.passed, report.failed);
                    if report.failed == 0 && report.passed > 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }),
            )
        }
        PolicyCommand::Explain(args) => {
            let dir = dir_or(args.dir.clone());
            (
                dir.clone(),
                policy::load_dir(&dir).map(|set| explain(&set, &args)),
            )
        }
        PolicyCommand::Replay { dir, since } => return replay(config, &dir, &since).await,
    };
    Ok(match result {
        Ok(code) => code,
        Err(errors) => {
            eprintln!("{}: the policy set does not load", dir.display());
            for e in errors {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    })
}

fn json_object(flag: &str, text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{flag}: expected a JSON object")),
        Err(e) => Err(format!("{flag}: {e}")),
    }
}

fn explain(set: &policy::PolicySet, args: &ExplainArgs) -> ExitCode {
    let given = (|| {
        let mut connection = Map::new();
        if let Some(s) = &args.strategy {
            connection.insert("strategy".into(), Value::from(s.as_str()));
        }
        Ok::<_, String>(Given {
            operation: args.operation.clone(),
            body: json_object("--body", &args.body)?,
            connection,
            org: Map::new(),
            before: args
                .before
                .as_deref()
                .map(|b| json_object("--before", b))
                .transpose()?,
            caller: args
                .caller
                .as_deref()
                .map(|c| json_object("--caller", c))
                .transpose()?
                .unwrap_or_default(),
        })
    })();
    let decision = match given.and_then(|g| testcases::judge(set, &g)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "decision: {} (policy version {})",
        decision.outcome.as_str(),
        decision.policy_version
    );
    let applicable: Vec<&str> = decision.results.iter().map(|r| r.id.as_str()).collect();
    for r in &decision.results {
        let why = match &r.verdict {
            Verdict::Pass => "deny is false".to_owned(),
            Verdict::Skipped => "when is false: not applicable".to_owned(),
            Verdict::Violated => match &r.field {
                Some(f) => format!("{} (at {f})", r.message),
                None => r.message.clone(),
            },
            Verdict::Error(e) => format!("error: {e}"),
        };
        let verdict = match r.verdict {
            Verdict::Pass => "pass",
            Verdict::Skipped => "skipped",
            Verdict::Violated => "violated",
            Verdict::Error(_) => "error",
        };
        println!(
            "  {:<28} {:<8} {:<9} {why}",
            r.id,
            r.mode.to_string(),
            verdict
        );
    }
    for rule in &set.rules {
        if !applicable.contains(&rule.id.as_str()) {
            println!(
                "  {:<28} {:<8} {:<9} does not apply to {}",
                rule.id,
                rule.mode.to_string(),
                "-",
                args.operation
            );
        }
    }
    ExitCode::SUCCESS
}
