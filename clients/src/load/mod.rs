//! The load generator: many concurrent streams against one server, swept over levels.
//!
//! At each level N, N slots start one after another, spread evenly over the ramp; each
//! runs one stream after another on its own runner (its own connection, or a share of
//! one where the approach multiplexes and the spec asks for it), until the hold ends or
//! the slot has run its cycles. A stream that failed before the server took it
//! (connect, handshake, rejected) is retried after a backoff that doubles up to a
//! ceiling, as a reconnecting client does. Streams in flight when the hold ends run to
//! their end (the runners' timeout bounds them). Then the next level starts.
//!
//! Every stream's record is folded into its level's figures at once and dropped:
//! outcomes by error category, HDR histograms of connect time, TTFT, every gap between
//! tokens and stream duration, tokens in aggregate, and how many streams of each
//! prompt got which token digest. So memory does not grow with the number of streams.
//!
//! It does not know the approaches, sample the server or count the wire: lab does that
//! around it.

mod figures;
pub mod open;
pub mod parts;

pub use figures::{
    DigestCount, Hist, LevelSummary, OpenLevel, Percentiles, Slice, Slo, SloResult, output_tokens,
    tpot,
};
pub use open::OpenSpec;
pub use parts::{Part, STREAMS_PER_WORKER, Share, auto_workers, merge};

use crate::Runner;
use figures::Fold;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What ends a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelEnd {
    /// Slots start new streams until the hold, after the ramp, is over.
    Hold(Duration),
    /// Each slot runs this many streams.
    Cycles(u32),
}

/// The wait before a stream is tried again after it failed before the server took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// A load test.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Concurrent streams, level by level, in order.
    pub levels: Vec<u32>,
    /// How long a level takes to start all its slots.
    pub ramp: Duration,
    pub end: LevelEnd,
    pub backoff: Backoff,
    /// The prompts, taken in turn by the streams of a level.
    pub prompts: Vec<crate::Prompt>,
    /// Streams per connection where the approach multiplexes (1: a connection each).
    pub per_connection: u32,
    /// What makes a request good, where the test judges goodput.
    pub slo: Option<Slo>,
    /// Open loop: requests sent at scheduled times, level by level of rate, instead of
    /// `levels` of concurrent streams.
    pub open: Option<OpenSpec>,
}

/// A rate as a person reads it: `20`, `2.5`, `0.25`.
pub fn fmt_rate(r: f64) -> String {
    let s = format!("{r:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Builds a runner of its own (its own connection) for slot `i`.
pub type MakeRunner = dyn Fn(usize) -> anyhow::Result<Box<dyn Runner>> + Send + Sync;

/// What the load generator reports as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// A level moved to a phase: `ramp`, `hold` or `drain`.
    Phase {
        level: u32,
        phase: String,
        at_unix_ms: f64,
    },
    /// Once a second.
    Progress {
        level: u32,
        open: u64,
        started: u64,
        completed: u64,
        failed: u64,
        at_unix_ms: f64,
    },
    /// A level is over.
    Level(Box<LevelSummary>),
}

/// The wall clock in Unix ms, as the load generator's events and levels give it.
pub fn unix_ms_now() -> f64 {
    unix_ms()
}

pub(crate) fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Counters the progress line reads.
#[derive(Default)]
struct Live {
    open: AtomicU64,
    peak: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

/// Runs the load test; `each` sees every event as it happens (from the caller's task).
pub async fn run(
    spec: &LoadSpec,
    make: Arc<MakeRunner>,
    mut each: impl FnMut(&Event),
) -> anyhow::Result<Vec<LevelSummary>> {
    anyhow::ensure!(!spec.prompts.is_empty(), "a load test needs prompts");
    if let Some(o) = &spec.open {
        return open::run(spec, o, make, each).await;
    }
    let mut out = Vec::new();
    for &level in &spec.levels {
        let s = run_level(spec, level, make.clone(), &mut each).await?;
        each(&Event::Level(Box::new(s.clone())));
        out.push(s);
    }
    Ok(out)
}

/// When a level's phases start and end: its slots start over the ramp, and (for a
/// hold) run prompts until its end.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    t0: Instant,
    ramp: Duration,
    hold: Duration,
    ramp_start: f64,
    hold_start: f64,
    hold_end: f64,
    stop_at: Instant,
}

impl Timing {
    /// `at` in Unix ms on the level's clock: its start plus the monotonic time since.
    fn on_clock(&self, at: Instant) -> f64 {
        let since = match at.checked_duration_since(self.t0) {
            Some(d) => d.as_secs_f64(),
            None => -self.t0.duration_since(at).as_secs_f64(),
        };
        self.ramp_start + since * 1000.0
    }

    fn new(spec: &LoadSpec) -> Timing {
        Timing::at(spec, unix_ms())
    }

    /// A level that starts at `start_unix_ms` (now, or soon, or just past), on the
    /// wall clock every worker shares.
    pub(crate) fn at(spec: &LoadSpec, start_unix_ms: f64) -> Timing {
        let now = Instant::now();
        let ahead = start_unix_ms - unix_ms();
        let t0 = if ahead >= 0.0 {
            now + Duration::from_secs_f64(ahead / 1000.0)
        } else {
            now.checked_sub(Duration::from_secs_f64(-ahead / 1000.0))
                .unwrap_or(now)
        };
        let ramp_start = start_unix_ms;
        let hold = match spec.end {
            LevelEnd::Hold(h) => h,
            LevelEnd::Cycles(_) => Duration::ZERO,
        };
        let hold_start = ramp_start + spec.ramp.as_secs_f64() * 1000.0;
        Timing {
            t0,
            ramp: spec.ramp,
            hold,
            ramp_start,
            hold_start,
            hold_end: hold_start + hold.as_secs_f64() * 1000.0,
            stop_at: t0 + spec.ramp + hold,
        }
    }
}

/// What a level's slots share: the figures, the progress counters and the prompts.
#[derive(Clone)]
struct Shared {
    fold: Arc<Mutex<Fold>>,
    live: Arc<Live>,
    prompts: Arc<Vec<crate::Prompt>>,
}

async fn run_level(
    spec: &LoadSpec,
    level: u32,
    make: Arc<MakeRunner>,
    each: &mut impl FnMut(&Event),
) -> anyhow::Result<LevelSummary> {
    let timing = Timing::new(spec);
    each(&Event::Phase {
        level,
        phase: "ramp".into(),
        at_unix_ms: timing.ramp_start,
    });
    let (fold, counts) = run_slots(spec, level, Share::ALL, timing, &make, each).await?;
    Ok(summary_of(spec, level, &timing, fold, counts, unix_ms()))
}

/// A worker's share of a level that starts at `start_unix_ms` (every worker is given
/// the same); `each` sees its progress each second (and its phases, which the process
/// that merges tells for all).
pub async fn run_part(
    spec: &LoadSpec,
    level: u32,
    share: Share,
    start_unix_ms: f64,
    make: Arc<MakeRunner>,
    mut each: impl FnMut(&Event),
) -> anyhow::Result<Part> {
    anyhow::ensure!(!spec.prompts.is_empty(), "a load test needs prompts");
    anyhow::ensure!(
        spec.open.is_none(),
        "an open loop runs in one process: its schedule is not split over workers"
    );
    let timing = Timing::at(spec, start_unix_ms);
    let (fold, counts) = run_slots(spec, level, share, timing, &make, &mut each).await?;
    Ok(Part::new(level, counts, unix_ms(), fold))
}

/// Runs the level's slots of `share` until they end: their figures, and the streams
/// started, completed and failed.
async fn run_slots(
    spec: &LoadSpec,
    level: u32,
    share: Share,
    timing: Timing,
    make: &Arc<MakeRunner>,
    each: &mut impl FnMut(&Event),
) -> anyhow::Result<(Fold, [u64; 3])> {
    let n = level as usize;
    let runners = make_runners(spec, n, share, make)?;
    let shared = Shared {
        fold: Arc::new(Mutex::new(Fold::new(
            (timing.hold_start, timing.hold_end),
            timing.ramp_start,
            spec.slo,
        ))),
        live: Arc::new(Live::default()),
        prompts: Arc::new(spec.prompts.clone()),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, runner) in runners {
        tasks.spawn(slot(
            i,
            n,
            runner,
            shared.clone(),
            timing,
            spec.end,
            spec.backoff,
        ));
    }
    let drain = matches!(spec.end, LevelEnd::Hold(_));
    watch(&mut tasks, drain, level, timing, &shared.live, each).await?;
    let fold = std::mem::take(&mut *shared.fold.lock().unwrap_or_else(|e| e.into_inner()));
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let live = &shared.live;
    Ok((
        fold,
        [l(&live.started), l(&live.completed), l(&live.failed)],
    ))
}

/// Runners for the slots of `share`, by slot number: one per connection, shared where
/// the approach multiplexes.
fn make_runners(
    spec: &LoadSpec,
    n: usize,
    share: Share,
    make: &Arc<MakeRunner>,
) -> anyhow::Result<Vec<(usize, Box<dyn Runner>)>> {
    let per = spec.per_connection.max(1) as usize;
    let mut runners: Vec<(usize, Box<dyn Runner>)> = Vec::new();
    for i in parts::slots(n, per, share) {
        let r = match runners.last() {
            Some((_, last)) if per > 1 && i % per != 0 => last.share(),
            _ => None,
        };
        runners.push((
            i,
            match r {
                Some(r) => r,
                None => make(i)?,
            },
        ));
    }
    Ok(runners)
}

/// Slot `i` of `n`: starts at its place in the ramp, then runs prompts in turn until
/// the level ends, backing off after a failure before the request.
async fn slot(
    i: usize,
    n: usize,
    mut runner: Box<dyn Runner>,
    sh: Shared,
    t: Timing,
    end: LevelEnd,
    backoff: Backoff,
) {
    let start = t.t0 + t.ramp.mul_f64(i as f64 / n as f64);
    tokio::time::sleep_until(start.into()).await;
    let mut wait = backoff.initial;
    let mut cycle = 0u32;
    let mut rng = lab_codec::rng::SplitMix64::new(i as u64 + 1);
    let live = &sh.live;
    loop {
        match end {
            LevelEnd::Hold(_) if Instant::now() >= t.stop_at => break,
            LevelEnd::Cycles(c) if cycle >= c => break,
            _ => {}
        }
        let k = (i + cycle as usize * n) % sh.prompts.len();
        cycle += 1;
        live.started.fetch_add(1, Ordering::Relaxed);
        let open = live.open.fetch_add(1, Ordering::Relaxed) + 1;
        live.peak.fetch_max(open, Ordering::Relaxed);
        let opened = t.on_clock(Instant::now());
        let mut ignore = |_: &str| {};
        let r = runner.run(k, &sh.prompts[k], &mut ignore).await;
        let closed = t.on_clock(Instant::now());
        live.open.fetch_sub(1, Ordering::Relaxed);
        let failed_early = r.error.as_ref().map(|e| e.category.before_request());
        if r.error.is_some() {
            live.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            live.completed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut f) = sh.fold.lock() {
            f.open_close(opened, closed);
            f.add(k, &r, 0.0, true);
        }
        drop(r);
        if failed_early == Some(true) {
            // Back off, a random half to whole of the wait, then double it.
            let d = wait.mul_f64(0.5 + rng.f64() * 0.5);
            match end {
                LevelEnd::Hold(_) => {
                    let until = (Instant::now() + d).min(t.stop_at);
                    tokio::time::sleep_until(until.into()).await;
                }
                LevelEnd::Cycles(_) => tokio::time::sleep(d).await,
            }
            wait = (wait * 2).min(backoff.max);
        } else {
            wait = backoff.initial;
        }
    }
    runner.close().await;
}

/// Waits for every slot to end, telling `each` the phases and, every second, the
/// progress.
async fn watch(
    tasks: &mut tokio::task::JoinSet<()>,
    drain: bool,
    level: u32,
    t: Timing,
    live: &Live,
    each: &mut impl FnMut(&Event),
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut phase = 0;
    loop {
        tokio::select! {
            done = tasks.join_next() => {
                match done {
                    None => return Ok(()),
                    Some(Err(e)) if e.is_panic() => anyhow::bail!("a load slot panicked: {e}"),
                    Some(_) => {}
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                if phase == 0 && now >= t.t0 + t.ramp && !t.hold.is_zero() {
                    phase = 1;
                    each(&Event::Phase { level, phase: "hold".into(), at_unix_ms: unix_ms() });
                }
                if phase < 2 && now >= t.stop_at && drain {
                    phase = 2;
                    each(&Event::Phase { level, phase: "drain".into(), at_unix_ms: unix_ms() });
                }
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                each(&Event::Progress {
                    level,
                    open: l(&live.open),
                    started: l(&live.started),
                    completed: l(&live.completed),
                    failed: l(&live.failed),
                    at_unix_ms: unix_ms(),
                });
            }
        }
    }
}

/// The level's summary from what its slots gathered, ending at `end` (Unix ms).
pub(crate) fn summary_of(
    spec: &LoadSpec,
    level: u32,
    t: &Timing,
    fold: Fold,
    counts: [u64; 3],
    end: f64,
) -> LevelSummary {
    // Throughput over the hold, or, where a level ends by cycles, from the ramp's start
    // to the level's end.
    let whole = parts::whole(spec.end);
    let secs = if whole {
        (end - t.ramp_start) / 1000.0
    } else {
        t.hold.as_secs_f64()
    };
    let peak_open = fold.peak_open();
    fold.summary(figures::Level {
        level,
        times: [t.ramp_start, t.hold_start, t.hold_end, end],
        counts,
        peak_open,
        secs,
        whole,
        open: None,
    })
}
