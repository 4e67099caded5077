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
        (None, _) if sys::require_privileges("plan").is_ok() => qdisc::decide(plan)?,
        (None, _) => plan,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", crate::plan::render::render(&plan));
    }
    Ok(EXIT_OK)
}

/// `lab schema [topology|run]`.
pub fn schema(a: &crate::cli::SchemaArgs) -> Result<u8> {
    if a.of == "run" {
        print!("{}", crate::metrics::schema_json());
    } else {
        print!("{}", crate::topology::schema_json());
    }
    Ok(EXIT_OK)
}
