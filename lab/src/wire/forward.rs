//! `lab wire`'s forwarding loop: frames from each direction's receive ring go through
//! the direction's [`Engine`] and out on the other interface, in batches
//! (`sendmmsg`). Frames that pass unchanged and at once (no impairment, or not IP) are
//! sent straight from their ring slot; held frames wait in a heap ordered by departure,
//! in buffers that are reused.
//!
//! How it waits decides the latency a token stream sees: a thread woken from `ppoll`
//! costs tens of microseconds in a VM. One thread forwards both directions (see
//! [`Link`] for when a second joins in). After any activity, and while a held frame is
//! due within [`SPIN`], it keeps polling its rings, so the reply that follows a frame,
//! or a departure, is handled without a wake-up; otherwise, and once polling has taken
//! `BUDGET` of the last `WINDOW`, it sleeps in `ppoll` on its rings until the next
//! departure is [`SPIN`] away. With [`Poll::Busy`] it never sleeps: it costs one CPU,
//! and saves the wake-up after idle too.
//!
//! The link model sees every frame of a direction in arrival order, timed by the
//! kernel's stamp of when it reached the wire ([`arrival`]), not by when the loop got
//! to it: neither batching nor a wake-up moves a departure, and no verdict of the
//! seeded model changes.

use super::Counters;
use super::Live;
use super::ring::{RxRing, Slot};
use crate::netlab::sys::now_ns;
use crate::shaping::engine::{Drop, Engine, Verdict};
use anyhow::{Result, bail};
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

const ETH_HLEN: usize = 14;
/// The largest frame lab wire forwards: a 64 KiB IP packet with its Ethernet header.
pub const MAX_FRAME: usize = 65_536 + ETH_HLEN;
/// Frames taken from one ring before the loop turns to the other direction and sends.
const BATCH: usize = 64;
/// How long the loop keeps polling after activity, and how close a departure must be
/// for it to poll rather than sleep: longer than a wake-up on the machines lab runs on
/// (about 60 us in a VM).
pub const SPIN: u64 = 200_000;
/// Polling with nothing to do may take at most this share of each [`WINDOW`]; past it,
/// the loop sleeps, so that many sparse flows (thousands of slow streams) cannot keep
/// a CPU spinning.
const BUDGET: u64 = WINDOW / 5;
const WINDOW: u64 = 10_000_000;
/// The longest sleep, so that a stop is noticed.
const MAX_SLEEP: u64 = 50_000_000;

/// How the loop waits when there is nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Poll for [`SPIN`] after activity (within `BUDGET`), then sleep.
    Adaptive,
    /// Never sleep.
    Busy,
}

fn add(a: &std::sync::atomic::AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn is_ip(frame: &[u8]) -> bool {
    frame.len() >= ETH_HLEN && matches!([frame[12], frame[13]], [0x08, 0x00] | [0x86, 0xdd])
}

struct Held {
    at: u64,
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    // A min-heap on (time, arrival order).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// CLOCK_MONOTONIC now, and CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns.
fn clocks() -> (u64, i128) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let real = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    let mono = now_ns();
    (mono, real - mono as i128)
}

/// When a frame stamped `ts` by the kernel reached the wire, on CLOCK_MONOTONIC: the
/// link model counts its delay from then, not from when the loop got to it (a
/// wake-up later, if it slept). The kernel stamps frames with CLOCK_REALTIME, except
/// those that keep their sender's CLOCK_MONOTONIC departure time across namespaces;
/// the two are told apart by size (a realtime stamp is decades of nanoseconds, a
/// monotonic one the time since boot). A stamp that is missing, in the future, or
/// over a second old (the clock was set) is no use: `None`, and the caller counts the
/// frame as arriving `now`.
pub fn arrival(ts: u64, now: u64, offset: i128) -> Option<u64> {
    const REALTIME: u64 = 1 << 60;
    let mono = if ts >= REALTIME {
        (ts as i128 - offset).clamp(0, u64::MAX as i128) as u64
    } else {
        ts
    };
    (mono != 0 && mono <= now && now - mono <= 1_000_000_000).then_some(mono)
}

/// A frame waiting to be sent in the next batch.
enum Out {
    /// Still in its receive slot.
    Slot(Slot),
    /// In a buffer of the pool.
    Buf(Vec<u8>),
}

/// One direction: its input ring, the socket it sends on, its link model and counters.
pub struct Dir<'a> {
    ring: RxRing<'a>,
    out: BorrowedFd<'a>,
    engine: Engine,
    counters: &'a Counters,
    live: &'a Live,
    identity: bool,
    heap: BinaryHeap<Held>,
    seq: u64,
    pool: Vec<Vec<u8>>,
    pending: Vec<Out>,
    big: Vec<u8>,
}

impl<'a> Dir<'a> {
    pub fn new(
        ring: RxRing<'a>,
        out: BorrowedFd<'a>,
        engine: Engine,
        counters: &'a Counters,
        live: &'a Live,
    ) -> Dir<'a> {
        Dir {
            identity: engine.params().is_identity(),
            ring,
            out,
            engine,
            counters,
            live,
            heap: BinaryHeap::new(),
            seq: 0,
            pool: Vec::new(),
            pending: Vec::with_capacity(BATCH * 2),
            big: Vec::new(),
        }
    }

    fn buffer(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(frame);
        b
    }

    /// Queues the held frames that are due by `now`; whether there were any.
    fn due(&mut self, now: u64) -> bool {
        let mut any = false;
        while self.heap.peek().is_some_and(|h| h.at <= now) {
            let h = self.heap.pop().expect("peeked");
            self.counters.late.record(now.saturating_sub(h.at));
            self.pending.push(Out::Buf(h.frame));
            any = true;
        }
        any
    }

    /// Reads up to a batch of frames from the ring; whether there were any.
    fn receive(&mut self) -> Result<bool> {
        let mut n = 0;
        let (mut now, mut offset) = (0, 0);
        while n < BATCH {
            let Some(slot) = self.ring.take() else { break };
            if n == 0 {
                (now, offset) = clocks();
            }
            n += 1;
            // A frame that reached the ring after `now` was read carries a stamp
            // after it: read the clock again before calling the stamp no use.
            let stamped = arrival(slot.ts_ns, now, offset).or_else(|| {
                (now, offset) = clocks();
                arrival(slot.ts_ns, now, offset)
            });
            let at = match stamped {
                Some(at) => {
                    self.counters.waited.record(now - at);
                    at
                }
                None => {
                    add(&self.counters.unstamped, 1);
                    now
                }
            };
            if slot.losing {
                add(&self.counters.dropped_input, self.ring.drops());
            }
            if slot.copy {
                // Too large for a slot: the whole frame is queued on the socket.
                self.ring.release(slot);
                self.receive_big(at)?;
                continue;
            }
            add(&self.counters.in_frames, 1);
            add(&self.counters.in_bytes, slot.len as u64);
            if slot.snaplen < slot.len {
                // Cut short and not queued whole: the socket's buffer was full.
                add(&self.counters.dropped_send, 1);
                self.ring.release(slot);
                continue;
            }
            // SAFETY: the slot is ours until released below or after it is sent.
            let frame = unsafe { slot.bytes() };
            let ip = is_ip(frame);
            if !ip {
                add(&self.counters.non_ip, 1);
            }
            if self.identity || !ip {
                self.pending.push(Out::Slot(slot));
                continue;
            }
            let b = self.buffer(frame);
            self.ring.release(slot);
            self.shape(at, b);
        }
        Ok(n > 0)
    }

    /// A frame too large for a ring slot, read whole from the socket; it arrived at
    /// `now`.
    fn receive_big(&mut self, now: u64) -> Result<()> {
        self.big.resize(MAX_FRAME, 0);
        // SAFETY: receiving into our buffer; MSG_TRUNC returns the real length.
        let n = unsafe {
            libc::recv(
                self.ring.fd().as_raw_fd(),
                self.big.as_mut_ptr().cast(),
                self.big.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => return Ok(()),
                _ => bail!("recv: {e}"),
            }
        }
        let len = n as usize;
        add(&self.counters.in_frames, 1);
        add(&self.counters.in_bytes, len as u64);
        if len > MAX_FRAME {
            // Larger than any frame we can hold: offloads are on somewhere.
            add(&self.counters.dropped_send, 1);
            return Ok(());
        }
        let big = std::mem::take(&mut self.big);
        let b = self.buffer(&big[..len]);
        self.big = big;
        let ip = is_ip(&b);
        if !ip {
            add(&self.counters.non_ip, 1);
        }
        if self.identity || !ip {
            self.pending.push(Out::Buf(b));
        } else {
            self.shape(now, b);
        }
        Ok(())
    }

    /// Runs an IP frame through the link model.
    fn shape(&mut self, now: u64, mut f: Vec<u8>) {
        let len = f.len();
        let verdict = self.engine.on_packet(now, len, len - ETH_HLEN);
        self.counters
            .trace_unused_bytes
            .fetch_max(self.engine.trace_unused_bytes(), Ordering::Relaxed);
        match verdict {
            Verdict::Drop(Drop::Loss) => {
                add(&self.counters.dropped_loss, 1);
                self.pool.push(f);
            }
            Verdict::Drop(Drop::Queue) => {
                add(&self.counters.dropped_queue, 1);
                self.pool.push(f);
            }
            Verdict::Send {
                at,
                corrupt_bit,
                duplicate_at,
                reordered,
            } => {
                if reordered {
                    add(&self.counters.reordered, 1);
                }
                if let Some(d) = duplicate_at {
                    add(&self.counters.duplicated, 1);
                    self.seq += 1;
                    let copy = self.buffer(&f);
                    self.heap.push(Held {
                        at: d,
                        seq: self.seq,
                        frame: copy,
                    });
                }
                if let Some(bit) = corrupt_bit {
                    f[ETH_HLEN + bit / 8] ^= 1 << (bit % 8);
                    add(&self.counters.corrupted, 1);
                }
                self.seq += 1;
                self.heap.push(Held {
                    at,
                    seq: self.seq,
                    frame: f,
                });
            }
        }
    }

    /// Sends what is pending, in as few system calls as the socket takes.
    fn flush(&mut self) {
        let n = self.pending.len();
        if n == 0 {
            return;
        }
        let mut iovs: Vec<libc::iovec> = self
            .pending
            .iter()
            .map(|o| {
                let (p, l) = match o {
                    Out::Slot(s) => (s.data, s.snaplen),
                    Out::Buf(b) => (b.as_ptr(), b.len()),
                };
                libc::iovec {
                    iov_base: p as *mut libc::c_void,
                    iov_len: l,
                }
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero msghdr is valid; the one iovec is set below.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_iov = iov;
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        let mut i = 0;
        while i < n {
            // SAFETY: the messages point at frames that stay put until after the call.
            let r = unsafe {
                libc::sendmmsg(
                    self.out.as_raw_fd(),
                    msgs[i..].as_mut_ptr(),
                    (n - i) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The egress refused this frame (ENOBUFS and the like): lost, as on a link.
                add(&self.counters.dropped_send, 1);
                i += 1;
                continue;
            }
            let r = r as usize;
            let bytes: usize = iovs[i..i + r].iter().map(|v| v.iov_len).sum();
            add(&self.counters.out_frames, r as u64);
            add(&self.counters.out_bytes, bytes as u64);
            i += r;
        }
        for o in self.pending.drain(..) {
            match o {
                Out::Slot(s) => self.ring.release(s),
                Out::Buf(b) => self.pool.push(b),
            }
        }
    }

    /// Takes new settings from `lab link set`, if any.
    fn settle(&mut self) {
        if let Some(p) = self.live.take() {
            self.identity = p.is_identity();
            self.engine.set_params(p);
        }
    }

    fn next_departure(&self) -> Option<u64> {
        self.heap.peek().map(|h| h.at)
    }
}

/// A doorbell: an eventfd a sleeping thread waits on, rung to wake it.
#[derive(Debug)]
pub struct Bell(std::os::fd::OwnedFd);

impl Bell {
    pub fn new() -> Result<Bell> {
        // SAFETY: eventfd(2); the fd is owned at once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            bail!("eventfd: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        Ok(Bell(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to our eventfd; a full counter just fails.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    fn clear(&self) {
        let mut b = [0u8; 8];
        // SAFETY: reading 8 bytes from our non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
    }
}

/// How long the main thread must have been busy without a break before the second
/// direction goes to the helper thread.
const SPLIT_AFTER: u64 = 500_000;
/// How long the helper's direction must have been quiet before it goes back.
const JOIN_AFTER: u64 = 2_000_000;

/// Both directions, and who is forwarding which. One thread (the main one) forwards
/// both, so that a thread that has just forwarded a frame is still polling when the
/// reply comes back the other way; when it has been busy without a break for
/// `SPLIT_AFTER` (a bulk transfer, thousands of streams), the second direction goes
/// to a helper thread, so that the two move in parallel on two CPUs, until that
/// direction has been quiet for `JOIN_AFTER`.
pub struct Link<'a> {
    dirs: [std::sync::Mutex<Dir<'a>>; 2],
    split: AtomicBool,
    helper: Bell,
    main: Bell,
    poll: Poll,
}

impl<'a> Link<'a> {
    pub fn new(up: Dir<'a>, down: Dir<'a>, poll: Poll) -> Result<Link<'a>> {
        Ok(Link {
            dirs: [std::sync::Mutex::new(up), std::sync::Mutex::new(down)],
            split: AtomicBool::new(false),
            helper: Bell::new()?,
            main: Bell::new()?,
            poll,
        })
    }

    fn fd(&self, i: usize) -> i32 {
        self.dirs[i].lock().map_or_else(
            |e| e.into_inner().ring.fd().as_raw_fd(),
            |d| d.ring.fd().as_raw_fd(),
        )
    }

    /// Counts what the receive rings dropped since the last look.
    pub fn count_ring_drops(&self) {
        for d in &self.dirs {
            if let Ok(d) = d.lock() {
                add(&d.counters.dropped_input, d.ring.drops());
            }
        }
    }
}

/// One turn on one direction: whether a frame moved, and its next departure.
fn turn(d: &std::sync::Mutex<Dir>) -> Result<(bool, Option<u64>)> {
    let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
    d.settle();
    let mut moved = d.receive()?;
    moved |= d.due(now_ns());
    d.flush();
    Ok((moved, d.next_departure()))
}

/// Sleeps in `ppoll` on `fds` for up to `wait_ns`; whether the last fd was readable.
fn sleep(fds: &[i32], wait_ns: u64) -> Result<bool> {
    let ts = libc::timespec {
        tv_sec: (wait_ns / 1_000_000_000) as i64,
        tv_nsec: (wait_ns % 1_000_000_000) as i64,
    };
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: our pollfds, a timeout, no signal mask change.
    let r = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            bail!("ppoll: {e}");
        }
        return Ok(false);
    }
    Ok(pfds.last().is_some_and(|p| p.revents & libc::POLLIN != 0))
}

/// Time spent polling with nothing to do, per [`WINDOW`].
struct Budget {
    window: u64,
    spent: u64,
    /// When the current stretch of polling was last accounted.
    polling: Option<u64>,
}

impl Budget {
    fn new(now: u64) -> Budget {
        Budget {
            window: now,
            spent: 0,
            polling: None,
        }
    }

    /// Whether the loop may poll on at `now`; counts the polling since the last call.
    fn poll(&mut self, now: u64, unlimited: bool) -> bool {
        if now - self.window >= WINDOW {
            self.window = now;
            self.spent = 0;
        }
        if let Some(t) = self.polling {
            self.spent += now - t;
        }
        let ok = unlimited || self.spent < BUDGET;
        self.polling = ok.then_some(now);
        ok
    }

    /// The loop did something (or slept): polling starts afresh.
    fn reset(&mut self) {
        self.polling = None;
    }
}

/// A moment's pause between two looks at the rings while polling. With one thread
/// forwarding both directions, a pure spin: yielding the CPU here (sched_yield) made
/// the added RTT worse on a 2-CPU VM. Once the directions are split (a bulk transfer,
/// both threads busy), the pause yields: the senders and receivers of the traffic
/// want the CPU then, and a spin took it from them (on 2 CPUs, iperf3 through lab wire
/// went from 0.72 to 0.78 of a bridge, and lab wire's user time from 9% to 2-4% of the
/// machine).
fn pause(yield_cpu: bool) {
    if yield_cpu {
        // SAFETY: sched_yield(2) takes no arguments and cannot fail on Linux.
        unsafe { libc::sched_yield() };
        return;
    }
    for _ in 0..64 {
        std::hint::spin_loop();
    }
}

/// The main thread: forwards both directions (the first only, while the helper has
/// the second) until `stop`.
pub fn main_loop(link: &Link, stop: &AtomicBool) -> Result<()> {
    // SAFETY: per-thread timer slack; 1 ns asks for the most precise wakeups.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0, 0, 0) };
    let bell = link.main.0.as_raw_fd();
    let rings = [link.fd(0), link.fd(1)];
    let mut last_active = now_ns();
    let mut busy_since = last_active;
    let mut budget = Budget::new(last_active);
    while !stop.load(Ordering::Relaxed) {
        let split = link.split.load(Ordering::Acquire);
        let mine = if split { 1 } else { 2 };
        let mut active = false;
        let mut next = u64::MAX;
        for d in &link.dirs[..mine] {
            let (moved, n) = turn(d)?;
            active |= moved;
            next = next.min(n.unwrap_or(u64::MAX));
        }
        let now = now_ns();
        if active {
            last_active = now;
            budget.reset();
            if !split && now - busy_since >= SPLIT_AFTER {
                link.split.store(true, Ordering::Release);
                link.helper.ring();
            }
            continue;
        }
        busy_since = now;
        let until_next = next.saturating_sub(now);
        let busy = link.poll == Poll::Busy;
        if (busy || now - last_active < SPIN || until_next < SPIN) && budget.poll(now, busy) {
            pause(split);
            continue;
        }
        budget.reset();
        // Sleep until a frame arrives, the next departure is SPIN away (or due, past
        // the budget), or the helper hands its direction back.
        let fds = [&rings[..mine], &[bell]].concat();
        let wake = if until_next < SPIN {
            until_next
        } else {
            until_next - SPIN
        };
        if sleep(&fds, wake.min(MAX_SLEEP))? {
            link.main.clear();
        }
    }
    Ok(())
}

/// The helper thread: sleeps until the main thread hands it the second direction,
/// forwards that until it has been quiet for `JOIN_AFTER`, and hands it back.
pub fn helper_loop(link: &Link, stop: &AtomicBool) -> Result<()> {
    // SAFETY: as in main_loop.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0, 0, 0) };
    let fd = link.fd(1);
    let bell = link.helper.0.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        if !link.split.load(Ordering::Acquire) {
            if sleep(&[bell], MAX_SLEEP)? {
                link.helper.clear();
            }
            continue;
        }
        let mut last_active = now_ns();
        let mut budget = Budget::new(last_active);
        while !stop.load(Ordering::Relaxed) {
            let (moved, next) = turn(&link.dirs[1])?;
            let now = now_ns();
            if moved {
                last_active = now;
                budget.reset();
                continue;
            }
            let until_next = next.map_or(u64::MAX, |t| t.saturating_sub(now));
            if now - last_active >= JOIN_AFTER && until_next >= JOIN_AFTER {
                link.split.store(false, Ordering::Release);
                link.main.ring();
                break;
            }
            if (now - last_active < SPIN || until_next < SPIN) && budget.poll(now, false) {
                pause(true);
            } else {
                budget.reset();
                let wake = if until_next < SPIN {
                    until_next
                } else {
                    until_next - SPIN
                };
                sleep(&[fd], wake.min(JOIN_AFTER))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::arrival;

    #[test]
    fn arrival_reads_either_clock_and_refuses_what_is_no_use() {
        let now = 5_000_000_000_000; // 5000 s since boot
        let offset = 1_700_000_000_000_000_000i128 - now as i128; // realtime - monotonic
        let real = |mono: u64| (mono as i128 + offset) as u64;
        // A realtime stamp 80 us ago, and a monotonic one.
        assert_eq!(arrival(real(now - 80_000), now, offset), Some(now - 80_000));
        assert_eq!(arrival(now - 80_000, now, offset), Some(now - 80_000));
        // Missing, in the future, or stale.
        assert_eq!(arrival(0, now, offset), None);
        assert_eq!(arrival(real(now + 1000), now, offset), None);
        assert_eq!(arrival(now - 2_000_000_000, now, offset), None);
    }
}
