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

use crate::Runner;
use crate::record::{ErrorCategory, PromptRecord};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    pub prompts: Vec<String>,
    /// Streams per connection where the approach multiplexes (1: a connection each).
    pub per_connection: u32,
}

/// Builds a runner of its own (its own connection) for slot `i`.
pub type MakeRunner = dyn Fn(usize) -> anyhow::Result<Box<dyn Runner>> + Send + Sync;

/// Percentiles of one measure, in milliseconds; all `None` when nothing was measured.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// An HDR histogram of durations, kept in microseconds (1 us to 1 hour, 3 significant
/// digits).
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
    }
}

impl Hist {
    /// Records `ms` milliseconds (clamped into the histogram's range).
    pub fn record_ms(&mut self, ms: f64) {
        let us = (ms * 1000.0).round().clamp(1.0, 3_600_000_000.0) as u64;
        self.0.saturating_record(us);
    }

    pub fn percentiles(&self) -> Percentiles {
        let h = &self.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| Some(us as f64 / 1000.0);
        Percentiles {
            count: h.len(),
            mean: Some(h.mean() / 1000.0),
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// How many streams of one prompt got one token digest.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestCount {
    /// The prompt, by index into the prompts.
    pub prompt: usize,
    pub digest: String,
    pub tokens: usize,
    pub streams: u64,
}

/// One level's figures.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// Concurrent streams asked for.
    pub level: u32,
    /// Unix ms: the ramp's start, the hold's start and end (the ramp's end and the last
    /// new stream's start), and the level's end (its last stream's end).
    pub ramp_start_unix_ms: f64,
    pub hold_start_unix_ms: f64,
    pub hold_end_unix_ms: f64,
    pub end_unix_ms: f64,
    /// Streams started, completed whole, and failed.
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    /// Failed streams by category.
    pub errors: BTreeMap<ErrorCategory, u64>,
    /// The first message of each category, to say what went wrong.
    pub error_samples: BTreeMap<ErrorCategory, String>,
    /// The most streams in flight at once.
    pub peak_open: u64,
    /// Connections set up.
    pub connections: u64,
    pub connect_ms: Percentiles,
    pub ttft_ms: Percentiles,
    /// Every gap between two tokens of a stream.
    pub tbt_ms: Percentiles,
    /// Request start to the end of the answer, over completed streams.
    pub duration_ms: Percentiles,
    /// Request start to the response head, over completed streams (the HTTP
    /// approaches; `count` 0 elsewhere).
    #[serde(default)]
    pub ttfb_ms: Percentiles,
    /// Each latency the server reported about itself (a [`crate::ServerTiming`], e.g.
    /// the handoff server's `handoff_ms`), over completed streams, under its record's
    /// field name; absent where the server reports none.
    #[serde(flatten, deserialize_with = "percentiles_only")]
    pub server_ms: BTreeMap<String, Percentiles>,
    /// Tokens received, over every stream.
    pub tokens: u64,
    pub token_bytes: u64,
    /// Tokens that arrived between the hold's start and end.
    pub tokens_in_hold: u64,
    /// Tokens per second in aggregate: over the hold, or, where a level ends by cycles,
    /// from the ramp's start to the level's end.
    pub tokens_per_s: f64,
    /// Completed streams' digests, by prompt.
    pub digests: Vec<DigestCount>,
}

impl LevelSummary {
    /// Completed streams as a share of those started, in percent.
    pub fn success_pct(&self) -> Option<f64> {
        (self.started > 0).then(|| self.completed as f64 * 100.0 / self.started as f64)
    }
}

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

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The fields a level summary has beyond its own, kept as server timings where they
/// are percentiles: another version's field of another shape is passed over, as serde
/// passes over unknown fields, rather than failing the whole file.
fn percentiles_only<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Percentiles>, D::Error> {
    let all = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    Ok(all
        .into_iter()
        .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
        .collect())
}

/// A level's figures while it runs.
#[derive(Default)]
struct Fold {
    errors: BTreeMap<ErrorCategory, u64>,
    error_samples: BTreeMap<ErrorCategory, String>,
    connections: u64,
    connect: Hist,
    ttft: Hist,
    tbt: Hist,
    duration: Hist,
    ttfb: Hist,
    server: BTreeMap<String, Hist>,
    tokens: u64,
    token_bytes: u64,
    tokens_in_hold: u64,
    digests: BTreeMap<(usize, String), (usize, u64)>,
}

impl Fold {
    fn add(&mut self, prompt: usize, r: &PromptRecord, hold: (f64, f64)) {
        if let Some(c) = r.connect_ms {
            self.connections += 1;
            self.connect.record_ms(c);
        }
        self.tokens += r.tokens as u64;
        self.token_bytes += r.token_bytes;
        for t in &r.token_ms {
            let at = r.start_unix_ms + t;
            if at >= hold.0 && at <= hold.1 {
                self.tokens_in_hold += 1;
            }
        }
        if let Some(e) = &r.error {
            *self.errors.entry(e.category).or_default() += 1;
            self.error_samples
                .entry(e.category)
                .or_insert_with(|| e.message.clone());
            return;
        }
        if let Some(t) = r.ttft_ms {
            self.ttft.record_ms(t);
        }
        for w in r.token_ms.windows(2) {
            self.tbt.record_ms(w[1] - w[0]);
        }
        self.duration.record_ms(r.total_ms);
        if let Some(t) = r.ttfb_ms {
            self.ttfb.record_ms(t);
        }
        for (k, t) in &r.server_ms {
            self.server.entry(k.clone()).or_default().record_ms(*t);
        }
        let e = self
            .digests
            .entry((prompt, r.digest.clone()))
            .or_insert((r.tokens, 0));
        e.1 += 1;
    }
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
struct Timing {
    t0: Instant,
    ramp: Duration,
    hold: Duration,
    ramp_start: f64,
    hold_start: f64,
    hold_end: f64,
    stop_at: Instant,
}

impl Timing {
    fn new(spec: &LoadSpec) -> Timing {
        let t0 = Instant::now();
        let ramp_start = unix_ms();
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
    prompts: Arc<Vec<String>>,
}

async fn run_level(
    spec: &LoadSpec,
    level: u32,
    make: Arc<MakeRunner>,
    each: &mut impl FnMut(&Event),
) -> anyhow::Result<LevelSummary> {
    let n = level as usize;
    let timing = Timing::new(spec);
    each(&Event::Phase {
        level,
        phase: "ramp".into(),
        at_unix_ms: timing.ramp_start,
    });
    let runners = make_runners(spec, n, &make)?;
    let shared = Shared {
        fold: Arc::new(Mutex::new(Fold::default())),
        live: Arc::new(Live::default()),
        prompts: Arc::new(spec.prompts.clone()),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, runner) in runners.into_iter().enumerate() {
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
    watch(&mut tasks, spec, level, timing, &shared.live, each).await?;
    Ok(summarize(spec, level, timing, &shared))
}

/// Runners: one per connection, shared where the approach multiplexes.
fn make_runners(
    spec: &LoadSpec,
    n: usize,
    make: &Arc<MakeRunner>,
) -> anyhow::Result<Vec<Box<dyn Runner>>> {
    let per = spec.per_connection.max(1) as usize;
    let mut runners: Vec<Box<dyn Runner>> = Vec::with_capacity(n);
    for i in 0..n {
        let r = match runners.last() {
            Some(last) if per > 1 && i % per != 0 => last.share(),
            _ => None,
        };
        runners.push(match r {
            Some(r) => r,
            None => make(i)?,
        });
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
        let mut ignore = |_: &str| {};
        let r = runner.run(k, &sh.prompts[k], &mut ignore).await;
        live.open.fetch_sub(1, Ordering::Relaxed);
        let failed_early = r.error.as_ref().map(|e| e.category.before_request());
        if r.error.is_some() {
            live.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            live.completed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut f) = sh.fold.lock() {
            f.add(k, &r, (t.hold_start, t.hold_end));
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
    spec: &LoadSpec,
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
                if phase < 2 && now >= t.stop_at && matches!(spec.end, LevelEnd::Hold(_)) {
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

/// The level's summary from what its slots gathered.
fn summarize(spec: &LoadSpec, level: u32, t: Timing, sh: &Shared) -> LevelSummary {
    let end = unix_ms();
    let f = std::mem::take(&mut *sh.fold.lock().unwrap_or_else(|e| e.into_inner()));
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let live = &sh.live;
    let (started, completed, failed) = (l(&live.started), l(&live.completed), l(&live.failed));
    let tokens_per_s = match spec.end {
        LevelEnd::Hold(h) if !h.is_zero() => f.tokens_in_hold as f64 / h.as_secs_f64(),
        _ => {
            let secs = (end - t.ramp_start) / 1000.0;
            if secs > 0.0 {
                f.tokens as f64 / secs
            } else {
                0.0
            }
        }
    };
    LevelSummary {
        level,
        ramp_start_unix_ms: t.ramp_start,
        hold_start_unix_ms: t.hold_start,
        hold_end_unix_ms: t.hold_end,
        end_unix_ms: end,
        started,
        completed,
        failed,
        errors: f.errors,
        error_samples: f.error_samples,
        peak_open: l(&live.peak),
        connections: f.connections,
        connect_ms: f.connect.percentiles(),
        ttft_ms: f.ttft.percentiles(),
        tbt_ms: f.tbt.percentiles(),
        duration_ms: f.duration.percentiles(),
        ttfb_ms: f.ttfb.percentiles(),
        server_ms: f
            .server
            .iter()
            .map(|(k, h)| (k.clone(), h.percentiles()))
            .collect(),
        tokens: f.tokens,
        token_bytes: f.token_bytes,
        tokens_in_hold: f.tokens_in_hold,
        tokens_per_s,
        digests: f
            .digests
            .into_iter()
            .map(|((prompt, digest), (tokens, streams))| DigestCount {
                prompt,
                digest,
                tokens,
                streams,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A level summary keeps a server's timing percentiles under their names, and
    /// passes over another version's fields of another shape.
    #[test]
    fn server_timing_percentiles_are_kept_and_other_fields_passed_over() {
        #[derive(Deserialize)]
        struct Rest {
            #[serde(flatten, deserialize_with = "percentiles_only")]
            server_ms: BTreeMap<String, Percentiles>,
        }
        let p = Percentiles {
            count: 3,
            p50: Some(0.2),
            ..Default::default()
        };
        let v = serde_json::json!({ "handoff_ms": p, "old_flag": true, "old_count": 4 });
        let r: Rest = serde_json::from_value(v).unwrap();
        assert_eq!(r.server_ms.len(), 1);
        assert_eq!(r.server_ms["handoff_ms"], p);
    }

    #[test]
    fn histograms_give_percentiles_in_ms() {
        let mut h = Hist::default();
        assert_eq!(h.percentiles(), Percentiles::default());
        for i in 1..=100 {
            h.record_ms(i as f64);
        }
        let p = h.percentiles();
        assert_eq!(p.count, 100);
        assert!((p.p50.unwrap() - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99.unwrap() - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max.unwrap() - 100.0).abs() < 0.1, "{p:?}");
        assert!((p.mean.unwrap() - 50.5).abs() < 0.1, "{p:?}");
        // Out of range is clamped, not lost.
        h.record_ms(1e12);
        assert_eq!(h.percentiles().count, 101);
    }
}
