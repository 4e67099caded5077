//! `lab plan` and `lab schema`: a topology resolved and printed, without root and
//! without touching the system (except the netem probe, when root asks for auto).

use super::{EXIT_OK, load_topology};
use crate::cli::PlanArgs;
use crate::netlab::{qdisc, sys};
use crate::plan::layout::{Shaper, with_backend};
use crate::topology::model::Backend;
use anyhow::Result;

/// `lab plan`.
pub fn run(a: &PlanArgs) -> Result<u8> {
    let plan = match load_topology(&a.topology) {
        Ok((_, plan)) => plan,
        Err(code) => return Ok(code),
    };
    let plan = match (a.backend.as_deref(), plan.backend) {
        (Some("kernel"), _) => with_backend(plan, Shaper::Kernel, "--backend kernel"),
        (Some(_), _) => with_backend(plan, Shaper::Userspace, "--backend userspace"),
        (None, Backend::Userspace) => {
            with_backend(plan, Shaper::Userspace, "asked for by the topology")
        }
        (None, _) if sys::require_privileges("plan").is_ok() => {
            crate::plan::layout::decide(plan, qdisc::probe_netem)?
        }
        (None, _) => plan,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", crate::plan::render::render(&plan));
    }
    Ok(EXIT_OK)
}

/// `lab schema [topology|run|runs]`.
pub fn schema(a: &crate::cli::SchemaArgs) -> Result<u8> {
    match a.of.as_str() {
        "run" => print!("{}", crate::metrics::schema_json()),
        "runs" => print!("{}", crate::metrics::repeat::schema_json()),
        _ => print!("{}", crate::topology::schema_json()),
    }
    Ok(EXIT_OK)
}

/// `lab completions <shell>`.
pub fn completions(a: &crate::cli::CompletionsArgs) -> Result<u8> {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "lab", &mut std::io::stdout());
    Ok(EXIT_OK)
}

/// `lab man <dir>`: lab.1, and `lab-<command>.1` for every command people run.
pub fn man(a: &crate::cli::ManArgs) -> Result<u8> {
    use clap::CommandFactory;
    let dir = match crate::netlab::files::SafeDir::open(&a.dir, true) {
        Ok(d) => d,
        Err(e) => return super::refuse(e),
    };
    let cmd = crate::cli::Cli::command();
    let mut pages = vec![("lab.1".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("lab-{}", sub.get_name());
        pages.push((
            format!("{name}.1"),
            sub.clone()
                .name(name)
                .version(cmd.get_version().unwrap_or_default().to_owned()),
        ));
    }
    let mut names = Vec::new();
    for (file, page) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        dir.write(&file, &buf, 0o644)?;
        names.push(file);
    }
    eprintln!(
        "wrote {} man pages in {}",
        names.len(),
        dir.path().display()
    );
    Ok(EXIT_OK)
}
