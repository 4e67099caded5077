//! A client for an OpenAI-compatible upstream (the mock, Ollama, or any other), used by
//! the SSE and WebTransport servers to fetch tokens.
//!
//! It posts a streaming chat request, parses the SSE reply, and yields the content of
//! each chunk as one token, skipping empty deltas (role-only and finish chunks). It reads
//! every response to its end, so the pooled keep-alive connection is really reused.

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lab_codec::openai::{ChatChunk, ChatRequest, ErrorBody};
use lab_codec::sse;
use std::time::Duration;

/// How the upstream client connects: TCP, and TLS for an `https` upstream.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why the upstream did not deliver a complete answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream URL is not usable.
    #[error("invalid upstream URL '{url}': {why}")]
    BadUrl { url: String, why: String },
    /// No connection, or the request could not be sent.
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// The upstream answered with a non-success status.
    #[error("upstream returned HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// The response body broke off.
    #[error("upstream stream broke: {0}")]
    Body(String),
    /// The body was not the expected event stream of chat chunks.
    #[error("upstream sent something that is not a chat chunk: {0}")]
    Protocol(String),
    /// The stream ended without `data: [DONE]`.
    #[error("upstream stream ended without [DONE]")]
    Truncated,
    /// The upstream sent an error in the stream.
    #[error("upstream error: {0}")]
    Remote(String),
}

/// What a client asked of one answer beyond its prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatOptions {
    /// An answer of exactly this many tokens.
    pub answer_len: Option<u32>,
    /// The upstream's count of the answer's tokens, which [`TokenStream::usage`] then
    /// gives where the upstream sent one.
    pub usage: bool,
}

/// A pooled client for one upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<Connector, Full<Bytes>>,
    chat_uri: http::Uri,
    /// The model requested from the upstream.
    pub model: String,
    url: String,
    /// The sampling settings every request carries.
    sampling: lab_codec::openai::Sampling,
}

impl Upstream {
    /// `url` is the upstream's base, such as `http://127.0.0.1:11434` (a trailing `/v1` is
    /// accepted too). `https` upstreams are verified against the Web PKI roots.
    pub fn new(url: &str, model: &str, h2: bool) -> Result<Self, UpstreamError> {
        let chat_uri = chat_uri(url)?;
        Ok(Self {
            client: client(url, h2)?,
            chat_uri,
            model: model.to_owned(),
            url: url.to_owned(),
            sampling: Default::default(),
        })
    }

    /// Every request with these sampling settings.
    pub fn with_sampling(mut self, sampling: lab_codec::openai::Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// The base URL this client talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts a streaming chat for one user prompt, as `ask` asks: an answer of exactly
    /// `answer_len` tokens (`max_tokens` with `ignore_eos`) over the settings of every
    /// request, and the upstream's token count (`stream_options.include_usage`).
    pub async fn chat(&self, prompt: &str, ask: ChatOptions) -> Result<TokenStream, UpstreamError> {
        let sampling = self.sampling.answer_len(ask.answer_len);
        let mut req = ChatRequest::user(&self.model, prompt, true).with(sampling);
        if ask.usage {
            req.stream_options = Some(lab_codec::openai::StreamOptions {
                include_usage: true,
            });
        }
        let body = serde_json::to_vec(&req).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let req = http::Request::post(self.chat_uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            let msg = serde_json::from_str::<ErrorBody>(&text).map_or(text, |e| e.error.message);
            return Err(UpstreamError::Status {
                status: status.as_u16(),
                body: msg,
            });
        }
        Ok(TokenStream {
            body: resp.into_body(),
            dec: sse::Decoder::new(),
            done: false,
            ended: false,
            usage: None,
        })
    }
}

/// The upstream HTTP/2 connection's flow-control window, in bytes.
pub const UPSTREAM_H2_CONNECTION_WINDOW: u32 = 1 << 30;

/// A pooled HTTP client for an upstream at `url`: HTTP/1.1 with keep-alive, or with
/// `h2` HTTP/2 with prior knowledge (h2c) over plain HTTP, which multiplexes every
/// request on one connection (lab's mock speaks both; Ollama only HTTP/1.1). `https`
/// upstreams are verified against the Web PKI roots.
pub fn client<B>(url: &str, h2: bool) -> Result<Client<Connector, B>, UpstreamError>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = rustls::ClientConfig::builder_with_provider(lab_codec::trust::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::BadUrl {
            url: url.into(),
            why: e.to_string(),
        })?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector({
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            c.enforce_http(false);
            c.set_connect_timeout(Some(Duration::from_secs(10)));
            c
        });
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(h2)
        // One HTTP/2 connection carries every stream of a load test. h2 counts the small
        // DATA frames (a token each) held unread against a budget of half the
        // connection window and ends the connection with ENHANCE_YOUR_CALM
        // ("too_many_data_frames") past it; hyper's 5 MB window ran out at 10,000
        // streams. 1 GiB (the budget 512 MiB) holds what the streams have in flight.
        .http2_initial_connection_window_size(UPSTREAM_H2_CONNECTION_WINDOW)
        .build(https))
}

fn chat_uri(url: &str) -> Result<http::Uri, UpstreamError> {
    let bad = |why: &str| UpstreamError::BadUrl {
        url: url.into(),
        why: why.into(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("not a URL; expected e.g. http://127.0.0.1:11434"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    let base = uri.path().trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    http::Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(authority)
        .path_and_query(format!("{base}/v1/chat/completions"))
        .build()
        .map_err(|e| bad(&e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The most tokens [`TokenStream::next_batch`] puts in one batch: at most a few
/// kilobytes a write, so that no token waits long behind a burst.
pub const BATCH_MAX: usize = 64;

/// The tokens of one upstream answer.
#[derive(Debug)]
pub struct TokenStream {
    body: Incoming,
    dec: sse::Decoder,
    /// `[DONE]` was decoded; the body may still need draining.
    done: bool,
    ended: bool,
    /// The upstream's count of the answer's tokens, once a chunk carried it.
    usage: Option<u64>,
}

impl TokenStream {
    /// The upstream's count of the answer's tokens (`usage.completion_tokens`), if it
    /// sent one (when asked, in the chunk before `[DONE]`).
    pub fn usage(&self) -> Option<u64> {
        self.usage
    }

    /// The next non-empty content token; `Ok(None)` after `[DONE]`.
    pub async fn next(&mut self) -> Result<Option<String>, UpstreamError> {
        loop {
            if let Some(t) = self.ready_token()? {
                return Ok(Some(t));
            }
            if self.done {
                if !self.ended {
                    self.ended = true;
                    // Drain to the end so the connection goes back to the pool.
                    while let Some(f) = self.body.frame().await {
                        f.map_err(|e| UpstreamError::Body(e.to_string()))?;
                    }
                }
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        self.dec.extend(d);
                    }
                }
                Some(Err(e)) => return Err(UpstreamError::Body(error_chain(&e))),
                None => return Err(UpstreamError::Truncated),
            }
        }
    }

    /// The next tokens to write together, into `batch` (cleared first): the next token,
    /// waiting for it, then those that have arrived behind it, up to [`BATCH_MAX`].
    /// `Ok(true)` with tokens, `Ok(false)` after `[DONE]` with none; on an error, the
    /// tokens that came before it are in `batch`.
    ///
    /// hyper hands an HTTP/1.1 body over one chunk at a time (one token, from an
    /// OpenAI-compatible server), and its connection task decodes the next chunk only
    /// once the last was taken. So where nothing is decoded yet this yields to the
    /// runtime once, for that task to hand over a chunk that is already in its buffer;
    /// only a yield that brings nothing ends the batch. At any real pace each token is
    /// still a batch of its own; at full speed, 64 tokens a write take the place of one.
    pub async fn next_batch(&mut self, batch: &mut Vec<String>) -> Result<bool, UpstreamError> {
        batch.clear();
        match self.next().await? {
            Some(t) => batch.push(t),
            None => return Ok(false),
        }
        while batch.len() < BATCH_MAX {
            let t = match self.ready_token()? {
                Some(t) => t,
                None if self.done => break,
                None => {
                    tokio::task::yield_now().await;
                    match self.ready_token()? {
                        Some(t) => t,
                        None => break,
                    }
                }
            };
            batch.push(t);
        }
        Ok(true)
    }

    /// A token that has already arrived, without waiting for the network.
    fn ready_token(&mut self) -> Result<Option<String>, UpstreamError> {
        while !self.done {
            let Some(ev) = self
                .dec
                .next_event()
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?
            else {
                // Take body frames that are already here (hyper yields one per HTTP chunk),
                // but never wait for one.
                match self.body.frame().now_or_never() {
                    Some(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            self.dec.extend(d);
                        }
                        continue;
                    }
                    Some(Some(Err(e))) => return Err(UpstreamError::Body(error_chain(&e))),
                    Some(None) => return Err(UpstreamError::Truncated),
                    None => return Ok(None),
                }
            };
            if ev.is_done() {
                self.done = true;
                break;
            }
            if ev.kind() == "error" {
                return Err(UpstreamError::Remote(ev.data));
            }
            match serde_json::from_str::<ChatChunk>(&ev.data) {
                Ok(c) => {
                    if let Some(u) = &c.usage {
                        self.usage = Some(u.completion_tokens);
                    }
                    if let Some(t) = c.content() {
                        return Ok(Some(t.to_owned()));
                    }
                }
                Err(e) => {
                    if let Ok(err) = serde_json::from_str::<ErrorBody>(&ev.data) {
                        return Err(UpstreamError::Remote(err.error.message));
                    }
                    return Err(UpstreamError::Protocol(format!(
                        "{e}: {}",
                        truncate(&ev.data, 200)
                    )));
                }
            }
        }
        Ok(None)
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_uri_accepts_base_or_v1() {
        for u in [
            "http://127.0.0.1:11434",
            "http://127.0.0.1:11434/",
            "http://127.0.0.1:11434/v1",
            "http://127.0.0.1:11434/v1/",
        ] {
            assert_eq!(
                chat_uri(u).unwrap().to_string(),
                "http://127.0.0.1:11434/v1/chat/completions",
                "{u}"
            );
        }
        assert_eq!(
            chat_uri("https://h/api/v1").unwrap().to_string(),
            "https://h/api/v1/chat/completions"
        );
    }

    #[test]
    fn bad_urls_are_named() {
        for u in ["ftp://x", "127.0.0.1:11434", "not a url"] {
            let e = chat_uri(u).unwrap_err().to_string();
            assert!(e.contains(u), "{e}");
        }
    }
}
