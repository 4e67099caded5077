//! The userspace link emulator (`lab wire`), measured through a real lab. Needs root.
//!
//! - both paths side by side, three runs: a small UDP packet every 5 ms and its echo
//!   (what a token stream sees: the wake-up after idle), and bulk TCP for 5 s, each
//!   through `lab wire` and through a plain bridge in the same wire namespace (the
//!   emulator stopped, the two veths bridged; the same veths, so the same offloads:
//!   lab turns them off). It prints the added RTT p50 and the bulk ratio;
//! - bulk TCP throughput with 1 ms delay, so that every packet goes through the link
//!   model;
//! - how late packets leave against their schedule at 100 Mbit/s with 10 ms delay.
//!
//! `cargo bench -p lab --bench wire`

use lab::netlab::sys;
use lab::shaping::stats::WireStats;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

const LAB: &str = env!("CARGO_BIN_EXE_lab");

fn lab(args: &[&str]) -> String {
    let o = Command::new(LAB).args(args).output().expect("run lab");
    assert!(
        o.status.success(),
        "lab {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn up(profile: &str) {
    let t = std::env::temp_dir().join("lab-bench-wire.yaml");
    std::fs::write(
        &t,
        format!("name: bwire\napproaches: [sse]\nllm:\n  mock: {{ max_tokens: 5 }}\nprofiles:\n  p: {profile}\nshaping: {{ backend: userspace }}\n"),
    )
    .unwrap();
    let _ = Command::new(LAB).args(["down", "bwire"]).output();
    lab(&["up", t.to_str().unwrap()]);
}

fn ns(side: &str) -> std::fs::File {
    sys::open_netns(&format!("lab-bwire-c0-{side}")).unwrap()
}

/// RTT p50 of `n` UDP probes and their echoes, one every `gap`.
fn rtt_p50(n: usize, gap: Duration) -> Duration {
    let server = sys::in_netns(&ns("server"), || Ok(UdpSocket::bind("198.18.0.2:9000")?)).unwrap();
    let client = sys::in_netns(&ns("client"), || Ok(UdpSocket::bind("198.18.0.1:0")?)).unwrap();
    client.connect("198.18.0.2:9000").unwrap();
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        for _ in 0..n + 100 {
            let (k, from) = server.recv_from(&mut b).unwrap();
            server.send_to(&b[..k], from).unwrap();
        }
    });
    let mut v = Vec::with_capacity(n);
    let mut b = [0u8; 64];
    for i in 0..n + 100 {
        let t = Instant::now();
        client.send(b"ping").unwrap();
        client.recv(&mut b).unwrap();
        if i >= 100 {
            v.push(t.elapsed());
        }
        std::thread::sleep(gap);
    }
    echo.join().unwrap();
    v.sort();
    v[v.len() / 2]
}

fn bulk(secs: f64) -> f64 {
    let l = sys::in_netns(&ns("server"), || Ok(TcpListener::bind("198.18.0.2:9100")?)).unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        let t = Instant::now();
        loop {
            let k = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n as f64 * 8.0 / t.elapsed().as_secs_f64()
    });
    let mut c =
        sys::in_netns(&ns("client"), || Ok(TcpStream::connect("198.18.0.2:9100")?)).unwrap();
    let buf = vec![0u8; 1 << 16];
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < stop {
        std::io::Write::write_all(&mut c, &buf).unwrap();
    }
    drop(c);
    sink.join().unwrap()
}

fn stats() -> WireStats {
    serde_json::from_slice(&std::fs::read("/run/lab/bwire/wire/c0.json").unwrap()).unwrap()
}

fn main() {
    // Both paths side by side, three runs.
    let gap = Duration::from_millis(5);
    let mut rows = Vec::new();
    for run in 1..=3 {
        up("{}");
        let rtt_wire = rtt_p50(1000, gap);
        let bulk_wire = bulk(5.0);
        let st = lab(&["status", "--lab", "bwire", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        let wire_pid = v["labs"][0]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["role"] == "wire")
            .unwrap()["pid"]
            .as_i64()
            .unwrap() as i32;
        // SAFETY: pausing the emulator lab started for this bench.
        unsafe { libc::kill(wire_pid, libc::SIGSTOP) };
        let ip = |args: &str| {
            let mut a = vec!["-n", "lab-bwire-c0-wire"];
            a.extend(args.split(' '));
            assert!(
                Command::new("ip").args(&a).status().unwrap().success(),
                "ip {args}"
            );
        };
        ip("link add br0 type bridge");
        ip("link set to-client master br0");
        ip("link set to-server master br0");
        ip("link set br0 up");
        let rtt_bridge = rtt_p50(1000, gap);
        let bulk_bridge = bulk(5.0);
        // SAFETY: resuming it, so that lab down stops it normally.
        unsafe { libc::kill(wire_pid, libc::SIGCONT) };
        lab(&["down", "bwire"]);
        let added = (rtt_wire.as_secs_f64() - rtt_bridge.as_secs_f64()) * 1e6;
        let ratio = bulk_wire / bulk_bridge;
        println!(
            "run {run}: RTT p50 (a probe every 5 ms) {:.1} us through lab wire, {:.1} us through a bridge: added {added:.1} us; bulk TCP {:.2} Gbit/s through lab wire, {:.2} Gbit/s through a bridge: {ratio:.2}x",
            rtt_wire.as_secs_f64() * 1e6,
            rtt_bridge.as_secs_f64() * 1e6,
            bulk_wire / 1e9,
            bulk_bridge / 1e9,
        );
        rows.push((added, ratio));
    }
    let (mut a, mut r): (Vec<f64>, Vec<f64>) = rows.into_iter().unzip();
    a.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    println!(
        "over three runs: added RTT p50 {:.1} to {:.1} us (target under 25 us); bulk ratio {:.2} to {:.2} (target 0.8 or more)",
        a[0], a[2], r[0], r[2]
    );

    // Bulk throughput through the link model.
    up("{ delay: 1ms }");
    let g = bulk(5.0);
    lab(&["down", "bwire"]);
    println!("bulk TCP, profile {{ delay: 1ms }}: {:.2} Gbit/s", g / 1e9);

    // Lateness at 100 Mbit/s.
    up("{ rate: 100mbit, delay: 10ms }");
    let g = bulk(5.0);
    std::thread::sleep(Duration::from_millis(1200));
    let s = stats();
    lab(&["down", "bwire"]);
    let (p50, p99, max) = s.up.late_us.unwrap();
    println!(
        "100 Mbit/s + 10 ms: bulk TCP {:.1} Mbit/s; packets left late by p50 <= {p50} us, p99 <= {p99} us, max {max} us ({} frames)",
        g / 1e6,
        s.up.out_frames
    );
}
