//! The WebTransport datagram runner (`wt-dgram`): the prompt goes on a bidirectional
//! stream as on `wt`; each token comes back in a datagram, `<stream id><sequence><token>`,
//! and the answer's end on the stream as the server's tally and `0:`
//! ([`lab_codec::dgram`]).
//!
//! One task per session reads its datagrams and hands each to the prompt whose stream it
//! names ([`Router`]). A prompt's answer closes when every token of the tally has
//! arrived, or, with some missing, one round trip (at least 5 ms, at most 1 s) after the
//! stream ended: a datagram sent before the tally may still be on its way. What has not
//! arrived by then counts as lost. Lost tokens are not an error: the record counts them.

use crate::TokenSink;
use crate::record::{ErrorCategory, PromptError, Recorder};
use crate::streams::{ReadError, Recv};
use lab_codec::dgram::{self, Tally};
use lab_codec::lenprefix::{self, Frame};
use lab_codec::wt::ERR_UPSTREAM;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A token for a prompt: (sequence number, token, the datagram's bytes), or why its
/// datagram was bad.
type Item = Result<(u64, String, usize), String>;

/// Hands a session's datagrams to the prompts waiting for them, by stream id.
#[derive(Default)]
pub struct Router {
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Item>>>,
}

/// A prompt's place in the router: its datagrams arrive on `rx` until it is dropped.
pub struct Ticket {
    router: Arc<Router>,
    stream: u64,
    rx: mpsc::UnboundedReceiver<Item>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut w) = self.router.waiting.lock() {
            w.remove(&self.stream);
        }
    }
}

impl Router {
    /// Starts reading `conn`'s datagrams; the task ends with the session.
    pub fn start(conn: wtransport::Connection) -> Arc<Self> {
        let router = Arc::new(Self::default());
        let r = router.clone();
        tokio::spawn(async move {
            while let Ok(d) = conn.receive_datagram().await {
                r.route(&d.payload());
            }
        });
        router
    }

    /// Takes the datagrams for `stream` from now on. Call it before the prompt goes out.
    pub fn ticket(self: &Arc<Self>, stream: u64) -> Ticket {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(stream, tx);
        }
        Ticket {
            router: self.clone(),
            stream,
            rx,
        }
    }

    fn route(&self, payload: &[u8]) {
        let (stream, item) = match dgram::decode(payload) {
            Ok(t) => (t.stream, Ok((t.seq, t.token.to_owned(), payload.len()))),
            Err(e @ dgram::DgramError::NotUtf8 { stream, .. }) => (stream, Err(e.to_string())),
            Err(e) => {
                tracing::debug!("a datagram no prompt can take: {e}");
                return;
            }
        };
        let tx = self
            .waiting
            .lock()
            .ok()
            .and_then(|w| w.get(&stream).cloned());
        match tx {
            Some(tx) => {
                let _ = tx.send(item);
            }
            // A prompt's answer closed before this datagram came: it counted as lost.
            None => tracing::debug!("a datagram for stream {stream}, whose answer is closed"),
        }
    }
}

/// Reads one answer: tokens from `ticket`, the tally and end from `recv`. `rtt` bounds
/// the wait for datagrams still on their way after the stream ended.
pub async fn read_answer(
    mut recv: impl Recv,
    mut ticket: Ticket,
    rtt: Duration,
    rec: &mut Recorder,
    sink: &mut TokenSink<'_>,
) -> Result<(), PromptError> {
    let recv_err = |e: String| PromptError::new(ErrorCategory::Receive, e);
    let mut dec = lenprefix::Decoder::new();
    let mut buf = vec![0u8; 4 * 1024];
    let mut tally: Option<Tally> = None;
    let mut ended = false;
    let mut stream_done = false;
    let grace = rtt.clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut deadline = tokio::time::Instant::now();
    loop {
        if stream_done && tally.is_some_and(|t| rec.datagrams_delivered() >= t.tokens) {
            break;
        }
        tokio::select! {
            d = ticket.rx.recv() => match d {
                Some(Ok((seq, tok, len))) => {
                    if let Some(t) = tally && seq >= t.tokens {
                        return Err(recv_err(format!(
                            "datagram with sequence number {seq}, past the tally's {} tokens",
                            t.tokens
                        )));
                    }
                    if !rec.datagram_token(seq, &tok) {
                        return Err(recv_err(format!("datagram sequence number {seq} came twice")));
                    }
                    rec.bytes(len);
                    sink(&tok);
                }
                Some(Err(e)) => return Err(recv_err(e)),
                // The session ended; the stream says how.
                None => {
                    if stream_done {
                        break;
                    }
                }
            },
            r = recv.read(&mut buf), if !stream_done => match r {
                Ok(Some(n)) => {
                    rec.bytes(n);
                    dec.extend(&buf[..n]);
                    while let Some(f) = dec.next_frame().map_err(|e| recv_err(e.to_string()))? {
                        match f {
                            Frame::Message(m) if tally.is_none() && !ended => {
                                let t = Tally::parse(&m).map_err(recv_err)?;
                                rec.datagram_tally(t.tokens, t.bytes);
                                tally = Some(t);
                            }
                            Frame::Message(_) if ended => {
                                return Err(recv_err("a message after the end marker 0:".into()));
                            }
                            Frame::Message(_) => {
                                return Err(recv_err("a second tally before the end marker 0:".into()));
                            }
                            Frame::End if tally.is_none() => {
                                return Err(recv_err("the end marker 0: before the datagram tally".into()));
                            }
                            Frame::End => ended = true,
                        }
                    }
                }
                Ok(None) => {
                    dec.finish().map_err(|e| recv_err(e.to_string()))?;
                    if !ended {
                        return Err(recv_err("stream finished before the end marker 0:".into()));
                    }
                    stream_done = true;
                    deadline = tokio::time::Instant::now() + grace;
                }
                Err(ReadError::Reset(code)) if code == u64::from(ERR_UPSTREAM) => {
                    return Err(PromptError::new(
                        ErrorCategory::Upstream,
                        "server reset the stream: upstream failed",
                    ));
                }
                Err(ReadError::Reset(code)) if code == u64::from(dgram::ERR_DATAGRAM) => {
                    return Err(recv_err(
                        "server reset the stream: a token did not fit in a datagram, or datagrams are off".into(),
                    ));
                }
                Err(ReadError::Reset(code)) => {
                    return Err(recv_err(format!("server reset the stream (code {code:#x})")));
                }
                Err(ReadError::Other(e)) => return Err(recv_err(format!("stream read: {e}"))),
            },
            () = tokio::time::sleep_until(deadline), if stream_done => break,
        }
    }
    Ok(())
}

/// The WebTransport datagram runner for `target` (its path is the session path).
pub fn runner(
    target: crate::Target,
    opts: &crate::RunnerOpts,
) -> anyhow::Result<Box<dyn crate::Runner>> {
    Ok(Box::new(crate::wt::WtRunner::new(
        target,
        opts,
        crate::wt::Answers::Datagrams,
    )?))
}
