//! Decoding never panics, and the events do not depend on how the input is split.
//! Every decoded event's data also survives a round trip through the encoder.
#![no_main]
use lab_codec::sse::{Decoder, Event, SseError, encode_data};
use libfuzzer_sys::fuzz_target;

fn decode(parts: &[&[u8]]) -> (Vec<Event>, Option<SseError>) {
    let mut d = Decoder::with_max(64 * 1024);
    let mut events = Vec::new();
    for p in parts {
        d.extend(p);
        loop {
            match d.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let whole = decode(&[data]);
    if whole.1.is_none() {
        assert_eq!(whole, decode(&[&data[..split], &data[split..]]));
        for ev in &whole.0 {
            let mut buf = bytes::BytesMut::new();
            encode_data(&ev.data, &mut buf);
            let mut d = Decoder::new();
            d.extend(&buf);
            assert_eq!(d.next_event().unwrap().unwrap().data, ev.data);
        }
    }
});
