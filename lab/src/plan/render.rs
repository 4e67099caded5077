//! The plan as a person reads it: `lab plan`'s output, and the shaping line that
//! `lab up`, `lab status` and `lab run` print. Pure.

use super::Plan;
use super::layout::Shaper;
use crate::topology::model::{Backend, Connection};

/// The shaping backend, why it was chosen, and the seed.
pub fn shaping_line(p: &Plan) -> String {
    match &p.shaping {
        Some(c) => format!(
            "{} ({}{}), seed {}; {}",
            match c.backend {
                Shaper::Kernel => "kernel",
                Shaper::Userspace => "userspace",
            },
            match (c.backend, p.busy_poll) {
                (Shaper::Kernel, _) => "netem on each wire namespace's bridge ports",
                (Shaper::Userspace, false) => "lab wire between each wire namespace's veths",
                (Shaper::Userspace, true) =>
                    "lab wire between each wire namespace's veths, busy-polling (a CPU per cell)",
            },
            match c.backend {
                Shaper::Userspace
                    if p.ring_frames != crate::topology::model::ring::DEFAULT_FRAMES =>
                    format!(
                        ", receive rings of {} slots ({} MiB each)",
                        p.ring_frames,
                        (p.ring_frames as u64 * crate::topology::model::ring::FRAME_SIZE as u64)
                            >> 20
                    ),
                _ => String::new(),
            },
            p.seed,
            c.why
        ),
        None => format!("not decided yet, seed {}", p.seed),
    }
}

/// The transport settings in force, one line per distinct setting: QUIC's for the
/// approaches over QUIC, TCP's for those over TCP, each with the approaches it applies
/// to. A `*` marks a value that is not the stack's default.
pub fn transport_lines(p: &Plan) -> Vec<String> {
    grouped(p, "transport", |c| {
        Some(match c.approach.transport {
            crate::approach::Transport::Udp => format!("QUIC: {}", c.transport.quic.describe()),
            crate::approach::Transport::Tcp => format!("TCP: {}", c.transport.tcp.describe()),
        })
    })
}

/// The library each QUIC approach's server and client are built on, a line per stack
/// with the approaches on it: `stack (wt, wt-dgram): wtransport 0.7.2`.
pub fn stack_lines(p: &Plan) -> Vec<String> {
    grouped(p, "stack", |c| c.approach.stack.map(str::to_owned))
}

/// A line per distinct value `value` gives the cells (none for `None`), in the cells'
/// order, with the approaches it applies to: `<kind> (<names>): <value>`. A browser
/// brings its own client and transport, so its cell counts as its server's.
fn grouped(p: &Plan, kind: &str, value: impl Fn(&super::Cell) -> Option<String>) -> Vec<String> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for c in &p.cells {
        let Some(v) = value(c) else {
            continue;
        };
        let name = if c.client.is_browser() {
            format!("{}'s server", c.name)
        } else {
            c.name.clone()
        };
        match groups.iter_mut().find(|(l, _)| *l == v) {
            Some((_, names)) => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            None => groups.push((v, vec![name])),
        }
    }
    groups
        .into_iter()
        .map(|(v, names)| format!("{kind} ({}): {v}", names.join(", ")))
        .collect()
}

/// The approaches whose entry sets a connection mode of its own, other than the
/// workload's: `connection (wt-fresh): fresh`.
pub fn connection_lines(p: &Plan) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for c in &p.cells {
        let mode = c.connection(&p.workload);
        if mode != p.workload.connection && !seen.contains(&c.name) {
            seen.push(c.name.clone());
            out.push(format!(
                "connection ({}): {}, where the workload's is {}",
                c.name,
                mode_name(mode),
                mode_name(p.workload.connection)
            ));
        }
    }
    out
}

/// The approaches measured by a browser instead of lab's native client:
/// `client (wt-browser): headless Chromium`.
pub fn client_lines(p: &Plan) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for c in &p.cells {
        if c.client.is_browser() && !seen.contains(&c.name) {
            seen.push(c.name.clone());
            out.push(format!(
                "client ({}): headless Chromium running lab's page{}",
                c.name,
                if c.client == crate::topology::model::ClientKind::BrowserEventsource {
                    ", SSE through EventSource"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

fn mode_name(c: Connection) -> &'static str {
    match c {
        Connection::Reuse => "reuse",
        Connection::Fresh => "fresh",
    }
}

/// The plan as a person reads it.
pub fn render(p: &Plan) -> String {
    let mut out = head(p);
    out.push_str(&cells_table(p));
    out.push_str(&nodes_table(p));
    out.push_str(&interfaces_table(p));
    out.push_str(&processes_table(p));
    out.push_str(&sysctls_table(p));
    out
}

/// The lab's size, its shaping, transport, stack, connection and client lines, its LLM,
/// its runs and its workload.
fn head(p: &Plan) -> String {
    let mut out = format!(
        "lab {}: {} cells, {} namespaces\n",
        p.name,
        p.cells.len(),
        p.namespaces.len()
    );
    let asked = match p.backend {
        Backend::Auto => "auto",
        Backend::Kernel => "kernel",
        Backend::Userspace => "userspace",
    };
    match &p.shaping {
        Some(c) => out.push_str(&format!(
            "shaping: {} backend (asked: {asked}; {}), seed {}\n",
            match c.backend {
                Shaper::Kernel => "kernel",
                Shaper::Userspace => "userspace",
            },
            c.why,
            p.seed
        )),
        None => out.push_str(&format!("shaping: {asked} backend, seed {}\n", p.seed)),
    }
    for l in transport_lines(p)
        .into_iter()
        .chain(stack_lines(p))
        .chain(connection_lines(p))
        .chain(client_lines(p))
    {
        out.push_str(&l);
        out.push('\n');
    }
    out.push_str(&format!(
        "llm: {} ({}) for model {}, in {} at http://{}:{}\n",
        p.llm.kind, p.llm.detail, p.llm.model, p.llm.namespace, p.llm.address, p.llm.port
    ));
    if p.workload.runs > 1 {
        out.push_str(&format!(
            "runs: {}, each built and taken down on its own, shaping seeds {} to {}\n",
            p.workload.runs,
            p.seed,
            p.seed + u64::from(p.workload.runs) - 1
        ));
    }
    out.push_str(&workload_line(p));
    out
}

/// The workload: a load test's levels, or the prompts and how they run.
fn workload_line(p: &Plan) -> String {
    let connection = match p.workload.connection {
        Connection::Reuse => "reuse",
        Connection::Fresh => "fresh",
    };
    match &p.workload.load {
        Some(l) => format!("workload: {}\n\n", load_line(l, connection)),
        None => format!(
            "workload: {} prompts, {connection} connection, repeat {}{}, cells {}\n\n",
            p.workload.prompts,
            p.workload.repeat,
            if p.workload.concurrency > 1 {
                format!(", {} in flight at once", p.workload.concurrency)
            } else {
                String::new()
            },
            if p.workload.parallel {
                "in parallel"
            } else {
                "one after another"
            }
        ),
    }
}

/// A row a cell: approach, profile, addresses and each direction's link.
fn cells_table(p: &Plan) -> String {
    #[derive(tabled::Tabled)]
    struct CellRow {
        cell: String,
        approach: String,
        profile: String,
        client: String,
        server: String,
        #[tabled(rename = "up (client to server)")]
        up: String,
        #[tabled(rename = "down (server to client)")]
        down: String,
    }
    let rows: Vec<CellRow> = p
        .cells
        .iter()
        .map(|c| CellRow {
            cell: c.id.clone(),
            approach: c.name.clone(),
            profile: c.profile.clone(),
            client: c.client_addr.to_string(),
            server: c.url.clone(),
            up: c.up.describe(),
            down: c.down.describe(),
        })
        .collect();
    format!("{}\n\n", crate::table::markdown(rows))
}

/// A row an interface, in the order `lab up` creates them.
fn interfaces_table(p: &Plan) -> String {
    #[derive(tabled::Tabled)]
    struct IfRow {
        namespace: String,
        interface: String,
        kind: String,
        peer: String,
        address: String,
        master: String,
    }
    let rows: Vec<IfRow> = p
        .interfaces
        .iter()
        .map(|i| IfRow {
            namespace: i.namespace.clone(),
            interface: i.name.clone(),
            kind: i.kind.clone(),
            peer: i.peer.clone().unwrap_or_default(),
            address: i
                .address
                .iter()
                .chain(&i.more_addresses)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            master: i.master.clone().unwrap_or_default(),
        })
        .collect();
    format!("{}\n\n", crate::table::markdown(rows))
}

/// A row a process, with its whole command line.
/// The user's nodes, if any: where each runs, its address and ports.
pub fn nodes_table(p: &Plan) -> String {
    if p.nodes.is_empty() {
        return String::new();
    }
    #[derive(tabled::Tabled)]
    struct NodeRow {
        node: String,
        cell: String,
        namespace: String,
        address: String,
        ports: String,
    }
    let rows: Vec<NodeRow> = p
        .nodes
        .iter()
        .map(|n| NodeRow {
            node: n.name.clone(),
            cell: n.cell.clone().unwrap_or_else(|| "shared".into()),
            namespace: n.namespace.clone(),
            address: n.address.to_string(),
            ports: n
                .ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    format!("{}\n\n", crate::table::markdown(rows))
}

fn processes_table(p: &Plan) -> String {
    #[derive(tabled::Tabled)]
    struct ProcRow {
        namespace: String,
        role: String,
        command: String,
    }
    let rows: Vec<ProcRow> = p
        .processes
        .iter()
        .map(|pr| ProcRow {
            namespace: pr.namespace.clone(),
            role: pr.role.clone(),
            command: pr.argv.join(" "),
        })
        .collect();
    format!("{}\n", crate::table::markdown(rows))
}

/// A load test's kernel settings, if any.
fn sysctls_table(p: &Plan) -> String {
    if p.sysctls.is_empty() {
        return String::new();
    }
    #[derive(tabled::Tabled)]
    struct SysctlRow {
        namespace: String,
        setting: String,
        value: String,
        why: String,
    }
    let rows: Vec<SysctlRow> = p
        .sysctls
        .iter()
        .map(|c| SysctlRow {
            namespace: c.namespace.clone(),
            setting: c.key.replace('/', "."),
            value: c.value.clone(),
            why: c.why.clone(),
        })
        .collect();
    format!("\n{}\n", crate::table::markdown(rows))
}

/// A load workload in a line: levels, ramp, hold or cycles, the answers, retries.
pub fn load_line(l: &crate::topology::model::LoadWorkload, connection: &str) -> String {
    use crate::topology::units::Dur;
    let (b0, b1) = l.backoff();
    if l.is_open() {
        return open_line(l, connection);
    }
    let mut workers = match l.workers() {
        1 => String::new(),
        n => format!(", {n} load generator processes"),
    };
    if l.server_workers() > 1 {
        let names: Vec<&str> = crate::approach::all()
            .filter(|a| a.shares_port())
            .map(|a| a.name)
            .collect();
        workers += &format!(
            ", {} server processes on each port for {}",
            l.server_workers(),
            names.join(", ")
        );
    }
    if l.socket_per_connection == Some(true) {
        workers += ", a UDP socket per QUIC connection";
    }
    format!(
        "load test, levels {} concurrent streams, ramp {}, {}, {connection} connection, {}retry after {} to {}, sampled every {}{workers}; cells one after another",
        l.levels
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" -> "),
        Dur(l.ramp()),
        match (l.hold(), l.cycles) {
            (Some(h), _) => format!("hold {}", Dur(h)),
            (None, Some(c)) => format!("{c} streams per slot"),
            (None, None) => String::new(),
        },
        match l.per_connection {
            Some(n) if n > 1 =>
                format!("{n} streams per connection where the approach multiplexes, "),
            _ => String::new(),
        },
        Dur(b0),
        Dur(b1),
        Dur(l.sample()),
    )
}

/// An open loop in a line: the rates (or the trace), the arrivals, the periods, the SLOs.
fn open_line(l: &crate::topology::model::LoadWorkload, connection: &str) -> String {
    use crate::topology::units::Dur;
    let what = match &l.trace {
        Some(t) => format!("send times from {t}"),
        None => format!(
            "{} requests/s, {} arrivals{} (seed {})",
            l.rates
                .iter()
                .map(|r| lab_clients::load::fmt_rate(*r))
                .collect::<Vec<_>>()
                .join(" -> "),
            l.arrivals.as_deref().unwrap_or("poisson"),
            l.burstiness
                .map_or(String::new(), |b| format!(", burstiness {b}")),
            l.seed.unwrap_or(1)
        ),
    };
    let slo = l.slo.map_or(String::new(), |s| {
        let mut b = Vec::new();
        for (name, d) in [
            ("TTFT", s.ttft),
            ("ITL p99", s.itl_p99),
            ("TPOT", s.tpot),
            ("E2E", s.e2e),
        ] {
            if let Some(d) = d {
                b.push(format!("{name} <= {d}"));
            }
        }
        format!(
            "; SLOs {} for {}% of requests{}",
            b.join(", "),
            s.share.map_or(90.0, |p| p.0 * 100.0),
            match l.search.unwrap_or(0) {
                0 => String::new(),
                n => format!(", searching for the max rate at SLO in {n} halvings"),
            }
        )
    });
    format!(
        "open-loop load test, {what}, {} per level (ramp {}, warm-up {}, cool-down {}), lag bound {}, at most {} in flight, {connection} connection{slo}; cells one after another",
        Dur(l.duration()),
        Dur(l.ramp()),
        Dur(l.warmup.map_or(std::time::Duration::ZERO, |d| d.0)),
        Dur(l.cooldown.map_or(std::time::Duration::ZERO, |d| d.0)),
        Dur(l
            .lag_bound
            .map_or(std::time::Duration::from_millis(10), |d| d.0)),
        l.max_in_flight(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_line_says_when_each_quic_connection_has_a_socket_of_its_own() {
        let mut l = crate::topology::model::LoadWorkload {
            levels: vec![100],
            ..Default::default()
        };
        assert!(!load_line(&l, "reuse").contains("UDP socket"));
        l.socket_per_connection = Some(true);
        let line = load_line(&l, "reuse");
        assert!(
            line.contains(", a UDP socket per QUIC connection;"),
            "{line}"
        );
    }
}
