//! AF_PACKET sockets bound to one interface, for the link emulator and the capture.
//! `recv` with MSG_TRUNC gives each frame's true length; `sll_pkttype` its direction.

use anyhow::{Result, bail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How to open a packet socket.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Do not see the frames this host sends (the emulator must not read its own output).
    pub ignore_outgoing: bool,
    /// See frames for other MAC addresses too.
    pub promiscuous: bool,
    /// Receive and send buffer sizes (root may exceed the sysctl limits).
    pub buffer: libc::c_int,
    /// A TPACKET_V2 receive ring of this shape, set up before the bind (map it with
    /// `wire::ring::RxRing`); frames too large for a slot are also queued whole.
    pub rx_ring: Option<libc::tpacket_req>,
    /// Send straight to the device, past the qdisc layer (`PACKET_QDISC_BYPASS`).
    pub qdisc_bypass: bool,
}

fn last(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

fn setopt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: &T) -> bool {
    // SAFETY: a plain value of the size the option expects, on our fd.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        ) == 0
    }
}

/// A non-blocking AF_PACKET socket for every protocol, bound to `ifname` in the calling
/// thread's network namespace.
pub fn open(ifname: &str, o: Options) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            proto as i32,
        )
    };
    if fd < 0 {
        return Err(last("socket(AF_PACKET)"));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {ifname} here");
    }
    if o.ignore_outgoing && !setopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32) {
        return Err(last("PACKET_IGNORE_OUTGOING"));
    }
    if let Some(req) = &o.rx_ring {
        let v2 = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        if !setopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &v2) {
            return Err(last("PACKET_VERSION"));
        }
        if !setopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, req) {
            return Err(last("PACKET_RX_RING"));
        }
        if !setopt(&fd, libc::SOL_PACKET, libc::PACKET_COPY_THRESH, &1i32) {
            return Err(last("PACKET_COPY_THRESH"));
        }
    }
    if o.qdisc_bypass && !setopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32) {
        return Err(last("PACKET_QDISC_BYPASS"));
    }
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !setopt(&fd, libc::SOL_SOCKET, force, &o.buffer)
            && !setopt(&fd, libc::SOL_SOCKET, plain, &o.buffer)
        {
            return Err(last("socket buffer size"));
        }
    }
    // SAFETY: zeroed, then filled.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: binding with a valid sockaddr_ll.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(last(&format!("bind to {ifname}")));
    }
    if o.promiscuous {
        // SAFETY: zeroed, then filled.
        let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mr.mr_ifindex = index as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        if !setopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr) {
            return Err(last("PACKET_MR_PROMISC"));
        }
    }
    Ok(fd)
}

/// Frames the kernel dropped on the packet socket `fd` because its buffer or ring was
/// full, since the last call (PACKET_STATISTICS; reading it resets it).
pub fn drops(fd: &impl std::os::fd::AsRawFd) -> u64 {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: reading the socket's statistics into a struct of their size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut st).cast(),
            &mut len,
        )
    };
    if r == 0 { u64::from(st.tp_drops) } else { 0 }
}
