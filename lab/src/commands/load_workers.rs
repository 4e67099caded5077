//! `lab load --workers N`: a closed loop's streams split over N worker processes, each
//! under the open-file limit, merged back exactly.
//!
//! The parent starts N copies of itself with its own arguments and `--worker I/N`.
//! For each level it picks a start a moment ahead on the wall clock and tells every
//! worker (`{"level": L, "start_unix_ms": T}` on its stdin). A worker runs the slots of
//! its share ([`Share`]) from that start and prints its progress each second and, when
//! its slots are done, its part of the level: histograms, counts and digests,
//! unreduced. The parent tells the phases, sums the progress, and merges the parts
//! ([`lab_clients::load::merge`]) into the summary one process would have made.
//!
//! Workers are tied to the parent: the kernel kills them if it dies
//! (`PR_SET_PDEATHSIG`), and the parent kills them if it returns early. A worker that
//! ends before its part is in ends the run, with the worker, its pid and how it ended.

use anyhow::{Context, Result, bail};
use lab_clients::load::{Event, LevelEnd, LevelSummary, LoadSpec, MakeRunner, Part, Share};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How far ahead of now a level's start is set, so that every worker has it in time.
const LEAD: Duration = Duration::from_millis(300);

/// The parent's word to a worker: run `level` from `start_unix_ms`.
#[derive(Debug, Serialize, Deserialize)]
struct Go {
    level: u32,
    start_unix_ms: f64,
}

/// A worker's line to the parent.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FromWorker {
    Progress {
        level: u32,
        open: u64,
        started: u64,
        completed: u64,
        failed: u64,
    },
    Part(Box<Part>),
}

/// A worker: runs its share of each level the parent starts, until its stdin ends.
pub async fn serve(spec: &LoadSpec, share: Share, make: Arc<MakeRunner>) -> Result<bool> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut all_ok = true;
    while let Some(line) = lines.next_line().await? {
        let go: Go = serde_json::from_str(&line)
            .with_context(|| format!("worker {}: the parent sent {line:?}", share.index))?;
        let part = lab_clients::load::run_part(
            spec,
            go.level,
            share,
            go.start_unix_ms,
            make.clone(),
            |e| {
                if let Event::Progress {
                    level,
                    open,
                    started,
                    completed,
                    failed,
                    ..
                } = *e
                {
                    print_line(&FromWorker::Progress {
                        level,
                        open,
                        started,
                        completed,
                        failed,
                    });
                }
            },
        )
        .await?;
        all_ok &= part.counts[2] == 0;
        print_line(&FromWorker::Part(Box::new(part)));
    }
    Ok(all_ok)
}

fn print_line(m: &FromWorker) {
    if let Ok(s) = serde_json::to_string(m) {
        outln!("{s}");
    }
}

/// One started worker.
struct Worker {
    child: tokio::process::Child,
    pid: u32,
    /// The parent's word to it; dropped (closed) after the last level.
    stdin: Option<tokio::process::ChildStdin>,
}

/// What the reader of a worker's stdout passes on.
enum Said {
    Line(FromWorker),
    Garbled(String),
    Ended,
}

/// The parent: starts `n` workers with this process's own arguments and runs every
/// level through them; `each` sees the merged events as one process's.
pub async fn run(
    spec: &LoadSpec,
    n: usize,
    mut each: impl FnMut(&Event),
) -> Result<Vec<LevelSummary>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Said)>();
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        workers.push(start(i, n, tx.clone())?);
    }
    drop(tx);
    let mut out = Vec::new();
    for &level in &spec.levels {
        let start_unix_ms = lab_clients::load::unix_ms_now() + LEAD.as_secs_f64() * 1000.0;
        let go = serde_json::to_string(&Go {
            level,
            start_unix_ms,
        })? + "\n";
        for (i, w) in workers.iter_mut().enumerate() {
            let sent = match w.stdin.as_mut() {
                Some(p) => p.write_all(go.as_bytes()).await,
                None => Err(std::io::ErrorKind::BrokenPipe.into()),
            };
            if let Err(e) = sent {
                bail!(
                    "{}: cannot start level {level}: {e}",
                    ended(i, n, w, level).await
                );
            }
        }
        let parts =
            level_parts(spec, level, start_unix_ms, &mut workers, &mut rx, &mut each).await?;
        let s = lab_clients::load::merge(spec, level, start_unix_ms, parts)?;
        each(&Event::Level(Box::new(s.clone())));
        out.push(s);
    }
    // Their stdin closed, the workers end.
    for w in &mut workers {
        drop(w.stdin.take());
    }
    for (i, w) in workers.iter_mut().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await {
            Ok(Ok(s)) if s.code().is_some_and(|c| c <= 1) => {}
            Ok(Ok(s)) => bail!("worker {i} of {n} (pid {}) ended with {s}", w.pid),
            Ok(Err(e)) => bail!("worker {i} of {n} (pid {}): {e}", w.pid),
            Err(_) => bail!(
                "worker {i} of {n} (pid {}) did not end within 10 s of the last level",
                w.pid
            ),
        }
    }
    Ok(out)
}

/// Starts worker `i` of `n`, its stdout read into `tx`.
fn start(
    i: usize,
    n: usize,
    tx: tokio::sync::mpsc::UnboundedSender<(usize, Said)>,
) -> Result<Worker> {
    let exe = std::env::current_exe().context("cannot find lab's own executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--worker")
        .arg(format!("{i}/{n}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || crate::netlab::sys::tie_to_parent(libc::SIGKILL, parent));
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start load worker {i} of {n}"))?;
    let pid = child.id().unwrap_or(0);
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("load worker {i} of {n} has no pipes");
    };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let said = match serde_json::from_str::<FromWorker>(&l) {
                Ok(m) => Said::Line(m),
                Err(_) => Said::Garbled(l),
            };
            if tx.send((i, said)).is_err() {
                return;
            }
        }
        let _ = tx.send((i, Said::Ended));
    });
    Ok(Worker {
        child,
        pid,
        stdin: Some(stdin),
    })
}

/// How worker `i` ended, in words, once it has (or 2 s on).
async fn ended(i: usize, n: usize, w: &mut Worker, level: u32) -> String {
    let how = match tokio::time::timeout(Duration::from_secs(2), w.child.wait()).await {
        Ok(Ok(s)) => s.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "its output closed".to_owned(),
    };
    format!(
        "load worker {i} of {n} (pid {}) ended during level {level} ({how}); the other workers were stopped",
        w.pid
    )
}

/// Runs one level: tells its phases, sums the workers' progress each second, and
/// collects every worker's part.
async fn level_parts(
    spec: &LoadSpec,
    level: u32,
    start_unix_ms: f64,
    workers: &mut [Worker],
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, Said)>,
    each: &mut impl FnMut(&Event),
) -> Result<Vec<Part>> {
    let n = workers.len();
    let mut parts: Vec<Option<Part>> = (0..n).map(|_| None).collect();
    let mut progress = vec![[0u64; 4]; n];
    let ramp_ms = spec.ramp.as_secs_f64() * 1000.0;
    let hold_ms = match spec.end {
        LevelEnd::Hold(h) => Some(h.as_secs_f64() * 1000.0),
        LevelEnd::Cycles(_) => None,
    };
    let mut phase = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    each(&Event::Phase {
        level,
        phase: "ramp".into(),
        at_unix_ms: start_unix_ms,
    });
    while parts.iter().any(Option::is_none) {
        tokio::select! {
            got = rx.recv() => {
                let Some((i, said)) = got else { bail!("every load worker's output closed during level {level}") };
                match said {
                    Said::Line(FromWorker::Progress { open, started, completed, failed, .. }) => {
                        progress[i] = [open, started, completed, failed];
                    }
                    Said::Line(FromWorker::Part(p)) => parts[i] = Some(*p),
                    Said::Garbled(l) => tracing::warn!("load worker {i} printed {l:?}"),
                    Said::Ended => bail!("{}", ended(i, n, &mut workers[i], level).await),
                }
            }
            _ = ticker.tick() => {
                let now = lab_clients::load::unix_ms_now();
                let since = now - start_unix_ms;
                if let Some(h) = hold_ms {
                    if phase == 0 && since >= ramp_ms && h > 0.0 {
                        phase = 1;
                        each(&Event::Phase { level, phase: "hold".into(), at_unix_ms: now });
                    }
                    if phase < 2 && since >= ramp_ms + h {
                        phase = 2;
                        each(&Event::Phase { level, phase: "drain".into(), at_unix_ms: now });
                    }
                }
                let sum = |k: usize| progress.iter().map(|p| p[k]).sum::<u64>();
                each(&Event::Progress {
                    level,
                    open: sum(0),
                    started: sum(1),
                    completed: sum(2),
                    failed: sum(3),
                    at_unix_ms: now,
                });
            }
        }
    }
    Ok(parts.into_iter().flatten().collect())
}
