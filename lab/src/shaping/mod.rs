//! Link shaping: the profile model resolved per direction ([`params`]), the link model
//! ([`engine`]), and the userspace link emulator that applies it ([`wire`], `lab wire`).

pub mod engine;
pub mod kernel;
pub mod params;
pub mod wire;

use crate::cli::WireArgs;
use anyhow::{Context, Result};
use params::Params;

fn link(json: &str, which: &str) -> Result<Params> {
    serde_json::from_str(json).with_context(|| {
        format!("--{which} is not a direction's resolved settings in JSON, as `lab plan --json` shows them")
    })
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

use crate::topology::model::Backend;
use crate::topology::plan::{Plan, Shaper, with_backend};

/// Decides the backend of a plan (probing for netem when the topology says auto, or
/// kernel) and lays the plan out for it.
pub fn resolve(plan: Plan) -> Result<Plan> {
    Ok(match plan.backend {
        Backend::Userspace => with_backend(plan, Shaper::Userspace, "asked for by the topology"),
        Backend::Kernel => match kernel::probe_netem()? {
            None => with_backend(
                plan,
                Shaper::Kernel,
                "asked for by the topology; netem is available",
            ),
            Some(why) => anyhow::bail!(
                "the topology asks for the kernel backend, but {why}; set `shaping: {{ backend: userspace }}` (or auto) to use lab's userspace link emulator"
            ),
        },
        Backend::Auto => match kernel::probe_netem()? {
            None => with_backend(plan, Shaper::Kernel, "auto: netem is available"),
            Some(why) => with_backend(plan, Shaper::Userspace, format!("auto: {why}")),
        },
    })
}

/// Puts each cell's netem qdiscs on its wire namespace's bridge ports: the up settings
/// on `to-server` (its egress carries client-to-server traffic), the down settings on
/// `to-client`. Directions with nothing to shape get no qdisc.
pub fn apply_kernel(
    plan: &Plan,
    wire_ns: &std::collections::HashMap<String, std::fs::File>,
) -> Result<()> {
    for c in &plan.cells {
        let fd = &wire_ns[&c.wire_ns];
        crate::netlab::sys::in_netns(fd, || {
            for (ifname, p) in [("to-server", &c.up), ("to-client", &c.down)] {
                if !p.is_identity() {
                    kernel::apply(ifname, "netem", kernel::netem_options(p, Some(plan.seed))?)
                        .with_context(|| format!("cell {}: {ifname}", c.id))?;
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}
