//! What arrived of the tokens sent in datagrams (`wt-dgram`), over a cell's prompts.
//! Pure.

use lab_clients::record::PromptRecord;
use lab_clients::stats::{ConnStats, TransportStats};

/// A cell's datagram tokens, summed over its prompts that got a tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub reordered: u64,
    /// Answers with a tally, and those of them with every token.
    pub answers: usize,
    pub whole: usize,
    /// Of the lost, those that arrived after their answer had closed (the sessions'
    /// count), and their tokens' bytes: a capture at the client has them.
    pub late: u64,
    pub late_bytes: u64,
}

impl Totals {
    /// Delivered as a percentage of sent (100 when nothing was sent).
    pub fn delivered_pct(&self) -> f64 {
        if self.sent == 0 {
            100.0
        } else {
            self.delivered as f64 * 100.0 / self.sent as f64
        }
    }

    /// The report's line for cell `name`.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name}: {} of {} tokens delivered in datagrams ({:.1}%), {} lost ({} of them arrived late, {} B, after their answer had closed), {} reordered; {} of {} answers whole. Lost tokens are not sent again and do not fail the run; only whole answers' digests are compared with the other approaches'.\n\n",
            self.delivered,
            self.sent,
            self.delivered_pct(),
            self.lost,
            self.late,
            self.late_bytes,
            self.reordered,
            self.whole,
            self.answers
        )
    }
}

/// The totals of `records` on `connections`, or `None` when none carried tokens in
/// datagrams.
pub fn of(records: &[PromptRecord], connections: &[ConnStats]) -> Option<Totals> {
    let mut t = Totals::default();
    for c in connections {
        if let TransportStats::Quic(q) = &c.transport {
            t.late += q.late_datagrams;
            t.late_bytes += q.late_datagram_bytes;
        }
    }
    for d in records.iter().filter_map(|r| r.datagrams) {
        t.sent += d.sent;
        t.delivered += d.delivered;
        t.lost += d.lost;
        t.reordered += d.reordered;
        t.answers += 1;
        t.whole += usize::from(d.complete());
    }
    (t.answers > 0).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_clients::record::{Mode, Recorder};

    fn answer(sent: u64, arrived: &[u64]) -> PromptRecord {
        let mut r = Recorder::start();
        for &s in arrived {
            assert!(r.datagram_token(s, "ab"));
        }
        r.datagram_tally(sent, sent * 2);
        r.finish("wt-dgram", Mode::Reuse, 0, "p", None)
    }

    #[test]
    fn totals_add_up_over_answers() {
        let recs = [
            answer(4, &[0, 1, 2, 3]),
            answer(5, &[0, 2, 1, 4]),
            answer(0, &[]),
        ];
        let late = ConnStats {
            conn: 0,
            local_port: 1,
            read_at_unix_ns: 0,
            transport: TransportStats::Quic(Box::new(lab_clients::stats::QuicStats {
                late_datagrams: 1,
                late_datagram_bytes: 2,
                ..Default::default()
            })),
        };
        let t = of(&recs, &[late]).unwrap();
        assert_eq!(
            t,
            Totals {
                sent: 9,
                delivered: 8,
                lost: 1,
                reordered: 1,
                answers: 3,
                whole: 2,
                late: 1,
                late_bytes: 2,
            }
        );
        assert!((t.delivered_pct() - 800.0 / 9.0).abs() < 1e-9);
        assert!(t.line("wt-dgram").starts_with(
            "wt-dgram: 8 of 9 tokens delivered in datagrams (88.9%), 1 lost (1 of them arrived late, 2 B, after their answer had closed), 1 reordered; 2 of 3 answers whole."
        ));
        assert!(recs[0].whole() && !recs[1].whole() && recs[2].whole());
        assert_eq!(of(&[], &[]), None);
    }
}
