//! The WebSocket server (RFC 6455) over TLS: `GET /ws` upgrades to a WebSocket on which
//! each text message from the client is a prompt, answered in order:
//! - one text message per token, its payload exactly the token's bytes;
//! - an empty text message ends the answer (a token is never empty);
//! - if the upstream fails, a binary message carries the reason, then the empty text
//!   message ends the answer, and the connection stays open.
//!
//! A text message `\0answer_len=N` before a prompt asks for an answer of exactly N tokens
//! ([`lab_codec::wt::ANSWER_LEN`]; no prompt begins with NUL); a text message `\0usage`
//! asks for the upstream's token count, sent as a text message `\0usage=N` after the
//! last token ([`lab_codec::wt::USAGE`]).
//!
//! Tokens that arrived together leave in one write; at any real TBT each token is its own
//! write. Bad input closes that WebSocket and only it: a binary message from the client
//! (close code 1003), a message over 1 MiB (1009, from the library's limit), an
//! answer-length message without a length (1008). A wrong
//! method gets 405, another path 404. No permessage-deflate: the library (axum's
//! WebSocket, tokio-tungstenite) does not offer it.

use crate::http::json_error;
use crate::stats::ServerStats;
use crate::upstream::{ChatOptions, Upstream};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::SinkExt;
use http::StatusCode;
use std::sync::Arc;

/// The path the server serves.
pub const PATH: &str = "/ws";

/// Largest message a client may send.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Close code: the client sent a binary message; prompts are text.
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close code: the client's message was over [`MAX_MESSAGE`].
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: an answer-length message without a length of 1 to 1,000,000 tokens.
pub const CLOSE_POLICY: u16 = 1008;

#[derive(Clone)]
struct AppState {
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
}

/// Sets up the WebSocket server on `listener`; errors in its settings come here, before
/// it serves.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let app = app(Arc::new(env.upstream_client()?), env.stats.clone());
    crate::http::start_router(listener, env, "WebSocket", app, crate::http::Version::Http1)
}

/// The router, without a socket.
pub fn app(upstream: Arc<Upstream>, stats: Arc<ServerStats>) -> Router {
    Router::new()
        .route(
            PATH,
            get(upgrade).fallback(|| async {
                let mut r = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "invalid_request_error",
                    "/ws takes GET with a WebSocket upgrade",
                );
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
                r
            }),
        )
        .fallback(|uri: http::Uri| async move {
            json_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "unknown path {}; the WebSocket server serves GET /ws",
                    uri.path()
                ),
            )
        })
        .with_state(AppState { upstream, stats })
}

async fn upgrade(State(st): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| session(socket, st))
}

async fn session(mut ws: WebSocket, st: AppState) {
    let mut ask = ChatOptions::default();
    while let Some(msg) = ws.recv().await {
        let prompt = match msg {
            Ok(Message::Text(t)) if t.as_bytes() == lab_codec::wt::USAGE => {
                ask.usage = true;
                continue;
            }
            Ok(Message::Text(t)) => match lab_codec::wt::parse_answer_len(t.as_bytes()) {
                None => t.to_string(),
                Some(Ok(n)) => {
                    ask.answer_len = Some(n);
                    continue;
                }
                Some(Err(e)) => {
                    st.stats.error();
                    let _ = ws
                        .send(Message::Close(Some(CloseFrame {
                            code: CLOSE_POLICY,
                            reason: e.into(),
                        })))
                        .await;
                    return;
                }
            },
            Ok(Message::Binary(_)) => {
                st.stats.error();
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code: CLOSE_UNSUPPORTED,
                        reason: "prompts are text messages".into(),
                    })))
                    .await;
                return;
            }
            Ok(Message::Close(_)) => return,
            Ok(_) => continue,
            Err(e) => {
                use tokio_tungstenite::tungstenite::Error;
                tracing::debug!("WebSocket ended: {e}");
                let inner = e.into_inner();
                if let Some(Error::Capacity(c)) = inner.downcast_ref::<Error>() {
                    st.stats.error();
                    let _ = ws
                        .send(Message::Close(Some(CloseFrame {
                            code: CLOSE_TOO_BIG,
                            reason: format!("{c}; a prompt is at most 1 MiB").into(),
                        })))
                        .await;
                }
                return;
            }
        };
        st.stats.request();
        if answer(&mut ws, &st, &prompt, std::mem::take(&mut ask))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Streams the answer to one prompt; Err if the client went away.
async fn answer(
    ws: &mut WebSocket,
    st: &AppState,
    prompt: &str,
    ask: ChatOptions,
) -> Result<(), axum::Error> {
    let mut tokens = match st.upstream.chat(prompt, ask).await {
        Ok(t) => t,
        Err(e) => {
            st.stats.error();
            ws.send(Message::Binary(e.to_string().into())).await?;
            return ws.send(Message::Text("".into())).await;
        }
    };
    let mut batch = Vec::new();
    loop {
        // Tokens that arrived together leave in one write.
        let r = tokens.next_batch(&mut batch).await;
        st.stats.tokens(batch.len() as u64);
        for t in batch.drain(..) {
            ws.feed(Message::Text(t.into())).await?;
        }
        match r {
            Ok(true) => {}
            Ok(false) => {
                if let Some(n) = tokens.usage().filter(|_| ask.usage) {
                    let m = String::from_utf8_lossy(&lab_codec::wt::usage_message(n)).into_owned();
                    ws.feed(Message::Text(m.into())).await?;
                }
                break;
            }
            Err(e) => {
                st.stats.error();
                ws.feed(Message::Binary(e.to_string().into())).await?;
                break;
            }
        }
        ws.flush().await?;
    }
    ws.send(Message::Text("".into())).await
}
