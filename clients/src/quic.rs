//! The raw QUIC runner: quinn itself, no HTTP/3, ALPN `lab-quic`; one bidirectional
//! stream per prompt, carrying the WebTransport runner's protocol ([`crate::streams`]).
//!
//! Every new connection tries 0-RTT: once the runner holds a session ticket from an
//! earlier connection (its TLS config keeps them), the prompt goes out in the first
//! flight, before the handshake completes. Each record that set up a connection says
//! whether the server accepted the 0-RTT data (`zero_rtt`); a refused prompt is sent
//! again once the handshake is done. `fresh` sets up a connection per prompt, so every
//! prompt after the first can resume; `reuse` keeps one connection.

use crate::record::{ErrorCategory, Mode, PromptError, Recorder};
use crate::stats::QuicWatch;
use crate::{Protocol, Runner, RunnerOpts, Target, TokenSink};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtransport::quinn;

/// The raw QUIC runner for `target` (its path is ignored).
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    Ok(Box::new(QuicRunner::new(target, opts)?))
}

/// The connection a runner uses, with its number and the watch that reports its
/// statistics when it is dropped; shared by the runners of one connection.
type Slot = Arc<tokio::sync::Mutex<Option<(quinn::Connection, u32, Arc<QuicWatch>)>>>;

pub struct QuicRunner {
    opts: RunnerOpts,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    host: String,
    conn: Slot,
}

/// Where a QUIC connection's set-up broke: no answer (connect), refused, or the
/// handshake.
fn connection_failure(e: &quinn::ConnectionError) -> ErrorCategory {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => ErrorCategory::Connect,
        E::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            ErrorCategory::Rejected
        }
        _ => ErrorCategory::Handshake,
    }
}

impl QuicRunner {
    pub fn new(target: Target, opts: &RunnerOpts) -> anyhow::Result<Self> {
        let quic = &opts.transport.quic;
        let tls = opts.trust.quic_client_config()?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(quic.transport_config()?));
        let bind = crate::udp_bind_addr(&target, opts);
        let endpoint = crate::endpoints::for_quinn(opts, bind)?;
        Ok(Self {
            opts: opts.clone(),
            endpoint,
            config,
            addr: target.addr,
            host: target.host,
            conn: Arc::default(),
        })
    }

    /// A new connection, in 0-RTT where the runner can resume a session: the
    /// connection, and what says whether the server took the 0-RTT data.
    async fn connect(
        &self,
        rec: &mut Recorder,
    ) -> Result<(quinn::Connection, Option<quinn::ZeroRttAccepted>), PromptError> {
        let err = |category, e: String| {
            PromptError::new(
                category,
                format!("QUIC connection to {} failed: {e}", self.addr),
            )
        };
        let t = Instant::now();
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.addr, &self.host)
            .map_err(|e| err(ErrorCategory::Connect, e.to_string()))?;
        let (conn, early) = match connecting.into_0rtt() {
            Ok((c, accepted)) => (c, Some(accepted)),
            Err(connecting) => (
                connecting
                    .await
                    .map_err(|e| err(connection_failure(&e), e.to_string()))?,
                None,
            ),
        };
        // Set-up is the time until the prompt could go out: next to nothing in 0-RTT.
        rec.connected(t.elapsed());
        Ok((conn, early))
    }

    async fn drop_conn(&mut self) {
        // Dropping the last handle on the watch closes the connection and reports it.
        self.conn.lock().await.take();
    }
}

impl Protocol for QuicRunner {
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
        // The watch closes the connection when its last handle drops: the attempt holds
        // one, so that a runner sharing the connection that hangs up (its slot's streams
        // are done) does not close it under this stream.
        let (conn, early, _watch) = {
            let mut slot = self.conn.lock().await;
            match slot.as_ref() {
                Some((c, id, w)) if self.opts.mode == Mode::Reuse => {
                    rec.reused();
                    rec.conn(*id);
                    (c.clone(), None, w.clone())
                }
                _ => {
                    let (c, early) = self.connect(rec).await?;
                    let id = self.opts.next_conn();
                    rec.conn(id);
                    let port = self.endpoint.local_addr().map_or(0, |a| a.port());
                    let watch = Arc::new(QuicWatch::new(&c, id, port, &self.opts.stats));
                    *slot = Some((c.clone(), id, watch.clone()));
                    (c, early, watch)
                }
            }
        };
        let open = |c: &quinn::Connection| {
            let c = c.clone();
            async move {
                c.open_bi()
                    .await
                    .map_err(|e| PromptError::new(ErrorCategory::Send, format!("open stream: {e}")))
            }
        };
        let (mut send, mut recv) = open(&conn).await?;
        crate::streams::send_prompt(&mut send, prompt, urgent, self.opts.usage).await?;
        match early {
            Some(accepted) => {
                // Known once the handshake completes, which is also when the first
                // answer bytes can be read; refused 0-RTT data is lost, so the prompt
                // goes again.
                let ok = accepted.await;
                rec.zero_rtt(ok);
                if !ok {
                    (send, recv) = open(&conn).await?;
                    crate::streams::send_prompt(&mut send, prompt, urgent, self.opts.usage).await?;
                }
            }
            // A new connection without a session to resume.
            None if !rec.is_reused() => rec.zero_rtt(false),
            None => {}
        }
        rec.stream(quinn::VarInt::from(send.id()).into_inner());
        crate::streams::read_answer(recv, rec, sink).await
    }

    /// Fresh mode never keeps a connection; one that ended is dropped (an error of one
    /// stream leaves the connection to the prompts sharing it).
    async fn settle(&mut self, _: Option<&PromptError>) {
        let ended = self
            .conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|(c, _, _)| c.close_reason().is_some());
        if self.opts.mode == Mode::Fresh || ended {
            self.drop_conn().await;
        }
    }

    async fn hang_up(&mut self) {
        self.drop_conn().await;
        // Let the CONNECTION_CLOSE go out before the endpoint is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn on_same_connection(&self) -> Option<Self> {
        (self.opts.mode == Mode::Reuse).then(|| QuicRunner {
            opts: self.opts.clone(),
            endpoint: self.endpoint.clone(),
            config: self.config.clone(),
            addr: self.addr,
            host: self.host.clone(),
            conn: self.conn.clone(),
        })
    }
}
