//! pcap files of captured frames (microsecond timestamps, Ethernet link type), which
//! tcpdump and Wireshark read.

use anyhow::Result;
use std::fs::File;

/// The most of a frame kept in a pcap file.
pub const SNAP: usize = 65_535;

/// A pcap file (microsecond timestamps, Ethernet link type).
pub struct Pcap(std::io::BufWriter<File>);

impl Pcap {
    /// Starts a pcap file in `f` (new and empty) with its header.
    pub fn new(f: File) -> Result<Pcap> {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        // magic, version 2.4, zone, sigfigs, snaplen, LINKTYPE_ETHERNET
        w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        w.write_all(&2u16.to_le_bytes())?;
        w.write_all(&4u16.to_le_bytes())?;
        for v in [0u32, 0, SNAP as u32, 1] {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(Pcap(w))
    }

    pub fn write(&mut self, frame: &[u8], len: usize) -> Result<()> {
        use std::io::Write;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        for v in [
            now.as_secs() as u32,
            now.subsec_micros(),
            frame.len() as u32,
            len as u32,
        ] {
            self.0.write_all(&v.to_le_bytes())?;
        }
        self.0.write_all(frame)?;
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> Result<()> {
        use std::io::Write;
        Ok(self.0.flush()?)
    }
}
