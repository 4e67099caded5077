//! The kernel backend's encoders: netem and tbf options, and the RTM_NEWQDISC request
//! that carries them. Pure: they build bytes; `netlab::qdisc` sends them.
//!
//! netlink-packet-route has no typed netem or tbf options, so the option bytes are
//! encoded here, by pure functions that follow iproute2's `tc` byte for byte; golden
//! tests compare them with the requests `tc` sends (captured with strace by
//! `scripts/capture-tc-golden.sh`).
//!
//! - netem's TCA_OPTIONS is not a nest: the 24-byte `tc_netem_qopt`, then attributes.
//! - tbf's TCA_OPTIONS is a nest: TCA_TBF_PARMS (`tc_tbf_qopt`), TCA_TBF_BURST,
//!   TCA_TBF_RATE64 (rates of 2^32 bytes/s and more), TCA_TBF_RTAB.
//! - Times go in psched ticks of 64 ns, converted the way `tc` does: whole
//!   microseconds, times 15.625, truncated.
//! - Probabilities are fractions of 2^32 - 1, rounded half to even.

use super::params::{Limit, Loss, Params};
use anyhow::{Result, bail};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage};
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
};

/// psched ticks per microsecond (`tc`'s tick_in_usec: 1000 / 64).
const TICKS_PER_US: f64 = 15.625;
/// The normal distribution table's scale (NETEM_DIST_SCALE).
const DIST_SCALE: f64 = 8192.0;

const TCA_OPTIONS: u16 = 2;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_NETEM_LOSS: u16 = 5;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
const TCA_NETEM_PRNG_SEED: u16 = 14;
const TCA_NETEM_DELAY_DIST: u16 = 2;
const NETEM_LOSS_GE: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RTAB: u16 = 2;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;

/// Appends one attribute (header, value, padding to 4 bytes).
fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn u32s(vals: &[u32]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// A probability as netem takes it.
pub fn prob(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * u32::MAX as f64).round_ties_even() as u32
}

/// A time in psched ticks, as `tc` converts it (whole microseconds first).
pub fn ticks(ns: u128) -> u32 {
    let us = (ns / 1000).min(u32::MAX as u128) as u32;
    (us as f64 * TICKS_PER_US) as u32
}

/// `tc`'s transmission time of `size` bytes at `rate` bytes/s, in ticks.
pub fn xmittime(rate: u64, size: u32) -> u32 {
    let us = 1_000_000.0 * (size as f64 / rate as f64);
    ((us as u32) as f64 * TICKS_PER_US) as u32
}

/// The normal distribution table netem takes for `distribution normal`: 4096 values of
/// the inverse normal CDF, scaled by 8192, computed as iproute2's normal.c does.
pub fn normal_table() -> Vec<i16> {
    const TABLESIZE: usize = 16384;
    let mut table = vec![0f64; TABLESIZE + 1];
    let mut x = -10.0f64;
    while x < 10.05 {
        let cdf = 0.5 + 0.5 * libm::erf(x / std::f64::consts::SQRT_2);
        let i = (TABLESIZE as f64 * cdf).round_ties_even() as usize;
        table[i] = x;
        x += 0.00005;
    }
    (0..TABLESIZE)
        .step_by(4)
        .map(|i| {
            let v = (table[i] * DIST_SCALE).round_ties_even();
            v.clamp(i16::MIN as f64, i16::MAX as f64) as i16
        })
        .collect()
}

/// Whether a dumped netem TCA_OPTIONS payload (struct tc_netem_qopt, then attributes)
/// carries TCA_NETEM_PRNG_SEED: kernels that keep the seed dump it back.
pub fn netem_dump_has_seed(options: &[u8]) -> bool {
    // struct tc_netem_qopt: six u32s, already 4-byte aligned.
    let mut at = 24;
    while at + 4 <= options.len() {
        let len = usize::from(u16::from_ne_bytes([options[at], options[at + 1]]));
        let kind = u16::from_ne_bytes([options[at + 2], options[at + 3]]) & 0x3fff;
        if kind == TCA_NETEM_PRNG_SEED {
            return true;
        }
        if len < 4 {
            return false;
        }
        at += (len + 3) & !3;
    }
    false
}

/// netem's TCA_OPTIONS payload for one direction. `seed` adds TCA_NETEM_PRNG_SEED
/// (reproducible loss; `tc` 6.1 cannot send it, so golden tests pass `None`).
pub fn netem_options(p: &Params, seed: Option<u64>) -> Result<Vec<u8>> {
    if p.trace.is_some() {
        bail!("netem cannot replay a trace; use the userspace backend");
    }
    let limit = match p.limit {
        Limit::Packets(n) => n.min(u32::MAX as u64) as u32,
        Limit::Bytes(_) => bail!(
            "netem's queue limit counts packets; give `limit` in packets (e.g. limit: 1000), or use the userspace backend"
        ),
    };
    let (delay, jitter) = (p.delay.as_nanos(), p.jitter.as_nanos());
    let max_ticks_ns = u32::MAX as u128 * 64;
    let latency = if delay >= max_ticks_ns {
        u32::MAX
    } else {
        ticks(delay)
    };
    let jit = if jitter >= max_ticks_ns {
        u32::MAX
    } else {
        ticks(jitter)
    };
    let loss = match p.loss {
        Loss::Random(x) => prob(x),
        _ => 0,
    };
    let gap = u32::from(p.reorder > 0.0);
    let mut out = u32s(&[latency, limit, loss, gap, prob(p.duplicate), jit]);
    if latency == u32::MAX {
        attr(&mut out, TCA_NETEM_LATENCY64, &(delay as i64).to_ne_bytes());
    }
    if jit == u32::MAX {
        attr(&mut out, TCA_NETEM_JITTER64, &(jitter as i64).to_ne_bytes());
    }
    if p.reorder > 0.0 {
        attr(&mut out, TCA_NETEM_REORDER, &u32s(&[prob(p.reorder), 0]));
    }
    if p.corrupt > 0.0 {
        attr(&mut out, TCA_NETEM_CORRUPT, &u32s(&[prob(p.corrupt), 0]));
    }
    if let Loss::GilbertElliott { p: gp, r, h, k } = p.loss {
        let mut ge = Vec::new();
        // tc_netem_gemodel { p, r, h, k1 }: h is 1 - (loss in bad), k1 the loss in good.
        attr(
            &mut ge,
            NETEM_LOSS_GE,
            &u32s(&[prob(gp), prob(r), prob(h), prob(1.0 - k)]),
        );
        // A nest, flagged as one (unlike TCA_OPTIONS), as tc sends it.
        attr(&mut out, TCA_NETEM_LOSS | NLA_F_NESTED, &ge);
    }
    if let Some(rate_bits) = p.rate {
        let bytes = rate_bits / 8;
        let field = if bytes >= 1 << 32 {
            attr(&mut out, TCA_NETEM_RATE64, &bytes.to_ne_bytes());
            u32::MAX
        } else {
            bytes as u32
        };
        let mut r = u32s(&[field]);
        r.extend_from_slice(&(p.overhead as i32).to_ne_bytes());
        r.extend_from_slice(&[0; 8]);
        attr(&mut out, TCA_NETEM_RATE, &r);
    }
    if let Some(s) = seed {
        attr(&mut out, TCA_NETEM_PRNG_SEED, &s.to_ne_bytes());
    }
    if p.normal && !p.jitter.is_zero() {
        let t: Vec<u8> = normal_table()
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        attr(&mut out, TCA_NETEM_DELAY_DIST, &t);
    }
    Ok(out)
}

/// tbf's TCA_OPTIONS payload: `rate_bits` bits/s, `burst` and `limit` bytes.
pub fn tbf_options(rate_bits: u64, burst: u32, limit: u32) -> Vec<u8> {
    let rate = rate_bits / 8;
    let rate32 = if rate >= 1 << 32 {
        u32::MAX
    } else {
        rate as u32
    };
    // The rate table covers sizes up to an MTU of 2047 in 256 cells.
    let mut cell_log = 0u8;
    while (2047u32 >> cell_log) > 255 {
        cell_log += 1;
    }
    // Like tc, the table and the burst time use the 32-bit rate field (2^32 - 1 when
    // the real rate goes in TCA_TBF_RATE64).
    let rtab: Vec<u32> = (0..256u32)
        .map(|i| xmittime(rate32 as u64, (i + 1) << cell_log))
        .collect();
    // tc_ratespec { cell_log u8, linklayer u8 (1 = ethernet), overhead u16,
    // cell_align i16 (-1), mpu u16, rate u32 }
    let mut parms = vec![cell_log, 1, 0, 0];
    parms.extend_from_slice(&(-1i16).to_ne_bytes());
    parms.extend_from_slice(&0u16.to_ne_bytes());
    parms.extend_from_slice(&rate32.to_ne_bytes());
    parms.extend_from_slice(&[0; 12]); // no peak rate
    parms.extend_from_slice(&u32s(&[limit, xmittime(rate32 as u64, burst), 0]));
    let mut out = Vec::new();
    attr(&mut out, TCA_TBF_PARMS, &parms);
    attr(&mut out, TCA_TBF_BURST, &burst.to_ne_bytes());
    if rate >= 1 << 32 {
        attr(&mut out, TCA_TBF_RATE64, &rate.to_ne_bytes());
    }
    attr(&mut out, TCA_TBF_RTAB, &u32s(&rtab));
    out
}

/// The RTM_NEWQDISC request that adds `kind` with `options` as the root qdisc
/// (handle 1:) of interface `index`, as `tc qdisc add dev X root handle 1:` sends it.
pub fn new_qdisc(index: i32, kind: &str, options: Vec<u8>) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut msg = TcMessage::default();
    msg.header = TcHeader {
        index,
        handle: TcHandle { major: 1, minor: 0 },
        parent: TcHandle::ROOT,
        ..msg.header
    };
    msg.attributes = vec![
        TcAttribute::Kind(kind.to_owned()),
        TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)),
    ];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
    req.finalize();
    req
}

/// The bytes of a request, as sent (with sequence number `seq`).
pub fn request_bytes(mut req: NetlinkMessage<RouteNetlinkMessage>, seq: u32) -> Vec<u8> {
    req.header.sequence_number = seq;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_with_the_seed_attribute_says_so() {
        let p = Params::from_link(&Default::default());
        assert!(netem_dump_has_seed(&netem_options(&p, Some(7)).unwrap()));
        assert!(!netem_dump_has_seed(&netem_options(&p, None).unwrap()));
        // Cut short, or with a zero-length attribute: no seed, and no panic.
        assert!(!netem_dump_has_seed(&[0; 10]));
        let mut bad = vec![0u8; 24];
        bad.extend_from_slice(&[0, 0, 5, 0]);
        assert!(!netem_dump_has_seed(&bad));
    }
}
