//! Results directories: `run.json`, `report.md` and the plots written out, handed to the
//! user behind sudo, and read back.

use crate::metrics::Run;
use crate::report;
use anyhow::{Context, Result};
use std::path::Path;

/// Hands the results directory to the user behind sudo.
fn give_to_sudo_user(path: &Path) {
    let id = |k| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    if let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) {
        let own = |p: &Path| {
            let _ = std::os::unix::fs::chown(p, Some(uid), Some(gid));
        };
        own(path);
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            own(&e.path());
        }
        if let Some(parent) = path.parent() {
            own(parent);
        }
    }
}

/// Writes run.json, report.md and the plots into `dir`; returns the file names.
pub fn save(run: &Run, report_text: &str, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(run)?)
        .with_context(|| format!("cannot write {}", dir.join("run.json").display()))?;
    std::fs::write(dir.join("report.md"), report_text)?;
    let mut files = vec!["run.json".to_owned(), "report.md".to_owned()];
    files.extend(write_plots(run, dir, 0)?);
    give_to_sudo_user(dir);
    Ok(files)
}

/// Writes the plots of `run` into `dir`; returns their file names.
pub fn write_plots(run: &Run, dir: &Path, prompt: usize) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for (name, svg) in report::plots::all(run, prompt)? {
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Reads a run.json (or the run.json of a results directory).
pub fn load(path: &Path) -> Result<Run> {
    let file = if path.is_dir() {
        path.join("run.json")
    } else {
        path.to_owned()
    };
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a run.json that this lab can read",
            file.display()
        )
    })
}
