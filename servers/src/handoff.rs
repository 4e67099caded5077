//! The hand-off approach: a front process accepts each client's TCP connection and reads
//! its request, then passes the socket itself (SCM_RIGHTS) and a small JSON hand-off
//! record over a Unix socket to a streaming daemon, a process of its own, which writes
//! the SSE answer straight onto the socket and closes it. This is the streaming-daemon
//! design of `streaming-daemon-benchmarks.md`, where Apache is the front.
//!
//! - Plain HTTP/1.1, no TLS: the socket changes hands between processes, and a TLS
//!   session would have to go with it.
//! - `POST /chat` with `{"message": "..."}` and a `Content-Length`, as the SSE server
//!   takes. The front answers bad requests itself: 400 for bad JSON or an empty message,
//!   404 for another path, 405 for another method, 411 without a length, 413 over
//!   [`MAX_BODY`], 408 for a request not in within the header deadline, and 503 when the
//!   daemon is gone.
//! - The daemon's answer: at once, before it asks the upstream, the head: `200`,
//!   `Content-Type: text/event-stream`, `Connection: close`, and `Lab-Handoff-Us`, the
//!   microseconds from the front's hand-off to the daemon's receipt (both read
//!   CLOCK_MONOTONIC). Then one `data:` event per token and `data: [DONE]`; the body ends
//!   when the daemon closes the socket. Every prompt takes a connection of its own. An
//!   upstream that fails, before its first token or after, gets an `event: error` event
//!   with the reason, then `data: [DONE]`.
//! - The Unix socket is SOCK_SEQPACKET: one message is one hand-off, record and socket
//!   together. The daemon exits when the front's end closes (the front exited or was
//!   killed); the front's serving future fails when the daemon exits.

use crate::Limits;
use crate::stats::ServerStats;
use crate::upstream::Upstream;
use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use lab_codec::sse;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The path the front serves.
pub const PATH: &str = "/chat";

/// Largest request body: the hand-off record carries the prompt, and one record is one
/// message on the Unix socket.
pub const MAX_BODY: usize = 32 * 1024;

/// Largest request head.
const MAX_HEAD: usize = 16 * 1024;

/// Largest hand-off record on the Unix socket.
const MAX_RECORD: usize = MAX_BODY + 4096;

/// The response header that carries the hand-off latency.
pub const HANDOFF_HEADER: &str = "lab-handoff-us";

/// The daemon's command line: `<program> helper handoff --config <json>`, with the Unix
/// socket as file descriptor [`DAEMON_FD`]; `lab helper handoff` runs [`helper`].
pub const DAEMON_COMMAND: [&str; 2] = ["helper", "handoff"];

/// The file descriptor the daemon finds its end of the Unix socket on.
pub const DAEMON_FD: RawFd = 3;

/// What the daemon is started with (as JSON on its command line).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DaemonConfig {
    pub upstream: String,
    pub model: String,
    pub upstream_h2: bool,
    /// Sampling settings every upstream request carries.
    #[serde(default)]
    pub sampling: lab_codec::openai::Sampling,
    /// A socket on which a write makes no progress for this long is given up.
    pub idle_ms: u64,
}

/// One hand-off: what the front read, and when it passed the socket on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The front's count of hand-offs, from 0.
    pub id: u64,
    /// The prompt, and the answer's length if the request set one.
    #[serde(flatten)]
    pub ask: crate::http::ChatAsk,
    /// CLOCK_MONOTONIC, in nanoseconds, just before the front's `sendmsg`.
    pub handed_ns: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Sets up the front on `listener` and starts the streaming daemon; the front's future
/// serves until dropped (which kills the daemon), and fails if the daemon exits.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> Result<crate::Serving> {
    let tcp = listener.tcp("handoff")?;
    let program = env.program.clone().context(
        "the handoff server starts its streaming daemon as `lab helper handoff`, but was not told where the lab program is",
    )?;
    // Checked here, so a bad upstream URL is an error of the front's settings.
    Upstream::new(&env.upstream, &env.model, env.upstream_h2)?;
    let (front, daemon) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .context("socketpair(AF_UNIX, SOCK_SEQPACKET) for the hand-off")?;
    let cfg = DaemonConfig {
        upstream: env.upstream.clone(),
        model: env.model.clone(),
        upstream_h2: env.upstream_h2,
        sampling: env.sampling,
        idle_ms: env.limits.idle.as_millis() as u64,
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(DAEMON_COMMAND)
        .arg("--config")
        .arg(serde_json::to_string(&cfg)?)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let daemon_fd = daemon.as_raw_fd();
    // SAFETY: between fork and exec only dup2 or fcntl, which are async-signal-safe; the
    // new descriptor has no close-on-exec flag, so the daemon keeps it.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec; then the flag is cleared by hand.
            let r = if daemon_fd == DAEMON_FD {
                nix::libc::fcntl(DAEMON_FD, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(daemon_fd, DAEMON_FD)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start the streaming daemon {}", program.display()))?;
    drop(daemon);
    let nodelay = env.transport.tcp.nodelay;
    Ok(Box::pin(serve_front(
        tcp,
        async_fd(front)?,
        child,
        env.stats,
        env.limits,
        nodelay,
    )))
}

/// `fd` registered with tokio's reactor.
fn async_fd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and stays the same descriptor until the AsyncFd drops it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// The front: accepts, reads each request, hands the socket off.
async fn serve_front(
    listener: TcpListener,
    unix: AsyncFd<OwnedFd>,
    mut daemon: tokio::process::Child,
    stats: Arc<ServerStats>,
    limits: Limits,
    nodelay: bool,
) -> Result<()> {
    let unix = Arc::new(unix);
    let mut next = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            st = daemon.wait() => {
                bail!("the streaming daemon exited ({}); the handoff server cannot answer without it", match st {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                });
            }
            a = crate::http::accept(&listener, "accept") => a,
        };
        let _ = tcp.set_nodelay(nodelay);
        let (unix, stats, id) = (unix.clone(), stats.clone(), next);
        next += 1;
        tokio::spawn(async move {
            stats.connection_opened();
            if let Err(e) = front_conn(tcp, &unix, &stats, limits, id).await {
                tracing::debug!("request from {peer}: {e:#}");
            }
            stats.connection_closed();
        });
    }
}

/// A refusal the front writes itself.
struct Refusal {
    status: u16,
    reason: &'static str,
    message: String,
}

fn refuse(status: u16, reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason,
        message: message.into(),
    }
}

/// A complete response with a JSON error body in the OpenAI shape; the connection closes
/// after it.
fn error_response(status: u16, reason: &str, message: &str) -> Vec<u8> {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body = lab_codec::openai::ErrorBody::new(kind, message).to_json();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

async fn front_conn(
    mut tcp: TcpStream,
    unix: &AsyncFd<OwnedFd>,
    stats: &ServerStats,
    limits: Limits,
    id: u64,
) -> Result<()> {
    let read = tokio::time::timeout(limits.header, read_request(&mut tcp)).await;
    let ask = match read {
        Ok(Ok(Ok(a))) => a,
        Ok(Ok(Err(r))) => {
            stats.error();
            answer_and_close(&mut tcp, r.status, r.reason, &r.message).await;
            bail!("refused with {}: {}", r.status, r.message);
        }
        Ok(Err(e)) => return Err(e).context("reading the request"),
        Err(_) => {
            stats.error();
            let msg = format!("no whole request within {:?}", limits.header);
            answer_and_close(&mut tcp, 408, "Request Timeout", &msg).await;
            bail!("{msg}");
        }
    };
    stats.request();
    let rec = Record {
        id,
        ask,
        handed_ns: 0,
    };
    match hand_off(unix, rec, &tcp).await {
        // The daemon holds the socket now; the front's copy closes here.
        Ok(()) => Ok(()),
        Err(e) => {
            stats.error();
            let msg = format!("the streaming daemon did not take the request: {e}");
            answer_and_close(&mut tcp, 503, "Service Unavailable", &msg).await;
            bail!("{msg}");
        }
    }
}

/// Writes a refusal, then closes as HTTP servers do (a lingering close): the write side
/// first, then what the client still sends is read and dropped for up to a second (or
/// 1 MiB), so that closing with unread bytes (a refused body) does not reset the
/// connection and take the refusal with it.
async fn answer_and_close(tcp: &mut TcpStream, status: u16, reason: &str, message: &str) {
    if tcp
        .write_all(&error_response(status, reason, message))
        .await
        .is_err()
    {
        return;
    }
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut chunk = [0u8; 4096];
        let mut left = 1usize << 20;
        while left > 0 {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Reads one request: its head, then its body by `Content-Length`; the prompt, or what
/// to refuse it with.
async fn read_request(
    tcp: &mut TcpStream,
) -> std::io::Result<Result<crate::http::ChatAsk, Refusal>> {
    let mut buf = Vec::with_capacity(1024);
    let (head_len, length) = loop {
        read_more(tcp, &mut buf, "its request").await?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                if let Some(r) = check_head(&req) {
                    return Ok(Err(r));
                }
                match content_length(req.headers) {
                    Ok(l) => break (len, l),
                    Err(r) => return Ok(Err(r)),
                }
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Ok(Err(refuse(
                    431,
                    "Request Header Fields Too Large",
                    format!("the request head is over {MAX_HEAD} bytes"),
                )));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                return Ok(Err(refuse(
                    400,
                    "Bad Request",
                    format!("not an HTTP/1.1 request: {e}"),
                )));
            }
        }
    };
    while buf.len() < head_len + length {
        read_more(tcp, &mut buf, "its request body").await?;
    }
    Ok(prompt_of(&buf[head_len..head_len + length]))
}

/// Reads what has come onto the end of `buf`; the client closing before `what` was
/// whole is an error.
async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>, what: &str) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = tcp.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the client closed before {what} was whole"),
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn check_head(req: &httparse::Request) -> Option<Refusal> {
    let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
    if path != PATH {
        return Some(refuse(
            404,
            "Not Found",
            format!("unknown path {path}; the handoff server serves POST {PATH}"),
        ));
    }
    if req.method != Some("POST") {
        return Some(refuse(
            405,
            "Method Not Allowed",
            format!("{PATH} takes POST with a JSON body {{\"message\": \"...\"}}"),
        ));
    }
    None
}

fn content_length(headers: &[httparse::Header]) -> Result<usize, Refusal> {
    let value = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).unwrap_or("").trim());
    let Some(v) = value else {
        return Err(refuse(
            411,
            "Length Required",
            "the handoff server needs a Content-Length (no chunked bodies)",
        ));
    };
    let n: usize = v.parse().map_err(|_| {
        refuse(
            400,
            "Bad Request",
            format!("Content-Length {v:?} is not a number"),
        )
    })?;
    if n > MAX_BODY {
        return Err(refuse(
            413,
            "Payload Too Large",
            format!("request body is over the limit of {MAX_BODY} bytes"),
        ));
    }
    Ok(n)
}

fn prompt_of(body: &[u8]) -> Result<crate::http::ChatAsk, Refusal> {
    crate::http::ChatAsk::parse(body).map_err(|e| refuse(400, "Bad Request", e))
}

/// Sends `rec` and the socket to the daemon, stamping the time just before.
async fn hand_off(unix: &AsyncFd<OwnedFd>, mut rec: Record, tcp: &TcpStream) -> Result<()> {
    let fds = [tcp.as_raw_fd()];
    loop {
        let mut guard = unix.writable().await?;
        rec.handed_ns = monotonic_ns();
        let bytes = serde_json::to_vec(&rec)?;
        let sent = guard.try_io(|fd| {
            sendmsg::<()>(
                fd.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(r) => {
                r?;
                return Ok(());
            }
            Err(_would_block) => continue,
        }
    }
}

/// The streaming daemon, on its end of the Unix socket: takes each hand-off and streams
/// its answer; returns when the front's end closes.
/// `lab helper handoff --config <json>`: the streaming daemon, on the Unix socket its
/// front left on file descriptor [`DAEMON_FD`]. Anything but the front's JSON settings
/// and a socket on that descriptor is refused: a user does not start the daemon.
pub fn helper(config: String) -> crate::Serving {
    Box::pin(async move {
        let cfg: DaemonConfig = serde_json::from_str(&config).context(
            "--config is not the daemon's settings; `lab serve handoff` starts the daemon, not a user",
        )?;
        // Only a socket on fd 3 is taken: anything else there is not the front's.
        // SAFETY: only borrowed for fstat, which fails cleanly on a closed descriptor.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(DAEMON_FD) };
        let is_socket = nix::sys::stat::fstat(fd)
            .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFSOCK);
        anyhow::ensure!(
            is_socket,
            "file descriptor {DAEMON_FD} is not the front's Unix socket; `lab serve handoff` starts the daemon, not a user"
        );
        // SAFETY: fd 3 is a socket this process was given at exec and nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(DAEMON_FD) };
        tracing::info!("handoff daemon: upstream {}", cfg.upstream);
        daemon(fd, cfg).await
    })
}

/// The streaming daemon on its end of the front's Unix socket.
pub async fn daemon(unix: OwnedFd, cfg: DaemonConfig) -> Result<()> {
    nix::fcntl::fcntl(
        &unix,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .context("the hand-off socket")?;
    let unix = async_fd(unix).context("the hand-off socket")?;
    let upstream = Arc::new(
        Upstream::new(&cfg.upstream, &cfg.model, cfg.upstream_h2)?.with_sampling(cfg.sampling),
    );
    let idle = Duration::from_millis(cfg.idle_ms);
    loop {
        let got = {
            let mut guard = unix.readable().await?;
            match guard.try_io(|fd| receive(fd.as_raw_fd()).map_err(std::io::Error::from)) {
                Ok(Ok(r)) => r,
                Ok(Err(e)) if out_of_room(&e) => {
                    // At its open-file limit the kernel cannot give this process the
                    // socket (ENOBUFS, EMFILE): that hand-off is lost, its client gets
                    // no answer, and the daemon goes on once streams end and free
                    // descriptors. Exiting here would take every stream down with it.
                    tracing::warn!("a hand-off could not be received: {e}");
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        };
        let at = monotonic_ns();
        let Some((bytes, fd)) = got else {
            tracing::info!("the front closed the hand-off socket; the daemon exits");
            return Ok(());
        };
        let Some(fd) = fd else {
            tracing::warn!("a hand-off came without a socket; skipped");
            continue;
        };
        let rec: Record = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("a hand-off record that is not JSON ({e}); its socket closed");
                continue;
            }
        };
        let handoff_us = at.saturating_sub(rec.handed_ns) / 1000;
        let std = std::net::TcpStream::from(fd);
        let tcp = match std
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(std))
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("hand-off {}: the socket is unusable: {e}", rec.id);
                continue;
            }
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = stream(tcp, &rec.ask, &upstream, handoff_us, idle).await {
                tracing::debug!("hand-off {}: {e:#}", rec.id);
            }
        });
    }
}

/// Whether a failed receive is this process running out of room (descriptors, buffers,
/// memory) rather than the hand-off socket failing.
fn out_of_room(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOBUFS | nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOMEM)
    )
}

/// One message from the Unix socket: its bytes and the socket that came with it; `None`
/// at the end (the front's end closed).
fn receive(fd: RawFd) -> nix::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_RECORD];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut socket = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for (i, f) in fds.into_iter().enumerate() {
                // SAFETY: the kernel just gave this process the descriptor.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                if i == 0 {
                    socket = Some(owned);
                }
            }
        }
    }
    let n = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    if n == 0 && socket.is_none() {
        return Ok(None);
    }
    if truncated {
        tracing::warn!("a hand-off record over {MAX_RECORD} bytes was cut short");
    }
    Ok(Some((buf[..n].to_vec(), socket)))
}

/// Writes `bytes`, giving up when the socket takes nothing for `idle`.
async fn send(tcp: &mut TcpStream, bytes: &[u8], idle: Duration) -> Result<()> {
    match tokio::time::timeout(idle, tcp.write_all(bytes)).await {
        Ok(r) => r.context("the client went away"),
        Err(_) => bail!("the client took nothing for {idle:?}"),
    }
}

/// The daemon's answer to one hand-off.
async fn stream(
    mut tcp: TcpStream,
    ask: &crate::http::ChatAsk,
    upstream: &Upstream,
    handoff_us: u64,
    idle: Duration,
) -> Result<()> {
    // The head goes out at once, before the upstream is asked: the time to the first
    // byte is the front's and the daemon's, the time to the first token the upstream's.
    send(
        &mut tcp,
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n{HANDOFF_HEADER}: {handoff_us}\r\n\r\n"
        )
        .as_bytes(),
        idle,
    )
    .await?;
    let mut buf = BytesMut::with_capacity(512);
    let mut tokens = match upstream.chat(&ask.message, ask.options()).await {
        Ok(t) => t,
        Err(e) => {
            sse::encode_event(Some("error"), &e.to_string(), &mut buf);
            sse::encode_data(sse::DONE, &mut buf);
            send(&mut tcp, &buf.split(), idle).await?;
            let _ = tcp.shutdown().await;
            return Ok(());
        }
    };
    let mut batch = Vec::new();
    loop {
        // Tokens that arrived together leave together.
        let r = tokens.next_batch(&mut batch).await;
        for t in &batch {
            sse::encode_data(t, &mut buf);
        }
        match r {
            Ok(true) => send(&mut tcp, &buf.split(), idle).await?,
            Ok(false) => {
                if let Some(n) = tokens.usage().filter(|_| ask.usage) {
                    let n = n.to_string();
                    sse::encode_event(Some(crate::sse::USAGE_EVENT), &n, &mut buf);
                }
                break;
            }
            Err(e) => {
                sse::encode_event(Some("error"), &e.to_string(), &mut buf);
                break;
            }
        }
    }
    sse::encode_data(sse::DONE, &mut buf);
    send(&mut tcp, &buf.split(), idle).await?;
    let _ = tcp.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_by_length_and_refused_by_name() {
        assert_eq!(
            prompt_of(br#"{"message":"hi"}"#).ok().map(|a| a.message),
            Some("hi".into())
        );
        let r = prompt_of(br#"{"message":"  "}"#).err().unwrap();
        assert_eq!(r.status, 400);
        assert!(r.message.contains("missing or empty"), "{}", r.message);
        let r = prompt_of(b"{").err().unwrap();
        assert!(r.message.contains("invalid JSON"), "{}", r.message);
        let h = |name: &'static str, value: &'static [u8]| httparse::Header { name, value };
        assert_eq!(content_length(&[h("Content-Length", b"12")]).ok(), Some(12));
        assert_eq!(content_length(&[]).err().unwrap().status, 411);
        assert_eq!(
            content_length(&[h("content-length", b"99999999")])
                .err()
                .unwrap()
                .status,
            413
        );
        assert_eq!(
            content_length(&[h("content-length", b"x")])
                .err()
                .unwrap()
                .status,
            400
        );
        let resp = String::from_utf8(error_response(413, "Payload Too Large", "too big")).unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{resp}"
        );
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            resp.contains(&format!("content-length: {}\r\n", body.len())),
            "{resp}"
        );
        assert!(body.contains("too big"), "{body}");
    }

    #[test]
    fn a_record_and_a_socket_cross_a_seqpacket_pair_together() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let rec = Record {
            id: 7,
            ask: crate::http::ChatAsk {
                message: "hello".into(),
                max_tokens: Some(12),
                usage: true,
            },
            handed_ns: monotonic_ns(),
        };
        let bytes = serde_json::to_vec(&rec).unwrap();
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&[w.as_raw_fd()])],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(w);
        let (got, fd) = receive(b.as_raw_fd()).unwrap().unwrap();
        let back: Record = serde_json::from_slice(&got).unwrap();
        assert_eq!((back.id, back.ask.message.as_str()), (7, "hello"));
        assert_eq!(back.ask.max_tokens, Some(12));
        // The descriptor that came over is the pipe's write end: what goes in comes out.
        let fd = fd.expect("a descriptor came with the record");
        nix::unistd::write(&fd, b"x").unwrap();
        drop(fd);
        let mut one = [0u8; 2];
        assert_eq!(nix::unistd::read(&r, &mut one).unwrap(), 1);
        assert_eq!(one[0], b'x');
        // The front's end closing is the daemon's end of input.
        drop(a);
        assert!(receive(b.as_raw_fd()).unwrap().is_none());
    }
}
