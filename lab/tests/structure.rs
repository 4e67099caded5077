//! lab's modules stand in stages (docs/architecture.md): each imports only modules of
//! earlier stages, so the code reads one way, from a topology file to a report. This
//! test reads every module of `lab/src` and holds its `crate::` paths to that order.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The stages, first to last; a module may import the modules of earlier stages only.
/// The same list, with each module's purpose, is in docs/architecture.md.
const STAGES: &[&[&str]] = &[
    &["stats", "table", "anatomy"],
    &["approach"],
    &["topology", "loopback"],
    &["shaping"],
    &["plan"],
    &["netlab"],
    &["wire", "capture", "bench"],
    &["metrics", "cli"],
    &["report"],
    &["launch"],
    &["commands"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules of `lab/src` (a file or a folder each) and their files; the
/// crate roots (`lib.rs`, `main.rs`) are not modules of a stage.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(src()).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            out.insert(name, common::rust_sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            out.insert(name, vec![p]);
        }
    }
    out
}

/// A file's text up to its unit tests (`#[cfg(test)] mod tests`). Other `#[cfg(test)]`
/// items (the registry's test-only approach) are code like the rest.
fn without_unit_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// The modules of this crate that a file's code (not its comments, not its unit tests)
/// names as `crate::<module>`, with the first line that does.
fn imports(text: &str, modules: &BTreeMap<String, Vec<PathBuf>>) -> Vec<(String, String)> {
    let code = without_unit_tests(text);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in code.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if modules.contains_key(&name) && !out.iter().any(|(n, _)| *n == name) {
                out.push((name, line.trim().to_owned()));
            }
        }
    }
    out
}

fn stage_of(module: &str) -> Option<usize> {
    STAGES.iter().position(|s| s.contains(&module))
}

#[test]
fn every_module_has_a_stage() {
    let missing: Vec<String> = modules()
        .into_keys()
        .filter(|m| stage_of(m).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a stage: {missing:?}; put each in STAGES here and in docs/architecture.md"
    );
    for s in STAGES.iter().flat_map(|s| s.iter()) {
        assert!(
            modules().contains_key(*s),
            "STAGES names `{s}`, which lab/src does not have"
        );
    }
}

#[test]
fn modules_import_only_earlier_stages() {
    let modules = modules();
    let mut wrong = Vec::new();
    let mut arrows = 0;
    for (m, files) in &modules {
        let Some(mine) = stage_of(m) else { continue };
        for f in files {
            let text = std::fs::read_to_string(f).unwrap();
            for (other, line) in imports(&text, &modules) {
                if other == *m {
                    continue;
                }
                arrows += 1;
                let theirs = stage_of(&other).unwrap_or(usize::MAX);
                if theirs >= mine {
                    wrong.push(format!(
                        "{} (stage {}) imports `{other}` (stage {}): {line}",
                        f.strip_prefix(src()).unwrap_or(f).display(),
                        mine + 1,
                        theirs.saturating_add(1)
                    ));
                }
            }
        }
    }
    // The reader finds the imports there are: a change that hid them would pass empty.
    assert!(
        arrows > 50,
        "only {arrows} imports between modules were found"
    );
    assert!(
        wrong.is_empty(),
        "imports against the stage order (an earlier stage must not need a later one):\n{}",
        wrong.join("\n")
    );
}

/// The reader sees an import against the order, so the test above can fail.
#[test]
fn a_backward_import_is_seen() {
    let text = "// crate::report in a comment is not an import\nuse crate::report::tables;\nfn f() { crate::plan::run_dir(\"x\"); }\n#[cfg(test)]\nmod tests { use crate::commands; }\n";
    let found = imports(text, &modules());
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["report", "plan"]);
    assert!(stage_of("report").unwrap() > stage_of("topology").unwrap());
}

/// Every Rust file of the workspace's crates: sources, tests and benches.
fn workspace_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for krate in ["lab", "clients", "servers", "codec"] {
        for dir in ["src", "tests", "benches"] {
            let d = root.join(krate).join(dir);
            if d.is_dir() {
                out.extend(common::rust_sources(&d));
            }
        }
    }
    out
}

/// No source file a newcomer has to fear: none over 800 lines, tests included.
#[test]
fn no_source_file_is_over_800_lines() {
    let files = workspace_sources();
    assert!(files.len() > 150, "{} files read", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 800).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these by what they hold:\n{}",
        long.join("\n")
    );
}

/// The functions of a file's code (not its unit tests) and their lengths, from `fn` to
/// the closing brace rustfmt puts at the `fn`'s own indentation.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = without_unit_tests(text).lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = &l[..l.len() - t.len()];
        let mut rest = t;
        for prefix in [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        let Some(sig) = rest.strip_prefix("fn ") else {
            continue;
        };
        let name: String = sig
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{indent}}}");
        // A body on the same line (`fn f() -> u8 { 1 }`) is one line; a declaration
        // without a body (in a trait) ends with `;` before any `{`.
        let opens = lines[i..]
            .iter()
            .find(|x| x.ends_with('{') || x.ends_with(';'));
        if l.ends_with('}') || opens.is_none_or(|x| x.ends_with(';')) {
            continue;
        }
        if let Some(end) = lines[i + 1..].iter().position(|x| *x == close) {
            out.push((name, end + 2));
        }
    }
    out
}

#[test]
fn function_lengths_are_read_from_fn_to_its_closing_brace() {
    let text = "fn a() {\n    x();\n}\nfn one() -> u8 { 1 }\n\npub trait T {\n    fn b(&self);\n    fn c(&self) {\n        y();\n        z();\n    }\n}\n#[cfg(test)]\nmod tests {\n    fn d() {\n    }\n}\n";
    assert_eq!(
        function_lengths(text),
        [("a".to_owned(), 3), ("c".to_owned(), 4)]
    );
}

/// No function outside tests over 120 lines: a long path is named stages instead.
#[test]
fn no_function_outside_tests_is_over_120_lines() {
    let mut long = Vec::new();
    let mut read = 0;
    for f in workspace_sources() {
        if !f.components().any(|c| c.as_os_str() == "src") {
            continue;
        }
        for (name, n) in function_lengths(&std::fs::read_to_string(&f).unwrap()) {
            read += 1;
            if n > 120 {
                long.push(format!("{}: fn {name}, {n} lines", f.display()));
            }
        }
    }
    assert!(read > 1000, "{read} functions read");
    assert!(
        long.is_empty(),
        "break these into named stages:\n{}",
        long.join("\n")
    );
}
