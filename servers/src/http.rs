//! Serving an axum app over TLS, HTTP/1.1 with keep-alive (and upgrades, for WebSocket)
//! or HTTP/2, on an already-bound listener, counting connections, with deadlines for
//! slow and idle clients:
//! - the TLS handshake, and each request head, must be complete within
//!   [`Limits::header`] (hyper's header read timeout, from the connection's start or the
//!   head's first byte);
//! - a connection on which no byte moves either way for [`Limits::idle`] is closed.

use crate::Limits;
use crate::stats::ServerStats;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// An IO that notes when bytes last moved through it, either way.
pub struct Watched<T> {
    io: T,
    start: Instant,
    /// Milliseconds from `start` to the last byte moved.
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    pub fn new(io: T) -> (Self, IdleWatch) {
        let start = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let watch = IdleWatch {
            start,
            last: last.clone(),
        };
        (Self { io, start, last }, watch)
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Resolves once nothing has moved through its [`Watched`] IO for a while.
pub struct IdleWatch {
    start: Instant,
    last: Arc<AtomicU64>,
}

impl IdleWatch {
    /// Waits until no byte has moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let until = last + idle;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The HTTP version a server speaks over TLS (its TLS config's ALPN says the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1 with keep-alive, and upgrades (WebSocket).
    Http1,
    /// HTTP/2: many requests as streams of one connection.
    Http2,
}

/// The next connection. A failed accept (out of file descriptors, say) is logged with
/// `what` and tried again 10 ms later, so the server keeps serving those it has.
pub async fn accept(
    listener: &TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(s) => return s,
            Err(e) => {
                tracing::warn!("{what} failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Accepts connections forever; each is served on its own task.
/// Sets up an HTTP server over TLS on `listener` (`what` names it in errors): the
/// router `app`, in `version`, with the certificate, limits and counters of `env`. The
/// `start` of every server that is an axum router (SSE, SSE over HTTP/2, WebSocket, the
/// raw-API proxy).
pub fn start_router(
    listener: crate::Listener,
    env: crate::ServerEnv,
    what: &str,
    app: Router,
    version: Version,
) -> anyhow::Result<crate::Serving> {
    let tcp = listener.tcp(what)?;
    let tls = Arc::new(match version {
        Version::Http1 => env.cert.http1_server_config()?,
        Version::Http2 => env.cert.h2_server_config()?,
    });
    Ok(Box::pin(serve_tls(
        tcp,
        tls,
        app,
        env.stats,
        env.limits,
        version,
        env.transport.tcp.nodelay,
    )))
}

pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    stats: Arc<ServerStats>,
    limits: Limits,
    version: Version,
    nodelay: bool,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = accept(&listener, "accept").await;
        let _ = tcp.set_nodelay(nodelay);
        let (acceptor, app, stats) = (acceptor.clone(), app.clone(), stats.clone());
        tokio::spawn(async move {
            stats.connection_opened();
            let (tcp, watch) = Watched::new(tcp);
            match tokio::time::timeout(limits.header, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let service = TowerToHyperService::new(app);
                    let io = TokioIo::new(tls);
                    let conn: Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>> =
                        match version {
                            Version::Http1 => Box::pin(
                                hyper::server::conn::http1::Builder::new()
                                    .keep_alive(true)
                                    .timer(TokioTimer::new())
                                    .header_read_timeout(limits.header)
                                    .serve_connection(io, service)
                                    .with_upgrades(),
                            ),
                            Version::Http2 => Box::pin(
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .timer(TokioTimer::new())
                                    .serve_connection(io, service),
                            ),
                        };
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            tracing::debug!("connection from {peer} ended: {e}");
                        },
                        () = watch.idle_for(limits.idle) => {
                            tracing::debug!("closed the connection from {peer}: idle for {:?}", limits.idle);
                        }
                    }
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
            }
            stats.connection_closed();
        });
    }
}

/// A JSON error response in the OpenAI shape.
pub fn json_error(
    status: http::StatusCode,
    kind: &str,
    message: impl Into<String>,
) -> axum::response::Response {
    let body = lab_codec::openai::ErrorBody::new(kind, message).to_json();
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body))
        .unwrap_or_default()
}

/// What `POST /chat` asks (the SSE, SSE-over-HTTP/2 and hand-off servers' body,
/// `{"message": "...", "max_tokens": N}`): the prompt, and the answer's length in
/// tokens when the request sets one (lab's clients send it only then).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatAsk {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Whether the answer ends with the upstream's count of its tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage: bool,
}

impl ChatAsk {
    /// What the upstream is asked.
    pub fn options(&self) -> crate::upstream::ChatOptions {
        crate::upstream::ChatOptions {
            answer_len: self.max_tokens,
            usage: self.usage,
        }
    }

    /// Reads a body; the error says what was wrong and what to send.
    pub fn parse(body: &[u8]) -> Result<ChatAsk, String> {
        #[derive(serde::Deserialize)]
        struct Body {
            message: Option<String>,
            #[serde(default)]
            max_tokens: Option<serde_json::Value>,
            #[serde(default)]
            usage: Option<serde_json::Value>,
        }
        let b = serde_json::from_slice::<Body>(body).map_err(|e| {
            format!("invalid JSON body: {e}; send {{\"message\": \"your prompt\"}}")
        })?;
        let message = b.message.filter(|m| !m.trim().is_empty()).ok_or(
            "\"message\" is missing or empty; send {\"message\": \"your prompt\"}".to_owned(),
        )?;
        let max_tokens = match b.max_tokens {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(lab_codec::wt::answer_len)
                    .ok_or(format!(
                        "\"max_tokens\" is {v}; it is the answer's length, 1 to 1000000 tokens"
                    ))?,
            ),
        };
        let usage = match b.usage {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(u)) => u,
            Some(v) => return Err(format!("\"usage\" is {v}; it is true or false")),
        };
        Ok(ChatAsk {
            message,
            max_tokens,
            usage,
        })
    }
}

#[cfg(test)]
mod chat_ask_tests {
    use super::ChatAsk;

    #[test]
    fn a_chat_body_gives_its_prompt_and_length_and_bad_ones_are_named() {
        assert_eq!(
            ChatAsk::parse(br#"{"message":"hi"}"#),
            Ok(ChatAsk {
                message: "hi".into(),
                max_tokens: None,
                usage: false
            })
        );
        assert_eq!(
            ChatAsk::parse(br#"{"message":"hi","max_tokens":48}"#)
                .unwrap()
                .max_tokens,
            Some(48)
        );
        for (bad, why) in [
            (&br#"{"message":"  "}"#[..], "missing or empty"),
            (br#"{"max_tokens":3}"#, "missing or empty"),
            (br#"{nope"#, "invalid JSON body"),
            (br#"{"message":"a","max_tokens":0}"#, "1 to 1000000 tokens"),
            (
                br#"{"message":"a","max_tokens":"9"}"#,
                "1 to 1000000 tokens",
            ),
            (br#"{"message":"a","usage":1}"#, "true or false"),
        ] {
            let e = ChatAsk::parse(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
