//! Peers that no one here wrote: the official `openai` Python client against the mock
//! (every stream format) and through the proxy, and aioquic's WebTransport client against
//! the WebTransport server. `scripts/setup.sh` installs both into target/peers-venv.

mod common;

use common::*;
use std::process::Command;

fn python() -> String {
    std::env::var("LAB_PEERS_PYTHON").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/peers-venv/bin/python"
        )
        .to_owned()
    })
}

fn peer(script: &str, args: &[&str]) -> serde_json::Value {
    let path = format!("{}/../scripts/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run scripts/setup.sh to install the peers",
                python()
            )
        });
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn openai_python_client_reads_every_mock_format_and_the_proxy() {
    let prompt = "What is the capital of France?";
    let want = expected(prompt, 12);
    for format in ["ollama-legacy", "ollama", "openai"] {
        let llm = Server::start(&[
            "serve",
            "llm",
            "--listen",
            "127.0.0.1:0",
            "--ttft",
            "0",
            "--tbt",
            "0",
            "--jitter",
            "0",
            "--max-tokens",
            "12",
            "--format",
            format,
        ]);
        let v = peer("openai_stream.py", &[&base(&llm.str("url")), MODEL, prompt]);
        assert_eq!(strings(&v["tokens"]), want, "{format}");
        assert_eq!(v["finish"], "stop", "{format}");
        assert_eq!(v["usage"]["completion_tokens"], 12, "{format}");
        assert_eq!(v["content"], want.concat(), "{format}");
        assert_eq!(strings(&v["models"]), vec![MODEL.to_owned()], "{format}");
        if format == "ollama-legacy" {
            let dir = tmpdir("openai-proxy");
            let proxy = Server::start(&[
                "serve",
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &base(&llm.str("url")),
                "--cert-out",
                dir.to_str().unwrap(),
            ]);
            let url = proxy.str("url");
            let v = peer(
                "openai_stream.py",
                &[
                    &base(&url),
                    MODEL,
                    prompt,
                    dir.join("cert.pem").to_str().unwrap(),
                ],
            );
            assert_eq!(strings(&v["tokens"]), want, "through the proxy");
            assert_eq!(v["content"], want.concat(), "through the proxy");
        }
    }
}

/// aioquic's WebTransport client against both WebTransport servers (wtransport's `wt`,
/// web-transport-quinn's `wtq`): two prompts on two streams of one session; another
/// path is refused with 404.
#[test]
fn aioquic_webtransport_client_talks_to_the_wt_and_wtq_servers() {
    for (server, path) in [("wt", "/wt"), ("wtq", "/wtq")] {
        let Served {
            _llm,
            server: wt,
            dir,
        } = Served::start(server, &format!("aioquic-{server}"));
        let listen: std::net::SocketAddr = wt.str("listen").parse().unwrap();
        let port = listen.port().to_string();
        let ca = dir.join("cert.pem");
        let v = peer(
            "wt_aioquic.py",
            &[
                "127.0.0.1",
                &port,
                path,
                ca.to_str().unwrap(),
                "hello",
                "second prompt",
            ],
        );
        assert_eq!(v["status"], 200, "{server}: {v}");
        let answers = v["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 2, "{server}");
        for (a, prompt) in answers.iter().zip(["hello", "second prompt"]) {
            let bytes: Vec<u8> = a.as_str().unwrap().chars().map(|c| c as u8).collect();
            // The answer, ended by 0:, then the end of the stream.
            assert_eq!(
                lenprefix_answers(&bytes),
                vec![expected(prompt, 12), vec![]],
                "{server} {prompt}"
            );
        }
        // Any other path is refused with 404.
        let v = peer(
            "wt_aioquic.py",
            &["127.0.0.1", &port, "/other", ca.to_str().unwrap()],
        );
        assert_eq!(v["status"], 404, "{server}");
    }
}

/// aioquic (its own HTTP/3 and WebTransport, datagrams on) against both WebTransport
/// datagram servers: two prompts on two streams of one session; each answer's tokens
/// come in HTTP/3 datagrams of the session, `<stream id><sequence><token>`, and its
/// tally and `0:` on the stream. The streams server's path is refused.
#[test]
fn aioquic_client_gets_tokens_in_datagrams_from_both_datagram_servers() {
    for (server, path, streams) in [
        ("wt-dgram", "/wt-dgram", "/wt"),
        ("wtq-dgram", "/wtq-dgram", "/wtq"),
    ] {
        aioquic_datagrams(server, path, streams);
    }
}

fn aioquic_datagrams(server: &str, path: &str, streams_path: &str) {
    let Served {
        _llm,
        server: wt,
        dir,
    } = Served::start(server, &format!("aioquic-{server}"));
    let listen: std::net::SocketAddr = wt.str("listen").parse().unwrap();
    let port = listen.port().to_string();
    let ca = dir.join("cert.pem");
    let prompts = ["hello", "second prompt"];
    let mut args = vec!["127.0.0.1", &port, path, ca.to_str().unwrap()];
    args.extend(prompts);
    let v = peer("wt_aioquic.py", &args);
    assert_eq!(v["status"], 200, "{server}: {v}");
    let answers = v["answers"].as_array().unwrap();
    let streams: Vec<u64> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let datagrams: Vec<Vec<u8>> = v["datagrams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| hex::decode(d.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(answers.len(), 2);
    for ((a, prompt), sid) in answers.iter().zip(prompts).zip(&streams) {
        let want = expected(prompt, 12);
        let bytes: Vec<u8> = a.as_str().unwrap().chars().map(|c| c as u8).collect();
        let tally = lab_codec::dgram::Tally {
            tokens: want.len() as u64,
            bytes: want.iter().map(|t| t.len() as u64).sum(),
        };
        // On the stream: the tally, then 0:, then its end.
        assert_eq!(
            lenprefix_answers(&bytes),
            vec![vec![tally.message()], vec![]],
            "{server} {prompt}"
        );
        // In datagrams: every token, numbered from 0, naming the stream (loopback
        // loses nothing).
        let mut got: Vec<(u64, String)> = datagrams
            .iter()
            .map(|d| lab_codec::dgram::decode(d).unwrap())
            .filter(|t| t.stream == *sid)
            .map(|t| (t.seq, t.token.to_owned()))
            .collect();
        got.sort();
        let want: Vec<(u64, String)> = want
            .into_iter()
            .enumerate()
            .map(|(i, t)| (i as u64, t))
            .collect();
        assert_eq!(got, want, "{server} {prompt}");
    }
    let v = peer(
        "wt_aioquic.py",
        &["127.0.0.1", &port, streams_path, ca.to_str().unwrap()],
    );
    assert_eq!(v["status"], 404, "{server}");
}

/// aioquic, with lab's own ALPN, against the raw QUIC server: two prompts on two
/// streams of one connection, then a second connection that resumes the first's session
/// and sends its prompt as 0-RTT data, which the server accepts and answers.
#[test]
fn aioquic_client_talks_raw_quic_with_0rtt_to_the_quic_server() {
    let Served {
        _llm,
        server: quic,
        dir,
    } = Served::start("quic", "aioquic-raw");
    let listen: std::net::SocketAddr = quic.str("listen").parse().unwrap();
    let port = listen.port().to_string();
    let ca = dir.join("cert.pem");
    let v = peer(
        "quic_aioquic.py",
        &[
            "127.0.0.1",
            &port,
            ca.to_str().unwrap(),
            "hello",
            "second prompt",
        ],
    );
    let bytes = |a: &serde_json::Value| -> Vec<u8> {
        a.as_str().unwrap().chars().map(|c| c as u8).collect()
    };
    let answers = v["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 2, "{v}");
    for (a, prompt) in answers.iter().zip(["hello", "second prompt"]) {
        assert_eq!(
            lenprefix_answers(&bytes(a)),
            vec![expected(prompt, 12), vec![]],
            "{prompt}"
        );
    }
    assert!(v["tickets"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["resumed"]["early_data_accepted"], true, "{v}");
    assert_eq!(
        lenprefix_answers(&bytes(&v["resumed"]["answer"])),
        vec![expected("hello", 12), vec![]]
    );
    assert!(quic.stop());
}

#[test]
fn python_websockets_client_talks_to_the_ws_server() {
    let Served {
        _llm,
        server: ws,
        dir,
    } = Served::start("ws", "ws-peer");
    let url = ws.str("url").replace("https://", "wss://");
    let ca = dir.join("cert.pem");
    let v = peer(
        "ws_client.py",
        &[&url, ca.to_str().unwrap(), "hello", "second prompt"],
    );
    let answers = v["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 2, "{v}");
    for (a, prompt) in answers.iter().zip(["hello", "second prompt"]) {
        assert_eq!(strings(a), expected(prompt, 12), "{prompt}");
    }
    assert_eq!(v["notices"].as_array().unwrap().len(), 0, "{v}");
    // Bad input closes that WebSocket with the code RFC 6455 gives it.
    assert_eq!(v["binary_close"], 1003, "{v}");
    assert_eq!(v["oversize_close"], 1009, "{v}");
    // And the server keeps serving.
    let v = peer("ws_client.py", &[&url, ca.to_str().unwrap(), "again"]);
    assert_eq!(strings(&v["answers"][0]), expected("again", 12));
    assert!(ws.stop());
}

/// One of lab's servers on loopback against the mock, its certificate in `dir`.
struct Served {
    _llm: Server,
    server: Server,
    dir: Tmp,
}

impl Served {
    fn start(server: &str, tag: &str) -> Served {
        let llm = mock();
        let dir = tmpdir(tag);
        let server = Server::start(&[
            "serve",
            server,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &base(&llm.str("url")),
            "--cert-out",
            dir.to_str().unwrap(),
        ]);
        Served {
            _llm: llm,
            server,
            dir,
        }
    }
}
