//! A closed-loop level split over worker processes, and merged back exactly.
//!
//! A worker runs a [`Share`] of a level's slots: slot `i` (numbered over the whole
//! level) keeps its place in the ramp, its prompts and its backoff's seed, whichever
//! process runs it, so that the shares together run the level's schedule. Every worker
//! starts the level at the same Unix time, given by the process that merges, so their
//! one-second slices and their 10 ms grid of open streams line up on one clock. A
//! worker's [`Part`] keeps its figures unreduced (histograms, counts, digests), and
//! [`merge`] adds the parts: the result is the summary one process would have made of
//! the same streams.

use super::figures::{Fold, Hist, LevelSummary};
use super::{LevelEnd, LoadSpec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most streams of a level a worker holds when the count of workers is `auto`: an
/// open-file limit of 20,000 (this machine's hard limit) less room for the runtime.
pub const STREAMS_PER_WORKER: u32 = 15_000;

/// Workers for a closed loop whose highest level is `top`, when the count is `auto`.
pub fn auto_workers(top: u32) -> u32 {
    top.div_ceil(STREAMS_PER_WORKER).max(1)
}

/// The slots a worker runs: those of its connection groups (`per_connection` slots
/// each) whose number, modulo `of`, is `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub index: usize,
    pub of: usize,
}

impl Share {
    /// The whole level, in one process.
    pub const ALL: Share = Share { index: 0, of: 1 };

    /// Whether slot `i` is this share's, where `per` slots share a connection.
    pub fn owns(&self, i: usize, per: usize) -> bool {
        (i / per.max(1)) % self.of.max(1) == self.index
    }
}

/// How many worker processes `lab load` runs: a count, or `None` for one per
/// [`STREAMS_PER_WORKER`] streams of the highest level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers(pub Option<u32>);

/// The most worker processes.
pub const MAX_WORKERS: u32 = 64;

/// `--workers auto` or `--workers N`.
pub fn parse_workers(s: &str) -> Result<Workers, String> {
    if s == "auto" {
        return Ok(Workers(None));
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(Workers(Some(n))),
        _ => Err(format!(
            "'{s}': give `auto` or a count of worker processes from 1 to {MAX_WORKERS}"
        )),
    }
}

impl Workers {
    /// The count for a closed loop whose highest level is `top`, or an open loop (1).
    pub fn count(self, top: Option<u32>) -> anyhow::Result<u32> {
        match (self.0, top) {
            (Some(n), Some(_)) => Ok(n),
            (None, Some(t)) => Ok(auto_workers(t)),
            (Some(n), None) if n > 1 => anyhow::bail!(
                "--workers {n}: an open loop (--rates, --trace) runs in one process, since its schedule is not split; drop --workers"
            ),
            (_, None) => Ok(1),
        }
    }
}

/// `--worker I/N`: this process runs share I of N.
pub fn parse_share(s: &str) -> Result<Share, String> {
    let bad = || format!("'{s}': give the worker as INDEX/COUNT, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (index, of) = (
        i.parse::<usize>().map_err(|_| bad())?,
        n.parse::<usize>().map_err(|_| bad())?,
    );
    if of == 0 || index >= of {
        return Err(bad());
    }
    Ok(Share { index, of })
}

/// One worker's part of a level: its streams' figures, unreduced.
#[derive(Serialize, Deserialize)]
pub struct Part {
    pub level: u32,
    /// Started, completed, failed.
    pub counts: [u64; 3],
    /// When the worker's last stream of the level ended, Unix ms.
    pub end_unix_ms: f64,
    pub(crate) fold: Fold,
}

impl Part {
    pub(crate) fn new(level: u32, counts: [u64; 3], end_unix_ms: f64, fold: Fold) -> Part {
        Part {
            level,
            counts,
            end_unix_ms,
            fold,
        }
    }
}

/// The level's summary from every worker's part: histograms, counts, slices, digests
/// and the grid of open streams add; the level ends when its last worker's does.
/// `start_unix_ms` is the start every worker was given.
pub fn merge(
    spec: &LoadSpec,
    level: u32,
    start_unix_ms: f64,
    parts: Vec<Part>,
) -> anyhow::Result<LevelSummary> {
    anyhow::ensure!(
        !parts.is_empty(),
        "level {level}: no worker's part to merge"
    );
    let mut counts = [0u64; 3];
    let mut end = start_unix_ms;
    let mut fold: Option<Fold> = None;
    for p in parts {
        anyhow::ensure!(
            p.level == level,
            "a worker sent level {} where level {level} was running",
            p.level
        );
        for (c, n) in counts.iter_mut().zip(p.counts) {
            *c += n;
        }
        end = end.max(p.end_unix_ms);
        match fold.as_mut() {
            None => fold = Some(p.fold),
            Some(f) => f.merge(p.fold)?,
        }
    }
    let fold = fold.unwrap_or_default();
    let t = super::Timing::at(spec, start_unix_ms);
    Ok(super::summary_of(spec, level, &t, fold, counts, end))
}

impl Fold {
    /// Adds another fold of the same level (same window and clock).
    pub(crate) fn merge(&mut self, o: Fold) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.window == o.window && self.slice0 == o.slice0,
            "workers' levels are on different clocks: window {:?} from {} against {:?} from {}",
            self.window,
            self.slice0,
            o.window,
            o.slice0
        );
        for (k, n) in o.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, m) in o.error_samples {
            self.error_samples.entry(k).or_insert(m);
        }
        self.connections += o.connections;
        for (a, b) in [
            (&mut self.connect, o.connect),
            (&mut self.ttft, o.ttft),
            (&mut self.ttst, o.ttst),
            (&mut self.tbt, o.tbt),
            (&mut self.duration, o.duration),
            (&mut self.ttfb, o.ttfb),
            (&mut self.tpot, o.tpot),
            (&mut self.ntpot, o.ntpot),
            (&mut self.request_rate, o.request_rate),
            (&mut self.output, o.output),
        ] {
            a.add(&b);
        }
        for (k, h) in o.server {
            self.server.entry(k).or_default().add(&h);
        }
        self.tokens += o.tokens;
        self.chunks += o.chunks;
        self.usage_counted += o.usage_counted;
        if let Some(r) = o.relay {
            self.relay.get_or_insert_default().add(r);
        }
        self.token_bytes += o.token_bytes;
        self.tokens_in_hold += o.tokens_in_hold;
        self.completed_in_hold += o.completed_in_hold;
        if self.slices.len() < o.slices.len() {
            self.slices.resize(o.slices.len(), (0, 0.0));
        }
        for (a, b) in self.slices.iter_mut().zip(o.slices) {
            a.0 += b.0;
            a.1 += b.1;
        }
        self.judged += o.judged;
        self.good += o.good;
        for (k, (tokens, n)) in o.digests {
            self.digests.entry(k).or_insert((tokens, 0)).1 += n;
        }
        for (k, d) in o.opens {
            *self.opens.entry(k).or_default() += d;
        }
        Ok(())
    }
}

impl Hist {
    /// Adds every count of `o` (histograms of the same bounds, so it cannot fail).
    pub fn add(&mut self, o: &Hist) {
        // Same bounds and precision on both sides: `add` only fails on a value out of
        // this histogram's range, which `record_ms` never records.
        let _ = self.0.add(&o.0);
    }
}

/// A histogram on the wire: `[value, count]` for each recorded bucket, in µs. Recording
/// a bucket's value puts it back in the same bucket, so percentiles, mean and max come
/// back exactly.
impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<[u64; 2]> = self
            .0
            .iter_recorded()
            .map(|x| [x.value_iterated_to(), x.count_at_value()])
            .collect();
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        let v = Vec::<[u64; 2]>::deserialize(d)?;
        let mut h = Hist::default();
        for [value, count] in v {
            h.0.record_n(value, count)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(h)
    }
}

/// The digests on the wire: a list, since JSON's keys are strings.
pub(crate) mod digests {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    type Map = BTreeMap<(usize, String), (usize, u64)>;

    pub fn serialize<S: Serializer>(m: &Map, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<(usize, &str, usize, u64)> = m
            .iter()
            .map(|((p, d), &(t, n))| (*p, d.as_str(), t, n))
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let v = Vec::<(usize, String, usize, u64)>::deserialize(d)?;
        Ok(v.into_iter().map(|(p, d, t, n)| ((p, d), (t, n))).collect())
    }
}

/// Whether a level's slot `i` of `n` runs in this share; a share with none of them
/// still takes part, with an empty part.
pub(crate) fn slots(n: usize, per: usize, share: Share) -> impl Iterator<Item = usize> {
    (0..n).filter(move |&i| share.owns(i, per))
}

/// A level that ends by cycles counts throughput from the ramp's start to its end.
pub(crate) fn whole(end: LevelEnd) -> bool {
    !matches!(end, LevelEnd::Hold(h) if !h.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxFuture;
    use crate::record::{ErrorCategory, PromptError, PromptRecord};
    use crate::{Prompt, Runner, TokenSink};
    use std::sync::Arc;
    use std::time::Duration;

    /// A runner whose records depend only on its slot and its stream's number: the
    /// same schedule gives the same records in any process.
    struct Fake {
        slot: usize,
        cycle: usize,
        base: f64,
    }

    impl Runner for Fake {
        fn name(&self) -> &'static str {
            "sse"
        }

        fn run<'a>(
            &'a mut self,
            index: usize,
            prompt: &'a Prompt,
            _sink: &'a mut TokenSink<'a>,
        ) -> BoxFuture<'a, PromptRecord> {
            let (i, c) = (self.slot, self.cycle);
            self.cycle += 1;
            let start = self.base + (i * 37 + c * 1130) as f64;
            let n = 3 + (i + c) % 5;
            let tokens: Vec<f64> = (0..n)
                .map(|k| 40.0 + (i % 3) as f64 + k as f64 * (9.0 + (i % 4) as f64))
                .collect();
            let mut r: PromptRecord = serde_json::from_value(serde_json::json!({
                "approach": "sse", "mode": "reuse", "index": index, "prompt": prompt.text,
                "start_unix_ms": start, "connect_ms": (c == 0).then_some(3.0 + i as f64),
                "reused": c > 0, "ttft_ms": tokens.first(), "token_ms": tokens,
                "tbt_mean_ms": null, "tbt_p50_ms": null, "tbt_p95_ms": null,
                "tbt_p99_ms": null, "total_ms": tokens.last().unwrap() + 2.0,
                "tokens": n, "app_bytes": 0, "digest": format!("d{index}-{n}"), "error": null,
            }))
            .unwrap();
            r.server_ms
                .insert("handoff_ms".into(), 0.1 * (i + 1) as f64);
            if i % 7 == 3 && c == 0 {
                r.error = Some(PromptError::new(ErrorCategory::Connect, "refused"));
            } else if i % 11 == 5 && c == 1 {
                r.error = Some(PromptError::new(ErrorCategory::Timeout, "slow"));
            }
            Box::pin(async move { r })
        }

        fn close(&mut self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn spec(per_connection: u32) -> LoadSpec {
        LoadSpec {
            levels: vec![40],
            ramp: Duration::from_millis(20),
            end: LevelEnd::Cycles(4),
            backoff: super::super::Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            prompts: crate::prompts::reference(),
            per_connection,
            slo: Some(super::super::Slo {
                ttft_ms: Some(41.0),
                share_pct: 90.0,
                ..Default::default()
            }),
            open: None,
        }
    }

    /// Each share's part, sent through JSON as a worker sends it, with a fixed end and
    /// without the grid of open streams, which comes from the monotonic clock (its
    /// merge has a test of its own).
    async fn parts(spec: &LoadSpec, of: usize, start: f64) -> Vec<Part> {
        let mut out = Vec::new();
        for index in 0..of {
            let base = start;
            let make: Arc<crate::load::MakeRunner> = Arc::new(move |slot| {
                Ok(Box::new(Fake {
                    slot,
                    cycle: 0,
                    base,
                }) as Box<dyn Runner>)
            });
            let share = Share { index, of };
            let mut p = super::super::run_part(spec, 40, share, start, make, |_| {})
                .await
                .unwrap();
            p.end_unix_ms = start + 9_000.0;
            p.fold.opens.clear();
            let json = serde_json::to_string(&p).unwrap();
            out.push(serde_json::from_str(&json).unwrap());
        }
        out
    }

    /// Two workers' histograms, counts, slices, digests and peak equal one process's
    /// on the same schedule, through the JSON a worker sends.
    #[tokio::test]
    async fn two_workers_merge_to_what_one_process_gives() {
        let s = spec(1);
        let start = crate::load::unix_ms();
        let one = merge(&s, 40, start, parts(&s, 1, start).await).unwrap();
        let two = merge(&s, 40, start, parts(&s, 2, start).await).unwrap();
        assert_eq!(one.started, 160);
        assert_eq!(
            one.failed,
            6 + 4,
            "connect failures at 3, 10, ..., timeouts at 5, 16, ..."
        );
        assert!(
            one.errors[&ErrorCategory::Connect] == 6 && one.errors[&ErrorCategory::Timeout] == 4
        );
        assert!(one.ttft_ms.count > 100 && one.tbt_ms.count > 300);
        assert!(one.slo.unwrap().judged == 160 && one.slo.unwrap().good > 0);
        assert!(one.slices.len() > 3);
        assert!(one.server_ms["handoff_ms"].count > 100);
        assert_eq!(one, two);
        // Three workers, and connections of four streams each, split by connection.
        let s4 = spec(4);
        let one = merge(&s4, 40, start, parts(&s4, 1, start).await).unwrap();
        let three = merge(&s4, 40, start, parts(&s4, 3, start).await).unwrap();
        assert_eq!(one, three);
    }

    /// Streams open on the 10 ms grid add across workers; a slot's streams, one after
    /// another, never count twice.
    #[test]
    fn open_streams_on_the_grid_add_across_workers() {
        let fold = || super::super::Fold::new((0.0, 1e9), 1000.0, None);
        let (mut a, mut b, mut all) = (fold(), fold(), fold());
        // One slot in worker a: two streams back to back across 1030 ms; a stream of
        // 3 ms that opens and closes within one 10 ms.
        for (s, e) in [(1005.0, 1030.0), (1030.0, 1055.0), (1061.0, 1064.0)] {
            a.open_close(s, e);
            all.open_close(s, e);
        }
        // Two slots in worker b, one of them open over the whole level.
        for (s, e) in [(1002.0, 1090.0), (1012.0, 1041.0)] {
            b.open_close(s, e);
            all.open_close(s, e);
        }
        assert_eq!((a.peak_open(), b.peak_open()), (1, 2));
        let mut merged = fold();
        merged.merge(a).unwrap();
        merged.merge(b).unwrap();
        assert_eq!(merged.peak_open(), 3);
        assert_eq!(merged.opens, all.opens);
    }

    #[test]
    fn shares_split_by_connection_and_cover_every_slot_once() {
        for (per, of) in [(1, 2), (4, 3), (3, 5), (1, 1)] {
            let mut seen = vec![0; 50];
            for index in 0..of {
                let share = Share { index, of };
                for i in slots(50, per, share) {
                    seen[i] += 1;
                    // A connection's slots are all in one share.
                    assert!(share.owns(i - i % per, per));
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "per {per} of {of}: {seen:?}");
        }
    }

    /// Parts from different clocks, or of another level, are refused, not added.
    #[tokio::test]
    async fn parts_of_another_level_or_clock_are_refused() {
        let s = spec(1);
        let start = crate::load::unix_ms();
        let mut a = parts(&s, 2, start).await;
        let b = parts(&s, 1, start + 1.0).await;
        a.extend(b);
        let e = merge(&s, 40, start, a).err().unwrap().to_string();
        assert!(e.contains("different clocks"), "{e}");
        let e = merge(&s, 41, start, parts(&s, 1, start).await)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sent level 40 where level 41"), "{e}");
    }

    #[test]
    fn workers_are_a_count_or_auto_by_the_highest_level() {
        assert_eq!(parse_workers("auto"), Ok(Workers(None)));
        assert_eq!(parse_workers("3"), Ok(Workers(Some(3))));
        for bad in ["0", "65", "many"] {
            assert!(
                parse_workers(bad).unwrap_err().contains("from 1 to 64"),
                "{bad}"
            );
        }
        let auto = Workers(None);
        assert_eq!(auto.count(Some(10_000)).unwrap(), 1);
        assert_eq!(auto.count(Some(15_000)).unwrap(), 1);
        assert_eq!(auto.count(Some(15_001)).unwrap(), 2);
        assert_eq!(auto.count(Some(100_000)).unwrap(), 7);
        assert_eq!(auto.count(None).unwrap(), 1);
        assert_eq!(Workers(Some(4)).count(Some(10)).unwrap(), 4);
        let e = Workers(Some(2)).count(None).unwrap_err().to_string();
        assert!(e.contains("open loop"), "{e}");
    }

    #[test]
    fn a_worker_is_index_of_count() {
        assert_eq!(parse_share("1/4"), Ok(Share { index: 1, of: 4 }));
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            let e = parse_share(bad).unwrap_err();
            assert!(e.contains("INDEX/COUNT"), "{bad}: {e}");
        }
    }
    #[test]
    fn a_histogram_comes_back_from_json_with_the_same_figures() {
        let mut h = Hist::default();
        for i in 1..5000 {
            h.record_ms((i * i) as f64 / 777.0);
        }
        let back: Hist = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back.percentiles(), h.percentiles());
        let mut two = Hist::default();
        two.add(&back);
        two.add(&h);
        assert_eq!(two.percentiles().count, 2 * h.percentiles().count);
        assert_eq!(two.percentiles().p50, h.percentiles().p50);
    }
}
