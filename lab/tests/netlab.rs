//! Root integration tests of the namespace lab: `lab up`, `status`, `exec`, `shell`,
//! `down` and `clean`, for real, on this machine. Every test uses its own lab name, so
//! they run side by side (which also shows that labs with different names coexist).

mod common;

use common::*;
use lab::netlab::{ethtool, links, sys};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A namespace that looks exactly like one of lab `tkill`'s, but that lab did not create.
const FOREIGN: &str = "lab-tkill-c9-client";

/// Does this machine's kernel have netem (so that `auto` picks the kernel backend)?
/// Asked of iproute2, not of lab.
fn kernel_backend() -> bool {
    netem_by_tc()
}

/// A small, fast topology named `name`, written to a temporary file.
fn topology(name: &str, approaches: &str, profiles: &str) -> Tmp {
    tmpfile(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\napproaches: [{approaches}]\nllm:\n  mock: {{ ttft: 5ms, tbt: 1ms, jitter: 0%, max_tokens: 12 }}\nprofiles:\n{profiles}"
        ),
    )
}

/// Nothing of lab `name` is left: no namespaces, no run directory, no processes.
fn assert_gone(name: &str, procs: &[(u32, u64)]) {
    assert_nothing_left(name, &[FOREIGN]);
    for (pid, start) in procs {
        // An exited process may stay a zombie until init reaps it: that is gone too.
        let running = sys::start_time(*pid) == Some(*start)
            && sys::proc_state_rss(*pid).is_some_and(|(s, _)| s != 'Z');
        assert!(!running, "process {pid} is still running");
    }
}

fn client(name: &str, node: &str, approach: &str, url: &str, cell: &str) -> Vec<serde_json::Value> {
    let ca = format!("/run/lab/{name}/certs/{cell}/cert.pem");
    let out = ok(&[
        "exec",
        "--lab",
        name,
        node,
        "--",
        "lab",
        "client",
        approach,
        "--url",
        url,
        "--ca",
        &ca,
        "--json",
        "--timeout",
        "20s",
    ]);
    // The records; the connections' statistics lines come after them.
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("connection").is_none())
        .collect()
}

#[test]
fn up_builds_the_planned_lab_and_down_removes_all_of_it() {
    let name = "tbasic";
    let _down = Down(name.into());
    let topo = topology(name, "sse, wt", "  base: {}\n");
    let out = ok(&["up", topo.to_str().unwrap()]);
    // The LLM and two servers, plus a link emulator per cell on the userspace backend.
    let procs_n = if kernel_backend() { 3 } else { 5 };
    assert!(
        out.contains(&format!(
            "lab tbasic is up: 2 cells, 7 namespaces, {procs_n} processes"
        )),
        "{out}"
    );
    assert!(out.contains("https://198.18.1.2:4433/wt"), "{out}");

    // Namespaces, as `ip netns list` would show them.
    assert_eq!(
        namespaces_of(name),
        [
            "lab-tbasic-c0-client",
            "lab-tbasic-c0-server",
            "lab-tbasic-c0-wire",
            "lab-tbasic-c1-client",
            "lab-tbasic-c1-server",
            "lab-tbasic-c1-wire",
            "lab-tbasic-llm"
        ]
    );
    // Interfaces: names, marks, addresses, bridge ports, up; offloads and IPv6 off.
    let ns = sys::open_netns("lab-tbasic-c1-client").unwrap();
    let l = links::list(&ns).unwrap();
    let wire = l.iter().find(|i| i.name == "to-wire").expect("to-wire");
    assert_eq!(wire.addresses, ["198.18.1.1/24"]);
    assert_eq!(wire.altnames, ["lab.tbasic.to-wire"]);
    assert!(wire.up);
    let lo = l.iter().find(|i| i.name == "lo").expect("lo");
    assert!(lo.up && lo.altnames == ["lab.tbasic.ns"], "{lo:?}");
    assert_eq!(links::ns_marked(&ns).unwrap().as_deref(), Some("tbasic"));
    let feats = sys::in_netns(&ns, || ethtool::active_features("to-wire")).unwrap();
    let unwanted: Vec<_> = feats.iter().filter(|f| ethtool::is_unwanted(f)).collect();
    assert!(unwanted.is_empty(), "offloads still on: {unwanted:?}");
    assert!(!feats.is_empty(), "no active features read at all");
    let v6 = sys::in_netns(&ns, || {
        Ok(std::fs::read_to_string(
            "/proc/sys/net/ipv6/conf/to-wire/disable_ipv6",
        )?)
    })
    .unwrap();
    assert_eq!(v6.trim(), "1");
    let wns = sys::open_netns("lab-tbasic-c1-wire").unwrap();
    let wl = links::list(&wns).unwrap();
    for port in ["to-client", "to-server"] {
        let p = wl.iter().find(|i| i.name == port).unwrap();
        // Bridged on the kernel backend; apart, with lab wire between them, otherwise.
        let master = kernel_backend().then_some("br0");
        assert_eq!(p.master.as_deref(), master, "{p:?}");
        assert!(p.up);
    }
    let sns = sys::open_netns("lab-tbasic-c1-server").unwrap();
    let sl = links::list(&sns).unwrap();
    let llm = sl.iter().find(|i| i.name == "to-llm").unwrap();
    assert_eq!(llm.addresses, ["198.19.0.2/16"]);

    // The servers serve through the lab: each client gets whole answers.
    for (node, approach, url, cell) in [
        ("sse", "sse", "https://198.18.0.2:8080/chat", "c0"),
        ("wt", "wt", "https://198.18.1.2:4433/wt", "c1"),
    ] {
        let recs = client(name, node, approach, url, cell);
        assert_eq!(recs.len(), 10, "{approach}");
        for r in &recs {
            assert_eq!(r["tokens"], 12, "{approach}: {r}");
            assert!(r["error"].is_null(), "{approach}: {r}");
        }
    }
    // `ip netns exec` works on lab namespaces too.
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            "lab-tbasic-c0-client",
            "ip",
            "-br",
            "-4",
            "addr",
            "show",
            "to-wire",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("198.18.0.1/24"),
        "{}",
        text(&o)
    );

    // Status: processes alive with RSS, namespaces present.
    let st = status_json(name);
    assert_eq!(st["phase"], "up");
    for p in st["live"]["processes"].as_array().unwrap() {
        assert_eq!(p["alive"], true, "{p}");
        assert!(p["rss_bytes"].as_u64().unwrap() > 1 << 20, "{p}");
    }
    let human = ok(&["status", "--lab", name]);
    assert!(human.contains("| c1   | wt "), "{human}");
    assert!(human.contains("7 of 7 present"), "{human}");

    // The same name twice is a clear error, and leaves the running lab alone.
    let again = lab(&["up", topo.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("a lab named tbasic is already up"),
        "{}",
        text(&again)
    );
    assert_eq!(namespaces_of(name).len(), 7);

    let procs = recorded_pids(&st);
    let down = ok(&["down", name]);
    assert!(
        down.contains(&format!(
            "lab tbasic is down: stopped {procs_n} processes, removed 7 namespaces"
        )),
        "{down}"
    );
    assert_gone(name, &procs);
    // Twice is an error that says why.
    let o = lab(&["down", name]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    std::fs::remove_file(topo).unwrap();
}

#[test]
fn exec_returns_the_exit_status_and_unknown_nodes_list_the_valid_ones() {
    let name = "texec";
    let _down = Down(name.into());
    let topo = topology(name, "raw, wt", "  a: { delay: 10ms }\n  b: {}\n");
    ok(&["up", topo.to_str().unwrap()]);
    let o = lab(&[
        "exec",
        "--lab",
        name,
        "wt@b.server",
        "--",
        "sh",
        "-c",
        "echo $LAB_NETNS; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "lab-texec-c3-server"
    );
    // /sys is the namespace's: only its own interfaces.
    let o = lab(&[
        "exec",
        "--lab",
        name,
        "c1.wire",
        "--",
        "ls",
        "/sys/class/net",
    ]);
    let mut seen: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    seen.sort();
    let want: &[&str] = if kernel_backend() {
        &["br0", "lo", "to-client", "to-server"]
    } else {
        &["lo", "to-client", "to-server"]
    };
    assert_eq!(seen, want, "{}", text(&o));
    // With two profiles, a bare approach is ambiguous: the error lists the valid names.
    let o = lab(&["exec", "--lab", name, "wt", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no node \"wt\" in lab texec"), "{err}");
    assert!(
        err.contains("llm, raw@a, c0, wt@a, c1, raw@b, c2, wt@b, c3"),
        "{err}"
    );
    // A signal is reported as 128 + its number.
    let o = lab(&[
        "exec",
        "--lab",
        name,
        "llm",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]);
    assert_eq!(o.status.code(), Some(128 + 15), "{}", text(&o));
    let procs = recorded_pids(&status_json(name));
    ok(&["down", name]);
    assert_gone(name, &procs);
    std::fs::remove_file(topo).unwrap();
}

/// A pseudo-terminal pair: (controller, terminal).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty fills two fds; names and settings are not needed.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: fresh fds we own.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

#[test]
fn shell_is_interactive_inside_the_namespace_with_the_node_in_the_prompt() {
    let name = "tshell";
    let _down = Down(name.into());
    let topo = topology(name, "sse", "  base: {}\n");
    ok(&["up", topo.to_str().unwrap()]);
    let (ctl, term) = openpty();
    let tfd = term.as_raw_fd();
    let mut cmd = Command::new(LAB);
    cmd.args(["shell", "--lab", name, "sse"])
        .env("SHELL", "/bin/bash")
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::from(term.try_clone().unwrap()))
        .stdout(Stdio::from(term.try_clone().unwrap()))
        .stderr(Stdio::from(term));
    // SAFETY: in the child: a new session with the pty as its controlling terminal.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::ioctl(tfd, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // The command holds copies of the terminal; without them, reads end when the shell does.
    drop(cmd);
    let mut w = std::fs::File::from(ctl.try_clone().unwrap());
    w.write_all(
        b"echo node=$LAB_NODE ns=$LAB_NETNS; ls /sys/class/net | tr '\\n' ' '; echo; exit 3\n",
    )
    .unwrap();
    let mut r = std::fs::File::from(ctl);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break, // EIO once the shell has exited
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let status = child.wait().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.contains("[lab sse]"), "no node in the prompt: {out}");
    assert!(out.contains("node=sse ns=lab-tshell-c0-client"), "{out}");
    assert!(
        out.contains("lo to-wire"),
        "/sys is not the namespace's: {out}"
    );
    // The rc file is gone.
    let leftovers: Vec<_> = std::fs::read_dir(format!("/run/lab/{name}"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shell-"))
        .collect();
    assert!(leftovers.is_empty());
    let procs = recorded_pids(&status_json(name));
    ok(&["down", name]);
    assert_gone(name, &procs);
    std::fs::remove_file(topo).unwrap();
}

/// Kills `lab up` at many points of the build; `lab clean` must remove whatever it left
/// (and nothing else), or the lab must be whole if the build had finished.
#[test]
fn killed_builds_leave_nothing_that_clean_does_not_remove() {
    let name = "tkill";
    let _down = Down(name.into());
    let topo = topology(name, "raw, sse, wt", "  a: {}\n  b: { delay: 5ms }\n");
    // Foreign objects that look like lab's: a namespace with lab's prefix and a run
    // directory entry that is not a lab's; both must survive.
    let foreign = FOREIGN;
    struct Foreign;
    impl Drop for Foreign {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", FOREIGN]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", foreign]).status();
    assert!(
        Command::new("ip")
            .args(["netns", "add", foreign])
            .status()
            .unwrap()
            .success()
    );
    let _foreign = Foreign;
    let (mut mid_build, mut interrupted) = (0, 0);
    for (i, signal) in [libc::SIGKILL, libc::SIGTERM]
        .into_iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let mut up = Command::new(LAB)
            .args(["up", topo.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it when its state record appears, and a little later each round.
        let state = PathBuf::from(format!("/run/lab/{name}/state.json"));
        let t0 = Instant::now();
        while !state.exists() && t0.elapsed() < Duration::from_secs(10) {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_millis(4 * (i as u64 / 2)));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(up.id() as i32, signal) };
        let status = up.wait().unwrap();
        let st: serde_json::Value = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let procs: Vec<(u32, u64)> = st["processes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["pid"].as_u64().unwrap() as u32,
                            p["start"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if signal == libc::SIGTERM {
            // SIGTERM: lab up takes itself down (130), or had already finished (0).
            match status.code() {
                Some(130) => {
                    interrupted += 1;
                    assert_gone(name, &procs);
                }
                Some(0) => {
                    ok(&["down", name]);
                    assert_gone(name, &procs);
                }
                other => panic!("lab up ended with {other:?} after SIGTERM"),
            }
            continue;
        }
        if st["phase"] == "building" {
            mid_build += 1;
        }
        let out = ok(&["clean"]);
        if st["phase"] == "up" {
            // The build had finished: clean keeps a healthy lab.
            assert!(out.contains("lab tkill is up; kept"), "{out}");
            ok(&["down", name]);
        }
        assert_gone(name, &procs);
        assert!(
            sys::netns_path(foreign).exists(),
            "clean removed a namespace that lab did not create"
        );
    }
    assert!(mid_build > 0, "no SIGKILL landed during a build");
    assert!(interrupted > 0, "no SIGTERM landed during a build");
    // Clean twice is safe.
    let out = ok(&["clean"]);
    assert!(!out.contains("tkill"), "{out}");
    std::fs::remove_file(topo).unwrap();
}

#[test]
fn a_crashed_server_shows_in_status_and_down_still_works() {
    let name = "tcrash";
    let _down = Down(name.into());
    let topo = topology(name, "wt", "  base: {}\n");
    ok(&["up", topo.to_str().unwrap()]);
    let st = status_json(name);
    let server = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "wt server")
        .unwrap()
        .clone();
    let pid = server["pid"].as_u64().unwrap() as i32;
    // SAFETY: killing the server lab started for this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t0 = Instant::now();
    loop {
        let st = status_json(name);
        let p = st["live"]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap()
            .clone();
        if p["alive"] == false || p["state"] == "Z" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still alive: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let procs = recorded_pids(&st);
    ok(&["down", name]);
    assert_gone(name, &procs);
    std::fs::remove_file(topo).unwrap();
}

/// `lab serve llm --listen ADDR` started as lab starts its servers: held until released.
fn held_mock(listen: &str, dir: &std::path::Path) -> lab::netlab::procs::Started {
    let argv: Vec<String> = ["lab", "serve", "llm", "--listen", listen]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    lab::netlab::procs::start(
        &PathBuf::from(LAB),
        "llm",
        None,
        "host",
        None,
        &argv,
        dir.join("llm.log"),
        &[],
        lab::netlab::procs::Lifetime::Held,
        lab::plan::Ready::Line,
        None,
    )
    .unwrap()
}

#[test]
fn a_child_that_dies_is_reported_with_its_status_and_log() {
    let dir = tmpdir("child-dies");
    let mut st = held_mock("192.0.2.1:9", &dir);
    st.release().unwrap();
    let err = st
        .wait_ready(
            Duration::from_secs(10),
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("the llm (pid"), "{err}");
    assert!(err.contains("exited (exit status: 2)"), "{err}");
    assert!(err.contains("cannot listen on 192.0.2.1:9"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A held process that lab never released (lab died before recording it) exits by
/// itself, without doing anything: it cannot outlive lab unrecorded.
#[test]
fn a_held_child_that_is_never_released_exits_without_starting() {
    let dir = tmpdir("held-child");
    let mut st = held_mock("127.0.0.1:0", &dir);
    // It waits: alive, and silent.
    std::thread::sleep(Duration::from_millis(300));
    assert!(st.child.try_wait().unwrap().is_none(), "it did not wait");
    let mut out = st.take_stdout().unwrap();
    // lab "dies": its end of the hand-shake pipe closes.
    drop(st.child.stdin.take());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = st.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "it outlived lab");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut printed = String::new();
    out.read_to_string(&mut printed).unwrap();
    assert_eq!(printed, "", "it started serving before it was released");
}

#[test]
fn without_root_lab_refuses_and_says_what_it_needs() {
    use std::os::unix::fs::PermissionsExt;
    // A copy of lab that nobody may run, wherever the checkout is (a checkout under
    // /root is out of nobody's reach): lab refuses before it reads any file.
    let dir = tmpdir("noroot");
    std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("lab");
    std::fs::copy(LAB, &bin).unwrap();
    for args in [
        vec!["up", "topologies/ci.yaml"],
        vec!["down"],
        vec!["clean"],
        vec!["shell", "wt"],
    ] {
        let mut c = Command::new(&bin);
        c.args(&args).current_dir(&*dir);
        // SAFETY: dropping to nobody in the child before exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("needs root, or CAP_NET_ADMIN and CAP_SYS_ADMIN"),
            "{err}"
        );
    }
}

#[test]
fn a_url_upstream_on_the_host_is_relayed_without_touching_host_networking() {
    use std::io::BufRead;
    let name = "trelay";
    let _down = Down(name.into());
    let host_net = || {
        let run = |args: &[&str]| {
            String::from_utf8(Command::new("ip").args(args).output().unwrap().stdout).unwrap()
        };
        (
            run(&["-br", "link"]),
            run(&["-br", "addr"]),
            run(&["route", "show", "table", "all"]),
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        )
    };
    // An upstream on the host's loopback, as Ollama would be.
    let mut upstream = Command::new(LAB)
        .args([
            "serve",
            "llm",
            "--listen",
            "127.0.0.1:0",
            "--max-tokens",
            "9",
            "--ttft",
            "5ms",
            "--tbt",
            "1ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(upstream.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let listen = ready["listen"].as_str().unwrap().to_owned();
    let before = host_net();

    let topo = tmpfile(
        "trelay.yaml",
        &format!(
            "name: {name}\napproaches: [sse]\nllm:\n  url: http://{listen}\nprofiles:\n  base: {{}}\n"
        ),
    );
    let out = ok(&["up", topo.to_str().unwrap()]);
    assert!(
        out.contains(&format!("llm: relay (http://{listen})")),
        "{out}"
    );
    let st = status_json(name);
    let relay = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "relay")
        .expect("a relay process")
        .clone();
    assert_eq!(relay["namespace"], "host");
    let recs = client(name, "sse", "sse", "https://198.18.0.2:8080/chat", "c0");
    assert_eq!(recs.len(), 10);
    for r in &recs {
        assert_eq!(r["tokens"], 9, "{r}");
    }
    assert_eq!(
        host_net(),
        before,
        "lab changed the host's network configuration"
    );
    let procs = recorded_pids(&st);
    ok(&["down", name]);
    assert_gone(name, &procs);
    assert_eq!(host_net(), before);
    upstream.kill().unwrap();
    upstream.wait().unwrap();
    std::fs::remove_file(topo).unwrap();
}

#[test]
fn two_labs_with_different_names_are_up_at_once() {
    let (a, b) = ("ttwo-a", "ttwo-b");
    let (_da, _db) = (Down(a.into()), Down(b.into()));
    let ta = topology(a, "sse", "  base: {}\n");
    let tb = topology(b, "sse", "  base: {}\n");
    ok(&["up", ta.to_str().unwrap()]);
    ok(&["up", tb.to_str().unwrap()]);
    // Same addresses in each lab, separate namespaces: both serve.
    for name in [a, b] {
        let recs = client(name, "sse", "sse", "https://198.18.0.2:8080/chat", "c0");
        assert_eq!(recs.len(), 10, "{name}");
        assert!(recs.iter().all(|r| r["tokens"] == 12), "{name}");
    }
    // Without --lab, a command that needs one lab says which are up.
    let o = lab(&["exec", "sse", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("labs are up (") && err.contains(a) && err.contains(b),
        "{err}"
    );
    let (pa, pb) = (
        recorded_pids(&status_json(a)),
        recorded_pids(&status_json(b)),
    );
    ok(&["down", a]);
    assert_gone(a, &pa);
    // Taking one down leaves the other whole.
    assert_eq!(status_json(b)["live"]["processes"][0]["alive"], true);
    assert_eq!(namespaces_of(b).len(), 4);
    ok(&["down", b]);
    assert_gone(b, &pb);
    std::fs::remove_file(ta).unwrap();
    std::fs::remove_file(tb).unwrap();
}

/// `lab bench quic`: on loopback, and through a cell's link with the server and client
/// in the cell's namespaces. Function only (timing belongs to the benchmark): every
/// stream echoed, every byte of the long stream back, the figures finite. A node that
/// is not a cell is refused.
#[test]
fn the_quic_microbenchmark_runs_on_loopback_and_through_a_cell() {
    let name = "tbench";
    let _down = Down(name.into());
    let topo = topology(name, "quic", "  a: { delay: 1ms }\n");
    ok(&["up", topo.to_str().unwrap()]);
    for args in [
        vec!["bench", "quic", "--quick", "--json"],
        vec![
            "bench", "quic", "--quick", "--json", "--lab", name, "--cell", "quic",
        ],
    ] {
        let out = ok(&args);
        let r: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(r["streams_ok"], 1000, "{args:?}: {r}");
        assert_eq!(r["stream_echoed"], 16u64 << 20, "{args:?}: {r}");
        for k in [
            "open_p50_us",
            "open_p99_us",
            "stream_mb_s",
            "datagram_p50_us",
            "datagram_p99_us",
        ] {
            let v = r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
            assert!(v.is_finite() && v > 0.0, "{args:?}: {k} {v}");
        }
        assert!(r["datagrams_lost"].as_u64().unwrap() < 20, "{args:?}: {r}");
        let path = r["path"].as_str().unwrap();
        if args.contains(&"--cell") {
            // A 1 ms delay each way: every echo takes at least 2 ms.
            assert!(r["open_p50_us"].as_f64().unwrap() >= 2000.0, "{r}");
            assert!(r["datagram_p50_us"].as_f64().unwrap() >= 2000.0, "{r}");
            assert!(
                path.contains("quic@a: 198.18.0.1 to 198.18.0.2, delay 1ms"),
                "{path}"
            );
        } else {
            assert_eq!(path, "loopback");
        }
    }
    let table = ok(&["bench", "quic", "--quick", "--lab", name, "--cell", "c0"]);
    assert!(
        table.contains("| open a stream, send a byte, read its echo (200x) "),
        "{table}"
    );
    assert!(table.contains("| 1000 of 1000 (opened in "), "{table}");
    let o = lab(&["bench", "quic", "--quick", "--lab", name, "--cell", "llm"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("\"llm\" is not a cell of lab tbench"),
        "{}",
        text(&o)
    );
    ok(&["down", name]);
    std::fs::remove_file(topo).unwrap();
}
