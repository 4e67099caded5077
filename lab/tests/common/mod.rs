//! Helpers shared by the loopback integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lab::stack::{Stack, UpstreamChoice};
use lab_codec::trust::Trust;
use lab_servers::llm::MockConfig;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const MODEL: &str = "gemma3:12b";

/// The approach named `name` in the registry.
pub fn ap(name: &str) -> lab::approach::Approach {
    name.parse().unwrap()
}

/// A fast, jitter-free mock: answers capped at `max_tokens`.
pub fn fast_mock(max_tokens: usize) -> MockConfig {
    MockConfig {
        ttft: Duration::from_millis(5),
        tbt: Duration::from_millis(1),
        jitter: 0.0,
        max_tokens: Some(max_tokens),
        models: vec![MODEL.into()],
        ..MockConfig::default()
    }
}

pub async fn stack(max_tokens: usize) -> Stack {
    Stack::start(UpstreamChoice::Mock(fast_mock(max_tokens)), MODEL)
        .await
        .unwrap()
}

/// The tokens the fast mock answers `prompt` with.
pub fn expected(prompt: &str, max_tokens: usize) -> Vec<String> {
    lab_servers::textgen::tokens(1, MODEL, prompt, Some(max_tokens))
}

/// One HTTPS request on a new connection; returns status, content type and body.
pub async fn https(
    addr: SocketAddr,
    trust: &Trust,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(trust.http1_client_config().unwrap()));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8_lossy(&body).into_owned())
}

/// Decodes an SSE body into events.
pub fn sse_events(body: &str) -> Vec<lab_codec::sse::Event> {
    let mut d = lab_codec::sse::Decoder::new();
    d.extend(body.as_bytes());
    let mut out = Vec::new();
    while let Some(e) = d.next_event().unwrap() {
        out.push(e);
    }
    out
}

/// Decodes a WebTransport stream's bytes into answers: the tokens before each `0:`, and
/// last whatever followed the final `0:` (empty for a well-ended stream). Fails on any
/// framing error or a truncated message.
pub fn lenprefix_answers(bytes: &[u8]) -> Vec<Vec<String>> {
    let mut dec = lab_codec::lenprefix::Decoder::new();
    dec.extend(bytes);
    let mut answers = vec![Vec::new()];
    while let Some(f) = dec.next_frame().unwrap() {
        match f {
            lab_codec::lenprefix::Frame::Message(m) => answers
                .last_mut()
                .unwrap()
                .push(String::from_utf8(m.to_vec()).unwrap()),
            lab_codec::lenprefix::Frame::End => answers.push(Vec::new()),
        }
    }
    dec.finish().unwrap();
    answers
}

/// The content tokens of an OpenAI chunk stream.
pub fn raw_tokens(body: &str) -> Vec<String> {
    sse_events(body)
        .into_iter()
        .filter(|e| !e.is_done())
        .filter_map(|e| {
            let c: lab_codec::openai::ChatChunk = serde_json::from_str(&e.data).unwrap();
            c.content().map(str::to_owned)
        })
        .collect()
}

/// The `lab` binary under test.
pub const LAB: &str = env!("CARGO_BIN_EXE_lab");

/// A `lab serve` child, killed with SIGTERM on drop.
pub struct Server {
    child: Child,
    ready: serde_json::Value,
}

impl Server {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(LAB)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{args:?}: '{line}': {e}"));
        assert_eq!(ready["event"], "ready");
        Self { child, ready }
    }
    pub fn str(&self, k: &str) -> String {
        self.ready[k].as_str().unwrap().to_owned()
    }
    /// Stops with SIGTERM and returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let ok = self.child.wait().unwrap().success();
        std::mem::forget(self);
        ok
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mock() -> Server {
    Server::start(&[
        "serve",
        "llm",
        "--listen",
        "127.0.0.1:0",
        "--ttft",
        "2ms",
        "--tbt",
        "0",
        "--jitter",
        "0",
        "--max-tokens",
        "12",
    ])
}

pub fn base(url: &str) -> String {
    url.trim_end_matches("/v1/chat/completions").to_owned()
}

pub fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lab-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
