//! Helpers shared by every integration test: the loopback stack, running the `lab`
//! binary, scratch files and directories that remove themselves, guards that take a lab
//! down when a test ends (passed or failed), checks that nothing was left behind, and
//! an oracle for netem that does not ask lab.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lab::loopback::{Stack, UpstreamChoice};
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
    Stack::start(
        UpstreamChoice::Mock(fast_mock(max_tokens)),
        MODEL,
        std::path::Path::new(env!("CARGO_BIN_EXE_lab")),
    )
    .await
    .unwrap()
}

/// The tokens the fast mock answers `prompt` with.
pub fn expected(prompt: impl AsRef<str>, max_tokens: usize) -> Vec<String> {
    lab_servers::textgen::tokens(1, MODEL, prompt.as_ref(), Some(max_tokens))
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
    pub child: Child,
    pub ready: serde_json::Value,
}

impl Server {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, None)
    }
    /// As [`Server::start`], with the server's open-file limit (soft and hard) set to
    /// `nofile`.
    pub fn start_limited(args: &[&str], nofile: u64) -> Self {
        Self::start_with(args, Some(nofile))
    }
    fn start_with(args: &[&str], nofile: Option<u64>) -> Self {
        let mut cmd = Command::new(LAB);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd
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
    mock_timed("2ms", "0", 12)
}

/// The mock answering at once with `tokens` tokens `tbt` apart (a duration such as
/// `100ms`), without jitter.
pub fn mock_paced(tbt: &str, tokens: usize) -> Server {
    mock_timed("0", tbt, tokens)
}

/// The mock on loopback with this TTFT and TBT, no jitter, and `tokens` tokens an
/// answer.
fn mock_timed(ttft: &str, tbt: &str, tokens: usize) -> Server {
    let tokens = tokens.to_string();
    Server::start(&[
        "serve",
        "llm",
        "--listen",
        "127.0.0.1:0",
        "--ttft",
        ttft,
        "--tbt",
        tbt,
        "--jitter",
        "0",
        "--max-tokens",
        &tokens,
    ])
}

/// Every approach's server as its own `lab serve` process on loopback, in registry
/// order, against the upstream `up`, with `extra` flags.
pub fn every_server(up: &str, extra: &[&str]) -> Vec<(lab::approach::Approach, Server)> {
    lab::approach::all()
        .map(|a| {
            let mut args = vec![
                "serve",
                a.server,
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                up,
            ];
            args.extend_from_slice(extra);
            (a, Server::start(&args))
        })
        .collect()
}

pub fn base(url: &str) -> String {
    url.trim_end_matches("/v1/chat/completions").to_owned()
}

/// A scratch directory or file, removed when the test ends (passed or failed).
pub struct Tmp(pub std::path::PathBuf);

impl std::ops::Deref for Tmp {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Tmp {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
            // A scratch file's own directory (`tmpfile`), now empty.
            if let Some(d) = self.0.parent()
                && d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("lab-test-"))
            {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// A directory that this test made itself, mode 0700, under the temporary directory:
/// never one that was there before (the temporary directory is shared, and the tests
/// run as root), so nothing in it can be someone else's file or link.
fn private_dir(name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("lab-test-{name}-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => return d,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot make {}: {e}", d.display()),
        }
    }
}

/// A fresh scratch directory of this test's own.
pub fn tmpdir(name: &str) -> Tmp {
    Tmp(private_dir(name))
}

/// A scratch file holding `text`, named `name`, in a fresh directory of its own.
pub fn tmpfile(name: &str, text: &str) -> Tmp {
    let p = private_dir(name).join(name);
    std::fs::write(&p, text).unwrap();
    Tmp(p)
}

/// Runs `lab` with `args` (stdin closed) and returns what it did.
pub fn lab(args: &[&str]) -> std::process::Output {
    Command::new(LAB)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run lab")
}

/// An output as a person reads it, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `lab` with `args`, asserts it succeeded, and returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let o = lab(args);
    assert!(o.status.success(), "lab {}: {}", args.join(" "), text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `lab status --lab <name> --json`: the lab's state record with its live facts.
#[allow(dead_code)]
pub fn status_json(name: &str) -> serde_json::Value {
    let o = lab(&["status", "--lab", name, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["labs"][0].clone()
}

/// (pid, start time) of every process a lab's state record (or status) lists.
#[allow(dead_code)]
pub fn recorded_pids(state: &serde_json::Value) -> Vec<(u32, u64)> {
    state["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().unwrap() as u32,
                p["start"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Takes lab `name` down when dropped, so a failed assertion leaves nothing for the
/// next run. A lab already down is fine.
pub struct Down(pub String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&["down", &self.0]);
    }
}

/// The namespaces named like lab `name`'s, sorted.
pub fn namespaces_of(name: &str) -> Vec<String> {
    let prefix = format!("lab-{name}-");
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

/// Nothing of lab `name` is left: no namespace (but those in `except`) and no run
/// directory.
pub fn assert_nothing_left(name: &str, except: &[&str]) {
    let left: Vec<String> = namespaces_of(name)
        .into_iter()
        .filter(|n| !except.contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(
        !std::path::Path::new(&format!("/run/lab/{name}")).exists(),
        "run directory /run/lab/{name} left"
    );
}

/// Does this kernel have netem? Asked of iproute2's `tc` in a throwaway network
/// namespace (`unshare --net`), not of lab, so lab's own probe can be checked against it.
pub fn netem_by_tc() -> bool {
    let o = Command::new("unshare")
        .args([
            "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ])
        .output()
        .expect("run unshare and tc (iproute2, installed by scripts/setup.sh)");
    let err = String::from_utf8_lossy(&o.stderr);
    // Anything but success or "unknown qdisc kind" means the oracle itself failed.
    assert!(
        o.status.success() || err.contains("Specified qdisc kind is unknown"),
        "tc failed for another reason: {err}"
    );
    o.status.success()
}

/// The repository's root.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `lab run <topology> --results <results>`, from the repository's root.
pub fn run_topology(topology: &std::path::Path, results: &std::path::Path) -> std::process::Output {
    Command::new(LAB)
        .args([
            "run",
            topology.to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
        ])
        .current_dir(root())
        .output()
        .expect("run lab")
}

/// The one results directory under `results`, and its run.json.
pub fn saved_run(results: &std::path::Path) -> (std::path::PathBuf, serde_json::Value) {
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(results)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let run = serde_json::from_slice(&std::fs::read(dirs[0].join("run.json")).unwrap()).unwrap();
    (dirs[0].clone(), run)
}

/// `lab <args>` with its standard output a pipe whose reader has already gone (as in
/// `lab ... | head -1` once head has read its line): its status and its stderr.
pub fn with_closed_stdout(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: a new pipe; its ends are owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the read end is ours and closed at once; the write end goes to the child.
    unsafe { libc::close(fds[0]) };
    let write = unsafe { std::fs::File::from_raw_fd(fds[1]) };
    let o = Command::new(LAB)
        .args(args)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The kernel's inode numbers of lab `name`'s namespaces that exist now.
#[allow(dead_code)]
pub fn netns_inodes(name: &str) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    namespaces_of(name)
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect()
}

/// Live (not zombie) processes inside any of these namespaces, with their command
/// names.
#[allow(dead_code)]
pub fn processes_in(inodes: &[u64]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let ino = link
            .to_string_lossy()
            .trim_start_matches("net:[")
            .trim_end_matches(']')
            .parse::<u64>()
            .unwrap_or(0);
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if inodes.contains(&ino) && !zombie {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_owned()));
        }
    }
    out
}

/// Every `.rs` file under `dir`, recursively, in order.
pub fn rust_sources(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Runs lab with `args`; it must exit with `code` and say `needle` on stderr.
pub fn lab_fails(args: &[&str], code: i32, needle: &str) {
    let out = std::process::Command::new(LAB).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: '{needle}' not in: {stderr}"
    );
}

/// The recorded processes of a lab's state, and every live process in their sessions
/// (what a node forked), as (pid, start time).
#[allow(dead_code)]
pub fn processes_and_sessions(state: &serde_json::Value) -> Vec<(u32, u64)> {
    let recorded = recorded_pids(state);
    let mut all = recorded.clone();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let sid: u32 = rest.split(' ').nth(3).unwrap().parse().unwrap();
        if recorded.iter().any(|(p, _)| *p == sid) && !all.iter().any(|(p, _)| *p == pid) {
            all.push((pid, lab::netlab::sys::start_time(pid).unwrap_or(0)));
        }
    }
    all
}

/// `lab run <topo>` in the background (its output piped), once its lab is up: the run
/// and the lab's state record. The caller waits for the run.
#[allow(clippy::zombie_processes, dead_code)]
pub fn run_until_up(
    name: &str,
    topo: &std::path::Path,
    results: &std::path::Path,
) -> (std::process::Child, serde_json::Value) {
    let mut run = Command::new(LAB)
        .args([
            "run",
            topo.to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(format!("/run/lab/{name}/state.json"))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && v["phase"] == "up"
        {
            return (run, v);
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            let _ = run.kill();
            let o = run.wait_with_output().unwrap();
            panic!("the lab did not come up: {}", text(&o));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[allow(dead_code)]
pub fn running(pid: u32, start: u64) -> bool {
    lab::netlab::sys::start_time(pid) == Some(start)
        && lab::netlab::sys::proc_state_rss(pid).is_some_and(|(s, _)| s != 'Z')
}

/// Nothing of lab `name`: no namespace, no run directory, none of `procs` running.
#[allow(dead_code)]
pub fn assert_gone(name: &str, procs: &[(u32, u64)]) {
    assert_nothing_left(name, &[]);
    for (pid, start) in procs {
        assert!(!running(*pid, *start), "process {pid} is still running");
    }
}
