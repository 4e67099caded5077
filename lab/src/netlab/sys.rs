//! The system calls under the lab: named network namespaces (the `ip netns` convention,
//! without `ip`), running code inside a namespace on a dedicated thread, sysctls,
//! privilege checks and race-free process handles (pidfd).
//!
//! Nothing here runs inside an async task: `setns` and `unshare` act on the calling
//! thread, so they only ever run on threads made for the purpose.

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where named namespaces live, as iproute2 keeps them.
pub const NETNS_DIR: &str = "/run/netns";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Fails with a clear message unless this process may build labs.
pub fn require_privileges(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    // Capabilities: CAP_NET_ADMIN is bit 12, CAP_SYS_ADMIN bit 21 of CapEff.
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    if eff & (1 << 12) != 0 && eff & (1 << 21) != 0 {
        return Ok(());
    }
    bail!(
        "`lab {what}` needs root, or CAP_NET_ADMIN and CAP_SYS_ADMIN, to create network namespaces, \
links and mounts; run it with sudo"
    )
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so namespaces mounted
/// there show in every mount namespace.
pub fn ensure_netns_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("cannot create {NETNS_DIR}"))?;
    let shared = |dir: &str| {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared(NETNS_DIR) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("cannot bind-mount {NETNS_DIR} on itself"))?;
            shared(NETNS_DIR).with_context(|| format!("cannot make {NETNS_DIR} a shared mount"))
        }
        Err(e) => Err(e).with_context(|| format!("cannot make {NETNS_DIR} a shared mount")),
    }
}

/// Renames `from` to `to`, failing with AlreadyExists rather than replacing `to`.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "path has a NUL byte"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Does a named namespace exist?
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Creates the named network namespace `name`; fails if the name is taken. With
/// `ipv6` false, IPv6 is off for every interface that will ever appear in it. Loopback
/// is brought up later, with the other links.
pub fn create_netns(name: &str, ipv6: bool) -> Result<()> {
    let path = netns_path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "network namespace {name} already exists ({}); lab did not create it now. \
If a killed lab left it, `lab clean` removes it",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
            }
        })?;
    let p = path.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("cannot bind-mount the new namespace on {}", p.display()))?;
        if !ipv6 {
            for which in ["default", "all"] {
                write_sysctl(&format!("net/ipv6/conf/{which}/disable_ipv6"), "1", true)?;
            }
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(anyhow::anyhow!("the namespace thread panicked")));
    if let Err(e) = made {
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
        return Err(e.context(format!("cannot create network namespace {name}")));
    }
    Ok(())
}

/// Removes a named namespace: unmounts and unlinks it. A namespace that is already gone
/// is not an error. Interfaces inside it go with it once no process holds it.
pub fn delete_netns(name: &str) -> Result<()> {
    let path = netns_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot unmount {}", path.display())),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Opens a named namespace (for `setns`).
pub fn open_netns(name: &str) -> Result<File> {
    let path = netns_path(name);
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("cannot open network namespace {}", path.display()))
}

/// In a forked child, before exec: a mount namespace of its own whose mounts do not
/// propagate back to the host (as `ip netns exec` makes one). Async-signal-safe.
pub fn private_mounts() -> std::io::Result<()> {
    // SAFETY: two system calls on static strings; nothing is allocated.
    let ok = unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            ) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// In a forked child with [`private_mounts`]: `hosts` (a lab's hosts file) bound over
/// /etc/hosts. Async-signal-safe.
pub fn bind_hosts(hosts: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: one system call on a path made before the fork and a static string.
    let rc = unsafe {
        libc::mount(
            hosts.as_ptr(),
            c"/etc/hosts".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `f` on a new thread that has joined the network namespace `ns`. Sockets made
/// there (netlink, ioctl, listeners) stay bound to that namespace afterwards.
pub fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("a namespace thread panicked")))
    })
}

/// Writes `/proc/sys/<key>` of the calling thread's network namespace.
pub fn write_sysctl(key: &str, value: &str, missing_ok: bool) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    match std::fs::write(&path, value) {
        Ok(()) => Ok(()),
        Err(e) if missing_ok && e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot write {value} to {}", path.display())),
    }
}

/// Raises this process's open-file limit (RLIMIT_NOFILE) to `want`, within the
/// kernel's ceiling (`fs.nr_open`): the soft limit, and the hard one too where the
/// process may (root). Returns the soft limit in force.
/// For a child between fork and exec: the kernel sends it `signal` when the thread that
/// forked it ends (`PR_SET_PDEATHSIG`), and it exits at once if `parent` has already
/// gone. Only async-signal-safe calls.
pub fn tie_to_parent(signal: libc::c_int, parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl, getppid and _exit are async-signal-safe, and touch no memory of
    // the parent's.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have gone before the death signal was armed.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1_048_576u64);
    let target = want.min(ceiling);
    for new in [
        libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max.max(target),
        },
        libc::rlimit {
            rlim_cur: target.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        },
    ] {
        // SAFETY: setrlimit reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return Ok(new.rlim_cur);
        }
    }
    Ok(lim.rlim_cur)
}

/// What a process and its descendants use at one moment, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Processes counted (the process and its descendants).
    pub processes: u32,
    pub rss_kib: u64,
    /// CPU time in clock ticks (`sysconf(_SC_CLK_TCK)` a second).
    pub utime: u64,
    pub stime: u64,
    pub threads: u64,
    pub fds: u64,
}

/// What `pid` and every process below it use now; `None` if `pid` is gone.
pub fn tree_usage(pid: u32) -> Option<Usage> {
    let mut u = Usage::default();
    let mut todo = vec![pid];
    let mut first = true;
    while let Some(p) = todo.pop() {
        let stat = match std::fs::read_to_string(format!("/proc/{p}/stat")) {
            Ok(s) => s,
            Err(_) if !first => continue,
            Err(_) => return None,
        };
        first = false;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        // Fields from 3 on: utime 14, stime 15, num_threads 20, rss 24 (pages).
        let num = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        u.processes += 1;
        u.utime += num(14);
        u.stime += num(15);
        u.threads += num(20);
        u.rss_kib += num(24) * page_size() / 1024;
        u.fds += std::fs::read_dir(format!("/proc/{p}/fd")).map_or(0, |d| d.count() as u64);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    todo.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
                }
            }
        }
    }
    Some(u)
}

/// Clock ticks a second, as /proc counts CPU time.
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// The start time of a process (field 22 of /proc/PID/stat, in clock ticks since boot).
/// With the pid it names one process for good: a reused pid has another start time.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// State letter (R, S, Z, ...) and resident memory in bytes of a live process.
pub fn proc_state_rss(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let state = rest.chars().next()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split(' ').nth(1)?.parse().ok()?;
    Some((state, pages * page_size()))
}

/// A handle on one process that cannot be confused with a later process of the same pid.
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens the process `pid` if it is still the one that started at `start`.
    pub fn open(pid: u32, start: u64) -> Option<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let fd = Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        // Checked after opening: if the start time still matches, the fd names our process.
        (start_time(pid) == Some(start)).then_some(fd)
    }

    pub fn signal(&self, sig: i32) -> bool {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no info, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }

    /// Waits until the process has exited, or the deadline passes. True if it exited.
    pub fn wait_exit(&self, deadline: Instant) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                return true;
            }
            if r == 0 || left.is_zero() {
                return false;
            }
        }
    }
}

/// Stops a process politely: SIGTERM, then SIGKILL after `grace`. Returns a description
/// of what happened, or an error if it would not die.
pub fn stop_process(pid: u32, start: u64, grace: Duration) -> Result<&'static str> {
    let Some(fd) = Pidfd::open(pid, start) else {
        return Ok("already gone");
    };
    fd.signal(libc::SIGTERM);
    if fd.wait_exit(Instant::now() + grace) {
        reap(pid);
        return Ok("stopped");
    }
    fd.signal(libc::SIGKILL);
    if fd.wait_exit(Instant::now() + Duration::from_secs(5)) {
        reap(pid);
        return Ok("killed after SIGTERM was ignored");
    }
    bail!("pid {pid} survived SIGKILL for 5 s")
}

/// Collects the exit status of a child of ours, if it is one; harmless otherwise.
fn reap(pid: u32) {
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid as i32),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

/// The monotonic clock in nanoseconds.
pub fn now_ns() -> u64 {
    lab_codec::monotonic_ns()
}
