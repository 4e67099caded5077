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
//!
//! The HTTP/1.1 layer is in `h1`, HTTP/2 (h2c, for a load test's servers) in `h2`; both
//! route requests here and stream answers through a `Sink`.

mod h1;
mod h2;

use crate::stats::ServerStats;
use crate::textgen::{self, Schedule};
use anyhow::Result;
use bytes::{Buf, BytesMut};
use h1::{Conn, Head};
use h2::h2c;
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
    /// Caps every answer's length (a request's own `max_tokens` can cap it further, or,
    /// with `ignore_eos`, set it exactly, up to this cap).
    pub max_tokens: Option<usize>,
    /// Deadlines for slow and idle clients.
    pub limits: crate::Limits,
    /// Tokens per streamed chunk (default 1): a chunk leaves when its last token is due,
    /// as servers that batch their output send them (vLLM's `--stream-interval`,
    /// speculative decoding). `usage.completion_tokens` still counts tokens.
    pub chunk_tokens: usize,
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
            chunk_tokens: 1,
            limits: crate::Limits::default(),
        }
    }
}

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

/// How long the answer to `req` is, as [`textgen::sized`] takes it: an exact length
/// when the request asks for `max_tokens` with `ignore_eos`, and a cap, the least of the
/// server's own and a request's `max_tokens` without `ignore_eos`.
pub fn lengths(cfg_max: Option<usize>, req: &openai::Sampling) -> (Option<usize>, Option<usize>) {
    let asked = req.max_tokens.map(|n| n as usize);
    if req.ignore_eos == Some(true) {
        (asked, cfg_max)
    } else {
        let cap = match (asked, cfg_max) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        };
        (None, cap)
    }
}

/// The answer to `req`: its id, model, tokens and the key of its timing.
fn answer(cfg: &MockConfig, req: &ChatRequest) -> (String, String, Vec<String>, u64) {
    let lengths = lengths(cfg.max_tokens, &req.sampling);
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| cfg.models.first().cloned().unwrap_or_default());
    let prompt = req.last_user_content().unwrap_or("").to_owned();
    let key = textgen::key(cfg.seed, &model, &prompt);
    let toks = textgen::sized(cfg.seed, &model, &prompt, lengths.0, lengths.1);
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
    let n = toks.len();
    // Each chunk carries `chunk_tokens` tokens, and is due when its last token is.
    let chunks: Vec<String> = toks
        .chunks(cfg.chunk_tokens.max(1))
        .map(|g| g.concat())
        .collect();
    let mut due_of = |len: usize| {
        let mut due = Duration::ZERO;
        for _ in 0..len {
            due = sched.next_due();
        }
        start + due
    };
    // Wait for the first chunk, then send the head together with it.
    let first_due = due_of(toks.len().min(cfg.chunk_tokens.max(1)));
    // tokio's timer rounds up to the next millisecond: never sleep for a deadline
    // that has already passed.
    if first_due > Instant::now() {
        tokio::time::sleep_until(first_due).await;
    }
    sink.head(&mut out);
    for (i, chunk) in chunks.iter().enumerate() {
        let created = match cfg.format {
            StreamFormat::OllamaLegacy => unix_now(),
            _ => stream_created,
        };
        ev.clear();
        writer.content(&mut ev, created, chunk);
        sink.event(&mut out, ev.as_bytes());
        if i + 1 < chunks.len() {
            let next = (n - (i + 1) * cfg.chunk_tokens.max(1)).min(cfg.chunk_tokens.max(1));
            let due = due_of(next);
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

    /// A request's `max_tokens` caps its answer; with `ignore_eos` it sets the answer's
    /// length, past the drawn one too, up to the server's own cap.
    #[tokio::test]
    async fn a_request_sets_its_answers_length() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cfg = Arc::new(MockConfig {
            max_tokens: Some(500),
            ..(*cfg()).clone()
        });
        let server = tokio::spawn(serve(listener, cfg, Arc::new(ServerStats::default())));
        let up = crate::upstream::Upstream::new(&url, "m", false).unwrap();
        let p = "How long?";
        let drawn = textgen::tokens(1, "m", p, Some(500)).len();
        for (asked, want) in [
            (Some(3), 3),
            (Some(drawn as u32 + 40), drawn + 40),
            (Some(900), 500),
            (None, drawn),
        ] {
            let mut s = up
                .chat(
                    p,
                    crate::upstream::ChatOptions {
                        answer_len: asked,
                        usage: false,
                    },
                )
                .await
                .unwrap();
            let mut got = Vec::new();
            while let Some(t) = s.next().await.unwrap() {
                got.push(t);
            }
            assert_eq!(got.len(), want, "asked {asked:?}");
            assert_eq!(
                got,
                textgen::sized(1, "m", p, asked.map(|n| n as usize), Some(500))
            );
        }
        let capped = up.clone().with_sampling(openai::Sampling {
            max_tokens: Some(4),
            ..Default::default()
        });
        let mut s = capped.chat(p, Default::default()).await.unwrap();
        let mut n = 0;
        while s.next().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 4.min(drawn));
        assert_eq!(
            lengths(
                Some(9),
                &openai::Sampling {
                    max_tokens: Some(20),
                    ..Default::default()
                }
            ),
            (None, Some(9))
        );
        assert_eq!(
            lengths(None, &openai::Sampling::default().answer_len(Some(20))),
            (Some(20), None)
        );
        server.abort();
    }

    /// At full speed, tokens that have arrived together come in one batch, in order and
    /// none lost, and no batch is over its cap; at a real pace each token is a batch of
    /// its own.
    #[tokio::test]
    async fn batches_hold_what_has_arrived_and_no_more() {
        use crate::upstream::BATCH_MAX;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fast = Arc::new(MockConfig {
            max_tokens: Some(300),
            ..(*cfg()).clone()
        });
        let server = tokio::spawn(serve(listener, fast, Arc::new(ServerStats::default())));
        let up = crate::upstream::Upstream::new(&url, "m", false).unwrap();
        let p = "a long answer";
        let mut s = up.chat(p, Default::default()).await.unwrap();
        let (mut batch, mut got, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
        while s.next_batch(&mut batch).await.unwrap() {
            sizes.push(batch.len());
            got.append(&mut batch);
        }
        assert_eq!(got, textgen::tokens(1, "m", p, Some(300)));
        assert!(got.len() > BATCH_MAX, "{} tokens", got.len());
        assert!(
            sizes.iter().all(|&n| (1..=BATCH_MAX).contains(&n)),
            "{sizes:?}"
        );
        assert!(sizes.len() < got.len() / 4, "batches of {sizes:?}");
        server.abort();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let paced = Arc::new(MockConfig {
            tbt: Duration::from_millis(40),
            max_tokens: Some(5),
            ..(*cfg()).clone()
        });
        let server = tokio::spawn(serve(listener, paced, Arc::new(ServerStats::default())));
        let up = crate::upstream::Upstream::new(&url, "m", false).unwrap();
        let mut s = up.chat(p, Default::default()).await.unwrap();
        let mut sizes = Vec::new();
        while s.next_batch(&mut batch).await.unwrap() {
            sizes.push(batch.len());
        }
        assert_eq!(sizes, vec![1; 5]);
        server.abort();
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
        let mut s = up.chat("prompt 0", Default::default()).await.unwrap();
        while s.next().await.unwrap().is_some() {}
        let mut tasks = Vec::new();
        for i in 0..20 {
            let up = up.clone();
            tasks.push(tokio::spawn(async move {
                let prompt = format!("prompt {i}");
                let mut s = up.chat(&prompt, Default::default()).await.unwrap();
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
