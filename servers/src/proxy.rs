//! The raw-API proxy: terminates TLS and forwards every request to an OpenAI-compatible
//! upstream, streaming both bodies. Upstream chunks are passed on the moment they arrive;
//! nothing waits for more. Chunks that have already arrived together leave in one write
//! (`coalesced`): the body's bytes are the upstream's, but at full speed its HTTP/1.1
//! chunks (a hop's own framing) are fewer and larger than the upstream's. Keep-alive on
//! both sides (the upstream side is a pool).
//!
//! If the upstream is unreachable or the exchange fails before a response head arrives,
//! the client gets 502 with an OpenAI-style JSON error, and the proxy keeps serving.

use crate::http::json_error;
use crate::stats::ServerStats;
use crate::upstream::UpstreamError;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    client: Client<crate::upstream::Connector, Body>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    stats: Arc<ServerStats>,
}

/// The path the raw API streams on (the proxy forwards every path).
pub const PATH: &str = "/v1/chat/completions";

/// Sets up the raw-API proxy on `listener`; errors in its settings come here, before it
/// serves.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let app = app(&env.upstream, env.upstream_h2, env.stats.clone())?;
    crate::http::start_router(
        listener,
        env,
        "raw-API proxy",
        app,
        crate::http::Version::Http1,
    )
}

/// The proxy router for `upstream` (e.g. `http://127.0.0.1:11434`), over HTTP/2 (h2c)
/// with `h2`.
pub fn app(upstream: &str, h2: bool, stats: Arc<ServerStats>) -> Result<Router, UpstreamError> {
    let bad = |why: &str| UpstreamError::BadUrl {
        url: upstream.into(),
        why: why.into(),
    };
    let uri: Uri = upstream
        .parse()
        .map_err(|_| bad("not a URL; expected e.g. http://127.0.0.1:11434"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| bad("no scheme; use http:// or https://"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(bad("the scheme must be http or https"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
    let client = crate::upstream::client(upstream, h2)?;
    let state = AppState {
        client,
        scheme,
        authority,
        base_path: uri.path().trim_end_matches('/').to_owned(),
        stats,
    };
    Ok(Router::new().fallback(forward).with_state(state))
}

/// Headers that belong to one hop and must not be forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for n in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(named) {
        h.remove(n.as_str());
    }
}

async fn forward(State(st): State<AppState>, req: Request) -> Response {
    st.stats.request();
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme(st.scheme.clone())
        .authority(st.authority.clone())
        .path_and_query(format!("{}{pq}", st.base_path))
        .build();
    let Ok(uri) = uri else {
        st.stats.error();
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid request path",
        );
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = http::HeaderValue::from_str(st.authority.as_str()) {
        parts.headers.insert(header::HOST, v);
    }
    // The body streams to the upstream as it arrives; if it turns out malformed, the
    // exchange fails, and that is the client's fault (400), not the upstream's (502).
    let bad_body = Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = bad_body.clone();
    let body = Body::new(http_body_util::BodyExt::map_err(body, move |e| {
        if let Ok(mut s) = seen.lock() {
            *s = Some(e.to_string());
        }
        e
    }));
    match st.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, coalesced(body))
        }
        Err(_) if bad_body.lock().is_ok_and(|b| b.is_some()) => {
            st.stats.error();
            let why = bad_body
                .lock()
                .ok()
                .and_then(|b| b.clone())
                .unwrap_or_default();
            json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("invalid request body: {why}"),
            )
        }
        Err(e) => {
            st.stats.error();
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            json_error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("upstream {} failed: {msg}", st.authority),
            )
        }
    }
}

/// The most bytes [`coalesced`] puts together in one frame.
const COALESCE_MAX: usize = 16 * 1024;

type Frames = tokio::sync::mpsc::Receiver<Result<hyper::body::Frame<Bytes>, hyper::Error>>;

/// A response body whose data frames that have already arrived go on as one.
///
/// hyper hands an HTTP/1.1 body over one chunk at a time, and its connection task reads
/// the next only once the last was taken; passed straight on, every upstream chunk (a
/// token) costs a TLS record and a write of its own. A task of its own takes the
/// upstream's frames: where the next chunk is not there yet, it yields to the runtime
/// once and then sends what it has, so no chunk waits for one that has not arrived. (A
/// yield inside the body's own `poll_frame` does not work: hyper's connection polls the
/// body again at once, which ends the yield before any other task has run.) The task
/// ends as soon as the client's side is dropped, also while it waits for the upstream,
/// and drops the upstream's body with it.
fn coalesced<B>(mut body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static,
{
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = bytes::BytesMut::new();
        let Some(mut next) = frame_for(&mut body, &tx).await else {
            return;
        };
        while let Some(item) = next.take() {
            let frame = match item {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            match frame.into_data() {
                Ok(d) => buf.extend_from_slice(&d),
                Err(other) => {
                    if tx.send(Ok(other)).await.is_err() {
                        return;
                    }
                    match frame_for(&mut body, &tx).await {
                        Some(n) => next = n,
                        None => return,
                    }
                    continue;
                }
            }
            // Take what has arrived behind it, yielding once for hyper's connection
            // task to hand over a chunk that is in its buffer.
            let mut yielded = false;
            while buf.len() < COALESCE_MAX {
                match body.frame().now_or_never() {
                    Some(Some(Ok(f))) if f.is_data() => {
                        if let Ok(d) = f.into_data() {
                            buf.extend_from_slice(&d);
                        }
                        yielded = false;
                    }
                    Some(other) => {
                        next = other;
                        break;
                    }
                    None if !yielded => {
                        yielded = true;
                        tokio::task::yield_now().await;
                    }
                    None => break,
                }
            }
            if tx
                .send(Ok(hyper::body::Frame::data(buf.split().freeze())))
                .await
                .is_err()
            {
                return;
            }
            if next.is_none() && !body.is_end_stream() {
                match frame_for(&mut body, &tx).await {
                    Some(n) => next = n,
                    None => return,
                }
            }
        }
    });
    Body::new(FramesBody(rx))
}

/// The body's next frame, or `None` once nobody takes frames from `tx` any more (the
/// client left): the upstream may send nothing for as long as it likes, and its body
/// must not be held until it does.
async fn frame_for<B>(
    body: &mut B,
    tx: &tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, hyper::Error>>,
) -> Option<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    use http_body_util::BodyExt;
    tokio::select! {
        f = body.frame() => Some(f),
        _ = tx.closed() => None,
    }
}

/// The frames [`coalesced`]'s task sends, as a body.
struct FramesBody(Frames);

impl hyper::body::Body for FramesBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Frame;
    use std::time::Duration;

    type Upstream = tokio::sync::mpsc::UnboundedSender<Result<Frame<Bytes>, hyper::Error>>;

    /// An upstream body whose frames the test sends, and [`coalesced`] of it.
    fn upstream() -> (Upstream, Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let frames =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        (
            tx,
            coalesced(http_body_util::StreamBody::new(Box::pin(frames))),
        )
    }

    /// Frames that are already there go on as one, in order; one that comes later goes
    /// on by itself, without waiting for more; trailers and the end come after the data
    /// before them.
    #[tokio::test]
    async fn coalesced_joins_what_has_arrived_and_waits_for_nothing() {
        let (tx, mut body) = upstream();
        for t in ["a", "b", "c"] {
            tx.send(Ok(Frame::data(Bytes::from(t)))).unwrap();
        }
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abc");
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(Ok(Frame::data(Bytes::from("d")))).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(Ok(Frame::data(Bytes::from("e")))).unwrap();
            let mut t = HeaderMap::new();
            t.insert("x-end", "1".parse().unwrap());
            tx.send(Ok(Frame::trailers(t))).unwrap();
        });
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "d");
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "e");
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_trailers().unwrap()["x-end"], "1");
        late.await.unwrap();
        assert!(body.frame().await.is_none());
    }

    /// A client that leaves while the upstream is quiet lets the upstream's body go at
    /// once, not when its next chunk comes.
    #[tokio::test]
    async fn coalesced_lets_the_upstream_go_when_the_client_leaves() {
        let (tx, mut body) = upstream();
        tx.send(Ok(Frame::data(Bytes::from("a")))).unwrap();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "a");
        // The task now waits for a chunk that does not come.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!tx.is_closed());
        drop(body);
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("the upstream's body is dropped once the client's side is");
    }
}
