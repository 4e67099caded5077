//! Processes inside namespaces: lab re-executes itself (`lab serve ...`), joining the
//! namespace in `pre_exec` (after fork, before exec, in the single-threaded child), in
//! its own session so a Ctrl-C at the terminal does not reach it, with stderr in a log
//! file and stdout a pipe that carries the one JSON ready line.
//!
//! No process can outlive lab before lab has recorded it:
//! - a [`Lifetime::Held`] process (a server, `lab wire`, the relay) waits, first thing,
//!   for a `go` line on its stdin ([`hold`]); lab writes it ([`Started::release`]) only
//!   after the pid and start time are in the state record. If lab dies before, the pipe
//!   closes and the process exits without doing anything;
//! - a [`Lifetime::Tied`] process (a cell's client) is killed by the kernel
//!   (`PR_SET_PDEATHSIG`) when the thread that started it ends, so it never outlives
//!   `lab run`.

use super::state::ProcRecord;
use super::sys;
use crate::approach::Transport;
use crate::plan::Ready;
use anyhow::{Context, Result, anyhow, bail};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a process without ports must run, without exiting, to count as started.
pub const SETTLE: Duration = Duration::from_millis(500);

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "TCP",
        Transport::Udp => "UDP",
    }
}

/// How long a server may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The last `n` lines of a log file (for reports of a child that died).
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How long a started process may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// It outlives lab once recorded and released; until then it waits.
    Held,
    /// It dies when the thread that started it ends.
    Tied,
}

/// The environment variable that makes a lab child wait for its release.
pub const HOLD_ENV: &str = "LAB_HOLD";

/// In a child started [`Lifetime::Held`]: waits for lab's `go` line on stdin, and exits
/// if lab went away first. Does nothing in a process started any other way.
pub fn hold() {
    if std::env::var_os(HOLD_ENV).is_none() {
        return;
    }
    // SAFETY: removing a variable before any other thread exists (this runs first
    // thing in main), so nothing reads the environment concurrently.
    unsafe { std::env::remove_var(HOLD_ENV) };
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    if line.trim() != "go" {
        // lab died before it recorded this process: leave nothing behind.
        std::process::exit(0);
    }
}

/// A started child that has not reported ready yet.
pub struct Started {
    pub child: Child,
    pub record: ProcRecord,
    stdout: Option<ChildStdout>,
    ready: Ready,
}

/// Starts `argv` (whose first word, `lab`, is replaced by `exe`) in the namespace `ns`
/// (none: the host's), logging to `log`, with `env` added to its environment; with
/// `hosts`, in a private mount namespace where that file is its /etc/hosts. A
/// [`Lifetime::Held`] child does nothing until [`Started::release`].
// Each argument is one plain fact about the child; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn start(
    exe: &Path,
    role: &str,
    cell: Option<&str>,
    namespace: &str,
    ns: Option<&File>,
    argv: &[String],
    log: PathBuf,
    env: &[(String, String)],
    lifetime: Lifetime,
    ready: Ready,
    hosts: Option<&Path>,
) -> Result<Started> {
    let hosts = hosts
        .map(|h| std::ffi::CString::new(h.as_os_str().as_encoded_bytes()))
        .transpose()
        .context("a hosts file path with a NUL byte")?;
    let logf = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(&argv[1..])
        .stdin(match lifetime {
            Lifetime::Held => Stdio::piped(),
            Lifetime::Tied => Stdio::null(),
        })
        .stdout(match ready {
            // The ready line comes on stdout; a server of the user's writes what it
            // likes there, which goes to its log.
            Ready::Line => Stdio::piped(),
            Ready::Port { .. } | Ready::Ports { .. } => Stdio::from(logf.try_clone()?),
        })
        .stderr(logf)
        .env("LAB_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)));
    if lifetime == Lifetime::Held {
        cmd.env(HOLD_ENV, "1");
    }
    let nsfd = ns.map(|f| f.as_raw_fd());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child and only makes async-signal-safe
    // system calls (setns, unshare, mount, setsid, prctl, getppid) on data made before
    // the fork; the fd stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = nsfd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(h) = &hosts {
                // A mount namespace of its own, with the lab's hosts file.
                sys::private_mounts()?;
                sys::bind_hosts(h)?;
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if lifetime == Lifetime::Tied {
                sys::tie_to_parent(libc::SIGKILL, parent)?;
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the {role} ({})", argv.join(" ")))?;
    let pid = child.id();
    let start = sys::start_time(pid).unwrap_or(0);
    let stdout = child.stdout.take();
    Ok(Started {
        child,
        record: ProcRecord {
            role: role.to_owned(),
            cell: cell.map(str::to_owned),
            namespace: namespace.to_owned(),
            pid,
            start,
            argv: argv.to_vec(),
            log,
            url: None,
            cert_sha256: None,
        },
        stdout,
        ready,
    })
}

/// Whether process `pid` listens on TCP `port` (or has UDP `port` bound), in its own
/// network namespace: its /proc/PID/net tables.
fn bound(pid: u32, transport: Transport, port: u16) -> bool {
    let (files, listening): (&[&str], Option<&str>) = match transport {
        Transport::Tcp => (&["tcp", "tcp6"], Some("0A")),
        Transport::Udp => (&["udp", "udp6"], None),
    };
    files.iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let local_port = cols
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                local_port == Some(port) && listening.is_none_or(|st| cols.get(3) == Some(&st))
            })
    })
}

impl Started {
    /// Lets a [`Lifetime::Held`] child go on: call once it is recorded.
    pub fn release(&mut self) -> Result<()> {
        use std::io::Write;
        if let Some(mut stdin) = self.child.stdin.take() {
            stdin.write_all(b"go\n").with_context(|| {
                format!("the {} exited before it was released", self.record.role)
            })?;
        }
        Ok(())
    }

    /// Takes the child's stdout, to read it as it comes (instead of [`Started::wait_ready`]).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// Waits for the child's ready line. Fails, with its exit status and the tail of its
    /// log, if it exits first; also on timeout or when `cancel` is set.
    pub fn wait_ready(&mut self, timeout: Duration, cancel: &AtomicBool) -> Result<()> {
        match &self.ready {
            Ready::Port { transport, port } => {
                return self.wait_ports(&[(*transport, *port)], timeout, cancel);
            }
            Ready::Ports { ports } => {
                let ports: Vec<_> = ports.iter().map(|p| (p.transport, p.port)).collect();
                return self.wait_ports(&ports, timeout, cancel);
            }
            Ready::Line => {}
        }
        let stdout = self
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the {} has no stdout", self.record.role))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let deadline = Instant::now() + timeout;
        let r = &self.record;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(line)) if !line.is_empty() => {
                    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| {
                        format!("the {} printed {line:?} instead of a ready line", r.role)
                    })?;
                    if v["event"] != "ready" {
                        bail!("the {} printed {line:?} instead of a ready line", r.role);
                    }
                    self.record.url = v["url"].as_str().map(str::to_owned);
                    self.record.cert_sha256 = v["cert_sha256"].as_str().map(str::to_owned);
                    return Ok(());
                }
                // End of stdout: the child closed it or died; the exit status says which.
                Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Some(fd) = sys::Pidfd::open(r.pid, r.start) {
                        fd.wait_exit(Instant::now() + Duration::from_secs(2));
                    }
                    if let Some(status) = self.child.try_wait()? {
                        return Err(self.died(&format!("exited ({status})")));
                    }
                    return Err(self.died("closed its stdout without a ready line"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.child.try_wait()? {
                        return Err(self.died(&format!("exited ({status})")));
                    }
                    if cancel.load(Ordering::SeqCst) {
                        bail!("interrupted while waiting for the {}", r.role);
                    }
                    if Instant::now() >= deadline {
                        return Err(self.died(&format!(
                            "did not report ready within {} s",
                            timeout.as_secs()
                        )));
                    }
                }
            }
        }
    }

    /// Waits until the child listens on (or has bound) each of `ports`; with none, until
    /// it has run for [`SETTLE`] without exiting. Fails if it exits first, on timeout or
    /// when `cancel` is set.
    fn wait_ports(
        &mut self,
        ports: &[(Transport, u16)],
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let what = match ports {
            [] => "started".to_owned(),
            _ => format!(
                "listened on {}",
                ports
                    .iter()
                    .map(|(t, p)| format!("{} port {p}", transport_name(*t)))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        };
        loop {
            let ready = match ports {
                [] => t0.elapsed() >= SETTLE,
                _ => ports.iter().all(|(t, p)| bound(self.record.pid, *t, *p)),
            };
            if let Some(status) = self.child.try_wait()? {
                return Err(self.died(&format!(
                    "exited ({status}) before it {what}; a program lab starts must stay in the foreground (not daemonize)"
                )));
            }
            if ready {
                return Ok(());
            }
            if cancel.load(Ordering::SeqCst) {
                bail!("interrupted while waiting for the {}", self.record.role);
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = ports
                    .iter()
                    .filter(|(t, p)| !bound(self.record.pid, *t, *p))
                    .map(|(t, p)| format!("{} port {p}", transport_name(*t)))
                    .collect();
                return Err(self.died(&format!(
                    "did not listen on {} within {} s",
                    missing.join(" and "),
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn died(&self, how: &str) -> anyhow::Error {
        let r = &self.record;
        let tail = log_tail(&r.log, 12);
        anyhow!(
            "the {} (pid {}, in {}) {how}. Last lines of {}:\n{}",
            r.role,
            r.pid,
            r.namespace,
            r.log.display(),
            if tail.is_empty() { "(empty)" } else { &tail }
        )
    }
}
