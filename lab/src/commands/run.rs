//! `lab run`: build the lab, warm up, run the workload in every cell while capturing both
//! ends of its link, report, check expectations, tear down.
//!
//! On Ctrl-C or SIGTERM: stop every client at once, save what was measured, tear down,
//! exit 130. A second signal skips the saving.

use super::results::{give_to_sudo_user, save};
use super::{
    EXIT_EXPECTATION, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Signals, load_topology, refuse,
};
use crate::cli::RunArgs;
use crate::metrics::{self, CellResult, Run};
use crate::netlab::files::SafeDir;
use crate::netlab::{lifecycle, qdisc, sys};
use crate::plan::{Plan, run_dir};
use crate::report::tables;
use anyhow::{Result, anyhow};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

fn environment(plan: &Plan) -> serde_json::Value {
    let uname = nix::sys::utsname::uname().ok();
    serde_json::json!({
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

/// `lab run`.
pub async fn run(a: RunArgs) -> Result<u8> {
    // From here on a Ctrl-C or SIGTERM is counted, never the default death.
    let signals = Signals::new()?;
    if let Err(e) = sys::require_privileges("run") {
        return refuse(e);
    }
    let (topo, plan) = match load_topology(&a.topology) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let plan = match a.shard {
        Some(s) => match plan.shard(s) {
            Ok(p) => p,
            Err(e) => {
                tell!("lab: --shard: {e}");
                return Ok(super::EXIT_USAGE);
            }
        },
        None => plan,
    };
    let expects: Vec<String> = topo.expect.iter().map(|e| e.text.clone()).collect();
    let prompts = if topo.workload.prompts == "reference" {
        lab_clients::prompts::reference()
    } else {
        let base = a.topology.parent().unwrap_or(Path::new("."));
        match lab_clients::prompts::load(&base.join(&topo.workload.prompts)) {
            Ok(p) => p,
            Err(e) => return refuse(e.context("workload.prompts")),
        }
    };
    let urgent: Vec<u64> = topo.workload.urgent.iter().map(|&n| u64::from(n)).collect();
    let total = prompts.len() * topo.workload.repeat.max(1) as usize;
    if let Err(e) = lab_clients::prompts::check_urgent(&urgent, total) {
        return refuse(e.context("workload.urgent"));
    }
    // Where results go is checked before anything is built.
    let results_existed = a.results.exists();
    let results = match SafeDir::open(&a.results, true) {
        Ok(d) => d,
        Err(e) => return refuse(e.context("--results")),
    };
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t0 = Instant::now();
    let plan = match qdisc::decide(plan) {
        Ok(p) => p,
        Err(e) => {
            tell!("lab: {e:#}\nlab: nothing was built");
            return Ok(EXIT_FAILED);
        }
    };

    // Build the lab. It belongs to this process until it is taken down below; if this
    // process dies, `lab clean` removes it.
    let progress = super::progress::Progress::new();
    let state = match super::lab::build(&a.topology, plan, false, &signals, &progress).await {
        Ok(s) => s,
        Err(code) => {
            progress.finish();
            return Ok(code);
        }
    };
    let shaping = crate::plan::render::shaping_line(&state.plan);
    progress.line(
        &format!(
            "lab {}: {} cells{}, shaping: {shaping}",
            state.name,
            state.plan.cells.len(),
            a.shard
                .map(|s| format!(" (shard {s}: {})", cell_ids(&state.plan)))
                .unwrap_or_default()
        ),
        false,
    );

    // Results: a new directory, and pcap/ in it with --pcap.
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let made = results
        .new_subdir(&match a.shard {
            Some(s) => format!("{stamp}-{}-shard{}of{}", state.name, s.index, s.count),
            None => format!("{stamp}-{}", state.name),
        })
        .and_then(|(dir, _)| {
            let pcap = if a.pcap {
                Some(dir.subdir("pcap")?)
            } else {
                None
            };
            Ok((dir, pcap))
        });
    let (dir, pcap) = match made {
        Ok(x) => x,
        Err(e) => {
            tell!("lab: {e:#}");
            let mut state = state;
            for f in lifecycle::teardown(&mut state) {
                tell!("lab: while taking {} down: {f}", state.name);
            }
            return Ok(EXIT_FAILED);
        }
    };

    // Run the cells. A signal stops every client at once; what was measured is kept.
    let st = Arc::new(state);
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, p2, stop2) = (st.clone(), prompts.clone(), stop.clone());
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
        // A load test takes the machine: its cells run one after another.
        if s2.plan.workload.load.is_some() {
            return s2
                .plan
                .cells
                .iter()
                .map(|cell| crate::launch::load::run(&s2, cell, &p2, &stage, &stop2))
                .collect();
        }
        let one = |cell| crate::launch::cell::run(&s2, cell, &p2, pcap, &print, &stage, &stop2);
        if s2.plan.workload.parallel {
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
        } else {
            s2.plan.cells.iter().map(one).collect()
        }
    });
    let interrupted_at = tokio::select! {
        r = &mut work => {
            let cells = r.map_err(|e| anyhow!("the run failed: {e}"));
            (cells, None)
        }
        () = signals.wait(1) => {
            let at = Instant::now();
            tell!("lab: interrupted; stopping the clients, saving what there is, taking the lab down (again to skip saving)");
            stop.store(true, Ordering::SeqCst);
            (work.await.map_err(|e| anyhow!("the run failed: {e}")), Some(at))
        }
    };
    let (cells, interrupted) = interrupted_at;
    progress.finish();
    let cells = cells?;

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
        expect: expects,
        shard: a.shard,
        summaries: Vec::new(),
    };
    if let Err(e) = run.conclude() {
        tell!("lab: {e}");
    }
    let text = tables::render(&run);
    let saved = if signals.count() >= 2 {
        tell!("lab: interrupted again; not saving");
        Err(anyhow!("not saved: interrupted twice"))
    } else {
        say!("\n{text}");
        save(&run, &text, &dir)
    };
    match &saved {
        Ok(files) => say!("results: {} ({})", dir.path().display(), files.join(", ")),
        Err(e) => tell!("lab: cannot save the results: {e:#}"),
    }
    // A run that went wrong, or whose warm-up had to be tried again, keeps its servers',
    // clients' and link emulators' logs, which go with the lab when it is taken down.
    let retried = run.cells.iter().any(|c| c.warmup_retried.is_some());
    if saved.is_ok() && (retried || !metrics::run_errors(&run).is_empty()) {
        match keep_logs(&st.name, &dir) {
            Ok(n) => say!(
                "logs: {} ({n} files: the servers', clients' and link emulators' logs of this run)",
                dir.path().join("logs").display()
            ),
            Err(e) => tell!("lab: cannot keep the run's logs: {e:#}"),
        }
    }
    let handed = if results_existed {
        give_to_sudo_user(&dir)
    } else {
        give_to_sudo_user(&results)
    };
    if let Err(e) = handed {
        tell!("lab: {e:#}");
    }

    // Tear down.
    let mut state = Arc::try_unwrap(st).unwrap_or_else(|a| (*a).clone());
    for f in lifecycle::teardown(&mut state) {
        tell!("lab: while taking {} down: {f}", state.name);
    }
    if let Some(at) = interrupted {
        tell!(
            "lab: interrupted: stopped, saved and taken down in {} ms",
            at.elapsed().as_millis()
        );
        return Ok(EXIT_INTERRUPTED);
    }

    let run_errors = metrics::run_errors(&run);
    for e in &run_errors {
        tell!("lab: {e}");
    }
    let failed: Vec<_> = run.expectations.iter().filter(|o| !o.holds).collect();
    Ok(if !run_errors.is_empty() || saved.is_err() {
        EXIT_FAILED
    } else if !failed.is_empty() {
        EXIT_EXPECTATION
    } else {
        EXIT_OK
    })
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
