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
    let prompts = the_prompts(&a)?;
    let workers = raise_nofile(&a)?;
    let base = RunnerOpts {
        stats: Arc::new(lab_clients::stats::Tracker::discarding()),
        transport: a.transport.clone().unwrap_or_default(),
        sampling: a.sampling.unwrap_or_default(),
        usage: a.usage,
        endpoints: (!a.socket_per_connection).then(Default::default),
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
    let open = a.open.spec(a.ramp.unwrap_or_default())?;
    let ramp = a.ramp.unwrap_or(std::time::Duration::from_secs(5));
    let spec = LoadSpec {
        levels: a.levels.clone(),
        ramp,
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
        slo: a.open.slo(),
        open,
    };
    if let Some(share) = a.worker {
        return crate::commands::load_workers::serve(&spec, share, make).await;
    }
    let json = a.json;
    let each = printer(json, approach.name);
    let levels = if workers > 1 {
        if !json {
            outln!("lab load: {workers} worker processes share each level's streams");
        }
        crate::commands::load_workers::run(&spec, workers, each).await?
    } else {
        lab_clients::load::run(&spec, make, each).await?
    };
    if !json {
        let table = if crate::report::serving::any_open(levels.iter()) {
            crate::report::serving::section(&[(approach.name.to_owned(), levels.iter().collect())])
        } else {
            crate::report::load::levels_table(&[(approach.name.to_owned(), &levels[..])])
        };
        outln!("\n{table}");
        // What went wrong, a message of each kind per level.
        for l in &levels {
            for (cat, msg) in &l.error_samples {
                let n = l.errors.get(cat).copied().unwrap_or(0);
                outln!("- {}: {n} {cat} errors, e.g. {msg}", l.label());
            }
        }
    }
    // An open loop's level that cannot be trusted fails the test, as a failed stream does.
    Ok(levels
        .iter()
        .all(|l| l.failed == 0 && l.open.as_ref().is_none_or(|o| o.valid)))
}

/// The prompts: a file's, drawn lengths, or the reference's; with drawn answer lengths.
fn the_prompts(a: &LoadArgs) -> Result<Vec<lab_clients::Prompt>> {
    let prompts = match (&a.prompts, a.prompt_words) {
        (Some(p), _) => prompts::load(p)?,
        (None, Some(l)) => {
            prompts::generated(l, crate::topology::model::GENERATED_PROMPTS, a.open.seed)
        }
        (None, None) => prompts::reference(),
    };
    Ok(match a.answer_tokens {
        Some(l) => prompts::with_answer_lengths(prompts, l, a.open.seed),
        None => prompts,
    })
}

/// Raises the open-file limit for the streams this process holds, saying so when it
/// cannot; returns the count of worker processes to split them over.
fn raise_nofile(a: &LoadArgs) -> Result<usize> {
    let top_level = a.levels.iter().max().copied();
    let workers = a.workers.count(top_level)? as usize;
    // A worker holds its share of the streams; the parent of workers holds none.
    let top = match (top_level, a.worker) {
        (Some(n), Some(share)) => (n as u64).div_ceil(share.of as u64),
        (Some(_), None) if workers > 1 => 0,
        (Some(n), None) => n as u64,
        (None, _) => a.open.max_in_flight,
    };
    // A stream takes a socket (two for a server's upstream on the same machine), plus
    // what the runtime holds.
    let want = top * 2 + 1024;
    let got = crate::netlab::sys::raise_nofile(want)
        .context("cannot raise the open-file limit (RLIMIT_NOFILE)")?;
    if got < top + 64 {
        tell!(
            "lab load: the open-file limit is {got}, under the {top} streams {} of the highest level; streams past it will fail to connect (run as root, raise `ulimit -n`, or give more --workers)",
            if a.worker.is_some() {
                "of this worker's share"
            } else {
                "that one process holds"
            }
        );
    }
    Ok(workers)
}

/// What `lab load` prints of each event: JSON lines, or progress lines.
fn printer(json: bool, approach: &'static str) -> impl FnMut(&Event) {
    let mut last_line = std::time::Instant::now();
    move |e: &Event| {
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
                outln!("{}", crate::report::load::level_line(approach, s));
            }
        }
    }
}
