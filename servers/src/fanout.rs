//! The fan-out approach's servers: stateless API servers that publish an answer's
//! tokens to a per-session channel of a broker, and WebSocket gateways subscribed to
//! it that push them to the client (the Centrifugo document's architecture). In a lab
//! they run as nodes, behind HAProxy, with Redis as the broker (`lab fanout api` and
//! `lab fanout gateway`, plain HTTP on the lab's internal network); `lab serve fanout`
//! is all of it in one process over TLS, with the broker inside, for loopback.
//!
//! A session, with no state kept on any server:
//! 1. `POST /v1/sessions` (API): `201 {"id": "<32 hex digits>"}`, a random id;
//! 2. `GET /v1/sessions/<id>/ws` (gateway): a WebSocket; the gateway subscribes to the
//!    session's channel, then sends `r`;
//! 3. `POST /v1/sessions/<id>/run` with `{"message": ..., "max_tokens": N, "usage": true}` (API):
//!    `202`, then the upstream's tokens are published, each as it comes, then the end;
//! 4. `DELETE /v1/sessions/<id>` (API): `204`, and `c` on the channel, on which the
//!    gateway closes the WebSocket (code 1000).
//!
//! The messages are [`lab_codec::relay::Msg`]. A client whose WebSocket broke connects
//! again to the same URL (any gateway) and gets what is published from then on; what was
//! published in between is lost, and the end's count says how much.
//!
//! Bad input: an id that is not 32 lower-case hex digits gets 404, a bad body 400, a
//! wrong method 405; a gateway that cannot subscribe answers 503.

use crate::fanout_broker::{Broker, Subscription, channel};
use crate::http::{ChatAsk, json_error};
use crate::stats::ServerStats;
use crate::upstream::{BATCH_MAX, Upstream};
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::SinkExt;
use http::StatusCode;
use lab_codec::monotonic_ns;
use lab_codec::relay::{Msg, is_session_id};
use std::sync::Arc;

/// The path sessions are created at.
pub const PATH: &str = "/v1/sessions";

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;

/// How long a gateway waits for the next message of a session before it closes the
/// WebSocket (a client that never asks, an API server that died).
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone)]
struct Api {
    upstream: Arc<Upstream>,
    broker: Broker,
    stats: Arc<ServerStats>,
}

#[derive(Clone)]
struct Gateway {
    broker: Broker,
    stats: Arc<ServerStats>,
}

/// The API server: create, run, delete.
pub fn api(upstream: Arc<Upstream>, broker: Broker, stats: Arc<ServerStats>) -> Router {
    api_routes(upstream, broker, stats).fallback(unknown_path)
}

/// The gateway: a session's WebSocket.
pub fn gateway(broker: Broker, stats: Arc<ServerStats>) -> Router {
    gateway_routes(broker, stats).fallback(unknown_path)
}

fn api_routes(upstream: Arc<Upstream>, broker: Broker, stats: Arc<ServerStats>) -> Router {
    Router::new()
        .route(PATH, post(create).fallback(|| wrong_method("POST")))
        .route(
            "/v1/sessions/{id}/run",
            post(run).fallback(|| wrong_method("POST")),
        )
        .route(
            "/v1/sessions/{id}",
            delete(remove).fallback(|| wrong_method("DELETE")),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Api {
            upstream,
            broker,
            stats,
        })
}

fn gateway_routes(broker: Broker, stats: Arc<ServerStats>) -> Router {
    Router::new()
        .route(
            "/v1/sessions/{id}/ws",
            get(upgrade).fallback(|| wrong_method("GET")),
        )
        .with_state(Gateway { broker, stats })
}

/// `lab serve fanout`: both, over TLS, with the broker in this process.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let broker = Broker::local();
    let up = Arc::new(env.upstream_client()?);
    let app = api_routes(up, broker.clone(), env.stats.clone())
        .merge(gateway_routes(broker, env.stats.clone()))
        .fallback(unknown_path);
    crate::http::start_router(listener, env, "fan-out", app, crate::http::Version::Http1)
}

/// The parts that run as processes of their own (`lab part fanout api|gateway`), in
/// plain HTTP behind the load balancer, with Redis as the broker.
pub static PARTS: &[crate::Part] = &[
    crate::Part {
        name: "api",
        about: "an API server: sessions, and each answer's tokens published to the session's channel (needs --broker and --upstream)",
        start: |env| Box::pin(start_part(env, true)),
    },
    crate::Part {
        name: "gateway",
        about: "a WebSocket gateway: subscribed to a session's channel, pushing its tokens to the client (needs --broker)",
        start: |env| Box::pin(start_part(env, false)),
    },
];

/// An API server (`api`) or a gateway, on Redis at `env.broker` (connected before this
/// returns, so that a wrong address is an error now).
async fn start_part(env: crate::PartEnv, api_server: bool) -> anyhow::Result<crate::Serving> {
    let url = env.broker.as_deref().ok_or_else(|| {
        anyhow::anyhow!("the fan-out's parts need --broker, Redis's URL (redis://HOST:PORT)")
    })?;
    let app = if api_server {
        let up = env.upstream.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "an API server needs --upstream, the OpenAI-compatible upstream's base URL"
            )
        })?;
        let up = Upstream::new(up, &env.model, false)?;
        api(Arc::new(up), Broker::redis(url).await?, env.stats)
    } else {
        gateway(Broker::redis(url).await?, env.stats)
    };
    let listener = env.listener;
    Ok(Box::pin(async move {
        axum::serve(listener, app).await?;
        Ok(())
    }))
}

async fn wrong_method(allow: &'static str) -> Response {
    let mut r = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("this path takes {allow}"),
    );
    r.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

async fn unknown_path(uri: http::Uri) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "unknown path {}; the fan-out serves POST /v1/sessions, GET /v1/sessions/<id>/ws, POST /v1/sessions/<id>/run and DELETE /v1/sessions/<id>",
            uri.path()
        ),
    )
}

fn no_session(id: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "'{}' is not a session id (32 lower-case hex digits from POST /v1/sessions)",
            id.chars().take(40).collect::<String>()
        ),
    )
}

/// A fresh session id: 16 random bytes in hex.
fn session_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { nix::libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // getrandom(2) does not fail for 16 bytes once the pool is ready; if it did,
        // the clock still makes ids that do not repeat within a process.
        b[..8].copy_from_slice(&monotonic_ns().to_le_bytes());
    }
    hex::encode(b)
}

async fn create() -> Response {
    let body = serde_json::json!({ "id": session_id() }).to_string();
    (
        StatusCode::CREATED,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn remove(State(st): State<Api>, Path(id): Path<String>) -> Response {
    if !is_session_id(&id) {
        return no_session(&id);
    }
    let forgot = st.broker.forget(&id).await;
    let closed = st
        .broker
        .publish(&channel(&id), &Msg::Closed.encode())
        .await;
    if let Err(e) = forgot.and(closed) {
        st.stats.error();
        return json_error(StatusCode::BAD_GATEWAY, "server_error", format!("{e:#}"));
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn run(State(st): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    if !is_session_id(&id) {
        return no_session(&id);
    }
    let ask = match ChatAsk::parse(&body) {
        Ok(a) => a,
        Err(e) => {
            st.stats.error();
            return json_error(StatusCode::BAD_REQUEST, "invalid_request_error", e);
        }
    };
    // A prompt is what the servers count as a request (not a session's set-up).
    st.stats.request();
    // The answer is published from a task of its own; the request ends now.
    tokio::spawn(publish_answer(st, id, ask));
    StatusCode::ACCEPTED.into_response()
}

/// Asks the upstream and publishes each token as it comes, then the end.
async fn publish_answer(st: Api, id: String, ask: ChatAsk) {
    let ch = channel(&id);
    let mut tokens = match st.upstream.chat(&ask.message, ask.options()).await {
        Ok(t) => t,
        Err(e) => return finish(&st, &id, 0, Some(e.to_string())).await,
    };
    let mut seq = 0u64;
    let (mut batch, mut msgs) = (Vec::new(), Vec::new());
    loop {
        // Tokens that arrived together are published together (one round trip to
        // Redis), a message each.
        let r = tokens.next_batch(&mut batch).await;
        msgs.clear();
        for text in &batch {
            let m = Msg::Token {
                seq,
                time: monotonic_ns(),
                text,
            };
            msgs.push(m.encode());
            seq += 1;
        }
        if !msgs.is_empty() {
            if let Err(e) = st.broker.publish_all(&ch, &msgs).await {
                tracing::warn!("publish to {ch}: {e:#}");
                st.stats.error();
                return;
            }
            st.stats.tokens(msgs.len() as u64);
        }
        let end = match r {
            Ok(true) => continue,
            Ok(false) => {
                if let Some(n) = tokens.usage().filter(|_| ask.usage) {
                    let _ = st.broker.publish(&ch, &Msg::Usage(n).encode()).await;
                }
                None
            }
            Err(e) => Some(e.to_string()),
        };
        return finish(&st, &id, seq, end).await;
    }
}

/// Ends an answer after `count` tokens, with the upstream's failure if it failed. The
/// count is kept before the end is published: a gateway that subscribes in between
/// reads it.
async fn finish(st: &Api, id: &str, count: u64, failure: Option<String>) {
    let ch = channel(id);
    if let Some(why) = failure {
        st.stats.error();
        let _ = st.broker.publish(&ch, &Msg::Failed(&why).encode()).await;
    }
    if let Err(e) = st.broker.set_end(id, count).await {
        tracing::warn!("keeping the end of {ch}: {e:#}");
    }
    let _ = st.broker.publish(&ch, &Msg::End { count }.encode()).await;
}

async fn upgrade(
    State(st): State<Gateway>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    if !is_session_id(&id) {
        return no_session(&id);
    }
    // Subscribed before the upgrade is answered, so that `r` is true when sent.
    let sub = match st.broker.subscribe(&channel(&id)).await {
        Ok(s) => s,
        Err(e) => {
            st.stats.error();
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("cannot subscribe to the session's channel: {e:#}"),
            );
        }
    };
    // An answer that ended before this subscription (its client's WebSocket was down
    // then) has its end sent at once.
    let ended = st.broker.end_of(&id).await.unwrap_or_else(|e| {
        tracing::warn!("reading the end of session {id}: {e:#}");
        None
    });
    ws.max_message_size(MAX_BODY)
        .on_upgrade(move |socket| push(socket, sub, ended, st))
}

/// Pushes a session's messages to its WebSocket until the session is deleted, the
/// client goes, or the broker connection ends.
async fn push(mut ws: WebSocket, mut sub: Subscription, ended: Option<u64>, st: Gateway) {
    if ws
        .send(Message::Text(Msg::Ready.encode().into()))
        .await
        .is_err()
    {
        return;
    }
    // An answer that ended while its client's WebSocket was down: its end, at once.
    if let Some(count) = ended {
        let end = Msg::End { count }.encode();
        if ws.send(Message::Text(end.into())).await.is_err() {
            return;
        }
    }
    loop {
        let next = tokio::select! {
            m = sub.next() => m,
            c = ws.recv() => match c {
                // The client sends nothing but its close.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
            () = tokio::time::sleep(IDLE) => None,
        };
        let Some(raw) = next else {
            let _ = ws
                .send(Message::Close(Some(CloseFrame {
                    code: 1011,
                    reason: "the broker connection ended".into(),
                })))
                .await;
            return;
        };
        // Messages that are already here go out together, a WebSocket message each,
        // in one write.
        let mut raw = Some(raw);
        let mut fed = 0;
        while let Some(m) = raw.take() {
            match outgoing(m, &st) {
                Some(Ok(out)) => {
                    if ws.feed(Message::Text(out.into())).await.is_err() {
                        return;
                    }
                    fed += 1;
                }
                Some(Err(close)) => {
                    let _ = ws.send(Message::Close(Some(close))).await;
                    return;
                }
                None => {}
            }
            if fed < BATCH_MAX {
                raw = sub.ready();
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// What the gateway sends for a message from the broker: a token with its time in the
/// broker (from its publish to now), other messages as they are; `Err` to close the
/// WebSocket with; `None` for a message it cannot read (counted, and skipped).
fn outgoing(raw: String, st: &Gateway) -> Option<Result<String, CloseFrame>> {
    match Msg::parse(&raw) {
        Ok(Msg::Token { seq, time, text }) => {
            let hop_us = monotonic_ns().saturating_sub(time) / 1000;
            st.stats.tokens(1);
            Some(Ok(Msg::Token {
                seq,
                time: hop_us,
                text,
            }
            .encode()))
        }
        Ok(Msg::Closed) => Some(Err(CloseFrame {
            code: 1000,
            reason: "session deleted".into(),
        })),
        Ok(_) => Some(Ok(raw)),
        Err(e) => {
            tracing::warn!("{e}");
            st.stats.error();
            None
        }
    }
}
