//! A cell's client: `lab client` re-executed in the cell's client namespace, printing
//! one JSON record per prompt, watched by a deadline.

use crate::netlab::state::State;
use crate::netlab::{procs, sys};
use crate::plan::{Cell, run_dir};
use anyhow::{Result, anyhow};
use lab_clients::record::PromptRecord;
use lab_clients::stats::ConnStats;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a stopped client gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(200);

/// A connection's statistics, as `lab client --json` prints them.
#[derive(serde::Deserialize)]
struct ConnLine {
    connection: ConnStats,
}

/// Watches process `pid` (started at `start`) until `done`: past `deadline`, or once
/// `stop` is set, stops it (SIGTERM, then SIGKILL after `grace`) and says why
/// (`"deadline"` or `"interrupted"`).
pub fn watchdog(
    pid: u32,
    start: u64,
    grace: Duration,
    deadline: Duration,
    stop: &AtomicBool,
    done: &AtomicBool,
) -> Option<&'static str> {
    let t0 = Instant::now();
    while !done.load(Ordering::SeqCst) {
        let why = if stop.load(Ordering::SeqCst) {
            Some("interrupted")
        } else if t0.elapsed() > deadline {
            Some("deadline")
        } else {
            None
        };
        if let Some(why) = why {
            let _ = sys::stop_process(pid, start, grace);
            return Some(why);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The start of a cell's client or load generator command line (`sub` is `client` or
/// `load`): the approach, the cell's URL, the certificate lab wrote for its server,
/// JSON output, the model and the cell's connection mode.
pub fn argv_head(state: &State, cell: &Cell, sub: &str) -> Vec<String> {
    let plan = &state.plan;
    let mut argv = head(state, cell, sub);
    // The raw API's requests carry a real model's sampling (the servers' carry it for
    // the other approaches).
    if let Some(s) = plan.llm.sampling {
        argv.extend(["--sampling".into(), s.to_json()]);
    }
    argv
}

fn head(state: &State, cell: &Cell, sub: &str) -> Vec<String> {
    let plan = &state.plan;
    vec![
        "lab".into(),
        sub.into(),
        cell.approach.to_string(),
        "--url".into(),
        cell.url.clone(),
        "--ca".into(),
        format!("{}/certs/{}/cert.pem", run_dir(&plan.name), cell.id),
        "--json".into(),
        "--model".into(),
        plan.llm.model.clone(),
        "--mode".into(),
        match cell.connection(&plan.workload) {
            crate::topology::model::Connection::Reuse => "reuse".into(),
            crate::topology::model::Connection::Fresh => "fresh".into(),
        },
    ]
}

/// Runs the client of `cell` in its namespace with `extra` arguments; calls `each` per
/// record as it arrives, and returns the connections' statistics. Gives up after
/// `deadline`, and at once when `stop` is set.
// Each argument is one plain fact about the client; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn run(
    state: &State,
    cell: &Cell,
    extra: &[String],
    log: PathBuf,
    env: &[(String, String)],
    deadline: Duration,
    stop: &AtomicBool,
    each: &mut dyn FnMut(PromptRecord),
) -> Result<Vec<ConnStats>> {
    let plan = &state.plan;
    let w = &plan.workload;
    let mut argv = argv_head(state, cell, "client");
    argv.extend([
        "--timeout".into(),
        w.timeout
            .map_or_else(|| "120s".to_owned(), |t| t.to_string()),
        "--concurrency".into(),
        w.concurrency.to_string(),
    ]);
    if !cell.transport.is_default() {
        argv.extend(["--transport".into(), cell.transport.to_json()]);
    }
    if cell.client.is_browser() {
        // The browser's page, profile and record live in the lab's run directory,
        // which goes with the lab.
        argv.extend([
            "--browser".into(),
            "--browser-dir".into(),
            format!("{}/browsers/{}", run_dir(&plan.name), cell.id),
        ]);
        if cell.client == crate::topology::model::ClientKind::BrowserEventsource {
            argv.push("--eventsource".into());
        }
    }
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
        procs::Lifetime::Tied,
        crate::plan::Ready::Line,
        None,
    )?;
    // A watchdog: a client that outlives its deadline, or is told to stop, is stopped.
    let done = AtomicBool::new(false);
    let mut conns = Vec::new();
    let what = Child {
        name: "the client",
        interrupted: "the client was stopped: the run was interrupted",
        deadline,
        grace: STOP_GRACE,
    };
    supervise(&mut st, &what, stop, &done, |line| {
        if let Ok(c) = serde_json::from_str::<ConnLine>(line) {
            conns.push(c.connection);
            return;
        }
        match serde_json::from_str::<PromptRecord>(line) {
            Ok(r) => each(r),
            Err(e) => tracing::warn!("cell {}: client printed {line:?}: {e}", cell.id),
        }
    })?;
    Ok(conns)
}

/// A child of lab's whose stdout lab reads as it runs (a cell's client, a load
/// generator), for [`supervise`].
pub struct Child<'a> {
    /// What errors call it ("the client").
    pub name: &'a str,
    /// The error when the run was interrupted.
    pub interrupted: &'a str,
    /// Stopped past this long.
    pub deadline: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub grace: Duration,
}

/// Reads a started child's stdout line by line into `each` until it ends, while a
/// watchdog stops it past its deadline or when `stop` is set; sets `done` when it has
/// ended (or when there is nothing to read), which ends the watchdog and any sampler. Exit 1 means some prompt failed, which its output says; a stop, or any other
/// exit, is an error naming its log's last lines.
pub fn supervise(
    st: &mut procs::Started,
    what: &Child,
    stop: &AtomicBool,
    done: &AtomicBool,
    mut each: impl FnMut(&str),
) -> Result<()> {
    let Some(out) = st.take_stdout() else {
        done.store(true, Ordering::SeqCst);
        return Err(anyhow!("{} has no stdout", what.name));
    };
    let (pid, start) = (st.record.pid, st.record.start);
    let (status, why) = std::thread::scope(|s| -> Result<_> {
        let watchdog = s.spawn(|| watchdog(pid, start, what.grace, what.deadline, stop, done));
        let read = || -> Result<()> {
            for line in std::io::BufReader::new(out).lines() {
                each(&line?);
            }
            Ok(())
        };
        let read = read();
        let status = st.child.wait();
        done.store(true, Ordering::SeqCst);
        let why = watchdog.join().unwrap_or(None);
        read?;
        Ok((status?, why))
    })?;
    match why {
        Some("deadline") => Err(anyhow!(
            "{} ran past its deadline of {} s and was stopped",
            what.name,
            what.deadline.as_secs()
        )),
        Some(_) => Err(anyhow!("{}", what.interrupted)),
        None if matches!(status.code(), Some(0) | Some(1)) => Ok(()),
        None => Err(anyhow!(
            "{} ended with {status}; last lines of {}:\n{}",
            what.name,
            st.record.log.display(),
            procs::log_tail(&st.record.log, 8)
        )),
    }
}
