//! Server benchmark: `cargo bench -p lab --bench servers`.
//!
//! Each server runs as its own `lab serve` process, as in the lab; the clients run here.
//! - Token delivery rate at TBT 0 (mock TTFT 0 too), one stream and 100 concurrent
//!   streams, for the mock LLM itself, the raw-API proxy, the SSE server and the
//!   WebTransport server. Every stream runs prompts back to back on one connection. The
//!   clients share the machine's two cores, so these are lower bounds for the servers.
//! - Memory per idle connection for SSE (TCP+TLS) and WebTransport (QUIC session): the
//!   server's RSS before and after opening N idle connections.
//!
//! Environment: BENCH_SECS (default 3) per rate measurement, BENCH_IDLE (default 1000),
//! BENCH_SERVER_THREADS (the servers' worker threads; default one per core),
//! BENCH_STREAMS (the concurrent streams of each rate row, comma-separated; default
//! `1,100`), BENCH_ONLY (approach names, comma-separated: only their servers' rows, and no
//! idle-memory rows).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lab::approach::Approach;
use lab_clients::record::Mode;
use lab_clients::{RunnerOpts, Target};
use lab_codec::trust::{Trust, parse_pin};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LAB: &str = env!("CARGO_BIN_EXE_lab");

/// Prompts (or idle sessions) that failed in the current row.
static FAILED: AtomicU64 = AtomicU64::new(0);

struct Server {
    child: Child,
    url: String,
    pin: Option<String>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(LAB);
        // BENCH_SERVER_THREADS: the servers' runtime worker threads (tokio's own
        // variable), to set against the default of one per core.
        if let Ok(n) = std::env::var("BENCH_SERVER_THREADS") {
            cmd.env("TOKIO_WORKER_THREADS", n);
        }
        let mut child = cmd
            .args(args)
            .env("LAB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lab");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("ready line");
        Self {
            url: v["url"].as_str().unwrap().to_owned(),
            pin: v["cert_sha256"].as_str().map(str::to_owned),
            child,
        }
    }
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
    /// The pin of its certificate; a plain-HTTP server (handoff) has none to trust.
    fn trust(&self) -> Trust {
        match self.pin.as_deref() {
            Some(p) => Trust::Pin(parse_pin(p).unwrap()),
            None => Trust::Insecure,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    )
}

/// Streams prompts back to back over one plain-HTTP keep-alive connection to the mock.
async fn mock_stream(
    addr: std::net::SocketAddr,
    id: usize,
    until: Instant,
    tokens: Arc<AtomicU64>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut i = 0;
    while Instant::now() < until {
        let body = format!(
            r#"{{"model":"gemma3:12b","messages":[{{"role":"user","content":"bench {id} {i}"}}],"stream":true}}"#
        );
        i += 1;
        let req = http::Request::post("/v1/chat/completions")
            .header("host", "x")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send.ready().await.unwrap();
        let mut resp = send.send_request(req).await.unwrap().into_body();
        let mut dec = lab_codec::sse::Decoder::new();
        while let Some(f) = resp.frame().await {
            if let Some(d) = f.unwrap().data_ref() {
                dec.extend(d);
                while let Some(ev) = dec.next_event().unwrap() {
                    if ev.is_done() {
                        continue;
                    }
                    let c: lab_codec::openai::ChatChunk = serde_json::from_str(&ev.data).unwrap();
                    if c.content().is_some() {
                        tokens.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

async fn runner_stream(
    ap: Approach,
    url: String,
    trust: Trust,
    id: usize,
    until: Instant,
    tokens: Arc<AtomicU64>,
) {
    // The QUIC clients share endpoints (one UDP socket per CPU), as `lab load`'s do.
    static ENDPOINTS: std::sync::OnceLock<Arc<lab_clients::endpoints::Shared>> =
        std::sync::OnceLock::new();
    let opts = RunnerOpts {
        endpoints: Some(ENDPOINTS.get_or_init(Default::default).clone()),
        ..RunnerOpts::new(
            ap.name,
            Mode::Reuse,
            Duration::from_secs(60),
            trust,
            "gemma3:12b",
        )
    };
    let mut r = ap.runner(&url, &opts).unwrap();
    let mut i = 0;
    while Instant::now() < until {
        let prompt = lab_clients::Prompt::new(format!("bench {id} {i}"));
        i += 1;
        let mut sink = |_: &str| {};
        let rec = r.run(i, &prompt, &mut sink).await;
        if let Some(e) = &rec.error {
            // Counted and shown in the row, not fatal: a failed session set-up
            // (wtransport's H3_FRAME_UNEXPECTED) is one of the figures.
            if FAILED.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("{ap}: {e:?}");
            }
            continue;
        }
        tokens.fetch_add(rec.tokens as u64, Ordering::Relaxed);
    }
    r.close().await;
}

async fn rate(
    name: &str,
    streams: usize,
    f: impl Fn(usize, Instant, Arc<AtomicU64>) -> tokio::task::JoinHandle<()>,
) -> f64 {
    let tokens = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + secs();
    let tasks: Vec<_> = (0..streams).map(|i| f(i, until, tokens.clone())).collect();
    for t in tasks {
        t.await.unwrap();
    }
    let r = tokens.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let failed = FAILED.swap(0, Ordering::Relaxed);
    println!("| {name:<26} | {streams:>7} | {r:>12.0} | {failed:>6} |");
    r
}

async fn idle_sse(server: &Server, n: usize) -> f64 {
    let target = Target::parse(&server.url).unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(server.trust().http1_client_config().unwrap()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(target.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let s = tls.connect(name, tcp).await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    drop(conns);
    (after.saturating_sub(before)) as f64 * 1024.0 / n as f64
}

async fn idle_wt(server: &Server, n: usize) -> f64 {
    let tls = server.trust().h3_client_config().unwrap();
    let cfg = wtransport::ClientConfig::builder()
        .with_bind_address("127.0.0.1:0".parse().unwrap())
        .with_custom_tls(tls)
        .max_idle_timeout(Some(Duration::from_secs(120)))
        .unwrap()
        .build();
    let ep = lab_clients::quic_rt::WtClient::new(cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        match ep.connect(&server.url).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                if FAILED.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("idle WebTransport session: {e}");
                }
            }
        }
    }
    let n = conns.len().max(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    drop(conns);
    (after.saturating_sub(before)) as f64 * 1024.0 / n as f64
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing else we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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
        ]);
        let up = llm.url.trim_end_matches("/v1/chat/completions").to_owned();
        let llm_addr: std::net::SocketAddr = up.trim_start_matches("http://").parse().unwrap();
        // Every approach's server, each as its own `lab serve` process.
        let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
            .ok()
            .map(|s| s.split(',').map(|n| n.trim().to_owned()).collect());
        let servers: Vec<(Approach, Server)> = lab::approach::all()
            .filter(|a| only.as_ref().is_none_or(|o| o.iter().any(|n| n == a.name)))
            .map(|a| {
                let srv = Server::start(&[
                    "serve",
                    a.server,
                    "--listen",
                    "127.0.0.1:0",
                    "--upstream",
                    &up,
                ]);
                (a, srv)
            })
            .collect();
        let by_name = |n: &str| &servers.iter().find(|(a, _)| a.name == n).unwrap().1;
        let levels: Vec<usize> = std::env::var("BENCH_STREAMS")
            .map(|s| {
                s.split(',')
                    .map(|n| n.trim().parse().expect("BENCH_STREAMS: numbers, as 1,100"))
                    .collect()
            })
            .unwrap_or_else(|_| vec![1, 100]);

        println!(
            "Token delivery rate at TBT 0, {:.0} s per row (clients on the same 2 cores)\n",
            secs().as_secs_f64()
        );
        println!("| server                     | streams |     tokens/s | failed |");
        println!("|----------------------------|---------|--------------|--------|");
        for &streams in &levels {
            rate("mock LLM (plain HTTP)", streams, |i, until, t| {
                tokio::spawn(mock_stream(llm_addr, i, until, t))
            })
            .await;
            for (ap, srv) in &servers {
                let (ap, url, trust) = (*ap, srv.url.clone(), srv.trust());
                let name = format!("{} server ({ap})", ap.server);
                rate(&name, streams, move |i, until, t| {
                    tokio::spawn(runner_stream(ap, url.clone(), trust.clone(), i, until, t))
                })
                .await;
            }
        }
        if only.is_some() {
            return;
        }
        let n: usize = std::env::var("BENCH_IDLE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        println!("\nMemory per idle connection ({n} connections, server RSS delta)\n");
        println!("| server              | bytes per idle connection |");
        println!("|---------------------|---------------------------|");
        println!(
            "| SSE (TCP+TLS)       | {:>25.0} |",
            idle_sse(by_name("sse"), n).await
        );
        // Both WebTransport servers, to the same (wtransport) client.
        for (name, label) in [("wt", "WebTransport, wt  "), ("wtq", "WebTransport, wtq ")] {
            let bytes = idle_wt(by_name(name), n).await;
            println!(
                "| {label}  | {bytes:>25.0} | ({} of {n} session set-ups failed)",
                FAILED.swap(0, Ordering::Relaxed)
            );
        }
    });
}
