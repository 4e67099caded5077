//! The anatomy of a profile's wire bytes per token: packets per token by class and bytes
//! per token by layer for each approach and direction, what makes two approaches
//! differ, and the endpoints' own statistics set against the capture. Pure.

use crate::anatomy::{Anatomy, Class, Flow, Layer, Layers, Side};
use crate::metrics::{CellResult, tokens};
use lab_clients::stats::{ConnStats, TransportStats};

/// How far an endpoint's count may be from the capture's and still agree: packets of
/// the connection's close that one saw and the other did not, plus 1%.
pub const TOLERANCE_PACKETS: u64 = 2;

pub fn within(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= TOLERANCE_PACKETS + a.max(b) / 100
}

/// The per-token view of one side.
fn per(x: u64, toks: usize) -> f64 {
    x as f64 / toks as f64
}

fn fmt1(x: f64) -> String {
    format!("{x:.1}")
}

fn fmt2(x: f64) -> String {
    format!("{x:.2}")
}

/// The anatomy table of the cells of one profile, the differences from the first
/// approach, and notes on what could not be decoded; empty if no cell has an anatomy.
pub fn table(cells: &[&CellResult]) -> String {
    let rows: Vec<(&CellResult, &Anatomy, &Anatomy, usize)> = cells
        .iter()
        .filter_map(|c| {
            let a = c.anatomy.as_ref()?;
            let t = tokens(c);
            (t > 0).then_some((*c, &a.client, &a.server, t))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    // Layer columns that are zero in every row are left out.
    let shown: Vec<Layer> = Layer::ALL
        .into_iter()
        .filter(|&l| {
            rows.iter()
                .any(|(_, a, _, _)| a.up.layers.get(l) + a.down.layers.get(l) > 0)
        })
        .collect();
    let mut header = vec![
        "Approach".to_owned(),
        "Dir".to_owned(),
        "data pkt/tok".to_owned(),
        "ACK pkt/tok".to_owned(),
        "other pkt/tok".to_owned(),
    ];
    header.extend(shown.iter().map(|l| l.heading().to_owned()));
    header.extend(["B/tok".to_owned(), "resent by sender B/tok".to_owned()]);
    let mut b = tabled::builder::Builder::default();
    b.push_record(header);
    for (c, client, server, t) in &rows {
        // What the sender put on the wire again: the client's capture up, the server's down.
        for (dir, side, sender) in [
            ("up", &client.up, &client.up),
            ("down", &client.down, &server.down),
        ] {
            let mut r = vec![
                c.cell.name.clone(),
                dir.to_owned(),
                fmt2(per(side.packets.data, *t)),
                fmt2(per(side.packets.ack, *t)),
                fmt2(per(side.packets.other, *t)),
            ];
            r.extend(shown.iter().map(|&l| fmt1(per(side.layers.get(l), *t))));
            r.push(fmt1(per(side.bytes, *t)));
            r.push(fmt1(per(sender.layers.retransmitted, *t)));
            b.push_record(r);
        }
    }
    let mut out = String::from(
        "Anatomy per token, at the client's interface: packets per token by class (data, pure ACK, other) and bytes per token by layer, per direction. Each row's layers add up to its B/tok; up and down add up to the wire table's B/tok. `resent by sender` is what the sending end put on the wire again (its own capture). The clients' own counts of the same packets are set against these under \"Endpoint statistics\" below.\n\n",
    );
    out.push_str(&crate::table::grid(b));
    out.push_str("\n\n");
    let (first, ..) = rows[0];
    let base = &rows[0];
    let mut diffs = Vec::new();
    for row in &rows[1..] {
        diffs.push(difference(base, row));
    }
    if !diffs.is_empty() {
        out.push_str(&format!(
            "Where the approaches differ from {} (B/tok, both directions; the largest layers first):\n\n",
            first.cell.name
        ));
        for d in diffs {
            out.push_str(&format!("- {d}\n"));
        }
        out.push('\n');
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|(c, a, s, _)| {
            a.notes
                .iter()
                .map(move |n| format!("{} at the client: {n}", c.cell.id))
                .chain(
                    s.notes
                        .iter()
                        .map(move |n| format!("{} at the server: {n}", c.cell.id)),
                )
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("Not decoded:\n\n");
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
        out.push('\n');
    }
    out
}

fn both(a: &Anatomy) -> Layers {
    a.up.layers.plus(&a.down.layers)
}

/// One approach against the first: the change in B/tok, by layer, and in packets.
fn difference(
    (_, ba, _, bt): &(&CellResult, &Anatomy, &Anatomy, usize),
    (c, a, _, t): &(&CellResult, &Anatomy, &Anatomy, usize),
) -> String {
    let (bl, l) = (both(ba), both(a));
    let total = per(a.up.bytes + a.down.bytes, *t) - per(ba.up.bytes + ba.down.bytes, *bt);
    let mut by: Vec<(Layer, f64)> = Layer::ALL
        .into_iter()
        .map(|x| (x, per(l.get(x), *t) - per(bl.get(x), *bt)))
        .filter(|(_, d)| d.abs() >= 0.05)
        .collect();
    by.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
    let layers: Vec<String> = by
        .iter()
        .take(5)
        .map(|(x, d)| format!("{} {d:+.1}", x.heading()))
        .collect();
    let pk = |s: &Side, t: usize| (per(s.packets.data, t), per(s.packets.ack, t));
    let (bu, u) = (pk(&ba.up, *bt), pk(&a.up, *t));
    let (bd, d) = (pk(&ba.down, *bt), pk(&a.down, *t));
    format!(
        "{} {total:+.1} B/tok: {}; packets per token up {:.2} data + {:.2} ACK (vs {:.2} + {:.2}), down {:.2} data + {:.2} ACK (vs {:.2} + {:.2})",
        c.cell.name,
        layers.join(", "),
        u.0,
        u.1,
        bu.0,
        bu.1,
        d.0,
        d.1,
        bd.0,
        bd.1,
    )
}

/// One connection's endpoint statistics against the client's capture of it.
pub fn check(c: &ConnStats, all: &[ConnStats], flows: &[Flow]) -> Option<(String, bool)> {
    // One client port may carry several connections (a QUIC endpoint's, one after
    // another): the n-th connection on the port is the n-th flow from it.
    let nth = all
        .iter()
        .filter(|o| o.local_port == c.local_port && o.conn < c.conn)
        .count();
    let f = flows
        .iter()
        .filter(|f| f.client_port == c.local_port)
        .nth(nth)?;
    // The packets stamped after the endpoint read its counters (the last segments of
    // a close, late on a busy machine) are not in them: set apart by their stamps.
    let late: Vec<&crate::anatomy::Stamped> = f
        .tail
        .iter()
        .filter(|p| c.read_at_unix_ns > 0 && p.at_ns > c.read_at_unix_ns)
        .collect();
    let count = |up: bool, pick: &dyn Fn(&crate::anatomy::Stamped) -> u64| -> u64 {
        late.iter().filter(|p| p.up == up).map(|p| pick(p)).sum()
    };
    let data = |p: &crate::anatomy::Stamped| u64::from(p.class == Class::Data);
    let nodata = |p: &crate::anatomy::Stamped| u64::from(p.class != Class::Data);
    let one = |_: &crate::anatomy::Stamped| 1;
    let acks = |p: &crate::anatomy::Stamped| u64::from(p.ack_frames);
    let pairs: Vec<(&str, u64, u64)> = match &c.transport {
        TransportStats::Tcp(s) => vec![
            (
                "data segments out",
                u64::from(s.data_segs_out),
                f.up.packets.data - count(true, &data),
            ),
            (
                "segments without data out",
                u64::from(s.nodata_out()),
                f.up.packets.ack + f.up.packets.other - count(true, &nodata),
            ),
            (
                "data segments in",
                u64::from(s.data_segs_in),
                f.down.packets.data - count(false, &data),
            ),
            (
                "segments without data in",
                u64::from(s.nodata_in()),
                f.down.packets.ack + f.down.packets.other - count(false, &nodata),
            ),
        ],
        TransportStats::Quic(q) => vec![
            (
                "datagrams out",
                q.udp_tx.datagrams,
                f.up.packets.total() - count(true, &one),
            ),
            (
                "datagrams in",
                q.udp_rx.datagrams,
                f.down.packets.total() - count(false, &one),
            ),
            (
                "ACK frames out",
                q.frames_tx.acks,
                f.up.ack_frames - count(true, &acks),
            ),
            (
                "ACK frames in",
                q.frames_rx.acks,
                f.down.ack_frames - count(false, &acks),
            ),
        ],
    };
    let ok = pairs.iter().all(|&(_, e, c)| within(e, c));
    let (what, source) = match c.transport {
        TransportStats::Tcp(_) => ("TCP", "TCP_INFO"),
        TransportStats::Quic(_) => ("QUIC", "quinn"),
    };
    let detail: Vec<String> = pairs
        .iter()
        .map(|(n, e, c)| {
            if e == c {
                format!("{n} {e}")
            } else {
                format!("{n} {e} (capture {c})")
            }
        })
        .collect();
    let after = if late.is_empty() {
        String::new()
    } else {
        format!(
            " ({} packets captured after it read them set apart)",
            late.len()
        )
    };
    Some((
        format!(
            "connection {} ({what}, client port {}): {source} says {}{after}",
            c.conn,
            c.local_port,
            detail.join(", ")
        ),
        ok,
    ))
}

/// The endpoint-statistics section of a run: every connection against the capture.
pub fn checks(cells: &[CellResult]) -> String {
    let mut lines = Vec::new();
    for c in cells {
        let Some(a) = &c.anatomy else { continue };
        for s in &c.connections {
            let who = format!("{} {}@{}", c.cell.id, c.cell.name, c.cell.profile);
            match check(s, &c.connections, &a.client.flows) {
                Some((line, true)) => lines.push(format!("- {who} {line}: agree")),
                Some((line, false)) => lines.push(format!("- {who} {line}: DISAGREE")),
                None => lines.push(format!(
                    "- {who} connection {}: not in the capture (client port {})",
                    s.conn, s.local_port
                )),
            }
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "## Endpoint statistics against the capture\n\nEach client connection's own counters, read after it closed, against the client-side capture of the same connection. They agree when every count is within {TOLERANCE_PACKETS} packets plus 1%.\n\n{}\n\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anatomy::{FlowSide, Packets, Stamped};
    use lab_clients::stats::TcpStats;

    /// A TCP connection whose TCP_INFO was read at 1,000 ns, against a capture that
    /// saw 3 more segments without data coming in, stamped after that.
    fn case(late_at: u64) -> (ConnStats, Flow) {
        let stats = ConnStats {
            conn: 9,
            local_port: 53712,
            read_at_unix_ns: 1_000,
            transport: TransportStats::Tcp(TcpStats {
                segs_out: 37,
                data_segs_out: 8,
                segs_in: 55,
                data_segs_in: 50,
                ..Default::default()
            }),
        };
        let side = |data, ack, other| FlowSide {
            packets: Packets { data, ack, other },
            ..Default::default()
        };
        let mut tail = vec![
            Stamped {
                at_ns: 900,
                up: true,
                class: Class::Ack,
                ack_frames: 0,
            };
            2
        ];
        tail.extend(std::iter::repeat_n(
            Stamped {
                at_ns: late_at,
                up: false,
                class: Class::Other,
                ack_frames: 0,
            },
            3,
        ));
        let flow = Flow {
            transport: "tcp".into(),
            client_port: 53712,
            up: side(8, 28, 1),
            down: side(50, 3, 5),
            tail,
        };
        (stats, flow)
    }

    #[test]
    fn segments_after_the_counters_were_read_are_set_apart() {
        let (stats, flow) = case(1_500);
        let (line, agree) = check(&stats, std::slice::from_ref(&stats), &[flow]).unwrap();
        assert!(agree, "{line}");
        assert!(
            line.contains("segments without data in 5,") || line.ends_with("set apart)"),
            "{line}"
        );
        assert!(
            line.contains("(3 packets captured after it read them set apart)"),
            "{line}"
        );
        // The same segments stamped before the read are a disagreement of 3.
        let (stats, flow) = case(950);
        let (line, agree) = check(&stats, std::slice::from_ref(&stats), &[flow]).unwrap();
        assert!(!agree, "{line}");
        assert!(
            line.contains("segments without data in 5 (capture 8)"),
            "{line}"
        );
    }
}
