//! The flags of what runs on its own, outside a lab: `lab serve`, `lab client`, `lab
//! load` and `lab demo`, and the TLS, trust and limit settings they share.

use super::{parse_duration, parse_fraction};
use crate::approach::Approach;
use clap::Args;
use lab_clients::record::Mode;
use lab_codec::openai::StreamFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `lab serve`: the mock LLM, or the server of one approach (named by the registry).
#[derive(Debug)]
pub enum Serve {
    /// The mock LLM.
    Llm(LlmArgs),
    /// The server of an approach, e.g. `lab serve sse`.
    Approach(Approach, Box<ServerArgs>),
}

const LLM_ABOUT: &str =
    "The mock LLM: an OpenAI-compatible server, byte-faithful to Ollama, deterministic";

impl clap::FromArgMatches for Serve {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        match m.subcommand() {
            Some(("llm", sub)) => Ok(Self::Llm(LlmArgs::from_arg_matches(sub)?)),
            Some((name, sub)) => match crate::approach::by_server(name) {
                Some(a) => Ok(Self::Approach(
                    a,
                    Box::new(ServerArgs::from_arg_matches(sub)?),
                )),
                None => Err(clap::Error::raw(
                    clap::error::ErrorKind::InvalidSubcommand,
                    format!("no server '{name}'\n"),
                )),
            },
            None => Err(clap::Error::raw(
                clap::error::ErrorKind::MissingSubcommand,
                "name a server: llm, or an approach's server\n",
            )),
        }
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Subcommand for Serve {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd
            .subcommand(LlmArgs::augment_args(clap::Command::new("llm")).about(LLM_ABOUT))
            .subcommand_required(true);
        for a in crate::approach::all() {
            let listen = format!(
                "Address to listen on ({})",
                match a.transport {
                    crate::approach::Transport::Tcp => "TCP",
                    crate::approach::Transport::Udp => "UDP",
                }
            );
            let sub = ServerArgs::augment_args(clap::Command::new(a.server))
                .about(a.server_about)
                .mut_arg("listen", |arg| {
                    arg.default_value(format!("127.0.0.1:{}", a.port))
                        .required(false)
                        .help(listen)
                });
            cmd = cmd.subcommand(sub);
        }
        cmd
    }
    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_subcommands(cmd)
    }
    fn has_subcommand(name: &str) -> bool {
        name == "llm" || crate::approach::by_server(name).is_some()
    }
}

/// Mock LLM timing and text settings, shared by `serve llm` and `demo`.
#[derive(Debug, Args, Clone)]
pub struct MockArgs {
    /// Chunk format: ollama-legacy (the reference's Ollama), ollama (v0.32.6+), or openai.
    #[arg(long, default_value = "ollama-legacy")]
    pub format: StreamFormat,
    /// Time to first token.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub ttft: Duration,
    /// Time between tokens.
    #[arg(long, default_value = "35ms", value_parser = parse_duration)]
    pub tbt: Duration,
    /// Jitter on TTFT and each TBT: each interval is scaled by a uniform factor in [1-j, 1+j]. `10%` or `0.1`.
    #[arg(long, default_value = "10%", value_parser = parse_fraction)]
    pub jitter: f64,
    /// Seed of the text and jitter: answers are a pure function of (seed, model, prompt).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cap every answer at this many tokens (answers otherwise run 15 to 1100 tokens).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Tokens per streamed chunk, 1 to 64: a chunk leaves when its last token is due, as
    /// a server that batches its output sends them (usage still counts tokens).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub chunk_tokens: u32,
}

#[derive(Debug, Args)]
pub struct LlmArgs {
    /// Address to listen on (plain HTTP, like Ollama).
    #[arg(long, default_value = "127.0.0.1:11434")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub mock: MockArgs,
    /// Model names listed by /v1/models (repeatable); the first is used when a request names none.
    #[arg(long = "model", default_value = "gemma3:12b")]
    pub models: Vec<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    #[command(flatten)]
    pub limits: LimitsArgs,
}

/// Deadlines of every server for slow and idle clients.
#[derive(Debug, Args, Clone, Copy)]
pub struct LimitsArgs {
    /// The TLS (or QUIC) handshake and each request head (or WebTransport session
    /// request) must be complete this long after the server is ready for them: the
    /// connection's start, or the end of the previous answer. Cuts off slowloris clients
    /// and kept-alive connections that ask nothing more.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Close a connection on which nothing moves either way for this long in the middle
    /// of a request or an answer, and a WebTransport session with no stream open.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

impl LimitsArgs {
    pub fn limits(&self) -> lab_servers::Limits {
        lab_servers::Limits {
            header: self.header_timeout,
            idle: self.idle_timeout,
        }
    }
}

/// TLS flags of every client-facing server.
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// PEM certificate chain; without --cert/--key a self-signed ECDSA P-256 certificate is generated (valid 14 days).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Write the certificate (cert.pem) and key (key.pem, mode 0600) into this directory, for clients to trust.
    #[arg(long)]
    pub cert_out: Option<PathBuf>,
    /// Extra subject alternative names for a generated certificate (localhost, 127.0.0.1 and ::1 are always in).
    #[arg(long = "san")]
    pub sans: Vec<String>,
}

fn parse_transport(s: &str) -> Result<lab_codec::transport::Settings, String> {
    lab_codec::transport::Settings::from_json(s).map_err(|e| e.to_string())
}

/// The flags of every approach's server.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The OpenAI-compatible upstream's base URL.
    #[arg(long, default_value = "http://127.0.0.1:11434")]
    pub upstream: String,
    /// Model to request from the upstream (servers that make their own requests; the raw
    /// proxy forwards the client's requests, which name the model).
    #[arg(long, default_value = "gemma3:12b")]
    pub model: String,
    /// Talk to the upstream over HTTP/2 with prior knowledge (h2c), every stream on one
    /// connection: lab's mock speaks it, Ollama does not. A load test's streams then
    /// take one socket each in the server instead of two.
    #[arg(long)]
    pub upstream_h2: bool,
    /// Sampling settings every upstream request carries, as JSON: any of temperature,
    /// seed and max_tokens, e.g. '{"temperature":0,"seed":1}' (a real model then gives
    /// the same answer to the same prompt). Default: the upstream's own.
    #[arg(long, value_parser = parse_sampling)]
    pub sampling: Option<lab_codec::openai::Sampling>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub limits: LimitsArgs,
    /// QUIC and TCP settings as JSON, e.g. '{"quic":{"cid_length":4},"tcp":{"nodelay":false}}'
    /// (fields left out keep the stacks' defaults; `lab plan --json` shows each cell's).
    #[arg(long, value_parser = parse_transport)]
    pub transport: Option<lab_codec::transport::Settings>,
    /// Processes serving the one port (SO_REUSEPORT): the kernel spreads connections
    /// over them, so that each holds its share of the sockets under its own open-file
    /// limit. For the TCP servers that run alone (raw's proxy, sse, sse-h2, ws).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Internal: this process is a further worker of a `lab serve --workers` on ADDR,
    /// its certificate handed on stdin.
    #[arg(long, hide = true)]
    pub worker: Option<SocketAddr>,
}

/// How a client trusts the server.
#[derive(Debug, Args, Clone)]
pub struct TrustArgs {
    /// Pin the server certificate's SHA-256 (hex, as `lab serve` prints it), like a browser's serverCertificateHashes.
    #[arg(long, conflicts_with_all = ["ca", "insecure"])]
    pub cert_hash: Option<String>,
    /// Trust this PEM certificate or CA (e.g. the cert.pem written by `lab serve --cert-out`).
    #[arg(long, conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Accept any certificate (for poking at servers by hand only).
    #[arg(long)]
    pub insecure: bool,
}

impl TrustArgs {
    /// The trust these flags give for `approach`'s server; a plain-HTTP server (handoff)
    /// needs none.
    pub fn trust(&self, approach: Approach) -> anyhow::Result<lab_codec::trust::Trust> {
        let none = self.cert_hash.is_none() && self.ca.is_none() && !self.insecure;
        if none && !approach.wire.app.tls() {
            return Ok(lab_codec::trust::Trust::Insecure);
        }
        lab_codec::trust::Trust::from_args(
            self.cert_hash.as_deref(),
            self.ca.as_deref(),
            self.insecure,
        )
    }
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Which approach.
    pub approach: Approach,
    /// Server URL, e.g. https://127.0.0.1:8080; without a path, the approach's own.
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// fresh: new TCP+TLS or QUIC session per prompt; reuse: one persistent connection.
    #[arg(long, default_value = "reuse")]
    pub mode: Mode,
    /// Prompts file (one per line, # for comments); default: the reference benchmark's ten prompts.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Run the prompt list this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Print one JSON record per prompt on stdout (the summary goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Type prompts, watch tokens stream, and see TTFT and TBT after each answer.
    #[arg(long, short = 'i', conflicts_with_all = ["prompts", "json"])]
    pub interactive: bool,
    /// Model name for the raw API.
    #[arg(long, default_value = "gemma3:12b")]
    pub model: String,
    /// Sampling settings the raw API's requests carry, as JSON: any of temperature,
    /// seed and max_tokens, e.g. '{"temperature":0,"seed":1}'.
    #[arg(long, value_parser = parse_sampling)]
    pub sampling: Option<lab_codec::openai::Sampling>,
    /// Give up on a prompt after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Keep this many prompts in flight at once: as streams of one connection where the
    /// approach multiplexes (wt, sse-h2, in reuse mode), on as many connections otherwise.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096), conflicts_with = "interactive")]
    pub concurrency: u16,
    /// Mark these prompts urgent (numbers as the prompt lines show them, from 1; comma
    /// separated): wt and quic ask the server to send their answers before the others
    /// of the connection (stream priority); every record says whether it was urgent.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "interactive")]
    pub urgent: Vec<u64>,
    /// QUIC and TCP settings as JSON, e.g. '{"quic":{"cid_length":4},"tcp":{"nodelay":false}}'
    /// (fields left out keep the stacks' defaults; `lab plan --json` shows each cell's).
    #[arg(long, value_parser = parse_transport)]
    pub transport: Option<lab_codec::transport::Settings>,
    /// Run the prompts in headless Chromium instead of lab's native client: the
    /// browser's own WebTransport (with serverCertificateHashes), fetch() with a
    /// streaming body (SSE) or WebSocket, each token timed with performance.now() in
    /// the page. Needs --ca (the server's cert.pem) for a TLS server.
    #[arg(long)]
    pub browser: bool,
    /// With --browser and an SSE server: EventSource (GET /chat?message=...) instead of
    /// fetch() (POST).
    #[arg(long, requires = "browser")]
    pub eventsource: bool,
    /// With --browser: the browser's own directory (its page, profile, log and the
    /// record `lab clean` reads), made if missing (mode 0700). Default: a new one under
    /// the temporary directory, removed at the end.
    #[arg(long, requires = "browser")]
    pub browser_dir: Option<PathBuf>,
    /// With --browser: the Chromium binary.
    #[arg(long, env = "LAB_CHROMIUM", default_value = lab_clients::browser::CHROMIUM)]
    pub chromium: PathBuf,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  lab load sse --url https://127.0.0.1:8080 --ca /tmp/lab-tls/cert.pem --levels 100,1000 --ramp 5s --hold 20s\n  lab load wt --url https://127.0.0.1:4433 --cert-hash <sha256> --levels 50 --cycles 10 --json\n  lab load sse --url https://127.0.0.1:8080 --ca /tmp/lab-tls/cert.pem --rates 5,10,20 --duration 20s --warmup 2s --slo-ttft 500ms --search 2\n\nEach level starts its streams evenly over --ramp; each stream slot runs one stream after another on a connection of its own (--mode reuse keeps it, fresh opens one per stream) until --hold is over, or for --cycles streams. A stream that failed before the server took it (connect, handshake, rejected) is tried again after a backoff from --backoff to --backoff-max, doubling. With --rates (or --trace) the load is an open loop: each level sends requests at times drawn in advance (--arrivals, --seed) for --duration, whatever the server does, and every latency counts from the intended send time; the schedule lag is reported, and a level that fell behind by more than --lag-bound, dropped arrivals or saturated the client's CPU is marked not valid. Exit status: 0 every stream completed; 1 some failed; 2 bad input."
)]
pub struct LoadArgs {
    /// Which approach.
    pub approach: Approach,
    /// Server URL, e.g. https://127.0.0.1:8080; without a path, the approach's own.
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Concurrent streams per level, in order (comma separated), e.g. 100,1000,10000.
    /// Or an open loop: --rates or --trace.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["rates", "trace"], conflicts_with_all = ["rates", "trace"], value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub levels: Vec<u32>,
    #[command(flatten)]
    pub open: OpenArgs,
    /// Time to start a level's streams, spread evenly (default 5s); open loop: the rate
    /// climbs from 0 over it (default 0s).
    #[arg(long, value_parser = parse_duration)]
    pub ramp: Option<Duration>,
    /// Time at the level once the ramp is over; slots start new streams until then.
    #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "cycles")]
    pub hold: Duration,
    /// Instead of a hold: each slot runs this many streams (clients x cycles).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: Option<u32>,
    /// First wait before a stream is tried again after a connect, handshake or rejected
    /// failure; it doubles up to --backoff-max (each wait is a random half to whole of it).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub backoff: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// reuse: a slot keeps its connection for its next stream; fresh: a new one each.
    #[arg(long, default_value = "reuse")]
    pub mode: Mode,
    /// Streams per connection where the approach multiplexes (wt, wt-dgram, quic,
    /// sse-h2, in reuse mode); 1 gives every stream a connection of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub per_connection: u32,
    /// Prompts file: one per line, JSON lines with a `prompt` each (.jsonl), or ShareGPT
    /// (.json); default: the reference benchmark's ten prompts.
    #[arg(long, conflicts_with = "prompt_words")]
    pub prompts: Option<PathBuf>,
    /// Instead of --prompts: 1,000 prompts of lengths drawn (with --seed) from fixed:N,
    /// uniform:MIN:MAX or normal:MEAN:SD, in words.
    #[arg(long)]
    pub prompt_words: Option<lab_clients::prompts::Lengths>,
    /// Answers of lengths drawn (with --seed) from fixed:N, uniform:MIN:MAX or
    /// normal:MEAN:SD, in tokens, one per prompt: each request asks for exactly its
    /// length (a JSON prompts line's own max_tokens is kept).
    #[arg(long, value_parser = parse_answer_tokens)]
    pub answer_tokens: Option<lab_clients::prompts::Lengths>,
    /// Ask for the upstream's count of each answer's tokens (usage), so that a chunk
    /// carrying several tokens counts as several in TPOT and throughput.
    #[arg(long)]
    pub usage: bool,
    /// Model name for the raw API.
    #[arg(long, default_value = "gemma3:12b")]
    pub model: String,
    /// Sampling settings the raw API's requests carry, as JSON: any of temperature,
    /// seed and max_tokens, e.g. '{"temperature":0,"seed":1}'.
    #[arg(long, value_parser = parse_sampling)]
    pub sampling: Option<lab_codec::openai::Sampling>,
    /// Give up on a stream after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Local addresses to connect from, in turn (comma separated); each gives about
    /// 28,000 ports towards one server port. Default: the kernel's choice.
    #[arg(long, value_delimiter = ',')]
    pub source: Vec<std::net::IpAddr>,
    /// QUIC and TCP settings as JSON, as `lab client --transport` takes them.
    #[arg(long, value_parser = parse_transport)]
    pub transport: Option<lab_codec::transport::Settings>,
    /// Give every QUIC connection (wt, wt-dgram, wtq, wtq-dgram, quic) a UDP socket of
    /// its own, as separate clients would have. By default the connections share one
    /// endpoint per source address and CPU, told apart by their connection IDs (not
    /// with a connection-ID length of 0, where each has its own anyway).
    #[arg(long)]
    pub socket_per_connection: bool,
    /// Print JSON lines (phases, progress every second, each level's summary) instead
    /// of progress lines and a table.
    #[arg(long)]
    pub json: bool,
    /// Processes to split a closed loop's streams over, each with its share of every
    /// level's slots and below its own open-file limit; their figures merge exactly
    /// into one table. `auto`: one per 15,000 streams of the highest level. An open
    /// loop runs in one process.
    #[arg(long, default_value = "auto", value_parser = lab_clients::load::parts::parse_workers)]
    pub workers: lab_clients::load::parts::Workers,
    /// Internal: this process is worker INDEX/COUNT of a `lab load --workers`.
    #[arg(long, hide = true, value_parser = lab_clients::load::parts::parse_share)]
    pub worker: Option<lab_clients::load::Share>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub mock: MockArgs,
    /// Connection mode for all clients.
    #[arg(long, default_value = "reuse")]
    pub mode: Mode,
    /// Prompts file; default: the reference benchmark's ten prompts.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Run the prompt list this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Write every prompt record as JSON lines to this file.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Use this OpenAI-compatible upstream instead of the embedded mock.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Model to request.
    #[arg(long, default_value = "gemma3:12b")]
    pub model: String,
    /// Give up on a prompt after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `lab load`'s open loop: requests sent at scheduled times, whatever the server does.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// Open loop: requests per second, level by level (comma separated), e.g. 5,10,20.
    /// Every latency counts from a request's intended send time.
    #[arg(long, value_delimiter = ',', conflicts_with = "trace", value_parser = parse_rate)]
    pub rates: Vec<f64>,
    /// Open loop: a file of send times (seconds, one per line, or Mooncake JSON lines
    /// with `timestamp` in ms), sent as one level.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// The gaps between arrivals: constant, poisson or gamma.
    #[arg(long, default_value = "poisson", value_parser = ["constant", "poisson", "gamma"])]
    pub arrivals: String,
    /// Gamma arrivals' shape: 1 is Poisson, below 1 burstier, above 1 smoother.
    #[arg(long)]
    pub burstiness: Option<f64>,
    /// The arrivals' seed: the same seed sends at the same times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long each rate's level sends (the ramp is its first part).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop a level after this many requests.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests: Option<u64>,
    /// Requests scheduled in a level's first --warmup and last --cooldown run, but are
    /// left out of the latencies.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// A request sent later than this after its time is late; a level whose lag p99 is
    /// over it is marked not valid.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub lag_bound: Duration,
    /// An arrival that finds this many requests open is dropped (the level is then not
    /// valid).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,
    /// With an SLO: after the first rate that misses it, halve the gap to the last that
    /// met it this many times (max rate at SLO).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub search: u32,
    /// SLO: time to first token, from the intended send time.
    #[arg(long, value_parser = parse_duration)]
    pub slo_ttft: Option<Duration>,
    /// SLO: the 99th percentile of a request's own gaps between tokens.
    #[arg(long, value_parser = parse_duration)]
    pub slo_itl_p99: Option<Duration>,
    /// SLO: time per output token after the first.
    #[arg(long, value_parser = parse_duration)]
    pub slo_tpot: Option<Duration>,
    /// SLO: end-to-end latency, from the intended send time.
    #[arg(long, value_parser = parse_duration)]
    pub slo_e2e: Option<Duration>,
    /// The share of good requests a level must reach to meet the SLO, e.g. 90%.
    #[arg(long, default_value = "90%", value_parser = parse_fraction)]
    pub slo_share: f64,
}

/// A request rate above 0, at most 1,000,000 per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e6 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate: requests per second above 0, at most 1000000, e.g. 2.5"
        )),
    }
}

impl OpenArgs {
    /// The SLO, where any bound is given.
    pub fn slo(&self) -> Option<lab_clients::load::Slo> {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let slo = lab_clients::load::Slo {
            ttft_ms: ms(self.slo_ttft),
            itl_p99_ms: ms(self.slo_itl_p99),
            tpot_ms: ms(self.slo_tpot),
            e2e_ms: ms(self.slo_e2e),
            share_pct: self.slo_share * 100.0,
        };
        let any = [slo.ttft_ms, slo.itl_p99_ms, slo.tpot_ms, slo.e2e_ms]
            .iter()
            .any(Option::is_some);
        any.then_some(slo)
    }

    /// The open loop, where --rates or --trace asks for one.
    pub fn spec(&self, ramp: Duration) -> anyhow::Result<Option<lab_clients::load::OpenSpec>> {
        use anyhow::Context;
        use lab_clients::arrivals::{Arrivals, Process, read_trace};
        if self.rates.is_empty() && self.trace.is_none() {
            return Ok(None);
        }
        let process = Process::named(&self.arrivals, self.burstiness).context("--arrivals")?;
        anyhow::ensure!(
            self.search == 0 || self.slo().is_some(),
            "--search looks for the highest rate at the SLO: give one, e.g. --slo-ttft 500ms"
        );
        anyhow::ensure!(
            self.warmup + self.cooldown < self.duration || self.trace.is_some(),
            "--warmup and --cooldown leave nothing of --duration to measure"
        );
        let trace = match &self.trace {
            None => None,
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the trace {}", p.display()))?;
                Some(read_trace(&text).with_context(|| format!("trace {}", p.display()))?)
            }
        };
        let duration = match &trace {
            // A trace runs to its last time, unless --duration cuts it.
            Some(t) => self
                .duration
                .min(t.last().copied().unwrap_or_default() + Duration::from_millis(1)),
            None => self.duration,
        };
        Ok(Some(lab_clients::load::OpenSpec {
            rates: self.rates.clone(),
            arrivals: Arrivals {
                process,
                seed: self.seed,
                duration,
                ramp: ramp.min(duration),
                max_requests: self.max_requests,
            },
            trace,
            warmup: self.warmup,
            cooldown: self.cooldown,
            lag_bound: self.lag_bound,
            max_in_flight: self.max_in_flight,
            search: self.search,
        }))
    }
}

/// `--answer-tokens`: a length distribution in tokens.
fn parse_answer_tokens(s: &str) -> Result<lab_clients::prompts::Lengths, String> {
    lab_clients::prompts::Lengths::parse_in(s, "tokens")
}

/// `--sampling`: a JSON object of temperature, seed and max_tokens.
pub fn parse_sampling(s: &str) -> Result<lab_codec::openai::Sampling, String> {
    lab_codec::openai::Sampling::from_json(s)
}
