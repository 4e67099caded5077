//! The link model of one direction: what happens to each packet, and when it leaves.
//! Pure and deterministic: the verdicts are a function of the seed, the settings, and
//! the sequence of (arrival time, length). `lab wire` drives it with real frames; unit
//! tests drive it with made-up ones.
//!
//! Per packet, in netem's order: duplicate, loss, corrupt, then scheduling. With a rate,
//! packets are serialized one after another at the rate (plus `overhead` bytes each),
//! then delayed; without one, they are just delayed. Jitter is drawn per packet and the
//! queue is ordered by departure time, so jitter can reorder packets, as in netem.
//! `reorder` sends that share of packets without the delay, ahead of the others.
//! The queue limit counts every packet held, delayed or waiting for the link, at the
//! arrival time of the packet it judges: what was due to leave by then has left,
//! however late the caller gets round to sending it.

use super::params::{Limit, Loss, Params};
use lab_codec::rng::SplitMix64;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// The loss model dropped it.
    Loss,
    /// The queue was full.
    Queue,
}

/// What to do with one packet. Times are nanoseconds on the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop(Drop),
    Send {
        at: u64,
        /// Flip this bit (index into the frame, counting from the IP header).
        corrupt_bit: Option<usize>,
        /// Also send a copy at this time.
        duplicate_at: Option<u64>,
        /// Sent ahead of the delay (the `reorder` share).
        reordered: bool,
    },
}

pub struct Engine {
    p: Params,
    rng: SplitMix64,
    /// Gilbert-Elliott: in the bad state?
    bad: bool,
    /// When the link finishes serializing what it has.
    link_free_at: u64,
    /// What is held: (departure time, length), the soonest first.
    held: BinaryHeap<Reverse<(u64, u64)>>,
    held_bytes: u64,
    /// A trace replayed instead of a rate.
    replay: Option<super::trace::Replay>,
}

impl Engine {
    pub fn new(p: Params, seed: u64) -> Engine {
        Engine {
            p,
            rng: SplitMix64::new(seed),
            bad: false,
            link_free_at: 0,
            held: BinaryHeap::new(),
            held_bytes: 0,
            replay: None,
        }
    }

    /// Paces the link with `trace`'s delivery chances, replayed from `start` (ns on the
    /// caller's clock), instead of a rate.
    pub fn with_trace(mut self, trace: super::trace::Trace, start: u64) -> Engine {
        self.replay = Some(super::trace::Replay::new(trace, start));
        self
    }

    pub fn params(&self) -> &Params {
        &self.p
    }

    /// Changes the settings from now on (`lab link set`). What is held keeps its
    /// schedule; the random streams and the Gilbert-Elliott state go on.
    pub fn set_params(&mut self, p: Params) {
        // Settings without a trace end its replay (a trace comes only from the topology).
        if p.trace.is_none() {
            self.replay = None;
        }
        self.p = p;
    }

    /// Bytes of the trace's delivery chances that passed with nothing waiting for the
    /// link (0 without a trace).
    pub fn trace_unused_bytes(&self) -> u64 {
        self.replay.as_ref().map_or(0, |r| r.unused_bytes())
    }

    /// Packets and bytes held as of the last packet's arrival.
    pub fn held(&self) -> (u64, u64) {
        (self.held.len() as u64, self.held_bytes)
    }

    /// Lets go of what was due to leave by `now`.
    fn leave_by(&mut self, now: u64) {
        while let Some(&Reverse((at, len))) = self.held.peek() {
            if at > now {
                break;
            }
            self.held.pop();
            self.held_bytes -= len;
        }
    }

    fn hold(&mut self, at: u64, len: usize) {
        self.held.push(Reverse((at, len as u64)));
        self.held_bytes += len as u64;
    }

    fn lost(&mut self) -> bool {
        match self.p.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.f64() < p,
            // netem's loss_gilb_ell: move first, then lose with the old state's odds.
            Loss::GilbertElliott { p, r, h, k } => {
                if self.bad {
                    if self.rng.f64() < r {
                        self.bad = false;
                    }
                    self.rng.f64() > h
                } else {
                    if self.rng.f64() < p {
                        self.bad = true;
                    }
                    self.rng.f64() > k
                }
            }
        }
    }

    fn full(&self, len: usize) -> bool {
        match self.p.limit {
            Limit::Packets(n) => self.held.len() as u64 >= n,
            Limit::Bytes(n) => self.held_bytes + len as u64 > n,
        }
    }

    /// The delay of one packet: delay plus a jitter draw, never below zero.
    fn delay_ns(&mut self) -> u64 {
        let d = self.p.delay.as_nanos() as f64;
        let j = self.p.jitter.as_nanos() as f64;
        if j == 0.0 {
            return d as u64;
        }
        let x = if self.p.normal {
            // Box-Muller; one draw pair per packet keeps the sequence simple.
            let (u1, u2) = (self.rng.f64().max(f64::MIN_POSITIVE), self.rng.f64());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        } else {
            self.rng.f64() * 2.0 - 1.0
        };
        (d + j * x).max(0.0) as u64
    }

    /// When a packet of `len` bytes arriving at `now` leaves; `reordered` skips the delay.
    fn schedule(&mut self, now: u64, len: usize, reordered: bool) -> u64 {
        let start = match (&mut self.replay, self.p.rate) {
            (Some(r), _) => r.deliver(now, len),
            (None, rate) => match rate {
                Some(rate) => {
                    let bits = (len as i64 + self.p.overhead).max(1) as u128 * 8;
                    let tx = (bits * 1_000_000_000 / rate as u128) as u64;
                    let end = self.link_free_at.max(now) + tx;
                    self.link_free_at = end;
                    end
                }
                None => now,
            },
        };
        if reordered {
            start
        } else {
            start + self.delay_ns()
        }
    }

    /// Decides the fate of a packet of `len` bytes (the whole frame) arriving at `now`.
    /// `l3_len` is the length from the IP header on, where corruption lands.
    pub fn on_packet(&mut self, now: u64, len: usize, l3_len: usize) -> Verdict {
        self.leave_by(now);
        let dup = self.p.duplicate > 0.0 && self.rng.f64() < self.p.duplicate;
        if self.lost() {
            return Verdict::Drop(Drop::Loss);
        }
        let corrupt_bit = (self.p.corrupt > 0.0 && self.rng.f64() < self.p.corrupt && l3_len > 0)
            .then(|| self.rng.below(l3_len * 8));
        if self.full(len) {
            return Verdict::Drop(Drop::Queue);
        }
        let reordered =
            self.p.reorder > 0.0 && !self.p.delay.is_zero() && self.rng.f64() < self.p.reorder;
        let at = self.schedule(now, len, reordered);
        self.hold(at, len);
        let duplicate_at = if dup && !self.full(len) {
            let d = self.schedule(now, len, false);
            self.hold(d, len);
            Some(d)
        } else {
            None
        };
        Verdict::Send {
            at,
            corrupt_bit,
            duplicate_at,
            reordered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::params::Limit;
    use std::time::Duration;

    fn params() -> Params {
        Params {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            normal: false,
            loss: Loss::None,
            rate: None,
            overhead: 0,
            limit: Limit::Packets(1_000_000),
            limit_set: false,
            reorder: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            trace: None,
        }
    }

    fn send_at(v: Verdict) -> u64 {
        match v {
            Verdict::Send { at, .. } => at,
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn delay_is_exact_without_jitter() {
        let mut e = Engine::new(
            Params {
                delay: Duration::from_millis(50),
                ..params()
            },
            1,
        );
        assert_eq!(send_at(e.on_packet(1000, 100, 86)), 1000 + 50_000_000);
    }

    #[test]
    fn rate_serializes_back_to_back_packets() {
        // 1 Mbit/s, 1250-byte frames + 0 overhead: 10 ms each.
        let mut e = Engine::new(
            Params {
                rate: Some(1_000_000),
                delay: Duration::from_millis(5),
                ..params()
            },
            1,
        );
        let t: Vec<u64> = (0..3)
            .map(|_| send_at(e.on_packet(0, 1250, 1236)))
            .collect();
        assert_eq!(t, [15_000_000, 25_000_000, 35_000_000]);
        // After the link went idle, a packet starts at once.
        assert_eq!(send_at(e.on_packet(100_000_000, 1250, 1236)), 115_000_000);
        // Overhead counts toward the rate.
        let mut e = Engine::new(
            Params {
                rate: Some(1_000_000),
                overhead: 250,
                ..params()
            },
            1,
        );
        assert_eq!(send_at(e.on_packet(0, 1000, 986)), 10_000_000);
    }

    #[test]
    fn random_loss_matches_its_probability_and_the_seed() {
        let run = |seed| {
            let mut e = Engine::new(
                Params {
                    loss: Loss::Random(0.05),
                    ..params()
                },
                seed,
            );
            (0..100_000)
                .filter(|_| e.on_packet(0, 100, 86) == Verdict::Drop(Drop::Loss))
                .count()
        };
        let n = run(7);
        // 99.9% interval of Binomial(100000, 0.05): 5000 +- 226.
        assert!((4774..=5226).contains(&n), "{n}");
        assert_eq!(run(7), n, "same seed, same losses");
        assert_ne!(run(8), n, "another seed, other losses");
    }

    #[test]
    fn gilbert_elliott_gives_the_mean_burst_length() {
        // 1-h = 100%, 1-k = 0%: bursts are the bad periods, mean length 1/r = 4.
        let mut e = Engine::new(
            Params {
                loss: Loss::GilbertElliott {
                    p: 0.01,
                    r: 0.25,
                    h: 0.0,
                    k: 1.0,
                },
                ..params()
            },
            3,
        );
        let lost: Vec<bool> = (0..400_000)
            .map(|_| e.on_packet(0, 100, 86) == Verdict::Drop(Drop::Loss))
            .collect();
        let mut bursts = Vec::new();
        let mut run = 0;
        for l in lost {
            if l {
                run += 1;
            } else if run > 0 {
                bursts.push(run);
                run = 0;
            }
        }
        let mean = bursts.iter().sum::<usize>() as f64 / bursts.len() as f64;
        assert!((mean - 4.0).abs() < 0.2, "mean burst {mean}");
    }

    #[test]
    fn queue_limit_drops_and_departures_make_room() {
        let mut e = Engine::new(
            Params {
                limit: Limit::Packets(2),
                delay: Duration::from_millis(10),
                ..params()
            },
            1,
        );
        assert!(matches!(e.on_packet(0, 100, 86), Verdict::Send { .. }));
        assert!(matches!(e.on_packet(1, 100, 86), Verdict::Send { .. }));
        assert_eq!(e.on_packet(2, 100, 86), Verdict::Drop(Drop::Queue));
        // The first left at 10 ms: a packet that arrived then finds room, whenever the
        // caller gets to it (the verdict depends on arrival times only).
        assert_eq!(e.on_packet(9_999_999, 100, 86), Verdict::Drop(Drop::Queue));
        assert!(matches!(
            e.on_packet(10_000_000, 100, 86),
            Verdict::Send { .. }
        ));
        assert_eq!(e.held(), (2, 200));
        assert!(matches!(
            e.on_packet(30_000_000, 100, 86),
            Verdict::Send { .. }
        ));
        assert_eq!(e.held(), (1, 100));
        let mut b = Engine::new(
            Params {
                limit: Limit::Bytes(250),
                delay: Duration::from_millis(1),
                ..params()
            },
            1,
        );
        assert!(matches!(b.on_packet(0, 200, 186), Verdict::Send { .. }));
        assert_eq!(b.on_packet(0, 100, 86), Verdict::Drop(Drop::Queue));
    }

    #[test]
    fn jitter_stays_in_range_and_normal_is_centred() {
        let mut u = Engine::new(
            Params {
                delay: Duration::from_millis(100),
                jitter: Duration::from_millis(10),
                ..params()
            },
            5,
        );
        for _ in 0..10_000 {
            let at = send_at(u.on_packet(0, 100, 86));
            assert!((90_000_000..=110_000_000).contains(&at), "{at}");
        }
        let mut n = Engine::new(
            Params {
                delay: Duration::from_millis(100),
                jitter: Duration::from_millis(10),
                normal: true,
                ..params()
            },
            5,
        );
        let xs: Vec<f64> = (0..20_000)
            .map(|_| send_at(n.on_packet(0, 100, 86)) as f64 / 1e6)
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
        assert!((mean - 100.0).abs() < 0.3, "mean {mean}");
        assert!((sd - 10.0).abs() < 0.3, "sd {sd}");
    }

    #[test]
    fn duplicate_corrupt_and_reorder_shares() {
        let mut e = Engine::new(
            Params {
                delay: Duration::from_millis(10),
                duplicate: 0.1,
                corrupt: 0.2,
                reorder: 0.3,
                ..params()
            },
            9,
        );
        let (mut dup, mut cor, mut reo) = (0, 0, 0);
        for _ in 0..100_000 {
            if let Verdict::Send {
                at,
                corrupt_bit,
                duplicate_at,
                reordered,
            } = e.on_packet(0, 100, 86)
            {
                dup += usize::from(duplicate_at.is_some());
                if let Some(b) = corrupt_bit {
                    assert!(b < 86 * 8);
                    cor += 1;
                }
                if reordered {
                    assert_eq!(at, 0);
                    reo += 1;
                }
            }
        }
        for (what, n, p) in [
            ("dup", dup, 0.1),
            ("corrupt", cor, 0.2),
            ("reorder", reo, 0.3),
        ] {
            let share = n as f64 / 100_000.0;
            assert!((share - p).abs() < 0.01, "{what}: {share}");
        }
    }
}
