//! The shards of a run (`lab run --shard i/n`) joined into one run: every cell in plan
//! order, the expectations checked on the whole. Pure.

use super::Run;

/// Joins the shards of one run. Every shard of the same topology must be there once.
pub fn merge(mut shards: Vec<(String, Run)>) -> Result<Run, String> {
    let Some((first_at, first)) = shards.first() else {
        return Err("no runs to merge".into());
    };
    let count = match first.shard {
        Some(s) => s.count,
        None => {
            return Err(format!(
                "{first_at} is a whole run, not a shard (lab run --shard i/n)"
            ));
        }
    };
    let (name, workload, seed, llm, expect) = (
        first.name.clone(),
        first.plan.workload.clone(),
        first.plan.seed,
        first.plan.llm.clone(),
        first.expect.clone(),
    );
    let mut seen = vec![None::<&str>; count];
    for (at, r) in &shards {
        let Some(s) = r.shard else {
            return Err(format!(
                "{at} is a whole run, not a shard (lab run --shard i/n)"
            ));
        };
        let differs = |what: &str| {
            Err(format!(
                "{at} is not a shard of the same run as {first_at}: its {what} differs"
            ))
        };
        if r.name != name {
            return differs("topology name");
        }
        if s.count != count {
            return differs("shard count");
        }
        if r.plan.workload != workload || r.plan.seed != seed || r.plan.llm != llm {
            return differs("workload, seed or LLM");
        }
        if r.expect != expect {
            return differs("list of expectations");
        }
        match seen[s.index - 1] {
            Some(other) => return Err(format!("{at} and {other} are both shard {s}")),
            None => seen[s.index - 1] = Some(at),
        }
    }
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(i, _)| format!("{}/{count}", i + 1))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "shard {} of {name} is missing: merge every shard of the run",
            missing.join(", ")
        ));
    }
    shards.sort_by_key(|(_, r)| r.shard.map_or(0, |s| s.index));
    let mut merged = shards[0].1.clone();
    merged.cells.clear();
    merged.plan.cells.clear();
    merged.plan.namespaces.clear();
    merged.plan.interfaces.clear();
    merged.plan.processes.clear();
    let mut parts = Vec::new();
    for (at, r) in shards {
        merged.started_unix = merged.started_unix.min(r.started_unix);
        merged.seconds = merged.seconds.max(r.seconds);
        parts.push(serde_json::json!({
            "shard": r.shard.map(|s| s.to_string()),
            "from": at,
            "seconds": r.seconds,
            "kernel": r.environment.get("kernel"),
            "backend": r.environment.get("backend"),
        }));
        merged.cells.extend(r.cells);
        merged.plan.cells.extend(r.plan.cells);
        for n in r.plan.namespaces {
            if !merged.plan.namespaces.contains(&n) {
                merged.plan.namespaces.push(n);
            }
        }
        for i in r.plan.interfaces {
            if !merged.plan.interfaces.contains(&i) {
                merged.plan.interfaces.push(i);
            }
        }
        for p in r.plan.processes {
            if !merged.plan.processes.contains(&p) {
                merged.plan.processes.push(p);
            }
        }
    }
    merged.cells.sort_by_key(|c| c.cell.index);
    merged.plan.cells.sort_by_key(|c| c.index);
    if let Some(env) = merged.environment.as_object_mut() {
        env.insert("shards".into(), serde_json::Value::Array(parts));
    }
    merged.shard = None;
    merged.conclude()?;
    Ok(merged)
}
