//! The WebSocket runner: a WebSocket over TLS (`wss://host:port/ws`), one text message per
//! prompt; the answer is one text message per token, then an empty text message. A
//! binary message from the server reports an upstream failure (its payload is the
//! reason) before that end.
//!
//! `fresh` opens a new TCP+TLS connection and WebSocket per prompt; `reuse` keeps one and
//! sends the next prompt on it. The application bytes counted are the server's frames as
//! they arrive (2 to 10 bytes of header plus the payload), the WebSocket counterpart of
//! SSE's `data:` lines and WebTransport's length prefixes.

use crate::record::{ErrorCategory, Mode, PromptError, Recorder};
use crate::stats::TcpWatch;
use crate::{Protocol, Runner, RunnerOpts, Target, TokenSink};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The WebSocket runner for `target`.
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    Ok(Box::new(WsRunner {
        tls: TlsConnector::from(Arc::new(opts.trust.http1_client_config()?)),
        opts: opts.clone(),
        target,
        conn: None,
    }))
}

pub struct WsRunner {
    opts: RunnerOpts,
    target: Target,
    tls: TlsConnector,
    conn: Option<(WebSocketStream<TlsStream<TcpStream>>, u32, Option<TcpWatch>)>,
}

/// The WebSocket handshake for `url` over `tls`; an HTTP answer in place of the upgrade
/// is categorized by its status, anything else is a handshake failure.
pub(crate) async fn handshake(
    url: &str,
    tls: TlsStream<TcpStream>,
) -> Result<WebSocketStream<TlsStream<TcpStream>>, PromptError> {
    let (ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .map_err(|e| {
            let category = match &e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    crate::http::status_category(r.status())
                }
                _ => ErrorCategory::Handshake,
            };
            PromptError::new(
                category,
                format!("WebSocket handshake with {url} failed: {e}"),
            )
        })?;
    Ok(ws)
}

/// The bytes of a server frame (unmasked) carrying `n` bytes of payload.
pub fn frame_len(n: usize) -> usize {
    n + match n {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

impl WsRunner {
    async fn connect(
        &self,
    ) -> Result<(WebSocketStream<TlsStream<TcpStream>>, Option<TcpWatch>), PromptError> {
        let (tls, watch) = crate::tls_connect(&self.target, &self.tls, &self.opts).await?;
        let url = format!("wss://{}{}", self.target.authority, self.target.path);
        Ok((handshake(&url, tls).await?, watch))
    }

    async fn drop_conn(&mut self) {
        if let Some((mut ws, _, _watch)) = self.conn.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(None)).await;
        }
    }
}

impl Protocol for WsRunner {
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
        if self.opts.mode == Mode::Reuse && self.conn.is_some() {
            rec.reused();
        } else {
            let t = Instant::now();
            let (ws, mut watch) = self.connect().await?;
            rec.connected(t.elapsed());
            let id = self.opts.next_conn();
            if let Some(w) = watch.as_mut() {
                w.set_conn(id);
            }
            self.conn = Some((ws, id, watch));
        }
        let Some((ws, id, _)) = self.conn.as_mut() else {
            return Err(PromptError::new(ErrorCategory::Connect, "no connection"));
        };
        rec.conn(*id);
        if self.opts.usage {
            let m = String::from_utf8_lossy(lab_codec::wt::USAGE).into_owned();
            ws.feed(Message::text(m)).await.map_err(|e| {
                PromptError::new(ErrorCategory::Send, format!("send usage request: {e}"))
            })?;
        }
        if let Some(n) = prompt.max_tokens {
            let m = String::from_utf8_lossy(&lab_codec::wt::answer_len_message(n)).into_owned();
            ws.feed(Message::text(m)).await.map_err(|e| {
                PromptError::new(ErrorCategory::Send, format!("send answer length: {e}"))
            })?;
        }
        ws.send(Message::text(prompt.text.as_str()))
            .await
            .map_err(|e| PromptError::new(ErrorCategory::Send, format!("send prompt: {e}")))?;
        let recv_err = |e: String| PromptError::new(ErrorCategory::Receive, e);
        let mut failure = None;
        loop {
            let Some(msg) = ws.next().await else {
                return Err(recv_err(
                    "the server closed before the end of the answer".into(),
                ));
            };
            match msg.map_err(|e| recv_err(format!("WebSocket read: {e}")))? {
                Message::Text(t) => {
                    rec.bytes(frame_len(t.len()));
                    if t.is_empty() {
                        break;
                    }
                    if let Some(n) = lab_codec::wt::parse_usage(t.as_bytes()) {
                        rec.usage(n.map_err(recv_err)?);
                    } else if failure.is_none() {
                        rec.token(&t);
                        sink(&t);
                    }
                }
                Message::Binary(b) => {
                    rec.bytes(frame_len(b.len()));
                    failure = Some(PromptError::new(
                        ErrorCategory::Upstream,
                        String::from_utf8_lossy(&b).into_owned(),
                    ));
                }
                Message::Close(c) => {
                    return Err(recv_err(format!(
                        "the server closed the WebSocket: {}",
                        c.map_or_else(
                            || "no reason".into(),
                            |c| format!("{} {}", c.code, c.reason)
                        )
                    )));
                }
                _ => {}
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn settle(&mut self, error: Option<&PromptError>) {
        // A WebSocket in an unknown state is not used again; fresh mode keeps none.
        let upstream_only = error.is_some_and(|e| e.category == ErrorCategory::Upstream);
        if (error.is_some() && !upstream_only) || self.opts.mode == Mode::Fresh {
            self.drop_conn().await;
        }
    }

    async fn hang_up(&mut self) {
        self.drop_conn().await
    }
}

#[cfg(test)]
mod tests {
    use super::frame_len;

    #[test]
    fn frame_lengths_follow_rfc_6455() {
        assert_eq!(frame_len(0), 2);
        assert_eq!(frame_len(5), 7);
        assert_eq!(frame_len(125), 127);
        assert_eq!(frame_len(126), 130);
        assert_eq!(frame_len(65535), 65539);
        assert_eq!(frame_len(65536), 65546);
    }
}
