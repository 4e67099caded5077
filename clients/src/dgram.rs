//! WebTransport answers whose tokens come in datagrams (`wt-dgram`, `wtq-dgram`): the
//! prompt goes on a bidirectional stream as on `wt`; each token comes back in a
//! datagram, `<stream id><sequence><token>`, and the answer's end on the stream as the
//! server's tally and `0:` ([`lab_codec::dgram`]).
//!
//! One task per session reads its datagrams and hands each to the prompt whose stream it
//! names ([`Router`]). A prompt's answer closes when every token of the tally has
//! arrived, or, with some missing, two round trips (at least 25 ms, at most 1 s) after the
//! stream ended: a datagram sent before the tally may still be on its way. What has not
//! arrived by then counts as lost. Lost tokens are not an error: the record counts them.

use crate::TokenSink;
use crate::record::{ErrorCategory, PromptError, Recorder};
use crate::stats::Late;
use crate::streams::{ReadError, Recv};
use lab_codec::dgram::{self, Tally};
use lab_codec::lenprefix::{self, Frame};
use lab_codec::wt::ERR_UPSTREAM;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A WebTransport session's incoming datagrams, whatever library carries it.
pub trait Datagrams: Send + 'static {
    /// The next datagram's payload; `None` once the session has ended.
    fn receive(&self) -> impl std::future::Future<Output = Option<bytes::Bytes>> + Send;
}

impl Datagrams for wtransport::Connection {
    async fn receive(&self) -> Option<bytes::Bytes> {
        self.receive_datagram().await.ok().map(|d| d.payload())
    }
}

impl Datagrams for web_transport_quinn::Session {
    async fn receive(&self) -> Option<bytes::Bytes> {
        self.read_datagram().await.ok()
    }
}

/// A token for a prompt: (sequence number, token, the datagram's bytes), or why its
/// datagram was bad.
type Item = Result<(u64, String, usize), String>;

/// Hands a session's datagrams to the prompts waiting for them, by stream id.
#[derive(Default)]
pub struct Router {
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Item>>>,
    late: Arc<Late>,
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
    /// Starts reading `conn`'s datagrams, counting in `late` those that come after their
    /// answer closed; the task ends with the session. It runs on `rt`, the runtime of
    /// the session's endpoint where that has one of its own, so that each datagram is
    /// read where the connection's driver put it.
    pub fn start(
        conn: impl Datagrams,
        late: Arc<Late>,
        rt: Option<&tokio::runtime::Handle>,
    ) -> Arc<Self> {
        let router = Arc::new(Self {
            late,
            ..Self::default()
        });
        let r = router.clone();
        let task = async move {
            while let Some(d) = conn.receive().await {
                r.route(&d);
            }
        };
        match rt {
            Some(rt) => drop(rt.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
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
            // A prompt's answer closed before this datagram came: it counted as lost, and
            // the session's statistics count it late.
            None => {
                if let Ok((_, tok, _)) = &item {
                    self.late.add(tok.len() as u64);
                }
                tracing::debug!("a datagram for stream {stream}, whose answer is closed");
            }
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
    // Two round trips, and at least 25 ms: on a loaded machine the task that routes the
    // datagrams can run some milliseconds after the stream's end was read.
    let grace = (2 * rtt).clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut deadline = tokio::time::Instant::now();
    // The highest sequence number so far: the tally's count bounds it.
    let mut highest: Option<u64> = None;
    let past_tally = |highest: Option<u64>, tally: Option<Tally>| match (highest, tally) {
        (Some(h), Some(t)) if h >= t.tokens => Err(recv_err(format!(
            "datagram with sequence number {h}, past the tally's {} tokens",
            t.tokens
        ))),
        _ => Ok(()),
    };
    loop {
        if stream_done && tally.is_some_and(|t| rec.datagrams_delivered() >= t.tokens) {
            break;
        }
        tokio::select! {
            d = ticket.rx.recv() => match d {
                Some(Ok((seq, tok, len))) => {
                    highest = highest.max(Some(seq));
                    past_tally(highest, tally)?;
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
                        if let Frame::Message(m) = &f
                            && let Some(n) = lab_codec::wt::parse_usage(m)
                            && !ended
                        {
                            rec.usage(n.map_err(recv_err)?);
                            continue;
                        }
                        match f {
                            Frame::Message(m) if tally.is_none() && !ended => {
                                let t = Tally::parse(&m).map_err(recv_err)?;
                                rec.datagram_tally(t.tokens, t.bytes);
                                tally = Some(t);
                                past_tally(highest, tally)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Mode, PromptRecord};
    use bytes::BytesMut;

    /// A request stream's receive side that yields `bytes`, then its end.
    struct Stream(Option<Vec<u8>>);

    impl Recv for Stream {
        async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
            match self.0.take() {
                Some(b) => {
                    buf[..b.len()].copy_from_slice(&b);
                    Ok(Some(b.len()))
                }
                None => Ok(None),
            }
        }
    }

    fn datagram(stream: u64, seq: u64, token: &str) -> Vec<u8> {
        let mut out = Vec::new();
        dgram::encode(&dgram::Token { stream, seq, token }, &mut out).unwrap();
        out
    }

    fn tally_then_end(tokens: u64, bytes: u64) -> Vec<u8> {
        let mut out = BytesMut::new();
        let t = Tally { tokens, bytes }.message();
        lenprefix::encode(t.as_bytes(), &mut out).unwrap();
        out.extend_from_slice(lenprefix::END);
        out.to_vec()
    }

    /// Routes `datagrams` (to stream 4) before the answer is read, then reads it with
    /// `stream` as the request stream's bytes.
    async fn answer(
        datagrams: &[Vec<u8>],
        stream: Vec<u8>,
    ) -> (Result<(), PromptError>, PromptRecord) {
        let router = Arc::new(Router::default());
        let ticket = router.ticket(4);
        for d in datagrams {
            router.route(d);
        }
        let mut rec = Recorder::start();
        let mut sink = |_: &str| {};
        let r = read_answer(
            Stream(Some(stream)),
            ticket,
            Duration::from_millis(1),
            &mut rec,
            &mut sink,
        )
        .await;
        (r, rec.finish("wt-dgram", Mode::Reuse, 0, "p", None))
    }

    #[tokio::test]
    async fn counts_reordered_and_lost_tokens_and_digests_in_order() {
        // All three, the last two swapped: whole, one reordered, digest as if in order.
        let d = [
            datagram(4, 0, "a"),
            datagram(4, 2, "c"),
            datagram(4, 1, "b"),
        ];
        let (r, rec) = answer(&d, tally_then_end(3, 3)).await;
        r.unwrap();
        let c = rec.datagrams.unwrap();
        assert_eq!((c.sent, c.delivered, c.lost, c.reordered), (3, 3, 0, 1));
        assert_eq!(rec.digest, crate::record::digest_tokens(&["a", "b", "c"]));
        assert!(rec.whole());
        // The middle one lost: counted after the grace, not an error.
        let d = [datagram(4, 0, "a"), datagram(4, 2, "c")];
        let (r, rec) = answer(&d, tally_then_end(3, 3)).await;
        r.unwrap();
        let c = rec.datagrams.unwrap();
        assert_eq!((c.sent, c.sent_bytes, c.delivered, c.lost), (3, 3, 2, 1));
        assert_eq!(rec.tokens, 2);
        assert!(!rec.whole());
        // A datagram for another stream is not this answer's.
        let d = [datagram(8, 0, "x"), datagram(4, 0, "a")];
        let (r, rec) = answer(&d, tally_then_end(1, 1)).await;
        r.unwrap();
        assert_eq!(rec.tokens, 1);
    }

    #[tokio::test]
    async fn bad_answers_are_receive_errors_that_say_what_is_wrong() {
        let tally = tally_then_end(2, 2);
        for (datagrams, stream, want) in [
            (
                vec![datagram(4, 0, "a"), datagram(4, 0, "a")],
                tally.clone(),
                "came twice",
            ),
            (
                vec![datagram(4, 5, "a")],
                tally.clone(),
                "past the tally's 2 tokens",
            ),
            (vec![vec![4, 0, 0xff]], tally.clone(), "not UTF-8"),
            (vec![], b"0:".to_vec(), "before the datagram tally"),
            (vec![], b"3:a b0:".to_vec(), "expected the datagram tally"),
            (vec![], b"3:2 20:1:x".to_vec(), "after the end marker"),
            (vec![], b"3:2 2".to_vec(), "before the end marker"),
            (vec![], b"x".to_vec(), "length prefix"),
        ] {
            let (r, _) = answer(&datagrams, stream).await;
            let e = r.unwrap_err();
            assert_eq!(e.category, ErrorCategory::Receive, "{want}: {e}");
            assert!(e.message.contains(want), "{want}: {e}");
        }
        // A datagram cut inside its ids is dropped without failing anyone.
        let (r, rec) = answer(&[vec![0x40]], tally_then_end(0, 0)).await;
        r.unwrap();
        assert_eq!(rec.tokens, 0);
    }
}
