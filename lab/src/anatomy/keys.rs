//! Keys for decoding a capture: the client's key log (NSS `SSLKEYLOGFILE` format, which
//! rustls writes for TLS and for QUIC alike), TLS 1.3 traffic keys (RFC 8446 7.3), QUIC
//! packet and header-protection keys (RFC 9001 5), and QUIC v1 Initial keys, which come
//! from the client's first destination connection ID alone. Pure; ring does the
//! cryptography.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, quic};
use ring::hkdf;
use std::collections::HashMap;

/// The secrets of a key log, by label and client random.
#[derive(Debug, Clone, Default)]
pub struct KeyLog(HashMap<(String, [u8; 32]), Vec<u8>>);

impl KeyLog {
    /// Reads a key log; lines that are not `LABEL <64 hex> <hex>` are skipped.
    pub fn parse(text: &str) -> KeyLog {
        let mut m = HashMap::new();
        for line in text.lines() {
            let mut f = line.split_ascii_whitespace();
            let (Some(label), Some(random), Some(secret)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let (Ok(r), Ok(s)) = (hex::decode(random), hex::decode(secret)) else {
                continue;
            };
            if let Ok(r) = <[u8; 32]>::try_from(r) {
                m.insert((label.to_owned(), r), s);
            }
        }
        KeyLog(m)
    }

    pub fn secret(&self, label: &str, random: &[u8; 32]) -> Option<&[u8]> {
        self.0.get(&(label.to_owned(), *random)).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A TLS 1.3 cipher suite.
#[derive(Debug, Clone, Copy)]
pub struct Suite {
    pub id: u16,
    aead: &'static aead::Algorithm,
    hp: &'static quic::Algorithm,
    hash: hkdf::Algorithm,
}

impl Suite {
    /// The TLS 1.3 suite with IANA number `id`.
    pub fn by_id(id: u16) -> Option<Suite> {
        let (aead, hp, hash) = match id {
            0x1301 => (&aead::AES_128_GCM, &quic::AES_128, hkdf::HKDF_SHA256),
            0x1302 => (&aead::AES_256_GCM, &quic::AES_256, hkdf::HKDF_SHA384),
            0x1303 => (&aead::CHACHA20_POLY1305, &quic::CHACHA20, hkdf::HKDF_SHA256),
            _ => return None,
        };
        Some(Suite { id, aead, hp, hash })
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 7.1) with an empty context.
fn expand(prk: &hkdf::Prk, label: &str, len: usize) -> Vec<u8> {
    let full = format!("tls13 {label}");
    let out_len = (len as u16).to_be_bytes();
    let label_len = [full.len() as u8];
    let info: [&[u8]; 4] = [&out_len, &label_len, full.as_bytes(), &[0u8]];
    let mut out = vec![0u8; len];
    // The lengths here are far below HKDF's limit of 255 hash lengths.
    prk.expand(&info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-Expand-Label within limits");
    out
}

/// The length of the tag every AEAD here appends.
pub const TAG: usize = 16;

/// An AEAD key with its IV, for TLS records or QUIC packets.
pub struct PacketKey {
    key: LessSafeKey,
    iv: [u8; 12],
}

impl PacketKey {
    /// The key of traffic `secret`: `prefix` is "" for TLS ("key", "iv") and "quic " for
    /// QUIC ("quic key", "quic iv").
    pub fn new(suite: Suite, secret: &[u8], prefix: &str) -> Option<PacketKey> {
        let prk = hkdf::Prk::new_less_safe(suite.hash, secret);
        let key = expand(&prk, &format!("{prefix}key"), suite.aead.key_len());
        let iv: [u8; 12] = expand(&prk, &format!("{prefix}iv"), 12).try_into().ok()?;
        let key = LessSafeKey::new(UnboundKey::new(suite.aead, &key).ok()?);
        Some(PacketKey { key, iv })
    }

    /// Decrypts `buf` (ciphertext and tag) in place for sequence or packet number `n`;
    /// returns the plaintext's length, or `None` when it does not authenticate.
    pub fn open(&self, n: u64, aad: &[u8], buf: &mut [u8]) -> Option<usize> {
        let mut nonce = self.iv;
        for (b, x) in nonce[4..].iter_mut().zip(n.to_be_bytes()) {
            *b ^= x;
        }
        self.key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .ok()
            .map(|p| p.len())
    }

    /// Encrypts in place (for tests): `buf` gets the tag appended.
    #[cfg(test)]
    pub fn seal(&self, n: u64, aad: &[u8], buf: &mut Vec<u8>) {
        let mut nonce = self.iv;
        for (b, x) in nonce[4..].iter_mut().zip(n.to_be_bytes()) {
            *b ^= x;
        }
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .expect("seal");
    }
}

/// A QUIC header-protection key.
pub struct HpKey(quic::HeaderProtectionKey);

impl HpKey {
    pub fn new(suite: Suite, secret: &[u8]) -> Option<HpKey> {
        let prk = hkdf::Prk::new_less_safe(suite.hash, secret);
        let key = expand(&prk, "quic hp", suite.hp.key_len());
        quic::HeaderProtectionKey::new(suite.hp, &key)
            .ok()
            .map(HpKey)
    }

    /// The five mask bytes for a 16-byte `sample`.
    pub fn mask(&self, sample: &[u8]) -> Option<[u8; 5]> {
        self.0.new_mask(sample).ok()
    }
}

/// A QUIC packet-number space's keys for one direction.
pub struct QuicKeys {
    pub packet: PacketKey,
    pub hp: HpKey,
}

impl QuicKeys {
    pub fn new(suite: Suite, secret: &[u8]) -> Option<QuicKeys> {
        Self::from_parts(suite, secret, secret)
    }

    /// Packet keys of `secret` with the header protection of `hp_secret` (after a key
    /// update, header protection keeps the first generation's key).
    pub fn from_parts(suite: Suite, secret: &[u8], hp_secret: &[u8]) -> Option<QuicKeys> {
        Some(QuicKeys {
            packet: PacketKey::new(suite, secret, "quic ")?,
            hp: HpKey::new(suite, hp_secret)?,
        })
    }
}

/// The next generation's 1-RTT secret after a key update (RFC 9001 6.1).
pub fn next_secret(suite: Suite, secret: &[u8]) -> Vec<u8> {
    let prk = hkdf::Prk::new_less_safe(suite.hash, secret);
    expand(&prk, "quic ku", hkdf::KeyType::len(&suite.hash))
}

/// The QUIC v1 Initial salt (RFC 9001 5.2).
const INITIAL_SALT: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];

/// The secrets of QUIC v1 Initial packets (client, server) for the client's first
/// destination connection ID.
pub fn initial_secrets(dcid: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &INITIAL_SALT).extract(dcid);
    (expand(&prk, "client in", 32), expand(&prk, "server in", 32))
}

/// QUIC v1 Initial keys (client, server) for the client's first destination CID.
pub fn initial_keys(dcid: &[u8]) -> (QuicKeys, QuicKeys) {
    let (c, s) = initial_secrets(dcid);
    let suite = Suite::by_id(0x1301).expect("TLS_AES_128_GCM_SHA256");
    (
        QuicKeys::new(suite, &c).expect("Initial client keys"),
        QuicKeys::new(suite, &s).expect("Initial server keys"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// RFC 9001 Appendix A.1: keys for the client's DCID 0x8394c8f03e515708.
    #[test]
    fn initial_secrets_match_rfc_9001() {
        let (c, s) = initial_secrets(&h("8394c8f03e515708"));
        assert_eq!(
            c,
            h("c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea")
        );
        assert_eq!(
            s,
            h("3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b")
        );
        let suite = Suite::by_id(0x1301).unwrap();
        let prk = hkdf::Prk::new_less_safe(suite.hash, &c);
        assert_eq!(
            expand(&prk, "quic key", 16),
            h("1f369613dd76d5467730efcbe3b1a22d")
        );
        assert_eq!(expand(&prk, "quic iv", 12), h("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(
            expand(&prk, "quic hp", 16),
            h("9f50449e04a0e810283a1e9933adedd2")
        );
        // A.2: the client Initial's header-protection mask for its sample.
        let hp = HpKey::new(suite, &c).unwrap();
        assert_eq!(
            hp.mask(&h("d1b1c98dd7689fb8ec11d242b123dc9b")).unwrap(),
            <[u8; 5]>::try_from(h("437b9aec36")).unwrap()
        );
    }

    /// RFC 9001 Appendix A.5: a ChaCha20-Poly1305 short-header packet.
    #[test]
    fn chacha20_short_packet_matches_rfc_9001() {
        let secret = h("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b");
        let suite = Suite::by_id(0x1303).unwrap();
        let keys = QuicKeys::new(suite, &secret).unwrap();
        let mut packet = h("4cfe4189655e5cd55c41f69080575d7999c25a5bfb");
        // Header protection: the sample starts 4 bytes after the packet number's start.
        let mask = keys.hp.mask(&packet[5..21]).unwrap();
        packet[0] ^= mask[0] & 0x1f;
        let pn_len = usize::from(packet[0] & 3) + 1;
        for i in 0..pn_len {
            packet[1 + i] ^= mask[1 + i];
        }
        assert_eq!(&packet[..4], &h("4200bff4")[..]);
        let (head, body) = packet.split_at_mut(4);
        // Packet number 654360564, of which 0xbff4 was sent.
        let n = keys.packet.open(654_360_564, head, body).unwrap();
        assert_eq!(&body[..n], &[0x01]);
    }

    #[test]
    fn key_logs_are_read_by_label_and_random() {
        let r = "11".repeat(32);
        let log = KeyLog::parse(&format!(
            "# comment\nCLIENT_TRAFFIC_SECRET_0 {r} abcd\nbad line\nSHORT 1234 ff\n"
        ));
        assert_eq!(
            log.secret("CLIENT_TRAFFIC_SECRET_0", &[0x11; 32]),
            Some(&[0xab, 0xcd][..])
        );
        assert_eq!(log.secret("SERVER_TRAFFIC_SECRET_0", &[0x11; 32]), None);
    }

    #[test]
    fn tls_records_round_trip_with_derived_keys() {
        let suite = Suite::by_id(0x1302).unwrap();
        let k = PacketKey::new(suite, &[7u8; 48], "").unwrap();
        let mut buf = b"hello\x17".to_vec();
        let aad = [0x17, 3, 3, 0, 22];
        k.seal(3, &aad, &mut buf);
        assert_eq!(buf.len(), 6 + TAG);
        assert_eq!(k.open(2, &aad, &mut buf.clone()), None);
        let n = k.open(3, &aad, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello\x17");
    }
}
