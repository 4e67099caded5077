//! The mock LLM: an OpenAI-compatible server that is byte-faithful to Ollama.
//!
//! It answers `POST /v1/chat/completions` (streaming or not, with
//! `stream_options.include_usage`) and `GET /v1/models`, over plain HTTP/1.1 with
//! keep-alive, the way Ollama does (see shared/reference/ollama-stream.md):
//! - the response head leaves together with the first token's chunk;
//! - one HTTP chunk (lowercase hex length) per token, flushed when the next token is not
//!   yet due (so at TBT 0 chunks coalesce into large writes, and at any real TBT each
//!   token is its own write);
//! - finish, usage and `[DONE]` events in one last chunk, written with `0\r\n\r\n`.
//!
//! The HTTP layer is small and written here on top of `httparse` because hyper cannot be
//! made to write Go's byte layout (lowercase chunk sizes, header order, head+first chunk).
//! Answers come from [`crate::textgen`]: a pure function of (seed, model, prompt).

use crate::stats::ServerStats;
use crate::textgen::{self, Schedule};
use anyhow::Result;
use bytes::{Buf, BytesMut};
use lab_codec::openai::{self, ChatRequest, ChunkWriter, ErrorBody, StreamFormat, Usage};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Mock LLM settings.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub format: StreamFormat,
    /// Time to first token.
    pub ttft: Duration,
    /// Time between tokens.
    pub tbt: Duration,
    /// Each interval is scaled by a factor uniform in [1 - jitter, 1 + jitter].
    pub jitter: f64,
    pub seed: u64,
    /// Models listed by `/v1/models`; the first is used when a request names none.
    pub models: Vec<String>,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Caps every answer's length (a request's own `max_tokens` can cap it further).
    pub max_tokens: Option<usize>,
    /// Deadlines for slow and idle clients.
    pub limits: crate::Limits,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            format: StreamFormat::OllamaLegacy,
            ttft: Duration::from_millis(250),
            tbt: Duration::from_millis(35),
            jitter: 0.1,
            seed: 1,
            models: vec!["gemma3:12b".into()],
            max_body: 1 << 20,
            max_tokens: None,
            limits: crate::Limits::default(),
        }
    }
}

const MAX_HEAD: usize = 64 * 1024;
/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_HEADERS: usize = 64;

/// Serves the mock on an already-bound listener until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    cfg: Arc<MockConfig>,
    stats: Arc<ServerStats>,
) -> Result<()> {
    loop {
        let (stream, _) = crate::http::accept(&listener, "mock llm: accept").await;
        let _ = stream.set_nodelay(true);
        stats.connection_opened();
        let (cfg, stats) = (cfg.clone(), stats.clone());
        tokio::spawn(async move {
            let mut conn = Conn::new(stream, cfg, stats.clone());
            let r = match conn.sniff_h2().await {
                Ok(true) => h2c(conn).await,
                Ok(false) => conn.run().await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::debug!("mock llm connection ended: {e}");
            }
            stats.connection_closed();
        });
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    http10: bool,
    close: bool,
    content_length: Option<usize>,
    chunked: bool,
    expect_continue: bool,
    origin: Option<String>,
}

enum Parsed {
    Head(Head, usize),
    Partial,
    Invalid(String),
    /// The head is over 64 KiB or has more than 64 fields: 431.
    TooLarge(String),
}

fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Parsed::TooLarge("request head over 64 KiB".into());
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::TooLarge("request head over 64 KiB".into());
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::TooLarge(format!("more than {MAX_HEADERS} header fields"));
        }
        Err(e) => return Parsed::Invalid(format!("malformed HTTP request: {e}")),
    };
    let http10 = req.version == Some(0);
    let mut head = Head {
        method: req.method.unwrap_or("").to_owned(),
        path: req.path.unwrap_or("").to_owned(),
        http10,
        close: http10,
        content_length: None,
        chunked: false,
        expect_continue: false,
        origin: None,
    };
    for h in req.headers.iter() {
        let v = String::from_utf8_lossy(h.value);
        let v = v.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            match v.parse::<usize>() {
                Ok(n) if head.content_length.is_none_or(|c| c == n) => {
                    head.content_length = Some(n)
                }
                _ => return Parsed::Invalid(format!("invalid Content-Length '{v}'")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if v.eq_ignore_ascii_case("chunked") {
                head.chunked = true;
            } else {
                return Parsed::Invalid(format!("unsupported Transfer-Encoding '{v}'"));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in v.split(',').map(str::trim) {
                if t.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") && http10 {
                    head.close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            head.expect_continue = v.eq_ignore_ascii_case("100-continue");
        } else if h.name.eq_ignore_ascii_case("origin") {
            head.origin = Some(v.to_owned());
        }
    }
    if head.chunked && head.content_length.is_some() {
        return Parsed::Invalid("both Content-Length and Transfer-Encoding given".into());
    }
    Parsed::Head(head, n)
}

enum BodyError {
    TooLarge,
    Invalid(String),
    Io,
}

struct Conn<S> {
    io: S,
    buf: BytesMut,
    cfg: Arc<MockConfig>,
    stats: Arc<ServerStats>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S, cfg: Arc<MockConfig>, stats: Arc<ServerStats>) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(8192),
            cfg,
            stats,
        }
    }

    /// Reads more bytes; `Ok(false)` at EOF. Gives up when nothing arrives for the idle
    /// timeout.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let idle = self.cfg.limits.idle;
        self.fill_by(Instant::now() + idle).await
    }

    /// Reads more bytes, giving up at `deadline`.
    async fn fill_by(&mut self, deadline: Instant) -> std::io::Result<bool> {
        let n = tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline"))??;
        Ok(n > 0)
    }

    /// Whether the client opened with HTTP/2's connection preface (prior knowledge,
    /// h2c): what lab's servers do in a load test, so that thousands of streams share
    /// one upstream connection. The bytes read stay in the buffer either way.
    async fn sniff_h2(&mut self) -> std::io::Result<bool> {
        let by = Instant::now() + self.cfg.limits.header;
        while self.buf.len() < H2_PREFACE.len() {
            if !H2_PREFACE.starts_with(&self.buf) {
                return Ok(false);
            }
            if !self.fill_by(by).await? {
                return Ok(false);
            }
        }
        Ok(self.buf.starts_with(H2_PREFACE))
    }

    async fn run(mut self) -> std::io::Result<()> {
        loop {
            // Each request's head must be complete within the header deadline of the
            // moment the server is ready for it: the connection's start, or the end of
            // the previous answer (as hyper does for the other servers).
            let head_by = Instant::now() + self.cfg.limits.header;
            let head = loop {
                match parse_head(&self.buf) {
                    Parsed::Head(h, n) => {
                        self.buf.advance(n);
                        break h;
                    }
                    Parsed::Invalid(msg) => {
                        let r = Reply::error(400, "invalid_request_error", &msg).closing();
                        return self.write_reply(r, None).await;
                    }
                    Parsed::TooLarge(msg) => {
                        let r = Reply::error(431, "invalid_request_error", &msg).closing();
                        return self.write_reply(r, None).await;
                    }
                    Parsed::Partial => {
                        if !self.fill_by(head_by).await? {
                            return Ok(());
                        }
                    }
                }
            };
            self.stats.request();
            let body = match self.read_body(&head).await {
                Ok(b) => b,
                Err(BodyError::TooLarge) => {
                    let msg = format!(
                        "request body is over the limit of {} bytes",
                        self.cfg.max_body
                    );
                    let r = Reply::error(413, "invalid_request_error", &msg).closing();
                    return self.write_reply(r, head.origin.as_deref()).await;
                }
                Err(BodyError::Invalid(msg)) => {
                    let r = Reply::error(400, "invalid_request_error", &msg).closing();
                    return self.write_reply(r, head.origin.as_deref()).await;
                }
                Err(BodyError::Io) => return Ok(()),
            };
            let keep = !head.close;
            match route(&self.cfg, &head, &body) {
                Route::Reply(r) => {
                    let r = if keep { r } else { r.closing() };
                    self.write_reply(r, head.origin.as_deref()).await?;
                }
                Route::Stream(req, include_usage) => {
                    self.stream(&head, req, include_usage).await?;
                }
                Route::Complete(req) => {
                    let r = complete(&self.cfg, &self.stats, req).await;
                    let r = if keep { r } else { r.closing() };
                    self.write_reply(r, head.origin.as_deref()).await?;
                }
            }
            if !keep {
                let _ = self.io.shutdown().await;
                return Ok(());
            }
        }
    }

    async fn read_body(&mut self, head: &Head) -> Result<Vec<u8>, BodyError> {
        let max = self.cfg.max_body;
        if let Some(n) = head.content_length {
            if n > max {
                return Err(BodyError::TooLarge);
            }
            if head.expect_continue && self.buf.len() < n {
                self.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .map_err(|_| BodyError::Io)?;
            }
            while self.buf.len() < n {
                if !self.fill().await.map_err(|_| BodyError::Io)? {
                    return Err(BodyError::Io);
                }
            }
            return Ok(self.buf.split_to(n).to_vec());
        }
        if !head.chunked {
            return Ok(Vec::new());
        }
        if head.expect_continue {
            self.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| BodyError::Io)?;
        }
        let mut body = Vec::new();
        loop {
            // Chunk size line.
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                if self.buf.len() > 1024 {
                    return Err(BodyError::Invalid("chunk size line too long".into()));
                }
                if !self.fill().await.map_err(|_| BodyError::Io)? {
                    return Err(BodyError::Io);
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| BodyError::Invalid(format!("invalid chunk size '{size_str}'")))?;
            self.buf.advance(line_end + 2);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        self.buf.advance(p + 2);
                        if p == 0 {
                            return Ok(body);
                        }
                        continue;
                    }
                    if self.buf.len() > MAX_HEAD {
                        return Err(BodyError::Invalid("trailers too long".into()));
                    }
                    if !self.fill().await.map_err(|_| BodyError::Io)? {
                        return Err(BodyError::Io);
                    }
                }
            }
            if body.len() + size > max {
                return Err(BodyError::TooLarge);
            }
            while self.buf.len() < size + 2 {
                if !self.fill().await.map_err(|_| BodyError::Io)? {
                    return Err(BodyError::Io);
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(BodyError::Invalid("chunk data not followed by CRLF".into()));
            }
            self.buf.advance(size + 2);
        }
    }

    async fn stream(
        &mut self,
        head: &Head,
        req: ChatRequest,
        include_usage: bool,
    ) -> std::io::Result<()> {
        let (cfg, stats) = (self.cfg.clone(), self.stats.clone());
        let mut sink = H1 { conn: self, head };
        stream_answer(&cfg, &stats, &req, include_usage, &mut sink).await?;
        if head.http10 {
            let _ = self.io.shutdown().await;
        }
        Ok(())
    }

    async fn write_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.io.write_all(b).await?;
        self.io.flush().await
    }

    async fn write_reply(&mut self, r: Reply, origin: Option<&str>) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(256 + r.body.len());
        out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status)).as_bytes());
        if let Some(o) = origin {
            out.extend_from_slice(format!("Access-Control-Allow-Origin: {o}\r\n").as_bytes());
        }
        if let Some(a) = r.allow {
            out.extend_from_slice(format!("Allow: {a}\r\n").as_bytes());
        }
        if r.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n", r.body.len()).as_bytes());
        out.extend_from_slice(format!("Content-Type: {}\r\n", r.content_type).as_bytes());
        out.extend_from_slice(
            format!("Date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())).as_bytes(),
        );
        if origin.is_some() {
            out.extend_from_slice(b"Vary: Origin\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&r.body);
        self.write_raw(&out).await?;
        if r.close {
            let _ = self.io.shutdown().await;
        }
        Ok(())
    }
}

/// What a request asks for.
fn route(cfg: &MockConfig, head: &Head, body: &[u8]) -> Route {
    let path = head.path.split('?').next().unwrap_or("");
    match (head.method.as_str(), path) {
        ("POST", "/v1/chat/completions") => {
            let req: ChatRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => {
                    return Route::Reply(Reply::error(
                        400,
                        "invalid_request_error",
                        &format!("invalid JSON body: {e}"),
                    ));
                }
            };
            if req.messages.as_ref().is_none_or(Vec::is_empty) {
                return Route::Reply(Reply::error(
                    400,
                    "invalid_request_error",
                    "[] is too short - 'messages'",
                ));
            }
            let usage = req.stream_options.is_some_and(|o| o.include_usage);
            if req.stream.unwrap_or(false) {
                Route::Stream(req, usage)
            } else {
                Route::Complete(req)
            }
        }
        ("GET", "/v1/models") => Route::Reply(models(cfg)),
        ("GET" | "HEAD", "/") => Route::Reply(Reply {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: b"Ollama is running".to_vec(),
            allow: None,
            close: false,
        }),
        (_, "/v1/chat/completions") => Route::Reply(
            Reply::error(
                405,
                "invalid_request_error",
                &format!("method {} not allowed; use POST", head.method),
            )
            .allow("POST"),
        ),
        (_, "/v1/models") => Route::Reply(
            Reply::error(
                405,
                "invalid_request_error",
                &format!("method {} not allowed; use GET", head.method),
            )
            .allow("GET"),
        ),
        _ => Route::Reply(Reply::error(
            404,
            "invalid_request_error",
            &format!("unknown path {path}; try POST /v1/chat/completions or GET /v1/models"),
        )),
    }
}

fn models(cfg: &MockConfig) -> Reply {
    let mut s = String::from("{\"object\":\"list\",\"data\":[");
    for (i, m) in cfg.models.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"id\":");
        openai::push_go_json_str(&mut s, m);
        s.push_str(&format!(
            ",\"object\":\"model\",\"created\":{},\"owned_by\":\"library\"}}",
            unix_now()
        ));
    }
    s.push_str("]}");
    Reply::json(200, s.into_bytes())
}

/// A non-streaming chat completion, once the whole answer is due.
async fn complete(cfg: &MockConfig, stats: &ServerStats, req: ChatRequest) -> Reply {
    let start = Instant::now();
    let (id, model, toks, key) = answer(cfg, &req);
    let mut sched = Schedule::new(key, cfg.ttft, cfg.tbt, cfg.jitter);
    let mut due = Duration::ZERO;
    for _ in 0..toks.len() {
        due = sched.next_due();
    }
    if start + due > Instant::now() {
        tokio::time::sleep_until(start + due).await;
    }
    let content = toks.concat();
    let pt = textgen::prompt_tokens(req.last_user_content().unwrap_or(""));
    let ct = toks.len() as u64;
    let mut s = String::from("{\"id\":");
    openai::push_go_json_str(&mut s, &id);
    s.push_str(&format!(
        ",\"object\":\"chat.completion\",\"created\":{},\"model\":",
        unix_now()
    ));
    openai::push_go_json_str(&mut s, &model);
    s.push_str(",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    openai::push_go_json_str(&mut s, &content);
    s.push_str(&format!(
        "}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{pt},\"completion_tokens\":{ct},\"total_tokens\":{}}}}}",
        pt + ct
    ));
    stats.tokens(ct);
    Reply::json(200, s.into_bytes())
}

/// The answer to `req`: its id, model, tokens and the key of its timing.
fn answer(cfg: &MockConfig, req: &ChatRequest) -> (String, String, Vec<String>, u64) {
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| cfg.models.first().cloned().unwrap_or_default());
    let prompt = req.last_user_content().unwrap_or("").to_owned();
    let key = textgen::key(cfg.seed, &model, &prompt);
    let toks = textgen::tokens(cfg.seed, &model, &prompt, cfg.max_tokens);
    let id = match cfg.format {
        // Ollama: chatcmpl-N with N in 0..=998; derived from the key so the bytes
        // of a run are reproducible.
        StreamFormat::OllamaLegacy | StreamFormat::Ollama => format!("chatcmpl-{}", key % 999),
        StreamFormat::Openai => {
            let mut r = lab_codec::rng::SplitMix64::new(key);
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            let tail: String = (0..29)
                .map(|_| alphabet[r.below(alphabet.len())] as char)
                .collect();
            format!("chatcmpl-{tail}")
        }
    };
    (id, model, toks, key)
}

/// Where a streamed answer's bytes go: Ollama's HTTP/1.1 bytes on the connection
/// ([`H1`]), or the DATA frames of an HTTP/2 stream.
trait Sink {
    /// The response head, which leaves together with the first token.
    fn head(&mut self, out: &mut Vec<u8>);
    /// One SSE event's bytes, framed.
    fn event(&self, out: &mut Vec<u8>, ev: &[u8]);
    /// The end of the body.
    fn end(&self, out: &mut Vec<u8>);
    /// Sends `out` (and leaves it empty).
    async fn send(&mut self, out: &mut Vec<u8>) -> std::io::Result<()>;
}

/// Streams the answer to `req` into `sink`: the head with the first token, at TTFT;
/// each token a chunk when it is due (tokens already due go out together); the
/// finish, usage and `[DONE]` events in one last chunk.
async fn stream_answer(
    cfg: &MockConfig,
    stats: &ServerStats,
    req: &ChatRequest,
    include_usage: bool,
    sink: &mut impl Sink,
) -> std::io::Result<()> {
    let start = Instant::now();
    let (id, model, toks, key) = answer(cfg, req);
    let mut sched = Schedule::new(key, cfg.ttft, cfg.tbt, cfg.jitter);
    let mut writer = ChunkWriter::new(cfg.format, id, model, include_usage);
    let mut out = Vec::with_capacity(4096);
    let mut ev = String::with_capacity(512);
    let mut stream_created = unix_now();
    // Wait for the first token, then send the head together with it.
    let first_due = start + sched.next_due();
    // tokio's timer rounds up to the next millisecond: never sleep for a deadline
    // that has already passed.
    if first_due > Instant::now() {
        tokio::time::sleep_until(first_due).await;
    }
    sink.head(&mut out);
    let n = toks.len();
    for (i, tok) in toks.iter().enumerate() {
        let created = match cfg.format {
            StreamFormat::OllamaLegacy => unix_now(),
            _ => stream_created,
        };
        ev.clear();
        writer.content(&mut ev, created, tok);
        sink.event(&mut out, ev.as_bytes());
        if i + 1 < n {
            let due = start + sched.next_due();
            if due > Instant::now() {
                sink.send(&mut out).await?;
                tokio::time::sleep_until(due).await;
            }
        }
    }
    if cfg.format == StreamFormat::OllamaLegacy {
        stream_created = unix_now();
    }
    ev.clear();
    let pt = textgen::prompt_tokens(req.last_user_content().unwrap_or(""));
    let usage = Usage {
        prompt_tokens: pt,
        completion_tokens: n as u64,
        total_tokens: pt + n as u64,
    };
    writer.finish(&mut ev, stream_created, usage);
    sink.event(&mut out, ev.as_bytes());
    sink.end(&mut out);
    sink.send(&mut out).await?;
    stats.tokens(n as u64);
    Ok(())
}

/// The body of an HTTP/2 answer.
type H2Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// Serves a connection that opened with HTTP/2's preface: the same routes and answers as
/// over HTTP/1.1, each SSE event of a stream in a DATA frame instead of an HTTP chunk.
/// Ollama itself speaks only HTTP/1.1; over HTTP/2 the mock is byte-faithful in the
/// events, not in the framing (which no client of lab's servers sees).
async fn h2c<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    conn: Conn<S>,
) -> std::io::Result<()> {
    let Conn {
        io,
        mut buf,
        cfg,
        stats,
    } = conn;
    let io = Prefixed {
        pre: buf.split().freeze(),
        io,
    };
    let service = hyper::service::service_fn(move |req| {
        let (cfg, stats) = (cfg.clone(), stats.clone());
        async move { Ok::<_, std::convert::Infallible>(h2_answer(req, cfg, stats).await) }
    });
    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .max_concurrent_streams(1 << 20)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
        .map_err(std::io::Error::other)
}

/// One HTTP/2 request: routed as over HTTP/1.1.
async fn h2_answer(
    req: http::Request<hyper::body::Incoming>,
    cfg: Arc<MockConfig>,
    stats: Arc<ServerStats>,
) -> http::Response<H2Body> {
    use http_body_util::BodyExt;
    stats.request();
    let origin = req
        .headers()
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let head = Head {
        method: req.method().as_str().to_owned(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        http10: false,
        close: false,
        content_length: None,
        chunked: false,
        expect_continue: false,
        origin,
    };
    let body = match http_body_util::Limited::new(req.into_body(), cfg.max_body)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let msg = format!("request body is over the limit of {} bytes", cfg.max_body);
            return h2_reply(Reply::error(413, "invalid_request_error", &msg));
        }
    };
    match route(&cfg, &head, &body) {
        Route::Reply(r) => h2_reply(r),
        Route::Complete(req) => h2_reply(complete(&cfg, &stats, req).await),
        Route::Stream(req, include_usage) => {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let (head_tx, head_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let mut sink = H2 {
                    tx,
                    head: Some(head_tx),
                };
                let _ = stream_answer(&cfg, &stats, &req, include_usage, &mut sink).await;
            });
            // The head leaves with the first token, as over HTTP/1.1.
            if head_rx.await.is_err() {
                return h2_reply(Reply::error(500, "server_error", "the answer failed"));
            }
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok(hyper::body::Frame::data(b)), rx))
            });
            let mut r = http::Response::new(http_body_util::StreamBody::new(frames).boxed());
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
            {
                h.insert(http::header::DATE, v);
            }
            r
        }
    }
}

fn h2_reply(r: Reply) -> http::Response<H2Body> {
    use http_body_util::BodyExt;
    let mut resp = http::Response::new(
        http_body_util::Full::new(bytes::Bytes::from(r.body))
            .map_err(|e| match e {})
            .boxed(),
    );
    *resp.status_mut() = http::StatusCode::from_u16(r.status).unwrap_or_default();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(r.content_type),
    );
    if let Some(a) = r.allow {
        h.insert(http::header::ALLOW, http::HeaderValue::from_static(a));
    }
    resp
}

/// A streamed answer as the DATA frames of an HTTP/2 stream.
struct H2 {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    /// Told when the head is due (with the first token).
    head: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Sink for H2 {
    fn head(&mut self, _out: &mut Vec<u8>) {
        if let Some(h) = self.head.take() {
            let _ = h.send(());
        }
    }

    fn event(&self, out: &mut Vec<u8>, ev: &[u8]) {
        out.extend_from_slice(ev);
    }

    fn end(&self, _out: &mut Vec<u8>) {}

    async fn send(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let b = bytes::Bytes::copy_from_slice(out);
        out.clear();
        self.tx
            .send(b)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream reset"))
    }
}

/// An IO whose first reads return bytes already read from it.
struct Prefixed<S> {
    pre: bytes::Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, b)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A streamed answer on an HTTP/1.1 connection, in Ollama's bytes.
struct H1<'a, S> {
    conn: &'a mut Conn<S>,
    head: &'a Head,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink for H1<'_, S> {
    fn head(&mut self, out: &mut Vec<u8>) {
        let head = self.head;
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        if let Some(o) = &head.origin {
            out.extend_from_slice(format!("Access-Control-Allow-Origin: {o}\r\n").as_bytes());
        }
        if head.close && !head.http10 {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"Content-Type: text/event-stream\r\n");
        out.extend_from_slice(
            format!("Date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())).as_bytes(),
        );
        if !head.http10 {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if head.origin.is_some() {
            out.extend_from_slice(b"Vary: Origin\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    fn event(&self, out: &mut Vec<u8>, ev: &[u8]) {
        frame(out, ev, !self.head.http10);
    }

    fn end(&self, out: &mut Vec<u8>) {
        if !self.head.http10 {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }

    async fn send(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        self.conn.write_raw(out).await?;
        out.clear();
        Ok(())
    }
}

enum Route {
    Reply(Reply),
    Stream(ChatRequest, bool),
    Complete(ChatRequest),
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: Option<&'static str>,
    close: bool,
}

impl Reply {
    fn json(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/json; charset=utf-8",
            body,
            allow: None,
            close: false,
        }
    }
    fn error(status: u16, kind: &str, msg: &str) -> Self {
        Self::json(status, ErrorBody::new(kind, msg).to_json().into_bytes())
    }
    fn closing(mut self) -> Self {
        self.close = true;
        self
    }
    fn allow(mut self, a: &'static str) -> Self {
        self.allow = Some(a);
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Request Entity Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Appends one HTTP chunk (lowercase hex size, as Go writes it), or the raw bytes when the
/// response is not chunked (HTTP/1.0).
fn frame(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn cfg() -> Arc<MockConfig> {
        Arc::new(MockConfig {
            ttft: Duration::ZERO,
            tbt: Duration::ZERO,
            jitter: 0.0,
            max_tokens: Some(3),
            ..MockConfig::default()
        })
    }

    /// Runs one connection over an in-memory pipe and returns everything it wrote.
    async fn exchange(cfg: Arc<MockConfig>, request: &[u8]) -> String {
        let (mut client, server) = duplex(1 << 20);
        let task = tokio::spawn(Conn::new(server, cfg, Arc::new(ServerStats::default())).run());
        client.write_all(request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap().unwrap();
        String::from_utf8(out).unwrap()
    }

    const CHAT: &str =
        r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

    fn post(body: &str) -> Vec<u8> {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn stream_bytes_follow_ollama() {
        let out = exchange(cfg(), &post(CHAT)).await;
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 200 OK");
        assert_eq!(lines[1], "Content-Type: text/event-stream");
        assert!(lines[2].starts_with("Date: ") && lines[2].ends_with(" GMT"));
        assert_eq!(lines[3], "Transfer-Encoding: chunked");
        assert_eq!(lines.len(), 4);
        // Three token chunks, one final chunk, then the terminator.
        let mut rest = body;
        let mut chunks = Vec::new();
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            assert_eq!(size, size.to_lowercase(), "chunk sizes are lowercase hex");
            let n = usize::from_str_radix(size, 16).unwrap();
            if n == 0 {
                assert_eq!(after, "\r\n");
                break;
            }
            chunks.push(&after[..n]);
            assert_eq!(&after[n..n + 2], "\r\n");
            rest = &after[n + 2..];
        }
        assert_eq!(chunks.len(), 4);
        for c in &chunks[..3] {
            assert!(c.starts_with("data: {\"id\":\"chatcmpl-"), "{c}");
            assert!(c.contains("\"delta\":{\"role\":\"assistant\",\"content\":"));
            assert!(c.ends_with("\"finish_reason\":null}]}\n\n"));
        }
        assert!(chunks[3].contains("\"finish_reason\":\"stop\""));
        assert!(chunks[3].ends_with("data: [DONE]\n\n"));
    }

    /// A client that opens with HTTP/2's preface (h2c), as lab's servers do in a load
    /// test, gets the same answers: the same tokens through the servers' upstream
    /// client, many streams at once on one connection, and the same refusals.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn h2c_answers_with_the_same_tokens_on_one_connection() {
        use http_body_util::BodyExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stats = Arc::new(ServerStats::default());
        let server = tokio::spawn(serve(listener, cfg(), stats.clone()));
        let up = Arc::new(crate::upstream::Upstream::new(&url, "gemma3:12b", true).unwrap());
        // One answer first, so the connection is up before the twenty at once: while it
        // is still being made, the client's pool may open a second one (seen once).
        let mut s = up.chat("prompt 0").await.unwrap();
        while s.next().await.unwrap().is_some() {}
        let mut tasks = Vec::new();
        for i in 0..20 {
            let up = up.clone();
            tasks.push(tokio::spawn(async move {
                let prompt = format!("prompt {i}");
                let mut s = up.chat(&prompt).await.unwrap();
                let mut got = Vec::new();
                while let Some(t) = s.next().await.unwrap() {
                    got.push(t);
                }
                assert_eq!(got, textgen::tokens(1, "gemma3:12b", &prompt, Some(3)));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let client =
            crate::upstream::client::<http_body_util::Full<bytes::Bytes>>(&url, true).unwrap();
        let ask = |path: &str, body: &'static str| {
            http::Request::post(format!("{url}{path}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap()
        };
        let r = client
            .request(ask("/v1/chat/completions", "{nope"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("invalid JSON body"));
        let r = client.request(ask("/nowhere", "{}")).await.unwrap();
        assert_eq!(r.status(), 404);
        // Twenty-one streams on the upstream client's one connection, the two refusals on
        // the other client's.
        assert_eq!(
            stats.snapshot().connections_accepted,
            2,
            "{:?}",
            stats.snapshot()
        );
        server.abort();
        // An HTTP/1.1 client is not taken for an HTTP/2 one.
        let (mut client, server) = duplex(1 << 10);
        client.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        let mut c = Conn::new(server, cfg(), Arc::new(ServerStats::default()));
        assert!(!c.sniff_h2().await.unwrap());
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_on_one_connection() {
        let mut req = post(CHAT);
        req.extend_from_slice(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = exchange(cfg(), &req).await;
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2);
        assert!(out.contains(
            "{\"object\":\"list\",\"data\":[{\"id\":\"gemma3:12b\",\"object\":\"model\""
        ));
    }

    #[tokio::test]
    async fn usage_chunk_when_asked() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let out = exchange(cfg(), &post(body)).await;
        assert!(out.contains("\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}"));
    }

    #[tokio::test]
    async fn non_streaming_completion() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let out = exchange(cfg(), &post(body)).await;
        let (head, json) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Content-Type: application/json; charset=utf-8"));
        let c: openai::ChatCompletion = serde_json::from_str(json).unwrap();
        assert_eq!(c.usage.completion_tokens, 3);
        let expected = textgen::tokens(1, "m", "hi", Some(3)).concat();
        assert_eq!(c.choices[0].message.content, expected);
    }

    #[tokio::test]
    async fn chunked_request_body_and_expect_continue() {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{CHAT}\r\n0\r\n\r\n",
            CHAT.len()
        );
        let out = exchange(cfg(), req.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{out}"
        );
    }

    async fn status_of(req: &[u8]) -> (u16, ErrorBody) {
        let out = exchange(cfg(), req).await;
        let status: u16 = out[9..12].parse().unwrap();
        let json = out.split_once("\r\n\r\n").unwrap().1;
        (status, serde_json::from_str(json).unwrap())
    }

    #[tokio::test]
    async fn bad_requests_get_openai_errors() {
        let (s, e) = status_of(&post("{not json")).await;
        assert_eq!(s, 400);
        assert!(
            e.error.message.contains("invalid JSON"),
            "{}",
            e.error.message
        );
        let (s, _) = status_of(&post(r#"{"model":"m"}"#)).await;
        assert_eq!(s, 400);
        let (s, _) = status_of(&post(r#"{"model":"m","messages":[]}"#)).await;
        assert_eq!(s, 400);
        let (s, e) = status_of(b"GET /v1/chat/completions HTTP/1.1\r\n\r\n").await;
        assert_eq!(s, 405);
        assert!(e.error.message.contains("use POST"));
        let (s, _) = status_of(b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert_eq!(s, 404);
        let (s, _) =
            status_of(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n")
                .await;
        assert_eq!(s, 413);
        let (s, _) = status_of(b"NOT HTTP\r\n\r\n").await;
        assert_eq!(s, 400);
    }

    #[tokio::test]
    async fn bad_request_keeps_the_connection_when_it_can() {
        let mut req = post("{bad");
        req.extend_from_slice(&post(CHAT));
        let out = exchange(cfg(), &req).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request"));
        assert!(out.contains("HTTP/1.1 200 OK"));
    }

    #[tokio::test]
    async fn cors_only_with_origin() {
        let req = b"GET /v1/models HTTP/1.1\r\nOrigin: http://localhost\r\n\r\n";
        let out = exchange(cfg(), req).await;
        assert!(out.contains("Access-Control-Allow-Origin: http://localhost\r\n"));
        let out = exchange(cfg(), b"GET /v1/models HTTP/1.1\r\n\r\n").await;
        assert!(!out.contains("Access-Control"));
    }

    #[tokio::test(start_paused = true)]
    async fn timing_follows_ttft_and_tbt() {
        let cfg = Arc::new(MockConfig {
            ttft: Duration::from_millis(250),
            tbt: Duration::from_millis(35),
            jitter: 0.0,
            max_tokens: Some(4),
            ..MockConfig::default()
        });
        let (mut client, server) = duplex(1 << 20);
        tokio::spawn(Conn::new(server, cfg, Arc::new(ServerStats::default())).run());
        let t0 = Instant::now();
        client.write_all(&post(CHAT)).await.unwrap();
        let mut arrivals = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut all = Vec::new();
        while !all.ends_with(b"0\r\n\r\n") {
            let n = client.read(&mut buf).await.unwrap();
            all.extend_from_slice(&buf[..n]);
            arrivals.push(t0.elapsed());
        }
        let ms: Vec<u128> = arrivals.iter().map(Duration::as_millis).collect();
        // Head + token 1 at 250 ms, then tokens 2..4 at 35 ms steps with the end.
        assert_eq!(ms, vec![250, 285, 320, 355]);
    }
}
