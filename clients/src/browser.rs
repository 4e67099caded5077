//! The browser client: headless Chromium runs lab's page (`browser_page.html`, from a
//! `file://` URL, a secure context), and the page streams each prompt with the
//! browser's own WebTransport, `fetch()` or `EventSource`, and WebSocket, timing every
//! token with `performance.now()`. lab drives the page over Chromium's DevTools
//! protocol on the `--remote-debugging-pipe` file descriptors (3 and 4; no port is
//! opened), with three calls: open the page, attach to it, evaluate `labRun(...)` per
//! prompt. What the page returns (each token with its arrival time, bytes, set-up
//! time) becomes the prompt's record exactly as the native clients' do, so the digest,
//! TBT and the rest are computed by the same code.
//!
//! The browser is its own process group, started with PR_SET_PDEATHSIG (SIGKILL when
//! this process dies, however); it is killed by group and reaped when the runner goes,
//! and its profile directory removed. The group's leader is recorded in
//! `browser.json` in the browser's directory, so that `lab clean` finds a browser a
//! killed run left behind.

use crate::record::{ErrorCategory, PromptError, PromptRecord, Recorder};
use crate::{BoxFuture, Runner, RunnerOpts, Target, TokenSink};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// The page, written into the browser's directory.
const PAGE: &str = include_str!("browser_page.html");

/// Where Debian's package puts Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The record of a running browser, in its directory: what `lab clean` reads.
pub const RECORD: &str = "browser.json";

/// What the page can run: the protocol its JavaScript speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WebTransport, tokens on a bidirectional stream per prompt.
    Wt,
    /// WebTransport, tokens in datagrams, the tally on the stream.
    WtDatagrams,
    /// SSE by `fetch()` POST with a streaming body reader.
    Sse,
    /// SSE by `EventSource` (GET `?message=`).
    SseEventSource,
    /// WebSocket, a text message per token.
    Ws,
}

impl Kind {
    fn page_name(self) -> &'static str {
        match self {
            Kind::Wt => "wt",
            Kind::WtDatagrams => "wt-dgram",
            Kind::Sse => "sse",
            Kind::SseEventSource => "sse-eventsource",
            Kind::Ws => "ws",
        }
    }

    fn webtransport(self) -> bool {
        matches!(self, Kind::Wt | Kind::WtDatagrams)
    }
}

/// Where and how to run the browser.
#[derive(Debug, Clone)]
pub struct BrowserSpec {
    pub kind: Kind,
    /// A directory of the browser's own (made if missing, mode 0700): the page, the
    /// profile, the record. lab puts it in the run directory of the lab.
    pub dir: PathBuf,
    /// The Chromium binary.
    pub chromium: PathBuf,
}

/// The browser client for `target` (not an approach's runner: a client of its own).
pub fn client(target: Target, opts: &RunnerOpts, spec: &BrowserSpec) -> Result<Box<dyn Runner>> {
    Ok(Box::new(BrowserRunner::new(target, opts, spec)?))
}

/// The certificate facts the page needs: the leaf's SHA-256 (WebTransport's
/// `serverCertificateHashes`) and its public key's SHA-256 in base64 (Chromium's
/// `--ignore-certificate-errors-spki-list`, for TLS over TCP).
fn cert_facts(trust: &lab_codec::trust::Trust, kind: Kind) -> Result<(String, Option<String>)> {
    use base64::Engine;
    use lab_codec::trust::{Trust, sha256};
    match trust {
        Trust::Roots(certs) => {
            let der = certs
                .first()
                .ok_or_else(|| anyhow!("no certificate to trust"))?;
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| anyhow!("the server's certificate does not parse: {e}"))?;
            let spki = sha256(cert.public_key().raw);
            Ok((
                hex::encode(sha256(der.as_ref())),
                Some(base64::engine::general_purpose::STANDARD.encode(spki)),
            ))
        }
        Trust::Pin(p) if kind.webtransport() => Ok((hex::encode(p), None)),
        Trust::Pin(_) => bail!(
            "the browser client trusts a TLS server by its public key: give --ca FILE (the server's cert.pem), not --cert-hash"
        ),
        Trust::Insecure => bail!(
            "the browser client cannot skip certificate checks: give --ca FILE (the server's cert.pem)"
        ),
    }
}

pub struct BrowserRunner {
    opts: RunnerOpts,
    kind: Kind,
    url: String,
    cert_sha256: String,
    browser: Arc<Browser>,
}

impl BrowserRunner {
    pub fn new(target: Target, opts: &RunnerOpts, spec: &BrowserSpec) -> Result<Self> {
        if opts.mode == crate::record::Mode::Fresh
            && matches!(spec.kind, Kind::Sse | Kind::SseEventSource)
        {
            bail!(
                "a browser chooses its own HTTP connections, so `fresh` cannot be kept over SSE: use reuse"
            );
        }
        let (cert_sha256, spki) = if target.tls {
            cert_facts(&opts.trust, spec.kind)?
        } else {
            (String::new(), None)
        };
        let scheme = if target.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}{}", target.authority, target.path);
        let browser = Browser::launch(spec, spki.as_deref())?;
        Ok(Self {
            opts: opts.clone(),
            kind: spec.kind,
            url,
            cert_sha256,
            browser: Arc::new(browser),
        })
    }

    /// Runs one prompt in the page: its record, and its tokens in order.
    async fn prompt(&self, index: usize, prompt: &crate::Prompt) -> (PromptRecord, Vec<String>) {
        let spec = json!({
            "kind": self.kind.page_name(),
            "url": self.url,
            "cert_sha256": self.cert_sha256,
            "mode": self.opts.mode.to_string(),
            "prompt": prompt.text,
            "max_tokens": prompt.max_tokens,
            "timeout_ms": self.opts.timeout.as_millis() as u64,
        });
        let mut rec = Recorder::start();
        let expr = format!("labRun({spec})");
        let got = self
            .browser
            .evaluate(&expr, self.opts.timeout + Duration::from_secs(5))
            .await;
        let (error, total, tokens) = match got {
            Ok(v) => record_from(&mut rec, &v),
            Err(e) => (
                Some(PromptError::new(
                    ErrorCategory::Timeout,
                    format!("the browser did not answer: {e:#}"),
                )),
                None,
                Vec::new(),
            ),
        };
        let total = total.unwrap_or_else(|| rec.elapsed());
        let r = rec.finish_at(
            self.opts.approach,
            self.opts.mode,
            index,
            &prompt.text,
            error,
            total,
        );
        (r, tokens)
    }
}

fn ms(v: &Value) -> Option<Duration> {
    v.as_f64()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| Duration::from_secs_f64(x / 1000.0))
}

/// Fills `rec` from what the page returned: the prompt's error, the time of its last
/// token, and its tokens.
fn record_from(
    rec: &mut Recorder,
    v: &Value,
) -> (Option<PromptError>, Option<Duration>, Vec<String>) {
    let mut tokens = Vec::new();
    if let Some(c) = ms(&v["connect_ms"]) {
        rec.connected(c);
    }
    if v["reused"].as_bool() == Some(true) {
        rec.reused();
    }
    if let Some(s) = v["stream"].as_u64() {
        rec.stream(s);
    }
    rec.bytes(v["app_bytes"].as_u64().unwrap_or(0) as usize);
    let mut last = None;
    for t in v["tokens"].as_array().into_iter().flatten() {
        if let (Some(at), Some(tok)) = (ms(&t[0]), t[1].as_str()) {
            rec.token_at(tok, at);
            tokens.push(tok.to_owned());
            last = Some(at);
        }
    }
    if let Some(d) = v["datagrams"].as_array() {
        if let Some(t) = v["tally"].as_array() {
            rec.datagram_tally(t[0].as_u64().unwrap_or(0), t[1].as_u64().unwrap_or(0));
        }
        for x in d {
            if let (Some(seq), Some(tok), Some(len), Some(at)) =
                (x[0].as_u64(), x[1].as_str(), x[2].as_u64(), ms(&x[3]))
            {
                rec.datagram_token_at(seq, tok, at);
                tokens.push(tok.to_owned());
                rec.bytes(len as usize);
                last = last.max(Some(at));
            }
        }
    }
    let error = v["error"].as_object().map(|e| {
        let category = match e.get("category").and_then(Value::as_str) {
            Some("connect") => ErrorCategory::Connect,
            Some("handshake") => ErrorCategory::Handshake,
            Some("send") => ErrorCategory::Send,
            Some("upstream") => ErrorCategory::Upstream,
            Some("timeout") => ErrorCategory::Timeout,
            _ => ErrorCategory::Receive,
        };
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        PromptError::new(category, format!("in the browser: {message}"))
    });
    (error, last, tokens)
}

impl Runner for BrowserRunner {
    fn name(&self) -> &'static str {
        self.opts.approach
    }

    fn run<'a>(
        &'a mut self,
        index: usize,
        prompt: &'a crate::Prompt,
        sink: &'a mut TokenSink<'a>,
    ) -> BoxFuture<'a, PromptRecord> {
        Box::pin(async move {
            let (r, tokens) = self.prompt(index, prompt).await;
            for t in &tokens {
                sink(t);
            }
            r
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self
                .browser
                .evaluate("labClose()", Duration::from_secs(2))
                .await;
        })
    }
}

/// A running Chromium, the DevTools session to lab's page, and the pipe to it.
struct Browser {
    pgid: i32,
    child: Mutex<std::process::Child>,
    dir: PathBuf,
    to_browser: Mutex<std::fs::File>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    next: AtomicU64,
    page: PathBuf,
    /// The DevTools session to lab's page, once it is open.
    session: tokio::sync::OnceCell<String>,
}

/// A DevTools message that ended the browser's side of the pipe.
const GONE: &str = "__lab_gone__";

impl Browser {
    fn launch(spec: &BrowserSpec, spki: Option<&str>) -> Result<Browser> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        use std::os::unix::process::CommandExt;
        if !spec.chromium.exists() {
            bail!(
                "the browser client needs Chromium at {}: install it (apt-get install chromium, or scripts/setup.sh --browser), or set LAB_CHROMIUM to another Chromium",
                spec.chromium.display()
            );
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&spec.dir)
            .with_context(|| format!("cannot make {}", spec.dir.display()))?;
        // A directory someone else made or can write is not the browser's.
        let meta = std::fs::symlink_metadata(&spec.dir)?;
        if !meta.is_dir() || meta.permissions().mode() & 0o022 != 0 {
            bail!(
                "{} is not a directory of lab's own (a link, or writable by others)",
                spec.dir.display()
            );
        }
        let page = spec.dir.join("page.html");
        let profile = spec.dir.join("profile");
        write_new(&page, PAGE.as_bytes())?;
        let (cmd_r, cmd_w) = pipe()?;
        let (resp_r, resp_w) = pipe()?;
        let mut cmd = std::process::Command::new(&spec.chromium);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
        if let Some(spki) = spki {
            cmd.arg(format!("--ignore-certificate-errors-spki-list={spki}"));
        }
        cmd.arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(spec.dir.join("chromium.log"))?)
            .process_group(0);
        let (cr, rw) = (cmd_r.as_raw_fd(), resp_w.as_raw_fd());
        // SAFETY: between fork and exec only async-signal-safe calls: prctl and dup2.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::dup2(cr, 3) < 0
                    || libc::dup2(rw, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", spec.chromium.display()))?;
        drop((cmd_r, resp_w));
        let pid = child.id() as i32;
        let start = process_start(pid).unwrap_or(0);
        write_new(
            &spec.dir.join(RECORD),
            json!({ "pid": pid, "pgid": pid, "start": start })
                .to_string()
                .as_bytes(),
        )?;
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        read_messages(resp_r, pending.clone());
        Ok(Browser {
            pgid: pid,
            child: Mutex::new(child),
            dir: spec.dir.clone(),
            to_browser: Mutex::new(std::fs::File::from(cmd_w)),
            pending,
            next: AtomicU64::new(1),
            page,
            session: tokio::sync::OnceCell::new(),
        })
    }

    /// Opens lab's page in a new tab, attaches to it and waits until it is ready: the
    /// DevTools session to it.
    async fn open_page(&self) -> Result<String> {
        let url = format!("file://{}", self.page.display());
        let target = self
            .call(
                "Target.createTarget",
                json!({ "url": url }),
                None,
                Duration::from_secs(30),
            )
            .await?;
        let id = target["targetId"]
            .as_str()
            .ok_or_else(|| anyhow!("Chromium opened no tab: {target}"))?
            .to_owned();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": id, "flatten": true }),
                None,
                Duration::from_secs(10),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no DevTools session to the page: {attached}"))?
            .to_owned();
        let t0 = std::time::Instant::now();
        loop {
            let v = self
                .evaluate_in(&session, "window.labReady === true", Duration::from_secs(5))
                .await;
            if matches!(v, Ok(Value::Bool(true))) {
                return Ok(session);
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!(
                    "lab's page did not load in Chromium within 20 s ({v:?}); see {}",
                    self.dir.join("chromium.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One DevTools call, to the browser or (with `session`) the page: its result.
    async fn call(
        &self,
        method: &str,
        params: Value,
        session: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| anyhow!("a DevTools reader panicked"))?
            .insert(id, tx);
        {
            let mut w = self
                .to_browser
                .lock()
                .map_err(|_| anyhow!("a DevTools writer panicked"))?;
            let mut bytes = msg.to_string().into_bytes();
            bytes.push(0);
            w.write_all(&bytes)
                .context("cannot write to Chromium's DevTools pipe (the browser is gone)")?;
        }
        let answer = tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| anyhow!("{method}: no answer within {timeout:?}"))?
            .map_err(|_| anyhow!("{method}: the browser went away"))?;
        if answer.get(GONE).is_some() {
            bail!("{method}: the browser went away");
        }
        if let Some(e) = answer.get("error") {
            bail!("{method}: {e}");
        }
        Ok(answer["result"].clone())
    }

    /// Evaluates `expr` in lab's page (opened on first use), awaiting a promise: its
    /// value.
    async fn evaluate(&self, expr: &str, timeout: Duration) -> Result<Value> {
        let session = self.session.get_or_try_init(|| self.open_page()).await?;
        self.evaluate_in(session, expr, timeout).await
    }

    async fn evaluate_in(&self, session: &str, expr: &str, timeout: Duration) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
                Some(session),
                timeout,
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            bail!("the page threw: {ex}");
        }
        Ok(r["result"]["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser, its zygote, renderers and helpers.
        // SAFETY: signalling a process group this runner started and has not reaped.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        if let Ok(mut c) = self.child.lock() {
            let _ = c.wait();
        }
        // Helpers reparented elsewhere are still in the group: wait until it is empty.
        for _ in 0..100 {
            // SAFETY: signal 0 only asks whether the group has a member.
            if unsafe { libc::kill(-self.pgid, 0) } != 0 {
                break;
            }
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(self.dir.join("profile"));
        let _ = std::fs::remove_file(self.dir.join(RECORD));
    }
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array, which are ours from here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: just made, owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A process's start time, in clock ticks since boot (/proc/PID/stat, field 22): with
/// the pid, what tells it from a later process that got the same pid.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(19)?.parse().ok()
}

/// Creates `path` as a new file (never through a link or over an existing file).
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Reads NUL-terminated DevTools messages from the browser on a thread of its own and
/// hands each answer to its caller; when the pipe ends, every caller hears so.
fn read_messages(from: OwnedFd, pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>) {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(from);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = match f.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.iter().position(|&b| b == 0) {
                let msg: Vec<u8> = buf.drain(..=end).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&msg[..end]) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64()
                    && let Some(tx) = pending.lock().ok().and_then(|mut p| p.remove(&id))
                {
                    let _ = tx.send(v);
                }
            }
        }
        if let Ok(mut p) = pending.lock() {
            for (_, tx) in p.drain() {
                let _ = tx.send(json!({ GONE: true }));
            }
        }
    });
}
