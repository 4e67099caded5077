//! `lab shell` and `lab exec`: a command inside a lab namespace, as `ip netns exec` runs
//! it: the network namespace joined, a private mount namespace with /sys remounted so
//! that tools see the namespace's interfaces (and, in a lab with nodes, the lab's hosts
//! file over /etc/hosts, so the nodes have names), and the exit status passed back.

use super::sys;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

/// Runs `argv` in the namespace `ns` with extra environment (and `hosts` as its
/// /etc/hosts, if given), waits, and returns its exit status (128 + signal if a signal
/// ended it).
pub fn run_in(
    ns: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    hosts: Option<&std::path::Path>,
) -> Result<u8> {
    let hosts = hosts
        .map(|h| std::ffi::CString::new(h.as_os_str().as_encoded_bytes()))
        .transpose()
        .context("a hosts file path with a NUL byte")?;
    let file = sys::open_netns(ns)?;
    let fd = file.as_raw_fd();
    let sys_ro = nix::sys::statvfs::statvfs("/sys")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).envs(env);
    // SAFETY: runs in the forked child; only async-signal-safe calls, on static strings
    // and on a path made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let err = || Err(std::io::Error::last_os_error());
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return err();
            }
            // Keep our mounts from propagating back to the host.
            sys::private_mounts()?;
            libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
            let flags = if sys_ro { libc::MS_RDONLY } else { 0 };
            if libc::mount(
                c"sysfs".as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                return err();
            }
            if let Some(h) = &hosts {
                sys::bind_hosts(h)?;
            }
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    // Like system(3): while the command runs, Ctrl-C is its business, not ours.
    // SAFETY: setting signal dispositions to ignore, restored below.
    let (old_int, old_quit) = unsafe {
        (
            libc::signal(libc::SIGINT, libc::SIG_IGN),
            libc::signal(libc::SIGQUIT, libc::SIG_IGN),
        )
    };
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {} in {ns}", argv[0]));
    // SAFETY: restoring the dispositions saved above.
    unsafe {
        libc::signal(libc::SIGINT, old_int);
        libc::signal(libc::SIGQUIT, old_quit);
    }
    drop(file);
    let status = status?;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        _ => 1,
    })
}

/// The shell to start, and its arguments: bash gets an rc file that keeps the user's
/// settings and puts the node in the prompt; other shells get PS1 in the environment.
pub fn shell_argv(node: &str, rcfile: &std::path::Path) -> (Vec<String>, Option<String>) {
    let shell = std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/bash".into());
    if shell.ends_with("/bash") || shell == "bash" {
        let rc = format!(
            "[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc\n[ -f ~/.bashrc ] && . ~/.bashrc\nPS1=\"[lab {node}] ${{PS1:-\\\\w\\\\$ }}\"\n"
        );
        (
            vec![
                shell,
                "--rcfile".into(),
                rcfile.display().to_string(),
                "-i".into(),
            ],
            Some(rc),
        )
    } else {
        (vec![shell, "-i".into()], None)
    }
}
