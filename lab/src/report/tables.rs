//! The tables of a run, and two runs compared. Pure: computed from a [`Run`], so
//! `run.json` alone can be rendered again.

use crate::metrics::{Run, cells_of, profiles, tokens, wire};
use crate::plan::render::shaping_line;
use lab_clients::record::{Summary, summary_table};

fn fmt_rate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.2} Mbit/s", bps / 1e6)
    } else {
        format!("{:.1} kbit/s", bps / 1e3)
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// The library under each QUIC approach, as the run recorded it (a run saved before
/// lab recorded stacks has none): `stack (wt, wt-dgram): wtransport 0.7.2`.
fn stack_lines(run: &Run) -> Vec<String> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for c in &run.summaries {
        let Some(stack) = c.stack.as_deref() else {
            continue;
        };
        match groups.iter_mut().find(|(s, _)| *s == stack) {
            Some((_, names)) if !names.contains(&c.approach.as_str()) => names.push(&c.approach),
            Some(_) => {}
            None => groups.push((stack, vec![&c.approach])),
        }
    }
    groups
        .into_iter()
        .map(|(s, names)| format!("stack ({}): {s}", names.join(", ")))
        .collect()
}

/// The report: what ran and how, then per profile the reference's summary table and the
/// wire table; then the link behaviour, the capture cross-check, the host-stack drops,
/// the anatomy's checks, token mismatches and the expectations.
pub fn render(run: &Run) -> String {
    let mut out = head(run);
    out.push_str(&workload_lines(run));
    for p in profiles(run) {
        out.push_str(&profile_section(run, &p));
    }
    // A load test does not capture (thousands of streams): its wire figures are the
    // kernel's counters, per level, in its tables.
    if !run.cells.iter().any(|c| c.load.is_some()) {
        out.push_str(&links_section(run));
        out.push_str(&captures_section(run));
    }
    out.push_str(&super::anatomy::checks(&run.cells));
    out.push_str(&mismatches_and_expectations(run));
    out
}

/// The run's title, its shard, the transport, stack, connection and client lines, and
/// the cells whose warm-up needed a second try.
fn head(run: &Run) -> String {
    let mut out = format!(
        "# lab run: {}\n\n{} cells in {:.1} s; shaping: {}\n\n",
        run.name,
        run.cells.len(),
        run.seconds,
        shaping_line(&run.plan)
    );
    for f in &run.faults {
        out.push_str(&format!("Fault: {f}.\n\n"));
    }
    if let Some(s) = run.shard {
        out.push_str(&format!(
            "Shard {s} of a run: cells {}. Expectations are checked when `lab merge` joins the shards.\n\n",
            run.cells
                .iter()
                .map(|c| c.cell.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let kernel_cc = run
        .environment
        .get("tcp_congestion_control")
        .and_then(|v| v.as_str());
    for l in crate::plan::render::transport_lines(&run.plan) {
        let l = match kernel_cc {
            Some(cc) => l.replace(
                "the kernel's default",
                &format!("the kernel's default ({cc} here)"),
            ),
            None => l,
        };
        out.push_str(&format!("- {l}\n"));
    }
    let browser = run
        .environment
        .get("chromium")
        .and_then(|v| v.as_str())
        .map(|v| format!("browser: {v}"));
    for l in stack_lines(run)
        .into_iter()
        .chain(crate::plan::render::connection_lines(&run.plan))
        .chain(crate::plan::render::client_lines(&run.plan))
        .chain(browser)
    {
        out.push_str(&format!("- {l}\n"));
    }
    out.push('\n');
    for c in &run.cells {
        if let Some(first) = &c.warmup_retried {
            out.push_str(&format!(
                "{} ({}@{}): the warm-up's first try failed ({first}); its second try completed, and the workload ran after it. The logs of both tries are in the results' logs/ (`{}-warmup.log`, `{}-warmup-2.log`).\n\n",
                c.cell.id, c.cell.name, c.cell.profile, c.cell.id, c.cell.id
            ));
        }
    }
    out
}

/// A load test's workload, or how prompts in flight at once were carried.
fn workload_lines(run: &Run) -> String {
    let mut out = String::new();
    if let Some(l) = &run.plan.workload.load {
        let conn = match run.plan.workload.connection {
            crate::topology::model::Connection::Reuse => "reuse",
            crate::topology::model::Connection::Fresh => "fresh",
        };
        out.push_str(&format!(
            "Workload: {}; the answers: {}.\n\n",
            crate::plan::render::load_line(l, conn),
            run.plan.llm.detail
        ));
    }
    if run.plan.workload.load.is_none() && run.plan.llm.kind == "relay" {
        // A real upstream's answers are the model's: say which, and how it sampled.
        out.push_str(&format!(
            "Upstream: {} (relayed), model {}.\n\n",
            run.plan.llm.detail, run.plan.llm.model
        ));
    }
    let n = run.plan.workload.concurrency;
    if n <= 1 {
        return out;
    }
    // Each approach of the run once, by its name here, with its protocol.
    let mut approaches: Vec<(&str, crate::approach::Approach)> = Vec::new();
    for c in &run.cells {
        if !approaches.iter().any(|(n, _)| *n == c.cell.name) {
            approaches.push((&c.cell.name, c.cell.approach));
        }
    }
    type Named<'a> = &'a (&'a str, crate::approach::Approach);
    let (each, kept): (Vec<Named>, Vec<Named>) =
        approaches.iter().partition(|(_, a)| !a.keeps_connections);
    let (mux, own): (Vec<Named>, Vec<Named>) = kept.into_iter().partition(|(_, a)| a.multiplexed);
    let list = |v: &[&(&str, crate::approach::Approach)]| {
        v.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    };
    out.push_str(&format!("Concurrency: {n} prompts in flight in each cell"));
    if !mux.is_empty() {
        out.push_str(&format!(
            "; as {n} streams of one connection: {}",
            list(&mux)
        ));
    }
    if !own.is_empty() {
        out.push_str(&format!("; on {n} connections: {}", list(&own)));
    }
    if !each.is_empty() {
        out.push_str(&format!(
            "; on a connection per prompt (the server closes each after its answer): {}",
            list(&each)
        ));
    }
    out.push_str(". Each record names its connection (`conn`) and slot.\n\n");
    out
}

/// Lines under a table, one a note, and a blank line after them if there were any.
fn notes(lines: &[String]) -> String {
    let mut out = String::new();
    for d in lines {
        out.push_str(&format!("- {d}\n"));
    }
    if !lines.is_empty() {
        out.push('\n');
    }
    out
}

/// One profile: a load test's levels and drops; or the summary table, the drops, the
/// stalls and urgent prompts where they tell, each cell's own lines, and the wire and
/// anatomy tables.
fn profile_section(run: &Run, p: &str) -> String {
    let cells = cells_of(run, p);
    let link = cells.first().map(|c| crate::metrics::link_of(&c.cell));
    let mut out = format!("## {p} ({})\n\n", link.unwrap_or_default());
    let backend = run.plan.shaping.as_ref().map(|s| s.backend);
    let drops = super::drops::notes(&cells, backend);
    if cells.iter().any(|c| c.load.is_some()) {
        out.push_str(&super::load::section(&cells));
        if let Some(t) = super::drops::levels_table(&cells) {
            out.push_str("The host's own drops over each level (c: client, w: the wire namespace between them, s: server; with netem and a loss rate, the wire's qdisc drops include the profile's loss):\n\n");
            out.push_str(&t);
            out.push_str("\n\n");
        }
        out.push_str(&notes(&drops));
        return out;
    }
    let sums: Vec<Summary> = cells
        .iter()
        .map(|c| Summary::of(&c.cell.name, &c.records))
        .collect();
    out.push_str(&summary_table(&sums));
    out.push_str("\n\n");
    out.push_str(&notes(&drops));
    // With prompts in flight at once (head-of-line blocking), or tokens in
    // datagrams (what a retransmission costs the others), the gaps tell.
    let datagrams = cells
        .iter()
        .any(|c| c.records.iter().any(|r| r.datagrams.is_some()));
    if run.plan.workload.concurrency > 1 || datagrams {
        out.push_str(&stalls_table(&cells));
    }
    if cells.iter().any(|c| c.records.iter().any(|r| r.urgent)) {
        out.push_str(&urgent_table(&cells));
    }
    for c in &cells {
        out.push_str(&cell_lines(c));
    }
    out.push_str(&wire_table(&cells));
    out.push_str(&super::anatomy::table(&cells));
    out
}

/// A cell's own lines: raw QUIC's 0-RTT, datagram delivery, the latency its server
/// reports about itself.
fn cell_lines(c: &crate::metrics::CellResult) -> String {
    let mut out = String::new();
    // Raw QUIC says whether each new connection's prompt went out as 0-RTT data.
    let tried: Vec<bool> = c.records.iter().filter_map(|r| r.zero_rtt).collect();
    if !tried.is_empty() {
        out.push_str(&format!(
            "{}: 0-RTT accepted for {} of {} new connections (the first has no session to resume).\n\n",
            c.cell.name,
            tried.iter().filter(|&&t| t).count(),
            tried.len()
        ));
    }
    if let Some(t) = crate::metrics::datagrams::of(&c.records, &c.connections) {
        out.push_str(&t.line(&c.cell.name));
    }
    let relayed = c.records.iter().filter_map(|r| r.relay);
    if let Some(sum) = relayed.reduce(|mut a, b| {
        a.add(b);
        a
    }) {
        out.push_str(&sum.line(&c.cell.name));
    }
    if let Some(l) = server_timing_line(c) {
        out.push_str(&l);
    }
    out
}

/// Wire bytes and packets per token at the client's interface, each against the first.
fn wire_table(cells: &[&crate::metrics::CellResult]) -> String {
    #[derive(tabled::Tabled)]
    struct WireRow {
        #[tabled(rename = "Approach")]
        approach: String,
        #[tabled(rename = "Wire bytes up")]
        up: u64,
        #[tabled(rename = "Wire bytes down")]
        down: u64,
        #[tabled(rename = "Packets up")]
        pu: u64,
        #[tabled(rename = "Packets down")]
        pd: u64,
        #[tabled(rename = "Tokens")]
        tokens: usize,
        #[tabled(rename = "Wire B/tok")]
        bpt: String,
        #[tabled(rename = "L3 B/tok")]
        l3: String,
        #[tabled(rename = "vs first")]
        ratio: String,
    }
    let mut first_bpt = None;
    let rows: Vec<WireRow> = cells
        .iter()
        .map(|c| {
            let (u, d, pu, pd) = wire(c).unwrap_or_default();
            let t = tokens(c);
            let bpt = (t > 0).then(|| (u + d) as f64 / t as f64);
            if first_bpt.is_none() {
                first_bpt = bpt;
            }
            let l3 = c
                .client
                .as_ref()
                .map(|e| e.capture.tx.l3_bytes + e.capture.rx.l3_bytes);
            WireRow {
                l3: match (l3, t) {
                    (Some(b), t) if t > 0 => format!("{:.1}", b as f64 / t as f64),
                    _ => "-".into(),
                },
                approach: c.cell.name.clone(),
                up: u,
                down: d,
                pu,
                pd,
                tokens: t,
                bpt: bpt.map_or("-".into(), |b| format!("{b:.1}")),
                ratio: match (bpt, first_bpt) {
                    (Some(b), Some(f)) if f > 0.0 => format!("{:.2}x", b / f),
                    _ => "-".into(),
                },
            }
        })
        .collect();
    format!(
        "Wire, at the client's interface (L2, every frame of the cell's run; L3 leaves out the 14-byte Ethernet header of each frame, and frames that are not IP):\n\n{}\n\n",
        crate::table::markdown(rows)
    )
}

/// Each cell's links, as configured and as the captures at both ends saw them.
fn links_section(run: &Run) -> String {
    #[derive(tabled::Tabled)]
    struct LinkRow {
        cell: String,
        direction: &'static str,
        configured: String,
        sent: u64,
        delivered: u64,
        #[tabled(rename = "measured loss")]
        loss: String,
        #[tabled(rename = "bytes delivered")]
        bytes: u64,
        #[tabled(rename = "delivered rate (first to last frame)")]
        rate: String,
    }
    let mut rows = Vec::new();
    for c in &run.cells {
        let (Some(cl), Some(sv)) = (&c.client, &c.server) else {
            continue;
        };
        for (dir, link, sent, got) in [
            ("up", &c.cell.up, &cl.capture.tx, &sv.capture.rx),
            ("down", &c.cell.down, &sv.capture.tx, &cl.capture.rx),
        ] {
            rows.push(LinkRow {
                cell: format!("{} {}@{}", c.cell.id, c.cell.name, c.cell.profile),
                direction: dir,
                configured: link.describe(),
                sent: sent.ip_packets,
                delivered: got.ip_packets,
                loss: if sent.ip_packets > 0 {
                    pct(1.0 - got.ip_packets as f64 / sent.ip_packets as f64)
                } else {
                    "-".into()
                },
                bytes: got.l2_bytes,
                rate: got.rate_bps().map_or("-".into(), fmt_rate),
            });
        }
    }
    format!(
        "## Link behaviour (IP packets sent at one end, delivered at the other)\n\nThe delivered rate is an average over the run; it shows the link's rate only when the workload fills the link.\n\n{}\n\n",
        crate::table::markdown(rows)
    )
}

/// Each end's capture against the kernel's counters, and the hosts' own drops.
fn captures_section(run: &Run) -> String {
    let checks: Vec<String> = run
        .cells
        .iter()
        .flat_map(|c| {
            [("client", &c.client), ("server", &c.server)]
                .into_iter()
                .map(move |(side, e)| capture_line(&c.cell.id, side, e.as_ref()))
        })
        .collect();
    let mut out = format!("## Capture cross-check\n\n{}\n\n", checks.join("\n"));
    let all: Vec<&crate::metrics::CellResult> = run.cells.iter().collect();
    if let Some(t) = super::drops::cells_table(&all) {
        out.push_str("## Host-stack drops\n\n");
        out.push_str("What the hosts' own stacks counted over each cell's workload, which no capture sees (c: client, w: the wire namespace between them, s: server; UDP and TCP from /proc/net/snmp and netstat, link and qdisc drops over netlink, the CPUs' receive backlog for the whole machine). Retransmissions follow from the profile's loss as well as from these drops.\n\n");
        out.push_str(&t);
        out.push_str("\n\n");
    }
    out
}

/// One end's cross-check line.
fn capture_line(id: &str, side: &str, e: Option<&crate::metrics::End>) -> String {
    let Some(e) = e else {
        return format!("- {id} {side}: no capture");
    };
    if !e.differences.is_empty() {
        return format!("- {id} {side}: DIFFERS: {}", e.differences.join("; "));
    }
    let o = &e.capture.outside;
    let mut l = format!(
        "- {id} {side}: capture = kernel counters ({} + {} frames)",
        e.kernel.tx_packets, e.kernel.rx_packets
    );
    if o.before + o.after > 0 {
        l.push_str(&format!(
            "; {} frames captured before the first reading and {} after the last were left out ({} of them ARP or other non-IP)",
            o.before, o.after, o.non_ip
        ));
    }
    for n in &e.notes {
        l.push_str(&format!("; {n}"));
    }
    l
}

/// Answers whose tokens differed between approaches, and each expectation's verdict.
fn mismatches_and_expectations(run: &Run) -> String {
    let mut out = String::new();
    if !run.digest_mismatches.is_empty() {
        out.push_str("## Token mismatches\n\n");
        for m in &run.digest_mismatches {
            out.push_str(&format!("- {m}\n"));
        }
        out.push('\n');
    }
    if !run.expectations.is_empty() {
        out.push_str("## Expectations\n\n");
        for o in &run.expectations {
            let v = |x: Option<f64>| x.map_or("no value".to_owned(), |v| format!("{v:.3}"));
            out.push_str(&format!(
                "- {} `{}` under {}: {} vs {}\n",
                if o.holds { "holds:" } else { "FAILS:" },
                o.expect,
                o.profile,
                v(o.lhs),
                v(o.rhs)
            ));
        }
    }
    out
}

/// The latency a cell's server reports about itself (its approach's
/// [`lab_clients::ServerTiming`]) over the cell's prompts, with the client's times to the
/// response head and to the first token; `None` where its server reports none.
fn server_timing_line(c: &crate::metrics::CellResult) -> Option<String> {
    let t = c.cell.approach.timing?;
    let sorted = |f: &dyn Fn(&lab_clients::record::PromptRecord) -> Option<f64>| {
        let mut v: Vec<f64> = c.records.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let server = sorted(&|r| r.server_ms.get(t.key).copied());
    if server.is_empty() {
        return None;
    }
    let (ttfb, ttft) = (sorted(&|r| r.ttfb_ms), sorted(&|r| r.ttft_ms));
    let p = |v: &[f64], q: f64| {
        lab_clients::record::percentile(v, q).map_or("-".to_owned(), |x| format!("{x:.3} ms"))
    };
    // The time to the response head, where the approach has one (HTTP).
    let head = if ttfb.is_empty() {
        String::new()
    } else {
        format!(
            "; time to the response head (TTFB, from the prompt's start, connect included) p50 {}, p99 {}",
            p(&ttfb, 50.0),
            p(&ttfb, 99.0)
        )
    };
    Some(format!(
        "{}: {} ({}): p50 {}, p99 {} over {} prompts{head}; to the first token p50 {}, p99 {}. {}\n\n",
        c.cell.name,
        t.what,
        t.how,
        p(&server, 50.0),
        p(&server, 99.0),
        server.len(),
        p(&ttft, 50.0),
        p(&ttft, 99.0),
        t.note,
    ))
}

/// Gaps between an answer's tokens, and how many streams of one connection stall
/// together (head-of-line blocking).
fn stalls_table(cells: &[&crate::metrics::CellResult]) -> String {
    use crate::metrics::stalls;
    let mut b = tabled::builder::Builder::default();
    b.push_record([
        "Approach",
        "Gap p50",
        "Gap p99",
        "Gap max",
        "Stalls",
        "Stalled per answer",
        "Streams stalled at once",
    ]);
    let ms = |v: f64| format!("{v:.1}ms");
    for c in cells {
        let Some(s) = stalls::of(&c.records) else {
            continue;
        };
        b.push_record([
            c.cell.name.clone(),
            ms(s.gap_p50_ms),
            ms(s.gap_p99_ms),
            ms(s.gap_max_ms),
            s.stalls.to_string(),
            ms(s.stalled_ms_per_answer),
            s.streams_per_stall
                .map_or("-".into(), |v| format!("{v:.2}")),
        ]);
    }
    format!(
        "Stalls: gaps between consecutive tokens of an answer, over all answers; a stall is a gap over {}x the median. `Stalled per answer` is the time in stalls beyond the median gap; `Streams stalled at once` is how many answers of the same connection were stalled at the same time, on average over stalls: near 1 when streams are delivered independently, up to the number in flight when one lost packet holds them all (head-of-line blocking).\n\n{}\n\n",
        stalls::STALL_FACTOR,
        crate::table::grid(b)
    )
}

/// Prompts the workload marked urgent against the others: TTFT and total time apart.
fn urgent_table(cells: &[&crate::metrics::CellResult]) -> String {
    let mut b = tabled::builder::Builder::default();
    b.push_record(["Approach", "Prompts", "Count", "P50 TTFT", "Avg Total"]);
    for c in cells {
        for (class, urgent) in [("urgent", true), ("others", false)] {
            let recs: Vec<_> = c
                .records
                .iter()
                .filter(|r| r.urgent == urgent)
                .cloned()
                .collect();
            let s = Summary::of(&c.cell.name, &recs);
            b.push_record([
                c.cell.name.clone(),
                class.to_owned(),
                recs.len().to_string(),
                lab_clients::record::fmt_ms(s.ttft_p50_ms),
                lab_clients::record::fmt_ms((s.prompts > s.errors).then_some(s.avg_total_ms)),
            ]);
        }
    }
    format!(
        "Urgent prompts (workload.urgent) and the others. wt and quic ask their server to send an urgent prompt's answer before the other streams of the connection (stream priority), unless their transport has `priorities: false`; those, and the approaches without stream priorities, show what no priority gives. Compare like with like: an urgent prompt's place in the workload matters too.\n\n{}\n\n",
        crate::table::grid(b)
    )
}

#[cfg(test)]
mod tests {
    use lab_clients::record::{Mode, Recorder};

    /// A cell whose approach's server reports a latency about itself gets the line its
    /// registry entry describes, with the percentiles over the cell's prompts; the others
    /// get none.
    #[test]
    fn a_server_timing_line_comes_from_the_registry_entry() {
        let t = crate::topology::parse::parse(
            "t.yaml",
            "name: st\napproaches: [handoff, sse]\nprofiles:\n  base: {}\n",
        )
        .unwrap();
        let p = crate::plan::plan(&t).unwrap();
        let mut cells: Vec<_> = p
            .cells
            .iter()
            .map(crate::metrics::CellResult::empty)
            .collect();
        for c in &mut cells {
            for i in 0..3 {
                let mut r =
                    Recorder::start().finish(c.cell.approach.name, Mode::Reuse, i, "p", None);
                r.ttfb_ms = Some(2.0 + i as f64);
                r.ttft_ms = Some(10.0 + i as f64);
                if let Some(t) = c.cell.approach.timing {
                    r.server_ms.insert(t.key.into(), 0.5 * (i + 1) as f64);
                }
                c.records.push(r);
            }
        }
        assert_eq!(
            super::server_timing_line(&cells[0]).unwrap(),
            "handoff: hand-off, front to streaming daemon (SCM_RIGHTS over a Unix socket): p50 1.000 ms, p99 1.500 ms over 3 prompts; time to the response head (TTFB, from the prompt's start, connect included) p50 3.000 ms, p99 4.000 ms; to the first token p50 11.000 ms, p99 12.000 ms. The daemon writes the head before it asks the upstream, so TTFB is the front's and the daemon's, and TTFT minus TTFB the upstream's.\n\n"
        );
        assert_eq!(super::server_timing_line(&cells[1]), None);
    }
}
