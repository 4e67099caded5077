//! `lab load --workers N`: a closed loop's streams split over worker processes on
//! loopback, merged into one process's figures; a dead worker ends them all. And
//! `lab serve --workers N`: one port served by N processes (SO_REUSEPORT).

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
    let kids = children(load.id(), 2);
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
    // Which worker a pid is depends on the order the parent started them in.
    let want = format!(
        " of 2 (pid {}) ended during level 20 (signal: 9 (SIGKILL)); the other workers were stopped",
        kids[0]
    );
    assert!(
        err.contains("lab: load worker ") && err.contains(&want),
        "{err}"
    );
    assert_ends(kids[1], "the other load worker");
}

/// The children of `pid`, once there are `n` of them (20 s at most).
fn children(pid: u32, n: usize) -> Vec<u32> {
    let read = || -> Vec<u32> {
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
    let mut kids = read();
    while kids.len() < n && t.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        kids = read();
    }
    assert_eq!(kids.len(), n, "the children of {pid}: {kids:?}");
    kids
}

/// `pid` ends within 5 s (a zombie until init reaps it counts as ended).
fn assert_ends(pid: u32, what: &str) {
    let alive = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let t = std::time::Instant::now();
    while alive(pid) && t.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!alive(pid), "{what} (pid {pid}) outlived its parent");
}

/// The sockets `pid` holds.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|f| {
                    std::fs::read_link(f.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// `lab serve sse --workers 3`: three processes listen on the one port and each takes
/// its share of 90 streams, all of which complete with the mock's answers; SIGTERM
/// stops all three cleanly; a worker killed ends the server, naming it; and the
/// servers that cannot share a port refuse the flag.
#[test]
fn a_server_of_three_processes_shares_its_port_and_stops_whole() {
    let llm = mock();
    let up = base(&llm.str("url"));
    let args = [
        "serve",
        "sse",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
        "--upstream-h2",
        "--workers",
        "3",
    ];
    let srv = Server::start(&args);
    let pid = srv.child.id();
    let kids = children(pid, 2);
    let all = [pid, kids[0], kids[1]];
    let before: Vec<usize> = all.iter().map(|&p| sockets(p)).collect();
    let load = Command::new(LAB)
        .args([
            "load",
            "sse",
            "--url",
            &srv.str("url"),
            "--cert-hash",
            &srv.str("cert_sha256"),
            "--levels",
            "90",
            "--ramp",
            "500ms",
            "--hold",
            "3s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let during: Vec<usize> = all.iter().map(|&p| sockets(p)).collect();
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for (i, (b, d)) in before.iter().zip(&during).enumerate() {
        assert!(
            *d >= b + 8,
            "worker {i} took {} of 90 connections: {before:?} then {during:?}",
            d.saturating_sub(*b)
        );
    }
    let level: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "level")
        .unwrap();
    assert_eq!(level["failed"], 0, "{level}");
    assert_eq!(level["started"], level["completed"]);
    // One answer per prompt, whichever process served it: each is the mock's.
    let digests = level["digests"].as_array().unwrap();
    assert_eq!(digests.len(), 10, "{digests:?}");
    for d in digests {
        let p = d["prompt"].as_u64().unwrap() as usize;
        let prompt = &lab_clients::prompts::reference()[p].text;
        assert_eq!(
            d["digest"].as_str().unwrap(),
            lab_clients::record::digest_tokens(&expected(prompt, 12)),
            "prompt {p}"
        );
    }
    assert!(srv.stop(), "SIGTERM did not stop the server cleanly");
    for k in kids {
        assert_ends(k, "server worker");
    }

    // A worker killed ends the server, naming it.
    let log = tmpfile("serve-workers.log", "");
    let mut child = Command::new(LAB)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log.0).unwrap())
        .spawn()
        .unwrap();
    let kids = children(child.id(), 2);
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe { libc::kill(kids[1] as i32, libc::SIGKILL) };
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed().as_secs() < 10,
            "the server went on without worker 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let err = std::fs::read_to_string(&log.0).unwrap();
    let want = format!(
        " of 3 (pid {}) ended (signal: 9 (SIGKILL)); the server stops",
        kids[1]
    );
    assert!(
        err.contains("server worker ") && err.contains(&want),
        "{err}"
    );
    assert_ends(kids[0], "the other server worker");

    for (server, needle) in [
        (
            "wt",
            "the wt server takes every connection on one UDP socket (QUIC)",
        ),
        (
            "handoff",
            "the handoff server runs processes of its own beside it",
        ),
    ] {
        lab_fails(
            &["serve", server, "--listen", "127.0.0.1:0", "--workers", "2"],
            2,
            needle,
        );
    }
}
