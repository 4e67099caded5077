//! `lab run`: build the lab, warm up, run the workload in every cell while capturing both
//! ends of its link, report, check expectations, tear down.

use super::results::save;
use super::{EXIT_EXPECTATION, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, load_topology, refuse};
use crate::cli::RunArgs;
use crate::metrics::{self, CellResult, Run};
use crate::netlab::{lifecycle, qdisc, sys};
use crate::plan::Plan;
use crate::report::tables;
use anyhow::{Result, anyhow};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    })
}

/// `lab run`.
pub async fn run(a: RunArgs) -> Result<u8> {
    if let Err(e) = sys::require_privileges("run") {
        return refuse(e);
    }
    let (topo, plan) = match load_topology(&a.topology) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let profiles: Vec<String> = topo.profiles.iter().map(|(n, _)| n.clone()).collect();
    let expects = topo.expect.clone();
    let prompts = if topo.workload.prompts == "reference" {
        lab_clients::prompts::reference()
    } else {
        let base = a.topology.parent().unwrap_or(Path::new("."));
        match lab_clients::prompts::load(&base.join(&topo.workload.prompts)) {
            Ok(p) => p,
            Err(e) => {
                return refuse(e.context("workload.prompts"));
            }
        }
    };
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t0 = Instant::now();
    let cancel = Arc::new(AtomicBool::new(false));
    let plan = match qdisc::decide(plan) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lab: {e:#}\nlab: nothing was built");
            return Ok(EXIT_FAILED);
        }
    };

    // Build the lab (taken down again below, whatever happens).
    let c = cancel.clone();
    let topo_path = a.topology.clone();
    let mut build = tokio::task::spawn_blocking(move || lifecycle::up(&topo_path, &plan, &c));
    let built = tokio::select! {
        r = &mut build => r,
        () = super::shutdown_signal() => {
            eprintln!("lab: interrupted; taking the lab down");
            cancel.store(true, Ordering::SeqCst);
            let _ = build.await;
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let state = match built {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("lab: {e:#}\nlab: nothing was left behind");
            return Ok(EXIT_FAILED);
        }
        Err(e) => {
            eprintln!("lab: building the lab failed: {e}");
            return Ok(EXIT_FAILED);
        }
    };
    let shaping = crate::plan::render::shaping_line(&state.plan);
    println!(
        "lab {}: {} cells, shaping: {shaping}",
        state.name,
        state.plan.cells.len()
    );

    let dir = a.results.join(format!(
        "{}-{}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', ""),
        state.name
    ));
    let pcap = if a.pcap {
        let p = dir.join("pcap");
        if let Err(e) = std::fs::create_dir_all(&p) {
            eprintln!("lab: cannot create {}: {e}", p.display());
        }
        Some(p)
    } else {
        None
    };

    // Run the cells; a signal stops the clients (their records so far are kept).
    let st = Arc::new(state);
    let s2 = st.clone();
    let p2 = prompts.clone();
    let pcap2 = pcap.clone();
    let mut work = tokio::task::spawn_blocking(move || {
        let pcap = pcap2;
        // Progress: every prompt line ends with how far the whole run is.
        let total = s2.plan.cells.len() * p2.len() * s2.plan.workload.repeat.max(1) as usize;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let t0 = Instant::now();
        let print = |l: &str| {
            let k = done.fetch_add(1, Ordering::SeqCst) + 1;
            println!(
                "{l}  ({k}/{total} prompts, {:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        };
        if s2.plan.workload.parallel {
            std::thread::scope(|sc| {
                let hs: Vec<_> = s2
                    .plan
                    .cells
                    .iter()
                    .map(|cell| {
                        sc.spawn(|| {
                            crate::launch::cell::run(&s2, cell, &p2, pcap.as_deref(), &print)
                        })
                    })
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
            s2.plan
                .cells
                .iter()
                .map(|cell| crate::launch::cell::run(&s2, cell, &p2, pcap.as_deref(), &print))
                .collect()
        }
    });
    let mut interrupted = false;
    let cells: Vec<CellResult> = tokio::select! {
        r = &mut work => r.map_err(|e| anyhow!("the run failed: {e}"))?,
        () = super::shutdown_signal() => {
            eprintln!("lab: interrupted; stopping the clients, saving what there is, taking the lab down");
            interrupted = true;
            // Stopping the lab's processes ends every client's connection.
            for p in &st.processes {
                let _ = sys::stop_process(p.pid, p.start, Duration::from_secs(1));
            }
            work.await.map_err(|e| anyhow!("the run failed: {e}"))?
        }
    };

    // Report and save before taking the lab down.
    let mut run = Run {
        name: st.name.clone(),
        topology: st.topology.clone(),
        started_unix,
        seconds: t0.elapsed().as_secs_f64(),
        environment: environment(&st.plan),
        plan: st.plan.clone(),
        cells,
        expectations: Vec::new(),
        digest_mismatches: Vec::new(),
    };
    run.digest_mismatches = metrics::digest_mismatches(&run);
    for e in &expects {
        run.expectations.extend(crate::topology::expect::evaluate(
            e,
            &profiles,
            &|ap, pr, m| metrics::metric(&run, ap, pr, m),
        ));
    }
    let text = tables::render(&run);
    println!("\n{text}");
    let saved = save(&run, &text, &dir);
    match &saved {
        Ok(files) => println!("results: {} ({})", dir.display(), files.join(", ")),
        Err(e) => eprintln!("lab: cannot save the results: {e:#}"),
    }

    // Tear down.
    let mut state = Arc::try_unwrap(st).unwrap_or_else(|a| (*a).clone());
    for f in lifecycle::teardown(&mut state) {
        eprintln!("lab: while taking {} down: {f}", state.name);
    }

    let run_errors = metrics::run_errors(&run);
    for e in &run_errors {
        eprintln!("lab: {e}");
    }
    let failed: Vec<_> = run.expectations.iter().filter(|o| !o.holds).collect();
    Ok(if interrupted {
        EXIT_INTERRUPTED
    } else if !run_errors.is_empty() || saved.is_err() {
        EXIT_FAILED
    } else if !failed.is_empty() {
        EXIT_EXPECTATION
    } else {
        EXIT_OK
    })
}
