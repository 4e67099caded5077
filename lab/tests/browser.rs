//! The browser client, for real (root): headless Chromium in cells' client namespaces,
//! streaming with the browser's own WebTransport (both stacks, streams and datagrams),
//! fetch() and EventSource (SSE) and WebSocket, beside lab's native clients; and a run
//! killed during its browser cells, after which `lab clean` leaves nothing.

mod common;

use common::*;
use std::io::{BufRead, BufReader};

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static TURN: Mutex<()> = Mutex::new(());

/// A topology of `approaches` (YAML list items) with short answers over a 5 ms link,
/// its cells side by side (or one after another if not `parallel`).
fn topology(name: &str, approaches: &str, tbt: &str, tokens: usize) -> Tmp {
    topology_with(name, approaches, tbt, tokens, true)
}

fn topology_with(name: &str, approaches: &str, tbt: &str, tokens: usize, parallel: bool) -> Tmp {
    let dir = tmpdir(&format!("browser-{name}"));
    std::fs::write(
        dir.join("prompts.txt"),
        "What is TCP?\nWhat is UDP?\nWhat is QUIC?\nWhat is SSE?\nWhat is HTTP/3?\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("t.yaml"),
        format!(
            "name: {name}\napproaches:\n{approaches}llm:\n  mock: {{ ttft: 50ms, tbt: {tbt}, jitter: 0%, max_tokens: {tokens} }}\nprofiles:\n  p: {{ delay: 5ms }}\nworkload: {{ prompts: prompts.txt, timeout: 60s, parallel: {parallel} }}\n"
        ),
    )
    .unwrap();
    dir
}

fn cells(run: &serde_json::Value) -> Vec<(String, Vec<serde_json::Value>)> {
    run["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cell"]["name"].as_str().unwrap().to_owned(),
                c["records"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

/// Every browser client beside native ones, side by side: the same tokens (the run
/// compares the digests), no errors, and the report names the browser.
#[test]
fn browsers_stream_every_protocol_beside_the_native_clients() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let topo = topology(
        "rbrowse",
        "  - wt\n  - { name: wt-b, protocol: wt, client: browser }\n  - { name: wtq-b, protocol: wtq, client: browser }\n  - { name: wtd-b, protocol: wt-dgram, client: browser }\n  - { name: wtqd-b, protocol: wtq-dgram, client: browser }\n  - sse\n  - { name: sse-b, protocol: sse, client: browser }\n  - { name: sse-es, protocol: sse, client: browser-eventsource }\n  - ws\n  - { name: ws-b, protocol: ws, client: browser }\n",
        "10ms",
        20,
    );
    let results = tmpdir("browser-results");
    let o = run_topology(&topo.join("t.yaml"), &results);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for name in ["wt-b", "wtq-b", "wtd-b", "wtqd-b", "sse-b", "ws-b"] {
        assert!(
            out.contains(&format!(
                "- client ({name}): headless Chromium running lab's page\n"
            )),
            "{out}"
        );
    }
    assert!(
        out.contains(
            "- client (sse-es): headless Chromium running lab's page, SSE through EventSource"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "- stack (wt-b, wtd-b): wtransport 0.7.2 (server; the client is headless Chromium)"
        ),
        "{out}"
    );
    let (_, run) = saved_run(&results);
    assert_eq!(run["digest_mismatches"].as_array().unwrap().len(), 0);
    for (name, records) in cells(&run) {
        assert_eq!(records.len(), 5, "{name}");
        for r in records {
            assert!(r["error"].is_null(), "{name}: {r}");
            assert_eq!(r["tokens"], 20, "{name}: {r}");
        }
    }
    assert_nothing_left("rbrowse", &[]);
}

/// The browser's timing against the native client's, the cells one after another (so
/// that no browser's start-up takes CPU from another cell), on the same 5 ms link and
/// the same jitter-free answers: each prompt after the first (whose time carries the
/// browser's first connection) reaches its first token within 10 ms of the native
/// client's, on the median over the prompts.
#[test]
fn a_browsers_ttft_agrees_with_the_native_clients() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let topo = topology_with(
        "rbttft",
        "  - wt\n  - { name: wt-b, protocol: wt, client: browser }\n  - sse\n  - { name: sse-b, protocol: sse, client: browser }\n  - ws\n  - { name: ws-b, protocol: ws, client: browser }\n",
        "10ms",
        20,
        false,
    );
    let results = tmpdir("browser-ttft-results");
    let o = run_topology(&topo.join("t.yaml"), &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (_, run) = saved_run(&results);
    let all = cells(&run);
    let recs = |n: &str| all.iter().find(|(c, _)| c == n).unwrap().1.clone();
    for (native, browser) in [("wt", "wt-b"), ("sse", "sse-b"), ("ws", "ws-b")] {
        let (n, b) = (recs(native), recs(browser));
        let mut d: Vec<f64> = n[1..]
            .iter()
            .zip(&b[1..])
            .map(|(x, y)| y["ttft_ms"].as_f64().unwrap() - x["ttft_ms"].as_f64().unwrap())
            .collect();
        d.sort_by(f64::total_cmp);
        let median = (d[1] + d[2]) / 2.0;
        println!("{browser} against {native}: TTFT differences {d:.2?} ms, median {median:.2}");
        assert!(median.abs() <= 10.0, "{browser} against {native}: {d:?}");
    }
    assert_nothing_left("rbttft", &[]);
}

/// A run killed with SIGKILL while its browsers stream, then `lab clean`: no Chromium
/// (nor any other process) in the lab's namespaces, no namespace, no run directory
/// (where the browsers' profiles were).
#[test]
fn a_killed_run_with_browsers_leaves_nothing_after_lab_clean() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let name = "rbkill";
    // About 4 s of tokens per prompt: the browsers are mid-answer when the run dies.
    let topo = topology(
        name,
        "  - { name: wt-b, protocol: wt, client: browser }\n  - { name: sse-b, protocol: sse, client: browser }\n",
        "40ms",
        100,
    );
    let results = tmpdir("browser-kill-results");
    let mut child = Command::new(LAB)
        .args(["run", topo.join("t.yaml").to_str().unwrap(), "--results"])
        .arg(&*results)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let t0 = Instant::now();
    let mut line = String::new();
    while !line.contains("(1/") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "lab run ended early");
        assert!(t0.elapsed() < Duration::from_secs(120), "no prompt done");
    }
    let inodes = netns_inodes(name);
    let browsers: Vec<(u32, String)> = processes_in(&inodes)
        .into_iter()
        .filter(|(_, c)| c.starts_with("chrom"))
        .collect();
    assert!(!browsers.is_empty(), "no Chromium in the lab's namespaces");
    let profiles = std::path::Path::new("/run/lab").join(name).join("browsers");
    assert!(profiles.join("c0/profile").is_dir());
    // SAFETY: killing the child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let cleaned = ok(&["clean"]);
    println!(
        "{} Chromium processes before; lab clean: {cleaned}",
        browsers.len()
    );
    let t0 = Instant::now();
    loop {
        let left = processes_in(&inodes);
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "left in lab {name}'s namespaces after `lab clean`: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_nothing_left(name, &[]);
    assert!(!profiles.exists());
}
