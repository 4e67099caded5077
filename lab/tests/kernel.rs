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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// How long one listed test may take, and the short run, before `timeout` ends it (the
/// whole VM took 173 to 373 s under software emulation here).
const TEST_LIMIT_S: u32 = 300;
const RUN_LIMIT_S: u32 = 600;
/// How long the whole VM may take, boot included: past it, the VM is killed and the
/// test fails, saying so, rather than holding up the suite.
const VM_LIMIT_S: u64 = 1200;

/// Runs `cmd` with its output in pipes, copying each line that tells progress (a test
/// starting or ending, a "== " marker, the VM script's own lines) to this process's
/// stderr as it comes, so a suite's log shows where a slow or stuck VM is. Kills the
/// command's process group past `limit`. Returns the exit status (None when killed),
/// stdout and stderr.
fn run_watched(
    mut cmd: Command,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    use std::io::{BufRead, Write};
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    let pipe = |mut r: Box<dyn std::io::BufRead + Send>| {
        std::thread::spawn(move || {
            let mut all = String::new();
            let mut raw = Vec::new();
            // Byte lines, so that output that is not UTF-8 never stops the reading
            // (a full pipe would stall the VM).
            while matches!(r.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&raw);
                let l = line.trim_end_matches(['\n', '\r']);
                if l.starts_with("test ") || l.starts_with("== ") || l.starts_with("vm-test:") {
                    // Straight to fd 2: the harness captures only print! macros.
                    let short: String = l.chars().take(160).collect();
                    let _ = writeln!(
                        std::io::stderr(),
                        "[kernel {:>4.0} s] {short}{}",
                        t0.elapsed().as_secs_f64(),
                        if short.len() < l.len() { " ..." } else { "" }
                    );
                }
                all.push_str(l);
                all.push('\n');
                raw.clear();
            }
            all
        })
    };
    let out = pipe(Box::new(std::io::BufReader::new(
        child.stdout.take().unwrap(),
    )));
    let err = pipe(Box::new(std::io::BufReader::new(
        child.stderr.take().unwrap(),
    )));
    // Whether the child has ended, left unreaped: while it is a zombie its pid, which
    // is its group's id, cannot be taken by another process, so signals to the group
    // reach only what it started.
    let pid = child.id() as libc::id_t;
    let ended = || {
        // SAFETY: waitid on our own child with a zeroed siginfo to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        r == 0 && unsafe { info.si_pid() } != 0
    };
    let group = -(pid as i32);
    let mut killed = false;
    while !ended() {
        if t0.elapsed() > limit {
            // The whole group: the VM script, virtme-ng and QEMU; TERM first, so the
            // script removes its files.
            unsafe { libc::kill(group, libc::SIGTERM) };
            let t1 = Instant::now();
            while !ended() && t1.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Whatever the command left holding the pipes is in its group: gone too.
    unsafe { libc::kill(group, libc::SIGKILL) };
    let s = child.wait().unwrap();
    let status = (!killed).then_some(s);
    (status, out.join().unwrap(), err.join().unwrap())
}

#[test]
fn the_kernel_backend_shapes_for_real_in_a_vm_or_here() {
    let bin = shaping_binary();
    let lab_bin = env!("CARGO_BIN_EXE_lab");
    // Each shaping test with netem in a process of its own under `timeout`, so that one
    // that hangs is named and the rest still run; then a short lab run on the kernel
    // backend (scripts/backends-crosscheck.sh). After a test that was ended, `lab
    // clean` removes what it left (it matters where this runs here, not in a VM).
    let mut script = String::new();
    for t in TESTS {
        script += &format!(
            "LAB_SHAPING_BACKEND=kernel timeout -k 5 {TEST_LIMIT_S} {bin} --exact --test-threads=1 --show-output {t}; \
             rc=$?; echo \"== kernel test {t} rc=$rc\"; \
             case $rc in 124|137) {lab_bin} clean >/dev/null 2>&1;; esac; ",
            bin = bin.display(),
        );
    }
    script += &format!(
        "timeout -k 5 {RUN_LIMIT_S} {} {lab_bin} kernel; echo \"== kernel crosscheck rc=$?\"",
        root().join("scripts/backends-crosscheck.sh").display(),
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
        c.env("LAB_VM_CACHE", format!("{lab_bin}:{}", bin.display()));
        c
    };
    cmd.current_dir(root());
    let t0 = Instant::now();
    let (status, out, err) = run_watched(cmd, Duration::from_secs(VM_LIMIT_S));
    println!(
        "{} in {:.0} s:\n{out}\n{err}",
        if native { "here" } else { "in a VM" },
        t0.elapsed().as_secs_f64()
    );
    let status = status.unwrap_or_else(|| {
        panic!("the VM did not finish within {VM_LIMIT_S} s and was killed (its output is above)")
    });
    assert!(status.success(), "the machine's script failed: {status}");
    // Every listed test ran, in time, and passed.
    for t in TESTS {
        let rc = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("== kernel test {t} rc=")))
            .unwrap_or_else(|| panic!("{t} never ran"));
        match rc {
            "0" => {}
            "124" | "137" => panic!("{t} did not end within {TEST_LIMIT_S} s"),
            _ => panic!("{t} failed (exit {rc})"),
        }
        assert!(
            out.contains(&format!("test {t} ... ok")),
            "{t} did not pass"
        );
    }
    assert_eq!(
        out.matches("test result: ok. 1 passed; 0 failed").count(),
        TESTS.len(),
        "every listed test is one test"
    );
    match out
        .lines()
        .find_map(|l| l.strip_prefix("== kernel crosscheck rc="))
    {
        Some("0") => {}
        Some("124" | "137") => {
            panic!("the short run on the kernel backend did not end within {RUN_LIMIT_S} s")
        }
        rc => panic!("the short run's script failed (exit {rc:?})"),
    }
    assert!(
        out.contains("== kernel run rc=0"),
        "no \"== kernel run rc=0\""
    );
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
