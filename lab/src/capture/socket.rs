//! The capture itself: an AF_PACKET socket on one interface in a namespace, read on its
//! own thread until stopped; and the kernel's counters of that interface. Raw AF_PACKET
//! rather than pnet: pnet's reader drops the direction (`sll_pkttype`) and truncates
//! frames to its buffer; here MSG_TRUNC gives every frame's true length.

use super::count::{Counts, Kernel, count};
use super::pcap::{PcapNg, SNAP};
use crate::netlab::{links, sys};
use anyhow::{Context, Result, anyhow, bail};
use netlink_packet_route::link::{LinkAttribute, Stats64};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// (start in `bytes`, bytes kept, true length, sent by this end)
    index: Vec<(usize, usize, usize, bool)>,
    /// Frames seen but not kept (over [`MAX_KEPT`]).
    pub dropped: u64,
}

impl Frames {
    fn push(&mut self, tx: bool, data: &[u8], len: usize) {
        if self.bytes.len() + data.len() > MAX_KEPT {
            self.dropped += 1;
            return;
        }
        self.index.push((self.bytes.len(), data.len(), len, tx));
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
            .map(|&(start, n, len, tx)| crate::anatomy::Frame {
                tx,
                len,
                data: &self.bytes[start..start + n],
            })
            .collect()
    }
}

/// What a capture gives back: the counts, the frames kept, and with a pcap, the
/// scratch file of its packets (for [`super::pcap::seal`]).
pub type Captured = (Counts, Frames, Option<File>);

/// A capture running on one interface.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Captured>>,
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
    let at = at.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    });
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

impl Capture {
    /// Starts counting every frame on `ifname` in `ns`; `port` is the server's port.
    /// With `pcap`, every frame is also written to that file (new and empty).
    pub fn start(ns: &File, ifname: &str, port: u16, pcap: Option<File>) -> Result<Capture> {
        let fd = open(ns, ifname)?;
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
            .context("cannot ask the kernel for capture timestamps")?;
        let mut pcap = pcap.map(PcapNg::new).transpose()?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || -> Result<Captured> {
            let mut c = Counts::default();
            let mut kept = Frames::default();
            // Whole frames: the anatomy decodes them, and a pcap keeps them.
            let mut buf = vec![0u8; SNAP];
            loop {
                // Drain everything queued, then stop if asked (so nothing queued is lost).
                while let Some((len, tx, at)) = receive(&fd, &mut buf)? {
                    let head = &buf[..len.min(buf.len())];
                    kept.push(tx, head, len);
                    let d = if tx { &mut c.tx } else { &mut c.rx };
                    count(d, head, len, port);
                    let now = sys::now_ns();
                    if d.first_ns == 0 {
                        d.first_ns = now;
                    }
                    d.last_ns = now;
                    if let Some(p) = pcap.as_mut() {
                        p.write(head, len, at)?;
                    }
                }
                if st.load(Ordering::SeqCst) {
                    let file = pcap.map(PcapNg::finish).transpose()?;
                    return Ok((c, kept, file));
                }
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd, 20 ms.
                unsafe { libc::poll(&mut pfd, 1, 20) };
            }
        });
        Ok(Capture { stop, thread })
    }

    /// Stops and returns the counts and the frames (after reading every frame already
    /// queued).
    pub fn finish(self) -> Result<Captured> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| bail!("the capture thread panicked"))
    }
}
