//! Node names for `lab shell` and `lab exec`. Pure: computed from the plan.
//!
//! - `wt`, `sse`, `raw`: the client side of that approach's cell (when the lab has one
//!   profile); `wt@degraded` names the cell under a profile;
//! - a suffix picks the namespace: `wt.server`, `wt@degraded.wire`, `wt.client`;
//! - `c3`, `c3.server`: a cell by its id;
//! - `llm`: the namespace of the LLM upstream (the mock, or the relay's listener);
//! - a node of `nodes:`: a shared one by its name (`redis`); a cell's as a suffix of the
//!   cell's names (`wt.redis`, `wt@degraded.redis`, `c3.redis`), or by its name alone
//!   when the lab has one cell;
//! - a full namespace name, as `ip netns list` shows it.

use crate::plan::Plan;
use anyhow::{Result, bail};

/// Every node name of the plan with its namespace, short forms first.
pub fn nodes(plan: &Plan) -> Vec<(String, String)> {
    let mut out = vec![("llm".to_owned(), plan.llm.namespace.clone())];
    let mut seen_approach = std::collections::HashMap::new();
    for c in &plan.cells {
        *seen_approach.entry(c.name.clone()).or_insert(0usize) += 1;
    }
    let bases = |c: &crate::plan::Cell| {
        let a = c.name.clone();
        let mut bases = Vec::new();
        if seen_approach[&c.name] == 1 {
            bases.push(a.clone());
        }
        bases.push(format!("{a}@{}", c.profile));
        bases.push(c.id.clone());
        bases
    };
    for c in &plan.cells {
        for b in bases(c) {
            out.push((b.clone(), c.client_ns.clone()));
            for (side, ns) in [
                ("client", &c.client_ns),
                ("wire", &c.wire_ns),
                ("server", &c.server_ns),
            ] {
                out.push((format!("{b}.{side}"), ns.clone()));
            }
        }
    }
    for n in &plan.nodes {
        let cell = n
            .cell
            .as_ref()
            .and_then(|id| plan.cells.iter().find(|c| &c.id == id));
        match cell {
            Some(c) => {
                if plan.cells.len() == 1 {
                    out.push((n.name.clone(), n.namespace.clone()));
                }
                for b in bases(c) {
                    out.push((format!("{b}.{}", n.name), n.namespace.clone()));
                }
            }
            None => out.push((n.name.clone(), n.namespace.clone())),
        }
    }
    for ns in &plan.namespaces {
        out.push((ns.clone(), ns.clone()));
    }
    out
}

/// The namespace of `node`, or an error that lists the valid names.
pub fn resolve(plan: &Plan, node: &str) -> Result<String> {
    let all = nodes(plan);
    if let Some((_, ns)) = all.iter().find(|(n, _)| n == node) {
        return Ok(ns.clone());
    }
    // List the forms without suffixes, and say the suffixes once.
    let bases: Vec<&str> = all
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !n.contains('.') && !n.starts_with("lab-"))
        .collect();
    let mut cell_nodes: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.cell.is_some())
        .map(|n| n.name.as_str())
        .collect();
    cell_nodes.dedup();
    let sides = if cell_nodes.is_empty() {
        ".client, .wire or .server".to_owned()
    } else {
        format!(
            ".client, .wire, .server or a cell's node (.{})",
            cell_nodes.join(", .")
        )
    };
    bail!(
        "no node {node:?} in lab {}. Nodes: {} (add {sides} to pick a side; \
a bare name is the client side), or a namespace name from `lab status`",
        plan.name,
        bases.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> Plan {
        let t = crate::topology::parse::parse("t.yaml", yaml).expect("valid topology");
        crate::plan::plan(&t).expect("plan")
    }

    #[test]
    fn short_names_when_one_profile() {
        let p = plan("name: x\napproaches: [raw, sse, wt]\nprofiles:\n  base: {}\n");
        assert_eq!(resolve(&p, "wt").unwrap(), "lab-x-c2-client");
        assert_eq!(resolve(&p, "wt.server").unwrap(), "lab-x-c2-server");
        assert_eq!(resolve(&p, "sse@base.wire").unwrap(), "lab-x-c1-wire");
        assert_eq!(resolve(&p, "c0").unwrap(), "lab-x-c0-client");
        assert_eq!(resolve(&p, "llm").unwrap(), "lab-x-llm");
        assert_eq!(resolve(&p, "lab-x-c1-server").unwrap(), "lab-x-c1-server");
    }

    #[test]
    fn profile_needed_when_several() {
        let p = plan(
            "name: y\napproaches: [sse, wt]\nprofiles:\n  a: { delay: 10ms }\n  b: { delay: 20ms }\n",
        );
        assert_eq!(resolve(&p, "wt@b").unwrap(), "lab-y-c3-client");
        let e = resolve(&p, "wt").unwrap_err().to_string();
        assert!(e.contains("no node \"wt\" in lab y"), "{e}");
        assert!(e.contains("wt@a, c1"), "{e}");
        assert!(e.contains("llm, sse@a, c0"), "{e}");
    }

    /// A shared node by its name; a cell's node after the cell's names, and alone when
    /// the lab has one cell.
    #[test]
    fn nodes_by_name_and_after_their_cell() {
        let nodes = "nodes:\n  kv: { command: [redis-server], ports: [6379] }\n  bus: { command: [nats-server], scope: shared }\n";
        let p = plan(&format!(
            "name: z\napproaches: [sse, wt]\nprofiles:\n  a: {{}}\n{nodes}"
        ));
        assert_eq!(resolve(&p, "bus").unwrap(), "lab-z-bus");
        assert_eq!(resolve(&p, "wt.kv").unwrap(), "lab-z-c1-kv");
        assert_eq!(resolve(&p, "c0.kv").unwrap(), "lab-z-c0-kv");
        assert_eq!(resolve(&p, "sse@a.kv").unwrap(), "lab-z-c0-kv");
        let e = resolve(&p, "kv").unwrap_err().to_string();
        assert!(e.contains("a cell's node (.kv)"), "{e}");
        let one = plan(&format!(
            "name: o\napproaches: [sse]\nprofiles:\n  a: {{}}\n{nodes}"
        ));
        assert_eq!(resolve(&one, "kv").unwrap(), "lab-o-c0-kv");
    }
}
