//! `lab wire`: the userspace link emulator. It runs in a cell's wire namespace and
//! forwards frames between the two veths over AF_PACKET, applying each direction's
//! settings through an [`Engine`].
//!
//! Each veth has a packet socket with a receive ring ([`ring`]); the forwarding loop
//! ([`forward`]) takes frames from the rings, sends them in batches, and polls for a
//! while after activity instead of sleeping at once, so that a reply does not wait for
//! a thread to wake. The sockets use `PACKET_IGNORE_OUTGOING`, so the emulator never
//! reads back its own output. ARP and every other non-IP frame pass straight through,
//! unshaped and counted apart. Counters go to a JSON file every second and at exit.
//!
//! Settings change while it runs (`lab link set`): a control socket next to the
//! counters file (`<cell>.sock`, mode 0600) takes one JSON line, `{"up": ..., "down":
//! ...}` (either may be absent), and answers `ok` or the error. The forwarding loop
//! picks the change up before the direction's next frame.

pub mod forward;
pub mod ring;

use crate::netlab::sys::now_ns;
use crate::shaping::engine::Engine;
use crate::shaping::params::Params;
use crate::shaping::stats::{CounterSnapshot, WireStats, direction_seed};
use anyhow::{Context, Result, bail};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Buckets of the lateness histogram: 1 us each, the last one for 2 ms and more.
const LATE_BUCKETS: usize = 2001;

/// How late held packets left, against their scheduled time: 1-us buckets.
#[derive(Debug)]
pub struct Lateness {
    buckets: Vec<AtomicU64>,
    max_ns: AtomicU64,
}

impl Default for Lateness {
    fn default() -> Self {
        Lateness {
            buckets: (0..LATE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl Lateness {
    fn record(&self, ns: u64) {
        let b = ((ns / 1000) as usize).min(LATE_BUCKETS - 1);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// (p50, p99, max) in microseconds; p50 and p99 are bucket upper bounds.
    fn summary(&self) -> Option<(u64, u64, u64)> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let at = |q: f64| {
            let want = (total as f64 * q).ceil() as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return i as u64 + 1;
                }
            }
            LATE_BUCKETS as u64
        };
        Some((
            at(0.5),
            at(0.99),
            self.max_ns.load(Ordering::Relaxed) / 1000,
        ))
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct Counters {
    /// Lateness of held packets.
    pub late: Lateness,
    pub in_frames: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_frames: AtomicU64,
    pub out_bytes: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_queue: AtomicU64,
    /// The egress refused the frame (ENOBUFS and the like).
    pub dropped_send: AtomicU64,
    /// Frames that found the emulator's receive ring full (it fell behind).
    pub dropped_input: AtomicU64,
    pub duplicated: AtomicU64,
    pub corrupted: AtomicU64,
    pub reordered: AtomicU64,
    /// ARP and other non-IP frames, passed through unshaped (also in in/out).
    pub non_ip: AtomicU64,
    /// How long frames waited in the receive ring before the loop got to them (how
    /// late it woke), from the kernel's arrival stamps.
    pub waited: Lateness,
    /// Frames without a usable arrival stamp, timed by when the loop got to them.
    pub unstamped: AtomicU64,
    /// Bytes of a trace's delivery chances that passed with nothing waiting for the
    /// link (set, not added to).
    pub trace_unused_bytes: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            in_frames: l(&self.in_frames),
            in_bytes: l(&self.in_bytes),
            out_frames: l(&self.out_frames),
            out_bytes: l(&self.out_bytes),
            dropped_loss: l(&self.dropped_loss),
            dropped_queue: l(&self.dropped_queue),
            dropped_send: l(&self.dropped_send),
            dropped_input: l(&self.dropped_input),
            duplicated: l(&self.duplicated),
            corrupted: l(&self.corrupted),
            reordered: l(&self.reordered),
            non_ip: l(&self.non_ip),
            late_us: self.late.summary(),
            waited_us: self.waited.summary(),
            unstamped: l(&self.unstamped),
            trace_unused_bytes: l(&self.trace_unused_bytes),
        }
    }
}

/// An AF_PACKET socket bound to `ifname` (in the calling thread's namespace), seeing
/// every protocol, blind to its own output, promiscuous, with a receive ring
/// ([`ring::RxRing`]) and sending past the qdisc layer.
pub fn packet_socket(ifname: &str, ring_frames: u32) -> Result<OwnedFd> {
    crate::netlab::packet::open(
        ifname,
        crate::netlab::packet::Options {
            ignore_outgoing: true,
            promiscuous: true,
            buffer: 16 << 20,
            rx_ring: Some(ring::request(ring_frames)),
            qdisc_bypass: true,
        },
    )
}

/// One direction's settings as they change: what the control socket set, waiting for
/// the direction's thread, and what is in force (for the counters file).
#[derive(Debug)]
pub struct Live {
    changed: AtomicBool,
    next: std::sync::Mutex<Option<Params>>,
    current: std::sync::Mutex<Params>,
}

impl Live {
    pub fn new(p: Params) -> Live {
        Live {
            changed: AtomicBool::new(false),
            next: std::sync::Mutex::new(None),
            current: std::sync::Mutex::new(p),
        }
    }

    /// Sets new settings for the direction's thread to pick up.
    pub fn set(&self, p: Params) {
        if let Ok(mut c) = self.current.lock() {
            *c = p.clone();
        }
        if let Ok(mut n) = self.next.lock() {
            *n = Some(p);
        }
        self.changed.store(true, Ordering::Release);
    }

    /// The settings in force.
    pub fn current(&self) -> Params {
        self.current
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |c| c.clone())
    }

    /// New settings, once, if there are any (cheap when there are none).
    pub(crate) fn take(&self) -> Option<Params> {
        if !self.changed.swap(false, Ordering::Acquire) {
            return None;
        }
        self.next.lock().ok().and_then(|mut n| n.take())
    }
}

/// A change of settings, as the control socket takes it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Change {
    #[serde(default)]
    pub up: Option<Params>,
    #[serde(default)]
    pub down: Option<Params>,
}

/// The control socket of a counters file: `c0.json` -> `c0.sock`.
pub fn control_path(stats: &Path) -> PathBuf {
    stats.with_extension("sock")
}

/// Serves the control socket until `stop`: one change per connection.
fn control(listener: std::os::unix::net::UnixListener, up: &Live, down: &Live, stop: &AtomicBool) {
    use std::io::{BufRead, Read, Write};
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                tracing::warn!("control socket: {e}");
                return;
            }
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let mut reader = std::io::BufReader::new((&conn).take(64 * 1024));
        let answer = match reader.read_line(&mut line) {
            Ok(_) => match serde_json::from_str::<Change>(&line) {
                Ok(c) => {
                    if let Some(p) = c.up {
                        tracing::info!("up now: {}", p.describe());
                        up.set(p);
                    }
                    if let Some(p) = c.down {
                        tracing::info!("down now: {}", p.describe());
                        down.set(p);
                    }
                    "ok".to_owned()
                }
                Err(e) => format!("not a change of settings: {e}"),
            },
            Err(e) => format!("cannot read the change: {e}"),
        };
        let _ = (&conn).write_all(format!("{answer}\n").as_bytes());
    }
}

fn write_stats(path: &Path, s: &WireStats) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What `lab wire` runs with.
pub struct WireConfig {
    pub client_if: String,
    pub server_if: String,
    pub up: Params,
    pub down: Params,
    pub seed: u64,
    pub stats: Option<PathBuf>,
    /// How the forwarding loop waits.
    pub poll: forward::Poll,
    /// Slots in each interface's receive ring ([`crate::topology::model::ring::valid_frames`]).
    pub ring_frames: u32,
}

/// Runs the emulator until SIGTERM or SIGINT; prints the ready line once both sockets
/// are open. Call before any other thread exists (it blocks those signals).
pub fn run(cfg: WireConfig) -> Result<()> {
    // Block the stop signals in every thread; the main thread waits for them.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.thread_block().context("cannot block SIGTERM")?;

    let client = packet_socket(&cfg.client_if, cfg.ring_frames)
        .with_context(|| format!("cannot open {}", cfg.client_if))?;
    let server = packet_socket(&cfg.server_if, cfg.ring_frames)
        .with_context(|| format!("cannot open {}", cfg.server_if))?;
    let stop = Arc::new(AtomicBool::new(false));
    let up_c = Arc::new(Counters::default());
    let down_c = Arc::new(Counters::default());
    let (up_live, down_live) = (Live::new(cfg.up.clone()), Live::new(cfg.down.clone()));
    let stats = |up: &Counters, down: &Counters| WireStats {
        at_ns: now_ns(),
        seed: cfg.seed,
        up: up.snapshot(),
        down: down.snapshot(),
        up_params: up_live.current(),
        down_params: down_live.current(),
    };
    let engine = |p: &Params, up: bool| -> Result<Engine> {
        let e = Engine::new(p.clone(), direction_seed(cfg.seed, up));
        Ok(match &p.trace {
            Some(t) => e.with_trace(crate::shaping::trace::Trace::load(t)?, now_ns()),
            None => e,
        })
    };
    let up = forward::Dir::new(
        ring::RxRing::map(client.as_fd(), cfg.ring_frames)?,
        server.as_fd(),
        engine(&cfg.up, true)?,
        &up_c,
        &up_live,
    );
    let down = forward::Dir::new(
        ring::RxRing::map(server.as_fd(), cfg.ring_frames)?,
        client.as_fd(),
        engine(&cfg.down, false)?,
        &down_c,
        &down_live,
    );
    let link = forward::Link::new(up, down, cfg.poll)?;
    // The control socket, only lab's (0600), in lab's own run directory.
    let listener = match &cfg.stats {
        Some(p) => {
            let path = control_path(p);
            let _ = std::fs::remove_file(&path);
            let l = std::os::unix::net::UnixListener::bind(&path)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Some((l, path))
        }
        None => None,
    };
    let line = serde_json::json!({
        "event": "ready",
        "server": "wire",
        "listen": format!("{} <-> {}", cfg.client_if, cfg.server_if),
        "url": null,
        "cert_sha256": null,
        "seed": cfg.seed,
    });
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    tracing::info!(
        "forwarding {} <-> {}, seed {}",
        cfg.client_if,
        cfg.server_if,
        cfg.seed
    );
    let result = std::thread::scope(|s| -> Result<()> {
        let stop = &stop;
        let link = &link;
        let workers = [
            s.spawn(move || forward::main_loop(link, stop)),
            s.spawn(move || forward::helper_loop(link, stop)),
        ];
        if let Some((l, _)) = listener {
            let (ul, dl) = (&up_live, &down_live);
            s.spawn(move || control(l, ul, dl, stop));
        }
        loop {
            if let Some(p) = &cfg.stats {
                let _ = write_stats(p, &stats(&up_c, &down_c));
            }
            if workers.iter().any(|w| w.is_finished()) {
                break;
            }
            let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_secs(1));
            // SAFETY: waiting for one of the blocked signals, with a timeout.
            let sig =
                unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), ts.as_ref()) };
            if sig > 0 {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let r = workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| bail!("a forwarding thread panicked"))
        });
        link.count_ring_drops();
        r
    });
    if let Some(p) = &cfg.stats {
        let _ = std::fs::remove_file(control_path(p));
        write_stats(p, &stats(&up_c, &down_c))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    result
}
