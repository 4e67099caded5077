//! Root tests of what lab promises when things go wrong: no write through a link someone
//! planted, labs that a killed `lab run` or `lab up` left are removed by `lab clean`
//! (and only those), and Ctrl-C stops `lab run` at once.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests that build labs take turns: each runs `lab clean`, which must not see
/// another test's lab half-built.
static TURN: Mutex<()> = Mutex::new(());

const NOBODY: u32 = 65534;

/// A one-profile topology for two approaches with short, slow-enough answers, and its
/// prompts file.
fn topology(name: &str, tbt: &str, tokens: usize) -> Tmp {
    let dir = tmpdir(&format!("rel-{name}"));
    std::fs::write(
        dir.join("prompts.txt"),
        "What is TCP?\nWhat is UDP?\nWhat is QUIC?\nWhat is SSE?\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("t.yaml"),
        format!(
            "name: {name}\napproaches: [sse, wt]\nllm:\n  mock: {{ ttft: 5ms, tbt: {tbt}, jitter: 0%, max_tokens: {tokens} }}\nprofiles:\n  p: {{ delay: 1ms }}\nworkload: {{ prompts: prompts.txt, timeout: 20s }}\nshaping: {{ backend: userspace }}\n"
        ),
    )
    .unwrap();
    dir
}

/// Starts `lab run` with its stdout piped.
fn spawn_run(topology: &Path, results: &Path, extra: &[&str]) -> Child {
    Command::new(LAB)
        .arg("run")
        .arg(topology)
        .arg("--results")
        .arg(results)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `child`'s stdout until a line contains `marker`; the reader is handed back so
/// the pipe stays open.
fn wait_for(child: &mut Child, marker: &str) -> BufReader<std::process::ChildStdout> {
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let t0 = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).unwrap();
        assert!(n > 0, "lab run ended before printing {marker:?}");
        if line.contains(marker) {
            return r;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no {marker:?}");
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// `lab clean` leaves nothing of lab `name`: no namespace, no run directory, and no
/// process in any of `inodes` (its namespaces, read before it was killed).
fn clean_leaves_nothing(name: &str, inodes: &[u64]) {
    let out = ok(&["clean"]);
    assert_nothing_left(name, &[]);
    let t0 = Instant::now();
    loop {
        let left = processes_in(inodes);
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "processes left in lab {name}'s namespaces after `lab clean`: {left:?}\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cert_out_never_writes_through_a_planted_link() {
    // The attack as reported: a directory another user owns, with key.pem planted as a
    // link to a file of root's.
    let atk = tmpdir("atk");
    std::os::unix::fs::chown(&*atk, Some(NOBODY), Some(NOBODY)).unwrap();
    let rootfile = tmpfile("rootfile", "important\n");
    symlink(&*rootfile, atk.join("key.pem")).unwrap();
    std::os::unix::fs::lchown(atk.join("key.pem"), Some(NOBODY), Some(NOBODY)).unwrap();
    let serve = |server: &'static str, dir: &Path| -> Vec<String> {
        [
            "serve",
            server,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["--cert-out".to_owned(), dir.display().to_string()])
        .collect()
    };
    let o = lab(&strs(&serve("sse", &atk)));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("belongs to user 65534, not to root or you"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&*rootfile).unwrap(), "important\n");
    let m = std::fs::metadata(&*rootfile).unwrap();
    assert_eq!(m.mode() & 0o777, 0o644, "the target's mode changed");

    // A directory of root's with links planted in it (root made them): the links are
    // replaced by lab's files, their targets untouched, a dangling one makes nothing.
    let own = tmpdir("own-certs");
    symlink(&*rootfile, own.join("key.pem")).unwrap();
    let dangling = own.join("../lab-test-dangling-target");
    symlink(&dangling, own.join("cert.pem")).unwrap();
    let srv = Server::start(&strs(&serve("sse", &own)));
    assert!(srv.stop());
    assert_eq!(std::fs::read_to_string(&*rootfile).unwrap(), "important\n");
    assert!(
        !dangling.exists(),
        "a dangling link made root create its target"
    );
    let key = std::fs::symlink_metadata(own.join("key.pem")).unwrap();
    assert!(key.is_file() && key.mode() & 0o777 == 0o600, "{key:?}");
    assert!(
        std::fs::symlink_metadata(own.join("cert.pem"))
            .unwrap()
            .is_file()
    );

    // A shared directory (/tmp style) is refused too.
    let shared = tmpdir("shared-certs");
    std::fs::set_permissions(
        &*shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let o = lab(&strs(&serve("wt", &shared)));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("others can write in it (mode 1777)"),
        "{}",
        text(&o)
    );
}

#[test]
fn results_in_a_foreign_shared_or_linked_directory_are_refused_before_building() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let topo = topology("rres", "1ms", 4);
    let t = topo.join("t.yaml");
    let foreign = tmpdir("rres-foreign");
    std::os::unix::fs::chown(&*foreign, Some(NOBODY), Some(NOBODY)).unwrap();
    let link = PathBuf::from(format!("{}-link", foreign.display()));
    let _ = std::fs::remove_file(&link);
    let elsewhere = tmpdir("rres-elsewhere");
    symlink(&*elsewhere, &link).unwrap();
    let _unlink = Tmp(link.clone());
    for (dir, says) in [
        (foreign.to_path_buf(), "belongs to user 65534"),
        (link.clone(), "it is a symbolic link"),
        (PathBuf::from("/tmp"), "others can write in it (mode 1777)"),
    ] {
        let o = lab(&[
            "run",
            t.to_str().unwrap(),
            "--results",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(says), "{}", text(&o));
        assert!(namespaces_of("rres").is_empty(), "a lab was built");
    }
    assert_eq!(std::fs::read_dir(&*elsewhere).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&*foreign).unwrap().count(), 0);
}

#[test]
fn results_and_pcapng_files_go_to_the_user_behind_sudo() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let topo = topology("rsudo", "1ms", 6);
    let results = tmpdir("rsudo-results");
    std::fs::remove_dir(&*results).unwrap(); // lab makes it, and hands it over
    let o = Command::new(LAB)
        .args(["run", topo.join("t.yaml").to_str().unwrap(), "--pcap"])
        .arg("--results")
        .arg(&*results)
        .env("SUDO_UID", "4242")
        .env("SUDO_GID", "4343")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut files = 0;
    let mut walk = vec![results.to_path_buf()];
    while let Some(p) = walk.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4343), "{}", p.display());
        if m.is_dir() {
            walk.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            files += 1;
        }
    }
    let run = std::fs::read_dir(&*results)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for f in ["c0-client.pcapng", "c0-server.pcapng", "c1-client.pcapng"] {
        let p = run.join("pcap").join(f);
        assert!(
            std::fs::metadata(&p).unwrap().len() > 0,
            "{} is empty",
            p.display()
        );
    }
    // run.json, report.md, report.html, four plots, four pcapng files (the key logs
    // inside them).
    assert_eq!(files, 11);
    assert_nothing_left("rsudo", &[]);
}

/// `lab run` killed by SIGKILL while it builds, warms up, runs and saves: `lab clean`
/// then leaves no namespace, process or state.
#[test]
fn a_killed_lab_run_is_cleaned_up_whenever_it_died() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let name = "rkill";
    let topo = topology(name, "15ms", 40);
    let t = topo.join("t.yaml");
    let results = tmpdir("rkill-results");
    let mut points = 0;
    // While building: at fixed delays after the start.
    for delay_ms in [60, 120, 180, 240, 320] {
        let mut child = spawn_run(&t, &results, &[]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let inodes = netns_inodes(name);
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
        clean_leaves_nothing(name, &inodes);
        points += 1;
    }
    // At markers in its output: built (warm-up starts), the first prompt (mid-run), the
    // report (saving).
    for marker in ["cells, shaping:", "(1/", "# lab run:"] {
        let mut child = spawn_run(&t, &results, &[]);
        let _out = wait_for(&mut child, marker);
        let inodes = netns_inodes(name);
        assert!(!inodes.is_empty(), "no lab at {marker:?}");
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
        let out = text(&lab(&["status", "--lab", name]));
        assert!(
            out.contains("left behind by a lab process that is gone"),
            "{out}"
        );
        clean_leaves_nothing(name, &inodes);
        points += 1;
    }
    assert_eq!(points, 8);
}

/// `lab up` interrupted (Ctrl-C, SIGTERM or SIGKILL) at many points up to the end of its
/// build leaves nothing, or a whole lab recorded as handed over; never an orphan. A
/// Ctrl-C or SIGTERM that lab catches, at any point until it hands the lab over (while
/// it prints the status too), takes the lab down and exits 130; only one that comes
/// after, when lab has given the signals their default action back, ends the process
/// with the lab up, as recorded. A lab up that exits 0 with a signal sent says when it
/// handed over (its debug log, on the machine's monotonic clock): the signal must
/// have been sent after that (it came while the process was exiting).
#[test]
fn an_interrupted_lab_up_leaves_nothing_or_a_whole_lab_it_handed_over() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let name = "rup";
    let topo = topology(name, "1ms", 4);
    let t = topo.join("t.yaml");
    // How long a build takes here, to spread the interrupts over it and past its end.
    let t0 = Instant::now();
    ok(&["up", t.to_str().unwrap()]);
    let build = t0.elapsed();
    ok(&["down", name]);
    let (mut nothing, mut handed) = (0, 0);
    // A failed assertion must not leave the lab up for the next test.
    struct Down(&'static str);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = lab(&["down", self.0]);
        }
    }
    let _down = Down(name);
    for i in 0..24u32 {
        let sig = [libc::SIGINT, libc::SIGTERM, libc::SIGKILL][i as usize % 3];
        let at = build * (i + 4) / 24;
        let mut child = Command::new(LAB)
            .args([
                "--log",
                "info,lab::commands::lab=debug",
                "up",
                t.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let inodes = netns_inodes(name);
        let done_before = child.try_wait().unwrap();
        let sent = lab::netlab::sys::now_ns();
        signal(&child, sig);
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        if done_before.is_none() && sig != libc::SIGKILL && status.signal().is_none() {
            if status.code() == Some(0) {
                // Only a signal sent after the hand-over (as the process exited).
                let at_ns: u64 = err
                    .lines()
                    .find_map(|l| l.split("handed over at CLOCK_MONOTONIC ").nth(1))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("signal {sig} at {at:?}: exit 0 without a hand-over: {err}")
                    });
                assert!(
                    at_ns <= sent,
                    "signal {sig} at {at:?} was sent {} us before the hand-over, and lab up exited 0",
                    (at_ns - sent) / 1000
                );
            } else {
                // Caught: the lab was taken down, whatever point the build had reached.
                assert_eq!(status.code(), Some(130), "signal {sig} at {at:?}: {err}");
            }
        }
        let o = lab(&["clean"]);
        assert!(o.status.success(), "{}", text(&o));
        match std::fs::read(format!("/run/lab/{name}/state.json")) {
            Err(_) => {
                assert_nothing_left(name, &[]);
                assert!(processes_in(&inodes).is_empty(), "an orphan process");
                nothing += 1;
            }
            Ok(b) => {
                let s: serde_json::Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(s["handed_over"], true, "signal {sig} at {at:?}: {status}");
                // Left up only by a lab up that had handed it over: it had ended,
                // the signal ended it by its default action, or it exited 0 with the
                // signal after the hand-over (checked above).
                assert!(
                    done_before.is_some() || status.signal().is_some() || status.code() == Some(0),
                    "signal {sig} at {at:?}: a lab left up by {status}"
                );
                assert_eq!(s["phase"], "up");
                let st = &state_of(name);
                for p in st["live"]["processes"].as_array().unwrap() {
                    assert_eq!(p["alive"], true, "{p}");
                }
                for n in st["live"]["namespaces"].as_array().unwrap() {
                    assert_eq!(n["exists"], true, "{n}");
                }
                ok(&["down", name]);
                handed += 1;
            }
        }
    }
    println!("interrupted lab up: {nothing} left nothing, {handed} a handed-over lab");
    assert!(nothing > 0, "no interrupt landed during the build");
}

fn state_of(name: &str) -> serde_json::Value {
    let o = lab(&["status", "--lab", name, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["labs"][0].clone()
}

/// Ctrl-C during the warm-up and in the middle of the workload: exit 130 within 2 s,
/// run.json saved with what was measured, nothing left.
#[test]
fn ctrl_c_stops_lab_run_within_two_seconds_and_saves_what_there_is() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let name = "rint";
    // About 6 s of tokens per prompt: a client left running would show.
    let topo = topology(name, "30ms", 200);
    let t = topo.join("t.yaml");
    let results = tmpdir("rint-results");
    for (marker, records) in [("cells, shaping:", false), ("(1/", true)] {
        for e in std::fs::read_dir(&*results).unwrap() {
            std::fs::remove_dir_all(e.unwrap().path()).unwrap();
        }
        let mut child = spawn_run(&t, &results, &[]);
        let _out = wait_for(&mut child, marker);
        let at = Instant::now();
        signal(&child, libc::SIGINT);
        let status = child.wait().unwrap();
        let took = at.elapsed();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        println!(
            "Ctrl-C at {marker:?}: exited {status} after {} ms",
            took.as_millis()
        );
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
        let run = std::fs::read_dir(&*results)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
        let n: usize = v["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["records"].as_array().unwrap().len())
            .sum();
        assert_eq!(n > 0, records, "records saved at {marker:?}: {n}");
        assert_nothing_left(name, &[]);
    }
    // A second Ctrl-C skips the saving.
    for e in std::fs::read_dir(&*results).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    let mut child = spawn_run(&t, &results, &[]);
    let _out = wait_for(&mut child, "(1/");
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(20));
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted again; not saving"), "{err}");
    let run = std::fs::read_dir(&*results)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(!run.join("run.json").exists());
    assert_nothing_left(name, &[]);

    // Repeated runs stop at the run that was interrupted: the runs so far are saved,
    // the report over them says it is short, and no further run starts.
    std::fs::remove_dir_all(&run).unwrap();
    let mut child = spawn_run(&t, &results, &["--runs", "3"]);
    let mut out = wait_for(&mut child, "run 2 of 3 (seed 2)");
    let mut line = String::new();
    while !line.contains("(1/") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "run 2 ended early");
    }
    let at = Instant::now();
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let took = at.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
    assert!(!rest.contains("run 3 of 3"), "{rest}");
    assert!(
        rest.contains("2 runs in") && rest.contains("(of 3 asked: interrupted"),
        "{rest}"
    );
    let top = std::fs::read_dir(&*results)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(top.join("runs.json")).unwrap()).unwrap();
    assert_eq!(v["asked"], 3);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| r["interrupted"].clone())
            .collect::<Vec<_>>(),
        [false, true]
    );
    assert!(top.join("run-2/run.json").exists() && !top.join("run-3").exists());
    assert_nothing_left(name, &[]);
}
