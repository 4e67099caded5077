//! The second WebTransport stack's runner (`wtq`): web-transport-quinn (the Media over
//! QUIC project's stack) on lab's own quinn endpoint, through the same runner as `wt`
//! ([`crate::wt::WtRunner`]): only the session's set-up and its streams come from
//! another library.
//!
//! The client waits for the server's SETTINGS before its CONNECT, as RFC 9220 asks; a
//! server that sends them in 0.5-RTT (lab's `wtq` server does) lets the CONNECT go with
//! the client's Finished.

use crate::record::{ErrorCategory, PromptError};
use crate::wt::{Answers, Stack, WtRunner};
use crate::{Runner, RunnerOpts, Target};
use std::net::SocketAddr;
use std::sync::Arc;
use web_transport_quinn::{ClientError, Session, quinn};

/// The web-transport-quinn runner for `target` (its path is the session path).
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    Ok(Box::new(WtRunner::new(
        Wtq::new(&target, opts)?,
        opts,
        Answers::Streams,
    )))
}

/// web-transport-quinn's client: a quinn endpoint, its client configuration, and the
/// session URL.
#[derive(Clone)]
pub struct Wtq {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    host: String,
    url: url::Url,
}

impl Wtq {
    pub fn new(target: &Target, opts: &RunnerOpts) -> anyhow::Result<Self> {
        let quic = &opts.transport.quic;
        let tls = opts.trust.h3_client_config()?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(quic.transport_config()?));
        let bind = crate::udp_bind_addr(target, opts);
        let endpoint = crate::endpoints::for_quinn(opts, bind)?;
        let url = format!("https://{}{}", target.authority, target.path);
        Ok(Self {
            endpoint,
            config,
            addr: target.addr,
            host: target.host.clone(),
            url: url::Url::parse(&url)?,
        })
    }
}

/// Where a session's set-up broke: no answer (connect), a refusal (the QUIC connection,
/// or a status other than 200 to the CONNECT), or the handshake (TLS, QUIC, HTTP/3).
fn session_failure(e: &ClientError) -> ErrorCategory {
    use quinn::ConnectionError as E;
    match e {
        ClientError::Connection(E::TimedOut) => ErrorCategory::Connect,
        ClientError::Connection(E::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            ErrorCategory::Rejected
        }
        ClientError::HttpError(web_transport_quinn::ConnectError::ErrorStatus(_)) => {
            ErrorCategory::Rejected
        }
        _ => ErrorCategory::Handshake,
    }
}

impl Stack for Wtq {
    type Session = Session;
    type Send = web_transport_quinn::SendStream;
    type Recv = web_transport_quinn::RecvStream;

    async fn connect(&self) -> Result<Session, PromptError> {
        let failed = |e: ClientError| {
            PromptError::new(
                session_failure(&e),
                format!("WebTransport session to {} failed: {e}", self.url),
            )
        };
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.addr, &self.host)
            .map_err(|e| failed(e.into()))?;
        let conn = connecting.await.map_err(|e| failed(e.into()))?;
        Session::connect(conn, self.url.clone())
            .await
            .map_err(failed)
    }

    async fn open_bi(s: &Session) -> Result<(Self::Send, Self::Recv), String> {
        s.open_bi().await.map_err(|e| format!("open stream: {e}"))
    }

    fn quic(s: &Session) -> &quinn::Connection {
        s
    }

    fn stream_id(s: &Self::Send) -> u64 {
        quinn::VarInt::from(s.quic_id()).into_inner()
    }

    fn local_port(&self) -> u16 {
        self.endpoint.local_addr().map_or(0, |a| a.port())
    }

    async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}
