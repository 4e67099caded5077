//! `approaches:`: lab's own by name, lab's own with settings of their own, variants under
//! names of their own, servers of the user's own, and who is the client.

use super::MAX_PROFILE;
use super::ctx::{At, Ctx, is_name, key_pos, pos};
use super::model::*;
use super::transport::parse_transport;
use crate::approach::Approach;
use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

const CUSTOM_FIELDS: [&str; 8] = [
    "name",
    "protocol",
    "command",
    "port",
    "files",
    "transport",
    "connection",
    "client",
];

/// The `approaches:` list as written, each entry read on its own; None (reported) if it
/// is not a list.
pub(super) fn parse_list(cx: &mut Ctx<'_>, v: &Node) -> Option<Vec<(CellApproach, At)>> {
    let Some(seq) = v.as_sequence() else {
        cx.push(
            pos(v),
            "approaches",
            format!("expected a list, e.g. [{}]", crate::approach::names()),
        );
        return None;
    };
    let mut list = Vec::new();
    for (i, item) in seq.iter().enumerate() {
        let field = format!("approaches[{i}]");
        let entry = if item.as_mapping().is_some() {
            parse_custom(cx, item, &field)
        } else {
            cx.de::<Approach>(item, &field).map(CellApproach::builtin)
        };
        if let Some(a) = entry {
            list.push((a, pos(item)));
        }
    }
    Some(list)
}

/// The approaches of the topology: the list as written with each name once (a name
/// given twice is reported), or all of lab's own when the file names none.
/// `written_empty`: the file has `approaches: []`.
pub(super) fn check_list(
    cx: &mut Ctx<'_>,
    list: Option<Vec<(CellApproach, At)>>,
    written_empty: bool,
    at: Option<At>,
) -> Vec<CellApproach> {
    let Some(list) = list else {
        return all_approaches();
    };
    let mut seen: Vec<CellApproach> = Vec::new();
    for (a, at) in list.iter().cloned() {
        if seen.iter().any(|s| s.name == a.name) {
            cx.push(at, "approaches", format!("'{}' is listed twice", a.name));
        }
        seen.push(a);
    }
    if list.is_empty() && written_empty {
        cx.push(
            at.unwrap_or((1, 1)),
            "approaches",
            format!("empty: list at least one of {}", crate::approach::names()),
        );
    }
    seen
}

/// A browser runs one prompt at a time, and picks its own HTTP connections: checks the
/// entries with a browser client against the workload.
pub(super) fn check_browsers(
    cx: &mut Ctx<'_>,
    approaches: &[CellApproach],
    workload: Option<&Workload>,
) {
    let Some(w) = workload else {
        return;
    };
    for (field, at, name) in std::mem::take(&mut cx.browsers) {
        let Some(a) = approaches.iter().find(|a| a.name == name) else {
            continue;
        };
        if w.concurrency > 1 {
            cx.push(
                at,
                &field,
                format!(
                    "the browser client runs one prompt at a time; workload.concurrency is {}",
                    w.concurrency
                ),
            );
        }
        if w.load.is_some() {
            cx.push(
                at,
                &field,
                "a load test's streams come from lab's load generator; drop the browser client or workload.load",
            );
        }
        let fresh = a.connection.unwrap_or(w.connection) == Connection::Fresh;
        if fresh && a.protocol.browser == Some(lab_clients::browser::Kind::Sse) {
            cx.push(
                at,
                &field,
                format!(
                    "a browser chooses its own HTTP connections, so '{name}' cannot take a fresh one per prompt: use connection: reuse"
                ),
            );
        }
    }
}

/// An approach entry's fields as written, each checked on its own.
#[derive(Default)]
struct Entry {
    name: Option<String>,
    /// The name, when it is one of lab's own approaches, and where it was written.
    builtin: Option<(Approach, At)>,
    protocol: Option<Approach>,
    command: Option<Vec<String>>,
    port: Option<(u16, At)>,
    files: Option<(Vec<(String, String)>, At)>,
    transport: Option<TransportSpec>,
    connection: Option<Connection>,
    client: Option<(ClientKind, At)>,
    /// Every field passed its own check.
    ok: bool,
}

/// An approach entry that is a mapping: one of lab's own with transport settings of its
/// own, a variant of one under a name of its own, or a server of the user's own.
fn parse_custom(cx: &mut Ctx<'_>, v: &Node, path: &str) -> Option<CellApproach> {
    let map = v.as_mapping()?;
    let e = read_entry(cx, map, path);
    if !map.contains_key("name") {
        cx.push(
            pos(v),
            path,
            format!(
                "missing `name`: one of lab's approaches ({}) to give it transport settings, or a name of its own with a `protocol`",
                crate::approach::names()
            ),
        );
        return None;
    }
    let name = e.name.clone()?;
    if let Some((a, at)) = e.builtin {
        return own_with_settings(cx, e, a, at, name, path);
    }
    let Some(protocol) = e.protocol else {
        if map.contains_key("protocol") {
            return None;
        }
        cx.push(
            pos(v),
            path,
            format!(
                "missing `protocol`: '{name}' is not one of lab's approaches, so say which protocol it speaks (one of {})",
                crate::approach::names()
            ),
        );
        return None;
    };
    if !e.ok {
        return None;
    }
    let server = match e.command {
        Some(argv) => ServerSpec::Command {
            argv,
            port: e.port.map_or(protocol.port, |p| p.0),
            files: e.files.map(|f| f.0).unwrap_or_default(),
        },
        None => {
            if let Some((_, at)) = e.port {
                return refuse_port(cx, at, path);
            }
            if let Some((_, at)) = e.files {
                return refuse_files(cx, at, path);
            }
            ServerSpec::Builtin
        }
    };
    let client = check_client(cx, e.client, protocol, path, &name)?;
    Some(CellApproach {
        name,
        protocol,
        server,
        transport: e.transport,
        connection: e.connection,
        client,
    })
}

/// Reads each field of an approach entry, reporting what is wrong with each.
fn read_entry(cx: &mut Ctx<'_>, map: &MarkedMappingNode, path: &str) -> Entry {
    let mut e = Entry {
        ok: true,
        ..Entry::default()
    };
    for (k, val) in map.iter() {
        let field = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "name" => entry_name(cx, val, &field, &mut e),
            "protocol" => {
                e.protocol = cx.de::<Approach>(val, &field);
                e.ok &= e.protocol.is_some();
            }
            "command" => {
                e.command = entry_command(cx, val, &field);
                e.ok = e.command.is_some();
            }
            "port" => match cx.de::<u64>(val, &field) {
                Some(p @ 1..=65535) => e.port = Some((p as u16, key_pos(k))),
                Some(p) => {
                    cx.push(
                        pos(val),
                        &field,
                        format!("port {p} is out of range; a port is 1 to 65535"),
                    );
                    e.ok = false;
                }
                None => e.ok = false,
            },
            "files" => {
                e.files = entry_files(cx, val, &field).map(|f| (f, key_pos(k)));
                e.ok &= e.files.is_some();
            }
            "transport" => {
                e.transport = parse_transport(cx, val, &field);
                e.ok &= e.transport.is_some();
            }
            "connection" => {
                e.connection = cx.de::<Connection>(val, &field);
                e.ok &= e.connection.is_some();
            }
            "client" => {
                e.client = cx.de::<ClientKind>(val, &field).map(|c| (c, pos(val)));
                e.ok &= e.client.is_some();
            }
            other => {
                cx.push(
                    key_pos(k),
                    &field,
                    format!(
                        "unknown field '{other}'; valid fields: {}",
                        CUSTOM_FIELDS.join(", ")
                    ),
                );
                e.ok = false;
            }
        }
    }
    e
}

/// An entry's `name`: one of lab's approaches, or a valid name of the user's own.
fn entry_name(cx: &mut Ctx<'_>, val: &Node, field: &str, e: &mut Entry) {
    let Some(n) = cx.de::<String>(val, field) else {
        e.ok = false;
        return;
    };
    if let Ok(a) = n.parse::<Approach>() {
        e.builtin = Some((a, pos(val)));
        e.name = Some(n);
    } else if !is_name(&n, MAX_PROFILE) {
        cx.push(
            pos(val),
            field,
            format!(
                "invalid name '{n}': use 1 to {MAX_PROFILE} characters of a-z, 0-9 and '-', starting with a letter"
            ),
        );
        e.ok = false;
    } else {
        e.name = Some(n);
    }
}

/// An entry's `command`: a program and its arguments, with lab's placeholders only.
fn entry_command(cx: &mut Ctx<'_>, val: &Node, field: &str) -> Option<Vec<String>> {
    let argv = cx.de::<Vec<String>>(val, field)?;
    if argv.is_empty() || argv[0].trim().is_empty() {
        cx.push(
            pos(val),
            field,
            "empty: give the program and its arguments, e.g. [my-server, --listen, \"{listen}\"]",
        );
        return None;
    }
    if let Err(msg) = check_placeholders(&argv) {
        cx.push(pos(val), field, msg);
        return None;
    }
    Some(argv)
}

/// One of lab's own approaches, with settings of its own.
fn own_with_settings(
    cx: &mut Ctx<'_>,
    e: Entry,
    a: Approach,
    at: At,
    name: String,
    path: &str,
) -> Option<CellApproach> {
    if e.command.is_some() || e.protocol.is_some_and(|p| p != a) {
        cx.push(
            at,
            &format!("{path}.name"),
            format!("'{name}' is one of lab's own approaches; give your server a name of its own"),
        );
        return None;
    }
    if let Some((_, at)) = e.port {
        return refuse_port(cx, at, path);
    }
    if let Some((_, at)) = e.files {
        return refuse_files(cx, at, path);
    }
    let client = check_client(cx, e.client, a, path, &name)?;
    e.ok.then(|| CellApproach {
        transport: e.transport,
        connection: e.connection,
        client,
        ..CellApproach::builtin(a)
    })
}

/// An approach entry's `client`, if the browser speaks its protocol.
fn check_client(
    cx: &mut Ctx<'_>,
    client: Option<(ClientKind, At)>,
    protocol: Approach,
    path: &str,
    name: &str,
) -> Option<ClientKind> {
    let Some((c, at)) = client else {
        return Some(ClientKind::Native);
    };
    let field = format!("{path}.client");
    if c.is_browser() {
        cx.browsers.push((field.clone(), at, name.to_owned()));
    }
    match (c, protocol.browser) {
        (ClientKind::Native, _) => Some(c),
        (_, None) => {
            let speaks: Vec<&str> = crate::approach::all()
                .filter(|a| a.browser.is_some())
                .map(|a| a.name)
                .collect();
            cx.push(
                at,
                &field,
                format!(
                    "the browser client does not speak {}; it speaks {}",
                    protocol.name,
                    speaks.join(", ")
                ),
            );
            None
        }
        (ClientKind::BrowserEventsource, Some(k)) if k != lab_clients::browser::Kind::Sse => {
            cx.push(
                at,
                &field,
                format!(
                    "browser-eventsource is for an SSE server; {} is not one: use browser",
                    protocol.name
                ),
            );
            None
        }
        _ => Some(c),
    }
}

/// A `port` on an entry that runs lab's own server.
fn refuse_port(cx: &mut Ctx<'_>, at: At, path: &str) -> Option<CellApproach> {
    cx.push(
        at,
        &format!("{path}.port"),
        "lab's own servers listen on their protocol's port; `port` is for a server of your own (with `command`)",
    );
    None
}

/// `files` on an entry that runs lab's own server.
fn refuse_files(cx: &mut Ctx<'_>, at: At, path: &str) -> Option<CellApproach> {
    cx.push(
        at,
        &format!("{path}.files"),
        "`files` is for a server of your own (with `command`); lab's own servers need none",
    );
    None
}

/// The names lab writes into a server's directory itself.
const OWN_FILES: [&str; 3] = ["cert.pem", "key.pem", "cert-key.pem"];

/// An entry's `files`: plain names, not lab's own, texts within the limit and with
/// known placeholders only.
fn entry_files(cx: &mut Ctx<'_>, val: &Node, field: &str) -> Option<Vec<(String, String)>> {
    let files = cx.de::<std::collections::BTreeMap<String, String>>(val, field)?;
    let mut ok = true;
    for (f, text) in &files {
        let plain = !f.is_empty() && !f.contains('/') && !f.starts_with('.') && !f.contains('\0');
        let problem = if !plain {
            Some(format!(
                "'{f}' is not a plain file name: no '/', not starting with '.'; files go into the server's own directory ({{dir}})"
            ))
        } else if OWN_FILES.contains(&f.as_str()) {
            Some(format!(
                "'{f}' is lab's own (it writes {}); name your file otherwise",
                OWN_FILES.join(", ")
            ))
        } else if text.len() > MAX_NODE_FILE {
            Some(format!(
                "'{f}' is {} bytes, over the limit of {MAX_NODE_FILE}",
                text.len()
            ))
        } else {
            placeholders(text)
                .into_iter()
                .find(|w| !w.starts_with("node:") && !PLACEHOLDERS.iter().any(|(p, _)| p == w))
                .map(|w| {
                    format!(
                        "'{f}': unknown placeholder {{{w}}}; valid: {}",
                        PLACEHOLDERS
                            .iter()
                            .map(|(p, _)| format!("{{{p}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        };
        if let Some(m) = problem {
            cx.push(pos(val), field, m);
            ok = false;
        }
    }
    ok.then(|| files.into_iter().collect())
}

/// Every `{...}` in a server command must be a placeholder lab fills in.
fn check_placeholders(argv: &[String]) -> Result<(), String> {
    for arg in argv {
        let mut rest = arg.as_str();
        while let Some(i) = rest.find('{') {
            let Some(j) = rest[i..].find('}') else {
                return Err(format!("'{arg}' has a `{{` without its `}}`"));
            };
            let word = &rest[i + 1..i + j];
            if !word.starts_with("node:") && !PLACEHOLDERS.iter().any(|(p, _)| *p == word) {
                let valid: Vec<String> = PLACEHOLDERS
                    .iter()
                    .map(|(p, _)| format!("{{{p}}}"))
                    .collect();
                return Err(format!(
                    "'{arg}': unknown placeholder {{{word}}}; valid: {}",
                    valid.join(", ")
                ));
            }
            rest = &rest[i + j + 1..];
        }
    }
    Ok(())
}
