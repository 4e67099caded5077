//! Results directories: `run.json`, `report.md` and the plots written out (never through
//! a link, never into a directory others can write), handed to the user behind sudo,
//! and read back.

use crate::metrics::Run;
use crate::netlab::files::{SafeDir, invoking_user};
use crate::report;
use anyhow::{Context, Result};
use std::path::Path;

/// Writes run.json, report.md, report.html and the plots into `dir`; returns the
/// file names.
pub fn save(run: &Run, report_text: &str, dir: &SafeDir) -> Result<Vec<String>> {
    dir.write("run.json", &serde_json::to_vec_pretty(run)?, 0o644)?;
    let mut files = vec!["run.json".to_owned()];
    for (name, bytes) in report_files_with(run, report_text, 0)? {
        dir.write(&name, &bytes, 0o644)?;
        files.push(name);
    }
    Ok(files)
}

/// Writes runs.json and report.md of repeated runs into `dir` (next to the runs'
/// own directories); returns the file names.
pub fn save_series(
    s: &crate::metrics::repeat::Series,
    report_text: &str,
    dir: &SafeDir,
) -> Result<Vec<String>> {
    dir.write("runs.json", &serde_json::to_vec_pretty(s)?, 0o644)?;
    dir.write("report.md", report_text.as_bytes(), 0o644)?;
    Ok(vec!["runs.json".into(), "report.md".into()])
}

/// The report's files of `run`: report.md, report.html and the plots, whose timeline
/// shows prompt `prompt` (from 0).
pub fn report_files(run: &Run, prompt: usize) -> Result<Vec<(String, Vec<u8>)>> {
    report_files_with(run, &report::tables::render(run), prompt)
}

fn report_files_with(run: &Run, text: &str, prompt: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let plots = report::plots::all(run, prompt)?;
    let mut md = text.to_owned();
    md.push_str("\n## Plots\n\n");
    for (name, _) in &plots {
        md.push_str(&format!("![{name}]({name})\n\n"));
    }
    let mut files = vec![
        ("report.md".to_owned(), md.into_bytes()),
        (
            "report.html".to_owned(),
            report::html::page(run, text, &plots).into_bytes(),
        ),
    ];
    files.extend(
        plots
            .into_iter()
            .map(|(n, svg)| (n.to_owned(), svg.into_bytes())),
    );
    Ok(files)
}

/// Hands `dir` and everything in it to the user behind sudo, if lab runs through sudo.
pub fn give_to_sudo_user(dir: &SafeDir) -> Result<()> {
    if nix::unistd::getuid().is_root() && std::env::var_os("SUDO_UID").is_some() {
        let (uid, gid) = invoking_user();
        dir.give_to(uid, gid)?;
    }
    Ok(())
}

/// What a results directory holds: one run, or repeated runs.
pub enum Saved {
    Run(Box<Run>),
    Series(crate::metrics::repeat::Series),
}

impl Saved {
    pub fn source(&self) -> crate::report::compare::Source<'_> {
        match self {
            Saved::Run(r) => crate::report::compare::Source::Run(r),
            Saved::Series(s) => crate::report::compare::Source::Series(s),
        }
    }
}

/// Reads a results directory of repeated runs (its runs.json) or of one run (its
/// run.json), or either file named directly.
pub fn load_saved(path: &Path) -> Result<Saved> {
    let runs = if path.is_dir() {
        path.join("runs.json")
    } else {
        path.to_owned()
    };
    let is_series = runs.file_name().is_some_and(|n| n == "runs.json") && runs.is_file();
    if !is_series {
        return load(path).map(|r| Saved::Run(Box::new(r)));
    }
    let bytes = std::fs::read(&runs).with_context(|| format!("cannot read {}", runs.display()))?;
    let s: crate::metrics::repeat::Series = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a runs.json that this lab can read",
            runs.display()
        )
    })?;
    if s.format > crate::metrics::repeat::FORMAT {
        anyhow::bail!(
            "{} is runs.json format {}; this lab reads formats up to {}: use a newer lab",
            runs.display(),
            s.format,
            crate::metrics::repeat::FORMAT
        );
    }
    Ok(Saved::Series(s))
}

/// Reads a run.json (or the run.json of a results directory).
pub fn load(path: &Path) -> Result<Run> {
    let file = if path.is_dir() {
        path.join("run.json")
    } else {
        path.to_owned()
    };
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut run: Run = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a run.json that this lab can read",
            file.display()
        )
    })?;
    if run.format > crate::metrics::summary::FORMAT {
        anyhow::bail!(
            "{} is run.json format {}; this lab reads formats up to {}: use a newer lab",
            file.display(),
            run.format,
            crate::metrics::summary::FORMAT
        );
    }
    run.plan.fill_names();
    for c in &mut run.cells {
        if c.cell.name.is_empty() {
            c.cell.name = c.cell.approach.name.to_owned();
        }
    }
    // Runs saved before summaries existed get them computed.
    if run.summaries.len() != run.cells.len() {
        run.summaries = crate::metrics::summary::of_run(&run);
    }
    Ok(run)
}
