//! The user's nodes (`nodes:`) laid out: each in a namespace of its own with one veth
//! to the LLM network's bridge, at an address that follows from its position, running
//! its command through `lab exec-server` with its placeholders filled in. Pure.
//!
//! - a shared node k: namespace `lab-<name>-<node>`, address 198.19.255.(k+1);
//! - node k of cell i: namespace `lab-<name>-c<i>-<node>`, address 198.19.(k+1).(i+1);
//! - inside the node's namespace its interface is `to-llm`; in the LLM namespace,
//!   `n<k>` (shared) or `n<k>-c<i>`, a port of `br0`.

use super::{Cell, Iface, LLM_ADDR, LLM_PORT, Plan, Process, Ready, run_dir};
use crate::topology::model::{NodePort, NodeScope, NodeSpec, Topology, placeholders};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A node of the plan.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Its name in the topology.
    pub name: String,
    /// The cell it belongs to (a cell node), or none (a shared node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    pub namespace: String,
    pub address: Ipv4Addr,
    /// The ports it listens on, as `tcp/6379` or `udp/4433`.
    #[schemars(with = "Vec<String>")]
    pub ports: Vec<NodePort>,
    /// Its own directory: its files and working directory.
    pub dir: String,
    /// The fault the topology asks for: killed this long after the clients start.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::topology::units::as_opt_dur"
    )]
    #[schemars(with = "Option<String>")]
    pub kill_after: Option<std::time::Duration>,
}

/// The files lab writes for a process before starting it, into `dir`.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesFor {
    pub dir: String,
    /// Each file's name and text.
    pub files: Vec<(String, String)>,
}

/// The address of node `k` (its position in `nodes:`) of `scope`, in cell `cell`.
pub fn address(k: usize, scope: NodeScope, cell: usize) -> Ipv4Addr {
    match scope {
        NodeScope::Shared => Ipv4Addr::new(198, 19, 255, k as u8 + 1),
        NodeScope::Cell => Ipv4Addr::new(198, 19, k as u8 + 1, cell as u8 + 1),
    }
}

/// The address that `{node:NAME}` stands for in cell `cell`'s texts, if there is a node
/// NAME.
pub fn address_of(t: &Topology, name: &str, cell: usize) -> Option<Ipv4Addr> {
    let k = t.nodes.iter().position(|(n, _)| n == name)?;
    Some(address(k, t.nodes[k].1.scope, cell))
}

/// `text` with each known placeholder replaced by `value(word)`; unknown words stay.
pub fn fill(text: &str, value: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = text.to_owned();
    for word in placeholders(text) {
        if let Some(v) = value(word) {
            out = out.replace(&format!("{{{word}}}"), &v);
        }
    }
    out
}

/// Everything the nodes add to a plan.
#[derive(Default)]
pub struct Laid {
    pub nodes: Vec<NodePlan>,
    pub namespaces: Vec<String>,
    pub interfaces: Vec<Iface>,
    pub processes: Vec<Process>,
}

/// Lays out the topology's nodes: the shared ones once, the cell ones in every cell.
pub fn lay_out(t: &Topology, prefix: &str, llm_ns: &str, cells: &[Cell]) -> Laid {
    let mut laid = Laid::default();
    for (k, (name, spec)) in t.nodes.iter().enumerate() {
        match spec.scope {
            NodeScope::Shared => one(t, &mut laid, (k, name, spec), prefix, llm_ns, None),
            NodeScope::Cell => {
                for c in cells {
                    one(t, &mut laid, (k, name, spec), prefix, llm_ns, Some(c));
                }
            }
        }
    }
    laid
}

/// One node: in `cell`, or shared when none.
fn one(
    t: &Topology,
    laid: &mut Laid,
    (k, name, spec): (usize, &str, &NodeSpec),
    prefix: &str,
    llm_ns: &str,
    cell: Option<&Cell>,
) {
    let (namespace, llm_side, address) = match cell {
        Some(c) => (
            format!("{prefix}-{}-{name}", c.id),
            format!("n{k}-{}", c.id),
            address(k, NodeScope::Cell, c.index),
        ),
        None => (
            format!("{prefix}-{name}"),
            format!("n{k}"),
            address(k, NodeScope::Shared, 0),
        ),
    };
    let tail = namespace.trim_start_matches(&format!("{prefix}-"));
    let dir = format!("{}/nodes/{tail}", run_dir(&t.name));
    let value = |word: &str| -> Option<String> {
        Some(match word {
            "addr" => address.to_string(),
            "name" => name.to_owned(),
            "dir" => dir.clone(),
            "cell" => cell?.id.clone(),
            "server" => cell?.server_llm_addr.to_string(),
            "upstream" => format!("http://{LLM_ADDR}:{LLM_PORT}"),
            "model" => t.llm.model.clone(),
            w => address_of(t, w.strip_prefix("node:")?, cell.map_or(0, |c| c.index))?.to_string(),
        })
    };
    let mut argv: Vec<String> = ["lab", "exec-server", "--dir", &dir, "--"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    argv.extend(spec.command.iter().map(|a| fill(a, &value)));
    laid.processes.push(Process {
        namespace: namespace.clone(),
        role: format!("node {name}"),
        argv,
        ready: Ready::Ports {
            ports: spec.ports.clone(),
        },
        certs: None,
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), fill(v, &value)))
            .collect(),
        files: Some(FilesFor {
            dir: dir.clone(),
            files: spec
                .files
                .iter()
                .map(|(f, text)| (f.clone(), fill(text, &value)))
                .collect(),
        }),
    });
    laid.interfaces.extend([
        super::build::veth(
            &namespace,
            "to-llm",
            format!("{llm_ns}/{llm_side}"),
            Some(format!("{address}/16")),
            None,
        ),
        super::build::veth(
            llm_ns,
            &llm_side,
            format!("{namespace}/to-llm"),
            None,
            Some("br0"),
        ),
    ]);
    laid.namespaces.push(namespace.clone());
    laid.nodes.push(NodePlan {
        name: name.to_owned(),
        cell: cell.map(|c| c.id.clone()),
        namespace,
        address,
        ports: spec.ports.clone(),
        dir,
        kill_after: spec.kill_after.map(|d| d.0),
    });
}

/// Which hosts file namespace `ns` sees: the shared one (`None`: the LLM's namespace,
/// shared nodes) or a cell's (its three namespaces and its nodes). Nothing when the plan
/// has no nodes, or `ns` is not the plan's.
pub fn hosts_scope(p: &Plan, ns: &str) -> Option<Option<String>> {
    if p.nodes.is_empty() {
        return None;
    }
    if let Some(n) = p.nodes.iter().find(|n| n.namespace == ns) {
        return Some(n.cell.clone());
    }
    if let Some(c) = p
        .cells
        .iter()
        .find(|c| [&c.client_ns, &c.wire_ns, &c.server_ns].contains(&&ns.to_owned()))
    {
        return Some(Some(c.id.clone()));
    }
    (p.llm.namespace == ns).then_some(None)
}

/// Where the hosts file of a cell (or the shared one) is: `<run dir>/hosts/<cell>` or
/// `.../hosts/shared`.
pub fn hosts_path(lab: &str, cell: Option<&str>) -> String {
    format!("{}/hosts/{}", run_dir(lab), cell.unwrap_or("shared"))
}

/// The hosts file of `cell` (or the shared one): the machine's own lines (`base`), then
/// `llm`, every shared node and, for a cell, its own nodes and `server` (its server's
/// address on the LLM network), each by name.
pub fn hosts(p: &Plan, cell: Option<&str>, base: &str) -> String {
    let mut out = base.trim_end().to_owned();
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&format!(
        "# lab {}: its nodes by name{}\n{}\tllm\n",
        p.name,
        cell.map_or(String::new(), |c| format!(", as cell {c} sees them")),
        p.llm.address
    ));
    if let Some(c) = cell.and_then(|id| p.cells.iter().find(|c| c.id == id)) {
        out.push_str(&format!("{}\tserver\n", c.server_llm_addr));
    }
    for n in &p.nodes {
        if n.cell.is_none() || n.cell.as_deref() == cell {
            out.push_str(&format!("{}\t{}\n", n.address, n.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> super::super::Plan {
        let t = crate::topology::parse::parse("t.yaml", yaml).expect("valid topology");
        crate::plan::plan(&t).expect("plan")
    }

    /// A shared node once, a cell node in every cell, each with its namespace, address,
    /// link to the LLM's bridge and its command with the placeholders filled in.
    #[test]
    fn nodes_get_namespaces_addresses_links_and_filled_commands() {
        let p = plan(
            r#"
name: nd
approaches: [sse, ws]
profiles: { a: {} }
nodes:
  broker:
    scope: shared
    command: [redis-server, --bind, "{addr}", --port, "6379"]
    ports: [6379]
  lb:
    command: [haproxy, -f, "{dir}/lb.cfg"]
    ports: ["tcp/8080", "udp/4433"]
    env: { BROKER: "{node:broker}:6379", CELL: "{cell}" }
    files:
      lb.cfg: "backend b\n  server s {server}:80 # {node:lb} { not a placeholder }\n"
"#,
        );
        let names: Vec<(&str, Option<&str>, String)> = p
            .nodes
            .iter()
            .map(|n| {
                (
                    n.namespace.as_str(),
                    n.cell.as_deref(),
                    n.address.to_string(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("lab-nd-broker", None, "198.19.255.1".to_owned()),
                ("lab-nd-c0-lb", Some("c0"), "198.19.2.1".to_owned()),
                ("lab-nd-c1-lb", Some("c1"), "198.19.2.2".to_owned()),
            ]
        );
        for n in &p.nodes {
            assert!(p.namespaces.contains(&n.namespace));
        }
        let lb1 = p
            .processes
            .iter()
            .find(|pr| pr.namespace == "lab-nd-c1-lb")
            .unwrap();
        assert_eq!(
            lb1.argv,
            [
                "lab",
                "exec-server",
                "--dir",
                "/run/lab/nd/nodes/c1-lb",
                "--",
                "haproxy",
                "-f",
                "/run/lab/nd/nodes/c1-lb/lb.cfg"
            ]
        );
        assert_eq!(
            lb1.env,
            [
                ("BROKER".to_owned(), "198.19.255.1:6379".to_owned()),
                ("CELL".to_owned(), "c1".to_owned())
            ]
        );
        let files = &lb1.files.as_ref().unwrap().files;
        assert_eq!(
            files[0].1,
            "backend b\n  server s 198.19.0.2:80 # 198.19.2.2 { not a placeholder }\n"
        );
        assert_eq!(
            lb1.ready,
            Ready::Ports {
                ports: vec!["tcp/8080".parse().unwrap(), "udp/4433".parse().unwrap()]
            }
        );
        let links: Vec<(&str, &str)> = p
            .interfaces
            .iter()
            .filter(|i| i.name.starts_with('n') || i.namespace.ends_with("-lb"))
            .map(|i| (i.namespace.as_str(), i.name.as_str()))
            .collect();
        assert!(links.contains(&("lab-nd-llm", "n1-c1")), "{links:?}");
        assert!(links.contains(&("lab-nd-c1-lb", "to-llm")), "{links:?}");
        assert!(p.interfaces.iter().all(|i| i.name.len() <= 15));
    }

    /// A server command reaches its cell's node by `{node:NAME}`.
    #[test]
    fn a_server_command_names_its_cell_s_node() {
        let p = plan(
            r#"
name: sv
approaches:
  - { name: mine, protocol: sse, command: [my-server, --listen, "{listen}", --cache, "{node:cache}:11211"], port: 8443 }
profiles: { a: {}, b: {} }
nodes:
  cache: { command: [memcached, -l, "{addr}"], ports: [11211] }
"#,
        );
        let server = p
            .processes
            .iter()
            .find(|pr| pr.namespace == "lab-sv-c1-server")
            .unwrap();
        assert!(
            server.argv.contains(&"198.19.1.2:11211".to_owned()),
            "{:?}",
            server.argv
        );
    }

    /// A server of the user's gets its files, filled in, in its own directory, which
    /// it runs in; `{pem}` is the certificate and key in one file; a node's
    /// `kill_after` is in the plan.
    #[test]
    fn a_server_s_files_are_filled_and_a_node_keeps_its_kill_after() {
        let p = plan(
            r#"
name: sf
approaches:
  - name: lb
    protocol: fanout
    command: [haproxy, -f, "{dir}/h.cfg"]
    files: { h.cfg: "bind {listen} ssl crt {pem}\nserver g {node:gw}:8001\nacl ws { path_end /ws }\n" }
profiles: { a: {} }
nodes:
  gw: { command: [lab, part, fanout, gateway], scope: shared, kill_after: 2.5s }
"#,
        );
        let server = p
            .processes
            .iter()
            .find(|pr| pr.namespace == "lab-sf-c0-server")
            .unwrap();
        let dir = "/run/lab/sf/certs/c0";
        assert_eq!(
            server.argv,
            [
                "lab",
                "exec-server",
                "--dir",
                dir,
                "--",
                "haproxy",
                "-f",
                &format!("{dir}/h.cfg")
            ]
        );
        let f = server.files.as_ref().unwrap();
        assert_eq!(f.dir, dir);
        assert_eq!(
            f.files,
            [(
                "h.cfg".to_owned(),
                format!(
                    "bind 198.18.0.2:9002 ssl crt {dir}/cert-key.pem\nserver g 198.19.255.1:8001\nacl ws {{ path_end /ws }}\n"
                )
            )]
        );
        assert_eq!(
            p.nodes[0].kill_after,
            Some(std::time::Duration::from_millis(2500))
        );
    }

    /// A shard keeps the shared nodes and its own cells' nodes, with their namespaces,
    /// links and processes; the other cells' nodes go with their cells.
    #[test]
    fn a_shard_keeps_its_cells_nodes_and_the_shared_ones() {
        let p = plan(
            "name: sh\napproaches: [sse, wt]\nprofiles: { a: {} }\nnodes:\n  bus: { command: [nats-server], scope: shared }\n  kv: { command: [redis-server] }\n",
        );
        let s = p.shard("2/2".parse().unwrap()).unwrap();
        let kept: Vec<&str> = s.nodes.iter().map(|n| n.namespace.as_str()).collect();
        assert_eq!(kept, ["lab-sh-bus", "lab-sh-c1-kv"]);
        assert!(!s.namespaces.iter().any(|n| n == "lab-sh-c0-kv"));
        assert!(!s.processes.iter().any(|pr| pr.namespace == "lab-sh-c0-kv"));
        assert!(
            !s.interfaces.iter().any(|i| i.namespace == "lab-sh-c0-kv"
                || i.peer.as_deref() == Some("lab-sh-c0-kv/to-llm"))
        );
    }

    /// Each cell's hosts file names the shared nodes and its own, `llm` and its server;
    /// every namespace of the cell, and its nodes, see it.
    #[test]
    fn hosts_files_name_the_nodes_a_namespace_reaches() {
        let p = plan(
            "name: hs\napproaches: [sse, wt]\nprofiles: { a: {} }\nnodes:\n  bus: { command: [nats-server], scope: shared }\n  kv: { command: [redis-server] }\n",
        );
        assert_eq!(
            hosts(&p, Some("c1"), "127.0.0.1\tlocalhost\n"),
            "127.0.0.1\tlocalhost\n# lab hs: its nodes by name, as cell c1 sees them\n198.19.255.254\tllm\n198.19.0.2\tserver\n198.19.255.1\tbus\n198.19.2.2\tkv\n"
        );
        assert_eq!(
            hosts(&p, None, ""),
            "# lab hs: its nodes by name\n198.19.255.254\tllm\n198.19.255.1\tbus\n"
        );
        assert_eq!(hosts_scope(&p, "lab-hs-c1-kv"), Some(Some("c1".into())));
        assert_eq!(hosts_scope(&p, "lab-hs-c0-client"), Some(Some("c0".into())));
        assert_eq!(hosts_scope(&p, "lab-hs-bus"), Some(None));
        assert_eq!(hosts_scope(&p, "lab-hs-llm"), Some(None));
        let plain = plan("name: pl\napproaches: [sse]\nprofiles: { a: {} }\n");
        assert_eq!(hosts_scope(&plain, "lab-pl-c0-client"), None);
    }
}
