//! One cell of `lab run`: a warm-up prompt that is not counted, a quiet link, capture of
//! both ends of the link, the workload, and the counts compared with the kernel's.

use crate::anatomy::KeyLog;
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

fn write_prompts(path: &Path, prompts: &[String]) -> Result<()> {
    std::fs::write(path, prompts.join("\n") + "\n")
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

/// Runs one cell: warm-up (not counted), then the workload with both ends captured.
/// `stop` ends it early: clients are stopped at once and what was measured is kept.
pub fn run(
    state: &State,
    cell: &Cell,
    prompts: &[String],
    pcap: Option<&SafeDir>,
    print: &(dyn Fn(&str) + Sync),
    stage: &(dyn Fn(&str) + Sync),
    stop: &AtomicBool,
) -> CellResult {
    let label = format!("{} {}@{}", cell.id, cell.name, cell.profile);
    let t0 = Instant::now();
    let mut res = CellResult::empty(cell);
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
    stage(&format!("[{label}] warming up: one prompt, not counted"));
    let mut warm_err = None;
    let warm = super::client::run(
        state,
        cell,
        &["--prompts".into(), warm_file.display().to_string()],
        dir.join("logs").join(format!("{}-warmup.log", cell.id)),
        &[],
        timeout + Duration::from_secs(30),
        stop,
        &mut |r| {
            if let Some(e) = r.error {
                warm_err = Some(e.to_string());
            }
        },
    );
    res.warmup_error = warm.err().map(|e| format!("{e:#}")).or(warm_err);
    if stop.load(Ordering::SeqCst) {
        res.errors
            .push("interrupted before the workload started".into());
        res.seconds = t0.elapsed().as_secs_f64();
        return res;
    }

    // Quiet means no frame for 100 ms plus a round trip and its jitter.
    let one_way = cell.up.max_delay().max(cell.down.max_delay());
    let quiet = Duration::from_millis(100) + one_way * 2;
    let ends = (|| -> Result<_> {
        let cns = sys::open_netns(&cell.client_ns)?;
        let sns = sys::open_netns(&cell.server_ns)?;
        if !wait_quiet(&[&cns, &sns], quiet, Duration::from_secs(10), stop) {
            tracing::warn!(
                "cell {}: the link did not go quiet after the warm-up",
                cell.id
            );
        }
        let cc = Capture::start(
            &cns,
            "to-wire",
            cell.port,
            pcap.map(|d| d.scratch()).transpose()?,
        )?;
        let sc = Capture::start(
            &sns,
            "to-wire",
            cell.port,
            pcap.map(|d| d.scratch()).transpose()?,
        )?;
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
    stage(&format!(
        "[{label}] running {n} prompts, capturing both ends"
    ));
    // The client logs its TLS secrets (rustls, and quinn's TLS, which is rustls too), so
    // that the anatomy can decrypt the capture (and Wireshark too, with --pcap). The
    // keys directory is lab's own, and only root can enter it.
    let keys_file = dir.join("keys").join(format!("{}.keys", cell.id));
    let keylog = vec![("SSLKEYLOGFILE".to_owned(), keys_file.display().to_string())];
    let mut records = Vec::new();
    // The workload's urgent prompts are numbered in its whole run, not the warm-up's.
    let mut args = vec![
        "--prompts".into(),
        prompts_file.display().to_string(),
        "--repeat".into(),
        w.repeat.to_string(),
    ];
    if !w.urgent.is_empty() {
        let list: Vec<String> = w.urgent.iter().map(u32::to_string).collect();
        args.extend(["--urgent".into(), list.join(",")]);
    }
    let r = super::client::run(
        state,
        cell,
        &args,
        dir.join("logs").join(format!("{}-client.log", cell.id)),
        &keylog,
        deadline,
        stop,
        &mut |r| {
            print(&format!("[{label}] {}", prompt_line(&r)));
            records.push(r);
        },
    );
    match r {
        Ok(c) => res.connections = c,
        Err(e) => res.errors.push(format!("{e:#}")),
    }
    // With prompts in flight at once they finish out of order; run.json keeps prompt order.
    records.sort_by_key(|r| r.index);
    res.records = records;
    if !wait_quiet(&[&cns, &sns], quiet, Duration::from_secs(10), stop)
        && !stop.load(Ordering::SeqCst)
    {
        tracing::warn!("cell {}: the link did not go quiet after the run", cell.id);
    }
    let keys = std::fs::read_to_string(&keys_file).unwrap_or_default();
    // With --pcap, each end's packets go into <cell>-<side>.pcapng, after the secrets.
    let end = |cap: Capture, ns: &std::fs::File, k0: Kernel, side: &str| -> Result<(End, Frames)> {
        let k1 = capture::kernel_counters(ns, "to-wire")?;
        let (capture, frames, scratch) = cap.finish()?;
        if let (Some(d), Some(scratch)) = (pcap, scratch) {
            let out = d.create_new(&format!("{}-{side}.pcapng", cell.id), 0o600)?;
            crate::capture::pcap::seal(scratch, out, &keys)?;
        }
        let kernel = k1.minus(k0);
        Ok((
            End {
                differences: kernel.differences(&capture),
                capture,
                kernel,
            },
            frames,
        ))
    };
    let mut kept = Vec::new();
    match end(cc, &cns, k0.0, "client") {
        Ok((e, f)) => {
            res.client = Some(e);
            kept.push(f);
        }
        Err(e) => res.errors.push(format!("client-side capture: {e:#}")),
    }
    match end(sc, &sns, k0.1, "server") {
        Ok((e, f)) => {
            res.server = Some(e);
            kept.push(f);
        }
        Err(e) => res.errors.push(format!("server-side capture: {e:#}")),
    }
    if let [client, server] = &kept[..] {
        stage(&format!("[{label}] decoding the captures"));
        let t = Instant::now();
        res.anatomy = Some(CellAnatomy::of(cell, client, server, &KeyLog::parse(&keys)));
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
