//! The command line: the commands and `serve`; `audit` and `policy` live in
//! their own files.

/// `print!`, ending the command quietly when standard output's reader has
/// gone (`tollgate audit query | head`), as a Unix tool does, instead of
/// panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!`, ending quietly when the reader has gone (see `out!`).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod audit;
mod policy;
mod routes;
mod scan;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::audit::Store;
use crate::config::Config;
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
    /// Judge the tenant's organization connections as they stand; exit 1
    /// on a violation at the --fail-on level.
    Scan(ScanArgs),
    /// Approve a request approvable rules denied (its 403 names the
    /// approval): the requester may then send exactly that request once.
    Approve {
        /// The approval's id.
        id: String,
        /// Why: recorded with the approval and the exchange it lets through.
        #[arg(long)]
        reason: String,
        /// Your approver token (admin.approver_tokens).
        #[arg(long, env = "TOLLGATE_APPROVER_TOKEN", hide_env_values = true)]
        token: String,
        /// The admin listener (default: http:// and admin.addr).
        #[arg(long)]
        admin: Option<String>,
    },
    /// List approvals, pending and past.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Apply the audit store's migrations (serve does it too).
    Migrate,
    /// Manage broker-mode API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check the configuration and print the one in effect.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (e.g. `tollgate completions bash >
    /// /etc/bash_completion.d/tollgate`).
    Completions {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
    /// List the Management API's write operations: how tollgate treats
    /// each (governed, audited, pass, denied) and the rules naming it.
    Routes {
        /// Reads too.
        #[arg(long)]
        all: bool,
        /// The policy directory whose rules to count (default: policy.dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// table, json, jsonl or csv.
        #[arg(long, value_enum, default_value_t)]
        format: crate::audit::query::Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (the file, then TOLLGATE_* variables)
    /// and print it as in effect, every key with its value, secrets
    /// redacted.
    Check,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Only this organization (its id); repeatable.
    #[arg(long = "org")]
    pub orgs: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::audit::query::Format,
    /// The lowest violation that fails the scan (exit 1).
    #[arg(long, value_enum, default_value_t)]
    pub fail_on: FailOn,
    /// The Management API token to read with (default: scan.token, set by
    /// TOLLGATE_SCAN_TOKEN; in broker mode, the broker's own token).
    #[arg(long)]
    pub token: Option<String>,
    /// Judge by the starter set built into the binary (what `serve
    /// --sandbox` enforces without a policy directory) instead of policy.dir.
    #[arg(long)]
    pub starter: bool,
}

/// Which violations fail a scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// An enforce rule violated.
    #[default]
    Violation,
    /// An enforce or a warn rule violated.
    Warn,
    /// Never: report only.
    Never,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// The newest approvals, pending and past.
    List {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key (prints it once, and the lines for tollgate.toml),
    /// or with --signing the Ed25519 key pair that signs the audit log's
    /// checkpoints.
    New {
        /// The caller's name, as rules and the audit log will see it.
        #[arg(required_unless_present = "signing")]
        name: Option<String>,
        /// Write `signing.key` (private) and `signing.pub` (public) instead.
        #[arg(long, conflicts_with = "name")]
        signing: bool,
        /// An approver's token (for `tollgate approve` and
        /// `POST /v1/approvals/{id}`), not a caller's key.
        #[arg(long, conflicts_with = "signing")]
        approver: bool,
        /// Where --signing writes its files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
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
        /// Verify the signed checkpoints with this public key (default:
        /// the one of audit.signing_key, when set).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Verify an export bundle (a directory) instead of the store:
        /// offline, without the database.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// With --bundle and no --public-key: accept the public key the
        /// bundle brings (whoever could rewrite the bundle could have
        /// re-signed it with their own); without this, that is a failure.
        #[arg(long)]
        trust_bundle_key: bool,
        /// Also check the checkpoints kept as files here (default:
        /// audit.checkpoint_dir, when set).
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Report every break of every chain, not only each chain's first.
        #[arg(long)]
        all: bool,
        /// Accept a store that holds no event (otherwise: nothing was
        /// verified, exit 1).
        #[arg(long)]
        allow_empty: bool,
    },
    /// Write the events of a time window, their checkpoints, the public
    /// key and a manifest into a directory an auditor verifies offline.
    Export {
        /// Start of the window: a duration back from now (24h, 30d) or an RFC 3339 time.
        #[arg(long, default_value = "30d")]
        since: String,
        /// End of the window (exclusive), same forms; default: now.
        #[arg(long)]
        until: Option<String>,
        /// The directory to write.
        #[arg(long)]
        out: PathBuf,
        /// The public key to include (default: the one of audit.signing_key).
        #[arg(long)]
        public_key: Option<PathBuf>,
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
    /// Changes made outside tollgate (seen in the tenant's log by `scan`),
    /// instead of exchanges.
    #[arg(long)]
    pub outside: bool,
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
    /// The organization, as JSON (id, name).
    #[arg(long)]
    pub org: Option<String>,
    /// The connection's id (with --strategy, its strategy).
    #[arg(long)]
    pub connection: Option<String>,
    /// The request, as JSON (method, path, source_ip, user_agent).
    #[arg(long)]
    pub request: Option<String>,
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

/// `tollgate config check`: the configuration in effect, as TOML a
/// `tollgate.toml` could hold, secrets and URL credentials redacted. It
/// loaded (or this would not run): every value passed validation.
fn config_check(config: &Config) -> anyhow::Result<ExitCode> {
    let mut value = toml::Table::try_from(config)?;
    // URLs can carry a password (`postgres://user:pass@…`, `?password=`).
    for (section, key) in [("audit", "url"), ("upstream", "url")] {
        if let Some(toml::Value::String(url)) = value
            .get_mut(section)
            .and_then(|s| s.as_table_mut())
            .and_then(|t| t.get_mut(key))
        {
            *url = crate::audit::redact_url(url);
        }
    }
    let mut overrides: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("TOLLGATE_") && k.len() > "TOLLGATE_".len())
        .collect();
    overrides.sort();
    outln!("# ok: the configuration in effect (the file, then TOLLGATE_* variables)");
    if !overrides.is_empty() {
        outln!("# from the environment: {}", overrides.join(", "));
    }
    outln!("# secrets are shown as <redacted>; unset optional keys are not shown");
    outln!("{}", toml::to_string(&value)?);
    Ok(ExitCode::SUCCESS)
}

/// Runs a command.
pub async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { sandbox } => serve(config, sandbox).await.map(|()| ExitCode::SUCCESS),
        Command::Policy(cmd) => policy::policy_command(cmd, &config).await,
        Command::Routes { all, dir, format } => routes::routes(&config, all, dir, format),
        Command::Config(ConfigCommand::Check) => config_check(&config),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tollgate", &mut script);
            write_stdout(format_args!("{}", String::from_utf8_lossy(&script)));
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(cmd) => audit::audit_command(cmd, &config).await,
        Command::Keys(KeysCommand::New {
            signing: true, out, ..
        }) => {
            let (private, public) = crate::audit::signing::new_pair()?;
            let (key, public_path) = (out.join("signing.key"), out.join("signing.pub"));
            if key.exists() {
                anyhow::bail!("{} exists: not overwritten", key.display());
            }
            std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            write_private(&key, &private)?;
            std::fs::write(&public_path, format!("{public}\n"))?;
            outln!(
                "Signing key written to {} (keep it where only tollgate reads it) and its public key to {}.\n\nAdd to tollgate.toml:\n\n[audit]\nsigning_key = {:?}\n# checkpoint_dir = \"/mnt/worm/tollgate\"   # optional: a copy the store's writers cannot rewrite\n\nVerify anywhere with: tollgate audit verify --public-key {}",
                key.display(),
                public_path.display(),
                key.display().to_string(),
                public_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::New {
            name,
            approver: true,
            ..
        }) => {
            let name = name.unwrap_or_default();
            let (token, hash) = crate::identity::new_key();
            outln!(
                "Approver token for {name} (shown once; give it to them, keep no copy):\n\n  {token}\n"
            );
            outln!(
                "Add to tollgate.toml:\n\n[[admin.approver_tokens]]\nname = {name:?}\nhash = \"{hash}\""
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::New { name, .. }) => {
            let name = name.unwrap_or_default();
            let (key, hash) = crate::identity::new_key();
            outln!(
                "API key for {name} (shown once; give it to the caller, keep no copy):\n\n  {key}\n"
            );
            outln!(
                "Add to tollgate.toml:\n\n[[identity.keys]]\nname = {name:?}\nhash = \"{hash}\"\n# operations = [\"organization_connection.update\"]   # optional: only these"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan(args) => scan::scan_command(args, &config).await,
        Command::Approve {
            id,
            reason,
            token,
            admin,
        } => approve(&config, &id, &reason, &token, admin).await,
        Command::Approvals(ApprovalsCommand::List { json }) => {
            let store = Store::open_existing(&config.audit.url).await?;
            let list = store.approvals(1000).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                outln!(
                    "{:<38} {:<9} {:<28} {:<16} {:<16} {:<34} PATH",
                    "APPROVAL",
                    "STATUS",
                    "EXPIRES",
                    "REQUESTER",
                    "APPROVER",
                    "RULES"
                );
                for a in &list {
                    outln!(
                        "{:<38} {:<9} {:<28} {:<16} {:<16} {:<34} {}",
                        a.id,
                        a.status,
                        a.expires,
                        a.caller,
                        a.approver.as_deref().unwrap_or("-"),
                        a.rules.join(","),
                        a.path
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = Store::open(&config.audit.url).await?;
            outln!(
                "audit store migrated ({}): {}",
                store.backend(),
                crate::audit::redact_url(&config.audit.url)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn load_errors(errors: &[crate::policy::LoadError]) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("the policy set does not load:\n  {}", lines.join("\n  "))
}

/// Runs `tollgate serve` until SIGTERM or SIGINT.
pub async fn serve(config: Config, sandbox: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let broker = config.identity.mode == crate::config::IdentityMode::Broker;
    let signals = crate::app::Signals::listen();
    let app = crate::app::App::start(config, sandbox).await?;
    // The directions are for whoever reads them; a server whose output
    // nobody reads goes on serving.
    let mut stdout = std::io::stdout();
    if let Some(ca) = &app.sandbox_ca {
        let _ = writeln!(stdout, "{}", sandbox_recipes(app.addr, ca, broker));
    }
    if let Some(tenant) = &app.sandbox_tenant {
        let starter = if app.policies.dir().is_none() {
            " --starter"
        } else {
            ""
        };
        let _ = writeln!(
            stdout,
            "The simulated tenant itself is at {tenant}: scan it with
  TOLLGATE_UPSTREAM_URL={tenant} tollgate scan --token sandbox{starter}
and change it outside tollgate, as its dashboard would, with
  curl -X PATCH {tenant}/sandbox/dashboard/organizations/org_acme/connections/con_saml \\
    -H 'Authorization: Bearer sandbox' -H 'Content-Type: application/json' -d '{{\"organization_access_level\":\"full\"}}'"
        );
    }
    let signals = app.on_signals(signals);
    app.shutdown.cancelled().await;
    signals.abort();
    app.stopped().await;
    Ok(())
}

/// How to point each client at the sandbox, over HTTPS.
fn sandbox_recipes(addr: std::net::SocketAddr, ca: &Path, broker: bool) -> String {
    let port = addr.port();
    let ca = ca.display();
    let tokens = if broker {
        "broker mode: only tollgate API keys (tg_…) from identity.keys are accepted"
    } else {
        "any bearer token is accepted; client id `sandbox-client` with any\nsecret gets one"
    };
    let bearer = if broker { "tg_…" } else { "sandbox" };
    format!(
        "\
tollgate sandbox: HTTPS and HTTP on {addr}; the certificate authority to trust is
  {ca}
Point a client at it ({tokens}):
  node-auth0:   NODE_EXTRA_CA_CERTS={ca}   domain: \"localhost:{port}\"
  auth0-python: REQUESTS_CA_BUNDLE={ca} SSL_CERT_FILE={ca}   domain=\"localhost:{port}\"
  Deploy CLI:   NODE_EXTRA_CA_CERTS={ca}   AUTH0_DOMAIN=localhost:{port}
  curl:         curl --cacert {ca} https://localhost:{port}/api/v2/organizations -H 'Authorization: Bearer {bearer}'"
    )
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// `tollgate approve`: `POST /v1/approvals/{id}` on the admin listener.
async fn approve(
    config: &Config,
    id: &str,
    reason: &str,
    token: &str,
    admin: Option<String>,
) -> anyhow::Result<ExitCode> {
    let base = admin.unwrap_or_else(|| format!("http://{}", config.admin.addr));
    let client = crate::upstream::Upstream::new(&base, std::time::Duration::from_secs(10), None)?;
    let mut req = http::Request::new(crate::full(bytes::Bytes::from(
        serde_json::json!({ "reason": reason }).to_string(),
    )));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = client.uri(&format!(
        "/v1/approvals/{}",
        crate::route::encode_segment(id)
    ))?;
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let resp = client.send_buffered(req).await?;
    let body = String::from_utf8_lossy(resp.body()).into_owned();
    if resp.status().is_success() {
        outln!("approved {id}: the requester may now send exactly that request, once.");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("not approved ({}): {body}", resp.status());
        Ok(ExitCode::FAILURE)
    }
}

/// Writes to standard output. A closed pipe ends the process with success
/// (the reader took what it wanted); any other failure to write ends it
/// with an error.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    /// The sandbox's directions name the credentials it takes: any bearer
    /// token, or in broker mode only tollgate API keys.
    #[test]
    fn sandbox_directions_follow_the_identity_mode() {
        let addr = "127.0.0.1:8080".parse().expect("addr");
        let ca = std::path::Path::new("ca.pem");
        let passthrough = super::sandbox_recipes(addr, ca, false);
        assert!(
            passthrough.contains("any bearer token is accepted"),
            "{passthrough}"
        );
        assert!(passthrough.contains("Bearer sandbox"), "{passthrough}");
        let broker = super::sandbox_recipes(addr, ca, true);
        assert!(!broker.contains("any bearer token"), "{broker}");
        assert!(broker.contains("only tollgate API keys"), "{broker}");
        assert!(broker.contains("Bearer tg_"), "{broker}");
    }
}
