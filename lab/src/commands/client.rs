//! `lab client <approach>`: run prompts against one server, or type them in.

use crate::cli::ClientArgs;
use anyhow::{Context, Result};
use lab_clients::record::{self, Summary};
use lab_clients::stats::{ConnStats, TransportStats};
use lab_clients::{RunnerOpts, prompts};
use std::io::Write;
use tokio::io::AsyncBufReadExt;

/// Runs the client; returns whether every prompt succeeded.
pub async fn run(a: ClientArgs) -> Result<bool> {
    let trust = a.trust.trust(a.approach)?;
    let opts = RunnerOpts {
        transport: a.transport.clone().unwrap_or_default(),
        urgent: std::sync::Arc::new(a.urgent.iter().map(|&n| n as usize - 1).collect()),
        sampling: a.sampling.unwrap_or_default(),
        ..RunnerOpts::new(a.approach.name, a.mode, a.timeout, trust, a.model.clone())
    };
    if a.browser && a.concurrency > 1 {
        anyhow::bail!("the browser client runs one prompt at a time: drop --concurrency");
    }
    // The browser's directory: the one given, or a new one removed at the end.
    let temp = match (&a.browser_dir, a.browser) {
        (None, true) => Some(TempDir::new("lab-browser")?),
        _ => None,
    };
    let mut runner = if a.browser {
        let dir = a
            .browser_dir
            .clone()
            .or_else(|| temp.as_ref().map(|t| t.0.clone()))
            .unwrap_or_default();
        a.approach
            .browser_runner(&a.url, &opts, &dir, &a.chromium, a.eventsource)?
    } else {
        a.approach.runner(&a.url, &opts)?
    };
    if a.interactive {
        return interactive(runner.as_mut()).await;
    }
    // Prompts in flight at once: on the first runner's connection where the approach
    // multiplexes, each on a connection of its own otherwise.
    let mut runners = Vec::with_capacity(usize::from(a.concurrency));
    for _ in 1..a.concurrency {
        runners.push(match runner.share() {
            Some(r) => r,
            None => a.approach.runner(&a.url, &opts)?,
        });
    }
    runners.insert(0, runner);
    let prompts = match &a.prompts {
        Some(p) => prompts::load(p)?,
        None => prompts::reference(),
    };
    prompts::check_urgent(&a.urgent, prompts.len() * a.repeat.max(1))?;
    let json = a.json;
    if !json {
        outln!(
            "=== {} ({} mode, {} prompts{}) ===",
            a.approach,
            a.mode,
            prompts.len() * a.repeat.max(1),
            match (a.concurrency, runners[0].share().is_some()) {
                (1, _) => String::new(),
                (n, true) => format!(", {n} at once on one connection"),
                (n, false) => format!(", {n} at once on {n} connections"),
            }
        );
    }
    let records = lab_clients::run_concurrently(runners, &prompts, a.repeat, &opts.urgent, |r| {
        if json {
            outln!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            outln!("{}", record::prompt_line(r));
        }
    })
    .await;
    // Each connection reports its transport statistics once it has closed.
    for c in opts.stats.settle(std::time::Duration::from_secs(5)).await {
        if json {
            outln!("{}", serde_json::json!({ "connection": c }));
        } else {
            outln!("{}", connection_line(&c));
        }
    }
    let table = record::summary_table(&[Summary::of(a.approach.name, &records)]);
    if json {
        tell!("{table}");
    } else {
        outln!("\n{table}");
    }
    Ok(records.iter().all(|r| r.error.is_none()))
}

/// A directory of this process's own under the temporary directory (mode 0700, made
/// new, never an existing path), removed with everything in it when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        for n in 0..100u32 {
            let p = base.join(format!("{prefix}-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot make {}", p.display())),
            }
        }
        anyhow::bail!("cannot make a directory under {}", base.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One connection's transport statistics, in a line.
fn connection_line(c: &ConnStats) -> String {
    match &c.transport {
        TransportStats::Tcp(t) => format!(
            "connection {} (TCP, port {}): segments out {} ({} with data), in {} ({} with data), {} retransmitted; rtt {:.1} ms",
            c.conn,
            c.local_port,
            t.segs_out,
            t.data_segs_out,
            t.segs_in,
            t.data_segs_in,
            t.total_retrans,
            f64::from(t.rtt_us) / 1000.0
        ),
        TransportStats::Quic(q) => format!(
            "connection {} (QUIC, port {}): datagrams out {}, in {}; ACK frames out {}, in {}; {} lost; rtt {:.1} ms",
            c.conn,
            c.local_port,
            q.udp_tx.datagrams,
            q.udp_rx.datagrams,
            q.frames_tx.acks,
            q.frames_rx.acks,
            q.lost_packets,
            q.rtt_us as f64 / 1000.0
        ),
    }
}

async fn interactive(runner: &mut dyn lab_clients::Runner) -> Result<bool> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut index = 0;
    let mut all_ok = true;
    loop {
        eprint!("{}> ", runner.name());
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next_line().await.context("failed to read stdin")? else {
            break;
        };
        let prompt = line.trim();
        if prompt.is_empty() {
            continue;
        }
        if prompt == "/quit" || prompt == "/exit" {
            break;
        }
        let mut show = |t: &str| {
            out!("{t}");
            let _ = std::io::stdout().flush();
        };
        let r = runner
            .run(index, &lab_clients::Prompt::new(prompt), &mut show)
            .await;
        index += 1;
        outln!("");
        match &r.error {
            Some(e) => {
                all_ok = false;
                tell!("[error: {e}]");
            }
            None => tell!(
                "[TTFT {}, avg TBT {}, {} tokens, {} bytes, total {}{}]",
                record::fmt_ms(r.ttft_ms),
                record::fmt_ms(r.tbt_mean_ms),
                r.tokens,
                r.app_bytes,
                record::fmt_ms(Some(r.total_ms)),
                r.connect_ms
                    .map_or(String::new(), |c| format!(", connect {c:.1}ms")),
            ),
        }
    }
    runner.close().await;
    Ok(all_ok)
}
