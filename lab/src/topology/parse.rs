//! Strict parsing of topology files, reporting every problem at once.
//!
//! The file is loaded into a YAML tree that keeps each node's line (marked-yaml; a serde
//! deserializer such as serde_yaml_ng stops at the first error and keeps no positions).
//! Each section is then checked field by field: every field of a section is
//! deserialized on its own, so two mistakes in one profile are both reported, and a
//! section is built only from the fields that passed. The checks that span fields or
//! sections run last. Every [`Diagnostic`] names the file, line, column, field, what is
//! wrong and what would be valid.
//!
//! Profiles are resolved here, from the fields as written to one link per direction
//! ([`Profile`]): `direction` picks the directions the profile's own fields shape, and
//! `up:`/`down:` fields replace them for their direction. Link checks run on the
//! resolved links and point at the field that was written.

use super::expect::{self, Expect};
use super::model::*;
use crate::approach::Approach;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoaderOptions, Node};
use serde::de::DeserializeOwned;
use std::fmt;

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `profiles.degraded.loss`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.field, self.message
            )
        }
    }
}

/// Every problem found in a topology file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the topology:",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.0 {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

const TOP_FIELDS: &[&str] = &[
    "name",
    "approaches",
    "llm",
    "profiles",
    "workload",
    "shaping",
    "expect",
    "ipv6",
    "transport",
];

/// A line and column.
type At = (usize, usize);

struct Ctx<'a> {
    file: &'a str,
    out: Vec<Diagnostic>,
    /// Approach entries with a browser client: their field path, position and name,
    /// checked against the workload once it is read.
    browsers: Vec<(String, At, String)>,
}

fn pos(node: &Node) -> At {
    node.span()
        .start()
        .map_or((1, 1), |m| (m.line(), m.column()))
}

fn key_pos(key: &MarkedScalarNode) -> At {
    key.span()
        .start()
        .map_or((1, 1), |m| (m.line(), m.column()))
}

/// A field as written: its key, value and dotted path.
#[derive(Clone)]
struct Field<'a> {
    key: &'a MarkedScalarNode,
    value: &'a Node,
    path: String,
}

impl Field<'_> {
    fn name(&self) -> &str {
        self.key.as_str()
    }
    fn at(&self) -> At {
        key_pos(self.key)
    }
}

impl Ctx<'_> {
    fn push(&mut self, at: At, field: &str, message: impl Into<String>) {
        let d = Diagnostic {
            file: self.file.to_owned(),
            line: at.0,
            column: at.1,
            field: field.to_owned(),
            message: message.into(),
        };
        // A link check on a field that both directions inherit fires twice.
        if !self.out.contains(&d) {
            self.out.push(d);
        }
    }

    /// Deserializes one node, recording its error. `also` lists keys the caller accepts
    /// besides `T`'s fields, for the list of valid fields in an "unknown field" message.
    fn de_with<T: DeserializeOwned>(
        &mut self,
        node: &Node,
        field: &str,
        also: &[&str],
    ) -> Option<T> {
        match marked_yaml::from_node::<T>(node) {
            Ok(v) => Some(v),
            Err(e) => {
                let sub = e
                    .path()
                    .filter(|p| !p.is_empty() && *p != ".")
                    .map(str::to_owned);
                let inner = e.into_inner();
                let at = inner
                    .start_mark()
                    .map_or(pos(node), |m| (m.line(), m.column()));
                let field = match sub {
                    Some(s) => format!("{field}.{s}"),
                    None => field.to_owned(),
                };
                self.push(at, &field, describe(&inner, also));
                None
            }
        }
    }

    fn de<T: DeserializeOwned>(&mut self, node: &Node, field: &str) -> Option<T> {
        self.de_with(node, field, &[])
    }

    /// Checks a section of optional fields one field at a time: each bad field is
    /// reported, and the good ones are returned. Keys in `also` are returned unchecked,
    /// for the caller. None if the node is not a mapping.
    fn fields<'n, T: DeserializeOwned>(
        &mut self,
        node: &'n Node,
        path: &str,
        also: &[&str],
    ) -> Option<(Vec<Field<'n>>, Vec<Field<'n>>)> {
        let Some(map) = node.as_mapping() else {
            self.push(pos(node), path, "expected a mapping of fields");
            return None;
        };
        let (mut good, mut extra) = (Vec::new(), Vec::new());
        for (k, v) in map.iter() {
            let f = Field {
                key: k,
                value: v,
                path: format!("{path}.{}", k.as_str()),
            };
            if also.contains(&k.as_str()) {
                extra.push(f);
                continue;
            }
            let one = mapping(node, std::slice::from_ref(&f));
            if self.de_with::<T>(&one, path, also).is_some() {
                good.push(f);
            }
        }
        Some((good, extra))
    }

    /// A section of optional fields, built from the fields that pass; every bad field is
    /// reported. None if the node is not a mapping.
    fn section<T: DeserializeOwned + Default>(&mut self, node: &Node, path: &str) -> Option<T> {
        let (good, _) = self.fields::<T>(node, path, &[])?;
        Some(build(node, &good))
    }
}

/// A mapping node of `fields`, at `at`'s position.
fn mapping(at: &Node, fields: &[Field<'_>]) -> Node {
    let mut m = MarkedMappingNode::new_empty(*at.span());
    for f in fields {
        m.insert(f.key.clone(), f.value.clone());
    }
    Node::Mapping(m)
}

/// Builds `T` from fields that each deserialized on their own.
fn build<T: DeserializeOwned + Default>(at: &Node, fields: &[Field<'_>]) -> T {
    // Each field passed alone and none depends on another, so this cannot fail; the
    // default is a fallback that no test has seen.
    marked_yaml::from_node(&mapping(at, fields)).unwrap_or_default()
}

fn describe(e: &marked_yaml::Error, also: &[&str]) -> String {
    use marked_yaml::Error::*;
    match e {
        UnknownFieldError(name, valid, _) => {
            let all: Vec<&str> = valid.iter().copied().chain(also.iter().copied()).collect();
            format!("unknown field '{name}'; valid fields: {}", all.join(", "))
        }
        NotBoolean(_) => "expected true or false".into(),
        IntegerParseFailure(err, _) => format!("expected a whole number ({err})"),
        FloatParseFailure(err, _) => format!("expected a number ({err})"),
        Other(msg, _) => msg
            .replace("unknown variant", "unknown value")
            .replace("expected one of", "valid:")
            .replace(", expected ", ", valid: "),
    }
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.ends_with('-')
}

/// The line and column of the node at `path` (keys from the top), if the text is YAML
/// and has it.
pub fn position(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut node = marked_yaml::parse_yaml(0, text).ok()?;
    for key in path {
        node = node.as_mapping()?.get_node(key)?.clone();
    }
    Some(pos(&node))
}

/// Longest lab name. Names appear in namespace names (`lab-<name>-c<i>-server`), which
/// stay readable in `ip netns list`; interface names inside namespaces do not carry it.
pub const MAX_NAME: usize = 24;
/// Longest profile name.
pub const MAX_PROFILE: usize = 24;

/// What the YAML loader refuses without saying where in the topology: a second document,
/// a tag, a duplicate key. Found by walking the parser's events with the field path at
/// hand; empty if the text does not even scan (the loader then says why).
fn structure(text: &str) -> Vec<(At, String, String)> {
    use yaml_rust2::parser::{Event, Parser};
    enum Frame {
        Map {
            path: String,
            seen: Vec<(String, usize)>,
            key: Option<String>,
        },
        Seq {
            path: String,
            next: usize,
        },
    }
    let mut out = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut documents = 0;
    let mut parser = Parser::new(text.chars());
    let join = |base: &str, key: &str| {
        if base.is_empty() {
            key.to_owned()
        } else {
            format!("{base}.{key}")
        }
    };
    loop {
        let Ok((ev, mark)) = parser.next_token() else {
            return out;
        };
        let at = (mark.line(), mark.col() + 1);
        // The path of the value this event is, if it is a value.
        let value_path = |stack: &mut Vec<Frame>| -> String {
            match stack.last_mut() {
                Some(Frame::Map { path, key, .. }) => {
                    let k = key.take().unwrap_or_default();
                    join(path, &k)
                }
                Some(Frame::Seq { path, next }) => {
                    *next += 1;
                    format!("{path}[{}]", *next - 1)
                }
                None => String::new(),
            }
        };
        let tagged = |out: &mut Vec<_>, tag: &Option<yaml_rust2::parser::Tag>, path: &str| {
            if let Some(t) = tag {
                let handle = match t.handle.as_str() {
                    "tag:yaml.org,2002:" => "!!",
                    h => h,
                };
                out.push((
                    at,
                    path.to_owned(),
                    format!(
                        "YAML tags such as `{handle}{}` are not read; write the value alone",
                        t.suffix
                    ),
                ));
            }
        };
        match ev {
            Event::StreamEnd => return out,
            Event::DocumentStart => {
                documents += 1;
                if documents == 2 {
                    out.push((
                        at,
                        String::new(),
                        "a second YAML document starts here, and lab reads one; remove the `---` and what follows, or put it in a file of its own".to_owned(),
                    ));
                }
            }
            Event::Scalar(value, _, _, tag) => {
                let is_key = matches!(stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key {
                    if let Some(Frame::Map { path, seen, key }) = stack.last_mut() {
                        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == value) {
                            out.push((
                                at,
                                join(path, &value),
                                format!(
                                    "`{value}` is given twice (first on line {first}); remove one"
                                ),
                            ));
                        }
                        seen.push((value.clone(), at.0));
                        let p = join(path, &value);
                        tagged(&mut out, &tag, &p);
                        *key = Some(value);
                    }
                } else {
                    let p = value_path(&mut stack);
                    tagged(&mut out, &tag, &p);
                }
            }
            Event::MappingStart(_, tag) => {
                let p = value_path(&mut stack);
                tagged(&mut out, &tag, &p);
                stack.push(Frame::Map {
                    path: p,
                    seen: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceStart(_, tag) => {
                let p = value_path(&mut stack);
                tagged(&mut out, &tag, &p);
                stack.push(Frame::Seq { path: p, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
}

/// Parses and checks a topology. `file` is used in messages only.
pub fn parse(file: &str, text: &str) -> Result<Topology, Diagnostics> {
    let mut cx = Ctx {
        file,
        out: Vec::new(),
        browsers: Vec::new(),
    };
    let problems = structure(text);
    if !problems.is_empty() {
        for (at, field, message) in problems {
            cx.push(at, &field, message);
        }
        return Err(Diagnostics(cx.out));
    }
    let root = match marked_yaml::parse_yaml_with_options(
        0,
        text,
        LoaderOptions::default().error_on_duplicate_keys(true),
    ) {
        Ok(n) => n,
        Err(e) => {
            let msg = e.to_string();
            // The loader's message starts with "line:column: " where it knows them.
            let (at, rest) = match msg.split_once(": ") {
                Some((lc, rest)) if lc.split(':').all(|p| p.parse::<usize>().is_ok()) => {
                    let mut it = lc.split(':').map(|p| p.parse::<usize>().unwrap_or(1));
                    (
                        (it.next().unwrap_or(1), it.next().unwrap_or(1)),
                        rest.to_owned(),
                    )
                }
                _ => ((1, 1), msg.clone()),
            };
            cx.push(at, "", format!("not a valid topology file: {rest}"));
            return Err(Diagnostics(cx.out));
        }
    };
    let Some(map) = root.as_mapping() else {
        cx.push(
            pos(&root),
            "",
            "a topology is a mapping with at least `name` and `profiles`",
        );
        return Err(Diagnostics(cx.out));
    };

    let mut name = None;
    let mut approaches = None;
    let mut llm = None;
    let mut profiles: Option<Vec<(String, Profile)>> = None;
    let mut workload = None;
    let mut shaping = None;
    let mut expect_texts = None;
    let mut ipv6 = None;
    let mut transport = None;
    let mut name_at = (1, 1);
    let mut approaches_at = None;
    let mut profiles_at = None;

    for (k, v) in map.iter() {
        match k.as_str() {
            "name" => {
                name_at = pos(v);
                name = cx.de::<String>(v, "name");
            }
            "approaches" => {
                approaches_at = Some(key_pos(k));
                match v.as_sequence() {
                    Some(seq) => {
                        let mut list = Vec::new();
                        for (i, item) in seq.iter().enumerate() {
                            let field = format!("approaches[{i}]");
                            let entry = if item.as_mapping().is_some() {
                                parse_custom(&mut cx, item, &field)
                            } else {
                                cx.de::<Approach>(item, &field).map(CellApproach::builtin)
                            };
                            if let Some(a) = entry {
                                list.push((a, pos(item)));
                            }
                        }
                        approaches = Some(list);
                    }
                    None => cx.push(
                        pos(v),
                        "approaches",
                        format!("expected a list, e.g. [{}]", crate::approach::names()),
                    ),
                }
            }
            "llm" => llm = parse_llm(&mut cx, v),
            "profiles" => {
                profiles_at = Some(key_pos(k));
                profiles = parse_profiles(&mut cx, v);
            }
            "workload" => workload = parse_workload(&mut cx, v),
            "shaping" => {
                shaping = cx.section::<Shaping>(v, "shaping");
                if let Some(n) = shaping.as_ref().and_then(|s: &Shaping| s.ring_frames)
                    && !crate::wire::ring::valid_frames(n)
                {
                    let at = v
                        .as_mapping()
                        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == "ring_frames"))
                        .map_or(pos(v), |(_, x)| pos(x));
                    cx.push(
                        at,
                        "shaping.ring_frames",
                        format!(
                            "{n} slots: want a power of two from {} to {}, e.g. 32768 (2 KiB a slot, two rings a cell)",
                            crate::wire::ring::MIN_FRAMES,
                            crate::wire::ring::MAX_FRAMES
                        ),
                    );
                }
            }
            "expect" => match v.as_sequence() {
                Some(seq) => {
                    let mut list = Vec::new();
                    for (i, item) in seq.iter().enumerate() {
                        if let Some(s) = cx.de::<String>(item, &format!("expect[{i}]")) {
                            if s.trim().is_empty() {
                                cx.push(pos(item), &format!("expect[{i}]"), "empty expectation");
                            } else {
                                list.push((s, pos(item), i));
                            }
                        }
                    }
                    expect_texts = Some(list);
                }
                None => cx.push(pos(v), "expect", "expected a list of expressions"),
            },
            "ipv6" => ipv6 = cx.de::<bool>(v, "ipv6"),
            "transport" => transport = parse_transport(&mut cx, v, "transport"),
            other => cx.push(
                key_pos(k),
                other,
                format!(
                    "unknown field '{other}'; valid fields: {}",
                    TOP_FIELDS.join(", ")
                ),
            ),
        }
    }

    match &name {
        None if !map.contains_key("name") => {
            cx.push((1, 1), "name", "missing: every topology needs a `name`")
        }
        Some(n) if !is_name(n, MAX_NAME) => cx.push(
            name_at,
            "name",
            format!(
                "invalid name '{n}': use 1 to {MAX_NAME} characters of a-z, 0-9 and '-', starting with a letter"
            ),
        ),
        _ => {}
    }
    if !map.contains_key("profiles") {
        cx.push(
            (1, 1),
            "profiles",
            "missing: add at least one profile, e.g. `profiles: { baseline: {} }`",
        );
    }
    let approaches_list: Vec<CellApproach> = match approaches {
        Some(list) => {
            let mut seen: Vec<CellApproach> = Vec::new();
            for (a, at) in list.iter().cloned() {
                if seen.iter().any(|s| s.name == a.name) {
                    cx.push(at, "approaches", format!("'{}' is listed twice", a.name));
                }
                seen.push(a);
            }
            if list.is_empty() && map.contains_key("approaches") {
                cx.push(
                    approaches_at.unwrap_or((1, 1)),
                    "approaches",
                    format!("empty: list at least one of {}", crate::approach::names()),
                );
            }
            seen
        }
        None => all_approaches(),
    };
    let nprofiles = profiles.as_ref().map_or(0, Vec::len);
    if nprofiles * approaches_list.len() > MAX_CELLS {
        let lines = |at: Option<At>, what: &str| match at {
            Some((l, _)) => format!("`{what}` at line {l}"),
            None => format!("`{what}` (all {} by default)", approaches_list.len()),
        };
        cx.push(
            profiles_at.unwrap_or((1, 1)),
            "profiles",
            format!(
                "{nprofiles} profiles x {} approaches is {} cells, over the limit of {MAX_CELLS} (one /24 of 198.18.0.0/16 each); split the topology: {} and {}",
                approaches_list.len(),
                nprofiles * approaches_list.len(),
                lines(profiles_at, "profiles"),
                lines(approaches_at, "approaches"),
            ),
        );
    }
    // A load test's answer length and pace are the embedded mock's.
    if let (Some(l), Some(llm)) = (
        workload.as_ref().and_then(|w: &Workload| w.load.as_ref()),
        &llm,
    ) && llm.url.is_some()
        && (l.tokens.is_some() || l.tbt.is_some())
    {
        cx.push(
            (1, 1),
            "workload.load",
            "`tokens` and `tbt` set the embedded mock's answers; with `llm.url` the upstream answers as it does: drop them, or the url",
        );
    }
    // A browser runs one prompt at a time, and picks its own HTTP connections.
    if let Some(w) = &workload {
        for (field, at, name) in std::mem::take(&mut cx.browsers) {
            let Some(a) = approaches_list.iter().find(|a| a.name == name) else {
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
    // Expectations name approaches and profiles of this topology.
    let names: Vec<String> = approaches_list.iter().map(|a| a.name.clone()).collect();
    let profile_names: Vec<String> = profiles.iter().flatten().map(|(n, _)| n.clone()).collect();
    let mut expects: Vec<Expect> = Vec::new();
    for (text, at, i) in expect_texts.iter().flatten() {
        match expect::parse(text, &names, &profile_names) {
            // Whether there are enough runs for a confidence is `lab run`'s to say:
            // `--runs` may set them.
            Ok(e) => expects.push(e),
            Err(msg) => cx.push(*at, &format!("expect[{i}]"), msg),
        }
    }

    if cx.out.is_empty() {
        Ok(Topology {
            name: name.unwrap_or_default(),
            approaches: approaches_list,
            llm: llm.unwrap_or_default(),
            profiles: profiles.unwrap_or_default(),
            workload: workload.unwrap_or_default(),
            shaping: shaping.unwrap_or_default(),
            expect: expects,
            ipv6: ipv6.unwrap_or(false),
            transport: transport.unwrap_or_default(),
        })
    } else {
        cx.out.sort_by_key(|d| (d.line, d.column));
        Err(Diagnostics(cx.out))
    }
}

const CUSTOM_FIELDS: [&str; 7] = [
    "name",
    "protocol",
    "command",
    "port",
    "transport",
    "connection",
    "client",
];

/// An approach entry that is a mapping: one of lab's own with transport settings of its
/// own, a variant of one under a name of its own, or a server of the user's own.
fn parse_custom(cx: &mut Ctx<'_>, v: &Node, path: &str) -> Option<CellApproach> {
    let map = v.as_mapping()?;
    let (mut name, mut protocol, mut command, mut port, mut transport) =
        (None, None, None, None, None);
    let mut connection = None;
    let mut client = None;
    let mut builtin_name = None;
    let mut ok = true;
    for (k, val) in map.iter() {
        let field = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "name" => {
                if let Some(n) = cx.de::<String>(val, &field) {
                    if let Ok(a) = n.parse::<Approach>() {
                        builtin_name = Some((a, pos(val)));
                        name = Some(n);
                    } else if !is_name(&n, MAX_PROFILE) {
                        cx.push(
                            pos(val),
                            &field,
                            format!(
                                "invalid name '{n}': use 1 to {MAX_PROFILE} characters of a-z, 0-9 and '-', starting with a letter"
                            ),
                        );
                        ok = false;
                    } else {
                        name = Some(n);
                    }
                } else {
                    ok = false;
                }
            }
            "protocol" => {
                protocol = cx.de::<Approach>(val, &field);
                ok &= protocol.is_some();
            }
            "command" => {
                ok = false;
                if let Some(argv) = cx.de::<Vec<String>>(val, &field) {
                    if argv.is_empty() || argv[0].trim().is_empty() {
                        cx.push(
                            pos(val),
                            &field,
                            "empty: give the program and its arguments, e.g. [my-server, --listen, \"{listen}\"]",
                        );
                    } else if let Err(msg) = check_placeholders(&argv) {
                        cx.push(pos(val), &field, msg);
                    } else {
                        command = Some((argv, pos(val)));
                        ok = true;
                    }
                }
            }
            "port" => match cx.de::<u64>(val, &field) {
                Some(p @ 1..=65535) => port = Some((p as u16, key_pos(k))),
                Some(p) => {
                    cx.push(
                        pos(val),
                        &field,
                        format!("port {p} is out of range; a port is 1 to 65535"),
                    );
                    ok = false;
                }
                None => ok = false,
            },
            "transport" => {
                transport = parse_transport(cx, val, &field);
                ok &= transport.is_some();
            }
            "connection" => {
                connection = cx.de::<Connection>(val, &field);
                ok &= connection.is_some();
            }
            "client" => {
                client = cx.de::<ClientKind>(val, &field).map(|c| (c, pos(val)));
                ok &= client.is_some();
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
                ok = false;
            }
        }
    }
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
    let name = name?;
    if let Some((a, at)) = builtin_name {
        // One of lab's own, with settings of its own.
        if command.is_some() || protocol.is_some_and(|p| p != a) {
            cx.push(
                at,
                &format!("{path}.name"),
                format!(
                    "'{name}' is one of lab's own approaches; give your server a name of its own"
                ),
            );
            return None;
        }
        if let Some((_, at)) = port {
            return refuse_port(cx, at, path);
        }
        let client = check_client(cx, client, a, path, &name)?;
        return ok.then(|| CellApproach {
            transport,
            connection,
            client,
            ..CellApproach::builtin(a)
        });
    }
    let Some(protocol) = protocol else {
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
    if !ok {
        return None;
    }
    let server = match command {
        Some((argv, _)) => ServerSpec::Command {
            argv,
            port: port.map_or(protocol.port, |p| p.0),
        },
        None => {
            if let Some((_, at)) = port {
                return refuse_port(cx, at, path);
            }
            ServerSpec::Builtin
        }
    };
    let client = check_client(cx, client, protocol, path, &name)?;
    Some(CellApproach {
        name,
        protocol,
        server,
        transport,
        connection,
        client,
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

/// The largest QUIC max_ack_delay: 2^14 ms (RFC 9000 18.2).
const MAX_ACK_DELAY_MS: u128 = 1 << 14;

/// A `transport:` section (the topology's, or an approach's), with its values checked.
fn parse_transport(cx: &mut Ctx<'_>, v: &Node, path: &str) -> Option<TransportSpec> {
    let Some(map) = v.as_mapping() else {
        cx.push(
            pos(v),
            path,
            "expected a mapping with `quic:` and/or `tcp:`",
        );
        return None;
    };
    // Each field of TransportSpec is a section of its own, checked below.
    let mut extra = Vec::new();
    for (k, val) in map.iter() {
        let f = Field {
            key: k,
            value: val,
            path: format!("{path}.{}", k.as_str()),
        };
        use lab_codec::transport::{QUIC_SECTION, TCP_SECTION};
        match k.as_str() {
            QUIC_SECTION | TCP_SECTION => extra.push(f),
            other => cx.push(
                key_pos(k),
                &f.path,
                format!("unknown field '{other}'; valid fields: quic, tcp"),
            ),
        }
    }
    let mut spec = TransportSpec::default();
    let mut ok = true;
    for f in &extra {
        // Where a field of this section was written.
        let at = |name: &str| -> At {
            f.value
                .as_mapping()
                .and_then(|m| m.iter().find(|(k, _)| k.as_str() == name))
                .map_or(pos(f.value), |(k, _)| key_pos(k))
        };
        match f.name() {
            lab_codec::transport::QUIC_SECTION => {
                let before = cx.out.len();
                // `ack_frequency` is `true`/`false` or a mapping: read by its form.
                let Some((good, af)) = cx.fields::<QuicSpec>(f.value, &f.path, &["ack_frequency"])
                else {
                    ok = false;
                    continue;
                };
                let mut q: QuicSpec = build(f.value, &good);
                for a in &af {
                    q.ack_frequency = if a.value.as_mapping().is_some() {
                        cx.section::<AckFrequencyFields>(a.value, &a.path)
                            .map(AckFrequencySpec::Set)
                    } else {
                        cx.de_with::<bool>(a.value, &a.path, &[])
                            .map(AckFrequencySpec::On)
                    };
                }
                let field = |n: &str| format!("{}.{n}", f.path);
                if q.cid_length.is_some_and(|n| n > 20) {
                    let a = at("cid_length");
                    cx.push(
                        a,
                        &field("cid_length"),
                        "a connection ID is 0 to 20 bytes (RFC 9000)",
                    );
                }
                let delays = [
                    ("max_ack_delay", q.max_ack_delay),
                    (
                        "ack_frequency.max_ack_delay",
                        match &q.ack_frequency {
                            Some(AckFrequencySpec::Set(s)) => s.max_ack_delay,
                            _ => None,
                        },
                    ),
                ];
                for (n, d) in delays {
                    if let Some(d) = d
                        && (d.0.as_millis() >= MAX_ACK_DELAY_MS || d.0.as_millis() == 0)
                    {
                        let a = at(n.split('.').next().unwrap_or(n));
                        cx.push(
                            a,
                            &field(n),
                            format!(
                                "'{d}': max_ack_delay is 1ms to {}ms (RFC 9000)",
                                MAX_ACK_DELAY_MS - 1
                            ),
                        );
                    }
                }
                if let (Some(d), Some(AckFrequencySpec::Set(s))) =
                    (q.max_ack_delay, &q.ack_frequency)
                    && s.max_ack_delay.is_some_and(|m| m != d)
                {
                    let a = at("max_ack_delay");
                    cx.push(
                        a,
                        &field("max_ack_delay"),
                        "differs from ack_frequency.max_ack_delay; give it once",
                    );
                }
                if let Some(AckFrequencySpec::Set(s)) = &q.ack_frequency {
                    for (n, v) in [("threshold", s.threshold), ("reordering", s.reordering)] {
                        if v.is_some_and(|v| v > lab_codec::transport::VARINT_MAX) {
                            let a = at("ack_frequency");
                            cx.push(a, &field(&format!("ack_frequency.{n}")), "over 2^62-1");
                        }
                    }
                }
                if q.initial_rtt.is_some_and(|d| d.0.as_millis() == 0) {
                    let a = at("initial_rtt");
                    cx.push(a, &field("initial_rtt"), "must be 1ms or more");
                }
                for (n, w) in [
                    ("stream_receive_window", q.stream_receive_window),
                    ("receive_window", q.receive_window),
                    ("send_window", q.send_window),
                ] {
                    if w.is_some_and(|w| w == 0 || w > lab_codec::transport::VARINT_MAX) {
                        let a = at(n);
                        cx.push(a, &field(n), "a window is 1 to 2^62-1 bytes");
                    }
                }
                for (n, b) in [
                    ("socket_receive_buffer", q.socket_receive_buffer),
                    ("socket_send_buffer", q.socket_send_buffer),
                ] {
                    if let Some(m) = buffer_problem(b) {
                        let a = at(n);
                        cx.push(a, &field(n), m);
                    }
                }
                ok &= cx.out.len() == before;
                spec.quic = Some(q);
            }
            lab_codec::transport::TCP_SECTION => {
                let Some(t) = cx.section::<TcpSpec>(f.value, &f.path) else {
                    ok = false;
                    continue;
                };
                let before = cx.out.len();
                if let Some(c) = &t.congestion
                    && (c.is_empty()
                        || c.len() > 15
                        || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                {
                    let a = at("congestion");
                    cx.push(
                        a,
                        &format!("{}.congestion", f.path),
                        format!(
                            "'{c}' is not a congestion controller's name (e.g. cubic, reno, bbr)"
                        ),
                    );
                }
                for (n, b) in [
                    ("socket_receive_buffer", t.socket_receive_buffer),
                    ("socket_send_buffer", t.socket_send_buffer),
                ] {
                    if let Some(m) = buffer_problem(b) {
                        let a = at(n);
                        cx.push(a, &format!("{}.{n}", f.path), m);
                    }
                }
                if t.initcwnd.is_some_and(|n| n == 0 || n > 1000) {
                    let a = at("initcwnd");
                    cx.push(
                        a,
                        &format!("{}.initcwnd", f.path),
                        "an initial window is 1 to 1000 segments",
                    );
                }
                ok &= cx.out.len() == before;
                spec.tcp = Some(t);
            }
            _ => {}
        }
    }
    ok.then_some(spec)
}

/// What is wrong with a socket buffer size, if anything.
fn buffer_problem(b: Option<u64>) -> Option<String> {
    let max = lab_codec::transport::SOCKET_BUFFER_MAX;
    b.filter(|&b| !(1024..=max).contains(&b))
        .map(|b| format!("{b} bytes: a socket buffer is 1024 to {max} bytes"))
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
            if !PLACEHOLDERS.iter().any(|(p, _)| *p == word) {
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

fn parse_llm(cx: &mut Ctx<'_>, v: &Node) -> Option<Llm> {
    let (good, extra) = cx.fields::<Llm>(v, "llm", &["mock"])?;
    let mut l: Llm = build(v, &good);
    for f in &extra {
        l.mock = cx.section::<MockSpec>(f.value, &f.path);
    }
    let at = pos(v);
    // Where a field's value was written, for problems with the value.
    let field_at = |name: &str| {
        good.iter()
            .chain(&extra)
            .find(|f| f.name() == name)
            .map_or(at, |f| pos(f.value))
    };
    if extra.iter().any(|f| f.name() == "mock") && good.iter().any(|f| f.name() == "url") {
        cx.push(
            field_at("url"),
            "llm",
            "give either `mock` or `url`, not both",
        );
    }
    if let Some(u) = &l.url {
        let at = field_at("url");
        match u.parse::<http::Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("http")
                    && url_port(&uri).is_some_and(|p| !matches!(p.parse::<u16>(), Ok(1..))) =>
            {
                cx.push(
                    at,
                    "llm.url",
                    format!(
                        "'{u}': port {} is out of range; a port is 1 to 65535",
                        url_port(&uri).unwrap_or_default()
                    ),
                );
            }
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                if !matches!(uri.path_and_query().map(|p| p.as_str()), None | Some("/")) {
                    cx.push(
                        at,
                        "llm.url",
                        format!(
                            "'{u}' has a path; give the server's base URL (lab relays TCP to its host and port, and the servers add /v1/...), e.g. http://127.0.0.1:11434"
                        ),
                    );
                }
            }
            Ok(uri) if uri.scheme_str() == Some("https") => cx.push(
                at,
                "llm.url",
                format!(
                    "'{u}': lab relays plain TCP to the upstream, so it must be http://; for an https upstream run a local forwarder and give its http:// address"
                ),
            ),
            _ => cx.push(
                at,
                "llm.url",
                format!("'{u}' is not an http URL with a host; e.g. http://127.0.0.1:11434"),
            ),
        }
    }
    if l.model.trim().is_empty() {
        cx.push(field_at("model"), "llm.model", "empty model name");
    }
    Some(l)
}

/// The port of a URL as written (`http::Uri` drops one that is not a u16).
fn url_port(uri: &http::Uri) -> Option<String> {
    let auth = uri.authority()?.as_str();
    let host_end = auth.rfind(']').unwrap_or(0);
    auth[host_end..].rsplit_once(':').map(|(_, p)| p.to_owned())
}

fn parse_workload(cx: &mut Ctx<'_>, v: &Node) -> Option<Workload> {
    let (good, extra) = cx.fields::<Workload>(v, "workload", &["load"])?;
    let mut w: Workload = build(v, &good);
    if let Some(f) = extra.first() {
        w.load = parse_load(cx, f.value);
        // What a prompt run does and a load test does not: refuse, rather than ignore.
        for (name, set) in [
            ("repeat", w.repeat != 1),
            ("concurrency", w.concurrency != 1),
            ("urgent", !w.urgent.is_empty()),
        ] {
            if set {
                cx.push(
                    good.iter()
                        .find(|g| g.name() == name)
                        .map_or(pos(v), Field::at),
                    &format!("workload.{name}"),
                    "has no meaning in a load test (workload.load): its levels say how many streams run at once",
                );
            }
        }
    }
    let at = |name: &str| {
        good.iter()
            .find(|f| f.name() == name)
            .map_or(pos(v), Field::at)
    };
    if w.repeat == 0 {
        cx.push(at("repeat"), "workload.repeat", "must be at least 1");
    }
    if !(1..=MAX_RUNS).contains(&w.runs) {
        cx.push(
            at("runs"),
            "workload.runs",
            format!("must be 1 to {MAX_RUNS}: runs of the whole matrix, e.g. 5"),
        );
    }
    if !(1..=MAX_CONCURRENCY).contains(&w.concurrency) {
        cx.push(
            at("concurrency"),
            "workload.concurrency",
            format!("must be 1 to {MAX_CONCURRENCY}"),
        );
    }
    if w.urgent.contains(&0) {
        cx.push(
            at("urgent"),
            "workload.urgent",
            "prompts are numbered from 1, as the prompt lines show them",
        );
    }
    if w.timeout.is_some_and(|t| t.0.is_zero()) {
        cx.push(
            at("timeout"),
            "workload.timeout",
            "must be above zero; it bounds each prompt, e.g. 30s",
        );
    }
    if w.prompts.trim().is_empty() {
        cx.push(
            at("prompts"),
            "workload.prompts",
            "empty; use `reference` or a prompts file",
        );
    }
    Some(w)
}

fn parse_load(cx: &mut Ctx<'_>, v: &Node) -> Option<LoadWorkload> {
    let (good, _) = cx.fields::<LoadWorkload>(v, "workload.load", &[])?;
    let l: LoadWorkload = build(v, &good);
    let at = |name: &str| {
        good.iter()
            .find(|f| f.name() == name)
            .map_or(pos(v), Field::at)
    };
    let path = |f: &str| format!("workload.load.{f}");
    if !good.iter().any(|f| f.name() == "levels") {
        cx.push(
            pos(v),
            "workload.load.levels",
            "missing: a load test needs its levels of concurrent streams, e.g. `levels: [100, 1000, 10000]`",
        );
    } else if l.levels.is_empty() {
        cx.push(
            at("levels"),
            &path("levels"),
            "empty: list at least one level, e.g. [100, 1000]",
        );
    }
    if l.levels.iter().any(|&n| !(1..=MAX_LEVEL).contains(&n)) {
        cx.push(
            at("levels"),
            &path("levels"),
            format!("each level is 1 to {MAX_LEVEL} concurrent streams"),
        );
    }
    if l.hold.is_some() && l.cycles.is_some() {
        cx.push(
            at("cycles"),
            &path("cycles"),
            "give either `hold` (time at each level) or `cycles` (streams per slot), not both",
        );
    }
    if l.hold.is_some_and(|h| h.0.is_zero()) {
        cx.push(
            at("hold"),
            &path("hold"),
            "must be above zero, e.g. 30s (or use `cycles`)",
        );
    }
    if l.cycles == Some(0) {
        cx.push(at("cycles"), &path("cycles"), "must be at least 1");
    }
    if l.tokens == Some(0) {
        cx.push(at("tokens"), &path("tokens"), "must be at least 1");
    }
    let (b0, b1) = l.backoff();
    if b0 > b1 {
        cx.push(
            at("backoff"),
            &path("backoff"),
            format!(
                "{} is over backoff_max ({}); the first wait cannot be longer than the longest",
                super::units::Dur(b0),
                super::units::Dur(b1)
            ),
        );
    }
    if l.per_connection.is_some_and(|n| !(1..=10_000).contains(&n)) {
        cx.push(
            at("per_connection"),
            &path("per_connection"),
            "must be 1 to 10000",
        );
    }
    let s = l.sample();
    if s < std::time::Duration::from_millis(50) || s > std::time::Duration::from_secs(60) {
        cx.push(at("sample"), &path("sample"), "must be 50ms to 60s");
    }
    Some(l)
}

fn parse_profiles(cx: &mut Ctx<'_>, v: &Node) -> Option<Vec<(String, Profile)>> {
    let Some(pm) = v.as_mapping() else {
        cx.push(
            pos(v),
            "profiles",
            "expected a mapping of profile names to settings, e.g. `degraded: { delay: 200ms, loss: 5% }`",
        );
        return None;
    };
    if pm.is_empty() {
        cx.push(
            pos(v),
            "profiles",
            "no profiles: add at least one, e.g. `baseline: {}`",
        );
    }
    let mut list = Vec::new();
    for (pk, pv) in pm.iter() {
        let pname = pk.as_str().to_owned();
        let path = format!("profiles.{pname}");
        if !is_name(&pname, MAX_PROFILE) {
            cx.push(
                key_pos(pk),
                &path,
                format!(
                    "invalid profile name '{pname}': use 1 to {MAX_PROFILE} characters of a-z, 0-9 and '-', starting with a letter"
                ),
            );
        }
        if let Some(p) = parse_profile(cx, pv, &path) {
            list.push((pname, p));
        }
    }
    Some(list)
}

/// One profile: its own link fields, `direction`, `up:` and `down:`, resolved per
/// direction.
fn parse_profile(cx: &mut Ctx<'_>, v: &Node, path: &str) -> Option<Profile> {
    let (own, extra) = cx.fields::<Link>(v, path, &PROFILE_KEYS)?;
    let mut direction = Direction::Both;
    let mut up: Option<(Field<'_>, Vec<Field<'_>>)> = None;
    let mut down: Option<(Field<'_>, Vec<Field<'_>>)> = None;
    for f in &extra {
        match f.name() {
            "direction" => {
                if let Some(d) = cx.de::<Direction>(f.value, &f.path) {
                    direction = d;
                }
            }
            side => {
                if let Some((good, _)) = cx.fields::<Link>(f.value, &f.path, &[]) {
                    let slot = if side == "up" { &mut up } else { &mut down };
                    *slot = Some((f.clone(), good));
                }
            }
        }
    }
    let dir_at = extra
        .iter()
        .find(|f| f.name() == "direction")
        .map(Field::at);
    match (direction, &up, &down) {
        (Direction::Up, _, Some((d, _))) => cx.push(
            dir_at.unwrap_or(d.at()),
            &format!("{path}.direction"),
            "`direction: up` leaves the down direction unshaped, but `down:` is given; remove one",
        ),
        (Direction::Down, Some((u, _)), _) => cx.push(
            dir_at.unwrap_or(u.at()),
            &format!("{path}.direction"),
            "`direction: down` leaves the up direction unshaped, but `up:` is given; remove one",
        ),
        _ => {}
    }
    let up_fields = resolve(&own, direction != Direction::Down, &up);
    let down_fields = resolve(&own, direction != Direction::Up, &down);
    check_link(cx, &up_fields);
    check_link(cx, &down_fields);
    // A trace given per direction goes to its direction.
    let (mut up, mut down): (Link, Link) = (build(v, &up_fields), build(v, &down_fields));
    up.trace = up
        .trace
        .and_then(|t| t.for_direction(true).map(TraceSpec::File));
    down.trace = down
        .trace
        .and_then(|t| t.for_direction(false).map(TraceSpec::File));
    Some(Profile { up, down })
}

/// A direction's fields: the profile's own if they shape it, each replaced by the same
/// field of the direction's own section.
fn resolve<'n>(
    own: &[Field<'n>],
    shaped: bool,
    side: &Option<(Field<'n>, Vec<Field<'n>>)>,
) -> Vec<Field<'n>> {
    let mut fields: Vec<Field<'n>> = if shaped { own.to_vec() } else { Vec::new() };
    for f in side.iter().flat_map(|(_, s)| s) {
        fields.retain(|o| o.name() != f.name());
        fields.push(f.clone());
    }
    fields
}

/// Checks that span a direction's fields; each problem points at a field as written.
fn check_link(cx: &mut Ctx<'_>, fields: &[Field<'_>]) {
    let get = |name: &str| fields.iter().find(|f| f.name() == name);
    let zero_delay = get("delay").is_none_or(|f| {
        marked_yaml::from_node::<super::units::Dur>(f.value).is_ok_and(|d| d.0.is_zero())
    });
    if let (Some(loss), Some(ge)) = (get("loss"), get("gilbert_elliott")) {
        let later = if ge.at() > loss.at() { ge } else { loss };
        cx.push(
            later.at(),
            &later.path,
            "give either `loss` (random) or `gilbert_elliott` (bursts), not both",
        );
    }
    if let (Some(rate), Some(trace)) = (get("rate"), get("trace")) {
        let later = if trace.at() > rate.at() { trace } else { rate };
        cx.push(
            later.at(),
            &later.path,
            "a trace sets the link's pace; give either `rate` or `trace`, not both",
        );
    }
    for (field, needs, message) in [
        ("distribution", "jitter", "has no effect without `jitter`"),
        ("overhead", "rate", "has no effect without `rate`"),
    ] {
        if let Some(f) = get(field)
            && get(needs).is_none()
        {
            cx.push(f.at(), &f.path, message);
        }
    }
    if let Some(f) = get("reorder")
        && zero_delay
    {
        cx.push(
            f.at(),
            &f.path,
            "reordering needs a `delay` to reorder against",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_settings_resolve_per_approach() {
        let t = parse(
            "t.yaml",
            r#"
name: t
approaches:
  - sse
  - { name: wt, transport: { quic: { cid_length: 4 } } }
  - { name: wt-af, protocol: wt, transport: { quic: { ack_frequency: true, max_ack_delay: 100ms, ecn: false } } }
  - { name: wt-flat, protocol: wt, transport: { quic: { priorities: false } } }
  - { name: sse-q, protocol: sse, transport: { tcp: { quickack: true, congestion: reno } } }
transport:
  quic: { congestion: bbr, initial_rtt: 100ms }
  tcp: { initcwnd: 20 }
profiles: { p: {} }
"#,
        )
        .unwrap();
        let plan = crate::plan::plan(&t).unwrap();
        let by = |n: &str| &plan.cells.iter().find(|c| c.name == n).unwrap().transport;
        use lab_codec::transport::{AckFrequency, QuicCongestion};
        // The topology's settings reach every cell; an approach's own go over them.
        assert_eq!(by("sse").tcp.initcwnd, Some(20));
        assert!(!by("sse").tcp.quickack);
        assert_eq!(by("sse-q").tcp.congestion.as_deref(), Some("reno"));
        assert!(by("sse-q").tcp.quickack);
        assert_eq!(by("sse-q").tcp.initcwnd, Some(20));
        assert_eq!(by("wt").quic.cid_length, 4);
        assert_eq!(by("wt").quic.congestion, QuicCongestion::Bbr);
        assert_eq!(by("wt").quic.initial_rtt_ms, 100);
        assert_eq!(by("wt-af").quic.cid_length, 8);
        assert!(!by("wt-af").quic.ecn);
        // Priorities are on unless a variant turns them off (the control).
        assert!(by("wt").quic.priorities && by("wt-af").quic.priorities);
        assert!(!by("wt-flat").quic.priorities);
        assert!(by("wt-flat").quic.describe().ends_with(", priorities off*"));
        assert_eq!(
            by("wt-af").quic.ack_frequency,
            Some(AckFrequency {
                threshold: 1,
                max_ack_delay_ms: Some(100),
                reordering: 2
            })
        );
        // Lab's servers and clients get them on their command lines.
        let wt_server = plan
            .processes
            .iter()
            .find(|p| p.role == "wt-af server")
            .unwrap();
        let json = &wt_server.argv[wt_server
            .argv
            .iter()
            .position(|a| a == "--transport")
            .unwrap()
            + 1];
        assert_eq!(
            &lab_codec::transport::Settings::from_json(json).unwrap(),
            by("wt-af")
        );
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let t = parse("t.yaml", "name: x\nprofiles:\n  baseline: {}\n").unwrap();
        assert_eq!(t.approaches, all_approaches());
        assert_eq!(t.llm.model, "gemma3:12b");
        assert_eq!(t.workload.repeat, 1);
        assert_eq!(t.shaping.backend, Backend::Auto);
        assert_eq!(t.profiles.len(), 1);
    }

    #[test]
    fn profile_units_are_typed_and_ordered() {
        let t = parse(
            "t.yaml",
            "name: x\nprofiles:\n  z-last: { delay: 200ms }\n  a-first: { loss: 5%, rate: 100kbit, limit: 64kb }\n",
        )
        .unwrap();
        let names: Vec<&str> = t.profiles.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["z-last", "a-first"], "file order is kept");
        let p = &t.profiles[1].1;
        assert_eq!(p.up.loss.unwrap().0, 0.05);
        assert_eq!(p.down.rate.unwrap().0, 100_000);
    }

    #[test]
    fn directions_resolve_from_the_fields_as_written() {
        let t = parse(
            "t.yaml",
            "name: x\nprofiles:\n  a: { delay: 20ms, loss: 1%, down: { loss: 2%, rate: 1mbit } }\n  b: { delay: 200ms, direction: up }\n  c: { direction: down, jitter: 5ms, delay: 10ms }\n",
        )
        .unwrap();
        let (a, b, c) = (&t.profiles[0].1, &t.profiles[1].1, &t.profiles[2].1);
        assert_eq!(a.up.loss.unwrap().0, 0.01);
        assert_eq!(a.down.loss.unwrap().0, 0.02);
        assert_eq!(a.down.delay, a.up.delay, "down keeps the profile's delay");
        assert!(a.up.rate.is_none() && a.down.rate.is_some());
        assert!(b.up.delay.is_some() && b.down == Link::default());
        assert_eq!(c.up, Link::default(), "direction: down leaves up unshaped");
        assert_eq!(c.down.jitter.unwrap().to_string(), "5ms");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_lines() {
        let text = "name: Bad_Name\nprofiles:\n  p1: { loss: 5 }\n  p2: { delay: 200 }\n  p3: { bogus: 1 }\nworkload: { connection: sometimes }\nextra: 1\n";
        let e = parse("bad.yaml", text).unwrap_err();
        let lines: Vec<String> = e.0.iter().map(|d| d.to_string()).collect();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines[0].starts_with("bad.yaml:1:"), "{}", lines[0]);
        assert!(lines[0].contains("name: invalid name 'Bad_Name'"));
        assert!(
            lines[1].starts_with("bad.yaml:3:")
                && lines[1].contains("profiles.p1.loss")
                && lines[1].contains("% sign"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("bad.yaml:4:")
                && lines[2].contains("profiles.p2.delay")
                && lines[2].contains("no unit"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("bad.yaml:5:") && lines[3].contains("unknown field 'bogus'"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with("bad.yaml:6:")
                && lines[4].contains("workload")
                && lines[4].contains("sometimes"),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].starts_with("bad.yaml:7:") && lines[5].contains("unknown field 'extra'"),
            "{}",
            lines[5]
        );
    }

    #[test]
    fn two_mistakes_in_one_section_are_both_reported() {
        let text = "name: x\nprofiles:\n  p: { delay: 200, loss: 5, up: { rate: 1kbps, jitter: x } }\nllm: { model: '', mock: { ttft: 1, tbt: 2 } }\nworkload: { repeat: 0, timeout: 3 }\n";
        let e = parse("t.yaml", text).unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "profiles.p.delay",
                "profiles.p.loss",
                "profiles.p.up.rate",
                "profiles.p.up.jitter",
                "llm.model",
                "llm.mock.ttft",
                "llm.mock.tbt",
                "workload.repeat",
                "workload.timeout",
            ],
            "{e}"
        );
    }
}
