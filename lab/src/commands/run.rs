//! `lab run`: build the lab, warm up, run the workload in every cell while capturing both
//! ends of its link, report, check expectations, tear down. With `workload.runs` (or
//! `--runs`) above one, the whole of that is done once per run, each with its own
//! shaping seed and its own results in `run-<i>/`, and the runs add up to runs.json
//! and a report of medians with confidence intervals.
//!
//! On Ctrl-C or SIGTERM: stop every client at once, save what was measured, tear down,
//! exit 130. A second signal skips the saving. A series stops after the run that was
//! interrupted.

use super::results::{give_to_sudo_user, save};
use super::{
    EXIT_EXPECTATION, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Signals, load_topology, refuse,
};
use crate::cli::RunArgs;
use crate::metrics::repeat::{RunRef, Series};
use crate::metrics::{self, CellResult, Run};
use crate::netlab::files::SafeDir;
use crate::netlab::{lifecycle, qdisc, sys};
use crate::plan::{Plan, run_dir};
use crate::report::tables;
use crate::topology::model::Topology;
use anyhow::{Result, anyhow};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The browser's version, when a cell's client is headless Chromium.
fn chromium_version(plan: &Plan) -> Option<String> {
    if !plan.cells.iter().any(|c| c.client.is_browser()) {
        return None;
    }
    let bin =
        std::env::var_os("LAB_CHROMIUM").unwrap_or_else(|| lab_clients::browser::CHROMIUM.into());
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|v| !v.is_empty())
}

fn environment(plan: &Plan) -> serde_json::Value {
    let uname = nix::sys::utsname::uname().ok();
    serde_json::json!({
        "chromium": chromium_version(plan),
        "lab_version": env!("CARGO_PKG_VERSION"),
        "kernel": uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()),
        "machine": uname.as_ref().map(|u| u.machine().to_string_lossy().into_owned()),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "backend": plan.shaping.as_ref().map(|s| s.backend),
        "backend_why": plan.shaping.as_ref().map(|s| s.why.clone()),
        "seed": plan.seed,
        // What TCP connections use when a topology names no congestion controller.
        "tcp_congestion_control": std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .ok()
            .map(|s| s.trim().to_owned()),
    })
}

fn cell_ids(plan: &Plan) -> String {
    plan.cells
        .iter()
        .map(|c| c.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What `lab run` was asked to do, checked before anything is built.
struct Job {
    topo: Topology,
    plan: Plan,
    prompts: Vec<lab_clients::Prompt>,
    expects: Vec<String>,
    results: SafeDir,
    results_existed: bool,
    runs: u32,
}

impl Job {
    /// Reads the topology and the prompts and opens the results directory; bad input
    /// is printed and gives the exit status.
    fn prepare(a: &RunArgs) -> Result<Job, u8> {
        let (mut topo, plan) = load_topology(&a.topology)?;
        let runs = a.runs.unwrap_or(topo.workload.runs);
        // --runs may ask for fewer runs than an expectation's test needs.
        let short: Vec<String> = topo
            .expect
            .iter()
            .filter_map(|e| crate::topology::expect::too_few_runs(e, runs).map(|m| (e, m)))
            .map(|(e, m)| format!("expectation `{}`: {m}", e.text))
            .collect();
        if !short.is_empty() {
            tell!("lab: {}", short.join("\nlab: "));
            return Err(super::EXIT_USAGE);
        }
        topo.workload.runs = runs;
        let plan = match a.shard {
            Some(_) if runs > 1 => {
                tell!(
                    "lab: --shard runs one part of one run; with {runs} runs run each shard with --runs 1, or the whole run on one machine"
                );
                return Err(super::EXIT_USAGE);
            }
            Some(s) => plan.shard(s).map_err(|e| {
                tell!("lab: --shard: {e}");
                super::EXIT_USAGE
            })?,
            None => plan,
        };
        let generated = topo
            .workload
            .load
            .as_ref()
            .and_then(|l| l.generated_prompts());
        let prompts = if let Some(g) = generated {
            g
        } else if topo.workload.prompts == "reference" {
            lab_clients::prompts::reference()
        } else {
            let base = a.topology.parent().unwrap_or(Path::new("."));
            lab_clients::prompts::load(&base.join(&topo.workload.prompts))
                .map_err(|e| usage(e.context("workload.prompts")))?
        };
        let prompts = match &topo.workload.load {
            Some(l) => l.with_answer_lengths(prompts),
            None => prompts,
        };
        let urgent: Vec<u64> = topo.workload.urgent.iter().map(|&n| u64::from(n)).collect();
        let total = prompts.len() * topo.workload.repeat.max(1) as usize;
        lab_clients::prompts::check_urgent(&urgent, total)
            .map_err(|e| usage(e.context("workload.urgent")))?;
        // Where results go is checked before anything is built.
        let results_existed = a.results.exists();
        let results = SafeDir::open(&a.results, true).map_err(|e| usage(e.context("--results")))?;
        Ok(Job {
            expects: topo.expect.iter().map(|e| e.text.clone()).collect(),
            topo,
            plan,
            prompts,
            results,
            results_existed,
            runs,
        })
    }

    /// The plan of run `i` (from 1): the topology's shaping seed plus `i - 1`.
    fn plan_of(&self, i: u32) -> Result<Plan, String> {
        if i == 1 {
            return Ok(self.plan.clone());
        }
        let mut t = self.topo.clone();
        t.shaping.seed = Some(self.plan.seed + u64::from(i - 1));
        crate::plan::plan(&t)
    }
}

/// Prints why the input is refused and gives the exit status.
fn usage(e: anyhow::Error) -> u8 {
    tell!("lab: {e:#}");
    super::EXIT_USAGE
}

/// `lab run`.
pub async fn run(a: RunArgs) -> Result<u8> {
    // From here on a Ctrl-C or SIGTERM is counted, never the default death.
    let signals = Signals::new()?;
    if let Err(e) = sys::require_privileges("run") {
        return refuse(e);
    }
    let job = match Job::prepare(&a) {
        Ok(j) => j,
        Err(code) => return Ok(code),
    };
    if job.runs > 1 {
        return series(&a, &job, &signals).await;
    }
    let name = match a.shard {
        Some(s) => format!(
            "{}-{}-shard{}of{}",
            stamp(),
            job.plan.name,
            s.index,
            s.count
        ),
        None => format!("{}-{}", stamp(), job.plan.name),
    };
    let done = match once(
        &a,
        &job,
        job.plan.clone(),
        &job.results,
        &name,
        &signals,
        "",
    )
    .await
    {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    hand_over(&job, &done.dir);
    Ok(done.status)
}

/// Hands what a run saved to the user behind sudo: the new directory, or the whole
/// results directory if lab made it.
fn hand_over(job: &Job, dir: &SafeDir) {
    let handed = if job.results_existed {
        give_to_sudo_user(dir)
    } else {
        give_to_sudo_user(&job.results)
    };
    if let Err(e) = handed {
        tell!("lab: {e:#}");
    }
}

/// One run, done: what it measured, where it is saved, and how it ended.
struct Done {
    run: Run,
    dir: SafeDir,
    dir_name: String,
    interrupted: bool,
    status: u8,
}

/// One whole run: build, run the cells, report and save in `parent/name`, take down.
/// `label` goes before the lab's first line (which run of a series this is). Fails
/// with the exit status when the lab could not be built.
async fn once(
    a: &RunArgs,
    job: &Job,
    plan: Plan,
    parent: &SafeDir,
    name: &str,
    signals: &Signals,
    label: &str,
) -> Result<Done, u8> {
    let started_unix = unix_now();
    let t0 = Instant::now();
    let plan = crate::plan::layout::decide(plan, qdisc::probe_netem).map_err(|e| {
        tell!("lab: {e:#}\nlab: nothing was built");
        EXIT_FAILED
    })?;

    // Build the lab. It belongs to this process until it is taken down below; if this
    // process dies, `lab clean` removes it.
    let progress = super::progress::Progress::new();
    let state = super::lab::build(&a.topology, plan, false, signals, &progress)
        .await
        .inspect_err(|_| progress.finish())?;
    progress.line(
        &format!(
            "{label}lab {}: {} cells{}, shaping: {}",
            state.name,
            state.plan.cells.len(),
            a.shard
                .map(|s| format!(" (shard {s}: {})", cell_ids(&state.plan)))
                .unwrap_or_default(),
            crate::plan::render::shaping_line(&state.plan)
        ),
        false,
    );
    let (dir, pcap) = match results_dir(parent, name, a.pcap) {
        Ok(x) => x,
        Err(e) => {
            tell!("lab: {e:#}");
            take_down(state);
            return Err(EXIT_FAILED);
        }
    };

    // Run the cells. A signal stops every client at once; what was measured is kept.
    let st = Arc::new(state);
    let faults = super::faults::start(&st);
    let (cells, interrupted) = workload(&st, &job.prompts, pcap, signals, &progress, &faults).await;
    let faults = faults.finish();
    progress.finish();
    let cells = cells.map_err(|e| {
        tell!("lab: {e:#}");
        take_down((*st).clone());
        EXIT_FAILED
    })?;

    // Report and save before taking the lab down, unless a second signal said not to.
    let mut run = Run {
        format: metrics::summary::FORMAT,
        name: st.name.clone(),
        topology: st.topology.clone(),
        started_unix,
        seconds: t0.elapsed().as_secs_f64(),
        environment: environment(&st.plan),
        plan: st.plan.clone(),
        cells,
        expectations: Vec::new(),
        digest_mismatches: Vec::new(),
        expect: job.expects.clone(),
        shard: a.shard,
        summaries: Vec::new(),
        nodes_exited: nodes_exited(&st, &faults),
        faults: faults.into_iter().map(|f| f.line).collect(),
    };
    // In a series each run's report is in its directory; the report over the runs is
    // what is printed.
    let saved = report_and_save(&mut run, &dir, signals, label.is_empty());
    take_down(Arc::try_unwrap(st).unwrap_or_else(|a| (*a).clone()));
    if let Some(at) = interrupted {
        tell!(
            "lab: interrupted: stopped, saved and taken down in {} ms",
            at.elapsed().as_millis()
        );
    }
    let run_errors = metrics::run_errors(&run);
    for e in &run_errors {
        tell!("lab: {e}");
    }
    let status = if interrupted.is_some() {
        EXIT_INTERRUPTED
    } else if !run_errors.is_empty() || !saved {
        EXIT_FAILED
    } else if run.expectations.iter().any(|o| !o.holds) {
        EXIT_EXPECTATION
    } else {
        EXIT_OK
    };
    Ok(Done {
        run,
        dir,
        dir_name: name.to_owned(),
        interrupted: interrupted.is_some(),
        status,
    })
}

/// The run's results directory `parent/name` (a new one), and pcap/ in it with --pcap.
fn results_dir(parent: &SafeDir, name: &str, pcap: bool) -> Result<(SafeDir, Option<SafeDir>)> {
    let (dir, _) = parent.new_subdir(name)?;
    let pcap = if pcap {
        Some(dir.subdir("pcap")?)
    } else {
        None
    };
    Ok((dir, pcap))
}

/// Runs every cell's workload (a load test's cells one after another, the others side
/// by side unless the workload says not), until done or a signal; when a signal came.
async fn workload(
    st: &Arc<crate::netlab::state::State>,
    prompts: &[lab_clients::Prompt],
    pcap: Option<SafeDir>,
    signals: &Signals,
    progress: &super::progress::Progress,
    faults: &super::faults::Faults,
) -> (Result<Vec<CellResult>>, Option<Instant>) {
    let arm = faults.arm();
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, p2, stop2) = (st.clone(), prompts.to_vec(), stop.clone());
    let pcap2 = pcap.map(Arc::new);
    let prog = progress.clone();
    let mut work = tokio::task::spawn_blocking(move || {
        let pcap = pcap2.as_deref();
        // Progress: every prompt line ends with how far the whole run is.
        let total = s2.plan.cells.len() * p2.len() * s2.plan.workload.repeat.max(1) as usize;
        if s2.plan.workload.load.is_none() {
            prog.prompts(total);
        }
        let done = std::sync::atomic::AtomicUsize::new(0);
        let t0 = Instant::now();
        let print = |l: &str| {
            let k = done.fetch_add(1, Ordering::SeqCst) + 1;
            prog.line(
                &format!(
                    "{l}  ({k}/{total} prompts, {:.0} s)",
                    t0.elapsed().as_secs_f64()
                ),
                true,
            );
        };
        let stage = |s: &str| prog.stage(s);
        // The faults' clock starts with the first measured workload.
        let measuring = || arm();
        let progress = crate::launch::Progress {
            print: &print,
            stage: &stage,
            measuring: &measuring,
        };
        // A load test takes the machine: its cells run one after another.
        if s2.plan.workload.load.is_some() {
            return s2
                .plan
                .cells
                .iter()
                .map(|cell| crate::launch::load::run(&s2, cell, &p2, &progress, &stop2))
                .collect();
        }
        let one = |cell| crate::launch::cell::run(&s2, cell, &p2, pcap, &progress, &stop2);
        if !s2.plan.workload.parallel {
            return s2.plan.cells.iter().map(one).collect();
        }
        std::thread::scope(|sc| {
            let hs: Vec<_> = s2
                .plan
                .cells
                .iter()
                .map(|cell| sc.spawn(|| one(cell)))
                .collect();
            hs.into_iter()
                .zip(&s2.plan.cells)
                .map(|(h, cell)| {
                    h.join().unwrap_or_else(|_| CellResult {
                        errors: vec!["the cell's thread panicked".into()],
                        ..CellResult::empty(cell)
                    })
                })
                .collect::<Vec<_>>()
        })
    });
    tokio::select! {
        r = &mut work => (r.map_err(|e| anyhow!("the run failed: {e}")), None),
        () = signals.wait(1) => {
            let at = Instant::now();
            tell!("lab: interrupted; stopping the clients, saving what there is, taking the lab down (again to skip saving)");
            stop.store(true, Ordering::SeqCst);
            (work.await.map_err(|e| anyhow!("the run failed: {e}")), Some(at))
        }
    }
}

/// Concludes the run, prints its report (if `print`) and saves it in `dir`, with the
/// lab's logs when it went wrong; whether it was saved.
fn report_and_save(run: &mut Run, dir: &SafeDir, signals: &Signals, print: bool) -> bool {
    if let Err(e) = run.conclude() {
        tell!("lab: {e}");
    }
    if signals.count() >= 2 {
        tell!("lab: interrupted again; not saving");
        return false;
    }
    let text = tables::render(run);
    if print {
        say!("\n{text}");
    }
    let files = match save(run, &text, dir) {
        Ok(f) => f,
        Err(e) => {
            tell!("lab: cannot save the results: {e:#}");
            return false;
        }
    };
    say!("results: {} ({})", dir.path().display(), files.join(", "));
    // A run that went wrong, or whose warm-up had to be tried again, keeps its servers',
    // clients' and link emulators' logs, which go with the lab when it is taken down.
    let retried = run.cells.iter().any(|c| c.warmup_retried.is_some());
    if retried || !metrics::run_errors(run).is_empty() {
        match keep_logs(&run.name, dir) {
            Ok(n) => say!(
                "logs: {} ({n} files: the servers', clients' and link emulators' logs of this run)",
                dir.path().join("logs").display()
            ),
            Err(e) => tell!("lab: cannot keep the run's logs: {e:#}"),
        }
    }
    true
}

/// The user's nodes that are no longer running, each said with the tail of its log;
/// not those the topology's faults killed.
fn nodes_exited(st: &crate::netlab::state::State, faults: &[super::faults::Done]) -> Vec<String> {
    st.processes
        .iter()
        .filter(|p| st.plan.nodes.iter().any(|n| n.namespace == p.namespace))
        .filter(|p| !faults.iter().any(|f| f.namespace == p.namespace))
        // Gone, or a zombie not yet reaped.
        .filter(|p| {
            !matches!(crate::netlab::live::process_live(p.pid, p.start), Some((s, _)) if s != 'Z')
        })
        .map(|p| {
            format!(
                "the {} (pid {}, in {}) exited during the run. Last lines of {}:\n{}",
                p.role,
                p.pid,
                p.namespace,
                p.log.display(),
                crate::netlab::procs::log_tail(&p.log, 12)
            )
        })
        .collect()
}

/// Takes the lab down, saying what could not be removed.
fn take_down(mut state: crate::netlab::state::State) {
    for f in lifecycle::teardown(&mut state) {
        tell!("lab: while taking {} down: {f}", state.name);
    }
}

/// Copies the lab's logs (under its run directory, which lab made) into `logs/` of the
/// results, each cut to its last 4 MiB; how many.
fn keep_logs(name: &str, results: &SafeDir) -> Result<usize> {
    let from = SafeDir::open(&Path::new(&run_dir(name)).join("logs"), false)?;
    Ok(results
        .subdir("logs")?
        .copy_files_from(&from, 4 << 20)?
        .len())
}

/// Runs the whole matrix `job.runs` times, each run in `run-<i>/` of one results
/// directory, then saves runs.json and the report over the runs there. The exit
/// status: 130 if interrupted, 1 if a run had errors, 3 if an expectation failed over
/// the runs, 0 otherwise.
async fn series(a: &RunArgs, job: &Job, signals: &Signals) -> Result<u8> {
    let t0 = Instant::now();
    let (top, _) = match job
        .results
        .new_subdir(&format!("{}-{}", stamp(), job.plan.name))
    {
        Ok(d) => d,
        Err(e) => return refuse(e.context("--results")),
    };
    let mut done: Vec<Done> = Vec::new();
    let mut status = EXIT_OK;
    for i in 1..=job.runs {
        let plan = match job.plan_of(i) {
            Ok(p) => p,
            Err(e) => {
                tell!("lab: run {i}: {e}");
                status = EXIT_FAILED;
                break;
            }
        };
        let seed = plan.seed;
        let label = format!("run {i} of {} (seed {seed}): ", job.runs);
        match once(a, job, plan, &top, &format!("run-{i}"), signals, &label).await {
            Ok(d) => {
                let stop = d.interrupted;
                if d.status == EXIT_FAILED {
                    status = EXIT_FAILED;
                }
                done.push(d);
                if stop {
                    status = EXIT_INTERRUPTED;
                    break;
                }
            }
            Err(code) => {
                tell!("lab: run {i} of {} did not run; stopping", job.runs);
                status = if code == EXIT_INTERRUPTED {
                    EXIT_INTERRUPTED
                } else {
                    EXIT_FAILED
                };
                break;
            }
        }
    }
    let refs: Vec<(RunRef, &Run)> = done
        .iter()
        .map(|d| {
            (
                RunRef {
                    dir: d.dir_name.clone(),
                    seed: d.run.plan.seed,
                    seconds: d.run.seconds,
                    errors: metrics::run_errors(&d.run),
                    interrupted: d.interrupted,
                },
                &d.run,
            )
        })
        .collect();
    match Series::of(job.runs, t0.elapsed().as_secs_f64(), &refs) {
        Ok(s) => {
            let text = crate::report::repeat::render(&s);
            say!("\n{text}");
            match super::results::save_series(&s, &text, &top) {
                Ok(files) => say!("results: {} ({})", top.path().display(), files.join(", ")),
                Err(e) => {
                    tell!("lab: cannot save the results over the runs: {e:#}");
                    if status != EXIT_INTERRUPTED {
                        status = EXIT_FAILED;
                    }
                }
            }
            if status == EXIT_OK && s.expectations.iter().any(|o| !o.holds) {
                status = EXIT_EXPECTATION;
            }
        }
        Err(e) => tell!("lab: no figures over the runs: {e}"),
    }
    hand_over(job, &top);
    Ok(status)
}
