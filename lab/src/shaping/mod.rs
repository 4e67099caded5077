//! Link shaping: the profile model resolved per direction ([`params`]), the link model
//! ([`engine`]), and the userspace link emulator that applies it ([`wire`], `lab wire`).

pub mod engine;
pub mod kernel;
pub mod params;
pub mod wire;

use crate::cli::WireArgs;
use crate::topology::model::Link;
use anyhow::{Context, Result};
use params::Params;

fn link(json: &str, which: &str) -> Result<Params> {
    let l: Link = serde_json::from_str(json).with_context(|| {
        format!("--{which} is not a link in JSON, e.g. {{\"delay\":\"50ms\",\"loss\":\"1%\"}}")
    })?;
    Ok(Params::from_link(&l))
}

/// `lab wire`: runs the userspace link emulator in the foreground (synchronous; no
/// async runtime, so that the stop signals can be blocked in every thread).
pub fn wire_cmd(a: WireArgs) -> Result<()> {
    let cfg = wire::WireConfig {
        client_if: a.client_if,
        server_if: a.server_if,
        up: link(&a.up, "up")?,
        down: link(&a.down, "down")?,
        seed: a.seed,
        stats: a.stats,
    };
    wire::run(cfg)
}
