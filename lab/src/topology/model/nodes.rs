//! `nodes:`: programs of the user's (a broker, a load balancer, any binary) that run in
//! namespaces of their own on the lab's LLM network, beside the cells' servers.

use crate::approach::Transport;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// At most this many nodes per topology: node k of cell i is at 198.19.(k+1).(i+1).
pub const MAX_NODES: usize = 16;

/// Longest node name (it is part of namespace names and of interface names' room).
pub const MAX_NODE_NAME: usize = 16;

/// Names a node cannot have: they name the sides of a cell and the LLM in `lab shell`.
pub const RESERVED_NODE_NAMES: &[&str] = &["llm", "client", "wire", "server", "host"];

/// Largest file a node may have rendered for it.
pub const MAX_NODE_FILE: usize = 1 << 20;

/// A node as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The program and its arguments, with placeholders (see `NODE_PLACEHOLDERS`).
    /// It must stay in the foreground: lab stops it, and whatever it started in its
    /// session, on every exit path. `lab` as the program is this lab.
    pub command: Vec<String>,
    /// The ports it listens on, e.g. `[6379]` or `[tcp/8080, udp/4433]`: it is ready
    /// once it listens on each (TCP) or has each bound (UDP). Without ports, it is
    /// ready once started.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub ports: Vec<NodePort>,
    /// `cell` (one in every cell, on its server's side; the default) or `shared` (one
    /// for the whole lab).
    #[serde(default)]
    pub scope: NodeScope,
    /// Environment variables to add, with placeholders in the values.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files lab writes, placeholders filled in, into the node's own directory (its
    /// working directory, `{dir}`) before starting it: a file name and its text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// A fault to measure: lab kills the node (SIGKILL) this long after the run's
    /// clients start, e.g. `3s`. The run reports it as done on purpose, not as a node
    /// that exited, and goes on; what the others make of it is what is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_after: Option<crate::topology::units::Dur>,
}

/// Where a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeScope {
    /// One in every cell, reached by that cell's server.
    #[default]
    Cell,
    /// One for the whole lab, reached by every cell's server.
    Shared,
}

/// A port a node listens on: `6379` or `tcp/6379` (TCP), `udp/4433`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodePort {
    pub transport: Transport,
    pub port: u16,
}

impl std::fmt::Display for NodePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.transport {
            Transport::Tcp => write!(f, "tcp/{}", self.port),
            Transport::Udp => write!(f, "udp/{}", self.port),
        }
    }
}

impl From<NodePort> for String {
    fn from(p: NodePort) -> String {
        p.to_string()
    }
}

impl std::str::FromStr for NodePort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "'{s}' is not a port: write 6379, tcp/6379 or udp/4433 (a port from 1 to 65535)"
            )
        };
        let (transport, port) = match s.split_once('/') {
            Some(("tcp", p)) => (Transport::Tcp, p),
            Some(("udp", p)) => (Transport::Udp, p),
            Some(_) => return Err(bad()),
            None => (Transport::Tcp, s),
        };
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(NodePort { transport, port }),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for NodePort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The placeholders of a node's command, environment and files, and what each stands
/// for. `{node:NAME}` is the address of node NAME: the same cell's, or the shared one.
pub const NODE_PLACEHOLDERS: &[(&str, &str)] = &[
    ("addr", "this node's address, e.g. 198.19.1.1"),
    ("name", "this node's name"),
    ("dir", "this node's own directory, where its files are"),
    ("cell", "the cell's id, e.g. c0 (a cell node's)"),
    (
        "server",
        "the address of the cell's server towards the nodes, e.g. 198.19.0.1 (a cell node's)",
    ),
    (
        "upstream",
        "the LLM's base URL, e.g. http://198.19.255.254:11434",
    ),
    ("model", "the model to ask the LLM for"),
    ("node:NAME", "the address of node NAME"),
];

/// The `{...}` words in `text` that are placeholders: a brace, then a-z, 0-9, `_`,
/// `-` or `:` only, then a brace. Anything else in braces (an HAProxy condition
/// `{ path_beg /api }`, JSON) is text.
pub fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        rest = &rest[i + 1..];
        let end = rest
            .find(|c: char| {
                !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | ':'))
            })
            .unwrap_or(rest.len());
        if end > 0 && rest[end..].starts_with('}') {
            out.push(&rest[..end]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_with_or_without_a_transport() {
        assert_eq!(
            "6379".parse::<NodePort>().unwrap(),
            NodePort {
                transport: Transport::Tcp,
                port: 6379
            }
        );
        assert_eq!(
            "udp/4433".parse::<NodePort>().unwrap().transport,
            Transport::Udp
        );
        for bad in ["0", "sctp/1", "tcp/70000", "x"] {
            let e = bad.parse::<NodePort>().unwrap_err();
            assert!(e.contains("tcp/6379"), "{e}");
        }
    }

    #[test]
    fn only_words_in_braces_are_placeholders() {
        assert_eq!(
            placeholders("bind {addr}:80\nacl x { path_beg /api }\n{node:redis} {}"),
            ["addr", "node:redis"]
        );
        assert_eq!(placeholders("{\"a\": 1}"), Vec::<&str>::new());
    }
}
