//! The raw-API proxy: terminates TLS and forwards every request to an OpenAI-compatible
//! upstream, streaming both bodies. Upstream chunks are passed on the moment they arrive;
//! nothing waits for more. Chunks that have already arrived together leave in one write
//! ([`Coalesced`]): the body's bytes are the upstream's, but at full speed its HTTP/1.1
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
            Response::from_parts(parts, Body::new(Coalesced::new(body)))
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

/// The most bytes [`Coalesced`] puts together in one frame.
const COALESCE_MAX: usize = 16 * 1024;

/// A response body whose data frames that have already arrived go on as one.
///
/// hyper hands an HTTP/1.1 body over one chunk at a time, and its connection task reads
/// the next only once the last was taken; passed straight on, every upstream chunk (a
/// token) costs a TLS record and a write of its own. Where the next chunk is not there
/// yet, this yields to the runtime once and then
/// sends what it has, so no chunk waits for one that has not arrived.
struct Coalesced<B: hyper::body::Body> {
    inner: B,
    buf: bytes::BytesMut,
    yielded: bool,
    /// The yield under way: tokio's, which lets the tasks woken before it run first (a
    /// task that wakes itself would run again at once, from the worker's LIFO slot).
    yielding: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// A frame that is not data (trailers), or the end, held until `buf` has gone.
    held: Option<Option<Result<hyper::body::Frame<bytes::Bytes>, B::Error>>>,
}

impl<B: hyper::body::Body<Data = bytes::Bytes>> Coalesced<B> {
    fn new(inner: B) -> Self {
        Self {
            inner,
            buf: bytes::BytesMut::new(),
            yielded: false,
            yielding: None,
            held: None,
        }
    }

    fn take(&mut self) -> hyper::body::Frame<bytes::Bytes> {
        self.yielded = false;
        hyper::body::Frame::data(self.buf.split().freeze())
    }
}

impl<B> hyper::body::Body for Coalesced<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, B::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            return Poll::Ready(held);
        }
        if let Some(y) = &mut this.yielding {
            if y.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.yielding = None;
        }
        while this.buf.len() < COALESCE_MAX {
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => {
                        this.buf.extend_from_slice(&d);
                        this.yielded = false;
                    }
                    Err(f) if this.buf.is_empty() => return Poll::Ready(Some(Ok(f))),
                    Err(f) => {
                        this.held = Some(Some(Ok(f)));
                        return Poll::Ready(Some(Ok(this.take())));
                    }
                },
                Poll::Ready(end) if this.buf.is_empty() => return Poll::Ready(end),
                Poll::Ready(end) => {
                    this.held = Some(end);
                    return Poll::Ready(Some(Ok(this.take())));
                }
                Poll::Pending if this.buf.is_empty() => return Poll::Pending,
                Poll::Pending if !this.yielded => {
                    this.yielded = true;
                    let mut y = Box::pin(tokio::task::yield_now());
                    if y.as_mut().poll(cx).is_pending() {
                        this.yielding = Some(y);
                        return Poll::Pending;
                    }
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(this.take())))
    }

    fn is_end_stream(&self) -> bool {
        self.buf.is_empty() && self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut h = self.inner.size_hint();
        let n = self.buf.len() as u64;
        h.set_lower(h.lower() + n);
        if let Some(u) = h.upper() {
            h.set_upper(u + n);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::body::Frame;
    use std::time::Duration;

    /// Frames that are already there go on as one, in order; one that comes later goes
    /// on by itself, without waiting for more; trailers and the end come after the data
    /// before them.
    #[tokio::test]
    async fn coalesced_joins_what_has_arrived_and_waits_for_nothing() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, String>>();
        let frames =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let mut body = Coalesced::new(http_body_util::StreamBody::new(Box::pin(frames)));
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
}
