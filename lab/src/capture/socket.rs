//! The capture itself: an AF_PACKET socket on one interface in a namespace, read on its
//! own thread until stopped; and the kernel's counters of that interface. Raw AF_PACKET
//! rather than pnet: pnet's reader drops the direction (`sll_pkttype`) and truncates
//! frames to its buffer; here MSG_TRUNC gives every frame's true length.

use super::count::{Counts, Kernel, count};
use super::pcap::{Pcap, SNAP};
use crate::netlab::{links, sys};
use anyhow::{Context, Result, anyhow, bail};
use netlink_packet_route::link::{LinkAttribute, Stats64};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

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

/// A capture running on one interface.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(Counts, Frames)>>,
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
        let mut pcap = pcap.map(Pcap::new).transpose()?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || -> Result<(Counts, Frames)> {
            let mut c = Counts::default();
            let mut kept = Frames::default();
            // Whole frames: the anatomy decodes them, and a pcap keeps them.
            let mut buf = vec![0u8; SNAP];
            loop {
                // Drain everything queued, then stop if asked (so nothing queued is lost).
                loop {
                    // SAFETY: zeroed sockaddr_ll for recvfrom to fill.
                    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    // SAFETY: receiving the head of a frame; MSG_TRUNC gives its length.
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                            (&mut sll as *mut libc::sockaddr_ll).cast(),
                            &mut sl,
                        )
                    };
                    if n < 0 {
                        let e = std::io::Error::last_os_error();
                        match e.raw_os_error() {
                            Some(libc::EAGAIN) | Some(libc::EINTR) => break,
                            _ => bail!("capture: {e}"),
                        }
                    }
                    let len = n as usize;
                    let head = &buf[..len.min(buf.len())];
                    let tx = sll.sll_pkttype == PACKET_OUTGOING;
                    kept.push(tx, head, len);
                    let d = if tx { &mut c.tx } else { &mut c.rx };
                    count(d, head, len, port);
                    let now = sys::now_ns();
                    if d.first_ns == 0 {
                        d.first_ns = now;
                    }
                    d.last_ns = now;
                    if let Some(p) = pcap.as_mut() {
                        p.write(head, len)?;
                    }
                }
                if st.load(Ordering::SeqCst) {
                    if let Some(mut p) = pcap {
                        p.flush()?;
                    }
                    return Ok((c, kept));
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
    pub fn finish(self) -> Result<(Counts, Frames)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| bail!("the capture thread panicked"))
    }
}
