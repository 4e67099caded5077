//! The SSE server: `POST /chat` with `{"message": "..."}` streams the upstream's tokens as
//! `text/event-stream`, one event per token, flushed per token, then `data: [DONE]`.
//! `GET /chat?message=...` streams the same, for a browser's `EventSource`. A body's
//! `"max_tokens": N` (or `&max_tokens=N`) asks for an answer of exactly N tokens;
//! `"usage": true` (or `&usage=1`) for the upstream's token count, an `event: usage` with
//! the count after the last token.
//!
//! - A request from a browser page (one with an `Origin` header) gets
//!   `Access-Control-Allow-Origin: *` and `Timing-Allow-Origin: *`, so that a page of
//!   another origin (lab's browser client's page is a `file://` one) may read the
//!   stream and its timing. A request with no `Origin`
//!   (lab's native clients) gets the same bytes as ever.
//! - A token with line breaks becomes several `data:` lines (the reference wrote one line
//!   and broke framing).
//! - 400 for bad JSON, an empty message or a `max_tokens` outside 1..=1000000, 405 for another method, 413 over 1 MiB, 404 for
//!   any other path, 502 if the upstream cannot be reached or refuses.
//! - If the upstream fails mid-stream: an `event: error` event with the reason, then
//!   `data: [DONE]`.

use crate::http::json_error;
use crate::stats::ServerStats;
use crate::upstream::{ChatOptions, Upstream};

/// The event that carries the upstream's count of the answer's tokens, after the last
/// token, when the request asked (`"usage": true`, or `&usage=1`).
pub const USAGE_EVENT: &str = "usage";
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use axum::routing::post;
use bytes::BytesMut;
use http::StatusCode;
use lab_codec::sse;
use std::convert::Infallible;
use std::sync::Arc;

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;

/// The path the SSE server serves.
pub const PATH: &str = "/chat";

/// Sets up the SSE approach's server on `listener`; errors in its settings come here,
/// before it serves.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let app = app(Arc::new(env.upstream_client()?), env.stats.clone());
    crate::http::start_router(listener, env, "SSE", app, crate::http::Version::Http1)
}

#[derive(Clone)]
struct AppState {
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
}

/// The router, without a socket, so tests can drive it directly.
pub fn app(upstream: Arc<Upstream>, stats: Arc<ServerStats>) -> Router {
    Router::new()
        .route(
            PATH,
            // Every refusal reads the request body first: over HTTP/2, answering before
            // the body is in resets the stream, which clients report as an error
            // instead of the status.
            post(chat).get(chat_get).fallback(|_body: Bytes| async {
                let mut r = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "invalid_request_error",
                    "/chat takes POST with a JSON body {\"message\": \"...\"}, or GET /chat?message=...",
                );
                r.headers_mut().insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_static("GET, POST"),
                );
                r
            }),
        )
        .fallback(|uri: http::Uri, _body: Bytes| async move {
            json_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "unknown path {}; the SSE server serves POST /chat",
                    uri.path()
                ),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(cross_origin))
        .with_state(AppState { upstream, stats })
}

/// A browser's cross-origin request may read the answer; others get nothing more.
async fn cross_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let from_browser = req.headers().contains_key(http::header::ORIGIN);
    let mut res = next.run(req).await;
    if from_browser {
        let h = res.headers_mut();
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            http::HeaderValue::from_static("*"),
        );
        // The page's Resource Timing may then read the connection's set-up and sizes.
        h.insert(
            http::HeaderName::from_static("timing-allow-origin"),
            http::HeaderValue::from_static("*"),
        );
    }
    res
}

/// `GET /chat?message=...`: the same stream, for EventSource.
async fn chat_get(State(st): State<AppState>, uri: http::Uri) -> Response {
    st.stats.request();
    let query = |key: &str| {
        uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        })
    };
    let answer_len = match query("max_tokens")
        .map(|v| v.parse::<u64>().ok().and_then(lab_codec::wt::answer_len))
    {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => {
            st.stats.error();
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "max_tokens is the answer's length, 1 to 1000000 tokens",
            );
        }
    };
    match query("message") {
        Some(m) if !m.trim().is_empty() => {
            let usage = query("usage").is_some_and(|v| v == "1" || v == "true");
            answer(st, m, ChatOptions { answer_len, usage }).await
        }
        _ => {
            st.stats.error();
            json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "GET /chat needs ?message=your%20prompt",
            )
        }
    }
}

async fn chat(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    st.stats.request();
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            st.stats.error();
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body is over the limit of {MAX_BODY} bytes"),
            );
        }
        Err(e) => {
            st.stats.error();
            return json_error(e.status(), "invalid_request_error", e.body_text());
        }
    };
    match crate::http::ChatAsk::parse(&body) {
        Ok(a) => {
            let ask = ChatOptions {
                answer_len: a.max_tokens,
                usage: a.usage,
            };
            answer(st, a.message, ask).await
        }
        Err(e) => {
            st.stats.error();
            json_error(StatusCode::BAD_REQUEST, "invalid_request_error", e)
        }
    }
}

/// Streams the upstream's answer to `message` (of `answer_len` tokens, if set) as
/// server-sent events.
async fn answer(st: AppState, message: String, ask: ChatOptions) -> Response {
    let mut tokens = match st.upstream.chat(&message, ask).await {
        Ok(t) => t,
        Err(e) => {
            st.stats.error();
            return json_error(StatusCode::BAD_GATEWAY, "upstream_error", e.to_string());
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let stats = st.stats.clone();
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(256);
        let mut batch = Vec::new();
        loop {
            // Tokens that arrived together leave together; at any real TBT each token
            // is its own write.
            let r = tokens.next_batch(&mut batch).await;
            for t in &batch {
                sse::encode_data(t, &mut buf);
            }
            stats.tokens(batch.len() as u64);
            match r {
                Ok(true) => {
                    if tx.send(buf.split().freeze()).await.is_err() {
                        return; // the client went away
                    }
                }
                Ok(false) => {
                    if let Some(n) = tokens.usage().filter(|_| ask.usage) {
                        sse::encode_event(Some(USAGE_EVENT), &n.to_string(), &mut buf);
                    }
                    break;
                }
                Err(e) => {
                    stats.error();
                    sse::encode_event(Some("error"), &e.to_string(), &mut buf);
                    break;
                }
            }
        }
        sse::encode_data(sse::DONE, &mut buf);
        let _ = tx.send(buf.split().freeze()).await;
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>))
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}
