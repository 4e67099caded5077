//! The WebTransport server: HTTP/3 over QUIC, session path `/wt`.
//!
//! Each client bidirectional stream carries one or more prompts as `<len>:<prompt>`. For
//! each prompt, in order, the server streams the upstream's tokens as `<len>:<token>`,
//! then `0:`. It reads every request stream to its end (Chromium sends STOP_SENDING
//! otherwise) and finishes its side once the client has finished its own and every prompt
//! is answered.
//!
//! Errors never take the session down:
//! - bad framing resets that stream with [`ERR_FRAMING`] (and stops its receive side);
//! - an upstream failure resets that stream with [`ERR_UPSTREAM`];
//! - any path other than `/wt` gets 404.

use crate::Limits;
use crate::stats::ServerStats;
use crate::upstream::Upstream;
use bytes::BytesMut;
use lab_codec::lenprefix::{self, Frame};
use lab_codec::transport::Quic;
use std::sync::Arc;
use std::time::Duration;
use wtransport::endpoint::IncomingSession;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::{Endpoint, RecvStream, SendStream, ServerConfig, VarInt};

use lab_codec::wt::{ERR_FRAMING, ERR_UPSTREAM};

/// The session path.
pub const PATH: &str = "/wt";

/// Sets up the WebTransport server on `listener`; errors in its settings come here,
/// before it serves.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let udp = listener.udp("WebTransport")?;
    let up = Arc::new(Upstream::new(&env.upstream, &env.model)?);
    let endpoint = endpoint(udp, env.cert.h3_server_config()?, &env.transport.quic)?;
    Ok(Box::pin(serve(endpoint, up, env.stats, env.limits)))
}

/// Builds the QUIC endpoint on an already-bound UDP socket, with `quic`'s settings.
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
    quic: &Quic,
) -> anyhow::Result<Endpoint<Server>> {
    socket.set_nonblocking(true)?;
    // The socket itself, for what quinn has no setting for (ECN off).
    let same = socket.try_clone()?;
    let mut cfg = ServerConfig::builder()
        .with_bind_socket(socket)
        .with_custom_tls_and_transport(tls, quic.transport_config()?)
        .build();
    quic.endpoint_config(cfg.quic_endpoint_config_mut());
    let endpoint = Endpoint::server(cfg)?;
    quic.after_bind(&same);
    Ok(endpoint)
}

/// Accepts sessions forever.
pub async fn serve(
    endpoint: Endpoint<Server>,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: Limits,
) -> anyhow::Result<()> {
    loop {
        let incoming = endpoint.accept().await;
        tokio::spawn(session(incoming, upstream.clone(), stats.clone(), limits));
    }
}

/// Session error code: closed because nothing happened on it for the idle timeout.
pub const CLOSE_IDLE: u32 = 0x20;

/// Counts a session's open streams and notes when its last one ended.
#[derive(Default)]
struct Activity {
    open: std::sync::atomic::AtomicUsize,
    /// Milliseconds since the session began, when the last stream ended.
    last_ms: std::sync::atomic::AtomicU64,
}

/// Marks a stream open for as long as it lives.
struct Open(Arc<Activity>, tokio::time::Instant);

impl Drop for Open {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0
            .last_ms
            .store(self.1.elapsed().as_millis() as u64, Relaxed);
        self.0.open.fetch_sub(1, Relaxed);
    }
}

async fn session(
    incoming: IncomingSession,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: Limits,
) {
    // The QUIC handshake and the session request, within the header deadline.
    let req = match tokio::time::timeout(limits.header, incoming).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!("incoming session failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("no session request within {:?}", limits.header);
            return;
        }
    };
    let path = req.path().split('?').next().unwrap_or("");
    if path != PATH {
        tracing::debug!("session request for {path}: 404");
        req.not_found().await;
        return;
    }
    let conn = match req.accept().await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("session accept failed: {e}");
            return;
        }
    };
    stats.connection_opened();
    // Keep-alive packets keep a QUIC connection open forever; a session with no stream
    // open for the idle timeout is closed here.
    let began = tokio::time::Instant::now();
    let activity = Arc::new(Activity::default());
    loop {
        use std::sync::atomic::Ordering::Relaxed;
        // With a stream open the session is busy: look again an idle period later.
        let check_at = if activity.open.load(Relaxed) > 0 {
            tokio::time::Instant::now() + limits.idle
        } else {
            began + Duration::from_millis(activity.last_ms.load(Relaxed)) + limits.idle
        };
        let idle_check = tokio::time::sleep_until(check_at);
        tokio::select! {
            r = conn.accept_bi() => match r {
                Ok((send, recv)) => {
                    activity.open.fetch_add(1, Relaxed);
                    let open = Open(activity.clone(), began);
                    tokio::spawn(stream(send, recv, upstream.clone(), stats.clone(), open));
                }
                Err(e) => {
                    tracing::debug!("session ended: {e}");
                    break;
                }
            },
            () = idle_check => {
                let quiet = began + Duration::from_millis(activity.last_ms.load(Relaxed));
                if activity.open.load(Relaxed) == 0 && quiet + limits.idle <= tokio::time::Instant::now() {
                    tracing::debug!("closing a session idle for {:?}", limits.idle);
                    conn.close(VarInt::from_u32(CLOSE_IDLE), b"idle");
                    break;
                }
            }
        }
    }
    stats.connection_closed();
}

async fn stream(
    mut send: SendStream,
    mut recv: RecvStream,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    _open: Open,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<String, lenprefix::LenPrefixError>>(64);
    tokio::spawn(async move {
        let mut dec = lenprefix::Decoder::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => {
                    dec.extend(&buf[..n]);
                    loop {
                        match dec.next_frame() {
                            Ok(Some(Frame::Message(m))) => {
                                let prompt = String::from_utf8_lossy(&m).into_owned();
                                if tx.send(Ok(prompt)).await.is_err() {
                                    return;
                                }
                            }
                            // A `0:` from the client carries no prompt: nothing to answer.
                            Ok(Some(Frame::End)) => {}
                            Ok(None) => break,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                recv.stop(VarInt::from_u32(ERR_FRAMING));
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {
                    if let Err(e) = dec.finish() {
                        let _ = tx.send(Err(e)).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!("request stream read failed: {e}");
                    return;
                }
            }
        }
    });
    let mut out = BytesMut::with_capacity(256);
    while let Some(item) = rx.recv().await {
        let prompt = match item {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("bad framing on stream {}: {e}", send.id());
                stats.error();
                let _ = send.reset(VarInt::from_u32(ERR_FRAMING));
                return;
            }
        };
        stats.request();
        let mut tokens = match upstream.chat(&prompt).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("upstream failed: {e}");
                stats.error();
                let _ = send.reset(VarInt::from_u32(ERR_UPSTREAM));
                return;
            }
        };
        loop {
            match tokens.next().await {
                Ok(Some(tok)) => {
                    out.clear();
                    let mut n = 1;
                    let mut bad = lenprefix::encode(tok.as_bytes(), &mut out).is_err();
                    // Tokens that arrived together leave in one write.
                    while !bad {
                        match tokens.ready_token() {
                            Ok(Some(t)) => {
                                bad = lenprefix::encode(t.as_bytes(), &mut out).is_err();
                                n += 1;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!("upstream failed mid-stream: {e}");
                                bad = true;
                            }
                        }
                    }
                    if bad {
                        stats.error();
                        let _ = send.reset(VarInt::from_u32(ERR_UPSTREAM));
                        return;
                    }
                    if send.write_all(&out).await.is_err() {
                        return;
                    }
                    stats.tokens(n);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("upstream failed mid-stream: {e}");
                    stats.error();
                    let _ = send.reset(VarInt::from_u32(ERR_UPSTREAM));
                    return;
                }
            }
        }
        if send.write_all(lenprefix::END).await.is_err() {
            return;
        }
    }
    let _ = send.finish().await;
}
