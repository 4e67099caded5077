use clap::Parser;

fn main() -> std::process::ExitCode {
    lab::commands::main(lab::cli::Cli::parse())
}
