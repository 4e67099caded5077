//! The WebTransport runner: one bidirectional stream per prompt. The client writes
//! `<len>:<prompt>` and finishes its side; the server answers with `<len>:<token>`
//! messages, then `0:` (which is never counted as a token), then finishes. With
//! [`Answers::Datagrams`] the tokens come in datagrams instead ([`crate::wt_dgram`]).
//!
//! `fresh` opens a new QUIC connection and WebTransport session per prompt; `reuse` keeps
//! one session and opens a new stream per prompt, as a browser tab would.
//!
//! The runner is the same whatever library sets the session up: a [`Stack`] connects
//! and opens streams. [`Wtransport`] here is wtransport's (the `wt` and `wt-dgram`
//! approaches); [`crate::wtq`] is web-transport-quinn's (`wtq`, `wtq-dgram`).

use crate::dgram::{Datagrams, Router};
use crate::quic_rt::WtClient;
use crate::record::{ErrorCategory, Mode, PromptError, Recorder};
use crate::stats::QuicWatch;
use crate::{Protocol, Runner, RunnerOpts, Target, TokenSink};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtransport::{ClientConfig, Connection, VarInt, quinn};

/// The wtransport runner for `target` (its path is the session path).
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    Ok(Box::new(WtRunner::new(
        Wtransport::new(&target, opts)?,
        opts,
        Answers::Streams,
    )))
}

/// A WebTransport library, as the runner uses it.
pub trait Stack: Clone + std::marker::Send + Sync + 'static {
    /// A session; clones share it.
    type Session: Clone + Datagrams + Sync;
    type Send: crate::streams::Send + std::marker::Send;
    type Recv: crate::streams::Recv + std::marker::Send;
    /// Sets a new session up.
    fn connect(&self) -> impl Future<Output = Result<Self::Session, PromptError>> + Send;
    /// Opens a bidirectional stream of the session.
    fn open_bi(
        s: &Self::Session,
    ) -> impl Future<Output = Result<(Self::Send, Self::Recv), String>> + Send;
    /// The QUIC connection under the session, for its statistics.
    fn quic(s: &Self::Session) -> &quinn::Connection;
    /// The QUIC stream id of a send stream (datagram tokens name it).
    fn stream_id(s: &Self::Send) -> u64;
    /// The UDP port the client's endpoint sends from.
    fn local_port(&self) -> u16;
    /// Waits until every connection of the endpoint has been closed.
    fn wait_idle(&self) -> impl Future<Output = ()> + Send;
    /// The runtime the endpoint lives on, if it has one of its own.
    fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        None
    }
}

/// A session a runner uses: the connection, its number, the watch that reports its
/// QUIC statistics when it is dropped, and, for datagram answers, the router of its
/// datagrams.
struct Session<S: Stack> {
    conn: S::Session,
    id: u32,
    _watch: Arc<QuicWatch>,
    router: Option<Arc<Router>>,
}

impl<S: Stack> Clone for Session<S> {
    fn clone(&self) -> Self {
        Session {
            conn: self.conn.clone(),
            id: self.id,
            _watch: self._watch.clone(),
            router: self.router.clone(),
        }
    }
}

/// The session of the runners that share one.
type Slot<S> = Arc<tokio::sync::Mutex<Option<Session<S>>>>;

/// Where the answers' tokens come: on the request stream (`wt`), or in datagrams
/// (`wt-dgram`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    Streams,
    Datagrams,
}

/// wtransport's client: its endpoint on a single-threaded runtime of its own (see
/// [`crate::quic_rt`]), and the session URL.
#[derive(Clone)]
pub struct Wtransport {
    endpoint: WtClient,
    url: String,
}

impl Wtransport {
    pub fn new(target: &Target, opts: &RunnerOpts) -> anyhow::Result<Self> {
        let bind = crate::udp_bind_addr(target, opts);
        let quic = &opts.transport.quic;
        let make = |socket: std::net::UdpSocket, k| {
            let tls = opts.trust.h3_client_config()?;
            // The socket itself, for what quinn has no setting for (ECN off).
            let same = socket.try_clone()?;
            let mut cfg = ClientConfig::builder()
                .with_bind_socket(socket)
                .with_custom_tls_and_transport(tls, quic.transport_config()?)
                .build();
            quic.endpoint_config(cfg.quic_endpoint_config_mut());
            let endpoint = WtClient::on(cfg, k)?;
            quic.after_bind(&same)?;
            Ok(endpoint)
        };
        let endpoint = crate::endpoints::for_wtransport(opts, bind, make)?;
        Ok(Self {
            endpoint,
            url: format!("https://{}{}", target.authority, target.path),
        })
    }
}

/// Where a WebTransport session's set-up broke: no answer at all (connect), a refusal
/// (the session request, or the QUIC connection), or the handshake (TLS, QUIC, and
/// HTTP/3 errors such as H3_FRAME_UNEXPECTED).
fn session_failure(e: &wtransport::error::ConnectingError) -> ErrorCategory {
    use wtransport::error::{ConnectingError as C, ConnectionError as E};
    match e {
        C::SessionRejected => ErrorCategory::Rejected,
        C::ConnectionError(E::TimedOut) => ErrorCategory::Connect,
        // wtransport's ConnectionClose keeps quinn's code to itself; its name shows.
        C::ConnectionError(E::ConnectionClosed(c))
            if c.to_string().contains("CONNECTION_REFUSED") =>
        {
            ErrorCategory::Rejected
        }
        _ => ErrorCategory::Handshake,
    }
}

impl Stack for Wtransport {
    type Session = Connection;
    type Send = wtransport::SendStream;
    type Recv = wtransport::RecvStream;

    async fn connect(&self) -> Result<Connection, PromptError> {
        self.endpoint.connect(&self.url).await.map_err(|e| {
            PromptError::new(
                session_failure(&e),
                format!("WebTransport session to {} failed: {e}", self.url),
            )
        })
    }

    async fn open_bi(s: &Connection) -> Result<(Self::Send, Self::Recv), String> {
        let opening = s.open_bi().await.map_err(|e| format!("open stream: {e}"))?;
        opening.await.map_err(|e| format!("open stream: {e}"))
    }

    fn quic(s: &Connection) -> &quinn::Connection {
        s.quic_connection()
    }

    fn stream_id(s: &Self::Send) -> u64 {
        VarInt::from(s.id()).into_inner()
    }

    fn local_port(&self) -> u16 {
        self.endpoint.local_addr().map_or(0, |a| a.port())
    }

    async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        Some(self.endpoint.runtime())
    }
}

pub struct WtRunner<S: Stack> {
    opts: RunnerOpts,
    stack: S,
    conn: Slot<S>,
    answers: Answers,
}

impl<S: Stack> WtRunner<S> {
    pub fn new(stack: S, opts: &RunnerOpts, answers: Answers) -> Self {
        Self {
            opts: opts.clone(),
            stack,
            conn: Arc::default(),
            answers,
        }
    }

    async fn drop_conn(&mut self) {
        // Dropping the last handle on the watch closes the session and reports it.
        self.conn.lock().await.take();
    }
}

impl<S: Stack> Protocol for WtRunner<S> {
    fn opts(&self) -> &RunnerOpts {
        &self.opts
    }

    async fn attempt(
        &mut self,
        index: usize,
        prompt: &crate::Prompt,
        rec: &mut Recorder,
        sink: &mut TokenSink<'_>,
    ) -> Result<(), PromptError> {
        let urgent = self.opts.urgent.contains(&index) && self.opts.transport.quic.priorities;
        // The kept session (shared by the runners of one client in `reuse` mode), or a
        // new one; runners waiting here while one sets the session up then share it.
        let conn = {
            let mut slot = self.conn.lock().await;
            match slot.as_ref() {
                Some(s) if self.opts.mode == Mode::Reuse => {
                    rec.reused();
                    rec.conn(s.id);
                    s.clone()
                }
                _ => {
                    let t = Instant::now();
                    let c = self.stack.connect().await?;
                    rec.connected(t.elapsed());
                    let id = self.opts.next_conn();
                    rec.conn(id);
                    let watch = Arc::new(QuicWatch::new(
                        S::quic(&c),
                        id,
                        self.stack.local_port(),
                        &self.opts.stats,
                    ));
                    let router = (self.answers == Answers::Datagrams)
                        .then(|| Router::start(c.clone(), watch.late(), self.stack.runtime()));
                    let s = Session {
                        conn: c,
                        id,
                        _watch: watch,
                        router,
                    };
                    *slot = Some(s.clone());
                    s
                }
            }
        };
        let (mut send, recv) = S::open_bi(&conn.conn)
            .await
            .map_err(|e| PromptError::new(ErrorCategory::Send, e))?;
        let stream = S::stream_id(&send);
        rec.stream(stream);
        // Datagrams for the stream may come as soon as the prompt is out.
        let ticket = conn.router.as_ref().map(|r| r.ticket(stream));
        crate::streams::send_prompt(&mut send, prompt, urgent, self.opts.usage).await?;
        match ticket {
            Some(t) => {
                let rtt = S::quic(&conn.conn).rtt();
                crate::dgram::read_answer(recv, t, rtt, rec, sink).await
            }
            None => crate::streams::read_answer(recv, rec, sink).await,
        }
    }

    /// Fresh mode never keeps a connection; one that ended is dropped (an error of one
    /// stream leaves the connection to the prompts sharing it).
    async fn settle(&mut self, _: Option<&PromptError>) {
        let ended = self
            .conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|s| S::quic(&s.conn).close_reason().is_some());
        if self.opts.mode == Mode::Fresh || ended {
            self.drop_conn().await;
        }
    }

    async fn hang_up(&mut self) {
        self.drop_conn().await;
        // Let the CONNECTION_CLOSE go out before the endpoint is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stack.wait_idle()).await;
    }

    fn on_same_connection(&self) -> Option<Self> {
        // In fresh mode every prompt has a session of its own: nothing to share.
        (self.opts.mode == Mode::Reuse).then(|| WtRunner {
            opts: self.opts.clone(),
            stack: self.stack.clone(),
            conn: self.conn.clone(),
            answers: self.answers,
        })
    }
}
