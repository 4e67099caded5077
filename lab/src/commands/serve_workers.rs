//! `lab serve <server> --workers N`: one TCP port served by N processes.
//!
//! Every process binds its own listening socket with `SO_REUSEPORT` on the one
//! address, and the kernel spreads new connections over them by their addresses'
//! hash, so each process holds its share of the sockets under its own open-file
//! limit. The first process (the one started) is worker 0: it binds first (choosing
//! the port when `--listen` gives 0), then starts the others with `--worker ADDR` and
//! hands each its certificate and key on stdin, so that every worker presents the
//! same certificate and nothing of the key is written to disk. Only it prints the
//! ready line. lab samples the process tree, so a report sums the workers' RSS, CPU,
//! threads and descriptors.
//!
//! The workers are tied to the first: the kernel sends them SIGTERM if it dies
//! (`PR_SET_PDEATHSIG`), and it stops them when it stops. A worker that ends on its own
//! ends the server, with the worker, its pid and how it ended.

use anyhow::{Context, Result, bail};
use lab_servers::tls::CertKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What worker 0 hands every other worker on its stdin.
#[derive(Serialize, Deserialize)]
struct Handed {
    cert_pem: String,
    key_pem: String,
}

/// The other workers, started by worker 0.
pub struct Workers {
    children: Vec<(usize, u32, tokio::process::Child)>,
    of: usize,
}

/// Why `--workers` cannot serve `server`, if it cannot: only a TCP server with no
/// process of its own beside it.
pub fn refuse(a: crate::approach::Approach, n: u32) -> Result<()> {
    if n <= 1 {
        return Ok(());
    }
    if a.transport != crate::approach::Transport::Tcp {
        bail!(
            "--workers {n}: the {} server takes every connection on one UDP socket (QUIC); only TCP servers run as several processes on one port",
            a.server
        );
    }
    if !a.shares_port() {
        let servers: Vec<&str> = crate::approach::all()
            .filter(|a| a.shares_port())
            .map(|a| a.server)
            .collect();
        bail!(
            "--workers {n}: the {} server runs processes of its own beside it; only the TCP servers that run alone ({}) run as several processes",
            a.server,
            servers.join(", ")
        );
    }
    Ok(())
}

/// A worker's certificate: the one worker 0 writes on its stdin.
pub async fn handed_cert() -> Result<CertKey> {
    let mut text = String::new();
    tokio::io::stdin()
        .read_to_string(&mut text)
        .await
        .context("cannot read the certificate from worker 0")?;
    let h: Handed = serde_json::from_str(&text)
        .context("worker 0 sent no certificate on stdin (`--worker` is lab's own flag)")?;
    CertKey::from_pem(
        h.cert_pem,
        h.key_pem,
        "worker 0's certificate",
        "worker 0's key",
    )
}

/// Starts workers 1 to `n - 1` of the server on `addr` (bound by this process), with
/// this process's own arguments, each handed `cert`.
pub async fn start(n: u32, addr: SocketAddr, cert: &CertKey) -> Result<Workers> {
    let exe = std::env::current_exe().context("cannot find lab's own executable")?;
    let handed = serde_json::to_vec(&Handed {
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
    })?;
    let parent = std::process::id() as libc::pid_t;
    let mut children = Vec::new();
    for i in 1..n as usize {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .arg("--worker")
            .arg(addr.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || crate::netlab::sys::tie_to_parent(libc::SIGTERM, parent));
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start server worker {i} of {n}"))?;
        let pid = child.id().unwrap_or(0);
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&handed).await.with_context(|| {
                format!("cannot hand server worker {i} (pid {pid}) its certificate")
            })?;
        }
        children.push((i, pid, child));
    }
    Ok(Workers {
        children,
        of: n as usize,
    })
}

impl Workers {
    /// Waits until a worker ends, which ends the server: the error names it.
    pub async fn first_end(&mut self) -> anyhow::Error {
        let of = self.of;
        let waits = self.children.iter_mut().map(|(i, pid, c)| {
            Box::pin(async move {
                let how = match c.wait().await {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                anyhow::anyhow!(
                    "server worker {i} of {of} (pid {pid}) ended ({how}); the server stops"
                )
            })
        });
        let (e, _, _) = futures_util::future::select_all(waits).await;
        e
    }

    /// Stops every worker: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        for (_, pid, c) in &self.children {
            if c.id().is_some() {
                // SAFETY: a pid this process started and has not reaped.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
            }
        }
        for (i, pid, c) in &mut self.children {
            if tokio::time::timeout(grace, c.wait()).await.is_err() {
                tracing::warn!(
                    "server worker {i} (pid {pid}) did not stop within {grace:?}; killing it"
                );
                let _ = c.kill().await;
            }
        }
    }
}
