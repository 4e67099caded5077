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
    // The link emulator runs without an async runtime: its threads must all block the
    // stop signals, which a runtime's worker threads would not.
    if let lab::cli::Command::Wire(a) = cli.command {
        return match lab::shaping::wire_cmd(a) {
            Ok(()) => ExitCode::from(lab::EXIT_OK),
            Err(e) => {
                eprintln!("lab: {e:#}");
                ExitCode::from(lab::EXIT_FAILED)
            }
        };
    }
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
