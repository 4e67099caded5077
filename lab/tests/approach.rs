//! Adding an approach is local: one server module, one client runner and one registry
//! entry. These tests hold the code to that: no part of lab besides the registry names an
//! approach, and every entry has exactly one server module and one runner module.

mod common;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file's code without its unit tests (which may name approaches as examples).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[test]
fn nothing_but_the_registry_names_an_approach() {
    let names: Vec<String> = lab::approach::all()
        .flat_map(|a| [a.name, a.server])
        .map(|n| format!("\"{n}\""))
        .collect();
    let mut found = Vec::new();
    for f in common::rust_sources(&root().join("lab/src")) {
        if f.ends_with("approach.rs") {
            continue;
        }
        for (i, line) in code(&f).lines().enumerate() {
            // Comments and doc comments may name anything (`quic` is also the name of
            // the QUIC transport settings' section, in examples).
            if line.trim_start().starts_with("//") {
                continue;
            }
            for n in &names {
                if line.contains(n.as_str()) {
                    found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "approaches are named outside lab/src/approach.rs; go through the registry instead:\n{}",
        found.join("\n")
    );
}

/// A source file's code without comments and string literals (which may name anything:
/// "the handoff server" in an error message), and without its unit tests.
fn bare_code(path: &Path) -> String {
    let text = code(path);
    let b = text.as_bytes();
    let (mut out, mut i) = (String::new(), 0);
    while i < b.len() {
        match (b[i], b.get(i + 1).copied()) {
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            // A raw string: r"..." or r#"..."#.
            (b'r', Some(b'"' | b'#'))
                if i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let end = format!("\"{}", "#".repeat(hashes));
                i += 2 + hashes;
                i = text[i..].find(&end).map_or(b.len(), |e| i + e + end.len());
                out.push_str("\"\"");
            }
            (b'"', _) => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // The one character literal that would open a string.
            (b'\'', Some(b'"')) => {
                i += 3;
            }
            _ => {
                out.push(b[i] as char);
                i += 1;
            }
        }
    }
    out
}

/// An identifier's words, lower case: split at `_` and where lower case turns upper
/// (`wt_dgram`, `WtDatagrams` and `WT_DGRAM` are each `wt`, `dgram`).
fn words(ident: &str) -> Vec<String> {
    let mut parts = Vec::new();
    for w in ident.split('_').filter(|w| !w.is_empty()) {
        let mut cur = String::new();
        let mut prev_lower = false;
        for c in w.chars() {
            if c.is_ascii_uppercase() && prev_lower {
                parts.push(std::mem::take(&mut cur));
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            cur.push(c.to_ascii_lowercase());
        }
        parts.push(cur);
    }
    parts
}

/// No identifier outside an approach's own modules (and the registry) names it: not a
/// `handoff_ms` field, a `HandoffDaemon` command or a `wt_dgram::` path. What differs
/// between approaches goes through the registry entry's capabilities and hooks. An
/// approach's modules are the files named after it or its server in lab-clients and
/// lab-servers (a family such as `wtq` and `wtq_dgram` shares its stack's modules),
/// and `pub mod` lines declare them. Five names are also the names of the protocols lab
/// takes apart everywhere (`raw` bytes, the `sse` codec, `ws` and `wt` framing, `quic`
/// settings and anatomy); for those, the quoted-name test above is the guard.
#[test]
fn no_identifier_names_an_approach_outside_its_modules() {
    const PROTOCOL_WORDS: [&str; 5] = ["raw", "sse", "ws", "wt", "quic"];
    let mut found = std::collections::BTreeSet::new();
    let mut checked = 0;
    for a in lab::approach::all() {
        for name in [a.name, a.server] {
            let snake = name.replace('-', "_");
            if PROTOCOL_WORDS.contains(&snake.as_str()) {
                continue;
            }
            checked += 1;
            let want = words(&snake);
            for dir in ["lab/src", "clients/src", "servers/src", "codec/src"] {
                for f in common::rust_sources(&root().join(dir)) {
                    let stem = f.file_stem().unwrap().to_str().unwrap();
                    let own = (dir == "clients/src" || dir == "servers/src")
                        && [a.name, a.server]
                            .iter()
                            .any(|n| stem.starts_with(&n.replace('-', "_")));
                    let registry = f.ends_with("lab/src/approach.rs")
                        || f.starts_with(root().join("lab/src/approach"));
                    if own || registry {
                        continue;
                    }
                    for (i, line) in bare_code(&f).lines().enumerate() {
                        if line.trim_start().starts_with("pub mod ") {
                            continue;
                        }
                        let names_it = line
                            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                            .map(words)
                            .any(|w| w.windows(want.len()).any(|x| x == want.as_slice()));
                        if names_it {
                            found.insert(format!(
                                "{}:{}: {} ({})",
                                f.display(),
                                i + 1,
                                line.trim(),
                                a.name
                            ));
                        }
                    }
                }
            }
        }
    }
    // handoff, sse-h2, fanout, wt-dgram, wtq and wtq-dgram (each a name and a server),
    // proxy.
    assert_eq!(checked, 13, "names checked");
    assert!(
        found.is_empty(),
        "identifiers name approaches outside their modules; give the registry entry a capability or hook instead:\n{}",
        found.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn every_entry_has_one_server_module_and_one_runner_module() {
    let n = lab::approach::all().count();
    let count = |dir: &str, signature: &str| -> Vec<PathBuf> {
        common::rust_sources(&root().join(dir))
            .into_iter()
            .filter(|f| code(f).contains(signature))
            .collect()
    };
    let servers = count("servers/src", "pub fn start(listener: crate::Listener");
    let runners = count("clients/src", "pub fn runner(target: Target");
    assert_eq!(servers.len(), n, "server modules: {servers:?}");
    assert_eq!(runners.len(), n, "runner modules: {runners:?}");
    // And the registry points at exactly those modules.
    let registry = code(&root().join("lab/src/approach.rs"));
    for f in servers {
        let m = f.file_stem().unwrap().to_str().unwrap();
        assert!(
            registry.contains(&format!("lab_servers::{m}::start")),
            "{m}"
        );
    }
    for f in runners {
        let m = f.file_stem().unwrap().to_str().unwrap();
        assert!(
            registry.contains(&format!("lab_clients::{m}::runner")),
            "{m}"
        );
    }
}

#[test]
fn clients_never_depend_on_servers() {
    let manifest = std::fs::read_to_string(root().join("clients/Cargo.toml")).unwrap();
    assert!(!manifest.contains("lab-servers"), "{manifest}");
    for f in common::rust_sources(&root().join("clients/src")) {
        assert!(
            !std::fs::read_to_string(&f).unwrap().contains("lab_servers"),
            "{}",
            f.display()
        );
    }
}

/// Every stack a report names is the version Cargo.lock builds.
#[test]
fn the_stacks_reports_name_are_the_locked_versions() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let mut seen = 0;
    for a in lab::approach::all() {
        let Some(stack) = a.stack else { continue };
        let (name, version) = stack.split_once(' ').unwrap();
        assert!(
            lock.contains(&format!("name = \"{name}\"\nversion = \"{version}\"\n")),
            "{a}: {stack} is not what Cargo.lock has"
        );
        seen += 1;
    }
    // wt, wt-dgram, wtq, wtq-dgram and quic.
    assert_eq!(seen, 5);
}
