//! The fan-out approach end to end (root), for real: HAProxy ending TLS in front of two
//! of lab's API servers and two of its WebSocket gateways, joined by Debian's
//! redis-server, all built from `topologies/fanout.yaml` with a faster workload. It
//! runs next to `ws` and `sse` on the same shaped link, every token checked against
//! the mock's answer; a gateway killed in the middle of a load level (the topology's
//! `kill_after`) makes clients reconnect through HAProxy, and the run reports the
//! reconnects and the tokens lost, and leaves nothing behind.

mod common;

use common::*;
use lab::metrics::Run;

/// The fan-out tests take turns: each fills the two CPUs.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `topologies/fanout.yaml` under another name, with `edits` (each a text of the file
/// and what replaces it; each must be there).
fn variant(name: &str, edits: &[(&str, &str)]) -> String {
    let mut s = std::fs::read_to_string(root().join("topologies/fanout.yaml")).unwrap();
    s = s.replacen("name: fanout\n", &format!("name: {name}\n"), 1);
    for (from, to) in edits {
        assert!(s.contains(from), "topologies/fanout.yaml has no {from:?}");
        s = s.replacen(from, to, 1);
    }
    s
}

/// The example's answers, shorter and faster.
const MOCK: (&str, &str) = (
    "mock: { ttft: 250ms, tbt: 35ms, jitter: 10%, seed: 1, max_tokens: 60 }",
    "mock: { ttft: 50ms, tbt: 10ms, jitter: 0%, seed: 1, max_tokens: 20 }",
);

#[test]
fn fanout_beside_ws_and_sse_delivers_every_token_with_the_broker_hop_measured() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir("fanout-fast");
    let t = dir.join("t.yaml");
    let topo = variant(
        "fofast",
        &[
            MOCK,
            (
                "load: { levels: [20], cycles: 5, ramp: 2s }",
                "load: { levels: [4], cycles: 3, ramp: 500ms }",
            ),
            (
                "degraded: { delay: 50ms, loss: 1%, rate: 10mbit }",
                "degraded: { delay: 10ms, loss: 1%, rate: 10mbit }",
            ),
        ],
    );
    std::fs::write(&t, topo).unwrap();
    let results = dir.join("results");
    let o = run_topology(&t, &results);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_nothing_left("fofast", &[]);
    let (d, v) = saved_run(&results);
    let run: Run = serde_json::from_value(v).unwrap();
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    // Levels that end by cycles have no hold to sample the servers over: the TTFT plot
    // is there, and no empty RSS plot.
    let ttft = std::fs::read_to_string(d.join("load_ttft.svg")).unwrap();
    assert!(ttft.contains("fanout-redis@degraded p50"), "{ttft}");
    assert!(!d.join("load_rss.svg").exists());
    assert_eq!(run.cells.len(), 3);
    assert!(run.faults.is_empty() && run.nodes_exited.is_empty());
    for c in &run.cells {
        let who = c.cell.name.as_str();
        let l = c.load.as_ref().unwrap_or_else(|| panic!("{who}: no load"));
        assert!(c.errors.is_empty(), "{who}: {:?}", c.errors);
        let x = &l.levels[0];
        let s = &x.summary;
        // 4 clients x 3 cycles, every stream whole and checked against the mock.
        assert_eq!((s.started, s.completed), (12, 12), "{who}: {:?}", s.errors);
        assert_eq!(x.checked, 12, "{who}");
        assert_eq!(x.wrong_streams, 0, "{who}: {:?}", x.wrong);
        assert_eq!(s.tokens, 12 * 20, "{who}");
        if who == "fanout-redis" {
            // Every token crossed Redis, and its hop was measured.
            let r = s.relay.expect("relay counts");
            assert_eq!((r.published, r.delivered, r.lost), (240, 240, 0));
            assert_eq!(r.reconnects, 0);
            let hop = s.server_ms["broker_ms"];
            assert_eq!(hop.count, 12);
            let (p50, p99) = (hop.p50.unwrap(), hop.p99.unwrap());
            // Redis on the unshaped internal network: well under the link's 10 ms.
            assert!(p50 > 0.0 && p50 <= p99 && p99 < 10.0, "{p50} {p99}");
            // The session's round trips (create; the WebSocket's TCP, TLS and
            // upgrade; run) before the first token, where ws has one.
            let ws = run.cells.iter().find(|c| c.cell.name == "ws").unwrap();
            let ws_ttft = ws.load.as_ref().unwrap().levels[0]
                .summary
                .ttft_ms
                .p50
                .unwrap();
            assert!(
                s.ttft_ms.p50.unwrap() > ws_ttft,
                "fanout TTFT not above ws's"
            );
        } else {
            assert!(s.relay.is_none() && s.server_ms.is_empty(), "{who}");
        }
    }
    for h in [
        "fanout-redis level 4: broker hop",
        "fanout-redis at 4 streams: 240 tokens published to the broker, 240 delivered, 0 lost",
        "holds: `fanout-redis.wrong_streams == 0`",
    ] {
        assert!(report.contains(h), "{h}: {report}");
    }
}

#[test]
fn a_gateway_killed_mid_level_means_reconnects_and_lost_tokens_and_nothing_left() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir("fanout-fault");
    let t = dir.join("t.yaml");
    // Only the fan-out; 16 streams at a time held for 5 s after a 0.5 s ramp, and gw1
    // killed 4 s into the measured workload: in the middle of the hold. Answers of 40
    // tokens keep a stream's WebSocket open most of its life. (With 8 streams of 20
    // tokens, one run of nine here saw no reconnect.)
    let gw1 = "redis://{node:broker}:6379\"]\n    ports: [8001]\n  gw2:";
    let topo = variant(
        "fofault",
        &[
            (MOCK.0, &MOCK.1.replace("max_tokens: 20", "max_tokens: 40")),
            ("  - ws\n  - sse\n", ""),
            (
                "load: { levels: [20], cycles: 5, ramp: 2s }",
                "load: { levels: [16], ramp: 500ms, hold: 5s }",
            ),
            (
                gw1,
                "redis://{node:broker}:6379\"]\n    ports: [8001]\n    kill_after: 4s\n  gw2:",
            ),
            (
                "  - ws.wrong_streams == 0\n  - sse.wrong_streams == 0\n",
                "",
            ),
        ],
    );
    std::fs::write(&t, topo).unwrap();
    let results = dir.join("results");
    // Every process lab starts, and what each started in its session (HAProxy's
    // worker), while the lab is up: none may outlive the run.
    let (run, st) = run_until_up("fofault", &t, &results);
    let procs = processes_and_sessions(&st);
    assert!(procs.len() >= 9, "{procs:?}");
    let o = run.wait_with_output().unwrap();
    // The run completes: a fault asked for is not a failure.
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_gone("fofault", &procs);
    let (d, v) = saved_run(&results);
    let run: Run = serde_json::from_value(v).unwrap();
    assert_eq!(run.faults.len(), 1, "{:?}", run.faults);
    assert!(
        run.faults[0].contains("node gw1")
            && run.faults[0].contains("killed at 4.0 s into the workload"),
        "{}",
        run.faults[0]
    );
    assert!(run.nodes_exited.is_empty(), "{:?}", run.nodes_exited);
    let x = &run.cells[0].load.as_ref().unwrap().levels[0];
    let s = &x.summary;
    let r = s.relay.expect("relay counts");
    // Streams on gw1 broke and came back through HAProxy to gw2; what Redis published
    // while they were away is lost, and counted.
    assert!(r.reconnects > 0, "{r:?}");
    assert!(r.reconnect_tries >= r.reconnects, "{r:?}");
    assert!(r.lost > 0, "{r:?}");
    assert_eq!(r.published, r.delivered + r.lost, "{r:?}");
    // No stream failed, and every whole answer was right.
    assert_eq!(s.failed, 0, "{:?}", s.error_samples);
    assert_eq!(x.wrong_streams, 0, "{:?}", x.wrong);
    assert!(
        x.checked > 0 && x.checked < s.completed,
        "{} {}",
        x.checked,
        s.completed
    );
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    for h in [
        "Fault: the node gw1",
        "reconnects",
        "lost while a WebSocket was down",
    ] {
        assert!(report.contains(h), "{h}: {report}");
    }
}
