//! `lab report`, `lab compare` and `lab merge`: saved runs printed and written again,
//! two runs side by side, and the shards of a run joined.

use super::results::{Saved, give_to_sudo_user, load, load_saved, report_files, save};
use super::{EXIT_EXPECTATION, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::metrics::{self, Run};
use crate::netlab::files::SafeDir;
use crate::report::{compare as cmp, tables};
use anyhow::Result;

/// Loads every path, or says which one cannot be read.
fn load_all(paths: &[&std::path::Path]) -> Result<Vec<Run>, u8> {
    paths
        .iter()
        .map(|p| {
            load(p).map_err(|e| {
                eprintln!("lab: {e:#}");
                EXIT_USAGE
            })
        })
        .collect()
}

/// `lab report <results> [--out DIR]`: prints the report of run.json again; with --out,
/// writes report.md, report.html and the plots there (never over files already there,
/// unless --force). Of repeated runs (runs.json), the report over the runs, and with
/// --out its report.md.
pub fn report(a: crate::cli::ReportArgs) -> Result<u8> {
    let saved = match load_saved(&a.results) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lab: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    let (text, files) = match saved {
        Saved::Series(s) => {
            let text = crate::report::repeat::render(&s);
            let md = text.clone().into_bytes();
            (text, vec![("report.md".to_owned(), md)])
        }
        Saved::Run(run) => {
            let text = tables::render(&run);
            let files = match &a.out {
                Some(_) => report_files(&run, a.prompt.saturating_sub(1))?,
                None => Vec::new(),
            };
            (text, files)
        }
    };
    let Some(out) = &a.out else {
        print!("{text}");
        return Ok(EXIT_OK);
    };
    let dir = match SafeDir::open(out, true) {
        Ok(d) => d,
        Err(e) => return super::refuse(e.context("--out")),
    };
    let there: Vec<&str> = files
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| dir.has(n))
        .collect();
    if !there.is_empty() && !a.force {
        eprintln!(
            "lab: {} already has {}: choose another --out, or add --force to replace them",
            out.display(),
            there.join(", ")
        );
        return Ok(EXIT_USAGE);
    }
    for (name, bytes) in &files {
        dir.write(name, bytes, 0o644)?;
    }
    give_to_sudo_user(&dir)?;
    // Printed once the files are written: a reader that goes away loses nothing.
    print!("{text}");
    eprintln!(
        "wrote {} in {}",
        files
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        dir.path().display()
    );
    Ok(EXIT_OK)
}

/// `lab compare <a> <b>`: each side one run or repeated runs.
pub fn compare(a: crate::cli::CompareArgs) -> Result<u8> {
    let mut sides = Vec::new();
    for p in [&a.a, &a.b] {
        match load_saved(p) {
            Ok(s) => sides.push(s),
            Err(e) => {
                eprintln!("lab: {e:#}");
                return Ok(EXIT_USAGE);
            }
        }
    }
    let c = cmp::compare(
        &sides[0].source(),
        &sides[1].source(),
        &a.metrics,
        a.threshold,
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", c.render());
    }
    Ok(if c.regressions > 0 {
        EXIT_EXPECTATION
    } else {
        EXIT_OK
    })
}

/// `lab merge <shards...>`.
pub fn merge(a: crate::cli::MergeArgs) -> Result<u8> {
    let paths: Vec<&std::path::Path> = a.shards.iter().map(|p| p.as_path()).collect();
    let runs = match load_all(&paths) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let named = a
        .shards
        .iter()
        .map(|p| p.display().to_string())
        .zip(runs)
        .collect();
    let run = match metrics::merge::merge(named) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lab: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let results = match SafeDir::open(&a.results, true) {
        Ok(d) => d,
        Err(e) => return super::refuse(e.context("--results")),
    };
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let (dir, _) = results.new_subdir(&format!("{stamp}-{}-merged", run.name))?;
    let text = tables::render(&run);
    let files = save(&run, &text, &dir)?;
    give_to_sudo_user(&dir)?;
    say!("{text}");
    say!("results: {} ({})", dir.path().display(), files.join(", "));
    let errors = metrics::run_errors(&run);
    for e in &errors {
        tell!("lab: {e}");
    }
    Ok(if !errors.is_empty() {
        EXIT_FAILED
    } else if run.expectations.iter().any(|o| !o.holds) {
        EXIT_EXPECTATION
    } else {
        EXIT_OK
    })
}
