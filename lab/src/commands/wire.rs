//! `lab wire`: the userspace link emulator in the foreground, with each direction's
//! settings as the plan resolved them.

use crate::cli::WireArgs;
use crate::shaping::params::Params;
use crate::wire;
use anyhow::{Context, Result};

fn link(json: &str, which: &str) -> Result<Params> {
    serde_json::from_str(json).with_context(|| {
        format!("--{which} is not a direction's resolved settings in JSON, as `lab plan --json` shows them")
    })
}

/// `lab wire`: runs the userspace link emulator in the foreground (synchronous; no
/// async runtime, so that the stop signals can be blocked in every thread).
pub fn run(a: WireArgs) -> Result<()> {
    let cfg = wire::WireConfig {
        client_if: a.client_if,
        server_if: a.server_if,
        up: link(&a.up, "up")?,
        down: link(&a.down, "down")?,
        seed: a.seed,
        stats: a.stats,
        poll: if a.busy_poll {
            wire::forward::Poll::Busy
        } else {
            wire::forward::Poll::Adaptive
        },
        ring_frames: a.ring_frames,
    };
    wire::run(cfg)
}
