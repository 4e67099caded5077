//! Stalls: gaps between a stream's tokens far longer than the cell's usual gap, and how
//! many streams of one connection stall at the same time. With prompts in flight at
//! once over one connection, a lost packet on TCP holds up every stream behind it
//! (head-of-line blocking); QUIC delivers each stream on its own, so a loss stalls only
//! the stream whose data it carried. Pure.

use lab_clients::record::{PromptRecord, percentile};

/// A gap counts as a stall when it is longer than this many times the cell's median gap.
pub const STALL_FACTOR: f64 = 3.0;

/// The stalls of one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Stalls {
    /// The 99th percentile and the largest of every gap between consecutive tokens of
    /// one answer, over all answers (ms).
    pub gap_p99_ms: f64,
    pub gap_max_ms: f64,
    /// The median gap, which stalls are measured against (ms).
    pub gap_p50_ms: f64,
    /// Stalls, and the time tokens spent in them beyond the median gap, per answer (ms).
    pub stalls: usize,
    pub stalled_ms_per_answer: f64,
    /// On average, how many streams of the same connection were stalled at once during a
    /// stall (itself included): about 1 when streams are independent, up to the number
    /// of streams in flight when one loss holds them all.
    pub streams_per_stall: Option<f64>,
}

/// The stalls of the successful answers of a cell.
pub fn of(records: &[PromptRecord]) -> Option<Stalls> {
    let ok: Vec<&PromptRecord> = records.iter().filter(|r| r.error.is_none()).collect();
    // Each stall as (connection, answer, start, end) in ms since the Unix epoch.
    let mut gaps: Vec<f64> = Vec::new();
    for r in &ok {
        gaps.extend(r.token_ms.windows(2).map(|w| w[1] - w[0]));
    }
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    let p50 = percentile(&gaps, 50.0)?;
    let limit = p50 * STALL_FACTOR;
    let mut stalls: Vec<(u32, usize, f64, f64)> = Vec::new();
    let mut stalled = 0.0;
    for (n, r) in ok.iter().enumerate() {
        for w in r.token_ms.windows(2) {
            let gap = w[1] - w[0];
            if gap > limit && gap > 0.0 {
                stalls.push((r.conn, n, r.start_unix_ms + w[0], r.start_unix_ms + w[1]));
                stalled += gap - p50;
            }
        }
    }
    let streams_per_stall = (!stalls.is_empty()).then(|| {
        let together: usize = stalls
            .iter()
            .map(|&(conn, n, a, b)| {
                // Answers of the same connection with a stall overlapping this one.
                let mut others: Vec<usize> = stalls
                    .iter()
                    .filter(|&&(c, m, x, y)| c == conn && m != n && x < b && a < y)
                    .map(|&(_, m, _, _)| m)
                    .collect();
                others.sort_unstable();
                others.dedup();
                1 + others.len()
            })
            .sum();
        together as f64 / stalls.len() as f64
    });
    Some(Stalls {
        gap_p99_ms: percentile(&gaps, 99.0)?,
        gap_max_ms: *gaps.last()?,
        gap_p50_ms: p50,
        stalls: stalls.len(),
        stalled_ms_per_answer: stalled / ok.len() as f64,
        streams_per_stall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_clients::record::{Mode, Recorder};
    use std::time::Duration;

    /// An answer of `n` tokens every 10 ms from `start` (ms), on `conn`, with the
    /// tokens from `at` on held back by `hold` ms.
    fn answer(conn: u32, start: f64, n: u64, at: u64, hold: u64) -> PromptRecord {
        let mut r = Recorder::start();
        for k in 0..n {
            let t = k * 10 + if k >= at { hold } else { 0 };
            r.token_at("x", Duration::from_millis(t));
        }
        r.conn(conn);
        let mut rec = r.finish_at("t", Mode::Reuse, 0, "p", None, Duration::from_secs(1));
        rec.start_unix_ms = start;
        rec
    }

    #[test]
    fn streams_held_together_are_told_from_a_stream_held_alone() {
        // Head-of-line: three answers of one connection held at the same moment.
        let hol: Vec<PromptRecord> = (0..3).map(|_| answer(0, 1000.0, 50, 20, 200)).collect();
        let s = of(&hol).unwrap();
        assert_eq!(s.gap_p50_ms, 10.0);
        assert_eq!(s.stalls, 3);
        assert_eq!(s.gap_max_ms, 210.0);
        assert_eq!(s.streams_per_stall, Some(3.0));
        assert!((s.stalled_ms_per_answer - 200.0).abs() < 1e-9);
        // Independent streams: one answer held, the others flow.
        let one = vec![
            answer(0, 1000.0, 50, 20, 200),
            answer(0, 1000.0, 50, 0, 0),
            answer(0, 1000.0, 50, 0, 0),
        ];
        let s = of(&one).unwrap();
        assert_eq!((s.stalls, s.streams_per_stall), (1, Some(1.0)));
        // Stalls of different connections at once are not counted together.
        let apart = vec![
            answer(0, 1000.0, 50, 20, 200),
            answer(1, 1000.0, 50, 20, 200),
        ];
        assert_eq!(of(&apart).unwrap().streams_per_stall, Some(1.0));
        // No stall, and nothing to measure.
        assert_eq!(
            of(&[answer(0, 0.0, 50, 0, 0)]).unwrap().streams_per_stall,
            None
        );
        assert!(of(&[]).is_none());
    }
}
