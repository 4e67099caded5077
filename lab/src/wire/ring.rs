//! The receive ring of one of `lab wire`'s packet sockets (TPACKET_V2, mmap'd): the
//! kernel copies each arriving frame into the next free slot, and the emulator reads
//! slots straight from memory, with no system call per frame and no wake-up while it
//! is busy. A frame too large for a slot is marked `TP_STATUS_COPY` and queued on the
//! socket as well (`PACKET_COPY_THRESH`), where `recv` reads it whole.
//!
//! It does not open the socket ([`crate::netlab::packet::open`] does, with the ring
//! set up before the bind) and knows nothing of the link model.

use anyhow::{Result, bail};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};

pub use crate::topology::model::ring::{DEFAULT_FRAMES, FRAME_SIZE, MAX_FRAMES, MIN_FRAMES};
const BLOCK_SIZE: u32 = 1 << 16;

/// The kernel's kind of ring this is: TPACKET_V2, one frame per slot, each released
/// on its own; `frames` slots ([`crate::topology::model::ring::valid_frames`]).
pub fn request(frames: u32) -> libc::tpacket_req {
    libc::tpacket_req {
        tp_block_size: BLOCK_SIZE,
        tp_block_nr: frames * FRAME_SIZE / BLOCK_SIZE,
        tp_frame_size: FRAME_SIZE,
        tp_frame_nr: frames,
    }
}

/// A mapped receive ring on a packet socket (which outlives it).
pub struct RxRing<'fd> {
    fd: BorrowedFd<'fd>,
    map: *mut u8,
    len: usize,
    frames: usize,
    head: usize,
}

// SAFETY: the mapping is owned by this value and only touched through it; slots are
// handed over to and from the kernel through their status word.
unsafe impl Send for RxRing<'_> {}
unsafe impl Sync for RxRing<'_> {}

/// One received frame, still in its slot.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    index: usize,
    /// The frame as received (at most the slot's room).
    pub data: *const u8,
    pub snaplen: usize,
    /// The frame's real length.
    pub len: usize,
    /// The kernel truncated it into the slot and queued it whole on the socket.
    pub copy: bool,
    /// The ring was full before this frame: some were dropped.
    pub losing: bool,
    /// When the kernel received it, in ns: CLOCK_REALTIME as a rule, or the sender's
    /// CLOCK_MONOTONIC departure time where the frame kept it across namespaces (TCP's
    /// earliest departure time); see `forward::arrival`.
    pub ts_ns: u64,
}

// SAFETY: a slot points into its ring's mapping, which moves with the ring.
unsafe impl Send for Slot {}

impl Slot {
    /// The frame's bytes in the slot.
    ///
    /// # Safety
    /// The slot must not have been released yet.
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: the caller keeps the slot; the kernel wrote `snaplen` bytes there.
        unsafe { std::slice::from_raw_parts(self.data, self.snaplen) }
    }
}

impl<'fd> RxRing<'fd> {
    /// Maps the ring of `frames` slots that `fd` was set up with ([`request`]).
    pub fn map(fd: BorrowedFd<'fd>, frames: u32) -> Result<RxRing<'fd>> {
        let len = (frames * FRAME_SIZE) as usize;
        // SAFETY: mapping the socket's ring, whose size the request set.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            bail!(
                "mmap of the receive ring: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(RxRing {
            fd,
            map: map.cast(),
            len,
            frames: frames as usize,
            head: 0,
        })
    }

    /// The socket (for poll, and the frames too large for a slot).
    pub fn fd(&self) -> BorrowedFd<'fd> {
        self.fd
    }

    fn header(&self, index: usize) -> *mut libc::tpacket2_hdr {
        // SAFETY: index < frames, so the slot lies inside the mapping; slots never
        // straddle blocks (BLOCK_SIZE is a multiple of FRAME_SIZE).
        unsafe { self.map.add(index * FRAME_SIZE as usize).cast() }
    }

    fn status(&self, index: usize) -> &AtomicU32 {
        // SAFETY: tp_status is the header's first field, a u32 the kernel and we
        // hand back and forth; an atomic view of it orders the slot's contents.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.header(index)).tp_status)) }
    }

    /// The next frame, if the kernel has handed one over; the ring moves past it. It
    /// stays in its slot until [`RxRing::release`].
    pub fn take(&mut self) -> Option<Slot> {
        let i = self.head;
        let st = self.status(i).load(Ordering::Acquire);
        if st & libc::TP_STATUS_USER == 0 {
            return None;
        }
        let h = self.header(i);
        // SAFETY: the slot is ours (TP_STATUS_USER) until released.
        let (mac, snaplen, len, sec, nsec) = unsafe {
            (
                (*h).tp_mac as usize,
                (*h).tp_snaplen as usize,
                (*h).tp_len as usize,
                (*h).tp_sec as u64,
                (*h).tp_nsec as u64,
            )
        };
        let room = FRAME_SIZE as usize;
        let snaplen = if mac >= room {
            0
        } else {
            snaplen.min(room - mac)
        };
        self.head = (i + 1) % self.frames;
        Some(Slot {
            index: i,
            // SAFETY: mac < FRAME_SIZE, inside the slot.
            data: unsafe { h.cast::<u8>().add(mac.min(room)) },
            snaplen,
            len,
            copy: st & libc::TP_STATUS_COPY != 0,
            losing: st & libc::TP_STATUS_LOSING != 0,
            ts_ns: sec * 1_000_000_000 + nsec,
        })
    }

    /// Hands a slot back to the kernel.
    pub fn release(&self, s: Slot) {
        self.status(s.index)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }

    /// Frames the kernel dropped because the ring was full, since the last call.
    pub fn drops(&self) -> u64 {
        crate::netlab::packet::drops(&self.fd)
    }
}

impl Drop for RxRing<'_> {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped; no slot outlives the ring.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}
