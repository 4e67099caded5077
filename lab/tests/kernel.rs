//! The kernel shaping backend (netem), run for real. This machine's kernel has no
//! netem, so the shaping tests (`tests/shaping.rs`) run with
//! `LAB_SHAPING_BACKEND=kernel` inside a virtual machine that boots Debian's stock kernel
//! (`scripts/vm-test.sh`: virtme-ng over QEMU, software emulation where KVM fails). Where
//! this kernel has netem, they run here instead. Either way every listed test must run
//! and pass; time tolerances are widened under emulation (`LAB_TIME_SLACK`).

mod common;

use common::*;
use std::process::Command;
use std::time::Instant;

/// The shaping tests that hold for both backends (the rest read the userspace
/// emulator's own counters).
const TESTS: &[&str] = &[
    "the_kernel_backend_uses_netem_or_says_why_not",
    "delay_50ms_gives_100ms_rtt_and_200ms_gives_400ms",
    "random_loss_is_inside_the_binomial_interval_and_reproducible",
    "gilbert_elliott_gives_the_configured_mean_burst_length",
    "direction_up_leaves_the_down_direction_untouched",
    "bulk_tcp_gets_the_configured_rate",
    "tbf_applied_over_netlink_shapes_for_real",
    "shaping_leaves_nothing_after_down_or_after_sigkill_and_clean",
    "link_set_changes_the_rtt_while_a_stream_keeps_flowing",
];

/// The shaping tests run on both backends in the same machine, for the fidelity
/// figures side by side (RTT p50, delivered rate).
const BOTH: &[&str] = &[
    "delay_50ms_gives_100ms_rtt_and_200ms_gives_400ms",
    "bulk_tcp_gets_the_configured_rate",
];

/// Figures a shaping test printed: `delay 50ms: RTT p50 100.395 ms` and `rate 1mbit:
/// delivered 0.999 Mbit/s`, by what they measure ("delay 50ms", "rate 1mbit").
fn figures(out: &str) -> Vec<(String, f64)> {
    out.lines()
        .filter_map(|l| {
            let (what, rest) = l.split_once(": ")?;
            if !(what.starts_with("delay ") || what.starts_with("rate ")) {
                return None;
            }
            let v = rest
                .strip_prefix("RTT p50 ")
                .or_else(|| rest.strip_prefix("delivered "))?;
            Some((what.to_owned(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The shaping test binary cargo built next to this one (the newest, if several).
fn shaping_binary() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap();
    let dir = me.parent().unwrap();
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("shaping-") && p.extension().is_none()
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("cargo builds tests/shaping.rs before running any test")
}

#[test]
fn the_kernel_backend_shapes_for_real_in_a_vm_or_here() {
    let bin = shaping_binary();
    // The shaping tests with netem, then the same short lab run on both backends in
    // the same machine (scripts/backends-crosscheck.sh).
    let script = format!(
        "LAB_SHAPING_BACKEND=kernel {bin} --exact --test-threads=1 --show-output {}; echo \"== kernel tests rc=$?\"; LAB_SHAPING_BACKEND=userspace {bin} --exact --test-threads=1 --show-output {}; echo \"== userspace tests rc=$?\"; {} {}",
        TESTS.join(" "),
        BOTH.join(" "),
        root().join("scripts/backends-crosscheck.sh").display(),
        env!("CARGO_BIN_EXE_lab"),
        bin = bin.display(),
    );
    let native = netem_by_tc();
    let mut cmd = if native {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    } else {
        let mut c = Command::new(root().join("scripts/vm-test.sh"));
        c.args(["sh", "-c", &script]);
        c
    };
    cmd.current_dir(root());
    let t0 = Instant::now();
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    let err = String::from_utf8_lossy(&o.stderr).replace('\r', "");
    println!(
        "{} in {:.0} s:\n{out}\n{err}",
        if native { "here" } else { "in a VM" },
        t0.elapsed().as_secs_f64()
    );
    assert!(o.status.success(), "the machine's script failed");
    for want in [
        "== kernel tests rc=0",
        "== userspace tests rc=0",
        "== kernel run rc=0",
        "== userspace run rc=0",
    ] {
        assert!(out.contains(want), "no {want:?}");
    }
    // Every listed test ran, and passed, on each backend.
    let (kernel_out, rest) = out.split_once("== kernel tests rc=").unwrap();
    let (user_out, _) = rest.split_once("== userspace tests rc=").unwrap();
    let want = format!("test result: ok. {} passed; 0 failed", TESTS.len());
    assert!(kernel_out.contains(&want), "no {want:?}");
    let want = format!("test result: ok. {} passed; 0 failed", BOTH.len());
    assert!(user_out.contains(&want), "no {want:?}");
    // The same measurements on both backends in the same machine: RTT p50 and the
    // delivered rate, side by side.
    let (k, u) = (figures(kernel_out), figures(user_out));
    assert_eq!(
        k.iter().map(|f| &f.0).collect::<Vec<_>>(),
        u.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "the same measurements on both backends"
    );
    assert!(k.len() >= 4, "{k:?}");
    for ((what, kv), (_, uv)) in k.iter().zip(&u) {
        let unit = if what.starts_with("delay") {
            "ms RTT p50"
        } else {
            "Mbit/s delivered"
        };
        println!("{what}: netem {kv:.3}, lab wire {uv:.3} {unit}");
        // Each backend is already held to its target by the test itself; here they
        // agree with each other: RTT within 1 ms per 100 (5 under software
        // emulation), rate within 3%.
        let room = if what.starts_with("delay") {
            kv / 100.0 * if native { 1.0 } else { 5.0 }
        } else {
            kv * 0.03
        };
        assert!((kv - uv).abs() <= room, "{what}: netem {kv}, lab wire {uv}");
    }
    for t in TESTS {
        assert!(
            out.contains(&format!("test {t} ... ok")),
            "{t} did not pass"
        );
    }
    // The same run on both backends: bytes per token, TTFT and the loss the captures
    // measured agree, within what 600-odd lossy packets per cell allow.
    let rows = |backend: &str| -> Vec<(String, Vec<f64>)> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("xb {backend} ")))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let a = w.next()?.to_owned();
                let v: Vec<f64> = w.filter_map(|x| x.parse().ok()).collect();
                (v.len() == 4).then_some((a, v))
            })
            .collect()
    };
    let (k, u) = (rows("kernel"), rows("userspace"));
    assert_eq!(k.len(), 3, "{k:?}");
    assert_eq!(u.len(), 3, "{u:?}");
    let mut losses = Vec::new();
    for ((a, kv), (b, uv)) in k.iter().zip(&u) {
        assert_eq!(a, b);
        println!(
            "{a}: wire {:.1} / {:.1} B/tok, TTFT p50 {:.1} / {:.1} ms, loss up {:.2}% / {:.2}%, down {:.2}% / {:.2}% (netem / lab wire)",
            kv[0],
            uv[0],
            kv[1],
            uv[1],
            kv[2] * 100.0,
            uv[2] * 100.0,
            kv[3] * 100.0,
            uv[3] * 100.0
        );
        assert!(
            (kv[0] - uv[0]).abs() / uv[0] <= 0.15,
            "{a}: B/tok {} vs {}",
            kv[0],
            uv[0]
        );
        // Under software emulation lab wire's per-packet cost grows: more room there.
        let ttft_room = if native { 0.25 } else { 0.4 };
        assert!(
            (kv[1] - uv[1]).abs() / uv[1] <= ttft_room,
            "{a}: TTFT {} vs {}",
            kv[1],
            uv[1]
        );
        losses.extend([kv[2], kv[3], uv[2], uv[3]]);
    }
    // 2% configured: each cell's measured loss is noisy, their mean is not.
    assert!(losses.iter().all(|l| (0.0..0.08).contains(l)), "{losses:?}");
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    assert!((0.01..0.03).contains(&mean), "mean loss {mean}");
}
