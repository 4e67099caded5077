//! Interface offloads through the SIOCETHTOOL ioctl (netlink has no verb for them).
//!
//! veth pairs segment and checksum in software by default: a bulk TCP capture sees
//! 65 KB "frames", and a userspace forwarder passes on frames with partial checksums.
//! lab turns off every segmentation offload, GRO and the checksum offloads,
//! by feature name (the kernel's string set), so new features such as
//! `tx-tcp-accecn-segmentation` are covered without a table of bit numbers.

use anyhow::{Result, bail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// Is this a feature lab turns off?
pub fn is_unwanted(name: &str) -> bool {
    let segmentation =
        name.starts_with("tx-") && (name.contains("segmentation") || name.contains("gso"));
    let checksum =
        (name.starts_with("tx-") || name.starts_with("rx-")) && name.contains("checksum");
    segmentation
        || checksum
        || name.starts_with("rx-gro")
        || name == "rx-lro"
        || name == "rx-udp-gro-forwarding"
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ioctl(sock: &OwnedFd, ifname: &str, buf: &mut [u32]) -> Result<i32> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: buf.as_mut_ptr().cast(),
        _pad: [0; 16],
    };
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name {ifname} is too long");
    }
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a buffer sized for the command.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        bail!("SIOCETHTOOL on {ifname}: {e}");
    }
    Ok(r)
}

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The feature names of an interface, by bit.
fn feature_names(sock: &OwnedFd, ifname: &str) -> Result<Vec<String>> {
    // struct ethtool_sset_info { u32 cmd, reserved; u64 sset_mask; u32 data[1]; }
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ioctl(sock, ifname, &mut info)?;
    let count = info[4] as usize;
    // struct ethtool_gstrings { u32 cmd, string_set, len; u8 data[len * 32]; }
    let mut buf = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    buf[0] = ETHTOOL_GSTRINGS;
    buf[1] = ETH_SS_FEATURES;
    buf[2] = count as u32;
    ioctl(sock, ifname, &mut buf)?;
    let bytes: Vec<u8> = buf[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect())
}

/// Per 32-bit block: (available, requested, active, never_changed).
fn get_features(sock: &OwnedFd, ifname: &str, count: usize) -> Result<Vec<[u32; 4]>> {
    let blocks = count.div_ceil(32);
    let mut buf = vec![0u32; 2 + blocks * 4];
    buf[0] = ETHTOOL_GFEATURES;
    buf[1] = blocks as u32;
    ioctl(sock, ifname, &mut buf)?;
    Ok(buf[2..]
        .chunks(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}

fn bit(blocks: &[[u32; 4]], i: usize, field: usize) -> bool {
    blocks[i / 32][field] & (1 << (i % 32)) != 0
}

/// Active features of `ifname` (in the calling thread's namespace), by name.
pub fn active_features(ifname: &str) -> Result<Vec<String>> {
    let sock = socket()?;
    let names = feature_names(&sock, ifname)?;
    let blocks = get_features(&sock, ifname, names.len())?;
    Ok(names
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bit(&blocks, *i, 2))
        .map(|(_, n)| n)
        .collect())
}

/// Turns off every unwanted offload of `ifname` that the driver lets change, then checks
/// that none is still active.
pub fn disable_offloads(ifname: &str) -> Result<()> {
    let sock = socket()?;
    let names = feature_names(&sock, ifname)?;
    let blocks = get_features(&sock, ifname, names.len())?;
    // struct ethtool_sfeatures { u32 cmd, size; { u32 valid, requested; }[size] }
    let mut set = vec![0u32; 2 + blocks.len() * 2];
    set[0] = ETHTOOL_SFEATURES;
    set[1] = blocks.len() as u32;
    let mut any = false;
    for (i, n) in names.iter().enumerate() {
        if is_unwanted(n) && bit(&blocks, i, 0) {
            set[2 + (i / 32) * 2] |= 1 << (i % 32);
            any = true;
        }
    }
    if any {
        // A positive return only says some wish differs from the result; checked below.
        ioctl(&sock, ifname, &mut set)?;
    }
    let after = get_features(&sock, ifname, names.len())?;
    let still: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, n)| is_unwanted(n) && bit(&after, *i, 2))
        .map(|(_, n)| n.as_str())
        .collect();
    if !still.is_empty() {
        bail!(
            "cannot turn off {} on {ifname}; the driver keeps them on",
            still.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_unwanted;

    #[test]
    fn picks_segmentation_checksum_and_gro() {
        for n in [
            "tx-tcp-segmentation",
            "tx-tcp-accecn-segmentation",
            "tx-udp-segmentation",
            "tx-generic-segmentation",
            "tx-checksum-ip-generic",
            "tx-gso-partial",
            "tx-gso-list",
            "rx-gro",
            "rx-gro-list",
            "rx-udp-gro-forwarding",
            "rx-lro",
            "rx-checksum",
        ] {
            assert!(is_unwanted(n), "{n}");
        }
        for n in [
            "tx-scatter-gather",
            "highdma",
            "rx-vlan-hw-parse",
            "tx-lockless",
        ] {
            assert!(!is_unwanted(n), "{n}");
        }
    }
}
