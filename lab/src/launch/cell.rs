//! One cell of `lab run`: a warm-up prompt that is not counted, a quiet link, capture of
//! both ends of the link, the workload, and the counts compared with the kernel's.

use crate::anatomy::KeyLog;
use crate::capture::stack::Mark;
use crate::capture::{self, Capture, Frames, Kernel};
use crate::metrics::{CellAnatomy, CellResult, End};
use crate::netlab::files::SafeDir;
use crate::netlab::state::State;
use crate::netlab::sys;
use crate::plan::{Cell, run_dir};
use anyhow::{Context, Result};
use lab_clients::record::prompt_line;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Writes prompts as JSON lines, so a prompt's line breaks and its answer's length
/// reach the client whole.
fn write_prompts(path: &Path, prompts: &[lab_clients::Prompt]) -> Result<()> {
    std::fs::write(path, lab_clients::prompts::to_jsonl(prompts))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Waits until neither end's kernel counters have changed for `quiet` (packets of an
/// earlier exchange, such as a FIN retransmitted over a lossy link, still landing), or
/// `max` has passed. Capturing starts and ends in such quiet moments, so that the
/// capture and the kernel's counters cover the same frames.
pub fn wait_quiet(
    ends: &[&std::fs::File],
    quiet: Duration,
    max: Duration,
    stop: &AtomicBool,
) -> bool {
    let read = || -> Option<Vec<Kernel>> {
        ends.iter()
            .map(|ns| capture::kernel_counters(ns, "to-wire").ok())
            .collect()
    };
    let t0 = Instant::now();
    let mut last = read();
    let mut since = Instant::now();
    while t0.elapsed() < max && !stop.load(Ordering::SeqCst) {
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

/// What became of a cell's warm-up.
#[derive(Debug, Default)]
pub struct WarmUp {
    /// Both tries failed: the second's error (a run error).
    pub error: Option<String>,
    /// The first try failed and the second did not: the first's error (the report
    /// says so; the cell's workload ran on a warmed path after all).
    pub retried: Option<String>,
}

/// The warm-up: one prompt (the first line of `warm_file`) on its own connection,
/// before anything is counted. A warm-up that fails is tried once more (a cold path's
/// one-off, such as a session set-up the server dropped, is what a warm-up is for);
/// what went wrong is kept either way.
pub fn warm_up(
    state: &State,
    cell: &Cell,
    warm_file: &Path,
    label: &str,
    timeout: Duration,
    stage: &(dyn Fn(&str) + Sync),
    stop: &AtomicBool,
) -> WarmUp {
    stage(&format!("[{label}] warming up: one prompt, not counted"));
    let first = warm_try(state, cell, warm_file, "warmup", timeout, stop);
    let Some(first) = first else {
        return WarmUp::default();
    };
    if stop.load(Ordering::SeqCst) {
        return WarmUp {
            error: Some(first),
            retried: None,
        };
    }
    stage(&format!(
        "[{label}] the warm-up failed ({first}); trying it once more"
    ));
    match warm_try(state, cell, warm_file, "warmup-2", timeout, stop) {
        None => WarmUp {
            error: None,
            retried: Some(first),
        },
        Some(second) => WarmUp {
            error: Some(format!("{second} (and before it: {first})")),
            retried: None,
        },
    }
}

/// One try of the warm-up prompt, its client logging to `<cell>-<log>.log`; what went
/// wrong, if anything.
fn warm_try(
    state: &State,
    cell: &Cell,
    warm_file: &Path,
    log: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> Option<String> {
    let mut warm_err = None;
    let dir = PathBuf::from(run_dir(&state.name));
    let warm = super::client::run(
        state,
        cell,
        &["--prompts".into(), warm_file.display().to_string()],
        dir.join("logs").join(format!("{}-{log}.log", cell.id)),
        &[],
        timeout + Duration::from_secs(30),
        stop,
        &mut |r| {
            if let Some(e) = r.error {
                warm_err = Some(e.to_string());
            }
        },
    );
    warm.err().map(|e| format!("{e:#}")).or(warm_err)
}

/// Quiet means no frame for 100 ms plus a round trip and its jitter.
pub fn quiet_for(cell: &Cell) -> Duration {
    let one_way = cell.up.max_delay().max(cell.down.max_delay());
    Duration::from_millis(100) + one_way * 2
}

pub fn write_prompt_files(
    dir: &Path,
    cell: &Cell,
    prompts: &[lab_clients::Prompt],
) -> Result<(PathBuf, PathBuf)> {
    let prompts_file = dir.join(format!("prompts-{}.jsonl", cell.id));
    let warm_file = dir.join(format!("warmup-{}.jsonl", cell.id));
    write_prompts(&prompts_file, prompts)?;
    write_prompts(&warm_file, &prompts[..1])?;
    Ok((prompts_file, warm_file))
}

/// Runs one cell: warm-up (not counted), then the workload with both ends captured.
/// `stop` ends it early: clients are stopped at once and what was measured is kept.
pub fn run(
    state: &State,
    cell: &Cell,
    prompts: &[lab_clients::Prompt],
    pcap: Option<&SafeDir>,
    progress: &super::Progress<'_>,
    stop: &AtomicBool,
) -> CellResult {
    let (print, stage) = (progress.print, progress.stage);
    let label = format!("{} {}@{}", cell.id, cell.name, cell.profile);
    let t0 = Instant::now();
    let mut res = CellResult::empty(cell);
    let dir = PathBuf::from(run_dir(&state.name));
    let w = &state.plan.workload;
    let timeout = w.timeout.map_or(Duration::from_secs(120), |t| t.0);
    let (prompts_file, warm_file) = match write_prompt_files(&dir, cell, prompts) {
        Ok(f) => f,
        Err(e) => {
            res.errors.push(format!("{e:#}"));
            return res;
        }
    };
    let warm = warm_up(state, cell, &warm_file, &label, timeout, stage, stop);
    (res.warmup_error, res.warmup_retried) = (warm.error, warm.retried);
    if stop.load(Ordering::SeqCst) {
        res.errors
            .push("interrupted before the workload started".into());
        res.seconds = t0.elapsed().as_secs_f64();
        return res;
    }

    let quiet = quiet_for(cell);
    let ends = match Ends::open(cell, pcap, quiet, stop) {
        Ok(x) => x,
        Err(e) => {
            res.errors.push(format!("{e:#}"));
            return res;
        }
    };
    let n = prompts.len() * w.repeat.max(1) as usize;
    stage(&format!(
        "[{label}] running {n} prompts, capturing both ends"
    ));
    // The client logs its TLS secrets (rustls, and quinn's TLS, which is rustls too), so
    // that the anatomy can decrypt the capture (and Wireshark too, with --pcap). The
    // keys directory is lab's own, and only root can enter it.
    let keys_file = dir.join("keys").join(format!("{}.keys", cell.id));
    let workload = Workload {
        prompts_file: &prompts_file,
        keys_file: &keys_file,
        deadline: timeout * n as u32 + Duration::from_secs(30),
        label: &label,
    };
    (progress.measuring)();
    workload.run(state, cell, print, stop, &mut res);
    if !wait_quiet(
        &[&ends.cns, &ends.sns],
        quiet,
        Duration::from_secs(10),
        stop,
    ) && !stop.load(Ordering::SeqCst)
    {
        tracing::warn!("cell {}: the link did not go quiet after the run", cell.id);
    }
    let keys = std::fs::read_to_string(&keys_file).unwrap_or_default();
    let frames = ends.close(cell, pcap, &keys, &mut res);
    if let Some((client, server)) = frames {
        stage(&format!("[{label}] decoding the captures"));
        let t = Instant::now();
        res.anatomy = Some(CellAnatomy::of(
            cell,
            &client,
            &server,
            &KeyLog::parse(&keys),
        ));
        tracing::debug!(
            "cell {}: anatomy of {} + {} frames in {:.1} ms",
            cell.id,
            client.len(),
            server.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    res.wire = std::fs::read(dir.join("wire").join(format!("{}.json", cell.id)))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    res.seconds = t0.elapsed().as_secs_f64();
    res
}

/// Both ends of a cell's link while its workload runs: their namespaces, their
/// captures, and the counters at the start.
struct Ends {
    cns: std::fs::File,
    sns: std::fs::File,
    wns: std::fs::File,
    client: Capture,
    server: Capture,
    /// Each end's interface counters as its capture's window opened.
    k0: (Kernel, Kernel),
    /// The host's drop counters at the start.
    m0: Mark,
}

impl Ends {
    /// Waits for a quiet link, then starts both captures and reads the counters.
    fn open(
        cell: &Cell,
        pcap: Option<&SafeDir>,
        quiet: Duration,
        stop: &AtomicBool,
    ) -> Result<Ends> {
        let cns = sys::open_netns(&cell.client_ns)?;
        let sns = sys::open_netns(&cell.server_ns)?;
        if !wait_quiet(&[&cns, &sns], quiet, Duration::from_secs(10), stop) {
            tracing::warn!(
                "cell {}: the link did not go quiet after the warm-up",
                cell.id
            );
        }
        let scratch = || pcap.map(|d| d.scratch()).transpose();
        let client = Capture::start(&cns, "to-wire", cell.port, scratch()?)?;
        let server = Capture::start(&sns, "to-wire", cell.port, scratch()?)?;
        // Each capture's window opens the moment before its end's counters are read.
        let mark = |ns: &std::fs::File, cap: &Capture| -> Result<Kernel> {
            cap.count_from(capture::socket::realtime_ns());
            capture::kernel_counters(ns, "to-wire")
        };
        let k0 = (mark(&cns, &client)?, mark(&sns, &server)?);
        let wns = sys::open_netns(&cell.wire_ns)?;
        let m0 = Mark::take(&cns, &sns, &wns, "to-wire")?;
        Ok(Ends {
            cns,
            sns,
            wns,
            client,
            server,
            k0,
            m0,
        })
    }

    /// The host's drop counters over the workload, and each end's capture closed
    /// against its counters (into the results); both ends' frames, if both closed.
    fn close(
        self,
        cell: &Cell,
        pcap: Option<&SafeDir>,
        keys: &str,
        res: &mut CellResult,
    ) -> Option<(Frames, Frames)> {
        match Mark::take(&self.cns, &self.sns, &self.wns, "to-wire") {
            Ok(m1) => res.stack = Some(self.m0.until(m1)),
            Err(e) => res
                .errors
                .push(format!("reading the host's drop counters: {e:#}")),
        }
        let client = match close_end(
            self.client,
            &self.cns,
            self.k0.0,
            "client",
            cell,
            pcap,
            keys,
        ) {
            Ok((e, f)) => {
                res.client = Some(e);
                Some(f)
            }
            Err(e) => {
                res.errors.push(format!("client-side capture: {e:#}"));
                None
            }
        };
        let server = match close_end(
            self.server,
            &self.sns,
            self.k0.1,
            "server",
            cell,
            pcap,
            keys,
        ) {
            Ok((e, f)) => {
                res.server = Some(e);
                Some(f)
            }
            Err(e) => {
                res.errors.push(format!("server-side capture: {e:#}"));
                None
            }
        };
        client.zip(server)
    }
}

/// One end's capture, closed the moment after its counters are read, and compared with
/// them. With --pcap, its packets go into <cell>-<side>.pcapng, after the secrets.
fn close_end(
    cap: Capture,
    ns: &std::fs::File,
    k0: Kernel,
    side: &str,
    cell: &Cell,
    pcap: Option<&SafeDir>,
    keys: &str,
) -> Result<(End, Frames)> {
    cap.closing();
    let k1 = capture::kernel_counters(ns, "to-wire")?;
    let (capture, frames, scratch) = cap.finish(capture::socket::realtime_ns())?;
    if let (Some(d), Some(scratch)) = (pcap, scratch) {
        let out = d.create_new(&format!("{}-{side}.pcapng", cell.id), 0o600)?;
        crate::capture::pcap::seal(scratch, out, keys)?;
    }
    let kernel = k1.minus(k0);
    let (differences, notes) = kernel.compare(&capture);
    Ok((
        End {
            differences,
            notes,
            capture,
            kernel,
        },
        frames,
    ))
}

/// The cell's workload: the client over every prompt, its secrets logged for the
/// anatomy.
struct Workload<'a> {
    prompts_file: &'a Path,
    keys_file: &'a Path,
    deadline: Duration,
    label: &'a str,
}

impl Workload<'_> {
    /// Runs the client, printing each prompt's line; the records (in prompt order) and
    /// connections go into the results.
    fn run(
        &self,
        state: &State,
        cell: &Cell,
        print: &(dyn Fn(&str) + Sync),
        stop: &AtomicBool,
        res: &mut CellResult,
    ) {
        let w = &state.plan.workload;
        let dir = PathBuf::from(run_dir(&state.name));
        let keylog = vec![(
            "SSLKEYLOGFILE".to_owned(),
            self.keys_file.display().to_string(),
        )];
        // The workload's urgent prompts are numbered in its whole run, not the warm-up's.
        let mut args = vec![
            "--prompts".into(),
            self.prompts_file.display().to_string(),
            "--repeat".into(),
            w.repeat.to_string(),
        ];
        if !w.urgent.is_empty() {
            let list: Vec<String> = w.urgent.iter().map(u32::to_string).collect();
            args.extend(["--urgent".into(), list.join(",")]);
        }
        let mut records = Vec::new();
        let r = super::client::run(
            state,
            cell,
            &args,
            dir.join("logs").join(format!("{}-client.log", cell.id)),
            &keylog,
            self.deadline,
            stop,
            &mut |r| {
                print(&format!("[{}] {}", self.label, prompt_line(&r)));
                records.push(r);
            },
        );
        match r {
            Ok(c) => res.connections = c,
            Err(e) => res.errors.push(format!("{e:#}")),
        }
        // With prompts in flight at once they finish out of order; run.json keeps prompt
        // order.
        records.sort_by_key(|r| r.index);
        res.records = records;
    }
}
