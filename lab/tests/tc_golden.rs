//! The kernel backend's netlink requests against the bytes iproute2's `tc` sends for
//! the same settings. The golden files come from `scripts/capture-tc-golden.sh` (tc
//! under strace, in a throwaway namespace; the request shows even where the kernel has
//! no netem). Each file: a comment with the tc command, then the request in hex.

use lab::shaping::netem::{netem_options, new_qdisc, normal_table, request_bytes, tbf_options};
use lab::shaping::params::{Limit, Loss, Params};
use std::time::Duration;

fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/tc-golden/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let hex = text.lines().nth(1).unwrap_or_default();
    assert!(!hex.is_empty(), "{path} holds no request");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn base() -> Params {
    Params {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        normal: false,
        loss: Loss::None,
        rate: None,
        overhead: 0,
        limit: Limit::Packets(1000),
        limit_set: false,
        reorder: 0.0,
        duplicate: 0.0,
        corrupt: 0.0,
        trace: None,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Compares our request with tc's, taking tc's sequence number (the only field that
/// differs per run), and shows the first differing offset.
fn check(name: &str, kind: &str, options: Vec<u8>) {
    let want = golden(name);
    let seq = u32::from_ne_bytes(want[8..12].try_into().unwrap());
    let got = request_bytes(new_qdisc(1, kind, options), seq);
    if got != want {
        let at = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{name}: {} bytes vs tc's {}; first difference at offset {at}:\n ours {:02x?}\n tc's {:02x?}",
            got.len(),
            want.len(),
            &got[at..(at + 16).min(got.len())],
            &want[at..(at + 16).min(want.len())]
        );
    }
}

fn netem(name: &str, p: Params) {
    check(name, "netem", netem_options(&p, None).unwrap());
}

#[test]
fn delay_with_jitter() {
    netem(
        "netem-delay-jitter",
        Params {
            delay: ms(100),
            jitter: ms(10),
            ..base()
        },
    );
}

#[test]
fn delay_with_normal_jitter_sends_the_same_distribution_table() {
    let p = Params {
        delay: ms(100),
        jitter: ms(10),
        normal: true,
        ..base()
    };
    netem("netem-delay-jitter-normal", p);
    assert_eq!(normal_table().len(), 4096);
}

#[test]
fn long_delay() {
    netem(
        "netem-latency64",
        Params {
            delay: Duration::from_secs(10),
            jitter: Duration::from_secs(5),
            ..base()
        },
    );
}

#[test]
fn random_loss() {
    netem(
        "netem-loss-random",
        Params {
            loss: Loss::Random(0.05),
            ..base()
        },
    );
}

#[test]
fn gilbert_elliott_loss() {
    // tc: loss gemodel p 1% r 25% 1-h 100% 1-k 0%
    let p = Params {
        loss: Loss::GilbertElliott {
            p: 0.01,
            r: 0.25,
            h: 0.0,
            k: 1.0,
        },
        ..base()
    };
    netem("netem-loss-gemodel", p);
}

#[test]
fn rate() {
    netem(
        "netem-rate",
        Params {
            rate: Some(10_000_000),
            ..base()
        },
    );
    netem(
        "netem-rate-overhead",
        Params {
            delay: ms(20),
            rate: Some(100_000),
            overhead: 14,
            ..base()
        },
    );
    netem(
        "netem-rate64",
        Params {
            rate: Some(40_000_000_000),
            ..base()
        },
    );
}

#[test]
fn limit() {
    netem(
        "netem-limit",
        Params {
            delay: ms(200),
            limit: Limit::Packets(5000),
            ..base()
        },
    );
}

#[test]
fn reorder_duplicate_corrupt() {
    let p = Params {
        delay: ms(10),
        reorder: 0.25,
        duplicate: 0.01,
        corrupt: 0.001,
        ..base()
    };
    netem("netem-reorder-duplicate-corrupt", p);
}

#[test]
fn tbf_with_and_without_rate64() {
    check("tbf", "tbf", tbf_options(10_000_000, 32 * 1024, 100 * 1024));
    check(
        "tbf-rate64",
        "tbf",
        tbf_options(40_000_000_000, 1024 * 1024, 10 * 1024 * 1024),
    );
}

#[test]
fn byte_limits_are_refused_with_a_way_out() {
    let e = netem_options(
        &Params {
            limit: Limit::Bytes(65536),
            ..base()
        },
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("give `limit` in packets"), "{e}");
}
