//! What the `lab run` tests share: one run at a time (`TURN`), running a topology and
//! reading what it saved, the check that nothing was left, and a small topology.
#![allow(dead_code)]

use super::common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;

pub static TURN: Mutex<()> = Mutex::new(());

pub fn run(topology: &Path, results: &Path) -> Output {
    run_topology(topology, results)
}

pub fn saved(results: &Path) -> (PathBuf, serde_json::Value) {
    saved_run(results)
}

pub fn nothing_left(name: &str) {
    assert_nothing_left(name, &[]);
}

pub fn tempdir(name: &str) -> Tmp {
    tmpdir(&format!("run-{name}"))
}

pub fn small(name: &str, profile: &str, expect: &str) -> (Tmp, PathBuf) {
    let dir = tempdir(&format!("{name}-topo"));
    std::fs::write(dir.join("prompts.txt"), "What is TCP?\nWhat is UDP?\n").unwrap();
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        format!(
            "name: {name}\napproaches: [sse, wt]\nllm:\n  mock: {{ ttft: 5ms, tbt: 1ms, jitter: 0%, max_tokens: 8 }}\nprofiles:\n  p: {profile}\nworkload: {{ prompts: prompts.txt, timeout: 2s }}\nexpect:\n{expect}"
        ),
    )
    .unwrap();
    (dir, t)
}
