//! Decoding never panics, and gives the same frames and the same error whether the input
//! arrives whole or split at any point, and re-encoded frames decode to the same frames.
#![no_main]
use lab_codec::lenprefix::{Decoder, Frame, LenPrefixError};
use libfuzzer_sys::fuzz_target;

fn decode(parts: &[&[u8]]) -> (Vec<Frame>, Option<LenPrefixError>) {
    let mut d = Decoder::new();
    let mut frames = Vec::new();
    for p in parts {
        d.extend(p);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, d.finish().err())
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let whole = decode(&[data]);
    let parts = decode(&[&data[..split], &data[split..]]);
    assert_eq!(whole, parts);
    // Re-encoding the frames and decoding them again gives the same frames (the bytes
    // may differ: leading zeros in a prefix are legal and not reproduced).
    if whole.1.is_none() {
        let mut out = bytes::BytesMut::new();
        for f in &whole.0 {
            match f {
                Frame::Message(m) => lab_codec::lenprefix::encode(m, &mut out).unwrap(),
                Frame::End => out.extend_from_slice(lab_codec::lenprefix::END),
            }
        }
        assert_eq!(decode(&[&out]), (whole.0.clone(), None));
    }
});
