//! `lab run` end to end, for real (root): the CI topology, a failed expectation, and a
//! link that loses everything. Each must finish, save its results, take the lab down,
//! and exit with its documented status.

mod common;
mod run_helpers;

use common::*;
use run_helpers::*;
use std::path::{Path, PathBuf};
use std::process::Command;

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
