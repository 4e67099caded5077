//! Trace-driven links, in Mahimahi's format: one integer millisecond per line, each a
//! chance to deliver 1500 bytes; accounting is per byte (a 100-byte packet leaves 1400
//! bytes of its chance to the packets behind it); the trace loops with its last
//! millisecond as the period. Chances that pass with nothing queued are lost, and
//! counted ([`Replay::unused_bytes`]). Pure: a packet's chances are reckoned from when
//! it reached the link, so whoever drives the replay may get to a packet late without
//! costing it the chances that passed meanwhile, as in Mahimahi.

use anyhow::{Context, Result};

/// Bytes one delivery chance carries.
pub const MTU: u64 = 1500;

/// A parsed trace: the milliseconds of its delivery chances, in order, and its period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    ms: Vec<u64>,
    period_ms: u64,
}

impl Trace {
    /// Parses a trace's text; the error names the line.
    pub fn parse(text: &str) -> std::result::Result<Trace, String> {
        let mut ms = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() {
                continue;
            }
            let v: u64 = l.parse().map_err(|_| {
                format!(
                    "line {}: {:?} is not a whole number of milliseconds (a Mahimahi trace has one per line)",
                    i + 1,
                    l.chars().take(40).collect::<String>()
                )
            })?;
            if ms.last().is_some_and(|&last| v < last) {
                return Err(format!(
                    "line {}: {v} comes after {}; the milliseconds must not go down",
                    i + 1,
                    ms.last().unwrap_or(&0)
                ));
            }
            ms.push(v);
        }
        let period_ms = *ms.last().ok_or("the trace has no lines")?;
        if period_ms == 0 {
            return Err(
                "the trace's last millisecond (its period) is 0; it must be 1 or more".into(),
            );
        }
        Ok(Trace { ms, period_ms })
    }

    /// Reads and parses a trace file.
    pub fn load(path: &str) -> Result<Trace> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the trace {path}"))?;
        Trace::parse(&text).map_err(|e| anyhow::anyhow!("trace {path}: {e}"))
    }

    /// The average rate the trace offers, bits per second.
    pub fn bits_per_second(&self) -> f64 {
        self.ms.len() as f64 * MTU as f64 * 8.0 * 1000.0 / self.period_ms as f64
    }

    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }
}

/// A trace being replayed from time `start` (ns): which chance comes next, and what is
/// left of it.
#[derive(Debug, Clone)]
pub struct Replay {
    trace: Trace,
    start: u64,
    /// The chance in use, counted over the loops (chance `n` is `ms[n % len]` of loop
    /// `n / len`).
    next: u64,
    left: u64,
    /// Bytes of chances that passed with nothing waiting for the link.
    unused: u64,
}

impl Replay {
    pub fn new(trace: Trace, start: u64) -> Replay {
        Replay {
            trace,
            start,
            next: 0,
            left: MTU,
            unused: 0,
        }
    }

    /// Bytes of delivery chances that passed with nothing waiting for the link, up to
    /// the last packet's arrival: the trace capacity an idle sender left unused.
    pub fn unused_bytes(&self) -> u64 {
        self.unused
    }

    fn time(&self, n: u64) -> u64 {
        let len = self.trace.ms.len() as u64;
        let period = self.trace.period_ms * 1_000_000;
        self.start + (n / len) * period + self.trace.ms[(n % len) as usize] * 1_000_000
    }

    /// The first chance at or after `now`.
    fn first_from(&self, now: u64) -> u64 {
        let len = self.trace.ms.len() as u64;
        let period = self.trace.period_ms * 1_000_000;
        let lap = now.saturating_sub(self.start) / period;
        // A lap's chances lie in (its start, its start + period]: the one at exactly
        // `now` may be the previous lap's last.
        for l in lap.saturating_sub(1)..=lap + 1 {
            let base = self.start + l * period;
            let pos = self
                .trace
                .ms
                .partition_point(|&m| base + m * 1_000_000 < now) as u64;
            if pos < len {
                return l * len + pos;
            }
        }
        (lap + 2) * len
    }

    /// When a packet of `len` bytes that reaches the link at `now` has been delivered:
    /// at the chance that carries its last byte.
    pub fn deliver(&mut self, now: u64, len: usize) -> u64 {
        if self.left == 0 {
            self.next += 1;
            self.left = MTU;
        }
        if self.time(self.next) < now {
            // The chances in between passed unused: what was left of this one, and
            // every one after it until `now`.
            let first = self.first_from(now);
            self.unused += self.left + (first - self.next - 1) * MTU;
            self.next = first;
            self.left = MTU;
        }
        let mut need = len.max(1) as u64;
        loop {
            let take = need.min(self.left);
            need -= take;
            self.left -= take;
            if need == 0 {
                return self.time(self.next);
            }
            self.next += 1;
            self.left = MTU;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn traces_parse_and_say_what_is_wrong() {
        let t = Trace::parse("1\n1\n2\n\n4\n").unwrap();
        assert_eq!(t.period_ms(), 4);
        // 4 chances of 1500 B every 4 ms: 12 Mbit/s.
        assert_eq!(t.bits_per_second(), 12e6);
        for (bad, says) in [
            ("", "no lines"),
            ("0\n0\n", "period) is 0"),
            ("5\n3\n", "line 2: 3 comes after 5"),
            ("1\nx\n", "line 2: \"x\" is not a whole number"),
            ("1.5\n", "line 1"),
        ] {
            let e = Trace::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bytes_are_accounted_per_byte_and_the_trace_loops() {
        // One chance every ms, period 2 ms: chances at 1, 2, 3, 4, ... ms.
        let mut r = Replay::new(Trace::parse("1\n2\n").unwrap(), 0);
        // Three 500-byte packets share the first chance; the fourth takes the next.
        for _ in 0..3 {
            assert_eq!(r.deliver(0, 500), MS);
        }
        assert_eq!(r.deliver(0, 500), 2 * MS);
        // A 2000-byte packet needs the rest of chance 2 (1000) and 1000 of chance 3.
        assert_eq!(r.deliver(0, 2000), 3 * MS);
        assert_eq!(r.unused_bytes(), 0);
        // Idle until 10.5 ms: the chances in between are lost (the 500 bytes left of
        // chance 3, and chances 4 to 10); the next is at 11 ms, in the trace's sixth
        // loop.
        assert_eq!(r.deliver(10 * MS + MS / 2, 1500), 11 * MS);
        assert_eq!(r.unused_bytes(), 500 + 7 * 1500);
        assert_eq!(r.deliver(10 * MS + MS / 2, 1), 12 * MS);
        // A chance exactly at the arrival time is usable: 1499 bytes of chance 12 and
        // chances 13 to 19 passed unused.
        assert_eq!(r.deliver(20 * MS, 100), 20 * MS);
        assert_eq!(r.unused_bytes(), 500 + 7 * 1500 + 1499 + 7 * 1500);
    }

    #[test]
    fn a_saturated_link_delivers_the_traces_rate() {
        // Two chances in ms 1, none in 2 and 3, one in 4: 4 chances per 4 ms.
        let t = Trace::parse("1\n1\n4\n4\n").unwrap();
        let rate = t.bits_per_second();
        let mut r = Replay::new(t, 0);
        let mut last = 0;
        let n = 10_000u64;
        for _ in 0..n {
            last = r.deliver(0, 1500);
        }
        let got = (n * 1500 * 8) as f64 / (last as f64 / 1e9);
        assert!((got - rate).abs() / rate < 0.001, "{got} vs {rate}");
        assert_eq!(r.unused_bytes(), 0);
    }

    /// The replay reckons a packet's chances from the arrival time it is given, not
    /// from when it is called: `lab wire` hands over packets it got to late (a late
    /// wake-up) with the kernel's arrival stamps, so they keep the chances that passed
    /// meanwhile. Given the time it got to them instead, it would lose those chances.
    #[test]
    fn packets_timed_by_arrival_keep_the_chances_a_late_driver_would_lose() {
        // A packet every ms from 0 to 99 ms, at the trace's rate: each leaves at the
        // next chance, and none passes unused.
        let mut punctual = Replay::new(Trace::parse("1\n").unwrap(), 0);
        let a: Vec<u64> = (0..100).map(|i| punctual.deliver(i * MS, 1500)).collect();
        assert_eq!(a[99], 100 * MS);
        assert_eq!(punctual.unused_bytes(), 0);
        // Timed instead by when a driver that wakes every 20 ms got to them, the first
        // batch loses the 19 chances it waited through, and every packet after it
        // leaves 19 ms late.
        let mut wrong = Replay::new(Trace::parse("1\n").unwrap(), 0);
        let c: Vec<u64> = (0..100)
            .map(|i| wrong.deliver((i / 20 + 1) * 20 * MS, 1500))
            .collect();
        assert_eq!(c[99], a[99] + 19 * MS);
        assert_eq!(wrong.unused_bytes(), 19 * 1500);
    }
}
