//! The topology file's types, as written. Every struct denies unknown fields; units are
//! typed ([`super::units`]); the JSON schema is generated from these types.

use super::units::{Dur, Percent, Rate, Size};
use crate::approach::Approach;
use lab_codec::transport::{QuicCongestion, Settings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod links;
mod nodes;
pub mod ring;
mod transport;
pub use links::*;
pub use nodes::*;
pub use transport::*;

// Parsed by `super::parse`, which reports every problem at once; this type's serde
// attributes give the published schema.
/// A lab: approaches under network profiles, an LLM upstream, a workload.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(title = "lab topology", deny_unknown_fields)]
pub struct Topology {
    /// The lab's name: 1 to 24 characters of a-z, 0-9 and '-', starting with a letter.
    /// Namespaces are named `lab-<name>-...`.
    pub name: String,
    /// Approaches to compare, each in its own cell under every profile.
    #[serde(default = "all_approaches")]
    #[schemars(with = "Vec<ApproachEntry>")]
    pub approaches: Vec<CellApproach>,
    /// The LLM upstream: the embedded mock (default) or a URL.
    #[serde(default)]
    pub llm: Llm,
    /// Network profiles by name, in the order they run.
    #[schemars(with = "BTreeMap<String, WrittenProfile>")]
    pub profiles: Vec<(String, Profile)>,
    /// What each cell's client runs.
    #[serde(default)]
    pub workload: Workload,
    /// How links are shaped.
    #[serde(default)]
    pub shaping: Shaping,
    /// Expectations checked at the end of `lab run`, e.g. `wt.wire_bytes_per_token < sse.wire_bytes_per_token`.
    #[serde(default)]
    #[schemars(with = "Vec<String>", extend("default" = []))]
    pub expect: Vec<super::expect::Expect>,
    /// Enable IPv6 on lab interfaces (off by default: it only adds noise to captures).
    #[serde(default)]
    pub ipv6: bool,
    /// QUIC and TCP settings for every cell (an approach entry may override them). Each
    /// field left out keeps the stack's own default.
    #[serde(default)]
    pub transport: TransportSpec,
    /// Programs of your own (a broker, a load balancer, any binary), each in a namespace
    /// of its own on the LLM network: in every cell (`scope: cell`) or one for the lab
    /// (`scope: shared`). Reach them by address: `{node:NAME}` in a server command, a
    /// node's command, environment or files.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, NodeSpec>")]
    pub nodes: Vec<(String, NodeSpec)>,
}

/// At most this many cells (profiles times approaches) per lab: each gets one /24 of
/// 198.18.0.0/16.
pub const MAX_CELLS: usize = 250;

pub fn all_approaches() -> Vec<CellApproach> {
    crate::approach::all().map(CellApproach::builtin).collect()
}

/// An approach of a topology: one of lab's own, or a server someone else built that
/// speaks one of lab's protocols.
#[derive(Debug, Clone, PartialEq)]
pub struct CellApproach {
    /// Its name in this topology: in cells, reports, expectations and node names.
    pub name: String,
    /// The protocol its server speaks, and so the client lab measures it with.
    pub protocol: Approach,
    /// Who runs the server.
    pub server: ServerSpec,
    /// Transport settings of its own, over the topology's.
    pub transport: Option<TransportSpec>,
    /// Its own connection mode, over `workload.connection` (so that one topology can
    /// hold a `reuse` and a `fresh` variant of an approach).
    pub connection: Option<Connection>,
    /// Which client measures it: lab's native one, or headless Chromium.
    pub client: ClientKind,
}

/// The client that measures an approach's cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// lab's own client for the protocol (Rust: rustls, hyper, quinn, wtransport ...).
    #[default]
    Native,
    /// Headless Chromium (Debian's `chromium`) running lab's page: the browser's own
    /// WebTransport, fetch() with a streaming body, or WebSocket.
    Browser,
    /// As `browser`, with SSE through EventSource (GET) instead of fetch().
    BrowserEventsource,
}

impl ClientKind {
    pub fn is_browser(self) -> bool {
        self != ClientKind::Native
    }
}

impl CellApproach {
    /// One of lab's own approaches, by itself.
    pub fn builtin(a: Approach) -> CellApproach {
        CellApproach {
            name: a.name.to_owned(),
            protocol: a,
            server: ServerSpec::Builtin,
            transport: None,
            connection: None,
            client: ClientKind::Native,
        }
    }
}

/// Who runs an approach's server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerSpec {
    /// `lab serve`, lab's own server for the protocol.
    Builtin,
    /// A command of the user's (argv with placeholders), listening on `port`, with
    /// files lab writes into its directory before it starts (name, text).
    Command {
        argv: Vec<String>,
        port: u16,
        files: Vec<(String, String)>,
    },
}

/// The placeholders a server command may use, and what each stands for.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    (
        "listen",
        "the address and port to listen on, e.g. 198.18.3.2:8080",
    ),
    ("host", "the address to listen on, e.g. 198.18.3.2"),
    ("port", "the port to listen on"),
    (
        "upstream",
        "the LLM's base URL, e.g. http://198.19.255.254:11434",
    ),
    ("model", "the model to ask the LLM for"),
    ("cert", "a PEM certificate lab made for this server"),
    ("key", "its PEM private key"),
    (
        "pem",
        "the certificate and its key in one PEM file (what HAProxy's `crt` takes)",
    ),
    (
        "dir",
        "the server's own directory: its certificate files and its `files`",
    ),
    (
        "node:NAME",
        "the address of node NAME of `nodes:` (the cell's own, or the shared one)",
    ),
];

// The two forms an entry of `approaches` takes; only the schema uses this type.
/// An approach: one of lab's own by name; or, as a mapping, one of lab's own with
/// transport settings of its own, a variant of one under a name of its own, or a server
/// of your own that speaks one of lab's protocols.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ApproachEntry {
    Builtin(Approach),
    Custom(Box<CustomApproach>),
}

/// An approach entry as a mapping.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CustomApproach {
    /// Its name in this topology: one of lab's approaches (to give it transport settings
    /// of its own), or a name of its own (like a profile name).
    name: String,
    /// The protocol it speaks: one of lab's approaches (needed with a name of its own).
    protocol: Option<Approach>,
    /// The command that runs a server of your own, as a list of arguments. Placeholders:
    /// {listen}, {host}, {port}, {upstream}, {model}, {cert}, {key}, {pem}, {dir},
    /// {node:NAME}. `lab` as
    /// the command is this lab. Without it, lab's own server for the protocol runs.
    command: Option<Vec<String>>,
    /// The port it listens on (default: the protocol's).
    port: Option<u16>,
    /// Files lab writes into the server's own directory ({dir}) before it starts:
    /// file name to text, with the command's placeholders filled in (an
    /// haproxy.cfg, say). Only `{word}`s of a-z, 0-9, `_`, `-` and `:` are
    /// placeholders; other braces stay as written.
    files: Option<std::collections::BTreeMap<String, String>>,
    /// Transport settings over the topology's, for this approach alone.
    transport: Option<TransportSpec>,
    /// `reuse` or `fresh` for this approach alone, over `workload.connection` (e.g. a
    /// variant `{ name: wt-fresh, protocol: wt, connection: fresh }` beside `wt`).
    connection: Option<Connection>,
    /// `browser` (headless Chromium, lab's page) or `browser-eventsource` (SSE through
    /// EventSource) instead of lab's native client, e.g. `{ name: wt-browser, protocol:
    /// wt, client: browser }`.
    client: Option<ClientKind>,
}

/// The LLM upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    /// The embedded mock and its settings (the default when `url` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockSpec>,
    /// An OpenAI-compatible server reachable from the host, e.g. `http://127.0.0.1:11434`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The model to request.
    #[serde(default = "default_model")]
    pub model: String,
    /// A real upstream's sampling: `temperature`, `seed`, `max_tokens`, carried by every
    /// request (the servers' and the raw client's); the upstream's defaults where unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingSpec>,
}

/// `llm.sampling`: how a real model samples. At temperature 0 with a seed, the same
/// prompt gets the same answer, whichever approach carried it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Generate to `max_tokens` past the model's own end (vLLM's and llama.cpp's
    /// extension; an upstream without it may refuse or ignore the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

impl SamplingSpec {
    /// As requests carry it.
    pub fn to_sampling(self) -> lab_codec::openai::Sampling {
        lab_codec::openai::Sampling {
            temperature: self.temperature,
            seed: self.seed,
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
        }
    }
}

fn default_model() -> String {
    "gemma3:12b".into()
}

impl Default for Llm {
    fn default() -> Self {
        Self {
            mock: None,
            url: None,
            model: default_model(),
            sampling: None,
        }
    }
}

/// The embedded mock's settings; every field has the `lab serve llm` default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockSpec {
    /// Chunk format (default ollama-legacy, what the reference measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<MockFormat>,
    /// Time to first token (default 250ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft: Option<Dur>,
    /// Time between tokens (default 35ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tbt: Option<Dur>,
    /// Jitter on TTFT and TBT (default 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Percent>,
    /// Seed of the answers and their timing (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Cap on every answer's length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Tokens per streamed chunk, 1 to 64 (default 1): a server that batches its
    /// output. Clients count chunks; a load test then counts tokens from the
    /// upstream's usage (`workload.load.usage`, on by default with this above 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_tokens: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MockFormat {
    OllamaLegacy,
    Ollama,
    Openai,
}

/// What each cell's client runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// `reference` (the reference benchmark's ten prompts) or a prompts file, relative to
    /// the topology file.
    #[serde(default = "default_prompts")]
    pub prompts: String,
    /// `reuse` one connection, or a `fresh` one per prompt.
    #[serde(default)]
    pub connection: Connection,
    /// How many times to run the prompt list.
    #[serde(default = "one")]
    pub repeat: u32,
    /// Runs of the whole matrix (default 1; `lab run --runs N` overrides it), each
    /// built, measured and taken down on its own with the shaping seed plus its number
    /// less one. With more than one, the report gives every headline metric's median
    /// over the runs with a confidence interval, and expectations may end in `with 95%
    /// confidence`.
    #[serde(default = "one")]
    pub runs: u32,
    /// Run cells side by side (default). Set false for a real upstream that cells would share.
    #[serde(default = "yes")]
    pub parallel: bool,
    /// Give up on a prompt after this long (default 120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Prompts in flight at once in each cell (default 1), cycling through the prompt
    /// list: as streams of one connection where the approach multiplexes (wt, sse-h2),
    /// on as many connections otherwise.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Prompts to mark urgent, by number as the prompt lines show them (from 1, across
    /// repeats): wt and quic send their answers ahead of the connection's other streams
    /// (stream priority); the report gives urgent and other prompts' times apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urgent: Vec<u32>,
    /// A load test instead of a run through the prompts: levels of concurrent streams
    /// per cell, one cell after another (see [`LoadWorkload`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadWorkload>,
}

/// A load test: in each cell, one level of concurrent streams after another, each
/// started over a ramp and held, with the server's resources sampled; the cells run
/// one after another, since each would take the whole machine.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadWorkload {
    /// Concurrent streams, level by level in this order, e.g. [100, 1000, 10000]
    /// (each 1 to 1000000).
    #[serde(default)]
    pub levels: Vec<u32>,
    /// Time to start a level's streams, spread evenly (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Dur>,
    /// Time at the level once the ramp is over (default 30s); slots start new streams
    /// until it ends, and streams in flight then run to their end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Dur>,
    /// Instead of a hold: each stream slot runs this many streams (the Centrifugo
    /// document's clients x cycles, with `levels` the clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycles: Option<u32>,
    /// The embedded mock's answer length for the run, in tokens (its `max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// The embedded mock's time between tokens for the run (its `tbt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tbt: Option<Dur>,
    /// First wait before a stream that failed before the server took it (connect,
    /// handshake, rejected) is tried again; it doubles up to `backoff_max` (default
    /// 100ms and 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<Dur>,
    /// Streams per connection where the approach multiplexes (wt, wt-dgram, quic,
    /// sse-h2); default 1, a connection each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_connection: Option<u32>,
    /// Give every QUIC connection (wt, wt-dgram, wtq, wtq-dgram, quic) a UDP socket of
    /// its own, as separate clients would have. Default false: a load generator's
    /// connections share one endpoint per source address and CPU, told apart by their
    /// connection IDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_per_connection: Option<bool>,
    /// Load generator processes to split each level's streams over, 1 to 64, each
    /// below its own open-file limit; their figures merge exactly (default: one per
    /// 15,000 streams of the highest level). Not in an open loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Processes serving each cell's port (SO_REUSEPORT), 1 to 64, for the TCP servers
    /// that run alone (raw, sse, sse-h2, ws), each below its own open-file limit
    /// (default: one per 15,000 streams of the highest level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_workers: Option<u32>,
    /// How often the server's memory, CPU, threads and open files are read from /proc
    /// (default 500ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Dur>,
    /// Open loop instead of `levels`: requests per second, level by level in this order
    /// (each above 0), sent at times drawn before the level starts; see docs/load.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<f64>,
    /// Open loop instead of `levels` or `rates`: a file of send times (seconds, one per
    /// line, or Mooncake JSON lines with `timestamp` in ms), relative to the topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Open loop: `constant`, `poisson` (default) or `gamma` gaps between arrivals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrivals: Option<String>,
    /// Open loop, gamma arrivals: the shape; 1 is Poisson, below 1 burstier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burstiness: Option<f64>,
    /// The seed of an open loop's arrivals and of `prompt_words` (default 1); the same
    /// seed sends the same prompts at the same times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Open loop: how long each rate's level sends (default 30s; the ramp is its first
    /// part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
    /// Open loop: stop a level after this many requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    /// Open loop: requests scheduled in the first `warmup` and the last `cooldown` of a
    /// level run, but are left out of the latencies (default 0s each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Dur>,
    /// Open loop: a request sent later than this after its intended time is late, and a
    /// level whose schedule lag p99 is over it is not valid (default 10ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bound: Option<Dur>,
    /// Open loop: an arrival that finds this many requests open is dropped, and the
    /// level is not valid (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
    /// Open loop with `slo`: after the first rate that misses the SLOs, halve the gap to
    /// the last that met them this many times (max rate at SLO); default 0, no search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<u32>,
    /// Prompts of lengths drawn from a distribution instead of `workload.prompts`:
    /// `fixed:N`, `uniform:MIN:MAX` or `normal:MEAN:SD`, in words (1,000 prompts drawn
    /// with `seed`, taken in turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_words: Option<String>,
    /// Answers of lengths drawn from a distribution: `fixed:N`, `uniform:MIN:MAX` or
    /// `normal:MEAN:SD`, in tokens, one per prompt (drawn with `seed`; a JSON prompts
    /// line's own `max_tokens` is kept). Each request asks for exactly its length
    /// (`max_tokens` with `ignore_eos`, or lab's answer-length message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_tokens: Option<String>,
    /// Ask for the upstream's count of each answer's tokens (its `usage`), so that a
    /// chunk carrying several tokens counts as several in TPOT and throughput (ITL
    /// stays between chunks). Default: on when `llm.mock.chunk_tokens` is above 1, else
    /// off (the request's bytes then are the benchmark's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<bool>,
    /// What makes a request good (goodput): any of `ttft`, `itl_p99`, `tpot`, `e2e`,
    /// and the share of good requests a level must reach (`share`, default 90%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloSpec>,
}

/// Service-level objectives for goodput: a request is good when it completed and every
/// bound given holds for it. Latencies count from the intended send time.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    /// Time to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft: Option<Dur>,
    /// The 99th percentile of the request's own gaps between tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_p99: Option<Dur>,
    /// Time per output token after the first: (E2E - TTFT) / (tokens - 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot: Option<Dur>,
    /// End-to-end latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e: Option<Dur>,
    /// The share of good requests a level must reach to meet the SLOs (default 90%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<Percent>,
}

impl SloSpec {
    /// As the load generator takes it.
    pub fn to_slo(&self) -> lab_clients::load::Slo {
        let ms = |d: Option<Dur>| d.map(|d| d.0.as_secs_f64() * 1000.0);
        lab_clients::load::Slo {
            ttft_ms: ms(self.ttft),
            itl_p99_ms: ms(self.itl_p99),
            tpot_ms: ms(self.tpot),
            e2e_ms: ms(self.e2e),
            share_pct: self.share.map_or(90.0, |p| p.0 * 100.0),
        }
    }
}

/// How many prompts `prompt_words` draws.
pub const GENERATED_PROMPTS: usize = 1000;

/// The most concurrent streams of one load level.
pub const MAX_LEVEL: u32 = 1_000_000;

/// Streams one client address can hold towards one server port: the ports of the
/// client namespace's range (lab widens it to 1024-65535), with room to spare.
pub const STREAMS_PER_SOURCE: u32 = 50_000;

impl LoadWorkload {
    /// The ramp: default 10s in levels of streams, 0s in an open loop.
    pub fn ramp(&self) -> std::time::Duration {
        let default = if self.is_open() { 0 } else { 10 };
        self.ramp
            .map_or(std::time::Duration::from_secs(default), |d| d.0)
    }
    /// The hold, unless the level ends by cycles.
    pub fn hold(&self) -> Option<std::time::Duration> {
        match self.cycles {
            Some(_) => None,
            None if self.is_open() => None,
            None => Some(
                self.hold
                    .map_or(std::time::Duration::from_secs(30), |d| d.0),
            ),
        }
    }
    pub fn backoff(&self) -> (std::time::Duration, std::time::Duration) {
        (
            self.backoff
                .map_or(std::time::Duration::from_millis(100), |d| d.0),
            self.backoff_max
                .map_or(std::time::Duration::from_secs(5), |d| d.0),
        )
    }
    pub fn sample(&self) -> std::time::Duration {
        self.sample
            .map_or(std::time::Duration::from_millis(500), |d| d.0)
    }
    /// The most streams open at once: the highest level, or an open loop's
    /// `max_in_flight`.
    pub fn top(&self) -> u32 {
        if self.is_open() {
            return self.max_in_flight().min(MAX_LEVEL as u64) as u32;
        }
        self.levels.iter().copied().max().unwrap_or(0)
    }
    /// Whether requests arrive at a rate or from a trace (open loop), not in levels of
    /// concurrent streams.
    /// The load generator's processes: `workers`, or one per 15,000 streams of the
    /// highest level; an open loop runs in one.
    pub fn workers(&self) -> u32 {
        if self.is_open() {
            return 1;
        }
        self.workers
            .unwrap_or_else(|| lab_clients::load::auto_workers(self.top()))
    }
    /// The processes serving a cell's port where its server can share one:
    /// `server_workers`, or one per 15,000 streams of the highest level.
    pub fn server_workers(&self) -> u32 {
        self.server_workers
            .unwrap_or_else(|| lab_clients::load::auto_workers(self.top()))
    }
    pub fn is_open(&self) -> bool {
        !self.rates.is_empty() || self.trace.is_some()
    }
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.unwrap_or(10_000)
    }
    /// An open loop's level length, and its ramp (default 0s).
    pub fn duration(&self) -> std::time::Duration {
        self.duration
            .map_or(std::time::Duration::from_secs(30), |d| d.0)
    }
    /// `prompts` with the answer lengths `answer_tokens` draws, or as they are.
    pub fn with_answer_lengths(
        &self,
        prompts: Vec<lab_clients::Prompt>,
    ) -> Vec<lab_clients::Prompt> {
        match self
            .answer_tokens
            .as_deref()
            .and_then(|s| lab_clients::prompts::Lengths::parse_in(s, "tokens").ok())
        {
            Some(l) => {
                lab_clients::prompts::with_answer_lengths(prompts, l, self.seed.unwrap_or(1))
            }
            None => prompts,
        }
    }
    /// The generated prompts, where `prompt_words` asks for them.
    pub fn generated_prompts(&self) -> Option<Vec<lab_clients::Prompt>> {
        let l = self.prompt_words.as_deref()?.parse().ok()?;
        Some(lab_clients::prompts::generated(
            l,
            GENERATED_PROMPTS,
            self.seed.unwrap_or(1),
        ))
    }
    /// How many levels run at most: the levels, or the rates and the search's steps.
    pub fn level_count(&self) -> u32 {
        match (self.is_open(), &self.trace) {
            (false, _) => self.levels.len() as u32,
            (true, Some(_)) => 1,
            (true, None) => self.rates.len() as u32 + self.search.unwrap_or(0),
        }
    }
}

/// The most prompts in flight at once in one cell.
pub const MAX_CONCURRENCY: u32 = 4096;
/// The most runs of a matrix (`workload.runs`): up to here every rank test over the
/// runs is exact.
pub const MAX_RUNS: u32 = (crate::stats::EXACT_MAX / 2) as u32;

fn default_prompts() -> String {
    "reference".into()
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            prompts: default_prompts(),
            connection: Connection::default(),
            repeat: 1,
            runs: 1,
            parallel: true,
            timeout: None,
            concurrency: 1,
            urgent: Vec::new(),
            load: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Connection {
    #[default]
    Reuse,
    Fresh,
}

/// How links are shaped.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shaping {
    /// auto (netem if the kernel has it, else lab's userspace emulator), kernel, or userspace.
    #[serde(default)]
    pub backend: Backend,
    /// Seed for loss, jitter and the rest (default 1); printed on every run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Userspace backend: keep `lab wire` polling its interfaces all the time instead of
    /// sleeping when idle (default false). It costs one CPU per cell and takes the
    /// wake-up out of the first frame after idle; netem has nothing to wake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy_poll: bool,
    /// Userspace backend: slots in each of `lab wire`'s receive rings (two a cell, 2 KiB
    /// a slot), a power of two from 32 to 262144. Frames that arrive while a ring is full
    /// are lost, and the run says so. Default 4096, or for a load test the next power
    /// of two at or above four times its largest level, from 4096 to 65536 (128 MiB a
    /// ring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_frames: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Auto,
    Kernel,
    Userspace,
}
