//! One cell of a load test (`workload.load`): the warm-up prompt, a quiet link, then
//! `lab load` in the client namespace, level after level, while the cell's server
//! process tree is sampled from /proc and the client interface's counters are read at
//! each level's start and end. Each completed stream's tokens are checked against the
//! mock's answer by digest.

use crate::capture::stack::{CellStack, Mark};
use crate::capture::{self, Kernel};
use crate::metrics::CellResult;
use crate::metrics::load::{CellLoad, LevelResult, Resources, Sample, WireCount, check_digests};
use crate::netlab::state::State;
use crate::netlab::{procs, sys};
use crate::plan::{Cell, run_dir};
use crate::topology::model::LoadWorkload;
use anyhow::{Result, anyhow};
use lab_clients::load::{Event, LevelSummary};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a stopped load generator gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// How often the progress line is printed when nothing else changes.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The server of `cell`: its process record (pid and start time).
fn server_of<'a>(state: &'a State, cell: &Cell) -> Option<&'a crate::netlab::state::ProcRecord> {
    state.processes.iter().find(|p| {
        p.cell.as_deref() == Some(cell.id.as_str())
            && p.namespace == cell.server_ns
            && p.role.ends_with(" server")
    })
}

/// One sample of the process tree under `pid`.
fn sample(pid: u32, ticks: f64) -> Option<Sample> {
    let u = sys::tree_usage(pid)?;
    Some(Sample {
        at_unix_ms: unix_ms(),
        processes: u.processes,
        rss_kib: u.rss_kib,
        user_s: u.utime as f64 / ticks,
        system_s: u.stime as f64 / ticks,
        threads: u.threads,
        fds: u.fds,
    })
}

/// `lab load`'s arguments for `cell`.
fn argv(state: &State, cell: &Cell, load: &LoadWorkload, prompts: &Path) -> Vec<String> {
    let plan = &state.plan;
    let w = &plan.workload;

    let (backoff, backoff_max) = load.backoff();
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    let mut argv = super::client::argv_head(state, cell, "load");
    argv.extend([
        "--timeout".into(),
        w.timeout
            .map_or_else(|| "120s".to_owned(), |t| t.to_string()),
        "--ramp".into(),
        dur(load.ramp()),
        "--backoff".into(),
        dur(backoff),
        "--backoff-max".into(),
        dur(backoff_max),
        "--prompts".into(),
        prompts.display().to_string(),
    ]);
    let list = |v: Vec<String>| v.join(",");
    if load.is_open() {
        open_argv(&mut argv, load);
    } else {
        argv.extend([
            "--levels".into(),
            list(load.levels.iter().map(u32::to_string).collect()),
        ]);
    }
    match (load.cycles, load.hold()) {
        (Some(c), _) => argv.extend(["--cycles".into(), c.to_string()]),
        (None, Some(h)) => argv.extend(["--hold".into(), dur(h)]),
        (None, None) => {}
    }
    if let Some(n) = load.per_connection {
        argv.extend(["--per-connection".into(), n.to_string()]);
    }
    if load.socket_per_connection == Some(true) {
        argv.push("--socket-per-connection".into());
    }
    if !load.is_open() {
        argv.extend(["--workers".into(), load.workers().to_string()]);
    }
    if load.usage.unwrap_or(plan.llm.mock_chunk_tokens.is_some()) {
        argv.push("--usage".into());
    }
    if cell.sources.len() > 1 {
        let s: Vec<String> = cell.sources.iter().map(|a| a.to_string()).collect();
        argv.extend(["--source".into(), s.join(",")]);
    }
    if !cell.transport.is_default() {
        argv.extend(["--transport".into(), cell.transport.to_json()]);
    }
    argv
}

/// An open loop's arguments: the rates or the trace, the arrivals, the periods, the SLO.
fn open_argv(argv: &mut Vec<String>, load: &LoadWorkload) {
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    match &load.trace {
        Some(t) => argv.extend(["--trace".into(), t.clone()]),
        None => argv.extend([
            "--rates".into(),
            load.rates
                .iter()
                .map(|r| lab_clients::load::fmt_rate(*r))
                .collect::<Vec<_>>()
                .join(","),
            "--arrivals".into(),
            load.arrivals.clone().unwrap_or_else(|| "poisson".into()),
        ]),
    }
    let opt = |argv: &mut Vec<String>, flag: &str, v: Option<String>| {
        if let Some(v) = v {
            argv.extend([flag.to_owned(), v]);
        }
    };
    opt(argv, "--burstiness", load.burstiness.map(|b| b.to_string()));
    opt(argv, "--seed", load.seed.map(|b| b.to_string()));
    opt(argv, "--duration", Some(dur(load.duration())));
    opt(
        argv,
        "--max-requests",
        load.max_requests.map(|b| b.to_string()),
    );
    opt(argv, "--warmup", load.warmup.map(|d| dur(d.0)));
    opt(argv, "--cooldown", load.cooldown.map(|d| dur(d.0)));
    opt(argv, "--lag-bound", load.lag_bound.map(|d| dur(d.0)));
    opt(
        argv,
        "--max-in-flight",
        Some(load.max_in_flight().to_string()),
    );
    opt(argv, "--search", load.search.map(|b| b.to_string()));
    if let Some(s) = &load.slo {
        opt(argv, "--slo-ttft", s.ttft.map(|d| dur(d.0)));
        opt(argv, "--slo-itl-p99", s.itl_p99.map(|d| dur(d.0)));
        opt(argv, "--slo-tpot", s.tpot.map(|d| dur(d.0)));
        opt(argv, "--slo-e2e", s.e2e.map(|d| dur(d.0)));
        opt(
            argv,
            "--slo-share",
            s.share.map(|p| format!("{}%", p.0 * 100.0)),
        );
    }
}

/// The longest a load test of `load` may take before its generator is stopped.
fn deadline(load: &LoadWorkload, timeout: Duration) -> Duration {
    let (_, backoff_max) = load.backoff();
    if load.is_open() {
        // A trace's length is its last time (at most the duration).
        let per_level = load.duration() + timeout;
        return per_level * load.level_count() + Duration::from_secs(60);
    }
    let per_level = match (load.cycles, load.hold()) {
        (Some(c), _) => load.ramp() + (timeout + backoff_max) * c,
        (None, Some(h)) => load.ramp() + h + timeout + backoff_max,
        (None, None) => load.ramp() + timeout,
    };
    per_level * load.levels.len() as u32 + Duration::from_secs(60)
}

/// Runs one cell's load test.
pub fn run(
    state: &State,
    cell: &Cell,
    prompts: &[lab_clients::Prompt],
    progress: &super::Progress<'_>,
    stop: &AtomicBool,
) -> CellResult {
    let stage = progress.stage;
    let label = format!("{} {}@{}", cell.id, cell.name, cell.profile);
    let t0 = Instant::now();
    let mut res = CellResult::empty(cell);
    let plan = &state.plan;
    let Some(load) = plan.workload.load.as_ref() else {
        res.errors.push("the workload has no load test".into());
        return res;
    };
    let dir = PathBuf::from(run_dir(&state.name));
    let timeout = plan
        .workload
        .timeout
        .map_or(Duration::from_secs(120), |t| t.0);
    let (prompts_file, warm_file) = match super::cell::write_prompt_files(&dir, cell, prompts) {
        Ok(f) => f,
        Err(e) => {
            res.errors.push(format!("{e:#}"));
            return res;
        }
    };
    let warm = super::cell::warm_up(state, cell, &warm_file, &label, timeout, stage, stop);
    (res.warmup_error, res.warmup_retried) = (warm.error, warm.retried);
    if stop.load(Ordering::SeqCst) {
        res.errors
            .push("interrupted before the load test started".into());
        return res;
    }
    let result = (|| -> Result<(CellLoad, Option<String>)> {
        let cns = sys::open_netns(&cell.client_ns)?;
        let sns = sys::open_netns(&cell.server_ns)?;
        super::cell::wait_quiet(
            &[&cns, &sns],
            super::cell::quiet_for(cell),
            Duration::from_secs(10),
            stop,
        );
        let wns = sys::open_netns(&cell.wire_ns)?;
        let server = server_of(state, cell)
            .ok_or_else(|| anyhow!("no server process is recorded for cell {}", cell.id))?;
        (progress.measuring)();
        run_load(
            state,
            cell,
            load,
            &prompts_file,
            prompts,
            [&cns, &sns, &wns],
            server.pid,
            timeout,
            &label,
            stage,
            stop,
        )
    })();
    match result {
        Ok((l, stopped)) => {
            res.load = Some(l);
            res.errors.extend(stopped);
        }
        Err(e) => res.errors.push(format!("{e:#}")),
    }
    res.wire = std::fs::read(dir.join("wire").join(format!("{}.json", cell.id)))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    res.seconds = t0.elapsed().as_secs_f64();
    res
}

/// The events of `lab load` as they come: each level's counters at its start and end,
/// and the progress lines.
struct Levels<'a> {
    cell: &'a Cell,
    label: &'a str,
    stage: &'a (dyn Fn(&str) + Sync),
    /// The client's, server's and wire's namespaces.
    ends: [&'a std::fs::File; 3],
    /// The client interface's counters, and the host's drop counters at both ends, at
    /// each level's start.
    at_ramp: HashMap<u32, Kernel>,
    stack_at_ramp: HashMap<u32, Mark>,
    last: Instant,
    done: Vec<(LevelSummary, Option<WireCount>, Option<CellStack>)>,
}

impl Levels<'_> {
    fn event(&mut self, e: Event) {
        let [cns, sns, wns] = self.ends;
        let label = self.label;
        match e {
            Event::Phase { level, phase, .. } => {
                if phase == "ramp" {
                    if let Ok(k) = capture::kernel_counters(cns, "to-wire") {
                        self.at_ramp.insert(level, k);
                    }
                    match Mark::take(cns, sns, wns, "to-wire") {
                        Ok(m) => {
                            self.stack_at_ramp.insert(level, m);
                        }
                        Err(e) => tracing::warn!(
                            "cell {}: level {level}: cannot read the host's drop counters: {e:#}",
                            self.cell.id
                        ),
                    }
                }
                (self.stage)(&format!("[{label}] level {level}: {phase}"));
            }
            Event::Progress {
                level,
                open,
                started,
                completed,
                failed,
                ..
            } => {
                if self.last.elapsed() >= PROGRESS_EVERY {
                    self.last = Instant::now();
                    (self.stage)(&format!(
                        "[{label}] level {level}: {open} streams open, {started} started, {completed} completed, {failed} failed"
                    ));
                }
            }
            Event::Level(l) => {
                let wire = self.at_ramp.get(&l.level).and_then(|k0| {
                    let k1 = capture::kernel_counters(cns, "to-wire").ok()?;
                    let d = k1.minus(*k0);
                    Some(WireCount {
                        bytes_up: d.tx_bytes,
                        bytes_down: d.rx_bytes,
                        packets_up: d.tx_packets,
                        packets_down: d.rx_packets,
                    })
                });
                let stack = self
                    .stack_at_ramp
                    .get(&l.level)
                    .and_then(|m0| Some(m0.until(Mark::take(cns, sns, wns, "to-wire").ok()?)));
                (self.stage)(&crate::report::load::level_line(label, &l));
                self.done.push((*l, wire, stack));
            }
        }
    }
}

/// The load generator, the sampler and the counters, for one cell.
#[allow(clippy::too_many_arguments)]
fn run_load(
    state: &State,
    cell: &Cell,
    load: &LoadWorkload,
    prompts_file: &Path,
    prompts: &[lab_clients::Prompt],
    ends: [&std::fs::File; 3],
    server_pid: u32,
    timeout: Duration,
    label: &str,
    stage: &(dyn Fn(&str) + Sync),
    stop: &AtomicBool,
) -> Result<(CellLoad, Option<String>)> {
    let every = load.sample();
    let ticks = sys::clock_ticks() as f64;
    let baseline = idle_rss(server_pid, ticks);
    let samples = Mutex::new(Vec::new());
    let client_samples = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let mut st = start_generator(state, cell, load, prompts_file, ends[0])?;
    let generator_pid = st.record.pid;
    let mut levels = Levels {
        cell,
        label,
        stage,
        ends,
        at_ramp: HashMap::new(),
        stack_at_ramp: HashMap::new(),
        last: Instant::now() - PROGRESS_EVERY,
        done: Vec::new(),
    };
    // Past its deadline, or told to stop, the generator is stopped.
    let what = super::client::Child {
        name: "the load generator",
        interrupted: "the load test was stopped: the run was interrupted",
        deadline: deadline(load, timeout),
        grace: STOP_GRACE,
    };
    let ended = std::thread::scope(|s| {
        s.spawn(|| sample_server(server_pid, ticks, every, &samples, &done));
        s.spawn(|| sample_server(generator_pid, ticks, every, &client_samples, &done));
        super::client::supervise(
            &mut st,
            &what,
            stop,
            &done,
            |line| match serde_json::from_str::<Event>(line) {
                Ok(e) => levels.event(e),
                Err(e) => tracing::warn!("cell {}: lab load printed {line:?}: {e}", cell.id),
            },
        )
    });
    let samples = samples.into_inner().unwrap_or_default();
    let client_samples = client_samples.into_inner().unwrap_or_default();
    // The levels that ended before the generator was stopped (its deadline, a
    // failure, an interrupt) are kept, with the reason it stopped.
    let load = CellLoad {
        levels: results(
            state,
            levels.done,
            prompts,
            [&samples, &client_samples],
            baseline,
        ),
        baseline_rss_kib: baseline,
        samples,
        client_samples,
        sample_ms: every.as_millis() as u64,
    };
    Ok((load, ended.err().map(|e| format!("{e:#}"))))
}

/// The server's RSS when idle: the median of three samples.
fn idle_rss(server_pid: u32, ticks: f64) -> Option<u64> {
    let mut idle: Vec<u64> = (0..3)
        .filter_map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            sample(server_pid, ticks).map(|s| s.rss_kib)
        })
        .collect();
    idle.sort_unstable();
    idle.get(idle.len() / 2).copied()
}

/// A process tree (the server's, or the generator's), sampled at a fixed interval until
/// the generator is done.
fn sample_server(
    server_pid: u32,
    ticks: f64,
    every: Duration,
    samples: &Mutex<Vec<Sample>>,
    done: &AtomicBool,
) {
    while !done.load(Ordering::SeqCst) {
        if let Some(x) = sample(server_pid, ticks)
            && let Ok(mut v) = samples.lock()
        {
            v.push(x);
        }
        let t = Instant::now();
        while t.elapsed() < every && !done.load(Ordering::SeqCst) {
            std::thread::sleep(every.min(Duration::from_millis(20)));
        }
    }
}

/// `lab load` in the cell's client namespace, its events on stdout, tied to this
/// process.
fn start_generator(
    state: &State,
    cell: &Cell,
    load: &LoadWorkload,
    prompts_file: &Path,
    cns: &std::fs::File,
) -> Result<procs::Started> {
    let argv = argv(state, cell, load, prompts_file);
    let exe = std::env::current_exe()?;
    let log = PathBuf::from(run_dir(&state.plan.name))
        .join("logs")
        .join(format!("{}-load.log", cell.id));
    procs::start(
        &exe,
        "load",
        Some(&cell.id),
        &cell.client_ns,
        Some(cns),
        &argv,
        log,
        &[],
        procs::Lifetime::Tied,
        crate::plan::Ready::Line,
        None,
    )
}

/// Each level's result: its summary, the server's resources over its hold, its wire
/// and drop counters, and, with the embedded mock (every answer known), the streams
/// whose tokens were not the mock's answer.
fn results(
    state: &State,
    levels: Vec<(LevelSummary, Option<WireCount>, Option<CellStack>)>,
    prompts: &[lab_clients::Prompt],
    [samples, client_samples]: [&[Sample]; 2],
    baseline: Option<u64>,
) -> Vec<LevelResult> {
    let plan = &state.plan;
    let expected = (plan.llm.kind == "mock").then(|| {
        let (seed, max) = (plan.llm.mock_seed.unwrap_or(1), plan.llm.mock_max_tokens);
        let per_chunk = plan.llm.mock_chunk_tokens.unwrap_or(1).max(1) as usize;
        let model = plan.llm.model.clone();
        // The digest is over what arrived: the mock's chunks, each its tokens together.
        move |p: &lab_clients::Prompt| {
            let exact = p.max_tokens.map(|n| n as usize);
            let toks = lab_servers::textgen::sized(seed, &model, &p.text, exact, max);
            let chunks: Vec<String> = toks.chunks(per_chunk).map(|c| c.concat()).collect();
            (lab_clients::record::digest_tokens(&chunks), chunks.len())
        }
    });
    levels
        .into_iter()
        .map(|(summary, wire, stack)| {
            let (checked, wrong_streams, wrong) = match &expected {
                Some(f) => check_digests(&summary, prompts, f),
                None => (0, 0, Vec::new()),
            };
            let (from, to) = (summary.hold_start_unix_ms, summary.hold_end_unix_ms);
            LevelResult {
                server: Resources::over(samples, from, to, baseline, summary.peak_open),
                client: Resources::over(client_samples, from, to, Some(0), summary.peak_open),
                summary,
                wire,
                stack,
                wrong,
                checked,
                wrong_streams,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::units::Dur;

    fn load(cycles: Option<u32>) -> LoadWorkload {
        LoadWorkload {
            levels: vec![10, 100],
            ramp: Some(Dur(Duration::from_secs(2))),
            hold: Some(Dur(Duration::from_secs(3))),
            cycles,
            ..Default::default()
        }
    }

    #[test]
    fn the_deadline_covers_every_level() {
        let t = Duration::from_secs(10);
        // Two levels of ramp 2 + hold 3 + timeout 10 + backoff 5, and a minute.
        assert_eq!(deadline(&load(None), t), Duration::from_secs(2 * 20 + 60));
        // Cycles: each may take a timeout and a backoff.
        assert_eq!(
            deadline(&load(Some(3)), t),
            Duration::from_secs(2 * (2 + 3 * 15) + 60)
        );
    }
}
