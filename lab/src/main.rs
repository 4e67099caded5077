use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = lab::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lab: cannot start the async runtime: {e}");
            return ExitCode::from(lab::EXIT_FAILED);
        }
    };
    match rt.block_on(lab::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lab: {e:#}");
            ExitCode::from(lab::EXIT_USAGE)
        }
    }
}
