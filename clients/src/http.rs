//! HTTP/1.1 over TLS with explicit connection control, shared by the raw-API and SSE
//! runners.
//!
//! Connections are made by hand (TCP, then TLS, then an HTTP/1.1 handshake) rather than by
//! a pooling client, so set-up is timed exactly and `reuse` provably reuses: the response
//! body is always read to its end, and the next prompt goes out on the same connection
//! if and only if it is still open.

use crate::record::{ErrorCategory, Mode, PromptError, PromptRecord, Recorder};
use crate::{BoxFuture, Runner, RunnerOpts, Target, TokenSink};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use lab_codec::sse;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
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
}

/// The request and event interpretation of one HTTP streaming API.
pub trait SseApi: Send + Sync + 'static {
    /// The JSON body for one prompt.
    fn body(&self, prompt: &str) -> Vec<u8>;
    /// Interprets one event.
    fn event(&self, ev: sse::Event) -> EventMeaning;
}

/// A runner for an HTTP API that answers with an event stream.
pub struct HttpRunner<A: SseApi> {
    api: A,
    name: &'static str,
    target: Target,
    tls: TlsConnector,
    mode: Mode,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl<A: SseApi> HttpRunner<A> {
    pub fn new(api: A, target: Target, opts: &RunnerOpts) -> anyhow::Result<Self> {
        let tls = opts.trust.http1_client_config()?;
        Ok(Self {
            api,
            name: opts.approach,
            target,
            tls: TlsConnector::from(Arc::new(tls)),
            mode: opts.mode,
            timeout: opts.timeout,
            conn: None,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, PromptError> {
        let err = |m: String| PromptError::new(ErrorCategory::Connect, m);
        let tcp = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| err(format!("TCP connect to {} failed: {e}", self.target.addr)))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.target.host.clone())
            .map_err(|e| err(format!("invalid server name '{}': {e}", self.target.host)))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| {
            err(format!(
                "TLS handshake with {} failed: {e}",
                self.target.addr
            ))
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| err(format!("HTTP handshake failed: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn attempt(
        &mut self,
        prompt: &str,
        rec: &mut Recorder,
        sink: &mut TokenSink<'_>,
    ) -> Result<(), PromptError> {
        let reusable = match self.conn.as_mut() {
            Some(c) if self.mode == Mode::Reuse => c.ready().await.is_ok(),
            _ => false,
        };
        if reusable {
            rec.reused();
        } else {
            let t = Instant::now();
            self.conn = Some(self.connect().await?);
            rec.connected(t.elapsed());
        }
        let Some(sender) = self.conn.as_mut() else {
            return Err(PromptError::new(ErrorCategory::Connect, "no connection"));
        };
        let mut req = http::Request::post(self.target.path.as_str())
            .header(http::header::HOST, self.target.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream");
        if self.mode == Mode::Fresh {
            req = req.header(http::header::CONNECTION, "close");
        }
        let req = req
            .body(Full::new(Bytes::from(self.api.body(prompt))))
            .map_err(|e| PromptError::new(ErrorCategory::Send, e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| PromptError::new(ErrorCategory::Send, format!("request failed: {e}")))?;
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
            let category = if status == http::StatusCode::BAD_GATEWAY || status.is_server_error() {
                ErrorCategory::Upstream
            } else {
                ErrorCategory::Send
            };
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
        if self.mode == Mode::Fresh {
            self.conn = None;
        }
        Ok(())
    }
}

impl<A: SseApi> Runner for HttpRunner<A> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run<'a>(
        &'a mut self,
        index: usize,
        prompt: &'a str,
        sink: &'a mut TokenSink<'a>,
    ) -> BoxFuture<'a, PromptRecord> {
        Box::pin(async move {
            let mut rec = Recorder::start();
            let timeout = self.timeout;
            let error = crate::within(timeout, self.attempt(prompt, &mut rec, sink)).await;
            if error.is_some() {
                // A connection in an unknown state is never reused.
                self.conn = None;
            }
            rec.finish(self.name, self.mode, index, prompt, error)
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.conn = None;
        })
    }
}
