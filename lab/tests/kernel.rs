//! The kernel shaping backend (netem), run for real. This machine's kernel has no
//! netem, so the shaping tests (`tests/shaping.rs`) run with
//! `LAB_SHAPING_BACKEND=kernel` inside a virtual machine that boots Debian's stock kernel
//! (`scripts/vm-test.sh`: virtme-ng over QEMU, software emulation where KVM fails). Where
//! this kernel has netem, they run here instead. Either way every listed test must run
//! and pass, and a short `lab run` on the kernel backend must too.
//!
//! Only the kernel backend runs in the virtual machine: under software emulation the
//! guest's CPU is slow, and how slow depends on the host, so a userspace emulator's
//! timing there measures the host, not lab. The userspace backend's tests run on this
//! machine (`tests/shaping.rs`); the two backends side by side on the same machine are
//! a benchmark (`scripts/backends-crosscheck.sh`, figures in docs/shaping.md).

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
    // The shaping tests with netem, then a short lab run on the kernel backend
    // (scripts/backends-crosscheck.sh).
    let script = format!(
        "LAB_SHAPING_BACKEND=kernel {bin} --exact --test-threads=1 --show-output {}; echo \"== kernel tests rc=$?\"; {} {} kernel",
        TESTS.join(" "),
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
        // Run from the VM's memory: read over 9p, each run of lab costs seconds.
        c.env(
            "LAB_VM_CACHE",
            format!("{}:{}", env!("CARGO_BIN_EXE_lab"), bin.display()),
        );
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
    for want in ["== kernel tests rc=0", "== kernel run rc=0"] {
        assert!(out.contains(want), "no {want:?}");
    }
    // Every listed test ran, and passed.
    let (kernel_out, _) = out.split_once("== kernel tests rc=").unwrap();
    let want = format!("test result: ok. {} passed; 0 failed", TESTS.len());
    assert!(kernel_out.contains(&want), "no {want:?}");
    for t in TESTS {
        assert!(
            out.contains(&format!("test {t} ... ok")),
            "{t} did not pass"
        );
    }
    // The run: every approach measured, and the loss the captures at both ends saw is
    // netem's 2%, within what 600-odd packets per cell allow. Loss does not depend on
    // the machine's speed; bytes per token and TTFT against the userspace backend are
    // the benchmark's.
    let rows: Vec<(String, Vec<f64>)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("xb kernel "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let a = w.next()?.to_owned();
            let v: Vec<f64> = w.filter_map(|x| x.parse().ok()).collect();
            (v.len() == 4).then_some((a, v))
        })
        .collect();
    let approaches: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(approaches, ["raw", "sse", "wt"], "{rows:?}");
    let mut losses = Vec::new();
    for (a, v) in &rows {
        println!(
            "{a}: wire {:.1} B/tok, TTFT p50 {:.1} ms, loss up {:.2}%, down {:.2}%",
            v[0],
            v[1],
            v[2] * 100.0,
            v[3] * 100.0
        );
        assert!(v[0] > 0.0 && v[1] > 0.0, "{a}: {v:?}");
        losses.extend([v[2], v[3]]);
    }
    // 2% configured: each cell's measured loss is noisy, their mean is not.
    assert!(losses.iter().all(|l| (0.0..0.08).contains(l)), "{losses:?}");
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    assert!((0.01..0.03).contains(&mean), "mean loss {mean}");
}
