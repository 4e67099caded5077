//! The fan-out runner: a session as the Centrifugo document runs one, through the load
//! balancer in front of lab's fan-out servers:
//! 1. `POST /v1/sessions` on an HTTP/1.1 connection (kept for the next prompt in
//!    `reuse` mode): the session id;
//! 2. a WebSocket to `/v1/sessions/<id>/ws` on a connection of its own, and the
//!    gateway's `r` (subscribed);
//! 3. `POST /v1/sessions/<id>/run` with the prompt; the tokens come on the WebSocket,
//!    each with its sequence number and the broker hop the gateway measured, then the
//!    end with the count published;
//! 4. `DELETE /v1/sessions/<id>`, after which the gateway closes the WebSocket.
//!
//! If the WebSocket breaks before the end (a gateway died), the runner connects again
//! to the same URL, waiting 50 ms, then twice as long each time up to 1.6 s, at most
//! [`RECONNECTS`] times; what was published in between is lost, and the record counts
//! it from the sequence numbers and the end's count ([`crate::record::RelayCounts`]).
//! Its digest is over the tokens delivered, so it equals the other approaches' only
//! when nothing was lost. TTFT runs from the session's creation: the round trips of
//! set-up (create; the WebSocket's TCP, TLS and upgrade; run) are part of what this
//! architecture costs.

use crate::record::{ErrorCategory, Mode, PromptError, Recorder};
use crate::stats::TcpWatch;
use crate::{Protocol, Runner, RunnerOpts, Target, TokenSink};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use lab_codec::relay::{Msg, is_session_id};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Most reconnections of one session's WebSocket.
pub const RECONNECTS: u32 = 6;

/// The server timing the runner records: the broker hop.
pub const TIMING: crate::ServerTiming = crate::ServerTiming {
    header: "",
    key: "broker_ms",
    what: "broker hop",
    how: "API server's publish to the gateway's receipt, the answer's median token",
    note: "It is inside TTFT and every token's time.",
};

/// A session's WebSocket, and the watch on its connection.
type Ws = (WebSocketStream<TlsStream<TcpStream>>, Option<TcpWatch>);

/// The fan-out runner for `target` (its path is where sessions are created).
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    Ok(Box::new(FanoutRunner {
        tls: TlsConnector::from(Arc::new(opts.trust.http1_client_config()?)),
        opts: opts.clone(),
        target,
        rest: None,
        marked: false,
    }))
}

pub struct FanoutRunner {
    opts: RunnerOpts,
    target: Target,
    tls: TlsConnector,
    /// The REST connection's request sender and number.
    rest: Option<(http1::SendRequest<Full<Bytes>>, u32, Option<TcpWatch>)>,
    /// Whether this prompt's record says yet how its REST connection came to be.
    marked: bool,
}

impl FanoutRunner {
    /// The REST connection, made if there is none (or it closed). The prompt's first
    /// request marks its record: set up for it, or reused.
    async fn rest(
        &mut self,
        rec: &mut Recorder,
    ) -> Result<&mut http1::SendRequest<Full<Bytes>>, PromptError> {
        let open = match self.rest.as_mut() {
            Some((s, _, _)) => s.ready().await.is_ok(),
            None => false,
        };
        let first = !std::mem::replace(&mut self.marked, true);
        if open {
            if first {
                rec.reused();
            }
        } else {
            let t = Instant::now();
            let (tls, mut watch) = crate::tls_connect(&self.target, &self.tls, &self.opts).await?;
            let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(|e| {
                PromptError::new(ErrorCategory::Handshake, format!("HTTP/1.1 handshake: {e}"))
            })?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            if first {
                rec.connected(t.elapsed());
            }
            let id = self.opts.next_conn();
            if let Some(w) = watch.as_mut() {
                w.set_conn(id);
            }
            self.rest = Some((sender, id, watch));
        }
        let (s, id, _) = self.rest.as_mut().ok_or_else(|| {
            PromptError::new(ErrorCategory::Connect, "no REST connection".to_owned())
        })?;
        rec.conn(*id);
        Ok(s)
    }

    /// One REST request; the response's status and body.
    async fn request(
        &mut self,
        rec: &mut Recorder,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(http::StatusCode, Bytes), PromptError> {
        let authority = self.target.authority.clone();
        let s = self.rest(rec).await?;
        let req = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PromptError::new(ErrorCategory::Send, format!("{method} {path}: {e}")))?;
        let resp = s
            .send_request(req)
            .await
            .map_err(|e| PromptError::new(ErrorCategory::Send, format!("{method} {path}: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| PromptError::new(ErrorCategory::Receive, format!("{method} {path}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(PromptError::new(
                crate::http::status_category(status),
                format!(
                    "{method} {path}: {status}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            ));
        }
        Ok((status, body))
    }

    /// A WebSocket to the session, once the gateway says it is subscribed.
    async fn subscribe(&self, id: &str) -> Result<Ws, PromptError> {
        let (tls, mut watch) = crate::tls_connect(&self.target, &self.tls, &self.opts).await?;
        if let Some(w) = watch.as_mut() {
            w.set_conn(self.opts.next_conn());
        }
        let url = format!(
            "wss://{}{}/{id}/ws",
            self.target.authority, self.target.path
        );
        let mut ws = crate::ws::handshake(&url, tls).await?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) if Msg::parse(&t) == Ok(Msg::Ready) => Ok((ws, watch)),
            other => Err(PromptError::new(
                ErrorCategory::Handshake,
                format!("{url}: expected the gateway's `r` first, got {other:?}"),
            )),
        }
    }

    /// A WebSocket to the session again after one broke: the number of tries it took.
    async fn resubscribe(&self, id: &str, why: &str) -> Result<(Ws, u32), PromptError> {
        let mut wait = Duration::from_millis(50);
        let mut last = why.to_owned();
        for n in 1..=RECONNECTS {
            tokio::time::sleep(wait).await;
            match self.subscribe(id).await {
                Ok(ws) => return Ok((ws, n)),
                Err(e) => last = e.message,
            }
            wait = (wait * 2).min(Duration::from_millis(1600));
        }
        Err(PromptError::new(
            ErrorCategory::Receive,
            format!("the WebSocket broke and {RECONNECTS} reconnections failed; last: {last}"),
        ))
    }
}

impl Protocol for FanoutRunner {
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
        self.marked = false;
        let base = self.target.path.clone();
        let (_, body) = self
            .request(rec, http::Method::POST, &base, b"{}".to_vec())
            .await?;
        let id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .filter(|id| is_session_id(id))
            .ok_or_else(|| {
                PromptError::new(
                    ErrorCategory::Receive,
                    format!(
                        "POST {base}: no session id in {}",
                        String::from_utf8_lossy(&body)
                    ),
                )
            })?;
        let (mut ws, mut _watch) = self.subscribe(&id).await?;
        let mut ask = serde_json::json!({ "message": prompt.text });
        if let Some(n) = prompt.max_tokens {
            ask["max_tokens"] = n.into();
        }
        if self.opts.usage {
            ask["usage"] = true.into();
        }
        self.request(
            rec,
            http::Method::POST,
            &format!("{base}/{id}/run"),
            ask.to_string().into_bytes(),
        )
        .await?;
        let mut relay = Relay::default();
        let outcome = loop {
            let why = match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    rec.bytes(crate::ws::frame_len(t.len()));
                    match relay.take(&t, rec, sink) {
                        Ok(true) => break Ok(()),
                        Ok(false) => continue,
                        Err(e) => break Err(e),
                    }
                }
                Some(Ok(Message::Close(c))) => format!("the gateway closed the WebSocket: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => format!("WebSocket read: {e}"),
                None => "the WebSocket ended".to_owned(),
            };
            match self.resubscribe(&id, &why).await {
                Ok(((w, watch), tries)) => {
                    (ws, _watch) = (w, watch);
                    relay.counts.reconnects += 1;
                    relay.counts.reconnect_tries += tries;
                }
                Err(e) => break Err(e),
            }
        };
        rec.relay(relay.counts);
        if let Some(ms) = relay.broker_median_ms() {
            rec.server_timing_ms("broker_ms", ms);
        }
        // Delete the session whatever happened; the gateway then closes the WebSocket.
        let deleted = self
            .request(
                rec,
                http::Method::DELETE,
                &format!("{base}/{id}"),
                Vec::new(),
            )
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        outcome?;
        deleted.map(|_| ())
    }

    async fn settle(&mut self, error: Option<&PromptError>) {
        if error.is_some() || self.opts.mode == Mode::Fresh {
            self.rest = None;
        }
    }

    async fn hang_up(&mut self) {
        self.rest = None;
    }
}

/// One answer's messages as they come.
#[derive(Default)]
struct Relay {
    counts: crate::record::RelayCounts,
    /// The next sequence number expected.
    next: u64,
    hops_us: Vec<u64>,
    failure: Option<PromptError>,
}

impl Relay {
    /// Takes one message: true at the answer's end.
    fn take(
        &mut self,
        text: &str,
        rec: &mut Recorder,
        sink: &mut TokenSink<'_>,
    ) -> Result<bool, PromptError> {
        let recv_err = |e: String| PromptError::new(ErrorCategory::Receive, e);
        match Msg::parse(text).map_err(recv_err)? {
            Msg::Token { seq, time, text } => {
                if seq < self.next {
                    return Err(recv_err(format!(
                        "token {seq} after token {}: the gateway repeated or reordered",
                        self.next - 1
                    )));
                }
                self.counts.lost += seq - self.next;
                self.next = seq + 1;
                self.counts.delivered += 1;
                self.hops_us.push(time);
                if self.failure.is_none() {
                    rec.token(text);
                    sink(text);
                }
                Ok(false)
            }
            Msg::End { count } => {
                self.counts.published = count;
                self.counts.lost += count.saturating_sub(self.next);
                self.failure.take().map_or(Ok(true), Err)
            }
            Msg::Usage(n) => {
                rec.usage(n);
                Ok(false)
            }
            Msg::Failed(why) => {
                self.failure = Some(PromptError::new(ErrorCategory::Upstream, why.to_owned()));
                Ok(false)
            }
            Msg::Ready | Msg::Closed => Err(recv_err(format!("unexpected message {text:?}"))),
        }
    }

    fn broker_median_ms(&self) -> Option<f64> {
        let mut v = self.hops_us.clone();
        v.sort_unstable();
        v.get(v.len() / 2).map(|&us| us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_the_end_count_lost_tokens_and_the_digest_covers_what_arrived() {
        let mut rec = Recorder::start();
        let mut relay = Relay::default();
        let got = std::sync::Mutex::new(Vec::new());
        let mut sink = |t: &str| got.lock().unwrap().push(t.to_owned());
        for m in ["t 0 10 a", "t 1 30 b", "t 4 20 c"] {
            assert!(!relay.take(m, &mut rec, &mut sink).unwrap());
        }
        assert!(relay.take("e 6", &mut rec, &mut sink).unwrap());
        assert_eq!(*got.lock().unwrap(), ["a", "b", "c"]);
        let c = relay.counts;
        assert_eq!((c.published, c.delivered, c.lost), (6, 3, 3));
        assert_eq!(relay.broker_median_ms(), Some(0.02));
        assert!(relay.take("t 2 1 late", &mut rec, &mut sink).is_err());
        let mut r2 = Relay::default();
        assert!(!r2.take("x upstream down", &mut rec, &mut sink).unwrap());
        let e = r2.take("e 0", &mut rec, &mut sink).unwrap_err();
        assert_eq!(e.category, ErrorCategory::Upstream);
    }
}
