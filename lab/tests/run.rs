//! `lab run` end to end, for real (root): the CI topology, a failed expectation, and a
//! link that loses everything. Each must finish, save its results, take the lab down,
//! and exit with its documented status.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

static TURN: Mutex<()> = Mutex::new(());

fn run(topology: &Path, results: &Path) -> Output {
    run_topology(topology, results)
}

fn saved(results: &Path) -> (PathBuf, serde_json::Value) {
    saved_run(results)
}

fn nothing_left(name: &str) {
    assert_nothing_left(name, &[]);
}

fn tempdir(name: &str) -> Tmp {
    tmpdir(&format!("run-{name}"))
}

/// A reader that goes away (`lab run ... | head`) does not stop a run halfway: it runs,
/// saves and takes the lab down as ever.
#[test]
fn a_run_whose_reader_went_away_finishes_and_leaves_nothing() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let results = tempdir("closed");
    let topo = root().join("topologies/ci.yaml");
    let (status, err) = with_closed_stdout(&[
        "run",
        topo.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ]);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
    let (dir, _) = saved(&results);
    assert!(dir.join("report.md").exists());
    nothing_left("ci");
}

#[test]
fn the_ci_topology_runs_reports_and_holds_its_expectations() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let results = tempdir("ci");
    let o = run(&root().join("topologies/ci.yaml"), &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // Per-prompt lines as the run goes, then the tables.
    assert!(
        out.lines()
            .any(|l| l.starts_with("[c5 wt@degraded]") && l.contains("[10] ")),
        "{out}"
    );
    for needle in [
        "## baseline (unshaped)",
        "## degraded (delay 20ms, loss 1%, rate 1mbit)",
        "| Approach | Avg Bytes | P50 TTFT |",
        "| Approach | Wire bytes up | Wire bytes down |",
        "## Link behaviour",
        "- holds: `wt.wire_bytes_per_token < raw.wire_bytes_per_token` under degraded",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    // Not a terminal: each step is a plain line on stderr.
    let err = String::from_utf8_lossy(&o.stderr);
    for step in [
        "lab: building lab ci: creating 19 namespaces",
        "lab: building lab ci: starting 12 servers and link emulators",
        "lab: [c5 wt@degraded] warming up",
        "lab: [c0 raw@baseline] decoding the captures",
    ] {
        assert!(err.contains(step), "no {step:?} in:\n{err}");
    }
    let (dir, run) = saved(&results);
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("## Capture cross-check"));
    assert!(
        report.contains("kbit/s") || report.contains("Mbit/s"),
        "no delivered rate"
    );
    // Every cell: ten whole answers, identical tokens across approaches, and captures
    // that agree exactly with the kernel's counters at both ends.
    let cells = run["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 6);
    for c in cells {
        let recs = c["records"].as_array().unwrap();
        assert_eq!(recs.len(), 10, "{}", c["cell"]["id"]);
        assert!(
            recs.iter()
                .all(|r| r["error"].is_null() && r["tokens"] == 40)
        );
        for side in ["client", "server"] {
            let e = &c[side];
            assert_eq!(e["differences"].as_array().unwrap().len(), 0, "{e}");
            assert_eq!(e["capture"]["tx"]["frames"], e["kernel"]["tx_packets"]);
            assert!(e["capture"]["rx"]["port_packets"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!(run["digest_mismatches"].as_array().unwrap().len(), 0);
    assert_eq!(run["expectations"].as_array().unwrap().len(), 7);
    assert!(run["environment"]["kernel"].is_string());
    assert_eq!(run["environment"]["seed"], 1);
    for svg in ["ttft.svg", "bytes_per_token.svg", "timeline.svg"] {
        let body = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(
            body.starts_with("<svg") && body.contains("wt@degraded"),
            "{svg}"
        );
    }
    // run.json is format 2 with a summary per cell.
    assert_eq!(run["format"], 2);
    assert_eq!(run["summaries"].as_array().unwrap().len(), 6);
    assert!(
        run["summaries"][5]["metrics"]["wire_bytes_per_token"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        std::fs::read_to_string(dir.join("report.html"))
            .unwrap()
            .contains("<svg")
    );
    // lab report renders the same report from run.json; lab compare lines runs up.
    let o = Command::new(LAB)
        .args(["report", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(report.starts_with(&*String::from_utf8_lossy(&o.stdout)));
    assert!(report.contains("![ttft.svg](ttft.svg)"));
    let o = Command::new(LAB)
        .args([
            "compare",
            dir.to_str().unwrap(),
            dir.join("run.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let cmp = String::from_utf8_lossy(&o.stdout);
    assert!(
        cmp.contains("| degraded | wt       | wire_bytes_per_token |"),
        "{cmp}"
    );
    assert!(cmp.contains("+0.0%"), "{cmp}");
    let o = Command::new(LAB)
        .args(["report", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    nothing_left("ci");

    // The same run in two shards, one after the other as two CI runners would, then
    // merged: the same cells with the same tokens, and the expectations checked.
    let sharded = tempdir("ci-shards");
    let topo = root().join("topologies/ci.yaml");
    let mut dirs = Vec::new();
    for (i, ids) in [(1, ["c0", "c2", "c4"]), (2, ["c1", "c3", "c5"])] {
        let into = sharded.join(format!("shard{i}"));
        let o = Command::new(LAB)
            .args([
                "run",
                topo.to_str().unwrap(),
                "--results",
                into.to_str().unwrap(),
            ])
            .args(["--shard", &format!("{i}/2")])
            .current_dir(root())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (d, part) = saved(&into);
        assert!(d.to_str().unwrap().ends_with(&format!("-ci-shard{i}of2")));
        let got: Vec<&str> = part["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cell"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, ids);
        assert_eq!(part["expectations"].as_array().unwrap().len(), 0);
        assert_eq!(part["shard"]["index"], i);
        nothing_left("ci");
        dirs.push(d);
    }
    let merged_into = sharded.join("merged");
    let o = Command::new(LAB)
        .args([
            "merge",
            dirs[1].to_str().unwrap(),
            dirs[0].to_str().unwrap(),
        ])
        .args(["--results", merged_into.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (mdir, merged) = saved(&merged_into);
    assert!(mdir.join("report.html").is_file());
    // Cell for cell, the deterministic fields: the cell, its records' prompts, tokens
    // and digests, and what the expectations say.
    let fixed = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let recs: Vec<_> = c["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| {
                        (
                            x["prompt"].clone(),
                            x["tokens"].clone(),
                            x["digest"].clone(),
                        )
                    })
                    .collect();
                serde_json::json!({"cell": c["cell"], "records": recs})
            })
            .collect()
    };
    assert_eq!(fixed(&merged), fixed(&run));
    let said = |r: &serde_json::Value| -> Vec<(String, String)> {
        r["expectations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["expect"].to_string(), o["profile"].to_string()))
            .collect()
    };
    assert_eq!(said(&merged), said(&run));
    assert_eq!(merged["environment"]["shards"].as_array().unwrap().len(), 2);
    // A shard missing is refused.
    let o = Command::new(LAB)
        .args(["merge", dirs[0].to_str().unwrap()])
        .args(["--results", merged_into.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("shard 2/2 of ci is missing"),
        "{}",
        text(&o)
    );
}

fn small(name: &str, profile: &str, expect: &str) -> (Tmp, PathBuf) {
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

/// `--runs 4`: four whole runs, each with its seed and its own results, adding up to
/// runs.json (every metric's values, median and interval) and a report over the runs;
/// an expectation `with 95% confidence` is decided by Mann-Whitney over the runs, and
/// refused before anything is built when the runs cannot reach its level.
#[test]
fn repeated_runs_give_medians_with_intervals_and_decide_confidence() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let results = tempdir("runs");
    let (_topo, t) = small(
        "rruns",
        "{ delay: 1ms }",
        "  - wt.bytes_per_token < sse.bytes_per_token with 95% confidence\n  - wt.errors == 0\n",
    );
    let args = |runs: &str| {
        lab(&[
            "run",
            t.to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
            "--runs",
            runs,
        ])
    };
    // Two runs against two cannot give p <= 0.05 (at best 1/6): refused.
    let o = args("2");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("its test needs at least 3 runs to reach 95% (runs: 2)"),
        "{}",
        text(&o)
    );
    assert!(std::fs::read_dir(&*results).unwrap().next().is_none());
    nothing_left("rruns");

    let o = args("4");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let dirs: Vec<PathBuf> = std::fs::read_dir(&*results)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let top = &dirs[0];
    let series: serde_json::Value =
        serde_json::from_slice(&std::fs::read(top.join("runs.json")).unwrap()).unwrap();
    let runs = series["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let mut ttft = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r["dir"], format!("run-{}", i + 1));
        assert_eq!(r["seed"], i as u64 + 1);
        // Each run is a whole run of its own, with its seed in its plan.
        let one: serde_json::Value = serde_json::from_slice(
            &std::fs::read(top.join(format!("run-{}/run.json", i + 1))).unwrap(),
        )
        .unwrap();
        assert_eq!(one["plan"]["seed"], i as u64 + 1);
        assert!(top.join(format!("run-{}/report.md", i + 1)).exists());
        let wt = one["summaries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["approach"] == "wt")
            .unwrap()
            .clone();
        ttft.push(wt["metrics"]["ttft_p50"].as_f64().unwrap());
    }
    // The series holds each run's value, their median and the interval.
    let wt = series["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["approach"] == "wt")
        .unwrap();
    let m = wt["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "ttft_p50")
        .unwrap();
    let values: Vec<f64> = m["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(values, ttft);
    ttft.sort_by(f64::total_cmp);
    assert!((m["median"].as_f64().unwrap() - (ttft[1] + ttft[2]) / 2.0).abs() < 1e-9);
    assert_eq!(m["interval"]["lo"].as_f64().unwrap(), ttft[0]);
    assert_eq!(m["interval"]["hi"].as_f64().unwrap(), ttft[3]);
    // wt's 7 B/token against sse's 13.7 in every run: four runs apart, p = 1/70.
    let e = &series["expectations"][0];
    assert_eq!(e["holds"], true, "{e}");
    assert!(
        (e["p_value"].as_f64().unwrap() - 1.0 / 70.0).abs() < 1e-9,
        "{e}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("# lab run: rruns, 4 runs"), "{out}");
    assert!(
        out.contains("- holds: `wt.bytes_per_token < sse.bytes_per_token with 95% confidence` under p: medians 7 vs 14.5, p = 0.0143 over 4 runs"),
        "{out}"
    );
    let report = std::fs::read_to_string(top.join("report.md")).unwrap();
    assert!(out.contains(&report), "{out}");
    // lab report prints it again; lab compare of two sets of runs tests each change.
    assert_eq!(ok(&["report", top.to_str().unwrap()]), report);
    let c = ok(&["compare", top.to_str().unwrap(), top.to_str().unwrap()]);
    assert!(
        c.contains("4 runs: medians") && c.contains("| 1.000 | no "),
        "{c}"
    );
    nothing_left("rruns");
}

#[test]
fn a_failed_expectation_exits_3_with_the_numbers() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let results = tempdir("exp");
    let (_topo, t) = small("rexp", "{}", "  - sse.ttft_p50 < 1us\n");
    let o = run(&t, &results);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("- FAILS: `sse.ttft_p50 < 1us` under p:"),
        "{out}"
    );
    let (_, run) = saved(&results);
    assert_eq!(run["expectations"][0]["holds"], false);
    nothing_left("rexp");
}

#[test]
fn a_link_that_loses_everything_ends_in_timeouts_not_a_hang() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let results = tempdir("dead");
    let (_topo, t) = small("rdead", "{ loss: 100% }", "  - wt.errors == 0\n");
    let o = run(&t, &results);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 of 2 prompts failed"), "{err}");
    let (_, run) = saved(&results);
    for c in run["cells"].as_array().unwrap() {
        for r in c["records"].as_array().unwrap() {
            let cat = r["error"]["category"].as_str().unwrap();
            assert!(cat == "timeout" || cat == "connect", "{r}");
        }
    }
    nothing_left("rdead");
}

#[test]
fn bad_expectations_are_bad_input() {
    let results = tempdir("badexp");
    let (_topo, t) = small("rbad", "{}", "  - wt.latency < 1s\n");
    let o = run(&t, &results);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown metric 'latency'"),
        "{}",
        text(&o)
    );
    nothing_left("rbad");
    // An urgent prompt the run never sends is bad input too, before anything is built.
    let text_ = std::fs::read_to_string(&t).unwrap().replace(
        "workload: { prompts: prompts.txt, timeout: 2s }",
        "workload: { prompts: prompts.txt, timeout: 2s, urgent: [3] }",
    );
    std::fs::write(
        &t,
        text_.replace("  - wt.latency < 1s\n", "  - wt.errors == 0\n"),
    )
    .unwrap();
    let o = run(&t, &results);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "workload.urgent: urgent prompt 3 is not one of the 2 prompts this run sends"
        ),
        "{}",
        text(&o)
    );
    nothing_left("rbad");
    // And for lab client.
    let o = lab(&[
        "client",
        "sse",
        "--url",
        "https://127.0.0.1:9",
        "--insecure",
        "--urgent",
        "1,11",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("urgent prompt 11 is not one of the 10 prompts"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_server_that_dies_mid_run_fails_its_prompts_not_the_run() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let results = tempdir("died");
    let dir = tempdir("died-topo");
    std::fs::write(dir.join("prompts.txt"), "one\ntwo\nthree\nfour\n").unwrap();
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        "name: rdied\napproaches: [sse]\nllm:\n  mock: { ttft: 5ms, tbt: 20ms, jitter: 0%, max_tokens: 40 }\nprofiles:\n  p: {}\nworkload: { prompts: prompts.txt, timeout: 5s }\n",
    )
    .unwrap();
    let child = Command::new(LAB)
        .args([
            "run",
            t.to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the lab is up and a prompt is under way, kill the SSE server.
    let state = Path::new("/run/lab/rdied/state.json");
    let t0 = std::time::Instant::now();
    let pid = loop {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "the lab never came up"
        );
        let v: Option<serde_json::Value> = std::fs::read(state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(v) = v.filter(|v| v["phase"] == "up") {
            break v["processes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["role"] == "sse server")
                .unwrap()["pid"]
                .as_i64()
                .unwrap() as i32;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: killing the server this test's lab started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let (_, run) = saved(&results);
    let recs = run["cells"][0]["records"].as_array().unwrap();
    assert_eq!(recs.len(), 4, "every prompt has a record");
    let failed: Vec<&str> = recs
        .iter()
        .filter_map(|r| r["error"]["category"].as_str())
        .collect();
    assert!(!failed.is_empty(), "no prompt failed after the server died");
    assert!(
        failed
            .iter()
            .all(|c| ["connect", "handshake", "receive", "send"].contains(c)),
        "{failed:?}"
    );
    nothing_left("rdied");
}

#[test]
fn an_upstream_that_is_down_is_an_upstream_error() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let results = tempdir("updown");
    let dir = tempdir("updown-topo");
    std::fs::write(dir.join("prompts.txt"), "one\n").unwrap();
    // Nothing listens on port 9 of the host's loopback.
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        "name: rupdown\napproaches: [raw, sse, wt]\nllm:\n  url: http://127.0.0.1:9\nprofiles:\n  p: {}\nworkload: { prompts: prompts.txt, timeout: 5s }\n",
    )
    .unwrap();
    let o = run(&t, &results);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let (d, run) = saved(&results);
    for c in run["cells"].as_array().unwrap() {
        for r in c["records"].as_array().unwrap() {
            assert_eq!(r["error"]["category"], "upstream", "{r}");
        }
        // The warm-up was tried twice, and both tries' errors are kept.
        let w = c["warmup_error"].as_str().unwrap();
        assert!(w.contains("(and before it: "), "{w}");
        assert!(c.get("warmup_retried").is_none(), "{c}");
    }
    // A run that went wrong keeps the lab's logs with its results.
    assert!(text(&o).contains("logs: "), "{}", text(&o));
    let logs: Vec<String> = std::fs::read_dir(d.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for want in [
        "c0-client.log",
        "c0-warmup.log",
        "c1-sse-server.log",
        "c2-wt-server.log",
    ] {
        assert!(logs.iter().any(|l| l == want), "{want} not in {logs:?}");
    }
    nothing_left("rupdown");
}

/// lab's capture against tcpdump on the same interface at the same time, and against
/// the kernel's counters; lab's pcap file read back by tcpdump. Then `lab run --pcap`
/// writes both ends' pcap files and the clients' TLS key logs.
#[test]
fn capture_matches_tcpdump_and_the_kernel_and_pcap_files_read_back() {
    use lab::capture::{Capture, kernel_counters};
    use lab::netlab::sys;
    use std::io::{BufRead, BufReader};
    use std::time::Duration;
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (_topo, t) = small("rpcap", "{ delay: 5ms, loss: 2% }", "  - wt.errors == 0\n");
    let _ = Command::new(LAB).args(["down", "rpcap"]).output();
    let up = Command::new(LAB)
        .args(["up", t.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", text(&up));
    struct Down;
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(LAB).args(["down", "rpcap"]).output();
        }
    }
    let _down = Down;
    let scratch = tempdir("pcap");
    let ns = sys::open_netns("lab-rpcap-c1-client").unwrap();
    let ours = scratch.join("ours.pcap");
    let theirs = scratch.join("tcpdump.pcap");
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            "lab-rpcap-c1-client",
            "tcpdump",
            "-i",
            "to-wire",
            "-n",
            "-U",
            "--immediate-mode",
            "-w",
        ])
        .arg(&theirs)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // tcpdump says when it listens.
    let mut err = BufReader::new(tcpdump.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump did not start"
        );
    }
    let part = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(scratch.join("ours.part"))
        .unwrap();
    let cap = Capture::start(&ns, "to-wire", 4433, Some(part)).unwrap();
    // Frames after the capture starts but before the counters are first read (here
    // three UDP datagrams to a closed port, and the server's ICMP answer) are in
    // neither the capture's counts nor the counters' difference: the capture sets them
    // apart by their stamps. (Counted, they made the capture one ARP frame longer than
    // the counters in a run of the five reference profiles.)
    sys::in_netns(&ns, || {
        let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..3 {
            u.send_to(b"early", "198.18.1.2:9")?;
        }
        Ok(())
    })
    .unwrap();
    let sns0 = sys::open_netns("lab-rpcap-c1-server").unwrap();
    assert!(lab::launch::cell::wait_quiet(
        &[&ns, &sns0],
        Duration::from_millis(300),
        Duration::from_secs(10),
        &std::sync::atomic::AtomicBool::new(false),
    ));
    // The capture's window opens just before the kernel's counters are read.
    cap.count_from(lab::capture::socket::realtime_ns());
    let k0 = kernel_counters(&ns, "to-wire").unwrap();
    let o = Command::new(LAB)
        .args([
            "exec",
            "--lab",
            "rpcap",
            "c1",
            "--",
            "lab",
            "client",
            "wt",
            "--url",
            "https://198.18.1.2:4433/wt",
            "--ca",
            "/run/lab/rpcap/certs/c1/cert.pem",
            "--prompts",
        ])
        .arg(t.parent().unwrap().join("prompts.txt"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let sns = sys::open_netns("lab-rpcap-c1-server").unwrap();
    assert!(lab::launch::cell::wait_quiet(
        &[&ns, &sns],
        Duration::from_millis(300),
        Duration::from_secs(10),
        &std::sync::atomic::AtomicBool::new(false),
    ));
    cap.closing();
    let k = kernel_counters(&ns, "to-wire").unwrap().minus(k0);
    let (c, _, part) = cap.finish(lab::capture::socket::realtime_ns()).unwrap();
    lab::capture::pcap::seal(part.unwrap(), std::fs::File::create(&ours).unwrap(), "").unwrap();
    // SAFETY: stopping the tcpdump this test started.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    tcpdump.wait().unwrap();
    let n = |what: &str| -> u64 {
        rest.lines()
            .find(|l| l.ends_with(what))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no '{what}' in tcpdump's output: {rest}"))
    };
    let frames = c.tx.frames + c.rx.frames;
    assert!(frames > 20, "{c:?}");
    assert!(
        c.outside.before >= 3,
        "the early datagrams were not set apart: {:?}",
        c.outside
    );
    assert_eq!(n("packets dropped by kernel"), 0);
    // tcpdump counts what lab counted inside its window, and what lab set apart
    // outside it (frames before the first reading of the counters or after the last).
    let outside = c.outside.before + c.outside.after;
    assert_eq!(
        n("packets captured"),
        frames + outside,
        "tcpdump vs lab: {rest}"
    );
    assert!(k.differences(&c).is_empty(), "{:?}", k.differences(&c));
    // Both pcap files hold the same frames.
    let count = |p: &Path| {
        let o = Command::new("tcpdump")
            .arg("-r")
            .arg(p)
            .arg("-n")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "tcpdump -r {}: {}",
            p.display(),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).lines().count() as u64
    };
    assert_eq!(count(&ours), frames);
    assert_eq!(count(&theirs), frames + outside);
    // The timestamps are the kernel's: the same as tcpdump's, frame for frame (tcpdump
    // writes microseconds; lab writes nanoseconds).
    let stamps = |p: &Path| -> Vec<String> {
        let o = Command::new("tcpdump")
            .args(["-r"])
            .arg(p)
            .args(["-n", "-tt"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    let (a, b) = (stamps(&ours), stamps(&theirs));
    // lab's frames are tcpdump's less the ones before the window.
    let b = &b[c.outside.before as usize..];
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    assert_eq!(
        same,
        a.len(),
        "lab's and tcpdump's timestamps differ:\n{a:?}\n{b:?}"
    );
    drop(_down);

    // lab run --pcap: a pcapng file of each end with the TLS secrets inside, first.
    let results = tempdir("pcap-run");
    let o = Command::new(LAB)
        .args([
            "run",
            t.to_str().unwrap(),
            "--pcap",
            "--results",
            results.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (dir, run) = saved(&results);
    for cell in ["c0", "c1"] {
        for side in ["client", "server"] {
            let p = dir.join("pcap").join(format!("{cell}-{side}.pcapng"));
            let frames = run["cells"][if cell == "c0" { 0 } else { 1 }][side]["kernel"]
                .as_object()
                .map(|k| k["tx_packets"].as_u64().unwrap() + k["rx_packets"].as_u64().unwrap())
                .unwrap();
            assert_eq!(count(&p), frames, "{}", p.display());
            // The secrets travel in the file, so it is for its owner's eyes only.
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let mut r =
                pcap_file::pcapng::PcapNgReader::new(std::fs::File::open(&p).unwrap()).unwrap();
            let first = r.next_block().unwrap().unwrap();
            let pcap_file::pcapng::Block::Unknown(dsb) = first else {
                panic!(
                    "{}: the first block is not the secrets: {first:?}",
                    p.display()
                );
            };
            assert_eq!(dsb.type_, 0x0A);
            let keys = String::from_utf8_lossy(&dsb.value);
            assert!(keys.contains("CLIENT_TRAFFIC_SECRET_0"), "{cell}: {keys}");
        }
        assert!(!dir.join("pcap").join(format!("{cell}.keys")).exists());
    }
}

/// Every approach in the registry side by side in namespaces, with eight prompts in
/// flight in each cell: the same tokens everywhere, and as many connections as the
/// approach should use (one where it multiplexes, eight otherwise). A fast variant of
/// topologies/transports.yaml.
#[test]
fn every_transport_side_by_side_with_eight_prompts_at_once() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("transports");
    let names: Vec<&str> = lab::approach::all().map(|a| a.name).collect();
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        format!(
            "name: rtrans\napproaches: [{}]\nllm:\n  mock: {{ ttft: 10ms, tbt: 2ms, jitter: 0%, max_tokens: 30 }}\nprofiles:\n  mild: {{ delay: 5ms, loss: 0.5% }}\nworkload: {{ prompts: reference, concurrency: 8, urgent: [3], timeout: 30s }}\n",
            names.join(", ")
        ),
    )
    .unwrap();
    let results = tempdir("transports-results");
    let o = run(&t, &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let (each, kept): (Vec<_>, Vec<_>) = lab::approach::all().partition(|a| !a.keeps_connections);
    let (mux, own): (Vec<_>, Vec<_>) = kept.into_iter().partition(|a| a.multiplexed);
    let list =
        |v: &[lab::approach::Approach]| v.iter().map(|a| a.name).collect::<Vec<_>>().join(", ");
    let said = format!(
        "Concurrency: 8 prompts in flight in each cell; as 8 streams of one connection: {}; on 8 connections: {}; on a connection per prompt (the server closes each after its answer): {}",
        list(&mux),
        list(&own),
        list(&each)
    );
    assert!(out.contains(&said), "no {said:?} in:\n{out}");
    // Tables' heads, however wide the longest approach name makes their first column.
    let squeezed = out.split_whitespace().collect::<Vec<_>>().join(" ");
    // With prompts in flight at once, the stall table: every approach has a row.
    assert!(
        squeezed.contains("| Approach | Gap p50 | Gap p99 | Gap max | Stalls |"),
        "{out}"
    );
    // The urgent prompt (numbered in the workload, not the one-prompt warm-up) is
    // marked in every cell, and the report gives urgent and other prompts apart.
    assert!(
        squeezed.contains("| Approach | Prompts | Count | P50 TTFT | Avg Total |"),
        "{out}"
    );
    let (_, run) = saved(&results);
    assert_eq!(run["digest_mismatches"].as_array().unwrap().len(), 0);
    for s in run["summaries"].as_array().unwrap() {
        assert!(s["metrics"]["gap_p99"].as_f64().unwrap() > 0.0, "{s}");
    }
    let cells = run["cells"].as_array().unwrap();
    assert_eq!(cells.len(), names.len());
    let mut digests: Vec<Vec<Option<String>>> = Vec::new();
    for c in cells {
        let a: lab::approach::Approach = c["cell"]["approach"].as_str().unwrap().parse().unwrap();
        let recs = c["records"].as_array().unwrap();
        assert_eq!(recs.len(), 10, "{a}");
        assert!(c["warmup_error"].is_null(), "{a}: {}", c["warmup_error"]);
        let urgent: Vec<bool> = recs.iter().map(|r| r["urgent"] == true).collect();
        assert_eq!(urgent.iter().filter(|u| **u).count(), 1, "{a}");
        assert!(urgent[2], "{a}");
        assert!(recs.iter().all(|r| r["error"].is_null()), "{a}");
        // Tokens in datagrams may be lost (0.5% here): each answer's tally says 30 were
        // sent, and what arrived is counted; only whole answers' digests are compared.
        let whole: Vec<bool> = recs
            .iter()
            .map(|r| match r.get("datagrams") {
                Some(d) => {
                    assert_eq!(d["sent"], 30, "{a}");
                    assert_eq!(d["delivered"], r["tokens"], "{a}");
                    d["lost"] == 0
                }
                None => {
                    assert_eq!(r["tokens"], 30, "{a}");
                    true
                }
            })
            .collect();
        let conns: std::collections::BTreeSet<u64> =
            recs.iter().map(|r| r["conn"].as_u64().unwrap()).collect();
        let slots: std::collections::BTreeSet<u64> =
            recs.iter().map(|r| r["slot"].as_u64().unwrap()).collect();
        assert_eq!(slots.len(), 8, "{a}: slots");
        assert_eq!(
            conns.len(),
            match (a.keeps_connections, a.multiplexed) {
                (false, _) => 10,
                (true, true) => 1,
                (true, false) => 8,
            },
            "{a}: connections"
        );
        digests.push(
            recs.iter()
                .zip(&whole)
                .map(|(r, &w)| w.then(|| r["digest"].as_str().unwrap().to_owned()))
                .collect(),
        );
    }
    for d in &digests {
        for (i, x) in d.iter().enumerate() {
            if let (Some(x), Some(y)) = (x, &digests[0][i]) {
                assert_eq!(x, y, "prompt {i}: tokens differ between approaches");
            }
        }
    }
    nothing_left("rtrans");
}

/// Servers lab did not build, measured with lab's own client for their protocol: lab's
/// binary started through `command:` (the plumbing), and a Python aiohttp SSE server
/// (someone else's code), next to lab's own SSE server. Every one gets the same tokens.
#[test]
fn servers_of_your_own_are_measured_like_lab_s() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("byo");
    let python = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/peers-venv/bin/python"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/peers/sse_server.py"
    );
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        format!(
            r#"name: rbyo
approaches:
  - sse
  - name: own-sse
    protocol: sse
    command: [lab, serve, sse, --listen, "{{listen}}", --upstream, "{{upstream}}", --model, "{{model}}", --cert, "{{cert}}", --key, "{{key}}"]
    port: 9100
  - name: py-sse
    protocol: sse
    command: [{python}, {script}, "{{listen}}", "{{upstream}}", "{{model}}", "{{cert}}", "{{key}}"]
llm:
  mock: {{ ttft: 10ms, tbt: 2ms, jitter: 0%, max_tokens: 25 }}
profiles:
  mild: {{ delay: 2ms }}
workload: {{ prompts: reference, timeout: 30s }}
expect:
  - py-sse.errors == 0
  - own-sse.errors == 0
"#
        ),
    )
    .unwrap();
    let o = Command::new(LAB)
        .args(["plan", t.to_str().unwrap()])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        plan.contains("lab exec-server -- lab serve sse --listen 198.18.1.2:9100 --upstream http://198.19.255.254:11434 --model gemma3:12b --cert /run/lab/rbyo/certs/c1/cert.pem --key /run/lab/rbyo/certs/c1/key.pem"),
        "{plan}"
    );
    let results = tempdir("byo-results");
    let o = run(&t, &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (_, saved_run) = saved(&results);
    assert_eq!(saved_run["digest_mismatches"].as_array().unwrap().len(), 0);
    let cells = saved_run["cells"].as_array().unwrap();
    let names: Vec<&str> = cells
        .iter()
        .map(|c| c["cell"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sse", "own-sse", "py-sse"]);
    let digests: Vec<Vec<&str>> = cells
        .iter()
        .map(|c| {
            let recs = c["records"].as_array().unwrap();
            assert_eq!(recs.len(), 10, "{}", c["cell"]["name"]);
            recs.iter().map(|r| r["digest"].as_str().unwrap()).collect()
        })
        .collect();
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("| py-sse "), "{out}");
    nothing_left("rbyo");

    // A server of your own that dies before it listens: reported with its log.
    std::fs::write(
        &t,
        "name: rbyo\napproaches:\n  - { name: broken, protocol: sse, command: [sh, -c, 'echo about to fail >&2; exit 3'] }\nprofiles:\n  p: {}\n",
    )
    .unwrap();
    let o = run(&t, &results);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the broken server"), "{err}");
    assert!(
        err.contains("exited (exit status: 3) before it listened on port 8080"),
        "{err}"
    );
    assert!(err.contains("about to fail"), "{err}");
    nothing_left("rbyo");
}

/// On a terminal, `lab run` is never silent for long: a progress line is redrawn while
/// the lab is built, while cells warm up, and through prompts that take seconds each.
#[test]
fn a_terminal_sees_progress_at_least_every_two_seconds() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("tty");
    std::fs::write(
        dir.join("prompts.txt"),
        "one slow answer\nanother slow answer\n",
    )
    .unwrap();
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        "name: rtty\napproaches: [sse]\nllm:\n  mock: { ttft: 10ms, tbt: 100ms, jitter: 0%, max_tokens: 35 }\nprofiles:\n  mild: { delay: 5ms }\nworkload: { prompts: prompts.txt, timeout: 30s }\n",
    )
    .unwrap();
    let results = dir.join("results");
    // script(1) gives lab a pseudo-terminal and copies what it writes as it comes.
    let cmd = format!("{LAB} run {} --results {}", t.display(), results.display());
    let mut child = Command::new("script")
        .args(["-q", "-f", "-e", "-c", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let mut out = child.stdout.take().unwrap();
    let (mut all, mut buf) = (Vec::new(), [0u8; 4096]);
    let (start, mut last, mut longest) = (Instant::now(), Instant::now(), Duration::ZERO);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        longest = longest.max(last.elapsed());
        last = Instant::now();
        all.extend_from_slice(&buf[..n]);
    }
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(status.success(), "{text}");
    // Two prompts of 35 tokens at 100 ms: seconds without a prompt line.
    assert!(
        start.elapsed() > Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );
    assert!(
        longest < Duration::from_secs(2),
        "{longest:?} of silence in:\n{text}"
    );
    for said in ["building lab rtty", "warming up", "prompts", "results: "] {
        assert!(text.contains(said), "no {said:?} in:\n{text}");
    }
    nothing_left("rtty");
}

/// The reference's five profiles (as in topologies/matrix.yaml, with short answers),
/// three runs in a row: every run exits 0, and on all 30 ends of each run the capture
/// equals the kernel's counters, frame for frame and byte for byte. A frame stamped
/// so close to a reading of the counters that the kernel counted it on the other side
/// (seen once: a 42-byte ARP frame in a `wt` cell) is named and set apart, not a
/// difference; how many were is printed.
#[test]
fn the_five_reference_profiles_three_times_capture_equals_the_counters_on_every_end() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("five-topo");
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        "name: rfive\napproaches: [raw, sse, wt]\nllm:\n  mock: { ttft: 20ms, tbt: 2ms, jitter: 0%, max_tokens: 24 }\nprofiles:\n  baseline: {}\n  latency-200ms: { delay: 200ms }\n  loss-5pct: { loss: 5% }\n  bw-100kbps: { rate: 100kbit }\n  degraded: { delay: 200ms, loss: 5%, rate: 100kbit }\nworkload: { prompts: reference, connection: reuse, timeout: 60s }\n",
    )
    .unwrap();
    let mut set_apart = 0;
    for i in 1..=3 {
        let results = tempdir(&format!("five-{i}"));
        let o = run(&t, &results);
        assert_eq!(o.status.code(), Some(0), "run {i}: {}", text(&o));
        let (_, v) = saved(&results);
        let r: lab::metrics::Run = serde_json::from_value(v).unwrap();
        assert_eq!(r.cells.len(), 15, "run {i}");
        let mut ends = 0;
        for c in &r.cells {
            for (side, e) in [("client", &c.client), ("server", &c.server)] {
                let e = e
                    .as_ref()
                    .unwrap_or_else(|| panic!("run {i} {} {side}: no capture", c.cell.id));
                assert!(
                    e.differences.is_empty(),
                    "run {i} {} ({}@{}) {side}: {:?}",
                    c.cell.id,
                    c.cell.name,
                    c.cell.profile,
                    e.differences
                );
                assert!(e.kernel.tx_packets > 0 && e.kernel.rx_packets > 0);
                assert_eq!(e.capture.socket_drops, 0);
                set_apart += e.notes.len();
                ends += 1;
            }
        }
        assert_eq!(ends, 30);
        nothing_left("rfive");
    }
    println!("edge frames set apart over 90 ends: {set_apart}");
}
