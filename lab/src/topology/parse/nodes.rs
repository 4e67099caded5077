//! `nodes:`: each node's fields, its name, and the placeholders of its command,
//! environment and files; then the `{node:NAME}` of server commands, which name nodes.

use super::ctx::{At, Ctx, build, is_name, key_pos, pos};
use super::model::*;
use marked_yaml::Node;

/// `nodes:`: a mapping of node names to nodes, in file order.
pub(super) fn parse_nodes(cx: &mut Ctx<'_>, v: &Node) -> Option<Vec<(String, NodeSpec, At)>> {
    let Some(map) = v.as_mapping() else {
        cx.push(
            pos(v),
            "nodes",
            "expected a mapping of node names to nodes, e.g. `redis: { command: [redis-server, --bind, \"{addr}\"], ports: [6379] }`",
        );
        return None;
    };
    if map.len() > MAX_NODES {
        cx.push(
            pos(v),
            "nodes",
            format!(
                "{} nodes is over the limit of {MAX_NODES} (node k of cell i is at 198.19.(k+1).(i+1)); run fewer",
                map.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (k, node) in map.iter() {
        let name = k.as_str().to_owned();
        let path = format!("nodes.{name}");
        check_node_name(cx, &name, key_pos(k), &path);
        // Each field on its own, so that every bad one is reported.
        let Some((good, _)) = cx.fields::<NodeFields>(node, &path, &[]) else {
            continue;
        };
        let f: NodeFields = build(node, &good);
        let Some(command) = f.command else {
            // A command that did not read is reported already.
            if !node.as_mapping().is_some_and(|m| m.contains_key("command")) {
                cx.push(
                    pos(node),
                    &format!("{path}.command"),
                    "missing: give the program and its arguments, e.g. [redis-server, --bind, \"{addr}\"]",
                );
            }
            continue;
        };
        let spec = NodeSpec {
            command,
            ports: f.ports.unwrap_or_default(),
            scope: f.scope.unwrap_or_default(),
            env: f.env.unwrap_or_default(),
            files: f.files.unwrap_or_default(),
            kill_after: f.kill_after,
        };
        check_spec(cx, &spec, node, &path);
        out.push((name, spec, pos(node)));
    }
    Some(out)
}

/// A node's fields, each optional, for checking them one at a time.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeFields {
    command: Option<Vec<String>>,
    ports: Option<Vec<NodePort>>,
    scope: Option<NodeScope>,
    env: Option<std::collections::BTreeMap<String, String>>,
    files: Option<std::collections::BTreeMap<String, String>>,
    kill_after: Option<crate::topology::units::Dur>,
}

fn check_node_name(cx: &mut Ctx<'_>, name: &str, at: At, path: &str) {
    let cell_like =
        name.len() > 1 && name.starts_with('c') && name[1..].chars().all(|c| c.is_ascii_digit());
    if !is_name(name, MAX_NODE_NAME) {
        cx.push(
            at,
            path,
            format!(
                "invalid node name '{name}': use 1 to {MAX_NODE_NAME} characters of a-z, 0-9 and '-', starting with a letter"
            ),
        );
    } else if RESERVED_NODE_NAMES.contains(&name) || cell_like {
        cx.push(
            at,
            path,
            format!(
                "'{name}' names a part of the lab already ({}, or a cell id such as c0); give the node another name",
                RESERVED_NODE_NAMES.join(", ")
            ),
        );
    }
}

/// What a node's fields say on their own: a command, distinct ports, environment
/// names a shell takes, plain file names, and known placeholders.
fn check_spec(cx: &mut Ctx<'_>, spec: &NodeSpec, node: &Node, path: &str) {
    let at_of = |field: &str| {
        node.as_mapping()
            .and_then(|m| m.get_node(field))
            .map_or(pos(node), pos)
    };
    if spec.command.is_empty() || spec.command[0].trim().is_empty() {
        cx.push(
            at_of("command"),
            &format!("{path}.command"),
            "empty: give the program and its arguments, e.g. [redis-server, --bind, \"{addr}\", --port, \"6379\"]",
        );
    }
    let mut seen = Vec::new();
    for p in &spec.ports {
        if seen.contains(p) {
            cx.push(
                at_of("ports"),
                &format!("{path}.ports"),
                format!("{p} is listed twice; list each port once"),
            );
        }
        seen.push(*p);
    }
    for k in spec.env.keys() {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || k.starts_with("LAB_") {
            cx.push(
                at_of("env"),
                &format!("{path}.env.{k}"),
                format!(
                    "'{k}' cannot be set: use letters, digits and '_', not starting with a digit, and not LAB_ (lab's own)"
                ),
            );
        }
    }
    for (f, text) in &spec.files {
        if f.is_empty() || f.contains('/') || f.starts_with('.') || f.contains('\0') {
            cx.push(
                at_of("files"),
                &format!("{path}.files"),
                format!(
                    "'{f}' is not a plain file name: no '/', not starting with '.'; files go into the node's own directory"
                ),
            );
        }
        if text.len() > MAX_NODE_FILE {
            cx.push(
                at_of("files"),
                &format!("{path}.files.{f}"),
                format!("{} bytes is over the limit of {MAX_NODE_FILE}", text.len()),
            );
        }
    }
    let texts = spec
        .command
        .iter()
        .map(|a| ("command", a.as_str()))
        .chain(spec.env.values().map(|v| ("env", v.as_str())))
        .chain(spec.files.values().map(|v| ("files", v.as_str())));
    for (field, text) in texts {
        for word in placeholders(text) {
            if let Err(m) = known(word, spec.scope) {
                cx.push(at_of(field), &format!("{path}.{field}"), m);
            }
        }
    }
}

/// Whether `word` is a node placeholder that a node of `scope` has.
fn known(word: &str, scope: NodeScope) -> Result<(), String> {
    let valid = || {
        NODE_PLACEHOLDERS
            .iter()
            .map(|(p, _)| format!("{{{p}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if word.starts_with("node:") {
        return Ok(());
    }
    if !NODE_PLACEHOLDERS.iter().any(|(p, _)| *p == word) {
        return Err(format!(
            "unknown placeholder {{{word}}}; valid: {}",
            valid()
        ));
    }
    if scope == NodeScope::Shared && matches!(word, "cell" | "server") {
        return Err(format!(
            "{{{word}}} is a cell's, and a shared node belongs to no cell; use `scope: cell`, or leave it out"
        ));
    }
    Ok(())
}

/// Every `{node:NAME}` names a node that the text's owner can reach: a shared node can
/// name shared nodes only (it belongs to no cell); a cell node and a server, any.
pub(super) fn check_refs(
    cx: &mut Ctx<'_>,
    nodes: &[(String, NodeSpec, At)],
    approaches: &[(CellApproach, At)],
) {
    let scope_of = |n: &str| nodes.iter().find(|(m, ..)| m == n).map(|(_, s, _)| s.scope);
    let names: Vec<&str> = nodes.iter().map(|(n, ..)| n.as_str()).collect();
    let check = |cx: &mut Ctx<'_>, text: &str, shared: bool, at: At, field: &str| {
        for word in placeholders(text) {
            let Some(target) = word.strip_prefix("node:") else {
                continue;
            };
            match scope_of(target) {
                None => cx.push(
                    at,
                    field,
                    format!(
                        "{{{word}}} names no node; nodes: {}",
                        if names.is_empty() {
                            "none (add a `nodes:` section)".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                ),
                Some(NodeScope::Cell) if shared => cx.push(
                    at,
                    field,
                    format!(
                        "{{{word}}} is a cell node, and a shared node belongs to no cell; make {target} shared, or this node a cell node"
                    ),
                ),
                _ => {}
            }
        }
    };
    for (name, spec, at) in nodes {
        if approaches.iter().any(|(a, _)| &a.name == name) {
            cx.push(
                *at,
                &format!("nodes.{name}"),
                format!("'{name}' is an approach of this topology too; `lab shell {name}` could not tell them apart: rename the node"),
            );
        }
        let shared = spec.scope == NodeScope::Shared;
        let texts = spec
            .command
            .iter()
            .chain(spec.env.values())
            .chain(spec.files.values());
        for t in texts {
            check(cx, t, shared, *at, &format!("nodes.{name}"));
        }
    }
    for (i, (a, at)) in approaches.iter().enumerate() {
        if let ServerSpec::Command { argv, files, .. } = &a.server {
            for t in argv.iter().chain(files.iter().map(|(_, t)| t)) {
                check(cx, t, false, *at, &format!("approaches[{i}].command"));
            }
        }
    }
}
