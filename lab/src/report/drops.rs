//! The host's own drops in reports: one table row per cell (or load level) with both
//! ends' counters, and a sentence for every drop that is not zero, next to the figures
//! it touches, naming the setting that would lift it. Pure.

use crate::capture::stack::CellStack;
use crate::metrics::CellResult;
use crate::plan::Shaper;
use crate::shaping::params::Loss;

#[derive(tabled::Tabled)]
struct Row {
    #[tabled(rename = "Cell")]
    cell: String,
    #[tabled(rename = "UDP rcvbuf c/s")]
    rcvbuf: String,
    #[tabled(rename = "UDP in-err c/s")]
    in_errors: String,
    #[tabled(rename = "UDP sndbuf c/s")]
    sndbuf: String,
    #[tabled(rename = "TCP listen ovf/drop (server)")]
    listen: String,
    #[tabled(rename = "TCP backlog c/s")]
    backlog: String,
    #[tabled(rename = "TCP retrans c/s")]
    retrans: String,
    #[tabled(rename = "Link drops c/w/s")]
    link: String,
    #[tabled(rename = "Qdisc drops c/w/s")]
    qdisc: String,
    #[tabled(rename = "CPU backlog (machine)")]
    softnet: String,
}

fn pair(c: u64, s: u64) -> String {
    format!("{c}/{s}")
}

fn row(label: String, s: &CellStack) -> Row {
    let (c, v) = (&s.client, &s.server);
    Row {
        cell: label,
        rcvbuf: pair(c.udp_rcvbuf_errors, v.udp_rcvbuf_errors),
        in_errors: pair(c.udp_in_errors, v.udp_in_errors),
        sndbuf: pair(c.udp_sndbuf_errors, v.udp_sndbuf_errors),
        listen: pair(v.tcp_listen_overflows, v.tcp_listen_drops),
        backlog: pair(c.tcp_backlog_drop, v.tcp_backlog_drop),
        retrans: pair(c.tcp_retrans_segs, v.tcp_retrans_segs),
        link: format!(
            "{}/{}/{}",
            c.link_dropped, s.wire_link_dropped, v.link_dropped
        ),
        qdisc: format!("{}/{}/{}", c.qdisc_drops, s.wire_qdisc_drops, v.qdisc_drops),
        softnet: s.softnet_dropped.to_string(),
    }
}

/// Whether the wire namespace's qdiscs count the profile's own loss among their drops:
/// netem (the kernel backend) with a loss model in either direction.
pub fn qdisc_is_loss(run_backend: Option<Shaper>, cell: &crate::plan::Cell) -> bool {
    run_backend == Some(Shaper::Kernel)
        && [&cell.up.loss, &cell.down.loss]
            .iter()
            .any(|l| !matches!(l, Loss::None))
}

/// The table of every cell's counters over its workload (none when no cell has them).
pub fn cells_table(cells: &[&CellResult]) -> Option<String> {
    let rows: Vec<Row> = cells
        .iter()
        .filter_map(|c| {
            let s = c.stack.as_ref()?;
            Some(row(
                format!("{} {}@{}", c.cell.id, c.cell.name, c.cell.profile),
                s,
            ))
        })
        .collect();
    (!rows.is_empty()).then(|| crate::table::markdown(rows))
}

/// The table of a load test's counters, a row per cell and level.
pub fn levels_table(cells: &[&CellResult]) -> Option<String> {
    let mut rows = Vec::new();
    for c in cells {
        for l in c.load.iter().flat_map(|l| &l.levels) {
            if let Some(s) = &l.stack {
                rows.push(row(format!("{} level {}", c.cell.name, l.summary.level), s));
            }
        }
    }
    (!rows.is_empty()).then(|| crate::table::markdown(rows))
}

/// What a reader is told about the cells' host drops: a sentence per cell (and load
/// level) with any, saying what they touch and what lifts them; empty when none.
pub fn notes(cells: &[&CellResult], backend: Option<Shaper>) -> Vec<String> {
    let mut out = Vec::new();
    for c in cells {
        let who = format!("{} ({}@{})", c.cell.id, c.cell.name, c.cell.profile);
        let loss = qdisc_is_loss(backend, &c.cell);
        if let Some(s) = &c.stack {
            let d = s.drops(loss);
            if !d.is_empty() {
                out.push(format!(
                    "{who}: the host itself dropped packets during the workload, beyond what the profile asks for: {}. Its latency and retransmission figures include the recovery from these drops.",
                    d.join("; ")
                ));
            }
        }
        if let Some(n) = c.wire.as_ref().and_then(emulator_queue) {
            out.push(format!("{who}: {n}"));
        }
        for l in c.load.iter().flat_map(|l| &l.levels) {
            if let Some(s) = &l.stack {
                let d = s.drops(loss);
                if !d.is_empty() {
                    out.push(format!(
                        "{who} level {}: the host itself dropped packets, beyond what the profile asks for: {}. The level's connect, TTFT and failure figures include them.",
                        l.summary.level,
                        d.join("; ")
                    ));
                }
            }
        }
    }
    out
}

/// What the userspace emulator's queue dropped over a cell, with what it held and how
/// late it sent, or `None` when its queue dropped nothing. These are the link's own
/// drops (netem's at a full queue), which no host counter sees on this backend.
fn emulator_queue(w: &crate::shaping::stats::WireStats) -> Option<String> {
    use crate::shaping::params::Limit;
    if w.up.dropped_queue + w.down.dropped_queue == 0 {
        return None;
    }
    let limit = |p: &crate::shaping::params::Params| {
        let l = match p.limit {
            Limit::Packets(n) => format!("{n} packets"),
            Limit::Bytes(n) => format!("{n} bytes"),
        };
        if p.limit_set {
            format!("{l}, the profile's")
        } else {
            format!("{l}, the default")
        }
    };
    let late = |d: &crate::shaping::stats::CounterSnapshot| {
        d.late_us.map_or("-".to_owned(), |(p50, _, max)| {
            let p50 = if p50 > 2000 {
                "2 ms or more".to_owned()
            } else {
                format!("{p50} us")
            };
            format!("p50 {p50}, max {:.1} ms", max as f64 / 1000.0)
        })
    };
    Some(format!(
        "the emulated link's queue was full and dropped {} frames up (limit {}) and {} down (limit {}) over the cell, warm-up and every level included, as netem drops at its limit; these are the link's drops, not the hosts', so the table above does not show them. A profile's `limit` sets the queue (it must hold what arrives within the delay: packets a second times the delay). Frames left late against their schedule: up {}, down {}.",
        w.up.dropped_queue,
        limit(&w.up_params),
        w.down.dropped_queue,
        limit(&w.down_params),
        late(&w.up),
        late(&w.down),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_both_ends_and_the_wire() {
        let mut s = CellStack::default();
        s.client.udp_rcvbuf_errors = 3;
        s.server.udp_rcvbuf_errors = 18260;
        s.wire_qdisc_drops = 4;
        s.server.tcp_listen_overflows = 2;
        s.server.tcp_listen_drops = 5;
        let r = row("c1 wt@baseline".into(), &s);
        assert_eq!(r.rcvbuf, "3/18260");
        assert_eq!(r.qdisc, "0/4/0");
        assert_eq!(r.listen, "2/5");
    }

    /// The emulator's queue drops get a sentence with the limit and the lateness, and
    /// none when there were none.
    #[test]
    fn the_emulated_links_queue_drops_are_told() {
        let dir = |queue: u64, late: u64| {
            serde_json::json!({"in_frames": 10, "in_bytes": 1000, "out_frames": 10, "out_bytes": 1000,
              "dropped_loss": 0, "dropped_queue": queue, "dropped_send": 0, "duplicated": 0,
              "corrupted": 0, "reordered": 0, "non_ip": 0, "late_us": [late, 2001, 993820]})
        };
        let stats = |up: u64, down: u64| -> crate::shaping::stats::WireStats {
            serde_json::from_value(serde_json::json!({"at_ns": 1, "seed": 1,
              "up": dir(up, 2001), "down": dir(down, 40),
              "up_params": {"delay": "5ms", "rate": 1000000000, "limit": {"packets": 1000}},
              "down_params": {"delay": "5ms", "limit": {"packets": 20000}, "limit_set": true}}))
            .unwrap()
        };
        assert_eq!(emulator_queue(&stats(0, 0)), None);
        let n = emulator_queue(&stats(74283, 36003)).unwrap();
        for want in [
            "dropped 74283 frames up (limit 1000 packets, the default)",
            "36003 down (limit 20000 packets, the profile's)",
            "up p50 2 ms or more, max 993.8 ms, down p50 40 us, max 993.8 ms",
        ] {
            assert!(n.contains(want), "{want:?} not in {n}");
        }
    }
}
