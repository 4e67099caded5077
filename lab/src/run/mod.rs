//! `lab run`: build the lab, warm up, run the workload in every cell while capturing both
//! ends of its link, report, check expectations, tear down.

pub mod capture;
pub mod plots;
pub mod report;

use crate::cli::RunArgs;
use crate::netlab::procs;
use crate::netlab::state::State;
use crate::netlab::{lifecycle, sys};
use crate::topology::plan::{Cell, Plan, run_dir};
use crate::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use anyhow::{Context, Result, anyhow};
use capture::{Capture, Counts, Kernel};
use lab_clients::record::{PromptRecord, prompt_line};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Exit status when the run finished without errors but an expectation failed.
pub const EXIT_EXPECTATION: u8 = 3;

/// One end of a cell's link: what the capture counted and what the kernel counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct End {
    pub capture: Counts,
    pub kernel: Kernel,
    /// Differences between the two (empty when they agree exactly).
    pub differences: Vec<String>,
}

/// What one cell produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    pub cell: Cell,
    pub records: Vec<PromptRecord>,
    /// The client at the client's end of the link, the server at the other.
    pub client: Option<End>,
    pub server: Option<End>,
    /// The emulator's counters at the end (userspace backend; warm-up included).
    pub wire: Option<crate::shaping::wire::WireStats>,
    pub warmup_error: Option<String>,
    /// Errors of the cell itself (capture, a client that would not start or end).
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// Everything about a run: `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub name: String,
    pub topology: PathBuf,
    pub started_unix: u64,
    pub seconds: f64,
    pub environment: serde_json::Value,
    pub plan: Plan,
    pub cells: Vec<CellResult>,
    pub expectations: Vec<crate::topology::expect::Outcome>,
    pub digest_mismatches: Vec<String>,
}

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

/// Runs the client of `cell` in its namespace with `extra` arguments; calls `each` per
/// record as it arrives. Gives up after `deadline`.
fn client(
    state: &State,
    cell: &Cell,
    extra: &[String],
    log: PathBuf,
    env: &[(String, String)],
    deadline: Duration,
    each: &mut dyn FnMut(PromptRecord),
) -> Result<()> {
    let plan = &state.plan;
    let w = &plan.workload;
    let mut argv: Vec<String> = vec![
        "lab".into(),
        "client".into(),
        cell.approach.to_string(),
        "--url".into(),
        cell.url.clone(),
        "--ca".into(),
        format!("{}/certs/{}/cert.pem", run_dir(&plan.name), cell.id),
        "--json".into(),
        "--model".into(),
        plan.llm.model.clone(),
        "--mode".into(),
        match w.connection {
            crate::topology::model::Connection::Reuse => "reuse".into(),
            crate::topology::model::Connection::Fresh => "fresh".into(),
        },
        "--timeout".into(),
        w.timeout
            .map_or_else(|| "120s".to_owned(), |t| t.to_string()),
    ];
    argv.extend_from_slice(extra);
    let ns = sys::open_netns(&cell.client_ns)?;
    let exe = std::env::current_exe()?;
    let mut st = procs::start(
        &exe,
        "client",
        Some(&cell.id),
        &cell.client_ns,
        Some(&ns),
        &argv,
        log,
        env,
    )?;
    let out = st
        .take_stdout()
        .ok_or_else(|| anyhow!("the client has no stdout"))?;
    let pid = st.record.pid;
    let start = st.record.start;
    // A watchdog: a client that outlives its deadline is killed.
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let t0 = Instant::now();
        while !d2.load(Ordering::SeqCst) {
            if t0.elapsed() > deadline {
                let _ = sys::stop_process(pid, start, Duration::from_secs(1));
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        match serde_json::from_str::<PromptRecord>(&line) {
            Ok(r) => each(r),
            Err(e) => tracing::warn!("cell {}: client printed {line:?}: {e}", cell.id),
        }
    }
    let status = st.child.wait()?;
    done.store(true, Ordering::SeqCst);
    let killed = watchdog.join().unwrap_or(false);
    if killed {
        return Err(anyhow!(
            "the client ran past its deadline of {} s and was stopped",
            deadline.as_secs()
        ));
    }
    // Exit 1 means some prompt failed, which the records say; anything else is an error.
    match status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => Err(anyhow!(
            "the client ended with {status}; last lines of {}:\n{}",
            st.record.log.display(),
            procs::log_tail(&st.record.log, 8)
        )),
    }
}

fn write_prompts(path: &Path, prompts: &[String]) -> Result<()> {
    std::fs::write(path, prompts.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Waits until neither end's kernel counters have changed for `quiet` (packets of an
/// earlier exchange, such as a FIN retransmitted over a lossy link, still landing), or
/// `max` has passed. Capturing starts and ends in such quiet moments, so that the
/// capture and the kernel's counters cover the same frames.
pub fn wait_quiet(ends: &[&std::fs::File], quiet: Duration, max: Duration) -> bool {
    let read = || -> Option<Vec<Kernel>> {
        ends.iter()
            .map(|ns| capture::kernel_counters(ns, "to-wire").ok())
            .collect()
    };
    let t0 = Instant::now();
    let mut last = read();
    let mut since = Instant::now();
    while t0.elapsed() < max {
        std::thread::sleep(Duration::from_millis(20));
        let now = read();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return true;
        }
    }
    false
}

/// Runs one cell: warm-up (not counted), then the workload with both ends captured.
fn run_cell(
    state: &State,
    cell: &Cell,
    prompts: &[String],
    pcap: Option<&Path>,
    print: &(dyn Fn(&str) + Sync),
) -> CellResult {
    let t0 = Instant::now();
    let mut res = CellResult {
        cell: cell.clone(),
        records: Vec::new(),
        client: None,
        server: None,
        wire: None,
        warmup_error: None,
        errors: Vec::new(),
        seconds: 0.0,
    };
    let dir = PathBuf::from(run_dir(&state.name));
    let w = &state.plan.workload;
    let timeout = w.timeout.map_or(Duration::from_secs(120), |t| t.0);
    let prompts_file = dir.join(format!("prompts-{}.txt", cell.id));
    let warm_file = dir.join(format!("warmup-{}.txt", cell.id));
    if let Err(e) = write_prompts(&prompts_file, prompts)
        .and_then(|()| write_prompts(&warm_file, &prompts[..1]))
    {
        res.errors.push(format!("{e:#}"));
        return res;
    }
    // Warm-up: one prompt on its own connection, before anything is counted.
    let mut warm_err = None;
    let warm = client(
        state,
        cell,
        &["--prompts".into(), warm_file.display().to_string()],
        dir.join("logs").join(format!("{}-warmup.log", cell.id)),
        &[],
        timeout + Duration::from_secs(30),
        &mut |r| {
            if let Some(e) = r.error {
                warm_err = Some(e.to_string());
            }
        },
    );
    res.warmup_error = warm.err().map(|e| format!("{e:#}")).or(warm_err);

    // Quiet means no frame for 100 ms plus a round trip and its jitter.
    let one_way = cell.up.max_delay().max(cell.down.max_delay());
    let quiet = Duration::from_millis(100) + one_way * 2;
    let ends = (|| -> Result<_> {
        let cns = sys::open_netns(&cell.client_ns)?;
        let sns = sys::open_netns(&cell.server_ns)?;
        if !wait_quiet(&[&cns, &sns], quiet, Duration::from_secs(10)) {
            tracing::warn!(
                "cell {}: the link did not go quiet after the warm-up",
                cell.id
            );
        }
        let file = |side: &str| pcap.map(|d| d.join(format!("{}-{side}.pcap", cell.id)));
        let cc = Capture::start(&cns, "to-wire", cell.port, file("client"))?;
        let sc = Capture::start(&sns, "to-wire", cell.port, file("server"))?;
        let k0 = (
            capture::kernel_counters(&cns, "to-wire")?,
            capture::kernel_counters(&sns, "to-wire")?,
        );
        Ok((cns, sns, cc, sc, k0))
    })();
    let (cns, sns, cc, sc, k0) = match ends {
        Ok(x) => x,
        Err(e) => {
            res.errors.push(format!("{e:#}"));
            return res;
        }
    };
    let n = prompts.len() * w.repeat.max(1) as usize;
    let deadline = timeout * n as u32 + Duration::from_secs(30);
    let label = format!("{} {}@{}", cell.id, cell.approach, cell.profile);
    // With --pcap, the client logs its TLS secrets (rustls, and quinn's TLS, which is
    // rustls too) so that Wireshark can decrypt the capture.
    let keylog: Vec<(String, String)> = pcap
        .map(|d| {
            vec![(
                "SSLKEYLOGFILE".to_owned(),
                d.join(format!("{}.keys", cell.id)).display().to_string(),
            )]
        })
        .unwrap_or_default();
    let mut records = Vec::new();
    let r = client(
        state,
        cell,
        &[
            "--prompts".into(),
            prompts_file.display().to_string(),
            "--repeat".into(),
            w.repeat.to_string(),
        ],
        dir.join("logs").join(format!("{}-client.log", cell.id)),
        &keylog,
        deadline,
        &mut |r| {
            print(&format!("[{label}] {}", prompt_line(&r)));
            records.push(r);
        },
    );
    if let Err(e) = r {
        res.errors.push(format!("{e:#}"));
    }
    res.records = records;
    if !wait_quiet(&[&cns, &sns], quiet, Duration::from_secs(10)) {
        tracing::warn!("cell {}: the link did not go quiet after the run", cell.id);
    }
    let end = |cap: Capture, ns: &std::fs::File, k0: Kernel| -> Result<End> {
        let k1 = capture::kernel_counters(ns, "to-wire")?;
        let capture = cap.finish()?;
        let kernel = k1.minus(k0);
        Ok(End {
            differences: kernel.differences(&capture),
            capture,
            kernel,
        })
    };
    match end(cc, &cns, k0.0) {
        Ok(e) => res.client = Some(e),
        Err(e) => res.errors.push(format!("client-side capture: {e:#}")),
    }
    match end(sc, &sns, k0.1) {
        Ok(e) => res.server = Some(e),
        Err(e) => res.errors.push(format!("server-side capture: {e:#}")),
    }
    res.wire = std::fs::read(dir.join("wire").join(format!("{}.json", cell.id)))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    res.seconds = t0.elapsed().as_secs_f64();
    res
}

/// Hands the results directory to the user behind sudo.
fn give_to_sudo_user(path: &Path) {
    let id = |k| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    if let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) {
        let own = |p: &Path| {
            let _ = std::os::unix::fs::chown(p, Some(uid), Some(gid));
        };
        own(path);
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            own(&e.path());
        }
        if let Some(parent) = path.parent() {
            own(parent);
        }
    }
}

/// Writes run.json, report.md and the plots into `dir`; returns the file names.
pub fn save(run: &Run, report_text: &str, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(run)?)
        .with_context(|| format!("cannot write {}", dir.join("run.json").display()))?;
    std::fs::write(dir.join("report.md"), report_text)?;
    let mut files = vec!["run.json".to_owned(), "report.md".to_owned()];
    files.extend(plots::write_all(run, dir, 0)?);
    give_to_sudo_user(dir);
    Ok(files)
}

/// Reads a run.json (or the run.json of a results directory).
pub fn load(path: &Path) -> Result<Run> {
    let file = if path.is_dir() {
        path.join("run.json")
    } else {
        path.to_owned()
    };
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a run.json that this lab can read",
            file.display()
        )
    })
}

/// `lab report <results>`: renders the tables and plots again from run.json.
pub fn report_cmd(a: crate::cli::ReportArgs) -> Result<u8> {
    let run = match load(&a.results) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lab: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    let dir = if a.results.is_dir() {
        a.results.clone()
    } else {
        a.results.parent().unwrap_or(Path::new(".")).to_owned()
    };
    let text = report::render(&run);
    print!("{text}");
    std::fs::write(dir.join("report.md"), &text)?;
    let files = plots::write_all(&run, &dir, a.prompt.saturating_sub(1))?;
    eprintln!("wrote report.md, {} in {}", files.join(", "), dir.display());
    Ok(EXIT_OK)
}

/// `lab compare <a> <b>`.
pub fn compare_cmd(a: crate::cli::CompareArgs) -> Result<u8> {
    let (x, y) = match (load(&a.a), load(&a.b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("lab: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    print!("{}", report::compare(&x, &y));
    Ok(EXIT_OK)
}

/// `lab run`.
pub async fn run_cmd(a: RunArgs) -> Result<u8> {
    if let Err(e) = sys::require_privileges("run") {
        eprintln!("lab: {e:#}");
        return Ok(EXIT_USAGE);
    }
    let (topo, plan) = match crate::topology::load(&a.topology) {
        Ok(x) => x,
        Err(e) => {
            eprint!("lab: {e}");
            if !e.to_string().ends_with('\n') {
                eprintln!();
            }
            return Ok(EXIT_USAGE);
        }
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
                eprintln!("lab: workload.prompts: {e:#}");
                return Ok(EXIT_USAGE);
            }
        }
    };
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t0 = Instant::now();
    let cancel = Arc::new(AtomicBool::new(false));

    // Build the lab (taken down again below, whatever happens).
    let c = cancel.clone();
    let topo_path = a.topology.clone();
    let mut build = tokio::task::spawn_blocking(move || lifecycle::up(&topo_path, &plan, &c));
    let built = tokio::select! {
        r = &mut build => r,
        () = crate::serve::shutdown_signal() => {
            eprintln!("lab: interrupted; taking the lab down");
            cancel.store(true, Ordering::SeqCst);
            let _ = build.await;
            return Ok(crate::netlab::EXIT_INTERRUPTED);
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
    let shaping = crate::netlab::status::shaping_line(&state.plan);
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
                    .map(|cell| sc.spawn(|| run_cell(&s2, cell, &p2, pcap.as_deref(), &print)))
                    .collect();
                hs.into_iter()
                    .zip(&s2.plan.cells)
                    .map(|(h, cell)| {
                        h.join().unwrap_or_else(|_| CellResult {
                            cell: cell.clone(),
                            records: vec![],
                            client: None,
                            server: None,
                            wire: None,
                            warmup_error: None,
                            errors: vec!["the cell's thread panicked".into()],
                            seconds: 0.0,
                        })
                    })
                    .collect::<Vec<_>>()
            })
        } else {
            s2.plan
                .cells
                .iter()
                .map(|cell| run_cell(&s2, cell, &p2, pcap.as_deref(), &print))
                .collect()
        }
    });
    let mut interrupted = false;
    let cells: Vec<CellResult> = tokio::select! {
        r = &mut work => r.map_err(|e| anyhow!("the run failed: {e}"))?,
        () = crate::serve::shutdown_signal() => {
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
    run.digest_mismatches = report::digest_mismatches(&run);
    for e in &expects {
        run.expectations.extend(crate::topology::expect::evaluate(
            e,
            &profiles,
            &|ap, pr, m| report::metric(&run, ap, pr, m),
        ));
    }
    let text = report::render(&run);
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

    let run_errors = report::run_errors(&run);
    for e in &run_errors {
        eprintln!("lab: {e}");
    }
    let failed: Vec<_> = run.expectations.iter().filter(|o| !o.holds).collect();
    Ok(if interrupted {
        crate::netlab::EXIT_INTERRUPTED
    } else if !run_errors.is_empty() || saved.is_err() {
        EXIT_FAILED
    } else if !failed.is_empty() {
        EXIT_EXPECTATION
    } else {
        EXIT_OK
    })
}
