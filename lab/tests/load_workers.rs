//! `lab load --workers N`: a closed loop's streams split over worker processes on
//! loopback, merged into one process's figures; a dead worker ends them all.

mod common;

use common::*;
use std::process::{Command, Stdio};

/// `lab load --json` against a server: each level's summary.
fn levels(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(LAB).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "level")
        .collect()
}

/// The figures a schedule fixes, whatever the timing: streams, outcomes, tokens, the
/// histograms' counts and which prompt got which answer how often. Not the
/// connections where streams share one: which of them records the set-up depends on
/// which starts first.
fn fixed(l: &serde_json::Value, per: &str) -> serde_json::Value {
    serde_json::json!({
        "level": l["level"], "started": l["started"], "completed": l["completed"],
        "failed": l["failed"], "tokens": l["tokens"], "chunks": l["chunks"],
        "connections": (per == "1").then(|| l["connections"].clone()),
        "ttft": l["ttft_ms"]["count"],
        "tbt": l["tbt_ms"]["count"], "duration": l["duration_ms"]["count"],
        "digests": l["digests"],
    })
}

/// The same schedule (levels × cycles) through one process and through three (sse) or
/// two (wt, four streams a connection): the same streams, tokens, histogram counts and
/// digests, every stream complete, and each level's peak within the level.
#[test]
fn workers_run_the_same_schedule_as_one_process() {
    let llm = mock();
    let up = base(&llm.str("url"));
    for (approach, workers, per) in [("sse", "3", "1"), ("wt", "2", "4")] {
        let srv = Server::start(&[
            "serve",
            approach,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
        ]);
        let url = srv.str("url");
        let hash = srv.str("cert_sha256");
        let run = |w: &str| {
            levels(&[
                "load",
                approach,
                "--url",
                &url,
                "--cert-hash",
                &hash,
                "--levels",
                "24,60",
                "--ramp",
                "300ms",
                "--cycles",
                "3",
                "--per-connection",
                per,
                "--workers",
                w,
                "--json",
            ])
        };
        let one = run("1");
        let many = run(workers);
        assert_eq!(one.len(), 2, "{approach}: {one:?}");
        for (a, b) in one.iter().zip(&many) {
            let n = a["level"].as_u64().unwrap();
            assert_eq!(a["started"], n * 3, "{approach}");
            assert_eq!(a["completed"], n * 3, "{approach}: {a}");
            assert_eq!(
                fixed(a, per),
                fixed(b, per),
                "{approach} at {n}: one process, then {workers}"
            );
            assert_eq!(a["tokens"], n * 3 * 12, "{approach}");
            let peak = b["peak_open"].as_u64().unwrap();
            assert!(peak > 0 && peak <= n, "{approach} at {n}: peak {peak}");
        }
        assert!(srv.stop(), "{approach}'s server did not stop cleanly");
    }
}

/// A worker killed mid-level ends the run at once: exit 2, a message that names it and
/// how it ended, and the other worker gone with it.
#[test]
fn a_dead_worker_ends_the_run_and_takes_the_others_with_it() {
    let llm = mock();
    let srv = Server::start(&[
        "serve",
        "sse",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &base(&llm.str("url")),
    ]);
    let load = Command::new(LAB)
        .args([
            "load",
            "sse",
            "--url",
            &srv.str("url"),
            "--cert-hash",
            &srv.str("cert_sha256"),
            "--levels",
            "20",
            "--ramp",
            "500ms",
            "--hold",
            "60s",
            "--workers",
            "2",
            "--json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = load.id();
    // Its two workers, once both are up.
    let children = || -> Vec<u32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                    .flat_map(|s| {
                        s.split_whitespace()
                            .filter_map(|p| p.parse().ok())
                            .collect::<Vec<u32>>()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let t = std::time::Instant::now();
    let mut kids = children();
    while kids.len() < 2 && t.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        kids = children();
    }
    assert_eq!(kids.len(), 2, "lab load's workers: {kids:?}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    unsafe { libc::kill(kids[0] as i32, libc::SIGKILL) };
    let t = std::time::Instant::now();
    let out = load.wait_with_output().unwrap();
    assert!(
        t.elapsed().as_secs() < 10,
        "the run went on for {:?}",
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "load worker 0 of 2 (pid {}) ended during level 20 (signal: 9 (SIGKILL)); the other workers were stopped",
        kids[0]
    );
    assert!(err.contains(&want), "{err}");
    // The other worker is gone (a zombie until init reaps it counts as gone).
    let t = std::time::Instant::now();
    let alive = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    while alive(kids[1]) && t.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !alive(kids[1]),
        "worker 1 (pid {}) outlived the run",
        kids[1]
    );
}
