//! Strict parsing of topology files, reporting every problem at once.
//!
//! The file is loaded into a YAML tree that keeps each node's line (marked-yaml; a serde
//! deserializer such as serde_yaml_ng stops at the first error and keeps no positions).
//! Each top-level section, each profile and each list item is then deserialized on its
//! own, so one mistake does not hide the next, and the checks that span sections run
//! last. Every [`Diagnostic`] names the file, line, field, what is wrong and what would
//! be valid.

use super::model::*;
use crate::approach::Approach;
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
];

struct Ctx<'a> {
    file: &'a str,
    out: Vec<Diagnostic>,
}

fn pos(node: &Node) -> (usize, usize) {
    node.span()
        .start()
        .map_or((1, 1), |m| (m.line(), m.column()))
}

impl Ctx<'_> {
    fn push(&mut self, at: (usize, usize), field: &str, message: impl Into<String>) {
        self.out.push(Diagnostic {
            file: self.file.to_owned(),
            line: at.0,
            column: at.1,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Deserializes one node, recording its error.
    fn de<T: DeserializeOwned>(&mut self, node: &Node, field: &str) -> Option<T> {
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
                self.push(at, &field, describe(&inner));
                None
            }
        }
    }
}

fn describe(e: &marked_yaml::Error) -> String {
    use marked_yaml::Error::*;
    match e {
        UnknownFieldError(name, valid, _) => {
            format!("unknown field '{name}'; valid fields: {}", valid.join(", "))
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
    };
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
    let mut expect = None;
    let mut ipv6 = None;
    let mut name_at = (1, 1);
    let mut llm_at = (1, 1);
    let mut approaches_at = (1, 1);

    for (k, v) in map.iter() {
        let key = k.as_str();
        match key {
            "name" => {
                name_at = pos(v);
                name = cx.de::<String>(v, "name");
            }
            "approaches" => {
                approaches_at = pos(v);
                match v.as_sequence() {
                    Some(seq) => {
                        let mut list = Vec::new();
                        for (i, item) in seq.iter().enumerate() {
                            if let Some(a) = cx.de::<Approach>(item, &format!("approaches[{i}]")) {
                                list.push((a, pos(item)));
                            }
                        }
                        approaches = Some(list);
                    }
                    None => cx.push(pos(v), "approaches", format!("expected a list, e.g. [{}]", crate::approach::names())),
                }
            }
            "llm" => {
                llm_at = pos(v);
                llm = cx.de::<Llm>(v, "llm");
            }
            "profiles" => match v.as_mapping() {
                Some(pm) => {
                    let mut list = Vec::new();
                    for (pk, pv) in pm.iter() {
                        let pname = pk.as_str().to_owned();
                        let field = format!("profiles.{pname}");
                        let at = pk.span().start().map_or((1, 1), |m| (m.line(), m.column()));
                        if !is_name(&pname, MAX_PROFILE) {
                            cx.push(
                                at,
                                &field,
                                format!(
                                    "invalid profile name '{pname}': use 1 to {MAX_PROFILE} characters of a-z, 0-9 and '-', starting with a letter"
                                ),
                            );
                        }
                        if let Some(p) = cx.de::<Profile>(pv, &field) {
                            check_profile(&mut cx, &field, at, &p);
                            list.push((pname, p));
                        }
                    }
                    if pm.is_empty() {
                        cx.push(pos(v), "profiles", "no profiles: add at least one, e.g. `baseline: {}`");
                    }
                    profiles = Some(list);
                }
                None => cx.push(
                    pos(v),
                    "profiles",
                    "expected a mapping of profile names to settings, e.g. `degraded: { delay: 200ms, loss: 5% }`",
                ),
            },
            "workload" => {
                if let Some(w) = cx.de::<Workload>(v, "workload") {
                    if w.repeat == 0 {
                        cx.push(pos(v), "workload.repeat", "must be at least 1");
                    }
                    if w.prompts.trim().is_empty() {
                        cx.push(pos(v), "workload.prompts", "empty; use `reference` or a prompts file");
                    }
                    workload = Some(w);
                }
            }
            "shaping" => shaping = cx.de::<Shaping>(v, "shaping"),
            "expect" => match v.as_sequence() {
                Some(seq) => {
                    let mut list = Vec::new();
                    for (i, item) in seq.iter().enumerate() {
                        if let Some(s) = cx.de::<String>(item, &format!("expect[{i}]")) {
                            if s.trim().is_empty() {
                                cx.push(pos(item), &format!("expect[{i}]"), "empty expectation");
                            }
                            list.push((s, pos(item), i));
                        }
                    }
                    expect = Some(list);
                }
                None => cx.push(pos(v), "expect", "expected a list of expressions"),
            },
            "ipv6" => ipv6 = cx.de::<bool>(v, "ipv6"),
            other => {
                let at = k.span().start().map_or((1, 1), |m| (m.line(), m.column()));
                cx.push(at, other, format!("unknown field '{other}'; valid fields: {}", TOP_FIELDS.join(", ")));
            }
        }
    }

    match &name {
        None if !map.contains_key("name") => cx.push((1, 1), "name", "missing: every topology needs a `name`"),
        Some(n) if !is_name(n, MAX_NAME) => cx.push(
            name_at,
            "name",
            format!("invalid name '{n}': use 1 to {MAX_NAME} characters of a-z, 0-9 and '-', starting with a letter"),
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
    let approaches_list: Vec<Approach> = match approaches {
        Some(list) => {
            let mut seen = Vec::new();
            for (a, at) in &list {
                if seen.contains(a) {
                    cx.push(*at, "approaches", format!("'{a}' is listed twice"));
                }
                seen.push(*a);
            }
            if list.is_empty() && map.contains_key("approaches") {
                cx.push(
                    approaches_at,
                    "approaches",
                    format!("empty: list at least one of {}", crate::approach::names()),
                );
            }
            seen
        }
        None => all_approaches(),
    };
    if let Some(l) = &llm {
        check_llm(&mut cx, llm_at, l);
    }
    // Expectations name approaches and profiles of this topology.
    let names: Vec<String> = approaches_list.iter().map(|a| a.to_string()).collect();
    let profile_names: Vec<String> = profiles.iter().flatten().map(|(n, _)| n.clone()).collect();
    for (text, at, i) in expect.iter().flatten() {
        if text.trim().is_empty() {
            continue;
        }
        if let Err(msg) = crate::run::expect::parse(text, &names, &profile_names) {
            cx.push(*at, &format!("expect[{i}]"), msg);
        }
    }

    if cx.out.is_empty() {
        Ok(Topology {
            name: name.unwrap_or_default(),
            approaches: approaches_list,
            llm: llm.unwrap_or_default(),
            profiles: Profiles(profiles.unwrap_or_default()),
            workload: workload.unwrap_or_default(),
            shaping: shaping.unwrap_or_default(),
            expect: expect
                .unwrap_or_default()
                .into_iter()
                .map(|(s, _, _)| s)
                .collect(),
            ipv6: ipv6.unwrap_or(false),
        })
    } else {
        cx.out.sort_by_key(|d| (d.line, d.column));
        Err(Diagnostics(cx.out))
    }
}

fn check_llm(cx: &mut Ctx<'_>, at: (usize, usize), l: &Llm) {
    if l.mock.is_some() && l.url.is_some() {
        cx.push(at, "llm", "give either `mock` or `url`, not both");
    }
    if let Some(u) = &l.url {
        match u.parse::<http::Uri>() {
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
        cx.push(at, "llm.model", "empty model name");
    }
}

fn check_link(cx: &mut Ctx<'_>, field: &str, at: (usize, usize), l: &Link) {
    if l.loss.is_some() && l.gilbert_elliott.is_some() {
        cx.push(
            at,
            field,
            "give either `loss` (random) or `gilbert_elliott` (bursts), not both",
        );
    }
    if l.distribution.is_some() && l.jitter.is_none() {
        cx.push(
            at,
            &format!("{field}.distribution"),
            "has no effect without `jitter`",
        );
    }
    if l.reorder.is_some() && l.delay.is_none_or(|d| d.0.is_zero()) {
        cx.push(
            at,
            &format!("{field}.reorder"),
            "reordering needs a `delay` to reorder against",
        );
    }
    if l.overhead.is_some() && l.rate.is_none() {
        cx.push(
            at,
            &format!("{field}.overhead"),
            "has no effect without `rate`",
        );
    }
}

fn check_profile(cx: &mut Ctx<'_>, field: &str, at: (usize, usize), p: &Profile) {
    check_link(cx, field, at, &p.link());
    if let Some(u) = &p.up {
        check_link(cx, &format!("{field}.up"), at, u);
    }
    if let Some(d) = &p.down {
        check_link(cx, &format!("{field}.down"), at, d);
    }
    match p.direction {
        Some(Direction::Up) if p.down.is_some() => cx.push(
            at,
            &format!("{field}.direction"),
            "`direction: up` leaves the down direction unshaped, but `down:` is given; remove one",
        ),
        Some(Direction::Down) if p.up.is_some() => cx.push(
            at,
            &format!("{field}.direction"),
            "`direction: down` leaves the up direction unshaped, but `up:` is given; remove one",
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults() {
        let t = parse("t.yaml", "name: x\nprofiles:\n  baseline: {}\n").unwrap();
        assert_eq!(t.approaches, all_approaches());
        assert_eq!(t.llm.model, "gemma3:12b");
        assert_eq!(t.workload.repeat, 1);
        assert_eq!(t.shaping.backend, Backend::Auto);
        assert_eq!(t.profiles.0.len(), 1);
    }

    #[test]
    fn profile_units_are_typed_and_ordered() {
        let t = parse(
            "t.yaml",
            "name: x\nprofiles:\n  z-last: { delay: 200ms }\n  a-first: { loss: 5%, rate: 100kbit, limit: 64kb }\n",
        )
        .unwrap();
        let names: Vec<&str> = t.profiles.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["z-last", "a-first"], "file order is kept");
        let p = &t.profiles.0[1].1;
        assert_eq!(p.loss.unwrap().0, 0.05);
        assert_eq!(p.rate.unwrap().0, 100_000);
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
}
