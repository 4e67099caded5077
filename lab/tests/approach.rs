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
    match text.find("#[cfg(test)]") {
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
