//! What the shaping tests measure with, shared by `tests/shaping.rs` (both backends)
//! and `tests/shaping_userspace.rs` (lab wire's own): a one-cell lab, round trips,
//! one-way probes, loss patterns, bulk TCP, and the lock the tests take turns on.
#![allow(dead_code)]

use super::common::*;
use lab::netlab::sys;
use lab::shaping::stats::WireStats;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub static TURN: Mutex<()> = Mutex::new(());

pub const SERVER: &str = "198.18.0.2";

/// The shaping backend under test: `userspace` unless `LAB_SHAPING_BACKEND` says
/// `kernel`.
pub fn backend() -> String {
    std::env::var("LAB_SHAPING_BACKEND").unwrap_or_else(|_| "userspace".into())
}

pub fn userspace() -> bool {
    backend() == "userspace"
}

/// Whether the backend under test keeps the seed: lab wire always does; netem does
/// from Linux 6.6, and `lab plan`'s shaping line says when it does not.
pub fn seeded() -> bool {
    if userspace() {
        return true;
    }
    let topo = tmpfile(
        "seeded.yaml",
        "name: sseed\napproaches: [sse]\nprofiles:\n  p: { loss: 1% }\nshaping: { backend: kernel }\n",
    );
    let out = ok(&["plan", topo.to_str().unwrap()]);
    let ignored = out.contains(lab::plan::layout::SEED_IGNORED);
    println!("netem keeps the seed: {}", !ignored);
    !ignored
}

/// How much slower the machine may be: 1 on real hardware, more in a software-emulated
/// virtual machine (`LAB_TIME_SLACK`). It stretches pacing and timeouts, never a
/// tolerance.
pub fn slack() -> f64 {
    std::env::var("LAB_TIME_SLACK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// A one-cell lab named `name` whose only profile is `profile` (YAML flow mapping).
pub struct Lab {
    pub name: String,
    pub client: std::fs::File,
    pub server: std::fs::File,
}

impl Lab {
    pub fn up(name: &str, profile: &str, seed: u64) -> Lab {
        Lab::up_with(name, profile, seed, "")
    }

    /// As `up`, with more `shaping` fields (`, busy_poll: true`).
    pub fn up_with(name: &str, profile: &str, seed: u64, shaping: &str) -> Lab {
        let topo = tmpfile(
            &format!("{name}.yaml"),
            &format!(
                "name: {name}\napproaches: [sse]\nllm:\n  mock: {{ max_tokens: 5 }}\nprofiles:\n  p: {profile}\nshaping: {{ backend: {}, seed: {seed}{shaping} }}\n",
                backend()
            ),
        );
        let _ = lab(&["down", name]);
        let out = ok(&["up", topo.to_str().unwrap()]);
        assert!(out.contains(&format!("shaping: {}", backend())), "{out}");
        Lab {
            name: name.to_owned(),
            client: sys::open_netns(&format!("lab-{name}-c0-client")).unwrap(),
            server: sys::open_netns(&format!("lab-{name}-c0-server")).unwrap(),
        }
    }

    pub fn stats(&self) -> WireStats {
        let path = format!("/run/lab/{}/wire/c0.json", self.name);
        let t0 = Instant::now();
        loop {
            if let Some(s) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no {path}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the emulator's next counter snapshot (written every second).
    pub fn next_stats(&self) -> WireStats {
        let first = self.stats().at_ns;
        let t0 = Instant::now();
        loop {
            let s = self.stats();
            if s.at_ns != first {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "counters stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the lab's `lab wire`, from `lab status --json`.
    pub fn wire_pid(&self) -> i32 {
        let st = ok(&["status", "--lab", &self.name, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        v["labs"][0]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["role"] == "wire")
            .unwrap()["pid"]
            .as_i64()
            .unwrap() as i32
    }

    /// CPU time (user + system) lab wire has used, in seconds.
    pub fn wire_cpu(&self) -> f64 {
        let pid = self.wire_pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        // utime and stime, fields 14 and 15 (counted from 1, so 11 and 12 after comm).
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    pub fn udp(&self, server: bool, port: u16) -> UdpSocket {
        let ns = if server { &self.server } else { &self.client };
        let addr = if server {
            format!("{SERVER}:{port}")
        } else {
            "198.18.0.1:0".to_owned()
        };
        let s = sys::in_netns(ns, || Ok(UdpSocket::bind(&addr)?)).unwrap();
        big_buffers(&s);
        s
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab(&["down", &self.name]);
    }
}

pub fn big_buffers(s: &impl AsRawFd) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        let v: libc::c_int = 8 << 20;
        // SAFETY: an int socket option on a valid fd.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                4,
            )
        };
    }
}

/// RTTs of `n` UDP probes, one every 5 ms, echoed by the server namespace; sorted.
pub fn rtts(l: &Lab, n: usize) -> Vec<Duration> {
    let v = probes(l, 9000, n);
    assert_eq!(v.len(), n, "probes were lost");
    v
}

/// RTTs of the probes that came back, of `n` sent one every 5 ms to `port` and echoed
/// by the server namespace (a thread each to echo, send and receive, so that every
/// probe meets the same wake-ups); sorted.
///
/// The series starts only once the path carries a packet both ways: until then the
/// first probes would wait for ARP (itself shaped: a whole configured round trip) or
/// be dropped by a freshly built link whose qdisc the kernel has not activated yet
/// (linkwatch may take a second), and then ARP's retry a second later holds every
/// probe sent meanwhile. Neither is the shaper's delay, and how long either lasts
/// depends on the machine (seen in the VM: RTT p10 604 ms for a 400 ms round trip).
pub fn probes(l: &Lab, port: u16, n: usize) -> Vec<Duration> {
    let server = l.udp(true, port);
    let client = l.udp(false, 0);
    client.connect(format!("{SERVER}:{port}")).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((k, from)) = server.recv_from(&mut buf) {
                server.send_to(&buf[..k], from).unwrap();
            }
        }
    });
    // Warm-up: one-byte pings, each given 200 ms (times the slack) to come back, until
    // one does. The reader below skips their late echoes (they are not 16 bytes long).
    client
        .set_read_timeout(Some(Duration::from_secs_f64(0.2 * slack())))
        .unwrap();
    let t0 = Instant::now();
    loop {
        client.send(&[0xfe]).unwrap();
        if client.recv(&mut [0u8; 64]).is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs_f64(10.0 * slack()),
            "the link never carried a probe both ways"
        );
    }
    let start = Instant::now();
    let rx = client.try_clone().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![None; n];
        let mut buf = [0u8; 64];
        let mut seen = 0;
        while seen < n {
            let Ok(k) = rx.recv(&mut buf) else { break };
            if k != 16 {
                continue;
            }
            seen += 1;
            let seq = u64::from_ne_bytes(buf[..8].try_into().unwrap()) as usize;
            let sent = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
            got[seq] = Some(start.elapsed() - Duration::from_nanos(sent));
        }
        got
    });
    for i in 0..n {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(i as u64).to_ne_bytes());
        b[8..].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_ne_bytes());
        client.send(&b).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = reader.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo.join().unwrap();
    let mut v: Vec<Duration> = got.into_iter().flatten().collect();
    v.sort();
    v
}

pub fn p50(v: &[Duration]) -> Duration {
    v[v.len() / 2]
}

/// The `q`-quantile of sorted RTTs.
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Sends `n` numbered UDP packets client to server, paced; returns which arrived.
pub fn one_way(l: &Lab, n: usize, pps: u64) -> Vec<bool> {
    let server = l.udp(true, 9001);
    server
        .set_read_timeout(Some(Duration::from_secs_f64(2.0 * slack())))
        .unwrap();
    let client = l.udp(false, 0);
    client.connect(format!("{SERVER}:9001")).unwrap();
    // First the path must carry packets at all (a freshly built link, on a slow machine,
    // may not for a moment): the server probes the way down until the client hears it.
    // The way down has a loss draw sequence of its own, so the up direction's draws
    // stay the numbered packets'.
    client
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let t0 = Instant::now();
    loop {
        server
            .send_to(&[0xfe; 32], client.local_addr().unwrap())
            .unwrap();
        if client.recv(&mut [0u8; 64]).is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the link never carried a packet down"
        );
    }
    // The reader stops at the first of the end markers (sent twenty times, so one gets
    // through any loss), or after a silence: a stall of the machine mid-run must not
    // end it early.
    const END: u64 = u64::MAX - 1;
    let reader = std::thread::spawn(move || {
        let mut got = vec![false; n];
        let mut buf = [0u8; 64];
        while let Ok(k) = server.recv(&mut buf) {
            assert_eq!(k, 32);
            let i = u64::from_ne_bytes(buf[..8].try_into().unwrap());
            if i == END {
                break;
            }
            if i != u64::MAX {
                got[i as usize] = true;
            }
        }
        got
    });
    // One warm-up packet first: while ARP resolves, the kernel queues packets and may
    // release the first two in either order. After it, the order is fixed, and so is
    // the loss model's draw for each numbered packet (the warm-up takes one draw).
    client.send(&[0xff; 32]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before = outside_drops(l);
    // Paced at `pps`, and never faster: after a stall of the machine (a virtual one
    // under software emulation stalls for tens of milliseconds), sending the missed
    // packets back to back would overflow the receive backlog, and those drops would
    // read as the loss model's.
    let gap = Duration::from_nanos(1_000_000_000 / pps);
    let mut due = Instant::now();
    for i in 0..n {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&(i as u64).to_ne_bytes());
        client.send(&b).unwrap();
        due += gap;
        let now = Instant::now();
        match due.checked_duration_since(now) {
            Some(w) => std::thread::sleep(w),
            None if now - due > gap * 8 => due = now,
            None => {}
        }
    }
    for _ in 0..20 {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&END.to_ne_bytes());
        // Refused once the reader has stopped at an earlier one.
        let _ = client.send(&b);
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = reader.join().unwrap();
    let after = outside_drops(l);
    // Whatever the machine itself dropped (not the shaper) makes the count meaningless.
    assert_eq!(
        after, before,
        "the machine dropped packets outside the shaper during the run (backlog, receive \
         buffer, send buffer: before {before:?}, after {after:?}), so the losses counted \
         are not the loss model's alone"
    );
    got
}

/// Packets this machine drops outside any shaper: the per-CPU receive backlog
/// (`/proc/net/softnet_stat`, second column, summed), and the UDP receive and send buffer
/// errors of the server and client namespaces, each summed over both
/// (`/proc/thread-self/net/snmp`).
pub fn outside_drops(l: &Lab) -> (u64, u64, u64) {
    let backlog = std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .map(|line| {
            let col = line.split_whitespace().nth(1).unwrap();
            u64::from_str_radix(col, 16).unwrap()
        })
        .sum();
    let udp = |ns: &std::fs::File, field: &str| -> u64 {
        let snmp = sys::in_netns(ns, || {
            Ok(std::fs::read_to_string("/proc/thread-self/net/snmp")?)
        })
        .unwrap();
        let mut rows = snmp.lines().filter(|r| r.starts_with("Udp: "));
        let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
        let k = names.split_whitespace().position(|n| n == field).unwrap();
        values.split_whitespace().nth(k).unwrap().parse().unwrap()
    };
    (
        backlog,
        udp(&l.server, "RcvbufErrors") + udp(&l.client, "RcvbufErrors"),
        udp(&l.client, "SndbufErrors") + udp(&l.server, "SndbufErrors"),
    )
}

/// The 99% interval of a binomial count (normal approximation).
pub fn interval99(n: usize, p: f64) -> (f64, f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 2.576 * sd, mean + 2.576 * sd)
}

/// Bulk TCP client to server for `secs`; returns the delivered L2 rate in bits/s
/// measured on the server's interface counters (the kernel's, not lab's), over the
/// second half of the transfer.
pub fn bulk_tcp(l: &Lab, secs: f64) -> f64 {
    bulk_tcp_after(l, secs, secs / 2.0)
}

/// Bulk TCP client to server for `secs`, measured from `warm` seconds on to 0.2 s
/// before the end.
pub fn bulk_tcp_after(l: &Lab, secs: f64, warm: f64) -> f64 {
    bulk_tcp_with(l, secs, warm, None)
}

/// As `bulk_tcp_after`, the sender using congestion control `cc` (`cubic`) where
/// given, else the machine's default.
pub fn bulk_tcp_with(l: &Lab, secs: f64, warm: f64, cc: Option<&str>) -> f64 {
    let listener = sys::in_netns(&l.server, || {
        Ok(TcpListener::bind(format!("{SERVER}:9100"))?)
    })
    .unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while std::io::Read::read(&mut s, &mut buf).unwrap_or(0) > 0 {}
    });
    let stream = sys::in_netns(&l.client, || {
        Ok(TcpStream::connect(format!("{SERVER}:9100"))?)
    })
    .unwrap();
    if let Some(cc) = cc {
        // Before any data: the connection starts with it.
        // SAFETY: a string socket option on a valid fd.
        let r = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                cc.as_ptr().cast(),
                cc.len() as libc::socklen_t,
            )
        };
        assert_eq!(
            r,
            0,
            "TCP_CONGESTION {cc}: {} (net.ipv4.tcp_available_congestion_control lists what this kernel has)",
            std::io::Error::last_os_error()
        );
    }
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let writer = std::thread::spawn(move || {
        let mut s = stream;
        let buf = vec![7u8; 1 << 16];
        while Instant::now() < stop {
            if std::io::Write::write_all(&mut s, &buf).is_err() {
                break;
            }
        }
    });
    let rx = |l: &Lab| -> (Instant, u64) {
        // /proc/thread-self/net/dev is this thread's namespace (/sys is the host's).
        let v = sys::in_netns(&l.server, || {
            Ok(std::fs::read_to_string("/proc/thread-self/net/dev")?)
        })
        .unwrap();
        (Instant::now(), parse_rx(&v))
    };
    std::thread::sleep(Duration::from_secs_f64(warm));
    let (t1, b1) = rx(l);
    std::thread::sleep(Duration::from_secs_f64(secs - warm - 0.2));
    let (t2, b2) = rx(l);
    writer.join().unwrap();
    sink.join().unwrap();
    (b2 - b1) as f64 * 8.0 / (t2 - t1).as_secs_f64()
}

/// rx_bytes of to-wire from /proc/net/dev text.
pub fn parse_rx(dev: &str) -> u64 {
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with("to-wire:"))
        .expect("to-wire in /proc/net/dev");
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
