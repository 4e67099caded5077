//! Open-loop load: requests sent at times drawn before each level starts (see
//! [`crate::arrivals`]), whatever the server is doing, each on an idle connection of a
//! pool or a new one. Every latency counts from the request's intended send time, so a
//! server that stalls puts its stall into every request scheduled during it instead of
//! holding the next ones back (no coordinated omission); how late each request was
//! really sent is the schedule lag, reported beside the figures.
//!
//! Requests whose intended time falls in the warm-up or the cool-down run, and their
//! tokens count towards throughput, but their latencies are left out. A level is marked
//! not valid, with the reason, where the client fell behind its schedule (lag p99 over
//! the bound), dropped arrivals (`max_in_flight` open already), or its CPU saturated.
//!
//! With SLOs and a search, the levels go up the rates until one misses the SLOs, then
//! halve the gap between the last that met them and the first that did not.

use super::figures::{Fold, Level};
use super::{Event, Hist, LevelSummary, Live, LoadSpec, MakeRunner, OpenLevel, Timing, unix_ms};
use crate::Runner;
use crate::arrivals::{Arrivals, schedule};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An open-loop load test.
#[derive(Debug, Clone)]
pub struct OpenSpec {
    /// Requests per second, level by level in this order (empty with a trace).
    pub rates: Vec<f64>,
    /// How each level's send times are drawn, and its duration.
    pub arrivals: Arrivals,
    /// Send times read from a file, instead of rates: one level.
    pub trace: Option<Vec<Duration>>,
    /// From the level's start, and before its end: requests scheduled then are left out
    /// of the latencies.
    pub warmup: Duration,
    pub cooldown: Duration,
    /// The schedule lag past which a request was sent late, and whose p99 makes the
    /// level not valid.
    pub lag_bound: Duration,
    /// An arrival that finds this many requests open is dropped.
    pub max_in_flight: u64,
    /// With SLOs: after the first rate that misses them, halve the gap to the last that
    /// met them this many times (0: no search).
    pub search: u32,
}

/// Runs the open-loop levels; see the module's help.
pub(super) async fn run(
    spec: &LoadSpec,
    o: &OpenSpec,
    make: Arc<MakeRunner>,
    mut each: impl FnMut(&Event),
) -> anyhow::Result<Vec<LevelSummary>> {
    let mut out = Vec::new();
    let level = |rate: Option<f64>, out: &[LevelSummary]| {
        let n = out.len() as u64;
        let times = match (rate, &o.trace) {
            (Some(r), _) => schedule(&o.arrivals, r, n),
            (None, Some(t)) => cut(t, &o.arrivals),
            (None, None) => Vec::new(),
        };
        (n as u32 + 1, times)
    };
    if o.trace.is_some() {
        let (n, times) = level(None, &out);
        let s = run_level(spec, o, n, None, times, make.clone(), &mut each).await?;
        out.push(s);
        return Ok(out);
    }
    let met = |s: &LevelSummary| s.slo.is_some_and(|v| v.met);
    let mut last_met: Option<f64> = None;
    for &rate in &o.rates {
        let (n, times) = level(Some(rate), &out);
        let s = run_level(spec, o, n, Some(rate), times, make.clone(), &mut each).await?;
        let ok = met(&s);
        out.push(s);
        if o.search == 0 || spec.slo.is_none() {
            continue;
        }
        if ok {
            last_met = Some(rate);
            continue;
        }
        // Halve the gap between the last rate that met the SLOs and this one.
        let (mut lo, mut hi) = (last_met.unwrap_or(0.0), rate);
        for _ in 0..o.search {
            let mid = (lo + hi) / 2.0;
            let (n, times) = level(Some(mid), &out);
            let s = run_level(spec, o, n, Some(mid), times, make.clone(), &mut each).await?;
            if met(&s) {
                lo = mid;
            } else {
                hi = mid;
            }
            out.push(s);
        }
        break;
    }
    Ok(out)
}

/// A trace's send times within the duration and the most requests.
fn cut(t: &[Duration], a: &Arrivals) -> Vec<Duration> {
    let max = a.max_requests.map_or(usize::MAX, |m| m as usize);
    t.iter()
        .copied()
        .filter(|&d| d < a.duration)
        .take(max)
        .collect()
}

/// The highest rate among levels that met the SLOs.
pub fn max_rate_at_slo(levels: &[LevelSummary]) -> Option<f64> {
    levels
        .iter()
        .filter(|s| s.slo.is_some_and(|v| v.met))
        .filter_map(|s| s.open.as_ref()?.rate)
        .reduce(f64::max)
}

/// What a level's requests share.
struct Shared {
    fold: Mutex<Fold>,
    live: Live,
    lag: Mutex<Hist>,
    late: AtomicU64,
    excluded: AtomicU64,
    dropped: AtomicU64,
    pool: Mutex<Vec<Box<dyn Runner>>>,
    prompts: Vec<crate::Prompt>,
    make: Arc<MakeRunner>,
    /// Intended times inside this range are counted in the latencies.
    counted: (Duration, Duration),
    lag_bound: Duration,
}

/// The process's CPU time so far (user and system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

async fn run_level(
    spec: &LoadSpec,
    o: &OpenSpec,
    level: u32,
    rate: Option<f64>,
    times: Vec<Duration>,
    make: Arc<MakeRunner>,
    each: &mut impl FnMut(&Event),
) -> anyhow::Result<LevelSummary> {
    let duration = match rate {
        Some(_) => o.arrivals.duration,
        None => times.last().copied().unwrap_or_default() + Duration::from_millis(1),
    };
    let counted = (o.warmup, duration.saturating_sub(o.cooldown));
    // A moment's lead, so that setting up does not make the first arrivals late.
    let lead = Duration::from_millis(50);
    let t0 = Instant::now() + lead;
    let start = unix_ms() + lead.as_secs_f64() * 1000.0;
    let at = |d: Duration| start + d.as_secs_f64() * 1000.0;
    let timing = Timing {
        t0,
        ramp: o.warmup,
        hold: counted.1.saturating_sub(counted.0),
        ramp_start: start,
        hold_start: at(counted.0),
        hold_end: at(counted.1.max(counted.0)),
        stop_at: t0 + duration,
    };
    let sh = Arc::new(Shared {
        fold: Mutex::new(Fold::new(
            (timing.hold_start, timing.hold_end),
            start,
            spec.slo,
        )),
        live: Live::default(),
        lag: Mutex::new(Hist::default()),
        late: AtomicU64::new(0),
        excluded: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        pool: Mutex::new(Vec::new()),
        prompts: spec.prompts.clone(),
        make,
        counted,
        lag_bound: o.lag_bound,
    });
    each(&Event::Phase {
        level,
        phase: "ramp".into(),
        at_unix_ms: start,
    });
    let scheduled = times.len() as u64;
    let cpu0 = (cpu_seconds(), Instant::now());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(dispatch(times, t0, o.max_in_flight, sh.clone()));
    super::watch(&mut tasks, true, level, timing, &sh.live, each).await?;
    let cpu = (cpu_seconds() - cpu0.0) / cpu0.1.elapsed().as_secs_f64().max(1e-9);
    let idle = std::mem::take(&mut *sh.pool.lock().unwrap_or_else(|e| e.into_inner()));
    for mut r in idle {
        r.close().await;
    }
    let open = judge(o, rate, scheduled, &sh, cpu);
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let fold = std::mem::take(&mut *sh.fold.lock().unwrap_or_else(|e| e.into_inner()));
    let s = fold.summary(Level {
        level,
        times: [start, timing.hold_start, timing.hold_end, unix_ms()],
        counts: [
            l(&sh.live.started),
            l(&sh.live.completed),
            l(&sh.live.failed),
        ],
        peak_open: l(&sh.live.peak),
        secs: (timing.hold_end - timing.hold_start) / 1000.0,
        whole: false,
        open: Some(open),
    });
    each(&Event::Level(Box::new(s.clone())));
    Ok(s)
}

/// How well the level kept its schedule, and whether its figures can be trusted.
fn judge(o: &OpenSpec, rate: Option<f64>, scheduled: u64, sh: &Shared, cpu: f64) -> OpenLevel {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let lag_ms = sh.lag.lock().map(|h| h.percentiles()).unwrap_or_default();
    let bound = o.lag_bound.as_secs_f64() * 1000.0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let dropped = l(&sh.dropped);
    let invalid = why_not_valid(lag_ms.p99, bound, dropped, o.max_in_flight, cpu, cores);
    OpenLevel {
        rate,
        process: match rate {
            Some(_) => o.arrivals.process.name().to_owned(),
            None => "trace".to_owned(),
        },
        scheduled,
        sent: l(&sh.live.started),
        dropped,
        late: l(&sh.late),
        excluded: l(&sh.excluded),
        lag_ms,
        lag_bound_ms: bound,
        client_cpu_cores: cpu,
        cores,
        valid: invalid.is_empty(),
        invalid,
    }
}

/// Why a level's figures cannot be trusted, if they cannot: its lag p99 over the bound
/// (ms), arrivals dropped at `max_in_flight`, or the client's CPU time over the level
/// (in cores) at 90% of the machine's `cores` or more.
fn why_not_valid(
    lag_p99: Option<f64>,
    bound: f64,
    dropped: u64,
    max_in_flight: u64,
    cpu: f64,
    cores: u32,
) -> Vec<String> {
    let mut invalid = Vec::new();
    if let Some(p99) = lag_p99
        && p99 > bound
    {
        invalid.push(format!(
            "the client fell behind its schedule: lag p99 {p99:.1} ms is over the bound of {bound:.1} ms"
        ));
    }
    if dropped > 0 {
        invalid.push(format!(
            "{dropped} arrivals dropped: {max_in_flight} requests were open already (max_in_flight)"
        ));
    }
    if cpu >= 0.9 * cores as f64 {
        invalid.push(format!(
            "the client's CPU saturated: {cpu:.2} of {cores} cores busy"
        ));
    }
    invalid
}

/// Sends each request at its time, unless `max_in_flight` are open; waits for every
/// request to end.
async fn dispatch(times: Vec<Duration>, t0: Instant, max_in_flight: u64, sh: Arc<Shared>) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, at) in times.into_iter().enumerate() {
        let intended = t0 + at;
        tokio::time::sleep_until(intended.into()).await;
        while tasks.try_join_next().is_some() {}
        if sh.live.open.load(Ordering::Relaxed) >= max_in_flight {
            sh.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let open = sh.live.open.fetch_add(1, Ordering::Relaxed) + 1;
        sh.live.peak.fetch_max(open, Ordering::Relaxed);
        sh.live.started.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(request(i, at, intended, sh.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// Request `i`, intended at `at` from the level's start (`intended`).
async fn request(i: usize, at: Duration, intended: Instant, sh: Arc<Shared>) {
    let lag = Instant::now().saturating_duration_since(intended);
    let lag_ms = lag.as_secs_f64() * 1000.0;
    if let Ok(mut h) = sh.lag.lock() {
        h.record_ms(lag_ms);
    }
    if lag > sh.lag_bound {
        sh.late.fetch_add(1, Ordering::Relaxed);
    }
    let idle = sh.pool.lock().ok().and_then(|mut p| p.pop());
    let runner = match idle {
        Some(r) => Ok(r),
        None => (sh.make)(i),
    };
    let live = &sh.live;
    let mut runner = match runner {
        Ok(r) => r,
        Err(e) => {
            // The settings were checked before the test; count it rather than stop.
            tracing::warn!("cannot set up a runner: {e:#}");
            live.open.fetch_sub(1, Ordering::Relaxed);
            live.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let k = i % sh.prompts.len();
    let mut ignore = |_: &str| {};
    let r = runner.run(k, &sh.prompts[k], &mut ignore).await;
    live.open.fetch_sub(1, Ordering::Relaxed);
    if r.error.is_some() {
        live.failed.fetch_add(1, Ordering::Relaxed);
    } else {
        live.completed.fetch_add(1, Ordering::Relaxed);
    }
    let counted = at >= sh.counted.0 && at < sh.counted.1;
    if !counted {
        sh.excluded.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(mut f) = sh.fold.lock() {
        f.add(k, &r, lag_ms, counted);
    }
    if let Ok(mut p) = sh.pool.lock() {
        p.push(runner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrivals::Process;
    use crate::load::{Backoff, LevelEnd, Slo};
    use crate::record::{Mode, PromptRecord, Recorder};
    use crate::{BoxFuture, TokenSink};

    /// A server in the test's own process: a first token after 10 ms, three more 5 ms
    /// apart; nothing moves while it stalls, and (with `one_at_a_time`) it serves one
    /// request at a time.
    #[derive(Clone)]
    struct Fake {
        stall: Option<(Instant, Instant)>,
        queue: Option<Arc<tokio::sync::Mutex<()>>>,
    }

    impl Fake {
        async fn step(&self, ms: u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if let Some((from, to)) = self.stall {
                let now = Instant::now();
                if now >= from && now < to {
                    tokio::time::sleep_until(to.into()).await;
                }
            }
        }
    }

    impl Runner for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn run<'a>(
            &'a mut self,
            index: usize,
            prompt: &'a crate::Prompt,
            _sink: &'a mut TokenSink<'a>,
        ) -> BoxFuture<'a, PromptRecord> {
            Box::pin(async move {
                let mut rec = Recorder::start();
                let q = self.queue.clone();
                let _turn = match &q {
                    Some(q) => Some(q.lock().await),
                    None => None,
                };
                for ms in [10, 5, 5, 5] {
                    self.step(ms).await;
                    rec.token("t");
                }
                rec.finish("fake", Mode::Reuse, index, &prompt.text, None)
            })
        }
        fn close(&mut self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn spec(open: Option<OpenSpec>, levels: Vec<u32>, end: LevelEnd) -> LoadSpec {
        LoadSpec {
            levels,
            ramp: Duration::ZERO,
            end,
            backoff: Backoff::default(),
            prompts: vec![crate::Prompt::new("p")],
            per_connection: 1,
            slo: None,
            open,
        }
    }

    fn open_spec(rates: Vec<f64>, secs: f64) -> OpenSpec {
        OpenSpec {
            rates,
            arrivals: Arrivals {
                process: Process::Constant,
                seed: 1,
                duration: Duration::from_secs_f64(secs),
                ramp: Duration::ZERO,
                max_requests: None,
            },
            trace: None,
            warmup: Duration::ZERO,
            cooldown: Duration::ZERO,
            lag_bound: Duration::from_millis(50),
            max_in_flight: 10_000,
            search: 0,
        }
    }

    fn maker(f: Fake) -> Arc<MakeRunner> {
        Arc::new(move |_| Ok(Box::new(f.clone()) as Box<dyn Runner>))
    }

    /// A server that stalls for 2 s mid-run: at a fixed rate, every request scheduled
    /// during the stall carries it (the client kept its schedule, its lag says so); a
    /// closed loop against the same server sends nothing while its one stream waits,
    /// so only that stream sees the stall and the figures hide it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stall_is_in_every_request_scheduled_during_it_and_a_closed_loop_hides_it() {
        let stall = |start: Instant| Fake {
            stall: Some((
                start + Duration::from_millis(1500),
                start + Duration::from_millis(3500),
            )),
            queue: None,
        };
        let open = spec(
            Some(open_spec(vec![50.0], 5.0)),
            vec![],
            LevelEnd::Cycles(1),
        );
        let levels = run(
            &open,
            open.open.as_ref().unwrap(),
            maker(stall(Instant::now())),
            |_| {},
        )
        .await
        .unwrap();
        let o = &levels[0];
        let info = o.open.as_ref().unwrap();
        assert_eq!(info.scheduled, 249, "50/s over 5 s");
        assert_eq!((o.completed, o.failed, info.dropped), (249, 0, 0));
        assert!(info.valid, "{:?}", info.invalid);
        assert!(
            info.lag_ms.p99.unwrap() < 50.0,
            "the client kept its schedule: {:?}",
            info.lag_ms
        );
        // About 100 of 249 requests were scheduled during the stall, each waiting out
        // its rest: the E2E p90 is over a second.
        let e2e = o.duration_ms;
        assert!(e2e.p90.unwrap() > 1000.0, "{e2e:?}");
        assert!(e2e.max.unwrap() > 1900.0, "{e2e:?}");
        assert!(
            o.ttft_ms.p50.unwrap() < 100.0,
            "most were not scheduled in it: {:?}",
            o.ttft_ms
        );

        // 7 s: about 5 s outside the stall, some 170 streams of 25 ms and their timer
        // slack, so that the one stream that waited it out is past the p99 (it needs
        // more than 100; a 5 s hold gave exactly 100 on a busy machine).
        let closed = spec(None, vec![1], LevelEnd::Hold(Duration::from_secs(7)));
        let levels = crate::load::run(&closed, maker(stall(Instant::now())), |_| {})
            .await
            .unwrap();
        let c = &levels[0];
        let e2e = c.duration_ms;
        assert!(c.completed > 100, "{}", c.completed);
        assert!(
            e2e.p90.unwrap() < 100.0,
            "the closed loop hides it: {e2e:?}"
        );
        assert!(
            e2e.p99.unwrap() < 100.0,
            "the closed loop hides it: {e2e:?}"
        );
        assert!(e2e.max.unwrap() > 1500.0, "one stream saw it: {e2e:?}");
    }

    /// Arrivals that find `max_in_flight` requests open are dropped, and the level is
    /// marked not valid with the reason; its requests are counted, the dropped are not.
    /// Each reason on its own makes a level not valid, named with its figures; a level
    /// under every bound is valid.
    #[test]
    fn lag_drops_and_a_saturated_cpu_each_make_a_level_not_valid() {
        assert!(why_not_valid(Some(9.9), 10.0, 0, 100, 1.7, 2).is_empty());
        assert!(why_not_valid(None, 10.0, 0, 100, 0.0, 2).is_empty());
        let one = |v: Vec<String>| {
            assert_eq!(v.len(), 1, "{v:?}");
            v[0].clone()
        };
        assert!(one(why_not_valid(Some(12.5), 10.0, 0, 100, 0.5, 2)).contains("lag p99 12.5 ms"));
        assert!(
            one(why_not_valid(Some(1.0), 10.0, 3, 100, 0.5, 2)).contains("3 arrivals dropped: 100")
        );
        assert!(
            one(why_not_valid(Some(1.0), 10.0, 0, 100, 1.8, 2))
                .contains("the client's CPU saturated: 1.80 of 2 cores busy")
        );
        assert_eq!(why_not_valid(Some(50.0), 10.0, 1, 100, 4.0, 4).len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_arrivals_make_a_level_not_valid() {
        let slow = Fake {
            stall: None,
            queue: Some(Arc::new(tokio::sync::Mutex::new(()))),
        };
        let mut o = open_spec(vec![200.0], 0.5);
        o.max_in_flight = 2;
        let s = spec(Some(o), vec![], LevelEnd::Cycles(1));
        let levels = run(&s, s.open.as_ref().unwrap(), maker(slow), |_| {})
            .await
            .unwrap();
        let info = levels[0].open.as_ref().unwrap();
        assert_eq!(info.scheduled, 99);
        assert!(info.dropped > 50, "{info:?}");
        assert_eq!(info.sent + info.dropped, info.scheduled);
        assert_eq!(levels[0].started, info.sent);
        assert!(!info.valid);
        assert!(info.invalid[0].contains("dropped"), "{:?}", info.invalid);
    }

    /// The warm-up's and cool-down's requests run but are not in the latencies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warm_up_and_cool_down_are_left_out() {
        let mut o = open_spec(vec![20.0], 2.0);
        o.warmup = Duration::from_millis(500);
        o.cooldown = Duration::from_millis(500);
        let s = spec(Some(o), vec![], LevelEnd::Cycles(1));
        let f = Fake {
            stall: None,
            queue: None,
        };
        let levels = run(&s, s.open.as_ref().unwrap(), maker(f), |_| {})
            .await
            .unwrap();
        let l = &levels[0];
        let info = l.open.as_ref().unwrap();
        // 39 arrivals at 0.05 s to 1.95 s: 0.5 s <= t < 1.5 s holds 20 of them.
        assert_eq!(info.scheduled, 39);
        assert_eq!(info.excluded, 19);
        assert_eq!(l.duration_ms.count, 20);
        assert_eq!(l.completed, 39);
        assert!((l.hold_end_unix_ms - l.hold_start_unix_ms - 1000.0).abs() < 1e-6);
    }

    /// The search goes up the rates to the first that misses the SLOs, then halves the
    /// gap: a server of one request at a time, 25 ms each, holds about 40 per second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_search_finds_the_highest_rate_at_slo() {
        let one = Fake {
            stall: None,
            queue: Some(Arc::new(tokio::sync::Mutex::new(()))),
        };
        let mut o = open_spec(vec![10.0, 20.0, 80.0, 160.0], 2.0);
        o.search = 2;
        let mut s = spec(Some(o), vec![], LevelEnd::Cycles(1));
        s.slo = Some(Slo {
            e2e_ms: Some(200.0),
            share_pct: 90.0,
            ..Slo::default()
        });
        let levels = run(&s, s.open.as_ref().unwrap(), maker(one), |_| {})
            .await
            .unwrap();
        let rates: Vec<f64> = levels
            .iter()
            .filter_map(|l| l.open.as_ref()?.rate)
            .collect();
        assert_eq!(
            rates[..3],
            [10.0, 20.0, 80.0],
            "stops at the first miss: {rates:?}"
        );
        assert_eq!(rates[3], 50.0, "halfway between 20 and 80");
        assert_eq!(rates.len(), 5, "two halvings");
        let max = max_rate_at_slo(&levels).unwrap();
        assert!((20.0..50.0).contains(&max), "{max} of {rates:?}");
        assert!(levels[2].slo.unwrap().good_pct < 90.0);
    }
}
