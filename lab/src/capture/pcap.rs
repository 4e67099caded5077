//! pcapng files of captured frames, with the kernel's receive timestamps (nanoseconds)
//! and the clients' TLS secrets embedded in a Decryption Secrets Block, so Wireshark
//! decrypts the TLS and QUIC traffic from the one file.
//!
//! The secrets are known only once the cell has run, and a Decryption Secrets Block
//! must come before the packets it decrypts. So a capture writes its interface and
//! packets to an unnamed scratch file ([`PcapNg`]); [`seal`] then writes the file
//! people open: section header, secrets, then the scratch file's blocks.

use anyhow::{Context, Result};
use pcap_file::DataLink;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{PcapNgWriter, RawBlock};
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::time::Duration;

/// The most of a frame kept.
pub const SNAP: usize = 65_535;

/// Block type of a Decryption Secrets Block, and its secrets type for an SSLKEYLOGFILE
/// key log ("TLSK"), which Wireshark reads for TLS and QUIC alike.
const DSB: u32 = 0x0000_000A;
const TLS_KEY_LOG: u32 = 0x544c_534b;

/// A capture's interface and packets being written (to a scratch file).
pub struct PcapNg(PcapNgWriter<BufWriter<File>>);

impl PcapNg {
    /// Starts writing into `f` (new and empty): a section header and the interface
    /// (Ethernet, nanosecond timestamps).
    pub fn new(f: File) -> Result<PcapNg> {
        let mut w = PcapNgWriter::new(BufWriter::new(f))?;
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: SNAP as u32,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        })?;
        Ok(PcapNg(w))
    }

    /// One frame: its bytes (up to [`SNAP`]), its true length, and when the kernel saw
    /// it (since the Unix epoch).
    pub fn write(&mut self, frame: &[u8], len: usize, at: Duration) -> Result<()> {
        self.0.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: at,
            original_len: len as u32,
            data: Cow::Borrowed(frame),
            options: vec![],
        })?;
        Ok(())
    }

    /// Writes out what is buffered and returns the scratch file.
    pub fn finish(self) -> Result<File> {
        self.0
            .into_inner()
            .into_inner()
            .map_err(|e| e.into_error())
            .context("cannot write the capture")
    }
}

/// A Decryption Secrets Block holding `keys` (SSLKEYLOGFILE lines).
fn secrets_block(keys: &str) -> RawBlock<'static> {
    let mut body = Vec::with_capacity(keys.len() + 12);
    body.extend_from_slice(&TLS_KEY_LOG.to_ne_bytes());
    body.extend_from_slice(&(keys.len() as u32).to_ne_bytes());
    body.extend_from_slice(keys.as_bytes());
    body.resize(body.len().next_multiple_of(4), 0);
    let len = body.len() as u32 + 12;
    RawBlock {
        type_: DSB,
        initial_len: len,
        body: Cow::Owned(body),
        trailer_len: len,
    }
}

/// Writes the pcapng file into `out`: a section header, `keys` as a Decryption Secrets
/// Block (if any), then the interface and packets of `scratch` (from [`PcapNg::finish`]).
pub fn seal(mut scratch: File, out: File, keys: &str) -> Result<()> {
    // The scratch file's own section header is replaced: skip it.
    scratch.seek(SeekFrom::Start(0))?;
    let mut head = [0u8; 8];
    scratch
        .read_exact(&mut head)
        .context("the capture's scratch file has no section header")?;
    let shb = u32::from_ne_bytes([head[4], head[5], head[6], head[7]]);
    scratch.seek(SeekFrom::Start(u64::from(shb)))?;
    let mut w = PcapNgWriter::new(BufWriter::new(out))?;
    if !keys.is_empty() {
        w.write_raw_block(&secrets_block(keys))?;
    }
    let mut out = w.into_inner();
    std::io::copy(&mut scratch, &mut out).context("cannot write the pcapng file")?;
    let out = out
        .into_inner()
        .map_err(|e| e.into_error())
        .context("cannot write the pcapng file")?;
    out.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn scratch() -> File {
        let path = std::env::temp_dir().join(format!("lab-pcapng-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn sealed_files_carry_the_secrets_first_then_the_packets_in_nanoseconds() {
        let mut p = PcapNg::new(scratch()).unwrap();
        let at = Duration::new(1_790_000_000, 123_456_789);
        p.write(&[0xaa; 60], 60, at).unwrap();
        p.write(&[0xbb; 100], 1514, at + Duration::from_nanos(1))
            .unwrap();
        let part = p.finish().unwrap();
        let out = scratch();
        let keys = "CLIENT_TRAFFIC_SECRET_0 00 11\nSERVER_TRAFFIC_SECRET_0 00 2\n";
        seal(part, out.try_clone().unwrap(), keys).unwrap();
        let mut f = out;
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut r = PcapNgReader::new(f).unwrap();
        let mut kinds = Vec::new();
        let mut packets = Vec::new();
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::Unknown(u) => {
                    kinds.push(u.type_);
                    let body = &u.value;
                    assert_eq!(
                        u32::from_ne_bytes(body[0..4].try_into().unwrap()),
                        TLS_KEY_LOG
                    );
                    let n = u32::from_ne_bytes(body[4..8].try_into().unwrap()) as usize;
                    assert_eq!(&body[8..8 + n], keys.as_bytes());
                    assert_eq!(body.len() % 4, 0);
                }
                Block::InterfaceDescription(i) => {
                    kinds.push(1);
                    assert!(
                        i.options
                            .contains(&InterfaceDescriptionOption::IfTsResol(9))
                    );
                }
                Block::EnhancedPacket(e) => {
                    kinds.push(6);
                    packets.push((e.timestamp, e.original_len, e.data.len()));
                }
                other => panic!("unexpected block {other:?}"),
            }
        }
        // Section header (read by the reader), secrets, interface, two packets.
        assert_eq!(kinds, [DSB, 1, 6, 6]);
        assert_eq!(packets[0], (at, 60, 60));
        assert_eq!(packets[1], (at + Duration::from_nanos(1), 1514, 100));
    }
}
