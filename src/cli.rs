//! The command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tracing::{info, warn};

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
    /// Check, test and explain policy rules.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and compile a policy directory (default: policy.dir).
    Check { dir: Option<PathBuf> },
    /// Run the test cases in DIR/tests/*.toml.
    Test { dir: Option<PathBuf> },
    /// Judge one request by hand and show each rule's verdict.
    Explain(ExplainArgs),
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
        Command::Policy(cmd) => Ok(policy_command(cmd, &config)),
    }
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
    let gateway = Gateway::new(config.clone(), policies)?;
    let listener = TcpListener::bind(config.listen.addr)
        .await
        .map_err(|e| anyhow::anyhow!("listen.addr {}: {e}", config.listen.addr))?;
    info!(
        addr = %listener.local_addr()?,
        upstream = config.upstream.url.as_deref().unwrap_or_default(),
        "tollgate listening"
    );
    let max = usize::try_from(config.limits.max_connections).unwrap_or(usize::MAX);
    server::serve(listener, Arc::new(gateway), max, server::shutdown_signal()).await;
    info!("stopped");
    Ok(())
}

fn policy_command(cmd: PolicyCommand, config: &Config) -> ExitCode {
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
    };
    match result {
        Ok(code) => code,
        Err(errors) => {
            eprintln!("{}: the policy set does not load", dir.display());
            for e in errors {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
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
