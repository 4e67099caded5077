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
//!
//! [`parse`] goes in stages: load the YAML (`structure` first, for what the loader
//! would refuse without a position), read each top-level section (a module each:
//! `approaches`, `links` for profiles and shaping, `workload` for the workload and the
//! LLM, `transport`), then the checks that span sections, then the expectations. Every
//! stage reports into one collector (`ctx::Ctx`), so every problem in the file is
//! reported at once.

mod approaches;
mod ctx;
mod links;
mod nodes;
mod structure;
mod transport;
mod workload;

use super::expect::{self, Expect};
use super::model;
use ctx::{At, Ctx, is_name, key_pos, pos};
use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoaderOptions, Node};
use model::*;
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
    "nodes",
];

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

/// Parses and checks a topology. `file` is used in messages only.
pub fn parse(file: &str, text: &str) -> Result<Topology, Diagnostics> {
    let mut cx = Ctx {
        file,
        out: Vec::new(),
        browsers: Vec::new(),
    };
    let Some(root) = load(&mut cx, text) else {
        return Err(Diagnostics(cx.out));
    };
    let Some(map) = root.as_mapping() else {
        cx.push(
            pos(&root),
            "",
            "a topology is a mapping with at least `name` and `profiles`",
        );
        return Err(Diagnostics(cx.out));
    };
    let mut s = read_sections(&mut cx, map);
    check_name(&mut cx, &s, map);
    if !map.contains_key("profiles") {
        cx.push(
            (1, 1),
            "profiles",
            "missing: add at least one profile, e.g. `profiles: { baseline: {} }`",
        );
    }
    nodes::check_refs(
        &mut cx,
        s.nodes.as_deref().unwrap_or_default(),
        s.approaches.as_deref().unwrap_or_default(),
    );
    let nodes = s
        .nodes
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, spec, _)| (n, spec))
        .collect();
    // Written as an empty list (not a list whose every entry was wrong, each reported).
    let written_empty = map
        .get_node("approaches")
        .and_then(|n| n.as_sequence())
        .is_some_and(|l| l.is_empty());
    let approaches = approaches::check_list(&mut cx, s.approaches, written_empty, s.approaches_at);
    check_cells(
        &mut cx,
        &approaches,
        s.profiles.as_deref(),
        s.profiles_at,
        s.approaches_at,
    );
    check_load_upstream(&mut cx, s.workload.as_ref(), s.llm.as_ref());
    approaches::check_browsers(&mut cx, &approaches, s.workload.as_ref());
    let expects = read_expectations(&mut cx, &s.expect, &approaches, s.profiles.as_deref());
    if !cx.out.is_empty() {
        cx.out.sort_by_key(|d| (d.line, d.column));
        return Err(Diagnostics(cx.out));
    }
    Ok(Topology {
        name: s.name.unwrap_or_default(),
        approaches,
        llm: s.llm.unwrap_or_default(),
        profiles: s.profiles.unwrap_or_default(),
        workload: s.workload.unwrap_or_default(),
        shaping: s.shaping.unwrap_or_default(),
        expect: expects,
        ipv6: s.ipv6.unwrap_or(false),
        transport: s.transport.unwrap_or_default(),
        nodes,
    })
}

/// The YAML tree, or None with the problems reported: what the loader refuses without
/// a position (a second document, a tag, a duplicate key) is found first, on the
/// parser's events, so that it is reported with its field.
fn load(cx: &mut Ctx<'_>, text: &str) -> Option<Node> {
    let problems = structure::structure(text);
    if !problems.is_empty() {
        for (at, field, message) in problems {
            cx.push(at, &field, message);
        }
        return None;
    }
    match marked_yaml::parse_yaml_with_options(
        0,
        text,
        LoaderOptions::default().error_on_duplicate_keys(true),
    ) {
        Ok(n) => Some(n),
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
            None
        }
    }
}

/// The top-level sections as read, each on its own; None where a section is missing or
/// did not read.
#[derive(Default)]
struct Sections {
    name: Option<String>,
    name_at: At,
    approaches: Option<Vec<(CellApproach, At)>>,
    approaches_at: Option<At>,
    llm: Option<Llm>,
    profiles: Option<Vec<(String, Profile)>>,
    profiles_at: Option<At>,
    workload: Option<Workload>,
    shaping: Option<Shaping>,
    /// Each expectation's text, where it was written and its index.
    expect: Vec<(String, At, usize)>,
    ipv6: Option<bool>,
    transport: Option<TransportSpec>,
    nodes: Option<Vec<(String, NodeSpec, At)>>,
}

/// Reads every top-level section, each by its own module.
fn read_sections(cx: &mut Ctx<'_>, map: &MarkedMappingNode) -> Sections {
    let mut s = Sections {
        name_at: (1, 1),
        ..Sections::default()
    };
    for (k, v) in map.iter() {
        match k.as_str() {
            "name" => {
                s.name_at = pos(v);
                s.name = cx.de::<String>(v, "name");
            }
            "approaches" => {
                s.approaches_at = Some(key_pos(k));
                s.approaches = approaches::parse_list(cx, v);
            }
            "llm" => s.llm = workload::parse_llm(cx, v),
            "profiles" => {
                s.profiles_at = Some(key_pos(k));
                s.profiles = links::parse_profiles(cx, v);
            }
            "workload" => s.workload = workload::parse_workload(cx, v),
            "shaping" => s.shaping = links::parse_shaping(cx, v),
            "expect" => s.expect = read_expect_texts(cx, v),
            "ipv6" => s.ipv6 = cx.de::<bool>(v, "ipv6"),
            "transport" => s.transport = transport::parse_transport(cx, v, "transport"),
            "nodes" => s.nodes = nodes::parse_nodes(cx, v),
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
    s
}

/// The lab's `name`: given, and fit for namespace names.
fn check_name(cx: &mut Ctx<'_>, s: &Sections, map: &MarkedMappingNode) {
    match &s.name {
        None if !map.contains_key("name") => {
            cx.push((1, 1), "name", "missing: every topology needs a `name`")
        }
        Some(n) if !is_name(n, MAX_NAME) => cx.push(
            s.name_at,
            "name",
            format!(
                "invalid name '{n}': use 1 to {MAX_NAME} characters of a-z, 0-9 and '-', starting with a letter"
            ),
        ),
        _ => {}
    }
}

/// Profiles times approaches is the number of cells, each a /24 of lab's range.
fn check_cells(
    cx: &mut Ctx<'_>,
    approaches: &[CellApproach],
    profiles: Option<&[(String, Profile)]>,
    profiles_at: Option<At>,
    approaches_at: Option<At>,
) {
    let nprofiles = profiles.map_or(0, <[_]>::len);
    if nprofiles * approaches.len() <= MAX_CELLS {
        return;
    }
    let lines = |at: Option<At>, what: &str| match at {
        Some((l, _)) => format!("`{what}` at line {l}"),
        None => format!("`{what}` (all {} by default)", approaches.len()),
    };
    cx.push(
        profiles_at.unwrap_or((1, 1)),
        "profiles",
        format!(
            "{nprofiles} profiles x {} approaches is {} cells, over the limit of {MAX_CELLS} (one /24 of 198.18.0.0/16 each); split the topology: {} and {}",
            approaches.len(),
            nprofiles * approaches.len(),
            lines(profiles_at, "profiles"),
            lines(approaches_at, "approaches"),
        ),
    );
}

/// A load test's answer length and pace are the embedded mock's.
fn check_load_upstream(cx: &mut Ctx<'_>, workload: Option<&Workload>, llm: Option<&Llm>) {
    if let (Some(l), Some(llm)) = (workload.and_then(|w| w.load.as_ref()), llm)
        && llm.url.is_some()
        && (l.tokens.is_some() || l.tbt.is_some())
    {
        cx.push(
            (1, 1),
            "workload.load",
            "`tokens` and `tbt` set the embedded mock's answers; with `llm.url` the upstream answers as it does: drop them, or the url",
        );
    }
}

/// `expect:`: a list of expressions, each kept with where it was written.
fn read_expect_texts(cx: &mut Ctx<'_>, v: &Node) -> Vec<(String, At, usize)> {
    let Some(seq) = v.as_sequence() else {
        cx.push(pos(v), "expect", "expected a list of expressions");
        return Vec::new();
    };
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
    list
}

/// Expectations name approaches and profiles of this topology.
fn read_expectations(
    cx: &mut Ctx<'_>,
    texts: &[(String, At, usize)],
    approaches: &[CellApproach],
    profiles: Option<&[(String, Profile)]>,
) -> Vec<Expect> {
    let names: Vec<String> = approaches.iter().map(|a| a.name.clone()).collect();
    let profile_names: Vec<String> = profiles
        .into_iter()
        .flatten()
        .map(|(n, _)| n.clone())
        .collect();
    let mut expects = Vec::new();
    for (text, at, i) in texts {
        match expect::parse(text, &names, &profile_names) {
            // Whether there are enough runs for a confidence is `lab run`'s to say:
            // `--runs` may set them.
            Ok(e) => expects.push(e),
            Err(msg) => cx.push(*at, &format!("expect[{i}]"), msg),
        }
    }
    expects
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
