//! Codec throughput: `cargo bench -p lab-codec`.
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lab_codec::{lenprefix, openai, sse};
use std::hint::black_box;

fn tokens() -> Vec<String> {
    let words = [
        " the", " quick", " brown", " fox", "\n\n", " <b>", " jumps", "日本", ".", " over",
    ];
    (0..10_000)
        .map(|i| words[i % words.len()].to_string())
        .collect()
}

fn bench(c: &mut Criterion) {
    let toks = tokens();
    let mut g = c.benchmark_group("codecs");
    g.throughput(Throughput::Elements(toks.len() as u64));

    let mut lp = BytesMut::new();
    for t in &toks {
        lenprefix::encode(t.as_bytes(), &mut lp).unwrap();
    }
    g.bench_function("lenprefix_encode_10k_tokens", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(lp.len());
            for t in &toks {
                lenprefix::encode(black_box(t.as_bytes()), &mut out).unwrap();
            }
            out
        })
    });
    g.bench_function("lenprefix_decode_10k_tokens", |b| {
        b.iter(|| {
            let mut d = lenprefix::Decoder::new();
            let mut n = 0;
            for chunk in lp.chunks(1400) {
                d.extend(chunk);
                while let Some(_f) = d.next_frame().unwrap() {
                    n += 1;
                }
            }
            n
        })
    });

    let mut ss = BytesMut::new();
    for t in &toks {
        sse::encode_data(t, &mut ss);
    }
    g.bench_function("sse_encode_10k_tokens", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(ss.len());
            for t in &toks {
                sse::encode_data(black_box(t), &mut out);
            }
            out
        })
    });
    g.bench_function("sse_decode_10k_tokens", |b| {
        b.iter(|| {
            let mut d = sse::Decoder::new();
            let mut n = 0;
            for chunk in ss.chunks(1400) {
                d.extend(chunk);
                while let Some(_e) = d.next_event().unwrap() {
                    n += 1;
                }
            }
            n
        })
    });

    g.bench_function("ollama_chunk_write_10k_tokens", |b| {
        b.iter(|| {
            let mut w = openai::ChunkWriter::new(
                openai::StreamFormat::OllamaLegacy,
                "chatcmpl-123".into(),
                "gemma3:12b".into(),
                false,
            );
            let mut out = String::with_capacity(256);
            for t in &toks {
                out.clear();
                w.content(&mut out, 1_700_000_000, black_box(t));
            }
            out.len()
        })
    });
    let mut w = openai::ChunkWriter::new(
        openai::StreamFormat::OllamaLegacy,
        "chatcmpl-1".into(),
        "m".into(),
        false,
    );
    let mut events = String::new();
    for t in &toks {
        w.content(&mut events, 1_700_000_000, t);
    }
    g.bench_function("openai_chunk_parse_10k_tokens", |b| {
        b.iter(|| {
            let mut d = sse::Decoder::new();
            d.extend(events.as_bytes());
            let mut n = 0;
            while let Some(e) = d.next_event().unwrap() {
                let c: openai::ChatChunk = serde_json::from_str(&e.data).unwrap();
                n += c.content().map_or(0, |_| 1);
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
