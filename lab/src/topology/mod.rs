//! Topology files: parse strictly, reporting every problem at once ([`parse`]), with
//! units typed once ([`units`]) and expectations checked ([`expect`]). Pure code, apart
//! from reading the file and checking that a prompts file exists; [`crate::plan`] takes
//! it from here.

pub mod expect;
pub mod model;
pub mod parse;
pub mod units;

use anyhow::{Context, Result};
use std::path::Path;

/// The JSON schema of topology files, as published in `lab/topology.schema.json`.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(model::Topology);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Why a topology could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{0:#}")]
    Io(anyhow::Error),
    /// The file has problems; each is listed.
    #[error("{0}")]
    Invalid(#[from] parse::Diagnostics),
    /// The topology is valid but cannot be planned.
    #[error("{0}")]
    Plan(String),
}

/// Reads, parses and checks a topology file; a relative prompts file must exist next to it,
/// and each trace file must be one: `trace` reads one (the shaping stage's reader, handed
/// in so that this stage depends on none after it) and says what is wrong with it.
pub fn load(
    path: &Path,
    trace: &dyn Fn(&str) -> anyhow::Result<()>,
) -> Result<model::Topology, LoadError> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read topology file {}", path.display()))
        .map_err(LoadError::Io)?;
    let file = path.display().to_string();
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let before = &e.as_bytes()[..at];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = at
                - before
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1)
                + 1;
            return Err(LoadError::Invalid(parse::Diagnostics(vec![
                parse::Diagnostic {
                    file,
                    line,
                    column,
                    field: String::new(),
                    message: format!(
                        "the file is not UTF-8: byte {at} (0x{:02x}) starts no UTF-8 character; save the file as UTF-8",
                        e.as_bytes()[at]
                    ),
                },
            ])));
        }
    };
    let mut t = parse::parse(&file, &text)?;
    // Trace files: relative to the topology, readable, and valid traces; the plan
    // carries them as absolute paths.
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    for (name, profile) in &mut t.profiles {
        for (dir, link) in [("up", &mut profile.up), ("down", &mut profile.down)] {
            let Some(model::TraceSpec::File(f)) = &link.trace else {
                continue;
            };
            let p = base.join(f);
            // Messages name the path as the topology's location makes it; the plan
            // carries it absolute.
            match trace(&p.display().to_string()) {
                Ok(_) => {
                    let abs = std::path::absolute(&p).unwrap_or(p.clone());
                    link.trace = Some(model::TraceSpec::File(abs.display().to_string()));
                }
                Err(e) => {
                    let (at, field) =
                        match parse::position(&text, &["profiles", name, dir, "trace"]) {
                            Some(at) => (at, format!("profiles.{name}.{dir}.trace")),
                            None => (
                                parse::position(&text, &["profiles", name, "trace"])
                                    .or_else(|| parse::position(&text, &["profiles", name]))
                                    .unwrap_or((1, 1)),
                                format!("profiles.{name}.trace"),
                            ),
                        };
                    let m = format!("{e:#}; a trace path is relative to the topology file");
                    if !problems.iter().any(|d: &parse::Diagnostic| d.message == m) {
                        problems.push(parse::Diagnostic {
                            line: at.0,
                            column: at.1,
                            file: file.clone(),
                            field,
                            message: m,
                        });
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(LoadError::Invalid(parse::Diagnostics(problems)));
    }
    if t.workload.prompts != "reference" {
        let p = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&t.workload.prompts);
        if !p.is_file() {
            let at = parse::position(&text, &["workload", "prompts"]).unwrap_or((1, 1));
            return Err(LoadError::Invalid(parse::Diagnostics(vec![
                parse::Diagnostic {
                    line: at.0,
                    column: at.1,
                    file,
                    field: "workload.prompts".into(),
                    message: format!(
                        "prompts file {} does not exist; use `reference` or a path relative to the topology file",
                        p.display()
                    ),
                },
            ])));
        }
    }
    load_trace(&mut t, path, &text, &file)?;
    check_node_commands(&t, &text, &file)?;
    Ok(t)
}

/// Each node's program is one this machine has: `lab`, a path to an executable file,
/// or a name found on PATH. Said before anything is built, for every node at once.
fn check_node_commands(t: &model::Topology, text: &str, file: &str) -> Result<(), LoadError> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut problems = Vec::new();
    for (name, spec) in &t.nodes {
        let Some(prog) = spec.command.first() else {
            continue;
        };
        let found = prog == "lab"
            || if prog.contains('/') {
                runnable(Path::new(prog))
            } else {
                std::env::split_paths(&path_var).any(|d| runnable(&d.join(prog)))
            };
        if !found {
            let at = parse::position(text, &["nodes", name, "command"]).unwrap_or((1, 1));
            let message = if prog.contains('/') {
                format!(
                    "{prog} is not an executable file; give the program's full path, or its name on PATH"
                )
            } else {
                format!(
                    "'{prog}' is not on PATH; install it (scripts/setup.sh installs redis-server and haproxy) or give its full path"
                )
            };
            problems.push(parse::Diagnostic {
                file: file.to_owned(),
                line: at.0,
                column: at.1,
                field: format!("nodes.{name}.command"),
                message,
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Invalid(parse::Diagnostics(problems)))
    }
}

/// An open loop's trace (`workload.load.trace`), read now so that a bad one stops the
/// run before anything is built, and named by its full path from here on (the load
/// client reads it).
fn load_trace(
    t: &mut model::Topology,
    path: &Path,
    text: &str,
    file: &str,
) -> Result<(), LoadError> {
    if let Some(load) = t.workload.load.as_mut()
        && let Some(trace) = load.trace.as_mut()
    {
        let p = path.parent().unwrap_or(Path::new(".")).join(&*trace);
        let read = std::fs::read_to_string(&p)
            .map_err(anyhow::Error::from)
            .and_then(|text| lab_clients::arrivals::read_trace(&text))
            .and_then(|_| Ok(std::path::absolute(&p)?));
        match read {
            Ok(abs) => *trace = abs.display().to_string(),
            Err(e) => {
                let at = parse::position(text, &["workload", "load", "trace"]).unwrap_or((1, 1));
                return Err(LoadError::Invalid(parse::Diagnostics(vec![
                    parse::Diagnostic {
                        line: at.0,
                        column: at.1,
                        file: file.to_owned(),
                        field: "workload.load.trace".into(),
                        message: format!(
                            "trace {}: {e:#}; give a file of send times relative to the topology file",
                            p.display()
                        ),
                    },
                ])));
            }
        }
    }
    Ok(())
}
