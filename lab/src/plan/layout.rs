//! Which shaping backend a lab gets, and the plan laid out for it: the kernel layout
//! bridges each wire namespace's veths (the qdiscs go on the bridge ports); the
//! userspace layout leaves them apart and runs `lab wire` between them. Pure: [`decide`]
//! is handed the privileged layer's netem probe (`netlab::qdisc::probe_netem`) and asks
//! it only when the topology leaves the choice to the kernel.

use super::{Plan, Process, Ready, run_dir};
use crate::shaping::params::Params;
use crate::topology::model::Backend;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// What the probe found: whether this kernel has netem, and whether its netem keeps a
/// PRNG seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netem {
    /// `None`: netem works; `Some(why)`: it does not, and why.
    pub missing: Option<String>,
    /// Whether netem keeps the seed lab gives it (TCA_NETEM_PRNG_SEED, Linux 6.6 and
    /// later, which dumps it back). Older kernels ignore the attribute: their loss and
    /// corruption draws differ from run to run whatever the seed.
    pub seeded: bool,
}

/// What the backend decision says of a kernel whose netem ignores the seed.
pub const SEED_IGNORED: &str = "this kernel's netem ignores the seed (TCA_NETEM_PRNG_SEED needs Linux 6.6 or later), so losses differ from run to run";

/// Decides the backend of a plan and lays the plan out for it: a trace needs the
/// userspace backend, `userspace` is taken as asked, and otherwise `probe` says whether
/// this kernel has netem (`kernel` fails without it, `auto` falls back to userspace).
/// `lab up`, `lab run` and `lab plan` (as root) call this before they build; the build
/// carries out the decision.
pub fn decide(plan: Plan, probe: impl FnOnce() -> Result<Netem>) -> Result<Plan> {
    // A trace is the userspace backend's alone.
    let traced = plan
        .cells
        .iter()
        .find(|c| c.up.trace.is_some() || c.down.trace.is_some())
        .map(|c| c.profile.clone());
    if let Some(profile) = traced {
        return match plan.backend {
            Backend::Kernel => bail!(
                "profile {profile} replays a trace, which netem cannot do; set `shaping: {{ backend: userspace }}` (or auto)"
            ),
            _ => Ok(with_backend(
                plan,
                Shaper::Userspace,
                format!(
                    "a profile ({profile}) replays a trace, which only the userspace backend can"
                ),
            )),
        };
    }
    if plan.backend == Backend::Userspace {
        return Ok(with_backend(
            plan,
            Shaper::Userspace,
            "asked for by the topology",
        ));
    }
    let asked = plan.backend == Backend::Kernel;
    Ok(match probe()? {
        Netem {
            missing: None,
            seeded,
        } => {
            let why = if asked {
                "asked for by the topology; netem is available"
            } else {
                "auto: netem is available"
            };
            let why = if seeded {
                why.to_owned()
            } else {
                format!("{why}; {SEED_IGNORED}")
            };
            with_backend(plan, Shaper::Kernel, why)
        }
        Netem {
            missing: Some(why), ..
        } if asked => bail!(
            "the topology asks for the kernel backend, but {why}; set `shaping: {{ backend: userspace }}` (or auto) to use lab's userspace link emulator"
        ),
        Netem {
            missing: Some(why), ..
        } => with_backend(plan, Shaper::Userspace, format!("auto: {why}")),
    })
}

/// The shaping backend that builds the lab.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shaper {
    /// netem (and tbf) qdiscs on the wire namespace's bridge ports.
    Kernel,
    /// `lab wire`, the userspace link emulator, between the wire namespace's veths.
    Userspace,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapingChoice {
    pub backend: Shaper,
    /// Why this backend: asked for, or what the netem probe found.
    pub why: String,
}

/// The plan laid out for a backend. The kernel layout bridges each wire namespace's
/// veths (the qdiscs go on the bridge ports); the userspace layout leaves them apart and
/// runs `lab wire` between them.
pub fn with_backend(mut p: Plan, backend: Shaper, why: impl Into<String>) -> Plan {
    if backend == Shaper::Userspace {
        let wires: Vec<String> = p.cells.iter().map(|c| c.wire_ns.clone()).collect();
        p.interfaces
            .retain(|i| !(i.kind == "bridge" && wires.contains(&i.namespace)));
        for i in &mut p.interfaces {
            if wires.contains(&i.namespace) {
                i.master = None;
            }
        }
        for c in &p.cells {
            let json = |l: &Params| serde_json::to_string(l).unwrap_or_else(|_| "{}".into());
            let mut argv = vec![
                "lab".into(),
                "wire".into(),
                "--client-if".into(),
                "to-client".into(),
                "--server-if".into(),
                "to-server".into(),
                "--seed".into(),
                p.seed.to_string(),
                "--up".into(),
                json(&c.up),
                "--down".into(),
                json(&c.down),
                "--stats".into(),
                wire_stats_path(&p.name, &c.id).display().to_string(),
            ];
            if p.busy_poll {
                argv.push("--busy-poll".into());
            }
            if p.ring_frames != crate::topology::model::ring::DEFAULT_FRAMES {
                argv.push("--ring-frames".into());
                argv.push(p.ring_frames.to_string());
            }
            p.processes.push(Process {
                namespace: c.wire_ns.clone(),
                role: "wire".into(),
                argv,
                ready: Ready::Line,
                certs: None,
                env: Vec::new(),
                files: None,
            });
        }
    }
    p.shaping = Some(ShapingChoice {
        backend,
        why: why.into(),
    });
    p
}

/// Where a cell's `lab wire` writes its counters (its control socket is next to it).
pub fn wire_stats_path(lab: &str, cell: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}/wire/{cell}.json", run_dir(lab)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shaping: &str, profile: &str) -> Plan {
        let yaml =
            format!("name: d\napproaches: [sse]\nprofiles:\n  p: {profile}\nshaping: {shaping}\n");
        let t = crate::topology::parse::parse("t.yaml", &yaml).expect("valid topology");
        crate::plan::plan(&t).expect("plan")
    }

    fn netem(missing: Option<&str>, seeded: bool) -> impl FnOnce() -> Result<Netem> {
        move || {
            Ok(Netem {
                missing: missing.map(str::to_owned),
                seeded,
            })
        }
    }

    fn never() -> Result<Netem> {
        panic!("the probe is not asked when the topology settles the backend")
    }

    fn choice(p: &Plan) -> (Shaper, String) {
        let c = p.shaping.as_ref().expect("decided");
        (c.backend, c.why.clone())
    }

    #[test]
    fn the_topology_s_choice_needs_no_probe() {
        let p = decide(plan("{ backend: userspace }", "{ delay: 5ms }"), never).unwrap();
        assert_eq!(
            choice(&p),
            (Shaper::Userspace, "asked for by the topology".into())
        );
        // The userspace layout runs lab wire in the wire namespace, with no bridge there.
        assert!(p.processes.iter().any(|x| x.role == "wire"));
        assert!(
            !p.interfaces
                .iter()
                .any(|i| i.kind == "bridge" && i.namespace.ends_with("-wire"))
        );
    }

    #[test]
    fn auto_takes_netem_when_there_and_says_when_it_ignores_the_seed() {
        let p = decide(
            plan("{ backend: auto }", "{ delay: 5ms }"),
            netem(None, true),
        )
        .unwrap();
        assert_eq!(
            choice(&p),
            (Shaper::Kernel, "auto: netem is available".into())
        );
        assert!(!p.processes.iter().any(|x| x.role == "wire"));
        let p = decide(
            plan("{ backend: kernel }", "{ delay: 5ms }"),
            netem(None, false),
        )
        .unwrap();
        assert_eq!(
            choice(&p),
            (
                Shaper::Kernel,
                format!("asked for by the topology; netem is available; {SEED_IGNORED}")
            )
        );
    }

    #[test]
    fn without_netem_auto_falls_back_and_kernel_is_refused() {
        let p = decide(
            plan("{ backend: auto }", "{ delay: 5ms }"),
            netem(Some("no sch_netem"), false),
        )
        .unwrap();
        assert_eq!(choice(&p), (Shaper::Userspace, "auto: no sch_netem".into()));
        let e = decide(
            plan("{ backend: kernel }", "{ delay: 5ms }"),
            netem(Some("no sch_netem"), false),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("asks for the kernel backend, but no sch_netem"),
            "{e}"
        );
        assert!(e.contains("backend: userspace"), "{e}");
    }
}
