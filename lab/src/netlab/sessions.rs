//! What a lab's processes started and left behind. Every process lab starts leads a
//! session of its own (`setsid`), and what it starts stays in that session unless it
//! leaves on purpose: a node's workers (HAProxy's, say), or the children of a server
//! that crashed. Taking the lab down kills what is left of each recorded process's
//! session: the processes whose session is the record's pid, that started no earlier
//! than it, and that live in one of the lab's own network namespaces. Never by name.

use super::browsers::{ids, inodes};
use super::state::ProcRecord;
use super::sys::{Pidfd, start_time};
use std::time::{Duration, Instant};

/// The live members of the sessions of `procs` in the network namespaces `netns`, as
/// pidfds with the role of the process whose session they are in.
fn members<'a>(procs: &'a [ProcRecord], netns: &[u64]) -> Vec<(&'a ProcRecord, Pidfd)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (_, session, ino) = ids(pid)?;
            let start = start_time(pid)?;
            let p = procs
                .iter()
                .find(|p| session == p.pid as i32 && start >= p.start)?;
            netns
                .contains(&ino)
                .then(|| Pidfd::open(pid, start).map(|fd| (p, fd)))
                .flatten()
        })
        .collect()
}

/// Kills what is left of the sessions of `procs` (in the lab's `namespaces`) and waits
/// for it to go; what could not be stopped.
pub fn stop_left(procs: &[ProcRecord], namespaces: &[String]) -> Vec<String> {
    let left = members(procs, &inodes(namespaces));
    for (_, fd) in &left {
        fd.signal(libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    left.iter()
        .filter(|(_, fd)| !fd.wait_exit(deadline))
        .map(|(p, _)| {
            format!(
                "a process the {} (pid {}) started survived SIGKILL",
                p.role, p.pid
            )
        })
        .collect()
}

/// Live processes still inside one of `namespaces` (a node's own, once its sessions are
/// stopped): something there left its session (a command that daemonized, or a shell
/// someone opened). lab did not start them, so it names them and leaves them.
pub fn strays(namespaces: &[String]) -> Vec<String> {
    let netns = inodes(namespaces);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| ids(pid).is_some_and(|(_, _, ino)| netns.contains(&ino)))
        .filter(|&pid| super::sys::proc_state_rss(pid).is_some_and(|(s, _)| s != 'Z'))
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!(
                "pid {pid} ({}) is still inside a node's namespace, outside the session lab started (a command that daemonized?); lab leaves what it did not start: stop it (kill {pid}), then `lab clean`",
                comm.trim()
            )
        })
        .collect()
}
