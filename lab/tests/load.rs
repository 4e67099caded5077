//! Load mode end to end (root): `lab run` of a load topology sweeps its levels in every
//! cell, checks every completed stream's tokens against the mock's answer, and counts
//! failures by category; a server that is killed mid-test shows as failed streams, with
//! the accounting still adding up.

mod common;

use common::*;
use lab::metrics::Run;
use lab_clients::record::ErrorCategory;

/// The load tests take turns: each fills the two CPUs, and the host's drop counters
/// include the machine's own.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_load_sweep_checks_every_token_and_counts_a_killed_server_s_failures() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir("load");
    let t = dir.join("t.yaml");
    let lab_exe = env!("CARGO_BIN_EXE_lab");
    // `doomed` is lab's SSE server under `timeout`, which kills it 7 s after the lab
    // is up: in the middle of its load test, the first (cells go one after another).
    std::fs::write(
        &t,
        format!(
            r#"name: rload
approaches:
  - name: doomed
    protocol: sse
    command: [timeout, -s, KILL, "7", {lab_exe}, serve, sse, --listen, "{{listen}}", --upstream, "{{upstream}}", --model, "{{model}}", --cert, "{{cert}}", --key, "{{key}}"]
  - sse
  - wt
  - ws
  - handoff
llm:
  mock: {{ ttft: 10ms, jitter: 0% }}
profiles:
  light: {{ delay: 2ms, rate: 100mbit }}
workload:
  prompts: reference
  timeout: 10s
  load: {{ levels: [20, 200], ramp: 1s, hold: 4s, tokens: 12, tbt: 40ms, backoff: 50ms, backoff_max: 400ms, sample: 100ms }}
expect:
  - sse.success_pct == 100
  - sse.wrong_streams == 0
"#
        ),
    )
    .unwrap();
    let results = dir.join("results");
    let o = run_topology(&t, &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (d, v) = saved_run(&results);
    let run: Run = serde_json::from_value(v).unwrap();
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    assert_nothing_left("rload", &[]);
    for svg in ["load_ttft.svg", "load_rss.svg"] {
        let s = std::fs::read_to_string(d.join(svg)).unwrap();
        assert!(
            s.contains("<svg") && s.contains("concurrent streams"),
            "{svg}"
        );
        // A tick at each level, not only at powers of ten.
        assert!(
            s.contains(">\n20\n</text>") && s.contains(">\n200\n</text>"),
            "{svg}: no tick at a level"
        );
    }
    assert_eq!(run.cells.len(), 5);
    for c in &run.cells {
        let who = &c.cell.name;
        let l = c.load.as_ref().unwrap_or_else(|| panic!("{who}: no load"));
        assert!(c.errors.is_empty(), "{who}: {:?}", c.errors);
        assert_eq!(l.levels.len(), 2, "{who}");
        assert!(l.baseline_rss_kib.is_some_and(|r| r > 0), "{who}");
        for x in &l.levels {
            let s = &x.summary;
            // The accounting adds up: every stream started completed or failed, and
            // every failure has its category.
            assert_eq!(s.started, s.completed + s.failed, "{who} {}", s.level);
            assert_eq!(
                s.errors.values().sum::<u64>(),
                s.failed,
                "{who} {}",
                s.level
            );
            // 0 lost or altered tokens: every completed stream was checked against the
            // mock's answer, and each had all 12 tokens.
            assert_eq!(x.checked, s.completed, "{who} {}", s.level);
            assert_eq!(x.wrong_streams, 0, "{who}: {:?}", x.wrong);
            // Tokens count every stream's, a cut-off one's too.
            if s.failed == 0 {
                assert_eq!(s.tokens, s.completed * 12, "{who} {}", s.level);
            } else {
                assert!(s.tokens >= s.completed * 12, "{who} {}", s.level);
            }
            let w = x.wire.unwrap_or_else(|| panic!("{who}: no wire count"));
            assert!(w.bytes_down > s.token_bytes, "{who}");
            if who != "doomed" {
                // wt too: the set-up failures it had here (a stall past the timeout,
                // H3_EXCESSIVE_LOAD) were wtransport losing a SETTINGS frame that came in
                // pieces, which lab_clients::quic_rt keeps from happening.
                assert_eq!(s.failed, 0, "{who} {}: {:?}", s.level, s.error_samples);
                assert!(
                    s.peak_open >= u64::from(s.level) * 9 / 10,
                    "{who} {}",
                    s.level
                );
                let r = x
                    .server
                    .unwrap_or_else(|| panic!("{who}: no server samples"));
                assert!(r.samples >= 10, "{who}: {r:?}");
                assert!(r.fds_peak > 0 && r.rss_kib_peak > 0, "{who}");
                assert!(r.kb_per_stream.is_some(), "{who}");
                // The generator, sampled with the server: its sockets, and its whole RSS
                // over the streams.
                let c = x
                    .client
                    .unwrap_or_else(|| panic!("{who}: no generator samples"));
                assert!(c.samples >= 10 && c.fds_peak > 0, "{who}: {c:?}");
                let kb = c.kb_per_stream.unwrap();
                let want = c.rss_kib_mean / s.peak_open as f64;
                assert!((kb - want).abs() < 0.01 && kb > 0.0, "{who}: {kb} {want}");
            }
            // handoff: every completed stream has the server's hand-off latency and
            // its time to the response head; no other approach has a hand-off.
            if who == "handoff" {
                let h = s.server_ms["handoff_ms"];
                assert_eq!(h.count, s.completed, "{who} {}", s.level);
                assert_eq!(s.ttfb_ms.count, s.completed, "{who} {}", s.level);
                let (h, b, f) = (
                    h.p50.unwrap(),
                    s.ttfb_ms.p50.unwrap(),
                    s.ttft_ms.p50.unwrap(),
                );
                assert!(
                    h > 0.0 && h < b && b < f,
                    "{who}: hand-off {h} TTFB {b} TTFT {f}"
                );
            } else {
                assert!(s.server_ms.is_empty(), "{who}: {:?}", s.server_ms);
            }
        }
        if who == "doomed" {
            // Killed mid-test: streams cut off in flight, then connections refused.
            let failed: u64 = l.levels.iter().map(|x| x.summary.failed).sum();
            assert!(failed > 0, "{:?}", l.levels);
            let cats: Vec<ErrorCategory> = l
                .levels
                .iter()
                .flat_map(|x| x.summary.errors.keys().copied())
                .collect();
            assert!(
                cats.iter()
                    .any(|c| matches!(c, ErrorCategory::Rejected | ErrorCategory::Connect)),
                "{cats:?}"
            );
            assert!(report.contains("doomed level"), "{report}");
        }
    }
    for h in [
        "| Level | Approach | Started | OK",
        "KB/stream",
        "Checked",
        "sse.success_pct == 100",
        "handoff level 200: hand-off, front to streaming daemon",
    ] {
        assert!(report.contains(h), "{h}: {report}");
    }
}

/// Runs the load topology `yaml` (named `name`) to its end, which may be failed
/// expectations (exit 1) but nothing worse, and checks that nothing of it is left: its
/// saved run and report.
fn run_load(dir: &str, name: &str, yaml: &str) -> (Run, String) {
    let dir = tmpdir(dir);
    let t = dir.join("t.yaml");
    std::fs::write(&t, yaml).unwrap();
    let results = dir.join("results");
    let o = run_topology(&t, &results);
    assert!(matches!(o.status.code(), Some(0) | Some(1)), "{}", text(&o));
    let (d, v) = saved_run(&results);
    let run: Run = serde_json::from_value(v).unwrap();
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    assert_nothing_left(name, &[]);
    (run, report)
}

/// The host's own drops are counted and shown. A `wt` variant whose UDP sockets get a
/// 2 KiB receive buffer (the kernel keeps 4 KiB: two or three QUIC datagrams) loses
/// datagrams inside the host at 200 streams: the level's counters rise, at both ends
/// or either, and the report says so next to the level, with what lifts it. Plain `wt`
/// at the same level, with lab's default buffers, shows no drop at all.
#[test]
fn a_small_udp_receive_buffer_loses_datagrams_the_report_counts_and_lab_s_default_none() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (run, report) = run_load(
        "drops",
        "rdrops",
        r#"name: rdrops
approaches:
  - { name: wt-tiny, protocol: wt, transport: { quic: { socket_receive_buffer: 2048 } } }
  - wt
llm:
  mock: { ttft: 10ms, jitter: 0% }
profiles:
  light: { delay: 2ms, rate: 1gbit }
workload:
  prompts: reference
  timeout: 10s
  load: { levels: [200], ramp: 1s, hold: 3s, tokens: 12, tbt: 20ms, sample: 100ms }
"#,
    );
    let level = |name: &str| {
        let c = run.cells.iter().find(|c| c.cell.name == name).unwrap();
        let l = c
            .load
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no load: {:?}", c.errors));
        assert_eq!(l.levels.len(), 1, "{name}");
        (
            c.cell.transport.quic.socket_receive_buffer,
            l.levels[0]
                .stack
                .unwrap_or_else(|| panic!("{name}: no drop counters")),
        )
    };
    let (tiny_buf, tiny) = level("wt-tiny");
    let (buf, plain) = level("wt");
    assert_eq!((tiny_buf, buf), (2048, lab_codec::transport::UDP_BUFFER));
    let lost = tiny.client.udp_rcvbuf_errors + tiny.server.udp_rcvbuf_errors;
    println!("wt-tiny at 200 streams: {tiny:?}\nwt: {plain:?}");
    assert!(lost > 0, "{tiny:?}");
    // InErrors counts every receive error, RcvbufErrors among them.
    assert!(tiny.server.udp_in_errors >= tiny.server.udp_rcvbuf_errors);
    assert!(
        report.contains("wt-tiny@light) level 200: the host itself dropped packets")
            && report.contains("UDP datagrams lost to a full receive buffer"),
        "{report}"
    );
    assert!(
        report.contains("The host's own drops over each level"),
        "{report}"
    );
    assert!(
        plain.drops(false).is_empty(),
        "wt with lab's buffers: {:?}",
        plain.drops(false)
    );
    assert!(
        !report.contains("(wt@light) level 200: the host itself"),
        "{report}"
    );
}

/// 300 streams on one QUIC connection: with `max_streams: 300` every prompt has its
/// stream at once; with quinn's default cap of 100, two prompts in three wait for a
/// stream to end before their first token, which their TTFT shows.
#[test]
fn a_connection_carries_as_many_streams_at_once_as_max_streams_allows() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (run, _) = run_load(
        "streams",
        "rstreams",
        r#"name: rstreams
approaches:
  - { name: wt-300, protocol: wt, transport: { quic: { max_streams: 300 } } }
  - wt
llm:
  mock: { ttft: 10ms, jitter: 0% }
profiles:
  light: { delay: 1ms, rate: 1gbit }
workload:
  prompts: reference
  timeout: 20s
  load: { levels: [300], ramp: 500ms, cycles: 1, tokens: 20, tbt: 100ms, per_connection: 300 }
"#,
    );
    let level = |name: &str| {
        let c = run.cells.iter().find(|c| c.cell.name == name).unwrap();
        let l = c
            .load
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no load: {:?}", c.errors));
        (
            c.cell.transport.quic.max_streams,
            l.levels[0].summary.clone(),
        )
    };
    let (wide_cap, wide) = level("wt-300");
    let (cap, capped) = level("wt");
    assert_eq!((wide_cap, cap), (300, 100));
    for (name, s) in [("wt-300", &wide), ("wt", &capped)] {
        println!(
            "{name}: TTFT {:?}, {} connections",
            s.ttft_ms, s.connections
        );
        assert_eq!((s.completed, s.failed), (300, 0), "{name}: {:?}", s.errors);
    }
    // A prompt whose stream waits for one of the first 100 to end (2 s of tokens)
    // gets its first token 2 s late at least.
    let p95 = |s: &lab_clients::load::LevelSummary| s.ttft_ms.p95.unwrap();
    assert!(p95(&wide) < 1000.0, "{:?}", wide.ttft_ms);
    assert!(p95(&capped) > 1900.0, "{:?}", capped.ttft_ms);
}

/// An open loop end to end: `lab run` sends each approach's requests at Poisson times
/// for each rate, counts every latency from the intended send time, keeps its schedule
/// (the lag is in run.json and the report), judges each request against the SLOs, and
/// names the highest rate that met them; every completed stream's tokens are checked.
#[test]
fn an_open_loop_keeps_its_schedule_and_finds_the_max_rate_at_slo() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir("open");
    let t = dir.join("t.yaml");
    // 6 to 18 tokens (each prompt's own answer length) 20 ms apart after a 10 ms first:
    // at most 350 ms a stream, far inside the E2E bound of 2 s; a TTFT bound of 1 us no request can meet (the third rate's
    // level is judged the same way: the search then halves towards 0).
    std::fs::write(
        &t,
        r#"name: ropen
approaches: [sse, wt]
llm:
  mock: { ttft: 10ms, jitter: 0% }
profiles:
  light: { delay: 2ms, rate: 100mbit }
workload:
  timeout: 10s
  load: { rates: [10, 40], duration: 3s, warmup: 500ms, lag_bound: 50ms, prompt_words: "uniform:5:40", answer_tokens: "uniform:6:18", tbt: 20ms, sample: 100ms, slo: { e2e: 2s, share: 95% } }
expect:
  - sse.max_rate_at_slo >= 40
  - wt.max_rate_at_slo >= 40
  - sse.invalid_levels == 0
  - wt.lag_p99 < 50ms
"#,
    )
    .unwrap();
    let results = dir.join("results");
    let o = run_topology(&t, &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (d, v) = saved_run(&results);
    let run: Run = serde_json::from_value(v).unwrap();
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    assert_nothing_left("ropen", &[]);
    for svg in ["load_ttft.svg", "load_rss.svg", "load_goodput.svg"] {
        let s = std::fs::read_to_string(d.join(svg)).unwrap();
        assert!(
            s.contains("<svg") && s.contains("requests per second"),
            "{svg}"
        );
    }
    assert_eq!(run.cells.len(), 2);
    for c in &run.cells {
        let who = &c.cell.name;
        let l = c.load.as_ref().unwrap_or_else(|| panic!("{who}: no load"));
        assert!(c.errors.is_empty(), "{who}: {:?}", c.errors);
        let rates: Vec<f64> = l
            .levels
            .iter()
            .filter_map(|x| x.summary.open.as_ref()?.rate)
            .collect();
        assert_eq!(rates, [10.0, 40.0], "{who}");
        for x in &l.levels {
            let s = &x.summary;
            let o = s.open.as_ref().unwrap();
            assert_eq!(o.process, "poisson");
            // Poisson over 3 s: the seeded draw, the same in both cells.
            let r = o.rate.unwrap();
            assert!(
                (o.scheduled as f64 - 3.0 * r).abs() < 4.0 * (3.0 * r).sqrt(),
                "{who} {r}: {}",
                o.scheduled
            );
            assert_eq!((o.sent, o.dropped), (o.scheduled, 0), "{who} {r}");
            assert!(o.valid, "{who} {r}: {:?}", o.invalid);
            assert!(o.lag_ms.p99.unwrap() < 50.0, "{who} {r}: {:?}", o.lag_ms);
            assert_eq!(s.started, s.completed, "{who} {r}: {:?}", s.error_samples);
            // The warm-up's requests ran but are not in the latencies.
            assert_eq!(s.duration_ms.count + o.excluded, s.completed, "{who} {r}");
            assert!(o.excluded > 0, "{who} {r}");
            assert_eq!(x.checked, s.duration_ms.count, "{who} {r}");
            assert_eq!(x.wrong_streams, 0, "{who}: {:?}", x.wrong);
            // Every answer had the length its prompt asked (the digests are checked
            // against the mock's answer of that length), and the lengths spread.
            let lens: std::collections::BTreeSet<usize> =
                s.digests.iter().map(|d| d.tokens).collect();
            assert!(lens.iter().all(|n| (6..=18).contains(n)), "{who}: {lens:?}");
            assert!(lens.len() >= 5, "{who} {r}: {lens:?}");
            // The serving metrics, by their definitions: tokens 20 ms apart.
            let tpot = s.tpot_ms.p50.unwrap();
            assert!((tpot - 20.0).abs() < 3.0, "{who} {r}: TPOT {tpot}");
            assert!(s.ttst_ms.p50.unwrap() > s.ttft_ms.p50.unwrap(), "{who}");
            assert!(s.ttft_ms.p999.is_some() && s.ttft_ms.p90.is_some(), "{who}");
            let slo = s.slo.unwrap();
            assert_eq!(slo.judged, s.duration_ms.count, "{who} {r}");
            assert!(slo.met && slo.good_pct >= 95.0, "{who} {r}: {slo:?}");
            assert!(s.requests_per_s > 0.0 && !s.slices.is_empty(), "{who} {r}");
        }
    }
    for h in [
        "Lag p50/p99/max",
        "40 req/s | wt ",
        "E2E <= 2s for 95% of requests",
        "- sse: max rate at SLO 40 req/s",
        "- wt: max rate at SLO 40 req/s",
        "sse.max_rate_at_slo >= 40",
    ] {
        assert!(report.contains(h), "{h}: {report}");
    }
}

/// A mock that sends three tokens a chunk (`chunk_tokens`), as a batching server does:
/// the load test asks for the upstream's count (on by default then), so TPOT and
/// throughput count 12 tokens an answer while ITL is the gap between its 4 chunks, and
/// the report gives tokens and chunks apart. Every answer is checked against the
/// mock's chunks.
#[test]
fn chunks_that_carry_several_tokens_are_counted_as_tokens_from_the_usage() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir("chunks");
    let t = dir.join("t.yaml");
    std::fs::write(
        &t,
        r#"name: rchunks
approaches: [raw, sse, ws, wt]
llm:
  mock: { ttft: 10ms, jitter: 0%, chunk_tokens: 3 }
profiles:
  light: { delay: 2ms, rate: 100mbit }
workload:
  timeout: 10s
  load: { levels: [4], ramp: 200ms, hold: 2s, tokens: 12, tbt: 20ms, sample: 100ms }
"#,
    )
    .unwrap();
    let results = dir.join("results");
    let o = run_topology(&t, &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (d, v) = saved_run(&results);
    let run: Run = serde_json::from_value(v).unwrap();
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    assert_nothing_left("rchunks", &[]);
    assert_eq!(run.cells.len(), 4);
    for c in &run.cells {
        let who = &c.cell.name;
        let l = c.load.as_ref().unwrap_or_else(|| panic!("{who}: no load"));
        let x = &l.levels[0];
        let s = &x.summary;
        assert!(
            s.completed > 0 && s.failed == 0,
            "{who}: {:?}",
            s.error_samples
        );
        assert_eq!(x.wrong_streams, 0, "{who}: {:?}", x.wrong);
        assert_eq!(x.checked, s.completed, "{who}");
        // Every answer: 12 tokens in 4 chunks, the count from the upstream's usage.
        assert_eq!(
            (s.tokens, s.chunks),
            (12 * s.completed, 4 * s.completed),
            "{who}"
        );
        assert_eq!(s.usage_counted, s.duration_ms.count, "{who}");
        assert_eq!(s.output_tokens.p50.map(f64::round), Some(12.0), "{who}");
        assert!(s.digests.iter().all(|d| d.tokens == 4), "{who}");
        // Tokens 20 ms apart, a chunk when its third is due: chunks 60 ms apart, and
        // (E2E - TTFT) over 11 tokens: 180 / 11 = 16.4 ms.
        let itl = s.tbt_ms.p50.unwrap();
        assert!((itl - 60.0).abs() < 8.0, "{who}: ITL {itl}");
        let tpot = s.tpot_ms.p50.unwrap();
        assert!((tpot - 180.0 / 11.0).abs() < 3.0, "{who}: TPOT {tpot}");
        assert!(
            report.contains(&format!("in {} chunks (3.00 a chunk)", s.chunks)),
            "{who}: {report}"
        );
    }
}
