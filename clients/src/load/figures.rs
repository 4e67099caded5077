//! A load level's figures: HDR histograms folded one stream's record at a time, and the
//! summary they become. The definitions of each measure are in docs/metrics.md.

use crate::record::{ErrorCategory, PromptRecord};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Percentiles of one measure, in milliseconds (or the unit its name gives); all `None`
/// when nothing was measured.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    #[serde(default)]
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    /// The 99.9th percentile.
    #[serde(default)]
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

/// An HDR histogram of durations, kept in microseconds (1 us to 1 hour, 3 significant
/// digits).
#[derive(Debug, Clone)]
pub struct Hist(pub(crate) Histogram<u64>);

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
        let q = |q: f64| ms(h.value_at_quantile(q));
        Percentiles {
            count: h.len(),
            mean: Some(h.mean() / 1000.0),
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
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

/// What makes a request good: every bound given holds for it (and it completed).
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Slo {
    /// Time to first token, from the intended send time.
    pub ttft_ms: Option<f64>,
    /// The 99th percentile of the request's own gaps between tokens.
    pub itl_p99_ms: Option<f64>,
    /// Time per output token after the first: (E2E - TTFT) / (tokens - 1).
    pub tpot_ms: Option<f64>,
    /// End-to-end latency, from the intended send time.
    pub e2e_ms: Option<f64>,
    /// The share of good requests, in percent, a level must reach to meet the SLOs.
    pub share_pct: f64,
}

impl Slo {
    /// Whether a completed request met every bound; `lag_ms` is how late it was sent.
    pub fn good(&self, r: &PromptRecord, lag_ms: f64) -> bool {
        let under = |v: Option<f64>, bound: Option<f64>| match bound {
            None => true,
            Some(b) => v.is_some_and(|v| v <= b),
        };
        r.error.is_none()
            && under(r.ttft_ms.map(|t| t + lag_ms), self.ttft_ms)
            && under(Some(r.total_ms + lag_ms), self.e2e_ms)
            && under(r.tbt_p99_ms.or(Some(0.0)), self.itl_p99_ms)
            && under(tpot(r).or(Some(0.0)), self.tpot_ms)
    }
}

/// A level's requests judged against the SLOs.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SloResult {
    /// Requests judged (those counted in the figures) and those that met every bound.
    pub judged: u64,
    pub good: u64,
    /// `good` as a share of `judged`, in percent.
    pub good_pct: f64,
    /// Good requests per second over the measured window.
    pub goodput_per_s: f64,
    /// Whether the share reached the SLOs' `share_pct` (and, open loop, the level was
    /// valid).
    pub met: bool,
}

/// One second of a level, from its start: requests completed and tokens received in it.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize,
)]
pub struct Slice {
    pub second: u32,
    pub requests: u64,
    pub tokens: u64,
}

/// An open-loop level: its schedule and how well the client kept it.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OpenLevel {
    /// Requests per second asked for (`None` for a trace).
    pub rate: Option<f64>,
    /// `constant`, `poisson`, `gamma` or `trace`.
    pub process: String,
    /// Arrivals scheduled, sent, and dropped because `max_in_flight` requests were
    /// already open.
    pub scheduled: u64,
    pub sent: u64,
    pub dropped: u64,
    /// Sent later than the lag bound after their intended time.
    pub late: u64,
    /// Sent in the warm-up or cool-down: run, but left out of the latencies.
    pub excluded: u64,
    /// How late each request was sent after its intended time.
    pub lag_ms: Percentiles,
    pub lag_bound_ms: f64,
    /// The client's CPU over the level, in cores (user + system time over wall time),
    /// and the cores it had.
    pub client_cpu_cores: f64,
    pub cores: u32,
    /// Whether the figures can be trusted, and if not, why not.
    pub valid: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
}

/// One level's figures.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// Concurrent streams asked for (closed loop), or the level's number from 1 (open
    /// loop, whose rate is in `open`).
    pub level: u32,
    /// Unix ms: the ramp's start, the hold's start and end (the ramp's end and the last
    /// new stream's start), and the level's end (its last stream's end). Open loop: the
    /// measured window (after the warm-up, before the cool-down).
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
    /// Time to first token (open loop: from the intended send time).
    pub ttft_ms: Percentiles,
    /// Every gap between two tokens of a stream, pooled over streams (ITL).
    pub tbt_ms: Percentiles,
    /// Request start to the end of the answer, over completed streams (E2E; open loop:
    /// from the intended send time).
    pub duration_ms: Percentiles,
    /// Request start to the response head, over completed streams (the HTTP
    /// approaches; `count` 0 elsewhere).
    #[serde(default)]
    pub ttfb_ms: Percentiles,
    /// Time to the second token.
    #[serde(default)]
    pub ttst_ms: Percentiles,
    /// Output tokens per completed request (the upstream's count where it gave one,
    /// else chunks): the answer lengths.
    #[serde(default)]
    pub output_tokens: Percentiles,
    /// Content chunks received, over every stream; `tokens` over `chunks` is the tokens
    /// a chunk carried on average (1 unless the upstream batches its output).
    #[serde(default)]
    pub chunks: u64,
    /// Completed requests whose tokens the upstream counted (`usage`); the others'
    /// tokens are their chunks.
    #[serde(default)]
    pub usage_counted: u64,
    /// Tokens relayed through a broker (`fanout`), summed over every stream: published,
    /// delivered, lost while a WebSocket was down, reconnects; absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<crate::record::RelayCounts>,
    /// Per request, (E2E - TTFT) / (tokens - 1), over requests of two tokens or more.
    #[serde(default)]
    pub tpot_ms: Percentiles,
    /// Per request, E2E / tokens.
    #[serde(default)]
    pub ntpot_ms: Percentiles,
    /// Per request, tokens / E2E in tokens per second (not milliseconds).
    #[serde(default)]
    pub request_tokens_per_s: Percentiles,
    /// Each latency the server reported about itself (a [`crate::ServerTiming`], e.g.
    /// the handoff server's `handoff_ms`), over completed streams, under its record's
    /// field name; absent where the server reports none.
    #[serde(flatten, deserialize_with = "percentiles_only")]
    pub server_ms: BTreeMap<String, Percentiles>,
    /// Output tokens received, over every stream (see `chunks`).
    pub tokens: u64,
    pub token_bytes: u64,
    /// Tokens that arrived between the hold's start and end.
    pub tokens_in_hold: u64,
    /// Tokens per second in aggregate: over the hold, or, where a level ends by cycles,
    /// from the ramp's start to the level's end (output-token throughput).
    pub tokens_per_s: f64,
    /// Requests completed between the hold's start and end, and per second of it
    /// (request throughput; where a level ends by cycles, from the ramp's start to the
    /// level's end).
    #[serde(default)]
    pub completed_in_hold: u64,
    #[serde(default)]
    pub requests_per_s: f64,
    /// Throughput second by second from the ramp's start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<Slice>,
    /// Against the SLOs, where the load test gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloResult>,
    /// Open loop: the schedule and how well it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenLevel>,
    /// Completed streams' digests, by prompt.
    pub digests: Vec<DigestCount>,
}

impl LevelSummary {
    /// Completed streams as a share of those started, in percent.
    pub fn success_pct(&self) -> Option<f64> {
        (self.started > 0).then(|| self.completed as f64 * 100.0 / self.started as f64)
    }

    /// The level as a person reads it: `1000 streams`, `20 req/s`, `trace`.
    pub fn label(&self) -> String {
        match &self.open {
            None => format!("{} streams", self.level),
            Some(o) => match o.rate {
                Some(r) => format!("{} req/s", crate::load::fmt_rate(r)),
                None => o.process.clone(),
            },
        }
    }
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

/// A request's time per output token after the first, where it has two tokens or more.
pub fn tpot(r: &PromptRecord) -> Option<f64> {
    let ttft = r.ttft_ms?;
    let n = output_tokens(r);
    (n >= 2).then(|| (r.total_ms - ttft) / (n - 1) as f64)
}

/// A request's output tokens: the upstream's count (`usage`) where the client asked
/// and it came, else the content chunks that arrived (one token each, as the mock and
/// most servers send them).
pub fn output_tokens(r: &PromptRecord) -> usize {
    r.usage_tokens.map_or(r.tokens, |n| n as usize)
}

/// The grid the peak of open streams is counted on, in ms.
const OPEN_GRID_MS: f64 = 10.0;

/// The most one-second slices a level keeps (a day).
const MAX_SLICES: usize = 86_400;

/// What the runner of a level knows beside its fold.
pub(crate) struct Level {
    pub level: u32,
    /// Unix ms: the ramp's start, the hold's (or window's) start and end, the level's end.
    pub times: [f64; 4],
    /// Started, completed, failed.
    pub counts: [u64; 3],
    pub peak_open: u64,
    /// The seconds throughput is over.
    pub secs: f64,
    /// Whether throughput counts every token and completion (a level ended by cycles),
    /// not those in the hold.
    pub whole: bool,
    pub open: Option<OpenLevel>,
}

/// A level's figures while it runs. A worker process sends its own to the process
/// that merges them (`super::parts`): every field adds.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Fold {
    /// Unix ms: the measured window (tokens and completions counted in it), and the
    /// slices' start.
    pub window: (f64, f64),
    pub slice0: f64,
    pub slo: Option<Slo>,
    pub errors: BTreeMap<ErrorCategory, u64>,
    pub error_samples: BTreeMap<ErrorCategory, String>,
    pub connections: u64,
    pub connect: Hist,
    pub ttft: Hist,
    pub ttst: Hist,
    pub tbt: Hist,
    pub duration: Hist,
    pub ttfb: Hist,
    pub tpot: Hist,
    pub ntpot: Hist,
    pub request_rate: Hist,
    pub output: Hist,
    pub server: BTreeMap<String, Hist>,
    pub tokens: u64,
    pub chunks: u64,
    pub usage_counted: u64,
    pub relay: Option<crate::record::RelayCounts>,
    pub token_bytes: u64,
    /// Output tokens that arrived in the window: each chunk weighs its request's
    /// tokens over its chunks.
    pub tokens_in_hold: f64,
    pub completed_in_hold: u64,
    pub slices: Vec<(u64, f64)>,
    pub judged: u64,
    pub good: u64,
    #[serde(with = "super::parts::digests")]
    pub digests: BTreeMap<(usize, String), (usize, u64)>,
    /// Streams opened (+1) and closed (-1) in each 10 ms of the level from `slice0`,
    /// from each record's start and end: the peak open, on one clock in every worker.
    pub opens: BTreeMap<i64, i64>,
}

impl Fold {
    pub fn new(window: (f64, f64), slice0: f64, slo: Option<Slo>) -> Fold {
        Fold {
            window,
            slice0,
            slo,
            ..Fold::default()
        }
    }

    fn slice(&mut self, at_unix_ms: f64) -> Option<&mut (u64, f64)> {
        let i = ((at_unix_ms - self.slice0) / 1000.0).floor();
        if !(0.0..MAX_SLICES as f64).contains(&i) {
            return None;
        }
        let i = i as usize;
        if self.slices.len() <= i {
            self.slices.resize(i + 1, (0, 0.0));
        }
        self.slices.get_mut(i)
    }

    /// A stream open from `start` to `end` (Unix ms on the level's clock), on the 10 ms
    /// grid. A slot's streams follow one another on one monotonic clock, so that two of
    /// them never count at once.
    pub fn open_close(&mut self, start: f64, end: f64) {
        let at = |t: f64| ((t - self.slice0) / OPEN_GRID_MS).floor() as i64;
        let (a, b) = (at(start), at(end.max(start)));
        if a != b {
            *self.opens.entry(a).or_default() += 1;
            *self.opens.entry(b).or_default() -= 1;
        }
    }

    /// The most streams open at once at the end of any 10 ms of the level (a stream
    /// that opened and closed within one 10 ms is not counted).
    pub fn peak_open(&self) -> u64 {
        let mut open = 0i64;
        let mut peak = 0i64;
        for d in self.opens.values() {
            open += d;
            peak = peak.max(open);
        }
        peak as u64
    }

    /// Folds in one stream's record. `lag_ms`: how late it was sent after its intended
    /// time (0 closed loop), added to the latencies that count from the send. `counted`:
    /// whether its latencies and outcome are figures (false in an open loop's warm-up
    /// and cool-down; its tokens still count towards throughput).
    pub fn add(&mut self, prompt: usize, r: &PromptRecord, lag_ms: f64, counted: bool) {
        let (w0, w1) = self.window;
        let out = output_tokens(r);
        self.tokens += out as u64;
        self.chunks += r.tokens as u64;
        self.token_bytes += r.token_bytes;
        if let Some(c) = r.relay {
            self.relay.get_or_insert_default().add(c);
        }
        let weight = if r.tokens > 0 {
            out as f64 / r.tokens as f64
        } else {
            0.0
        };
        for t in &r.token_ms {
            let at = r.start_unix_ms + t;
            if at >= w0 && at <= w1 {
                self.tokens_in_hold += weight;
            }
            if let Some(s) = self.slice(at) {
                s.1 += weight;
            }
        }
        if r.error.is_none() {
            let end = r.start_unix_ms + r.total_ms;
            if end >= w0 && end <= w1 {
                self.completed_in_hold += 1;
            }
            if let Some(s) = self.slice(end) {
                s.0 += 1;
            }
        }
        if !counted {
            return;
        }
        if let Some(c) = r.connect_ms {
            self.connections += 1;
            self.connect.record_ms(c);
        }
        if let Some(slo) = &self.slo {
            self.judged += 1;
            if slo.good(r, lag_ms) {
                self.good += 1;
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
            self.ttft.record_ms(t + lag_ms);
        }
        if let Some(t) = r.token_ms.get(1) {
            self.ttst.record_ms(t + lag_ms);
        }
        for w in r.token_ms.windows(2) {
            self.tbt.record_ms(w[1] - w[0]);
        }
        let e2e = r.total_ms + lag_ms;
        self.duration.record_ms(e2e);
        if let Some(t) = tpot(r) {
            self.tpot.record_ms(t);
        }
        if out > 0 {
            self.output.record_ms(out as f64);
            self.ntpot.record_ms(e2e / out as f64);
            if e2e > 0.0 {
                self.request_rate.record_ms(out as f64 * 1000.0 / e2e);
            }
        }
        if r.usage_tokens.is_some() {
            self.usage_counted += 1;
        }
        if let Some(t) = r.ttfb_ms {
            self.ttfb.record_ms(t + lag_ms);
        }
        for (k, t) in &r.server_ms {
            self.server.entry(k.clone()).or_default().record_ms(*t);
        }
        // An answer with tokens lost on the way (a broker's, while the client's
        // WebSocket was down) is counted there, not as a wrong answer.
        if !r.whole() {
            return;
        }
        let e = self
            .digests
            .entry((prompt, r.digest.clone()))
            .or_insert((r.tokens, 0));
        e.1 += 1;
    }

    /// The SLO verdict over `secs` of measured window; `valid` is false where the
    /// level's figures cannot be trusted.
    pub fn slo_result(&self, secs: f64, valid: bool) -> Option<SloResult> {
        let slo = self.slo?;
        let good_pct = if self.judged > 0 {
            self.good as f64 * 100.0 / self.judged as f64
        } else {
            0.0
        };
        Some(SloResult {
            judged: self.judged,
            good: self.good,
            good_pct,
            goodput_per_s: if secs > 0.0 {
                self.good as f64 / secs
            } else {
                0.0
            },
            met: valid && self.judged > 0 && good_pct >= slo.share_pct,
        })
    }

    /// The level's summary: its figures with what the runner of the level knew.
    pub fn summary(self, l: Level) -> LevelSummary {
        let per_s = |n: u64| if l.secs > 0.0 { n as f64 / l.secs } else { 0.0 };
        let tokens_in_hold = self.tokens_in_hold.round() as u64;
        let (tokens, requests) = if l.whole {
            (self.tokens, l.counts[1])
        } else {
            (tokens_in_hold, self.completed_in_hold)
        };
        let valid = l.open.as_ref().is_none_or(|o| o.valid);
        LevelSummary {
            level: l.level,
            ramp_start_unix_ms: l.times[0],
            hold_start_unix_ms: l.times[1],
            hold_end_unix_ms: l.times[2],
            end_unix_ms: l.times[3],
            started: l.counts[0],
            completed: l.counts[1],
            failed: l.counts[2],
            peak_open: l.peak_open,
            connections: self.connections,
            connect_ms: self.connect.percentiles(),
            ttft_ms: self.ttft.percentiles(),
            tbt_ms: self.tbt.percentiles(),
            duration_ms: self.duration.percentiles(),
            ttfb_ms: self.ttfb.percentiles(),
            ttst_ms: self.ttst.percentiles(),
            tpot_ms: self.tpot.percentiles(),
            ntpot_ms: self.ntpot.percentiles(),
            request_tokens_per_s: self.request_rate.percentiles(),
            output_tokens: self.output.percentiles(),
            chunks: self.chunks,
            usage_counted: self.usage_counted,
            relay: self.relay,
            server_ms: self
                .server
                .iter()
                .map(|(k, h)| (k.clone(), h.percentiles()))
                .collect(),
            tokens: self.tokens,
            token_bytes: self.token_bytes,
            tokens_in_hold,
            tokens_per_s: per_s(tokens),
            completed_in_hold: self.completed_in_hold,
            requests_per_s: per_s(requests),
            slices: self.slices(),
            slo: self.slo_result(l.secs, valid),
            digests: self.digest_counts(),
            errors: self.errors,
            error_samples: self.error_samples,
            open: l.open,
        }
    }

    /// The slices as a summary lists them.
    pub fn slices(&self) -> Vec<Slice> {
        self.slices
            .iter()
            .enumerate()
            .map(|(i, &(requests, tokens))| Slice {
                second: i as u32,
                requests,
                tokens: tokens.round() as u64,
            })
            .collect()
    }

    /// The digests as a summary lists them.
    pub fn digest_counts(&self) -> Vec<DigestCount> {
        self.digests
            .iter()
            .map(|((prompt, digest), &(tokens, streams))| DigestCount {
                prompt: *prompt,
                digest: digest.clone(),
                tokens,
                streams,
            })
            .collect()
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
        for i in 1..=1000 {
            h.record_ms(i as f64 / 10.0);
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        for (got, want) in [
            (p.p50, 50.0),
            (p.p90, 90.0),
            (p.p95, 95.0),
            (p.p99, 99.0),
            (p.p999, 99.9),
            (p.max, 100.0),
            (p.mean, 50.05),
        ] {
            assert!((got.unwrap() - want).abs() < 0.1, "{want}: {p:?}");
        }
        // Out of range is clamped, not lost.
        h.record_ms(1e12);
        assert_eq!(h.percentiles().count, 1001);
    }

    fn record(start: f64, tokens: &[f64]) -> PromptRecord {
        let mut r: PromptRecord = serde_json::from_value(serde_json::json!({
            "approach": "sse", "mode": "reuse", "index": 0, "prompt": "p",
            "start_unix_ms": start, "connect_ms": null, "reused": true,
            "ttft_ms": tokens.first(), "token_ms": tokens, "tbt_mean_ms": null,
            "tbt_p50_ms": null, "tbt_p95_ms": null, "tbt_p99_ms": null,
            "total_ms": tokens.last().copied().unwrap_or(0.0) + 1.0,
            "tokens": tokens.len(), "app_bytes": 0, "digest": "d", "error": null,
        }))
        .unwrap();
        r.tbt_p99_ms = tokens.windows(2).map(|w| w[1] - w[0]).reduce(f64::max);
        r
    }

    /// The serving metrics of one request, by their definitions: TTFT and E2E count
    /// from the intended send time, TPOT and the gaps do not.
    #[test]
    fn one_request_gives_each_metric_by_its_definition() {
        let r = record(1000.0, &[100.0, 110.0, 130.0, 160.0]);
        let mut f = Fold::new((0.0, 1e12), 0.0, None);
        f.add(0, &r, 5.0, true);
        let one = |h: &Hist| h.percentiles().p50.unwrap();
        assert!((one(&f.ttft) - 105.0).abs() < 0.1);
        assert!((one(&f.ttst) - 115.0).abs() < 0.1);
        assert!((one(&f.duration) - 166.0).abs() < 0.2);
        // (161 - 100) / 3
        assert!((one(&f.tpot) - 61.0 / 3.0).abs() < 0.05);
        assert!((one(&f.ntpot) - 166.0 / 4.0).abs() < 0.05);
        assert!((one(&f.request_rate) - 4000.0 / 166.0).abs() < 0.05);
        let gaps = f.tbt.percentiles();
        assert_eq!(gaps.count, 3);
        assert!((gaps.max.unwrap() - 30.0).abs() < 0.05);
        // Tokens by the second they arrived in, the request by the second it ended.
        assert_eq!(f.slices, vec![(0, 0.0), (1, 4.0)]);
        assert_eq!((f.tokens, f.chunks, f.usage_counted), (4, 4, 0));
    }

    /// Chunks that carry several tokens (the upstream counted 12 in 4 chunks): TPOT,
    /// the normalized time, the per-request rate, the answer length and throughput
    /// count the tokens; the gaps stay between chunks.
    #[test]
    fn tokens_from_the_upstreams_count_and_gaps_between_chunks() {
        let mut r = record(1000.0, &[100.0, 110.0, 130.0, 160.0]);
        r.usage_tokens = Some(12);
        assert_eq!(output_tokens(&r), 12);
        let mut f = Fold::new((1000.0, 1120.0), 0.0, None);
        f.add(0, &r, 0.0, true);
        let one = |h: &Hist| h.percentiles().p50.unwrap();
        // (161 - 100) / 11
        assert!((one(&f.tpot) - 61.0 / 11.0).abs() < 0.05);
        assert!((one(&f.ntpot) - 161.0 / 12.0).abs() < 0.05);
        assert!((one(&f.request_rate) - 12_000.0 / 161.0).abs() < 0.1);
        assert!((one(&f.output) - 12.0).abs() < 0.01);
        assert_eq!(f.tbt.percentiles().count, 3);
        assert_eq!((f.tokens, f.chunks, f.usage_counted), (12, 4, 1));
        // Two chunks in the window, three tokens each.
        assert!((f.tokens_in_hold - 6.0).abs() < 1e-9);
        assert_eq!(f.slices()[1].tokens, 12);
    }

    #[test]
    fn slos_judge_each_bound_from_the_intended_send_time() {
        let r = record(0.0, &[100.0, 110.0, 130.0, 160.0]);
        let slo = Slo {
            ttft_ms: Some(120.0),
            itl_p99_ms: Some(30.0),
            e2e_ms: Some(200.0),
            tpot_ms: Some(25.0),
            share_pct: 90.0,
        };
        assert!(slo.good(&r, 0.0));
        assert!(!slo.good(&r, 25.0), "sent 25 ms late: TTFT 125 ms");
        assert!(
            !Slo {
                itl_p99_ms: Some(29.0),
                ..slo
            }
            .good(&r, 0.0)
        );
        assert!(
            !Slo {
                tpot_ms: Some(20.0),
                ..slo
            }
            .good(&r, 0.0)
        );
        assert!(
            !Slo {
                e2e_ms: Some(150.0),
                ..slo
            }
            .good(&r, 0.0)
        );
        let mut f = Fold::new((0.0, 1e12), 0.0, Some(slo));
        f.add(0, &r, 0.0, true);
        f.add(0, &r, 50.0, true);
        f.add(0, &r, 0.0, false);
        let s = f.slo_result(2.0, true).unwrap();
        assert_eq!(
            (s.judged, s.good),
            (2, 1),
            "the uncounted request is not judged"
        );
        assert!((s.good_pct - 50.0).abs() < 1e-9 && (s.goodput_per_s - 0.5).abs() < 1e-9);
        assert!(!s.met);
    }
}
