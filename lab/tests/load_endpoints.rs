//! `lab load` over QUIC: connections share one endpoint (one UDP socket) per CPU, told
//! apart by their connection IDs, unless `--socket-per-connection` gives each its own.
//! And streams that share a connection outlive the first of them to end.

mod common;

use common::*;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The inodes of the UDP sockets of `pid`'s network namespace.
fn udp_inodes(pid: u32) -> HashSet<String> {
    let mut all = HashSet::new();
    for table in ["udp", "udp6"] {
        let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        all.extend(
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned)),
        );
    }
    all
}

/// How many UDP sockets `pid` holds now.
fn udp_sockets(pid: u32) -> usize {
    let udp = udp_inodes(pid);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .filter(|inode| udp.contains(inode))
        .count()
}

/// Runs `lab load` with `args` to its end: its level summary, and the most UDP sockets
/// it held at once (sampled every 20 ms).
fn load_with_sockets(args: &[&str]) -> (serde_json::Value, usize) {
    let mut child = Command::new(LAB)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (mut most, t0) = (0, Instant::now());
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            // Stopped by its recorded pid before the test fails, so nothing is left.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still ran after 60 s");
        }
        most = most.max(udp_sockets(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    // 1: some streams failed, which the callers' counts show.
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{args:?}: {}",
        text(&out)
    );
    let level = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "level")
        .unwrap_or_else(|| panic!("no level in {}", text(&out)));
    (level, most)
}

/// `approach`'s server against the upstream `up`: the server, its URL and its
/// certificate's hash.
fn serve(approach: &str, up: &str) -> (Server, String, String) {
    let srv = Server::start(&[
        "serve",
        approach,
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        up,
    ]);
    let (url, hash) = (srv.str("url"), srv.str("cert_sha256"));
    (srv, url, hash)
}

/// Four slots share each connection and start 150 ms apart: the first ends its one
/// stream while the others still read theirs, and its runner hangs up. Every stream
/// completes on every approach that multiplexes. (`quic` used to close the connection
/// there: the others' streams failed with `connection lost: closed`.)
#[test]
fn streams_sharing_a_connection_outlive_the_first_to_end() {
    let llm = mock_paced("100ms", 20);
    let up = base(&llm.str("url"));
    for approach in ["quic", "wt", "wt-dgram", "wtq", "sse-h2"] {
        let (srv, url, hash) = serve(approach, &up);
        let mut args = vec!["load", approach, "--url", &url, "--cert-hash", &hash];
        args.extend([
            "--levels",
            "8",
            "--ramp",
            "1200ms",
            "--cycles",
            "1",
            "--per-connection",
            "4",
            "--json",
        ]);
        let (level, _) = load_with_sockets(&args);
        assert_eq!(level["completed"], 8, "{approach}: {level}");
        assert_eq!(level["connections"], 2, "{approach}: {level}");
        assert!(srv.stop(), "{approach}'s server did not stop cleanly");
    }
}

/// 120 streams, each on a connection of its own and 2 s long: by default every
/// connection of the five QUIC approaches goes out over at most one socket per CPU;
/// with `--socket-per-connection`, over one each. Every stream completes both ways.
#[test]
fn quic_load_connections_share_an_endpoint_per_cpu() {
    const N: usize = 120;
    let cpus = std::thread::available_parallelism().unwrap().get();
    let llm = mock_paced("100ms", 20);
    let up = base(&llm.str("url"));
    for approach in ["wt", "wt-dgram", "wtq", "wtq-dgram", "quic"] {
        let (srv, url, hash) = serve(approach, &up);
        let run = |extra: &[&str]| {
            let n = N.to_string();
            let mut args = vec![
                "load",
                approach,
                "--url",
                &url,
                "--cert-hash",
                &hash,
                "--levels",
                &n,
                "--ramp",
                "200ms",
                "--cycles",
                "1",
                "--per-connection",
                "1",
                "--json",
            ];
            args.extend_from_slice(extra);
            let (level, most) = load_with_sockets(&args);
            assert_eq!(level["completed"], N, "{approach} {extra:?}: {level}");
            assert_eq!(level["connections"], N, "{approach} {extra:?}: {level}");
            most
        };
        let shared = run(&[]);
        println!("{approach}: {shared} UDP sockets shared by {N} connections");
        assert!(
            (1..=cpus).contains(&shared),
            "{approach}: {shared} UDP sockets for {N} connections on {cpus} CPUs"
        );
        let own = run(&["--socket-per-connection"]);
        println!("{approach}: {own} UDP sockets with --socket-per-connection");
        assert!(
            own >= N * 9 / 10,
            "{approach}: only {own} UDP sockets at once with --socket-per-connection"
        );
        assert!(srv.stop(), "{approach}'s server did not stop cleanly");
    }
}
