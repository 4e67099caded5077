//! HTTP over TLS with explicit connection control, shared by the raw-API and SSE runners:
//! HTTP/1.1, or HTTP/2 with prompts in flight at once multiplexed as streams of one
//! connection.
//!
//! Connections are made by hand (TCP, then TLS, then an HTTP handshake) rather than by a
//! pooling client, so set-up is timed exactly and `reuse` provably reuses: the response
//! body is always read to its end, and the next prompt goes out on the same connection
//! if and only if it is still open.

use crate::record::{ErrorCategory, Mode, PromptError, Recorder};
use crate::stats::TcpWatch;
use crate::{Protocol, RunnerOpts, Target, TokenSink};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lab_codec::sse;
use std::sync::Arc;
use std::time::Instant;
use tokio_rustls::TlsConnector;

/// What one SSE event means to an approach.
pub enum EventMeaning {
    /// A content token.
    Token(String),
    /// Not a token (role-only or finish chunk, usage, comment).
    Skip,
    /// The end of the answer (`[DONE]`).
    Done,
    /// The server reported a failure.
    Failed(PromptError),
    /// The upstream's count of the answer's tokens.
    Usage(u64),
}

/// The request and event interpretation of one HTTP streaming API.
pub trait SseApi: Send + Sync + 'static {
    /// The JSON body for one prompt.
    fn body(&self, prompt: &crate::Prompt) -> Vec<u8>;
    /// Interprets one event.
    fn event(&self, ev: sse::Event) -> EventMeaning;
    /// The latency the server reports about itself in a response header, if it does.
    fn timing(&self) -> Option<&'static crate::ServerTiming> {
        None
    }
}

/// The HTTP version a runner speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    /// Prompts of runners that share a connection go as streams of it.
    Http2,
}

/// A connection's request sender.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> bool {
        match self {
            Self::H1(s) => s.ready().await.is_ok(),
            Self::H2(s) => s.ready().await.is_ok(),
        }
    }

    async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> hyper::Result<http::Response<Incoming>> {
        match self {
            Self::H1(s) => s.send_request(req).await,
            Self::H2(s) => s.send_request(req).await,
        }
    }

    /// Another handle on an HTTP/2 connection; an HTTP/1.1 sender is one request at a time.
    fn handle(&self) -> Option<Sender> {
        match self {
            Self::H1(_) => None,
            Self::H2(s) => Some(Self::H2(s.clone())),
        }
    }
}

/// A connection: its request sender, its number, and the watch that reports its
/// transport statistics when the last handle on it is gone.
struct Conn {
    sender: Sender,
    id: u32,
    watch: Option<Arc<TcpWatch>>,
}

impl Conn {
    /// Another handle on an HTTP/2 connection.
    fn handle(&self) -> Option<Conn> {
        Some(Conn {
            sender: self.sender.handle()?,
            id: self.id,
            watch: self.watch.clone(),
        })
    }
}

/// The connection a runner uses; shared by the runners of one HTTP/2 connection.
type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// A runner for an HTTP API that answers with an event stream.
pub struct HttpRunner<A: SseApi> {
    api: Arc<A>,
    opts: RunnerOpts,
    target: Target,
    version: Version,
    tls: TlsConnector,
    conn: Slot,
}

impl<A: SseApi> HttpRunner<A> {
    pub fn new(
        api: A,
        target: Target,
        opts: &RunnerOpts,
        version: Version,
    ) -> anyhow::Result<Self> {
        let tls = match version {
            Version::Http1 => opts.trust.http1_client_config()?,
            Version::Http2 => opts.trust.h2_client_config()?,
        };
        Ok(Self {
            api: Arc::new(api),
            opts: opts.clone(),
            target,
            version,
            tls: TlsConnector::from(Arc::new(tls)),
            conn: Arc::default(),
        })
    }

    async fn connect(&self) -> Result<(Sender, Option<TcpWatch>), PromptError> {
        if !self.target.tls {
            // Plain HTTP (the handoff server): no TLS between TCP and HTTP.
            let tcp = crate::tcp_connect(&self.target, &self.opts).await?;
            let watch = TcpWatch::new(&tcp, &self.opts.stats);
            return Ok((self.handshake(TokioIo::new(tcp)).await?, watch));
        }
        let (tls, watch) = crate::tls_connect(&self.target, &self.tls, &self.opts).await?;
        Ok((self.handshake(TokioIo::new(tls)).await?, watch))
    }

    async fn handshake<T>(&self, io: TokioIo<T>) -> Result<Sender, PromptError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = |e: hyper::Error| {
            PromptError::new(
                ErrorCategory::Handshake,
                format!("HTTP handshake failed: {e}"),
            )
        };
        Ok(match self.version {
            Version::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(handshake)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H1(sender)
            }
            Version::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(handshake)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(sender)
            }
        })
    }

    /// The sender for this prompt: the kept connection's if it is still open (HTTP/1.1
    /// takes it, HTTP/2 shares it), else a new connection (kept for the next prompt in
    /// `reuse` mode).
    async fn sender(&self, rec: &mut Recorder) -> Result<Conn, PromptError> {
        let fresh = self.opts.mode == Mode::Fresh;
        let mut slot = self.conn.lock().await;
        if !fresh && let Some(c) = slot.as_mut() {
            if c.sender.ready().await {
                rec.reused();
                return Ok(match c.handle() {
                    Some(h) => h,
                    None => slot.take().expect("checked above"),
                });
            }
            *slot = None;
        }
        let t = Instant::now();
        let (sender, watch) = self.connect().await?;
        rec.connected(t.elapsed());
        let id = self.opts.next_conn();
        let watch = watch.map(|mut w| {
            w.set_conn(id);
            Arc::new(w)
        });
        let c = Conn { sender, id, watch };
        if !fresh && let Some(h) = c.handle() {
            *slot = Some(h);
        }
        Ok(c)
    }
}

/// What an HTTP error status says went wrong: the server turned the request away (4xx,
/// and 503, a server at capacity), or its upstream failed (502 and the other 5xx).
pub(crate) fn status_category(status: http::StatusCode) -> ErrorCategory {
    if status.is_client_error() || status == http::StatusCode::SERVICE_UNAVAILABLE {
        ErrorCategory::Rejected
    } else {
        ErrorCategory::Upstream
    }
}

impl<A: SseApi> Protocol for HttpRunner<A> {
    fn opts(&self) -> &RunnerOpts {
        &self.opts
    }

    async fn attempt(
        &mut self,
        _: usize,
        prompt: &crate::Prompt,
        rec: &mut Recorder,
        sink: &mut TokenSink<'_>,
    ) -> Result<(), PromptError> {
        let mut conn = self.sender(rec).await?;
        rec.conn(conn.id);
        let mut req = http::Request::post(self.target.path.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream");
        req = match self.version {
            // HTTP/2 carries the authority in the request's URI, HTTP/1.1 in Host.
            Version::Http2 => req.uri(format!(
                "https://{}{}",
                self.target.authority, self.target.path
            )),
            Version::Http1 => req.header(http::header::HOST, self.target.authority.as_str()),
        };
        if self.opts.mode == Mode::Fresh && self.version == Version::Http1 {
            req = req.header(http::header::CONNECTION, "close");
        }
        let req = req
            .body(Full::new(Bytes::from(self.api.body(prompt))))
            .map_err(|e| PromptError::new(ErrorCategory::Send, e.to_string()))?;
        let resp =
            conn.sender.send(req).await.map_err(|e| {
                PromptError::new(ErrorCategory::Send, format!("request failed: {e}"))
            })?;
        rec.first_byte();
        if let Some(t) = self.api.timing()
            && let Some(us) = resp
                .headers()
                .get(t.header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        {
            rec.server_timing(t.key, std::time::Duration::from_micros(us));
        }
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            rec.bytes(bytes.len());
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            let category = status_category(status);
            return Err(PromptError::new(category, format!("HTTP {status}: {text}")));
        }
        let mut dec = sse::Decoder::new();
        let mut done = false;
        let mut failure = None;
        // Read to the end of the body even after [DONE], or keep-alive never reuses.
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                PromptError::new(ErrorCategory::Receive, format!("body broke: {e}"))
            })?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            rec.bytes(data.len());
            dec.extend(data);
            while let Some(ev) = dec
                .next_event()
                .map_err(|e| PromptError::new(ErrorCategory::Receive, e.to_string()))?
            {
                if done || failure.is_some() {
                    continue;
                }
                match self.api.event(ev) {
                    EventMeaning::Token(t) => {
                        rec.token(&t);
                        sink(&t);
                    }
                    EventMeaning::Skip => {}
                    EventMeaning::Usage(n) => rec.usage(n),
                    EventMeaning::Done => done = true,
                    EventMeaning::Failed(e) => failure = Some(e),
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if !done {
            return Err(PromptError::new(
                ErrorCategory::Receive,
                "stream ended without [DONE]",
            ));
        }
        // An HTTP/1.1 connection that answered whole goes back for the next prompt.
        if self.opts.mode == Mode::Reuse && self.version == Version::Http1 {
            *self.conn.lock().await = Some(conn);
        }
        Ok(())
    }

    /// Nothing to let go: a connection in an unknown state is never reused anyway (an
    /// HTTP/1.1 sender goes back only after a whole answer, and a dead HTTP/2 one fails
    /// its check).
    async fn settle(&mut self, _: Option<&PromptError>) {}

    async fn hang_up(&mut self) {
        *self.conn.lock().await = None;
    }

    fn on_same_connection(&self) -> Option<Self> {
        let multiplexed = self.version == Version::Http2 && self.opts.mode == Mode::Reuse;
        multiplexed.then(|| HttpRunner {
            api: self.api.clone(),
            opts: self.opts.clone(),
            target: self.target.clone(),
            version: self.version,
            tls: self.tls.clone(),
            conn: self.conn.clone(),
        })
    }
}
