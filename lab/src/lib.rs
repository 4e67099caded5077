//! The `lab` orchestrator: command line, the loopback stack and the commands.
//!
//! Data flow today: `lab serve` (one server) and `lab client` (one approach) stand alone;
//! `lab demo` starts the [`stack`] of four servers and compares the approaches.

pub mod cli;
pub mod client;
pub mod demo;
pub mod serve;
pub mod stack;

use anyhow::Result;
use cli::{Cli, Command};

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the run finished but something failed (a prompt, a digest check).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad input (flags, files), reported before anything ran.
pub const EXIT_USAGE: u8 = 2;

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<u8> {
    let ok = match cli.command {
        Command::Serve(s) => {
            serve::run(s).await?;
            true
        }
        Command::Client(c) => client::run(c).await?,
        Command::Demo(d) => demo::run(d).await?,
    };
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}
