//! The mock over HTTP/2 with prior knowledge (h2c): the same routes and answers, each
//! event of a stream in a DATA frame.

use super::*;

/// The body of an HTTP/2 answer.
pub(super) type H2Body =
    http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// Serves a connection that opened with HTTP/2's preface: the same routes and answers as
/// over HTTP/1.1, each SSE event of a stream in a DATA frame instead of an HTTP chunk.
/// Ollama itself speaks only HTTP/1.1; over HTTP/2 the mock is byte-faithful in the
/// events, not in the framing (which no client of lab's servers sees).
pub(super) async fn h2c<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
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
    // Every stream of a server's load test comes over this one connection. With
    // hyper's 1 MB connection window, a server's requests queued for window found it
    // in slivers and went out as many small DATA frames, which h2 here counts against
    // half the window and, past it, ends the connection with ENHANCE_YOUR_CALM
    // ("too_many_data_frames"): at 100,000 streams over 7 servers, 59,308 of them
    // failed so. The servers' own window towards the mock is 1 GiB for the same
    // reason; so is the mock's now.
    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .max_concurrent_streams(1 << 20)
        .initial_connection_window_size(crate::upstream::UPSTREAM_H2_CONNECTION_WINDOW)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
        .map_err(std::io::Error::other)
}

/// One HTTP/2 request: routed as over HTTP/1.1.
pub(super) async fn h2_answer(
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

pub(super) fn h2_reply(r: Reply) -> http::Response<H2Body> {
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
pub(super) struct H2 {
    pub(super) tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    /// Told when the head is due (with the first token).
    pub(super) head: Option<tokio::sync::oneshot::Sender<()>>,
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
pub(super) struct Prefixed<S> {
    pub(super) pre: bytes::Bytes,
    pub(super) io: S,
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
