//! One request stream of the QUIC servers (WebTransport's and raw QUIC's), whatever
//! library carries it: the client writes prompts as `<len>:<prompt>`; for each, in
//! order, the server writes the upstream's tokens as `<len>:<token>`, then `0:`, and it
//! finishes its side once the client has finished its own and every prompt is answered.
//!
//! Bad framing resets the stream with [`ERR_FRAMING`] and stops its receive side; an
//! upstream failure resets it with [`ERR_UPSTREAM`]. Neither touches the connection.

use crate::stats::ServerStats;
use crate::upstream::ChatOptions;
use crate::upstream::Upstream;
use bytes::BytesMut;
use lab_codec::dgram::{self, ERR_DATAGRAM, Tally};
use lab_codec::lenprefix::{self, Frame};
use lab_codec::wt::{ERR_FRAMING, ERR_UPSTREAM, URGENT, USAGE, parse_answer_len, usage_message};
use std::future::Future;
use std::sync::Arc;

/// The sending half of a QUIC stream.
pub trait Send: std::marker::Send + 'static {
    /// Writes all of `b`; an error means the stream or connection is gone.
    fn write_all(&mut self, b: &[u8]) -> impl Future<Output = Result<(), ()>> + std::marker::Send;
    /// Abandons the stream with an application error code.
    fn reset(&mut self, code: u32);
    /// Ends the stream once what was written is delivered.
    fn finish(&mut self) -> impl Future<Output = ()> + std::marker::Send;
    /// The stream's ID, for logs.
    fn id(&self) -> u64;
    /// Its send priority among the connection's streams (higher goes first; 0 default).
    fn set_priority(&mut self, priority: i32);
}

/// The receiving half of a QUIC stream.
pub trait Recv: std::marker::Send + 'static {
    /// Reads into `buf`: `Some(n)`, or `None` at the end of the stream.
    fn read(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<Option<usize>, String>> + std::marker::Send;
    /// Asks the peer to stop sending, with an application error code.
    fn stop(self, code: u32);
}

/// A QUIC connection (or WebTransport session) whose client opens request streams.
pub trait Conn: std::marker::Send + Sync + 'static {
    type Send: Send;
    type Recv: Recv;
    /// The next bidirectional stream the client opened; an error when the connection
    /// has ended.
    fn accept_bi(
        &self,
    ) -> impl Future<Output = Result<(Self::Send, Self::Recv), String>> + std::marker::Send;
    /// Closes the connection with an application error code.
    fn close(&self, code: u32, reason: &[u8]);
}

/// Connection error code: closed because nothing happened on it for the idle timeout.
pub const CLOSE_IDLE: u32 = 0x20;

/// Counts a connection's open streams and notes when its last one ended.
#[derive(Default)]
struct Activity {
    open: std::sync::atomic::AtomicUsize,
    /// Milliseconds since the connection began, when the last stream ended.
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

/// Answers every stream the client opens on `conn`, each on a task of its own, until
/// the connection ends. Keep-alive packets keep a QUIC connection open forever, so a
/// connection with no stream open for `limits.idle` is closed here ([`CLOSE_IDLE`]).
pub async fn serve<C: Conn>(
    conn: C,
    tokens: Tokens,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: crate::Limits,
) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    let began = tokio::time::Instant::now();
    let activity = Arc::new(Activity::default());
    loop {
        // With a stream open the connection is busy: look again an idle period later.
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
                    let (up, st, how) = (upstream.clone(), stats.clone(), tokens.clone());
                    tokio::spawn(async move {
                        let _open = open;
                        answer(send, recv, how, up, st).await;
                    });
                }
                Err(e) => {
                    tracing::debug!("connection ended: {e}");
                    break;
                }
            },
            () = idle_check => {
                let quiet = began + Duration::from_millis(activity.last_ms.load(Relaxed));
                if activity.open.load(Relaxed) == 0 && quiet + limits.idle <= tokio::time::Instant::now() {
                    tracing::debug!("closing a connection idle for {:?}", limits.idle);
                    conn.close(CLOSE_IDLE, b"idle");
                    break;
                }
            }
        }
    }
}

/// What the client asked on its stream: a prompt to answer, or [`URGENT`] (answer this
/// stream first).
enum Ask {
    Prompt(String),
    Urgent,
    /// The next prompt's answer is to have this many tokens.
    AnswerLen(u32),
    /// The next prompt's answer ends with the upstream's count of its tokens.
    Usage,
}

/// Serves one accepted WebTransport session, whatever library set it up: counted open
/// while its streams are answered, with the tokens on each stream or, for the datagram
/// path, in datagrams of the session.
pub async fn serve_session<C: Conn + Datagrams + Clone + 'static>(
    session: C,
    datagrams: bool,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: crate::Limits,
) {
    stats.connection_opened();
    let tokens = if datagrams {
        Tokens::Datagrams(Arc::new(session.clone()))
    } else {
        Tokens::Stream
    };
    serve(session, tokens, upstream, stats.clone(), limits).await;
    stats.connection_closed();
}

/// Answers the prompts of one stream until the client finishes it.
pub async fn answer(
    mut send: impl Send,
    recv: impl Recv,
    tokens_out: Tokens,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
) {
    let mut rx = read_asks(recv);
    let mut out = BytesMut::with_capacity(256);
    // Datagram sequence numbers count the stream's tokens, across its answers.
    let mut seq = 0u64;
    let mut ask = ChatOptions::default();
    while let Some(item) = rx.recv().await {
        let prompt = match item {
            Ok(Ask::Prompt(p)) => p,
            Ok(Ask::Urgent) => {
                send.set_priority(1);
                continue;
            }
            Ok(Ask::AnswerLen(n)) => {
                ask.answer_len = Some(n);
                continue;
            }
            Ok(Ask::Usage) => {
                ask.usage = true;
                continue;
            }
            Err(e) => {
                tracing::debug!("bad framing on stream {}: {e}", send.id());
                stats.error();
                send.reset(ERR_FRAMING);
                return;
            }
        };
        stats.request();
        let asked = std::mem::take(&mut ask);
        let mut tokens = match upstream.chat(&prompt, asked).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("upstream failed: {e}");
                stats.error();
                send.reset(ERR_UPSTREAM);
                return;
            }
        };
        let Some(tally) = relay(
            &mut send,
            &mut tokens,
            &tokens_out,
            &stats,
            &mut out,
            &mut seq,
        )
        .await
        else {
            return;
        };
        // Datagrams end with their tally on the stream; then the token count if asked
        // (and given); either way, then `0:`.
        out.clear();
        if let Tokens::Datagrams(_) = tokens_out {
            let _ = lenprefix::encode(tally.message().as_bytes(), &mut out);
        }
        if let Some(n) = tokens.usage().filter(|_| asked.usage) {
            let _ = lenprefix::encode(&usage_message(n), &mut out);
        }
        out.extend_from_slice(lenprefix::END);
        if send.write_all(&out).await.is_err() {
            return;
        }
    }
    send.finish().await;
}

/// Reads the client's frames off its stream on a task of their own, so that an urgent
/// mark arrives while an answer is being written; a framing error is passed on, and
/// stops the stream.
fn read_asks(mut recv: impl Recv) -> tokio::sync::mpsc::Receiver<Result<Ask, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Ask, String>>(64);
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
                                let ask = if m[..] == *URGENT {
                                    Ask::Urgent
                                } else if m[..] == *USAGE {
                                    Ask::Usage
                                } else if let Some(n) = parse_answer_len(&m) {
                                    match n {
                                        Ok(n) => Ask::AnswerLen(n),
                                        Err(e) => {
                                            let _ = tx.send(Err(e)).await;
                                            recv.stop(ERR_FRAMING);
                                            return;
                                        }
                                    }
                                } else {
                                    Ask::Prompt(String::from_utf8_lossy(&m).into_owned())
                                };
                                if tx.send(Ok(ask)).await.is_err() {
                                    return;
                                }
                            }
                            // A `0:` from the client carries no prompt: nothing to answer.
                            Ok(Some(Frame::End)) => {}
                            Ok(None) => break,
                            Err(e) => {
                                let _ = tx.send(Err(e.to_string())).await;
                                recv.stop(ERR_FRAMING);
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {
                    if let Err(e) = dec.finish() {
                        let _ = tx.send(Err(e.to_string())).await;
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
    rx
}

/// Writes one answer's tokens as they come, those that arrived together in one write.
/// The tally of what was sent, or None when the stream ended (reset on an upstream
/// failure).
async fn relay(
    send: &mut impl Send,
    tokens: &mut crate::upstream::TokenStream,
    tokens_out: &Tokens,
    stats: &ServerStats,
    out: &mut BytesMut,
    seq: &mut u64,
) -> Option<Tally> {
    let mut tally = Tally::default();
    let mut batch: Vec<String> = Vec::new();
    loop {
        match tokens.next_batch(&mut batch).await {
            Ok(true) => {}
            Ok(false) => return Some(tally),
            Err(e) => {
                // The tokens before the failure are not sent: the stream is reset.
                tracing::warn!("upstream failed mid-stream: {e}");
                stats.error();
                send.reset(ERR_UPSTREAM);
                return None;
            }
        }
        match emit(send, tokens_out, &batch, out, (seq, &mut tally)).await {
            Ok(()) => stats.tokens(batch.len() as u64),
            Err(Some(code)) => {
                stats.error();
                send.reset(code);
                return None;
            }
            Err(None) => return None,
        }
    }
}

/// Sends one batch of tokens: on the stream in one write, or a datagram each. An error
/// carries the code to reset the stream with, or `None` when the stream is gone.
async fn emit(
    send: &mut impl Send,
    how: &Tokens,
    batch: &[String],
    out: &mut BytesMut,
    (seq, tally): (&mut u64, &mut Tally),
) -> Result<(), Option<u32>> {
    out.clear();
    match how {
        Tokens::Stream => {
            for t in batch {
                lenprefix::encode(t.as_bytes(), out).map_err(|_| Some(ERR_UPSTREAM))?;
            }
            send.write_all(out).await.map_err(|()| None)
        }
        Tokens::Datagrams(d) => {
            for t in batch {
                out.clear();
                let token = dgram::Token {
                    stream: send.id(),
                    seq: *seq,
                    token: t,
                };
                dgram::encode(&token, out).map_err(|_| Some(ERR_DATAGRAM))?;
                if let Err(e) = d.send_datagram(out.split().freeze()) {
                    tracing::debug!("datagram on stream {} not sent: {e}", send.id());
                    return Err(Some(ERR_DATAGRAM));
                }
                *seq += 1;
                tally.tokens += 1;
                tally.bytes += t.len() as u64;
            }
            Ok(())
        }
    }
}

/// Where an answer's tokens go.
#[derive(Clone)]
pub enum Tokens {
    /// On the request stream, length-prefixed.
    Stream,
    /// In datagrams of the connection ([`lab_codec::dgram`]), never sent again; the
    /// tally and the end marker go on the stream.
    Datagrams(Arc<dyn Datagrams>),
}

/// A connection that sends datagrams.
pub trait Datagrams: std::marker::Send + Sync + 'static {
    /// Queues one datagram; an error says why it cannot go (too large, not supported).
    fn send_datagram(&self, payload: bytes::Bytes) -> Result<(), String>;
}

impl Datagrams for wtransport::Connection {
    fn send_datagram(&self, payload: bytes::Bytes) -> Result<(), String> {
        wtransport::Connection::send_datagram(self, payload).map_err(|e| e.to_string())
    }
}

/// A WebTransport application error code as wtransport must be handed it.
fn http3_code(code: u32) -> wtransport::VarInt {
    wtransport::VarInt::try_from_u64(lab_codec::wt::to_http3(code))
        .unwrap_or(wtransport::VarInt::MAX)
}

impl Send for wtransport::SendStream {
    async fn write_all(&mut self, b: &[u8]) -> Result<(), ()> {
        wtransport::SendStream::write_all(self, b)
            .await
            .map_err(|_| ())
    }
    fn reset(&mut self, code: u32) {
        // wtransport 0.7 puts the code on the wire as given; a WebTransport stream's
        // codes belong in the HTTP/3 range (lab_codec::wt::to_http3), as browsers and
        // web-transport-quinn read them.
        let _ = wtransport::SendStream::reset(self, http3_code(code));
    }
    async fn finish(&mut self) {
        let _ = wtransport::SendStream::finish(self).await;
    }
    fn id(&self) -> u64 {
        wtransport::VarInt::from(wtransport::SendStream::id(self)).into_inner()
    }
    fn set_priority(&mut self, priority: i32) {
        wtransport::SendStream::set_priority(self, priority);
    }
}

impl Recv for wtransport::RecvStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, String> {
        wtransport::RecvStream::read(self, buf)
            .await
            .map_err(|e| e.to_string())
    }
    fn stop(self, code: u32) {
        wtransport::RecvStream::stop(self, http3_code(code));
    }
}

use wtransport::quinn;

impl Send for quinn::SendStream {
    async fn write_all(&mut self, b: &[u8]) -> Result<(), ()> {
        quinn::SendStream::write_all(self, b).await.map_err(|_| ())
    }
    fn reset(&mut self, code: u32) {
        let _ = quinn::SendStream::reset(self, quinn::VarInt::from_u32(code));
    }
    async fn finish(&mut self) {
        // quinn delivers what was written in the background; wait until the peer has
        // it all, or the stream is gone.
        if quinn::SendStream::finish(self).is_ok() {
            let _ = quinn::SendStream::stopped(self).await;
        }
    }
    fn id(&self) -> u64 {
        quinn::VarInt::from(quinn::SendStream::id(self)).into_inner()
    }
    fn set_priority(&mut self, priority: i32) {
        let _ = quinn::SendStream::set_priority(self, priority);
    }
}

impl Recv for quinn::RecvStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, String> {
        quinn::RecvStream::read(self, buf)
            .await
            .map_err(|e| e.to_string())
    }
    fn stop(mut self, code: u32) {
        let _ = quinn::RecvStream::stop(&mut self, quinn::VarInt::from_u32(code));
    }
}

impl Conn for wtransport::Connection {
    type Send = wtransport::SendStream;
    type Recv = wtransport::RecvStream;
    async fn accept_bi(&self) -> Result<(Self::Send, Self::Recv), String> {
        wtransport::Connection::accept_bi(self)
            .await
            .map_err(|e| e.to_string())
    }
    fn close(&self, code: u32, reason: &[u8]) {
        wtransport::Connection::close(self, wtransport::VarInt::from_u32(code), reason);
    }
}

impl Conn for quinn::Connection {
    type Send = quinn::SendStream;
    type Recv = quinn::RecvStream;
    async fn accept_bi(&self) -> Result<(Self::Send, Self::Recv), String> {
        quinn::Connection::accept_bi(self)
            .await
            .map_err(|e| e.to_string())
    }
    fn close(&self, code: u32, reason: &[u8]) {
        quinn::Connection::close(self, quinn::VarInt::from_u32(code), reason);
    }
}

impl Datagrams for web_transport_quinn::Session {
    fn send_datagram(&self, payload: bytes::Bytes) -> Result<(), String> {
        web_transport_quinn::Session::send_datagram(self, payload).map_err(|e| e.to_string())
    }
}

impl Send for web_transport_quinn::SendStream {
    async fn write_all(&mut self, b: &[u8]) -> Result<(), ()> {
        web_transport_quinn::SendStream::write_all(self, b)
            .await
            .map_err(|_| ())
    }
    fn reset(&mut self, code: u32) {
        let _ = web_transport_quinn::SendStream::reset(self, code);
    }
    async fn finish(&mut self) {
        // As quinn's: wait until the peer has it all, or the stream is gone.
        if web_transport_quinn::SendStream::finish(self).is_ok() {
            let _ = web_transport_quinn::SendStream::stopped(self).await;
        }
    }
    fn id(&self) -> u64 {
        quinn::VarInt::from(web_transport_quinn::SendStream::quic_id(self)).into_inner()
    }
    fn set_priority(&mut self, priority: i32) {
        let _ = web_transport_quinn::SendStream::set_priority(self, priority);
    }
}

impl Recv for web_transport_quinn::RecvStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, String> {
        web_transport_quinn::RecvStream::read(self, buf)
            .await
            .map_err(|e| e.to_string())
    }
    fn stop(mut self, code: u32) {
        let _ = web_transport_quinn::RecvStream::stop(&mut self, code);
    }
}

impl Conn for web_transport_quinn::Session {
    type Send = web_transport_quinn::SendStream;
    type Recv = web_transport_quinn::RecvStream;
    async fn accept_bi(&self) -> Result<(Self::Send, Self::Recv), String> {
        web_transport_quinn::Session::accept_bi(self)
            .await
            .map_err(|e| e.to_string())
    }
    fn close(&self, code: u32, reason: &[u8]) {
        web_transport_quinn::Session::close(self, code, reason);
    }
}
