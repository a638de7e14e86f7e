//! The command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;
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
    let gateway = Gateway::new(config.clone())?;
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
