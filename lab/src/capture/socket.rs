//! The capture itself: an AF_PACKET socket on one interface in a namespace, read on its
//! own thread until stopped; and the kernel's counters of that interface. Raw AF_PACKET
//! rather than pnet: pnet's reader drops the direction (`sll_pkttype`) and truncates
//! frames to its buffer; here MSG_TRUNC gives every frame's true length.

use super::count::{Counts, EDGE_NS, Kernel, count};
use super::pcap::{PcapNg, SNAP};
use crate::netlab::{links, sys};
use anyhow::{Context, Result, anyhow, bail};
use netlink_packet_route::link::{LinkAttribute, Stats64};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const PACKET_OUTGOING: u8 = 4;

/// The kernel's counters of `ifname` in the namespace `ns`.
pub fn kernel_counters(ns: &File, ifname: &str) -> Result<Kernel> {
    sys::in_netns(ns, || {
        links::with_netlink(async |h| {
            let l = links::get(&h, ifname).await?;
            let s: Stats64 = l
                .attributes
                .into_iter()
                .find_map(|a| match a {
                    LinkAttribute::Stats64(s) => Some(s),
                    _ => None,
                })
                .ok_or_else(|| anyhow!("{ifname} has no stats"))?;
            Ok(Kernel {
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
            })
        })
    })
}

/// The most frame bytes one capture keeps for decoding; past it, frames are still
/// counted but no longer kept, and the anatomy says so.
pub const MAX_KEPT: usize = 512 << 20;

/// The frames a capture kept, in order, in one buffer.
#[derive(Debug, Default)]
pub struct Frames {
    bytes: Vec<u8>,
    /// (start in `bytes`, bytes kept, true length, sent by this end, the kernel's stamp)
    index: Vec<(usize, usize, usize, bool, u64)>,
    /// Frames seen but not kept (over [`MAX_KEPT`]).
    pub dropped: u64,
}

impl Frames {
    fn push(&mut self, tx: bool, data: &[u8], len: usize, at_ns: u64) {
        if self.bytes.len() + data.len() > MAX_KEPT {
            self.dropped += 1;
            return;
        }
        self.index
            .push((self.bytes.len(), data.len(), len, tx, at_ns));
        self.bytes.extend_from_slice(data);
    }

    /// How many frames were kept.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The kept frames, for [`crate::anatomy::analyze`].
    pub fn frames(&self) -> Vec<crate::anatomy::Frame<'_>> {
        self.index
            .iter()
            .map(|&(start, n, len, tx, at_ns)| crate::anatomy::Frame {
                tx,
                len,
                data: &self.bytes[start..start + n],
                at_ns,
            })
            .collect()
    }
}

/// What a capture gives back: the counts, the frames kept, and with a pcap, the
/// scratch file of its packets (for [`super::pcap::seal`]).
pub type Captured = (Counts, Frames, Option<File>);

/// A frame is counted only once it is this old (by its stamp), or once the window's
/// end is known: until then the window may still end before it.
const HOLD_NS: u64 = 50_000_000;

/// `until` while the end's counters are being read ([`Capture::closing`]): nothing is
/// placed until the end is known.
const CLOSING: u64 = u64::MAX - 1;

/// A capture running on one interface. Only frames stamped inside its window count:
/// from [`Capture::count_from`] (the moment before the kernel's counters are read at
/// the start) to the `until` given to [`Capture::finish`] (the moment after they are
/// read at the end), so the capture and the counters' difference cover the same
/// frames. Frames outside are tallied apart ([`Counts::outside`]).
pub struct Capture {
    stop: Arc<AtomicBool>,
    from: Arc<AtomicU64>,
    until: Arc<AtomicU64>,
    thread: JoinHandle<Result<Captured>>,
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME, the clock of the capture's
/// stamps).
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Receives one frame from the packet socket `fd` without waiting: its true length,
/// whether this end sent it, and the kernel's timestamp of it (SO_TIMESTAMPNS, since
/// the Unix epoch). None when nothing is queued.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> Result<Option<(usize, bool, Duration)>> {
    use nix::sys::socket::{ControlMessageOwned, LinkAddr, MsgFlags, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let m = match recvmsg::<LinkAddr>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(None),
        Err(e) => bail!("capture: {e}"),
    };
    let tx = m.address.is_some_and(|a| a.pkttype() == PACKET_OUTGOING);
    let mut at = None;
    for c in m.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(t) = c {
            at = Some(Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32));
        }
    }
    // Without the kernel's stamp (never seen on Linux), the time of reading.
    let at = at.unwrap_or_else(|| Duration::from_nanos(realtime_ns()));
    Ok(Some((m.bytes, tx, at)))
}

/// Opens an AF_PACKET socket on `ifname` in `ns` (both directions, true lengths).
fn open(ns: &File, ifname: &str) -> Result<OwnedFd> {
    sys::in_netns(ns, || {
        crate::netlab::packet::open(
            ifname,
            crate::netlab::packet::Options {
                ignore_outgoing: false,
                promiscuous: false,
                buffer: 32 << 20,
                rx_ring: None,
                qdisc_bypass: false,
            },
        )
    })
    .with_context(|| format!("cannot capture on {ifname}"))
}

/// A frame received but not yet placed inside or outside the window.
struct Pending {
    tx: bool,
    at_ns: u64,
    len: usize,
    head: Vec<u8>,
}

/// The capture thread's tallies.
struct Tally {
    c: Counts,
    kept: Frames,
    pcap: Option<PcapNg>,
    port: u16,
    /// CLOCK_REALTIME less CLOCK_MONOTONIC, to give `first_ns`/`last_ns` in the latter.
    offset: i128,
}

impl Tally {
    /// Places `f` against the window [`from`, `until`]: counted (and kept, and written
    /// to the pcap) inside it, tallied apart outside it; an edge frame either way.
    fn place(&mut self, f: &Pending, from: u64, until: u64) -> Result<()> {
        let inside = f.at_ns >= from && f.at_ns <= until;
        let near = f.at_ns.abs_diff(from) <= EDGE_NS
            || (until != u64::MAX && f.at_ns.abs_diff(until) <= EDGE_NS);
        let ip = matches!(f.head.get(12..14), Some([0x08, 0x00]) | Some([0x86, 0xdd]));
        if near {
            self.c.edge.push(super::count::EdgeFrame {
                tx: f.tx,
                len: f.len as u64,
                inside,
                ip,
            });
        }
        if !inside {
            let o = &mut self.c.outside;
            if f.at_ns < from {
                o.before += 1;
            } else {
                o.after += 1;
            }
            if !ip {
                o.non_ip += 1;
            }
            return Ok(());
        }
        self.kept.push(f.tx, &f.head, f.len, f.at_ns);
        let d = if f.tx { &mut self.c.tx } else { &mut self.c.rx };
        count(d, &f.head, f.len, self.port);
        let mono = (i128::from(f.at_ns) - self.offset).max(0) as u64;
        if d.first_ns == 0 {
            d.first_ns = mono;
        }
        d.last_ns = mono;
        if let Some(p) = self.pcap.as_mut() {
            p.write(&f.head, f.len, Duration::from_nanos(f.at_ns))?;
        }
        Ok(())
    }
}

impl Capture {
    /// Starts capturing every frame on `ifname` in `ns`; `port` is the server's port.
    /// With `pcap`, every frame counted is also written to that file (new and empty).
    /// Nothing counts until [`Capture::count_from`] says where the window starts.
    pub fn start(ns: &File, ifname: &str, port: u16, pcap: Option<File>) -> Result<Capture> {
        let sock = open(ns, ifname)?;
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
            .context("cannot ask the kernel for capture timestamps")?;
        // The drops counted so far (none: the socket is new) are reset by reading.
        crate::netlab::packet::drops(&sock);
        let pcap = pcap.map(PcapNg::new).transpose()?;
        let stop = Arc::new(AtomicBool::new(false));
        let from = Arc::new(AtomicU64::new(u64::MAX));
        let until = Arc::new(AtomicU64::new(u64::MAX));
        let (st, fr, un) = (stop.clone(), from.clone(), until.clone());
        let thread = std::thread::spawn(move || -> Result<Captured> {
            let offset = i128::from(realtime_ns()) - i128::from(sys::now_ns());
            let mut t = Tally {
                c: Counts::default(),
                kept: Frames::default(),
                pcap,
                port,
                offset,
            };
            let mut pending: std::collections::VecDeque<Pending> = Default::default();
            // Whole frames: the anatomy decodes them, and a pcap keeps them.
            let mut buf = vec![0u8; SNAP];
            loop {
                // Whether to stop is read before draining: every frame queued before
                // the stop was asked for is then drained (nothing queued is lost).
                let stopping = st.load(Ordering::SeqCst);
                while let Some((len, tx, at)) = receive(&sock, &mut buf)? {
                    pending.push_back(Pending {
                        tx,
                        at_ns: at.as_nanos() as u64,
                        len,
                        head: buf[..len.min(buf.len())].to_vec(),
                    });
                }
                let (from, until) = (fr.load(Ordering::SeqCst), un.load(Ordering::SeqCst));
                // Place what can be placed: everything once the end is known; before,
                // only frames old enough that the end cannot come before them.
                if from != u64::MAX && until != CLOSING {
                    let ripe = realtime_ns().saturating_sub(HOLD_NS);
                    while let Some(f) = pending.front() {
                        if until == u64::MAX && f.at_ns > ripe {
                            break;
                        }
                        let f = pending.pop_front().unwrap_or_else(|| unreachable!());
                        t.place(&f, from, until)?;
                    }
                }
                if stopping {
                    if from == u64::MAX || until >= CLOSING {
                        bail!("the capture was stopped before its window was set");
                    }
                    t.c.socket_drops = crate::netlab::packet::drops(&sock);
                    let file = t.pcap.map(PcapNg::finish).transpose()?;
                    return Ok((t.c, t.kept, file));
                }
                let mut pfd = libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd, 20 ms.
                unsafe { libc::poll(&mut pfd, 1, 20) };
            }
        });
        Ok(Capture {
            stop,
            from,
            until,
            thread,
        })
    }

    /// The window starts at `at_ns` (CLOCK_REALTIME): frames stamped before it are
    /// tallied apart.
    pub fn count_from(&self, at_ns: u64) {
        self.from.store(at_ns, Ordering::SeqCst);
    }

    /// Says the window is about to end: from now until [`Capture::finish`], no frame is
    /// counted, so none stamped after the end can be counted before the end is known.
    pub fn closing(&self) {
        self.until.store(CLOSING, Ordering::SeqCst);
    }

    /// Ends the window at `until_ns` (CLOCK_REALTIME), reads every frame already
    /// queued, and returns the counts and the frames.
    pub fn finish(self, until_ns: u64) -> Result<Captured> {
        // Anything stamped by now is queued on the socket: the thread reads it all.
        self.until.store(until_ns, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| bail!("the capture thread panicked"))
    }
}
