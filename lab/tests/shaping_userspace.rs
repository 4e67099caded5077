//! The userspace link emulator's own fidelity, measured for real (root): what only
//! `lab wire` can report (its counters at a low rate), trace-driven links delivering the
//! trace's rate (also when `lab wire` wakes late), and its polling budget. The shaping
//! tests that hold for both backends are in `tests/shaping.rs`; these need the
//! userspace backend, which is what this machine (no netem) has.

mod common;
mod shaping_measure;

use common::*;
use lab::netlab::sys;
use shaping_measure::*;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn at_100kbit_the_emulators_own_counters_match_the_rate() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let l = Lab::up("sslow", "{ rate: 100kbit }", 1);
    let handle = {
        let listener = sys::in_netns(&l.server, || {
            Ok(TcpListener::bind(format!("{SERVER}:9100"))?)
        })
        .unwrap();
        let stream = sys::in_netns(&l.client, || {
            Ok(TcpStream::connect(format!("{SERVER}:9100"))?)
        })
        .unwrap();
        let (mut srv, _) = listener.accept().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while std::io::Read::read(&mut srv, &mut buf).unwrap_or(0) > 0 {}
        });
        stream
    };
    let mut s = handle;
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let w = std::thread::spawn(move || {
        let stop = Instant::now() + Duration::from_secs(9);
        let buf = vec![1u8; 4096];
        while Instant::now() < stop {
            let _ = std::io::Write::write(&mut s, &buf);
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let a = l.next_stats();
    std::thread::sleep(Duration::from_secs(5));
    let b = l.next_stats();
    w.join().unwrap();
    let rate = (b.up.out_bytes - a.up.out_bytes) as f64 * 8.0 / ((b.at_ns - a.at_ns) as f64 / 1e9);
    println!("100kbit: lab wire delivered {:.2} kbit/s", rate / 1e3);
    assert!((rate - 1e5).abs() / 1e5 <= 0.03, "{rate} bit/s");
}

/// A trace-driven link (userspace backend only) delivers the trace's rate to bulk TCP,
/// over 30 s: the constant 12 Mbit/s trace that `scripts/make-traces.py` writes, one
/// 1500-byte chance a millisecond, measured on the server's kernel counters, within 1%.
/// The sender is CUBIC, which keeps the link's queue (100 packets) from running dry:
/// the rate then is the trace's, whatever the machine's speed. (A sender that leaves
/// the queue empty now and then, such as BBR probing for bandwidth, gets less, and lab
/// wire counts the chances it left unused.) The kernel backend refuses a trace.
#[test]
fn a_trace_link_delivers_the_traces_rate_to_bulk_tcp() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let trace = root().join("topologies/traces/const-12mbit.trace");
    let rate = lab::shaping::trace::Trace::load(&trace.display().to_string())
        .unwrap()
        .bits_per_second();
    assert_eq!(rate, 12e6);
    if userspace() {
        let l = Lab::up(
            "strace",
            &format!("{{ trace: {}, delay: 1ms, limit: 100 }}", trace.display()),
            1,
        );
        let got = bulk_tcp_with(&l, 32.0, 1.8, Some("cubic"));
        let err = (got - rate) / rate;
        let s = l.next_stats();
        println!(
            "trace const-12mbit: delivered {:.3} Mbit/s over 30 s ({:+.2}%); lab wire: ring wait p99/max {:?} us, {} frames unstamped, {} bytes of chances unused",
            got / 1e6,
            err * 100.0,
            s.up.waited_us,
            s.up.unstamped,
            s.up.trace_unused_bytes
        );
        assert!(
            err.abs() <= 0.01,
            "delivered {got} bit/s, the trace offers {rate}"
        );
    }
    let topo = tmpfile(
        "strace-kernel.yaml",
        &format!(
            "name: stracek\napproaches: [sse]\nprofiles:\n  p: {{ trace: {} }}\nshaping: {{ backend: kernel }}\n",
            trace.display()
        ),
    );
    let o = lab(&["up", topo.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("replays a trace, which netem cannot do"),
        "{}",
        text(&o)
    );
    assert_nothing_left("stracek", &[]);
}

/// A trace link keeps its rate when lab wire gets to frames late. An open-loop UDP
/// sender offers 14 Mbit/s to the 12 Mbit/s trace, and lab wire is stopped (SIGSTOP)
/// for 50 ms of every 250 ms, so frames wait in its receive ring. Each is timed by the
/// kernel's stamp of its arrival, so it gets the delivery chances that passed while it
/// waited, and the queue limit (25 packets: 25 ms of the trace, less than a stop)
/// judges it as of its arrival, when what was due by then had left. So the server
/// receives the trace's rate, within 1%. Timed by when lab wire got to them, the
/// frames of each stop would find the queue drained 25 ms before and lose those
/// chances: 10% less. Userspace backend only.
#[test]
fn a_trace_link_keeps_its_rate_when_lab_wire_wakes_late() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !userspace() {
        return;
    }
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let trace = root().join("topologies/traces/const-12mbit.trace");
    let l = Lab::up(
        "slate",
        &format!("{{ trace: {}, limit: 25 }}", trace.display()),
        1,
    );
    let pid = nix::unistd::Pid::from_raw(l.wire_pid());
    let rx = l.udp(true, 9300);
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let tx = l.udp(false, 0);
    tx.connect(format!("{SERVER}:9300")).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let sink = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !d.load(Ordering::Relaxed) {
            let _ = rx.recv(&mut buf);
        }
    });
    // 1472-byte datagrams are 1514-byte frames: 14 Mbit/s is 1156 a second, sent on
    // time (a stalled sender catches up at once).
    let d = done.clone();
    let sender = std::thread::spawn(move || {
        let gap = Duration::from_secs_f64(1514.0 * 8.0 / 14e6);
        let mut due = Instant::now();
        let b = [0u8; 1472];
        while !d.load(Ordering::Relaxed) {
            while due <= Instant::now() {
                let _ = tx.send(&b);
                due += gap;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let rx_bytes = || -> u64 {
        let v = sys::in_netns(&l.server, || {
            Ok(std::fs::read_to_string("/proc/thread-self/net/dev")?)
        })
        .unwrap();
        parse_rx(&v)
    };
    // SIGCONT whatever happens, or the lab is left stopped.
    struct Cont(nix::unistd::Pid);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    let _cont = Cont(pid);
    std::thread::sleep(Duration::from_secs(1));
    // The delivered count just before each stop: lab wire has kept time until then.
    let mut marks = Vec::new();
    let mut before = None;
    for i in 0..48 {
        if i == 4 {
            before = Some(l.next_stats());
        }
        marks.push((Instant::now(), rx_bytes()));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = l.next_stats();
    done.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    sink.join().unwrap();
    // From the fifth stop to the last: 43 cycles, some 11 s.
    let ((t1, b1), (t2, b2)) = (marks[4], marks[marks.len() - 1]);
    let got = (b2 - b1) as f64 * 8.0 / (t2 - t1).as_secs_f64();
    let err = (got - 12e6) / 12e6;
    let before = before.unwrap();
    let unused = after.up.trace_unused_bytes - before.up.trace_unused_bytes;
    println!(
        "trace const-12mbit, lab wire stopped 50 ms in 250: delivered {:.3} Mbit/s ({:+.2}%); ring wait p99/max {:?} us; {} frames unstamped; {unused} bytes of chances unused; {} dropped (queue full)",
        got / 1e6,
        err * 100.0,
        after.up.waited_us,
        after.up.unstamped - before.up.unstamped,
        after.up.dropped_queue - before.up.dropped_queue
    );
    // The stops happened: frames waited in the ring for most of one.
    let (_, _, max) = after.up.waited_us.expect("frames waited in the ring");
    assert!(max >= 30_000, "the longest wait in the ring was {max} us");
    assert_eq!(after.up.dropped_input, 0, "{after:?}");
    assert!(
        err.abs() <= 0.01,
        "delivered {got} bit/s, the trace offers 12 Mbit/s"
    );
}

/// How lab wire waits: idle, it sleeps (next to no CPU); under sparse traffic (a
/// packet every millisecond, each followed by its 200 us of polling) it polls within
/// its budget, a fifth of the time; with `busy_poll` it never sleeps, and the delay is
/// still exact. Userspace backend only.
#[test]
fn lab_wire_polls_within_its_budget_and_busy_poll_never_sleeps() {
    if !userspace() {
        return;
    }
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let cpu_over = |l: &Lab, secs: f64, traffic: bool| -> f64 {
        let (tx, rx) = (l.udp(false, 0), l.udp(true, 9050));
        tx.connect(format!("{SERVER}:9050")).unwrap();
        let c0 = l.wire_cpu();
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            if traffic {
                tx.send(b"tick").unwrap();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(rx);
        (l.wire_cpu() - c0) / t0.elapsed().as_secs_f64()
    };
    let l = Lab::up("spoll", "{ delay: 1ms }", 1);
    std::thread::sleep(Duration::from_millis(300));
    let idle = cpu_over(&l, 2.0, false);
    let sparse = cpu_over(&l, 3.0, true);
    println!(
        "adaptive: {:.0}% of a CPU idle, {:.0}% with a packet every ms",
        idle * 100.0,
        sparse * 100.0
    );
    assert!(
        idle < 0.05,
        "an idle lab wire used {:.0}% of a CPU",
        idle * 100.0
    );
    assert!(
        sparse < 0.40,
        "lab wire polled past its budget: {:.0}% of a CPU",
        sparse * 100.0
    );
    drop(l);
    let l = Lab::up_with("sbusy", "{ delay: 20ms }", 1, ", busy_poll: true");
    let out = ok(&["status", "--lab", "sbusy"]);
    assert!(out.contains("busy-polling"), "{out}");
    let busy = cpu_over(&l, 2.0, false);
    let r = rtts(&l, 200);
    let ms = p50(&r).as_secs_f64() * 1e3;
    println!(
        "busy-poll: {:.0}% of a CPU idle; RTT p50 {ms:.3} ms at 20 ms one way",
        busy * 100.0
    );
    assert!(
        busy > 0.7,
        "a busy-polling lab wire used only {:.0}% of a CPU",
        busy * 100.0
    );
    assert!((ms - 40.0).abs() <= 1.0, "RTT p50 {ms} ms, want 40 ± 1");
}
