//! One prompt on a QUIC stream (WebTransport's or raw QUIC's), whatever library carries
//! it: the client writes `<len>:<prompt>` and finishes its side; the server answers with
//! `<len>:<token>` messages, then `0:` (never counted as a token), then finishes.

use crate::TokenSink;
use crate::record::{ErrorCategory, PromptError, Recorder};
use bytes::BytesMut;
use lab_codec::lenprefix::{self, Frame};
use lab_codec::wt::{ERR_UPSTREAM, URGENT, USAGE, answer_len_message, parse_usage};
use std::future::Future;

/// Why a stream read failed.
pub enum ReadError {
    /// The server reset the stream with this code.
    Reset(u64),
    Other(String),
}

/// The sending half of a QUIC stream.
pub trait Send {
    fn write_all(
        &mut self,
        b: &[u8],
    ) -> impl Future<Output = Result<(), String>> + std::marker::Send;
    /// Ends the stream (what was written still goes out).
    fn finish(&mut self) -> impl Future<Output = Result<(), String>> + std::marker::Send;
}

/// The receiving half of a QUIC stream.
pub trait Recv {
    fn read(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<Option<usize>, ReadError>> + std::marker::Send;
}

/// Writes `<len>:<prompt>` (after the [`URGENT`] message if `urgent`, and the
/// answer-length message if the prompt sets its answer's length) and finishes the
/// client's side of the stream.
pub async fn send_prompt(
    send: &mut impl Send,
    prompt: &crate::Prompt,
    urgent: bool,
    usage: bool,
) -> Result<(), PromptError> {
    let send_err = |e: String| PromptError::new(ErrorCategory::Send, e);
    let mut out = BytesMut::new();
    if urgent {
        lenprefix::encode(URGENT, &mut out).map_err(|e| send_err(e.to_string()))?;
    }
    if usage {
        lenprefix::encode(USAGE, &mut out).map_err(|e| send_err(e.to_string()))?;
    }
    if let Some(n) = prompt.max_tokens {
        lenprefix::encode(&answer_len_message(n), &mut out).map_err(|e| send_err(e.to_string()))?;
    }
    lenprefix::encode(prompt.text.as_bytes(), &mut out).map_err(|e| send_err(e.to_string()))?;
    send.write_all(&out)
        .await
        .map_err(|e| send_err(format!("write prompt: {e}")))?;
    send.finish()
        .await
        .map_err(|e| send_err(format!("finish stream: {e}")))
}

/// Reads an answer to its end marker `0:` and the stream's end, recording every token.
pub async fn read_answer(
    mut recv: impl Recv,
    rec: &mut Recorder,
    sink: &mut TokenSink<'_>,
) -> Result<(), PromptError> {
    let recv_err = |e: String| PromptError::new(ErrorCategory::Receive, e);
    let mut dec = lenprefix::Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut ended = false;
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                rec.bytes(n);
                dec.extend(&buf[..n]);
                while let Some(f) = dec.next_frame().map_err(|e| recv_err(e.to_string()))? {
                    match f {
                        Frame::Message(m) if !ended => {
                            if let Some(n) = parse_usage(&m) {
                                rec.usage(n.map_err(recv_err)?);
                                continue;
                            }
                            let t = String::from_utf8_lossy(&m);
                            rec.token(&t);
                            sink(&t);
                        }
                        Frame::Message(_) => {
                            return Err(recv_err("token after the end marker 0:".into()));
                        }
                        Frame::End => ended = true,
                    }
                }
            }
            Ok(None) => break,
            Err(ReadError::Reset(code)) if code == u64::from(ERR_UPSTREAM) => {
                return Err(PromptError::new(
                    ErrorCategory::Upstream,
                    "server reset the stream: upstream failed",
                ));
            }
            Err(ReadError::Reset(code)) => {
                return Err(recv_err(format!(
                    "server reset the stream (code {code:#x})"
                )));
            }
            Err(ReadError::Other(e)) => return Err(recv_err(format!("stream read: {e}"))),
        }
    }
    dec.finish().map_err(|e| recv_err(e.to_string()))?;
    if !ended {
        return Err(recv_err("stream finished before the end marker 0:".into()));
    }
    Ok(())
}

impl Send for wtransport::SendStream {
    async fn write_all(&mut self, b: &[u8]) -> Result<(), String> {
        wtransport::SendStream::write_all(self, b)
            .await
            .map_err(|e| e.to_string())
    }
    async fn finish(&mut self) -> Result<(), String> {
        wtransport::SendStream::finish(self)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Recv for wtransport::RecvStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        use wtransport::error::StreamReadError;
        wtransport::RecvStream::read(self, buf)
            .await
            .map_err(|e| match e {
                // wtransport 0.7 hands over the code as it came: lab's servers send
                // WebTransport codes in the HTTP/3 range; a raw one is taken as it is.
                StreamReadError::Reset(code) => {
                    let c = code.into_inner();
                    ReadError::Reset(lab_codec::wt::from_http3(c).map_or(c, u64::from))
                }
                e => ReadError::Other(e.to_string()),
            })
    }
}

use wtransport::quinn;

impl Send for quinn::SendStream {
    async fn write_all(&mut self, b: &[u8]) -> Result<(), String> {
        quinn::SendStream::write_all(self, b)
            .await
            .map_err(|e| match e {
                quinn::WriteError::ConnectionLost(c) => format!("connection lost: {c}"),
                e => e.to_string(),
            })
    }
    async fn finish(&mut self) -> Result<(), String> {
        quinn::SendStream::finish(self).map_err(|e| e.to_string())
    }
}

impl Recv for quinn::RecvStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        quinn::RecvStream::read(self, buf)
            .await
            .map_err(|e| match e {
                quinn::ReadError::Reset(code) => ReadError::Reset(code.into_inner()),
                // quinn's own words are "connection lost"; say how it was lost.
                quinn::ReadError::ConnectionLost(c) => {
                    ReadError::Other(format!("connection lost: {c}"))
                }
                e => ReadError::Other(e.to_string()),
            })
    }
}

impl Send for web_transport_quinn::SendStream {
    async fn write_all(&mut self, b: &[u8]) -> Result<(), String> {
        web_transport_quinn::SendStream::write_all(self, b)
            .await
            .map_err(|e| e.to_string())
    }
    async fn finish(&mut self) -> Result<(), String> {
        web_transport_quinn::SendStream::finish(self).map_err(|e| e.to_string())
    }
}

impl Recv for web_transport_quinn::RecvStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        web_transport_quinn::RecvStream::read(self, buf)
            .await
            .map_err(|e| match e {
                web_transport_quinn::ReadError::Reset(code) => ReadError::Reset(u64::from(code)),
                // A code outside the WebTransport range: a server that sends codes raw.
                web_transport_quinn::ReadError::InvalidReset(code) => {
                    ReadError::Reset(code.into_inner())
                }
                e => ReadError::Other(e.to_string()),
            })
    }
}
