//! `lab load <approach>`: the load generator against one server, level by level.

use crate::cli::LoadArgs;
use anyhow::{Context, Result};
use lab_clients::load::{Backoff, Event, LevelEnd, LoadSpec};
use lab_clients::{RunnerOpts, prompts};
use std::sync::Arc;

/// Runs the load test; returns whether every stream completed.
pub async fn run(a: LoadArgs) -> Result<bool> {
    let trust = a.trust.trust(a.approach)?;
    anyhow::ensure!(
        a.backoff <= a.backoff_max,
        "--backoff {} is over --backoff-max {}; the first wait cannot be longer than the longest",
        humantime::format_duration(a.backoff),
        humantime::format_duration(a.backoff_max)
    );
    let prompts = match &a.prompts {
        Some(p) => prompts::load(p)?,
        None => prompts::reference(),
    };
    let top = *a.levels.iter().max().unwrap_or(&1) as u64;
    // A stream takes a socket (two for a server's upstream on the same machine), plus
    // what the runtime holds.
    let want = top * 2 + 1024;
    let got = crate::netlab::sys::raise_nofile(want)
        .context("cannot raise the open-file limit (RLIMIT_NOFILE)")?;
    if got < top + 64 {
        tell!(
            "lab load: the open-file limit is {got}, under the {top} streams of the highest level; streams past it will fail to connect (run as root, or raise `ulimit -n`)"
        );
    }
    let base = RunnerOpts {
        stats: Arc::new(lab_clients::stats::Tracker::discarding()),
        transport: a.transport.clone().unwrap_or_default(),
        ..RunnerOpts::new(a.approach.name, a.mode, a.timeout, trust, a.model.clone())
    };
    // Check the URL and the settings once, before any level starts.
    a.approach.runner(&a.url, &base)?;
    let (approach, url, sources) = (a.approach, a.url.clone(), a.source.clone());
    let make = Arc::new(move |i: usize| {
        let opts = RunnerOpts {
            source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
            ..base.clone()
        };
        approach.runner(&url, &opts)
    });
    let spec = LoadSpec {
        levels: a.levels.clone(),
        ramp: a.ramp,
        end: match a.cycles {
            Some(c) => LevelEnd::Cycles(c),
            None => LevelEnd::Hold(a.hold),
        },
        backoff: Backoff {
            initial: a.backoff,
            max: a.backoff_max,
        },
        prompts,
        per_connection: a.per_connection,
    };
    let json = a.json;
    let mut last_line = std::time::Instant::now();
    let levels = lab_clients::load::run(&spec, make, |e| {
        if json {
            outln!("{}", serde_json::to_string(e).unwrap_or_default());
            return;
        }
        match e {
            Event::Phase { level, phase, .. } => {
                outln!("level {level}: {phase}");
            }
            Event::Progress {
                level,
                open,
                started,
                completed,
                failed,
                ..
            } => {
                if last_line.elapsed().as_secs() >= 5 {
                    last_line = std::time::Instant::now();
                    outln!(
                        "level {level}: {open} open, {started} started, {completed} completed, {failed} failed"
                    );
                }
            }
            Event::Level(s) => {
                outln!("{}", crate::report::load::level_line(approach.name, s));
            }
        }
    })
    .await?;
    if !json {
        outln!(
            "\n{}",
            crate::report::load::levels_table(&[(approach.name.to_owned(), &levels[..])])
        );
    }
    Ok(levels.iter().all(|l| l.failed == 0))
}
