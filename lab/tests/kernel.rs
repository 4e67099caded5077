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
    let mut args: Vec<String> = vec![
        "--exact".into(),
        "--test-threads=1".into(),
        "--show-output".into(),
    ];
    args.extend(TESTS.iter().map(|t| t.to_string()));
    let native = netem_by_tc();
    let mut cmd = if native {
        let mut c = Command::new(&bin);
        c.args(&args);
        c
    } else {
        let mut c = Command::new(root().join("scripts/vm-test.sh"));
        c.arg(&bin).args(&args);
        c
    };
    cmd.env("LAB_SHAPING_BACKEND", "kernel").current_dir(root());
    let t0 = Instant::now();
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    let err = String::from_utf8_lossy(&o.stderr).replace('\r', "");
    println!(
        "{} in {:.0} s:\n{out}\n{err}",
        if native { "here" } else { "in a VM" },
        t0.elapsed().as_secs_f64()
    );
    assert!(o.status.success(), "the kernel-backend tests failed");
    // Every listed test ran, and passed.
    let want = format!("test result: ok. {} passed; 0 failed", TESTS.len());
    assert!(out.contains(&want), "no {want:?}");
    for t in TESTS {
        assert!(
            out.contains(&format!("test {t} ... ok")),
            "{t} did not pass"
        );
    }
}
