//! `transport:` sections (the topology's, or an approach's): QUIC and TCP settings, each
//! value checked against what the protocol allows.

use super::ctx::{At, Ctx, Field, build, key_pos, pos};
use super::model::*;
use lab_codec::transport::{QUIC_SECTION, TCP_SECTION, VARINT_MAX};
use marked_yaml::Node;

/// The largest QUIC max_ack_delay: 2^14 ms (RFC 9000 18.2).
const MAX_ACK_DELAY_MS: u128 = 1 << 14;

/// A `transport:` section (the topology's, or an approach's), with its values checked.
pub(super) fn parse_transport(cx: &mut Ctx<'_>, v: &Node, path: &str) -> Option<TransportSpec> {
    let Some(map) = v.as_mapping() else {
        cx.push(
            pos(v),
            path,
            "expected a mapping with `quic:` and/or `tcp:`",
        );
        return None;
    };
    // Each field of TransportSpec is a section of its own, checked below.
    let mut sections = Vec::new();
    for (k, val) in map.iter() {
        let f = Field {
            key: k,
            value: val,
            path: format!("{path}.{}", k.as_str()),
        };
        match k.as_str() {
            QUIC_SECTION | TCP_SECTION => sections.push(f),
            other => cx.push(
                key_pos(k),
                &f.path,
                format!("unknown field '{other}'; valid fields: quic, tcp"),
            ),
        }
    }
    let mut spec = TransportSpec::default();
    let mut ok = true;
    for f in &sections {
        match f.name() {
            QUIC_SECTION => match parse_quic(cx, f) {
                Some(q) => spec.quic = Some(q),
                None => ok = false,
            },
            TCP_SECTION => match parse_tcp(cx, f) {
                Some(t) => spec.tcp = Some(t),
                None => ok = false,
            },
            _ => {}
        }
    }
    ok.then_some(spec)
}

/// Where a field of a section was written: its key, or the section if it is not there.
fn field_at(section: &Field<'_>, name: &str) -> At {
    section
        .value
        .as_mapping()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == name))
        .map_or(pos(section.value), |(k, _)| key_pos(k))
}

/// `quic:`, read field by field and checked; None if anything in it is wrong.
fn parse_quic(cx: &mut Ctx<'_>, f: &Field<'_>) -> Option<QuicSpec> {
    let before = cx.out.len();
    // `ack_frequency` is `true`/`false` or a mapping: read by its form.
    let (good, af) = cx.fields::<QuicSpec>(f.value, &f.path, &["ack_frequency"])?;
    let mut q: QuicSpec = build(f.value, &good);
    for a in &af {
        q.ack_frequency = if a.value.as_mapping().is_some() {
            cx.section::<AckFrequencyFields>(a.value, &a.path)
                .map(AckFrequencySpec::Set)
        } else {
            cx.de_with::<bool>(a.value, &a.path, &[])
                .map(AckFrequencySpec::On)
        };
    }
    let at = |name: &str| field_at(f, name);
    let field = |n: &str| format!("{}.{n}", f.path);
    if q.cid_length.is_some_and(|n| n > 20) {
        cx.push(
            at("cid_length"),
            &field("cid_length"),
            "a connection ID is 0 to 20 bytes (RFC 9000)",
        );
    }
    check_ack_delays(cx, &q, &at, &field);
    if let Some(AckFrequencySpec::Set(s)) = &q.ack_frequency {
        for (n, v) in [("threshold", s.threshold), ("reordering", s.reordering)] {
            if v.is_some_and(|v| v > VARINT_MAX) {
                cx.push(
                    at("ack_frequency"),
                    &field(&format!("ack_frequency.{n}")),
                    "over 2^62-1",
                );
            }
        }
    }
    if q.initial_rtt.is_some_and(|d| d.0.as_millis() == 0) {
        cx.push(
            at("initial_rtt"),
            &field("initial_rtt"),
            "must be 1ms or more",
        );
    }
    for (n, w) in [
        ("stream_receive_window", q.stream_receive_window),
        ("receive_window", q.receive_window),
        ("send_window", q.send_window),
    ] {
        if w.is_some_and(|w| w == 0 || w > VARINT_MAX) {
            cx.push(at(n), &field(n), "a window is 1 to 2^62-1 bytes");
        }
    }
    for (n, b) in [
        ("socket_receive_buffer", q.socket_receive_buffer),
        ("socket_send_buffer", q.socket_send_buffer),
    ] {
        if let Some(m) = buffer_problem(b) {
            cx.push(at(n), &field(n), m);
        }
    }
    if q.max_streams.is_some_and(|n| n == 0 || n > 1 << 60) {
        cx.push(
            at("max_streams"),
            &field("max_streams"),
            "must be 1 to 2^60 streams (RFC 9000's limit), e.g. max_streams: 1000",
        );
    }
    (cx.out.len() == before).then_some(q)
}

/// `max_ack_delay`, given directly or in `ack_frequency`: in range, and given once.
fn check_ack_delays(
    cx: &mut Ctx<'_>,
    q: &QuicSpec,
    at: &dyn Fn(&str) -> At,
    field: &dyn Fn(&str) -> String,
) {
    let delays = [
        ("max_ack_delay", q.max_ack_delay),
        (
            "ack_frequency.max_ack_delay",
            match &q.ack_frequency {
                Some(AckFrequencySpec::Set(s)) => s.max_ack_delay,
                _ => None,
            },
        ),
    ];
    for (n, d) in delays {
        if let Some(d) = d
            && (d.0.as_millis() >= MAX_ACK_DELAY_MS || d.0.as_millis() == 0)
        {
            cx.push(
                at(n.split('.').next().unwrap_or(n)),
                &field(n),
                format!(
                    "'{d}': max_ack_delay is 1ms to {}ms (RFC 9000)",
                    MAX_ACK_DELAY_MS - 1
                ),
            );
        }
    }
    if let (Some(d), Some(AckFrequencySpec::Set(s))) = (q.max_ack_delay, &q.ack_frequency)
        && s.max_ack_delay.is_some_and(|m| m != d)
    {
        cx.push(
            at("max_ack_delay"),
            &field("max_ack_delay"),
            "differs from ack_frequency.max_ack_delay; give it once",
        );
    }
}

/// `tcp:`, checked; None if it is not a mapping or a value is out of range (a field
/// that does not read is reported, and left out of the section).
fn parse_tcp(cx: &mut Ctx<'_>, f: &Field<'_>) -> Option<TcpSpec> {
    let t = cx.section::<TcpSpec>(f.value, &f.path)?;
    let before = cx.out.len();
    let at = |name: &str| field_at(f, name);
    if let Some(c) = &t.congestion
        && (c.is_empty()
            || c.len() > 15
            || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        cx.push(
            at("congestion"),
            &format!("{}.congestion", f.path),
            format!("'{c}' is not a congestion controller's name (e.g. cubic, reno, bbr)"),
        );
    }
    for (n, b) in [
        ("socket_receive_buffer", t.socket_receive_buffer),
        ("socket_send_buffer", t.socket_send_buffer),
    ] {
        if let Some(m) = buffer_problem(b) {
            cx.push(at(n), &format!("{}.{n}", f.path), m);
        }
    }
    if t.initcwnd.is_some_and(|n| n == 0 || n > 1000) {
        cx.push(
            at("initcwnd"),
            &format!("{}.initcwnd", f.path),
            "an initial window is 1 to 1000 segments",
        );
    }
    (cx.out.len() == before).then_some(t)
}

/// What is wrong with a socket buffer size, if anything.
fn buffer_problem(b: Option<u64>) -> Option<String> {
    let max = lab_codec::transport::SOCKET_BUFFER_MAX;
    b.filter(|&b| !(1024..=max).contains(&b))
        .map(|b| format!("{b} bytes: a socket buffer is 1024 to {max} bytes"))
}
