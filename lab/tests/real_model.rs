//! A real model upstream, for real (root): Gemma 3 270M in llama-cpp-python's
//! OpenAI-compatible server on the host's loopback (`scripts/real-model.sh`, installed by
//! `scripts/setup.sh --real-model`, which the test command runs), measured by `lab run`
//! through raw, sse, ws and wt one cell at a time. At temperature 0 with a fixed seed the
//! model's answer to a prompt is the same whichever approach carried it: every prompt's
//! token digest is one digest across the four.

mod common;

use common::*;
use lab::metrics::Run;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The model's server, stopped (by its own pid) when dropped.
struct Model(std::process::Child);

impl Drop for Model {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts the model's server on `port` and waits until it answers `/v1/models`.
fn start_model(port: u16, log: &std::path::Path) -> Model {
    let out = std::fs::File::create(log).unwrap();
    let child = std::process::Command::new(root().join("scripts/real-model.sh"))
        .args(["serve", &port.to_string()])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("scripts/real-model.sh");
    let mut m = Model(child);
    let t0 = Instant::now();
    loop {
        if let Some(st) = m.0.try_wait().unwrap() {
            panic!(
                "the model's server exited ({st}): {}; install it with scripts/setup.sh --real-model",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /v1/models HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.contains("gemma3-270m") {
                return m;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "the model's server was not up after 180 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_real_model_answers_every_approach_alike_at_temperature_0() {
    let dir = tmpdir("realmodel");
    let port = free_port();
    let _model = start_model(port, &dir.join("model.log"));
    std::fs::write(
        dir.join("prompts.txt"),
        "What is the capital of France?\nWrite a haiku about programming.\n",
    )
    .unwrap();
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        format!(
            r#"name: rmodel
approaches: [raw, sse, ws, wt]
llm:
  url: http://127.0.0.1:{port}
  model: gemma3-270m
  sampling: {{ temperature: 0, seed: 1, max_tokens: 12 }}
profiles:
  light: {{ delay: 5ms }}
workload: {{ prompts: prompts.txt, parallel: false, timeout: 120s }}
expect:
  - raw.errors == 0
  - wt.errors == 0
"#
        ),
    )
    .unwrap();
    let results = dir.join("results");
    let o = run_topology(&t, &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_nothing_left("rmodel", &[]);
    let (d, v) = saved_run(&results);
    let run: Run = serde_json::from_value(v).unwrap();
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    assert!(
        report.contains(&format!(
            "Upstream: http://127.0.0.1:{port}, sampling {{\"temperature\":0.0,\"seed\":1,\"max_tokens\":12}} (relayed), model gemma3-270m."
        )),
        "{report}"
    );
    assert_eq!(run.cells.len(), 4);
    // Prompt -> approach -> (digest, tokens).
    let mut by: BTreeMap<usize, BTreeMap<String, (String, usize)>> = BTreeMap::new();
    for c in &run.cells {
        let who = &c.cell.name;
        assert!(c.errors.is_empty(), "{who}: {:?}", c.errors);
        assert_eq!(c.records.len(), 2, "{who}");
        for r in &c.records {
            assert!(r.error.is_none(), "{who}: {:?}", r.error);
            // max_tokens 12 reached the model through every approach's requests.
            assert!(r.tokens > 0 && r.tokens <= 12, "{who}: {} tokens", r.tokens);
            by.entry(r.index)
                .or_default()
                .insert(who.clone(), (r.digest.clone(), r.tokens));
        }
    }
    for (i, answers) in &by {
        let digests: std::collections::BTreeSet<&String> = answers.values().map(|a| &a.0).collect();
        assert_eq!(digests.len(), 1, "prompt {i}: {answers:?}");
    }
}
