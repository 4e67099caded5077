//! The `lab` orchestrator: command line, the loopback stack and the commands.
//!
//! Data flow today: `lab serve` (one server) and `lab client` (one approach) stand alone;
//! `lab demo` starts the [`stack`] of four servers and compares the approaches.

pub mod approach;
pub mod cli;
pub mod client;
pub mod demo;
pub mod netlab;
pub mod run;
pub mod serve;
pub mod shaping;
pub mod stack;
pub mod topology;

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
        Command::Plan(p) => return plan_cmd(&p),
        Command::Schema => {
            print!("{}", topology::schema_json());
            true
        }
        Command::Run(a) => return run::run_cmd(a).await,
        Command::Report(a) => return run::report_cmd(a),
        Command::Compare(a) => return run::compare_cmd(a),
        Command::Up(a) => return netlab::up_cmd(a).await,
        Command::Status(a) => return netlab::status_cmd(a),
        Command::Shell(a) => return netlab::shell_cmd(a),
        Command::Exec(a) => return netlab::exec_cmd(a),
        Command::Down(a) => return netlab::down_cmd(a),
        Command::Clean(a) => return netlab::clean_cmd(a),
        Command::Relay(a) => return netlab::relay_cmd(a).await,
        Command::Wire(a) => {
            shaping::wire_cmd(a)?;
            true
        }
    };
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}

fn plan_cmd(a: &cli::PlanArgs) -> Result<u8> {
    match topology::load(&a.topology) {
        Ok((_, plan)) => {
            use topology::model::Backend;
            use topology::plan::{Shaper, with_backend};
            let plan = match (a.backend.as_deref(), plan.backend) {
                (Some("kernel"), _) => with_backend(plan, Shaper::Kernel, "--backend kernel"),
                (Some(_), _) => with_backend(plan, Shaper::Userspace, "--backend userspace"),
                (None, Backend::Userspace) => {
                    with_backend(plan, Shaper::Userspace, "asked for by the topology")
                }
                (None, _) if netlab::sys::require_privileges("plan").is_ok() => {
                    shaping::resolve(plan)?
                }
                (None, _) => plan,
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", topology::plan::render(&plan));
            }
            Ok(EXIT_OK)
        }
        Err(e) => {
            eprint!("lab: {e}");
            if !e.to_string().ends_with('\n') {
                eprintln!();
            }
            Ok(EXIT_USAGE)
        }
    }
}
