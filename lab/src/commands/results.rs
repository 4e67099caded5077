//! Results directories: `run.json`, `report.md` and the plots written out (never through
//! a link, never into a directory others can write), handed to the user behind sudo,
//! and read back.

use crate::metrics::Run;
use crate::netlab::files::{SafeDir, invoking_user};
use crate::report;
use anyhow::{Context, Result};
use std::path::Path;

/// Writes run.json, report.md and the plots into `dir`; returns the file names.
pub fn save(run: &Run, report_text: &str, dir: &SafeDir) -> Result<Vec<String>> {
    dir.write("run.json", &serde_json::to_vec_pretty(run)?, 0o644)?;
    dir.write("report.md", report_text.as_bytes(), 0o644)?;
    let mut files = vec!["run.json".to_owned(), "report.md".to_owned()];
    files.extend(write_plots(run, dir, 0)?);
    Ok(files)
}

/// Writes the plots of `run` into `dir`; returns their file names.
pub fn write_plots(run: &Run, dir: &SafeDir, prompt: usize) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for (name, svg) in report::plots::all(run, prompt)? {
        dir.write(name, svg.as_bytes(), 0o644)?;
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Hands `dir` and everything in it to the user behind sudo, if lab runs through sudo.
pub fn give_to_sudo_user(dir: &SafeDir) -> Result<()> {
    if nix::unistd::getuid().is_root() && std::env::var_os("SUDO_UID").is_some() {
        let (uid, gid) = invoking_user();
        dir.give_to(uid, gid)?;
    }
    Ok(())
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
    run.plan.fill_names();
    for c in &mut run.cells {
        if c.cell.name.is_empty() {
            c.cell.name = c.cell.approach.name.to_owned();
        }
    }
    Ok(run)
}
