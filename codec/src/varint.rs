//! QUIC's variable-length integers (RFC 9000 16), which HTTP/3, WebTransport and lab's
//! datagram tokens use too. Pure.

use bytes::BufMut;

/// The largest value a varint holds: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// A QUIC variable-length integer at the start of `b`: (value, length).
pub fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, len))
}

/// Appends `v` in the shortest encoding; `None` (nothing written) if it is over [`MAX`].
pub fn put(v: u64, out: &mut impl BufMut) -> Option<()> {
    match v {
        0..=0x3f => out.put_u8(v as u8),
        0x40..=0x3fff => out.put_u16(0x4000 | v as u16),
        0x4000..=0x3fff_ffff => out.put_u32(0x8000_0000 | v as u32),
        0x4000_0000..=MAX => out.put_u64(0xc000_0000_0000_0000 | v),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_rfc_9000() {
        // RFC 9000 A.1's examples.
        assert_eq!(
            varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(varint(&[0x25]), Some((37, 1)));
        assert_eq!(varint(&[0x40]), None);
        assert_eq!(varint(&[]), None);
    }

    #[test]
    fn put_writes_the_shortest_form_and_reads_back() {
        for (v, len) in [
            (0, 1),
            (37, 1),
            (63, 1),
            (64, 2),
            (15_293, 2),
            (16_384, 4),
            (494_878_333, 4),
            (1 << 30, 8),
            (MAX, 8),
        ] {
            let mut out = Vec::new();
            put(v, &mut out).unwrap();
            assert_eq!(out.len(), len, "{v}");
            assert_eq!(varint(&out), Some((v, len)), "{v}");
        }
        let mut out = Vec::new();
        assert_eq!(put(MAX + 1, &mut out), None);
        assert!(out.is_empty());
        // RFC 9000 A.1: 15293 is 0x7bbd.
        let mut out = Vec::new();
        put(15_293, &mut out).unwrap();
        assert_eq!(out, [0x7b, 0xbd]);
    }
}
