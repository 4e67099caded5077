//! `lab run` over every approach, for real (root): every approach in the registry side
//! by side with prompts in flight at once, and servers lab did not build measured with
//! lab's own clients.

mod common;
mod run_helpers;

use common::*;
use run_helpers::*;

use std::process::Command;

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
        plan.contains("lab exec-server --dir /run/lab/rbyo/certs/c1 -- lab serve sse --listen 198.18.1.2:9100 --upstream http://198.19.255.254:11434 --model gemma3:12b --cert /run/lab/rbyo/certs/c1/cert.pem --key /run/lab/rbyo/certs/c1/key.pem"),
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
        err.contains("exited (exit status: 3) before it listened on TCP port 8080"),
        "{err}"
    );
    assert!(err.contains("about to fail"), "{err}");
    nothing_left("rbyo");
}
