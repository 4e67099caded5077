//! `lab status`: what labs are up, and what is where in them — read from the state
//! records plus /proc (process state and RSS) and /run/netns.

use super::state::{Phase, State};
use super::sys;
use crate::topology::plan::{describe_link, run_dir};
use serde_json::json;
use tabled::settings::Style;

/// Live facts about a recorded process.
pub fn process_live(pid: u32, start: u64) -> Option<(char, u64)> {
    (sys::start_time(pid) == Some(start))
        .then(|| sys::proc_state_rss(pid))
        .flatten()
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

fn fmt_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// The status of some labs as JSON: each state record with live facts added.
pub fn json(states: &[State]) -> serde_json::Value {
    let labs: Vec<_> = states
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            let procs: Vec<_> = s
                .processes
                .iter()
                .map(|p| {
                    let live = process_live(p.pid, p.start);
                    json!({
                        "role": p.role,
                        "pid": p.pid,
                        "alive": live.is_some(),
                        "state": live.map(|(c, _)| c.to_string()),
                        "rss_bytes": live.map(|(_, r)| r),
                    })
                })
                .collect();
            let nss: Vec<_> = s
                .namespaces
                .iter()
                .map(|n| json!({"name": n, "exists": sys::netns_exists(n)}))
                .collect();
            v["live"] = json!({
                "owner_alive": s.owner_alive(),
                "processes": procs,
                "namespaces": nss,
                "shaping": "none: each wire namespace bridges its two veths",
            });
            v
        })
        .collect();
    json!({ "labs": labs })
}

/// The status of one lab as a person reads it.
pub fn render(s: &State) -> String {
    let p = &s.plan;
    let mut out = String::new();
    out.push_str(&format!(
        "lab {}: {}, since {} (built by pid {}), from {}\n",
        s.name,
        match (s.phase, s.owner_alive()) {
            (Phase::Up, _) => "up",
            (Phase::Building, true) => "being built",
            (Phase::Building, false) =>
                "left half-built by a lab process that is gone; `lab clean` removes it",
        },
        fmt_time(s.created),
        s.owner_pid,
        s.topology.display()
    ));
    out.push_str(&format!(
        "llm: {} ({}) for model {}, at http://{}:{} in {}\n",
        p.llm.kind, p.llm.detail, p.llm.model, p.llm.address, p.llm.port, p.llm.namespace
    ));
    out.push_str(
        "shaping: none applied; each wire namespace bridges its two veths (the profiles below are what the cells are meant to get)\n\n",
    );

    #[derive(tabled::Tabled)]
    struct CellRow {
        cell: String,
        node: String,
        profile: String,
        namespaces: String,
        client: String,
        #[tabled(rename = "server URL")]
        url: String,
        #[tabled(rename = "profile (up / down)")]
        link: String,
    }
    let nodes = super::node::nodes(p);
    let rows: Vec<CellRow> = p
        .cells
        .iter()
        .map(|c| {
            // The shortest node name that names this cell's client side.
            let node = nodes
                .iter()
                .filter(|(n, ns)| ns == &c.client_ns && !n.contains('.') && !n.starts_with("lab-"))
                .map(|(n, _)| n.clone())
                .next()
                .unwrap_or_else(|| c.id.clone());
            let (up, down) = (describe_link(&c.up), describe_link(&c.down));
            CellRow {
                cell: c.id.clone(),
                node,
                profile: c.profile.clone(),
                namespaces: format!(
                    "{}-{{client,wire,server}}",
                    c.client_ns.trim_end_matches("-client")
                ),
                client: c.client_addr.to_string(),
                url: c.url.clone(),
                link: if up == down {
                    up
                } else {
                    format!("{up} / {down}")
                },
            }
        })
        .collect();
    out.push_str(&tabled::Table::new(rows).with(Style::markdown()).to_string());
    out.push_str("\n\n");

    #[derive(tabled::Tabled)]
    struct ProcRow {
        role: String,
        namespace: String,
        pid: u32,
        state: String,
        rss: String,
        log: String,
    }
    let rows: Vec<ProcRow> = s
        .processes
        .iter()
        .map(|r| {
            let live = process_live(r.pid, r.start);
            ProcRow {
                role: match &r.cell {
                    Some(c) => format!("{c} {}", r.role),
                    None => r.role.clone(),
                },
                namespace: r.namespace.clone(),
                pid: r.pid,
                state: match live {
                    Some(('Z', _)) => "exited (zombie)".into(),
                    Some((c, _)) => format!("running ({c})"),
                    None => "gone".into(),
                },
                rss: live.map(|(_, b)| fmt_bytes(b)).unwrap_or_default(),
                log: r.log.display().to_string(),
            }
        })
        .collect();
    out.push_str(&tabled::Table::new(rows).with(Style::markdown()).to_string());
    out.push_str("\n\n");
    let missing: Vec<&String> = s
        .namespaces
        .iter()
        .filter(|n| !sys::netns_exists(n))
        .collect();
    out.push_str(&format!(
        "namespaces: {} ({} of {} present){}\n",
        s.plan.prefix.clone() + "-*",
        s.namespaces.len() - missing.len(),
        s.namespaces.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; missing: {}",
                missing
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    if let Some(c) = p.cells.first() {
        let dir = run_dir(&s.name);
        out.push_str(&format!(
            "\ntry:\n  lab shell --lab {name} {id}                 # a shell in {id}'s client namespace\n  lab exec --lab {name} {id} -- lab client {a} --url {url} --ca {dir}/certs/{id}/cert.pem\n  lab down {name}\n",
            name = s.name,
            id = c.id,
            a = c.approach.approach(),
            url = c.url,
        ));
    }
    out
}
