//! The mock's HTTP/1.1: request heads parsed with `httparse`, bodies (with
//! `Content-Length`, chunked, or `Expect: 100-continue`), keep-alive, and answers in
//! Ollama's bytes.

use super::*;

pub(super) const MAX_HEAD: usize = 64 * 1024;
pub(super) const MAX_HEADERS: usize = 64;
/// What an HTTP/2 client sends first (RFC 9113, 3.4).
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A parsed request head.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) http10: bool,
    pub(super) close: bool,
    pub(super) content_length: Option<usize>,
    pub(super) chunked: bool,
    pub(super) expect_continue: bool,
    pub(super) origin: Option<String>,
}

pub(super) enum Parsed {
    Head(Head, usize),
    Partial,
    Invalid(String),
    /// The head is over 64 KiB or has more than 64 fields: 431.
    TooLarge(String),
}

pub(super) fn parse_head(buf: &[u8]) -> Parsed {
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

pub(super) enum BodyError {
    TooLarge,
    Invalid(String),
    Io,
}

pub(super) struct Conn<S> {
    pub(super) io: S,
    pub(super) buf: BytesMut,
    pub(super) cfg: Arc<MockConfig>,
    pub(super) stats: Arc<ServerStats>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(io: S, cfg: Arc<MockConfig>, stats: Arc<ServerStats>) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(8192),
            cfg,
            stats,
        }
    }

    /// Reads more bytes; `Ok(false)` at EOF. Gives up when nothing arrives for the idle
    /// timeout.
    pub(super) async fn fill(&mut self) -> std::io::Result<bool> {
        let idle = self.cfg.limits.idle;
        self.fill_by(Instant::now() + idle).await
    }

    /// Reads more bytes, giving up at `deadline`.
    pub(super) async fn fill_by(&mut self, deadline: Instant) -> std::io::Result<bool> {
        let n = tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline"))??;
        Ok(n > 0)
    }

    /// Whether the client opened with HTTP/2's connection preface (prior knowledge,
    /// h2c): what lab's servers do in a load test, so that thousands of streams share
    /// one upstream connection. The bytes read stay in the buffer either way.
    pub(super) async fn sniff_h2(&mut self) -> std::io::Result<bool> {
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

    pub(super) async fn run(mut self) -> std::io::Result<()> {
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

    pub(super) async fn read_body(&mut self, head: &Head) -> Result<Vec<u8>, BodyError> {
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

    pub(super) async fn stream(
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

    pub(super) async fn write_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.io.write_all(b).await?;
        self.io.flush().await
    }

    pub(super) async fn write_reply(
        &mut self,
        r: Reply,
        origin: Option<&str>,
    ) -> std::io::Result<()> {
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

/// A streamed answer on an HTTP/1.1 connection, in Ollama's bytes.
pub(super) struct H1<'a, S> {
    pub(super) conn: &'a mut Conn<S>,
    pub(super) head: &'a Head,
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

pub(super) fn reason(status: u16) -> &'static str {
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
pub(super) fn frame(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}
