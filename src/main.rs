//! The `tollgate` binary: parse the command line, start logging, call the library.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use tollgate::cli::{self, Cli};

/// A governed request allocates many small JSON values (rule context, audit
/// event); mimalloc serves them faster than the system allocator
/// (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            // A user's error is one line with its causes, never a backtrace
            // (RUST_BACKTRACE is for panics).
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<std::process::ExitCode> {
    let matches = Cli::command().get_matches();
    // A --config the user named must exist; the default may be absent.
    let explicit = matches
        .value_source("config")
        .is_some_and(|s| s != ValueSource::DefaultValue);
    let cli = Cli::from_arg_matches(&matches)?;
    let _telemetry = tollgate::telemetry::init(cli.log_format);
    let config = cli::load_config(&cli.config, explicit)?;
    cli::run(cli.command, config).await
}
