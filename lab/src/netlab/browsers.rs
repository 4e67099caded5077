//! Browsers that a lab's clients started (lab's browser client, headless Chromium in a
//! cell's client namespace). The client stops its browser's process group itself, and
//! the browser dies with the client (PR_SET_PDEATHSIG); what a killed client may leave
//! is the browser's helpers. Each browser leaves a record in `<run dir>/browsers/<cell>/
//! browser.json`: its process group (the leader's pid) and the leader's start time.
//! Taking the lab down kills what is left of each group: the processes whose process
//! group is the record's, that started no earlier than its leader, and that live in one
//! of the lab's own network namespaces. Never by name.

use super::sys::{Pidfd, start_time};
use std::path::Path;
use std::time::{Duration, Instant};

/// A browser's record, as lab's browser client writes it.
#[derive(serde::Deserialize)]
struct Record {
    pgid: i32,
    start: u64,
}

/// The network namespace inode of each of `namespaces` (lab's, under /run/netns).
pub(super) fn inodes(namespaces: &[String]) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    namespaces
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect()
}

/// A process's process group and network namespace inode.
fn group_and_netns(pid: u32) -> Option<(i32, u64)> {
    let (pgrp, _, ino) = ids(pid)?;
    Some((pgrp, ino))
}

/// A process's process group, session and network namespace inode.
pub(super) fn ids(pid: u32) -> Option<(i32, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields 5 (pgrp) and 6 (session), the third and fourth after the command's
    // closing parenthesis.
    let mut after = stat.rsplit_once(") ")?.1.split(' ').skip(2);
    let pgrp = after.next()?.parse().ok()?;
    let session = after.next()?.parse().ok()?;
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let ino = link
        .to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    Some((pgrp, session, ino))
}

/// The processes of browser group `r` that are still alive, as pidfds.
fn members(r: &Record, netns: &[u64]) -> Vec<Pidfd> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (pgrp, ino) = group_and_netns(pid)?;
            let start = start_time(pid)?;
            (pgrp == r.pgid && netns.contains(&ino) && start >= r.start)
                .then(|| Pidfd::open(pid, start))
                .flatten()
        })
        .collect()
}

/// Kills what is left of every browser recorded under `run_dir` (in the lab's
/// `namespaces`) and waits for it to go; what could not be stopped.
pub fn stop_left(run_dir: &Path, namespaces: &[String]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(run_dir.join("browsers")) else {
        return Vec::new();
    };
    let netns = inodes(namespaces);
    let mut failures = Vec::new();
    for cell in dir.flatten() {
        let path = cell.path().join(lab_clients::browser::RECORD);
        let Some(r) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        else {
            continue;
        };
        let left = members(&r, &netns);
        for p in &left {
            p.signal(libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        if left.iter().any(|p| !p.wait_exit(deadline)) {
            failures.push(format!(
                "a browser's processes (group {}) survived SIGKILL",
                r.pgid
            ));
        }
    }
    failures
}
