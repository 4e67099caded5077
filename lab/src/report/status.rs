//! `lab status` as a person and a program read it: a lab's state record together with
//! its live facts ([`crate::netlab::live`]). Pure: everything it shows is handed in.

use crate::netlab::live::Live;
use crate::netlab::state::{Phase, State};
use crate::plan::render::shaping_line;
use crate::plan::run_dir;
use serde_json::json;

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
pub fn json(labs: &[(State, Live)]) -> serde_json::Value {
    let labs: Vec<_> = labs
        .iter()
        .map(|(s, l)| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            let procs: Vec<_> = s
                .processes
                .iter()
                .zip(&l.processes)
                .map(|(p, &live)| {
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
                .zip(&l.namespaces)
                .map(|(n, exists)| json!({"name": n, "exists": exists}))
                .collect();
            v["live"] = json!({
                "owner_alive": l.owner_alive,
                "processes": procs,
                "namespaces": nss,
                "shaping": shaping_line(&s.plan),
                "wire": l.wire.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            });
            v
        })
        .collect();
    json!({ "labs": labs })
}

/// The status of one lab as a person reads it.
pub fn render(s: &State, l: &Live) -> String {
    let mut out = head(s, l);
    out.push_str(&cells_table(&s.plan));
    out.push_str(&crate::plan::render::nodes_table(&s.plan));
    out.push_str(&processes_table(s, l));
    out.push_str(&wire_counters(&l.wire));
    out.push_str(&namespaces_line(s, l));
    out.push_str(&try_lines(s));
    out
}

/// The lab's phase and who built it, its LLM and its shaping.
fn head(s: &State, l: &Live) -> String {
    let p = &s.plan;
    let mut out = format!(
        "lab {}: {}, since {} (built by pid {}), from {}\n",
        s.name,
        match (s.phase, s.handed_over, l.owner_alive) {
            (Phase::Up, true, _) => "up",
            (Phase::Up, false, true) => "up, in use by the lab process that built it",
            (Phase::Building, _, true) => "being built",
            (_, _, false) => "left behind by a lab process that is gone; `lab clean` removes it",
        },
        fmt_time(s.created),
        s.owner_pid,
        s.topology.display()
    );
    out.push_str(&format!(
        "llm: {} ({}) for model {}, at http://{}:{} in {}\n",
        p.llm.kind, p.llm.detail, p.llm.model, p.llm.address, p.llm.port, p.llm.namespace
    ));
    out.push_str(&format!("shaping: {}\n\n", shaping_line(p)));
    out
}

/// A row a cell: its node name for `lab shell`, namespaces, addresses and links.
fn cells_table(p: &crate::plan::Plan) -> String {
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
    let nodes = crate::plan::node::nodes(p);
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
            let (up, down) = (c.up.describe(), c.down.describe());
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
    format!("{}\n\n", crate::table::markdown(rows))
}

/// A row a process: where it runs, whether it still does, its memory and its log.
fn processes_table(s: &State, l: &Live) -> String {
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
        .zip(&l.processes)
        .map(|(r, &live)| ProcRow {
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
        })
        .collect();
    format!("{}\n\n", crate::table::markdown(rows))
}

/// `lab wire`'s counters per cell and direction, and a trace's unused chances.
fn wire_counters(wires: &[(String, crate::shaping::stats::WireStats)]) -> String {
    if wires.is_empty() {
        return String::new();
    }
    #[derive(tabled::Tabled)]
    struct WireRow {
        cell: String,
        direction: &'static str,
        #[tabled(rename = "frames in")]
        frames_in: u64,
        #[tabled(rename = "frames out")]
        frames_out: u64,
        #[tabled(rename = "bytes out")]
        bytes_out: u64,
        #[tabled(rename = "lost (loss model)")]
        lost: u64,
        #[tabled(rename = "dropped (queue full)")]
        queue: u64,
        #[tabled(rename = "dropped (send)")]
        send: u64,
        #[tabled(rename = "dropped (ring full)")]
        ring: u64,
        #[tabled(rename = "ring wait p99 / max (us)")]
        waited: String,
    }
    let mut rows = Vec::new();
    for (cell, w) in wires {
        for (direction, c) in [("up", &w.up), ("down", &w.down)] {
            rows.push(WireRow {
                cell: cell.clone(),
                direction,
                frames_in: c.in_frames,
                frames_out: c.out_frames,
                bytes_out: c.out_bytes,
                lost: c.dropped_loss,
                queue: c.dropped_queue,
                send: c.dropped_send,
                ring: c.dropped_input,
                waited: c
                    .waited_us
                    .map(|(_, p99, max)| format!("{p99} / {max}"))
                    .unwrap_or_default(),
            });
        }
    }
    let mut out = format!(
        "link emulator counters (updated every second):\n{}\n\n",
        crate::table::markdown(rows)
    );
    for (cell, w) in wires {
        for (direction, c, p) in [
            ("up", &w.up, &w.up_params),
            ("down", &w.down, &w.down_params),
        ] {
            if p.trace.is_some() {
                out.push_str(&format!(
                    "{cell} {direction}: the trace's delivery chances left unused so far (nothing waiting for the link): {}\n",
                    fmt_bytes(c.trace_unused_bytes)
                ));
            }
        }
    }
    out
}

/// How many of the lab's namespaces are there, and which are missing.
fn namespaces_line(s: &State, l: &Live) -> String {
    let missing: Vec<&String> = s
        .namespaces
        .iter()
        .zip(&l.namespaces)
        .filter(|(_, exists)| !**exists)
        .map(|(n, _)| n)
        .collect();
    format!(
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
    )
}

/// What to try next in the first cell: a shell, a client, taking it down.
fn try_lines(s: &State) -> String {
    let Some(c) = s.plan.cells.first() else {
        return String::new();
    };
    let dir = run_dir(&s.name);
    format!(
        "\ntry:\n  lab shell --lab {name} {id}                 # a shell in {id}'s client namespace\n  lab exec --lab {name} {id} -- lab client {a} --url {url} --ca {dir}/certs/{id}/cert.pem\n  lab down {name}\n",
        name = s.name,
        id = c.id,
        a = c.approach,
        url = c.url,
    )
}
