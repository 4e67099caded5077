//! `lab report` and `lab compare`: saved runs rendered again, and two runs side by side.

use super::results::load;
use super::{EXIT_OK, EXIT_USAGE};
use crate::netlab::files::SafeDir;
use crate::report::tables;
use anyhow::Result;
use std::path::Path;

/// `lab report <results>`: renders the tables and plots again from run.json.
pub fn report(a: crate::cli::ReportArgs) -> Result<u8> {
    let run = match load(&a.results) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lab: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    let dir = if a.results.is_dir() {
        a.results.clone()
    } else {
        a.results.parent().unwrap_or(Path::new(".")).to_owned()
    };
    let dir = match SafeDir::open(&dir, false) {
        Ok(d) => d,
        Err(e) => return super::refuse(e),
    };
    let text = tables::render(&run);
    print!("{text}");
    dir.write("report.md", text.as_bytes(), 0o644)?;
    let files = super::results::write_plots(&run, &dir, a.prompt.saturating_sub(1))?;
    eprintln!(
        "wrote report.md, {} in {}",
        files.join(", "),
        dir.path().display()
    );
    Ok(EXIT_OK)
}

/// `lab compare <a> <b>`.
pub fn compare(a: crate::cli::CompareArgs) -> Result<u8> {
    let (x, y) = match (load(&a.a), load(&a.b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("lab: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    print!("{}", tables::compare(&x, &y));
    Ok(EXIT_OK)
}
