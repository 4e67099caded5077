//! The `lab` binary as a user runs it: `lab serve` readiness lines, `lab client` in JSON
//! and interactive modes, curl against the servers, and bad command lines.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn serve_and_client_binaries_end_to_end() {
    let llm = mock();
    let up = base(&llm.str("url"));
    let servers = every_server(&up, &[]);
    let dir = tmpdir("e2e");
    let pfile = dir.join("prompts.txt");
    std::fs::write(&pfile, "# two prompts\nfirst prompt\nsecond prompt\n").unwrap();
    let mut digests = Vec::new();
    for (a, srv) in &servers {
        let name = a.name;
        // A plain-HTTP server (handoff) has no certificate to pin, and its client needs none.
        let pin: Vec<String> = match srv.ready["cert_sha256"].as_str() {
            Some(h) => vec!["--cert-hash".into(), h.into()],
            None => {
                assert!(!a.wire.app.tls(), "{name} printed no certificate");
                Vec::new()
            }
        };
        let out = Command::new(LAB)
            .args(["client", name, "--url", &srv.str("url")])
            .args(&pin)
            .args([
                "--json",
                "--mode",
                "fresh",
                "--prompts",
                pfile.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The records, then each connection's own statistics (fresh: one per prompt, and
        // each prompt's own: the fan-out's WebSocket).
        let (conns, recs): (Vec<_>, Vec<_>) = lines
            .into_iter()
            .partition(|v| v.get("connection").is_some());
        assert_eq!(recs.len(), 2, "{name}");
        assert_eq!(
            conns.len(),
            2 * (1 + a.session_connections as usize),
            "{name}"
        );
        let udp = name.parse::<lab::approach::Approach>().unwrap().transport
            == lab::approach::Transport::Udp;
        let transport = if udp { "quic" } else { "tcp" };
        assert!(
            conns
                .iter()
                .all(|c| c["connection"]["transport"] == transport),
            "{name}: {conns:?}"
        );
        assert_eq!(recs[0]["approach"], name);
        assert_eq!(recs[0]["mode"], "fresh");
        assert_eq!(recs[0]["tokens"], 12);
        assert!(
            String::from_utf8(out.stderr)
                .unwrap()
                .contains("| Approach")
        );
        digests.push(
            recs.iter()
                .map(|r| r["digest"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(digests.len(), lab::approach::all().count());
    for d in &digests {
        assert_eq!(d, &digests[0]);
    }
    assert_eq!(
        digests[0][0],
        lab_clients::record::digest_tokens(&expected("first prompt", 12))
    );
    for (_, s) in servers {
        assert!(s.stop(), "a server did not exit cleanly on SIGTERM");
    }
    assert!(llm.stop());
}

#[test]
fn interactive_client_streams_typed_prompts() {
    let llm = mock();
    let dir = tmpdir("interactive");
    for a in lab::approach::all() {
        let certs = dir.join(a.server);
        let srv = Server::start(&[
            "serve",
            a.server,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &base(&llm.str("url")),
            "--cert-out",
            certs.to_str().unwrap(),
        ]);
        interactive_session(a.name, &srv.str("url"), &certs);
        assert!(srv.stop());
    }
}

/// Types two prompts into `lab client APPROACH -i` and checks the answers it streams.
fn interactive_session(approach: &str, url: &str, certs: &std::path::Path) {
    let mut child = Command::new(LAB)
        .args([
            "client",
            approach,
            "--url",
            url,
            "--ca",
            certs.join("cert.pem").to_str().unwrap(),
            "-i",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        child.stdin.as_mut().unwrap(),
        "What is the capital of France?\n\nDescribe the observer design pattern briefly."
    )
    .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let a1 = expected("What is the capital of France?", 12).concat();
    let a2 = expected("Describe the observer design pattern briefly.", 12).concat();
    assert_eq!(stdout, format!("{a1}\n{a2}\n"), "{approach}");
    assert_eq!(stderr.matches("[TTFT ").count(), 2, "{approach}: {stderr}");
    assert!(stderr.contains(&format!("{approach}> ")), "{stderr}");
    // The key was written private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-N", "--fail-with-body", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is required by the test suite (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn curl_streams_from_the_sse_server_and_through_the_proxy() {
    let llm = mock();
    let up = base(&llm.str("url"));
    let dir = tmpdir("curl");
    let cert = dir.join("cert.pem");
    let sse = Server::start(&[
        "serve",
        "sse",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
        "--cert-out",
        dir.to_str().unwrap(),
    ]);
    let proxy = Server::start(&[
        "serve",
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        dir.join("key.pem").to_str().unwrap(),
    ]);
    assert_eq!(
        sse.str("cert_sha256"),
        proxy.str("cert_sha256"),
        "--cert/--key loads the same certificate"
    );

    let body = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"message":"hello curl"}"#,
        &sse.str("url"),
    ]);
    let ev = sse_events(&body);
    assert!(ev.last().unwrap().is_done());
    let toks: Vec<String> = ev[..ev.len() - 1].iter().map(|e| e.data.clone()).collect();
    assert_eq!(toks, expected("hello curl", 12));

    let req = r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"hello curl"}],"stream":true}"#;
    let body = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "-H",
        "content-type: application/json",
        "-d",
        req,
        &proxy.str("url"),
    ]);
    assert!(body.starts_with("data: {\"id\":\"chatcmpl-"));
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(raw_tokens(&body), expected("hello curl", 12));
    // The models endpoint through the proxy too.
    let models = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        &proxy.str("url").replace("/chat/completions", "/models"),
    ]);
    assert!(models.contains("\"id\":\"gemma3:12b\""), "{models}");
}

#[test]
fn bad_command_lines_get_clear_errors() {
    lab_fails(
        &["client", "sse", "--url", "http://127.0.0.1:1", "--insecure"],
        2,
        "the sse server speaks TLS; use https://127.0.0.1:1/chat",
    );
    lab_fails(
        &["client", "handoff", "--url", "https://127.0.0.1:1"],
        2,
        "the handoff server speaks plain HTTP, no TLS; use http://127.0.0.1:1/chat",
    );
    lab_fails(
        &["client", "sse", "--url", "https://127.0.0.1:1"],
        2,
        "--cert-hash",
    );
    lab_fails(
        &["client", "smoke", "--url", "https://127.0.0.1:1"],
        2,
        "approach 'smoke' is not supported; supported: raw, sse, sse-h2, handoff, ws, fanout, wt",
    );
    lab_fails(
        &[
            "client",
            "sse",
            "--url",
            "https://127.0.0.1:1",
            "--cert-hash",
            "abc",
        ],
        2,
        "not hex",
    );
    lab_fails(
        &[
            "client",
            "sse",
            "--url",
            "https://127.0.0.1:1",
            "--insecure",
            "--mode",
            "sometimes",
        ],
        2,
        "valid: fresh, reuse",
    );
    lab_fails(
        &[
            "client",
            "sse",
            "--url",
            "https://127.0.0.1:1",
            "--insecure",
            "--prompts",
            "/nonexistent",
        ],
        2,
        "/nonexistent",
    );
    lab_fails(&["serve", "llm", "--ttft", "250"], 2, "no unit");
    lab_fails(
        &["serve", "llm", "--format", "claude"],
        2,
        "valid: ollama-legacy, ollama, openai",
    );
    lab_fails(
        &["serve", "sse", "--cert", "/nonexistent/c.pem"],
        2,
        "--key",
    );
    lab_fails(
        &["serve", "sse", "--upstream", "ftp://x"],
        2,
        "scheme must be http or https",
    );
    lab_fails(
        &[
            "serve",
            "wt",
            "--cert",
            "/nonexistent/c.pem",
            "--key",
            "/nonexistent/k.pem",
        ],
        2,
        "/nonexistent/c.pem",
    );
    // A port already in use.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    lab_fails(
        &["serve", "llm", "--listen", &addr],
        2,
        "is the port in use",
    );
}

#[test]
fn an_unreachable_server_is_a_connect_error_and_exit_1() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let out = Command::new(LAB)
        .args([
            "client",
            "sse",
            "--url",
            &format!("https://127.0.0.1:{port}"),
            "--insecure",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["error"]["category"], "connect");
}

#[test]
fn help_explains_every_command() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["serve", "llm", "--help"],
        vec!["serve", "proxy", "--help"],
        vec!["serve", "sse", "--help"],
        vec!["serve", "wt", "--help"],
        vec!["client", "--help"],
        vec!["demo", "--help"],
        vec!["plan", "--help"],
        vec!["schema", "--help"],
        vec!["run", "--help"],
        vec!["report", "--help"],
        vec!["compare", "--help"],
        vec!["merge", "--help"],
        vec!["completions", "--help"],
        vec!["man", "--help"],
    ] {
        let out = Command::new(LAB).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: lab"), "{args:?}");
    }
    // The regression gate and the sharding say how they decide.
    let help = |args: &[&str]| {
        String::from_utf8(Command::new(LAB).args(args).output().unwrap().stdout).unwrap()
    };
    assert!(help(&["compare", "--help"]).contains("regression gate"));
    assert!(help(&["run", "--help"]).contains("--shard <I/N>"));
    assert!(help(&["merge", "--help"]).contains("missing"));
    // Bad shards are bad input, before anything is built.
    for bad in ["0/2", "3/2", "1", "a/b"] {
        let o = Command::new(LAB)
            .args(["run", "topologies/ci.yaml", "--shard", bad])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("is not a shard: write i/n"),
            "{bad}"
        );
    }
}

/// `curl -w` with `--fail-with-body` off: the status, the HTTP version and the body.
fn curl_status(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl is installed by scripts/setup.sh");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, version) = tail.split_once(' ').unwrap();
    (code.parse().unwrap(), version.to_owned(), body.to_owned())
}

#[test]
fn curl_over_http2_streams_from_sse_h2_and_bad_requests_get_their_status() {
    let llm = mock();
    let dir = tmpdir("curl-h2");
    let cert = dir.join("cert.pem");
    let srv = Server::start(&[
        "serve",
        "sse-h2",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &base(&llm.str("url")),
        "--cert-out",
        dir.to_str().unwrap(),
    ]);
    let url = srv.str("url");
    let ca = ["--cacert", cert.to_str().unwrap(), "--http2"];
    let json = ["-H", "content-type: application/json"];
    let (status, version, body) =
        curl_status(&[&ca[..], &json, &["-d", r#"{"message":"hello h2"}"#, &url]].concat());
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    let ev = sse_events(&body);
    assert!(ev.last().unwrap().is_done());
    let toks: Vec<String> = ev[..ev.len() - 1].iter().map(|e| e.data.clone()).collect();
    assert_eq!(toks, expected("hello h2", 12));
    // Bad input, each with its status, and the server keeps serving.
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat((1 << 20) + 10));
    let bigfile = dir.join("big.json");
    std::fs::write(&bigfile, big).unwrap();
    let big_arg = format!("@{}", bigfile.display());
    let other = url.replace("/chat", "/other");
    for (args, want) in [
        (vec!["-d", "{not json", url.as_str()], 400),
        (vec!["-d", r#"{"message":""}"#, url.as_str()], 400),
        (vec!["-d", big_arg.as_str(), url.as_str()], 413),
        // A GET streams for EventSource, but needs ?message=.
        (vec![url.as_str()], 400),
        (vec!["-X", "PUT", "-d", "{}", url.as_str()], 405),
        (vec!["-d", "{}", other.as_str()], 404),
    ] {
        let (status, version, body) = curl_status(&[&ca[..], &json, &args].concat());
        assert_eq!((status, version.as_str()), (want, "2"), "{args:?}: {body}");
        let e: lab_codec::openai::ErrorBody = serde_json::from_str(&body).unwrap();
        assert_eq!(e.error.kind, "invalid_request_error");
    }
    let (status, _, _) =
        curl_status(&[&ca[..], &json, &["-d", r#"{"message":"again"}"#, &url]].concat());
    assert_eq!(status, 200);
    // GET /chat?message=...: the same stream, as EventSource asks for it.
    let get = format!("{url}?message=hello%20h2");
    let (status, _, body) = curl_status(&[&ca[..], &[get.as_str()][..]].concat());
    assert_eq!(status, 200, "{body}");
    let ev = sse_events(&body);
    assert!(ev.last().unwrap().is_done());
    let toks: Vec<String> = ev[..ev.len() - 1].iter().map(|e| e.data.clone()).collect();
    assert_eq!(toks, expected("hello h2", 12));
    // A browser page's request (it has an Origin) may read the answer and its timing;
    // one without an Origin gets no such header: native clients' bytes are unchanged.
    for (origin, want) in [(Some("Origin: null"), true), (None, false)] {
        let mut args = vec!["-sS", "-D", "-", "-o", "/dev/null", "--max-time", "20"];
        args.extend(ca);
        args.extend(json);
        if let Some(o) = origin {
            args.extend(["-H", o]);
        }
        args.extend(["-d", r#"{"message":"cors"}"#, url.as_str()]);
        let out = Command::new("curl").args(&args).output().unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert_eq!(
            head.contains("access-control-allow-origin: *")
                && head.contains("timing-allow-origin: *"),
            want,
            "{head}"
        );
    }
    assert!(srv.stop());
}

#[test]
fn the_ws_server_answers_wrong_methods_paths_and_plain_gets() {
    let llm = mock();
    let dir = tmpdir("ws-bad");
    let srv = Server::start(&[
        "serve",
        "ws",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &base(&llm.str("url")),
        "--cert-out",
        dir.to_str().unwrap(),
    ]);
    let url = srv.str("url");
    let cert = dir.join("cert.pem");
    let ca = ["--cacert", cert.to_str().unwrap()];
    let other = url.replace("/ws", "/other");
    for (args, want) in [
        (vec!["-X", "POST", url.as_str()], 405),
        (vec![other.as_str()], 404),
        // A GET without the upgrade is not a WebSocket.
        (vec![url.as_str()], 400),
    ] {
        let (status, _, body) = curl_status(&[&ca[..], &args].concat());
        assert_eq!(status, want, "{args:?}: {body}");
    }
    assert!(srv.stop());
}

/// A reader that goes away ends a command that only prints quietly, by SIGPIPE (status
/// 141 in a shell) or with 0, never with a panic.
#[test]
fn a_closed_output_ends_printing_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let llm = mock();
    let up = base(&llm.str("url"));
    let sse = Server::start(&["serve", "sse", "--listen", "127.0.0.1:0", "--upstream", &up]);
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/run-ci.json");
    let topo = concat!(env!("CARGO_MANIFEST_DIR"), "/../topologies/matrix.yaml");
    let url = sse.str("url");
    let pin = sse.str("cert_sha256");
    for args in [
        vec!["status", "--json"],
        vec!["status"],
        vec!["plan", topo],
        vec!["plan", "--json", topo],
        vec!["schema"],
        vec!["schema", "run"],
        vec!["completions", "bash"],
        vec!["report", fixture],
        vec!["compare", fixture, fixture],
        vec!["compare", "--json", fixture, fixture],
        vec![
            "client",
            "sse",
            "--url",
            &url,
            "--cert-hash",
            &pin,
            "--json",
        ],
        vec!["client", "sse", "--url", &url, "--cert-hash", &pin],
    ] {
        let (status, err) = with_closed_stdout(&args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            status.success() || status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {status:?} {err}"
        );
    }
}

/// The handoff server's daemon of `front` (the one child process it started).
fn daemon_of(front: u32) -> u32 {
    let kids: Vec<u32> = std::fs::read_dir(format!("/proc/{front}/task"))
        .unwrap()
        .map(|t| {
            let p = t.unwrap().path().join("children");
            std::fs::read_to_string(p).unwrap_or_default()
        })
        .collect::<Vec<String>>()
        .join(" ")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 1, "the handoff front has one child: {kids:?}");
    let cmd = std::fs::read(format!("/proc/{}/cmdline", kids[0])).unwrap();
    assert!(
        String::from_utf8_lossy(&cmd).contains("helper\0handoff"),
        "{:?}",
        String::from_utf8_lossy(&cmd)
    );
    kids[0]
}

fn gone_within(pid: u32, secs: u64) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(secs) {
        // A zombie (its parent has not reaped it yet) is gone as far as work goes.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    false
}

/// The handoff server is two processes: killing the front (even with SIGKILL) ends the
/// daemon, and a daemon that dies takes the front down with an error that says so.
#[test]
fn the_handoff_front_and_daemon_end_together() {
    let llm = mock();
    let up = base(&llm.str("url"));
    let args = [
        "serve",
        "handoff",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
    ];
    let mut front = Server::start(&args);
    assert!(
        front.ready["cert_sha256"].is_null(),
        "plain HTTP has no certificate"
    );
    // Bad requests are refused by the front, each with its status and a reason; the
    // front and its daemon go on serving.
    let addr = front.ready["listen"].as_str().unwrap().to_owned();
    let ask = |req: &[u8]| {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let body = r#"{"message":"hi"}"#;
    let big = "x".repeat(40_000);
    for (req, status, says) in [
        (
            "POST /nope HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}".to_owned(),
            "404",
            "unknown path /nope",
        ),
        ("GET /chat HTTP/1.1\r\n\r\n".to_owned(), "405", "takes POST"),
        (
            "POST /chat HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(),
            "411",
            "Content-Length",
        ),
        (
            format!(
                "POST /chat HTTP/1.1\r\ncontent-length: {}\r\n\r\n{big}",
                big.len()
            ),
            "413",
            "over the limit",
        ),
        (
            "POST /chat HTTP/1.1\r\ncontent-length: 3\r\n\r\n{{x".to_owned(),
            "400",
            "invalid JSON",
        ),
        (
            "\x16\x03\x01 not http\r\n\r\n".to_owned(),
            "400",
            "not an HTTP/1.1 request",
        ),
    ] {
        let got = ask(req.as_bytes());
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status} ")),
            "{req:?}: {got}"
        );
        assert!(got.contains(says), "{req:?}: {got}");
    }
    let ok = ask(format!(
        "POST /chat HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .as_bytes());
    assert!(
        ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.contains("lab-handoff-us: "),
        "{ok}"
    );
    assert!(ok.trim_end().ends_with("data: [DONE]"), "{ok}");

    // The front killed: the daemon sees its end of the Unix socket close, and exits.
    let daemon = daemon_of(front.child.id());
    front.child.kill().unwrap();
    front.child.wait().unwrap();
    assert!(gone_within(daemon, 5), "the daemon outlived its front");

    // The daemon killed: the front fails, naming the daemon.
    let mut front = Command::new(LAB)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(front.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("\"ready\""), "{line}");
    let daemon = daemon_of(front.id());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = std::time::Instant::now();
    while front.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed().as_secs() < 5,
            "the front kept serving without its daemon"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = front.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the streaming daemon exited"), "{err}");
    assert!(llm.stop());
}
