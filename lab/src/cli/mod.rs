//! The command line: every subcommand, its flags and their help.
// Doc comments here are clap's help text, read in a terminal: `<timestamp>` and the
// like are words to the user, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
mod standalone;
pub use standalone::*;

#[derive(Debug, Parser)]
#[command(
    name = "lab",
    version,
    about = "Measure LLM token-streaming transports (WebTransport, SSE, raw OpenAI API) on a bad network",
    long_about = "lab measures how LLM token-streaming transports behave on a bad network: time to first \
token, time between tokens, and bytes on the wire per token.\n\n\
The main job is `lab run topo.yaml` (root): it builds a lab of network namespaces from a topology \
file, shapes its links, runs the workload in every cell, captures the wire, prints and saves tables \
and plots under results/, checks the topology's expectations and takes everything down; `lab report` \
and `lab compare` read saved runs. `lab plan` resolves a topology without root; `lab up` builds the \
lab and leaves it up; `lab status`, `lab shell` and `lab exec` live in it; `lab down` and `lab clean` \
remove it. The servers and clients also run on their own, on loopback: `lab serve ...`, \
`lab client ...`, and `lab demo`, which compares every approach without namespaces or root.",
    after_help = "Examples:\n  sudo lab run topologies/degraded.yaml\n  lab report results/<timestamp>-degraded\n  lab demo --tbt 5ms\n  lab plan topologies/degraded.yaml\n  sudo lab up topologies/ci.yaml && sudo lab shell wt\n  sudo lab exec wt -- ping -c 3 198.18.2.2\n  sudo lab down\n  lab serve llm --tbt 35ms &\n  lab serve sse --upstream http://127.0.0.1:11434 --cert-out /tmp/sse\n  lab client sse --url https://127.0.0.1:8080 --ca /tmp/sse/cert.pem --interactive"
)]
pub struct Cli {
    /// Log filter for stderr (also RUST_LOG), e.g. `debug` or `lab_servers=trace`.
    #[arg(long, global = true, default_value = "info", env = "LAB_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one server in the foreground until Ctrl-C or SIGTERM: the mock LLM, or an
    /// approach's server.
    #[command(subcommand)]
    Serve(Serve),
    /// Run one client: the reference prompts, a prompts file, or prompts typed in.
    Client(Box<ClientArgs>),
    /// Load one server with many concurrent streams, level by level (e.g. 100, 1000,
    /// 10000): success, errors by category, connect time, TTFT, TBT and stream
    /// duration percentiles, tokens per second. `lab run` runs it in each cell of a
    /// topology with a `workload.load`.
    Load(Box<LoadArgs>),
    /// Start every approach's server on loopback and compare the approaches.
    Demo(DemoArgs),
    /// Print the resolved plan of a topology file: cells, namespaces, interfaces,
    /// addresses, processes and link settings. Needs no root; changes nothing.
    Plan(PlanArgs),
    /// Print a JSON schema: of topology files (lab/topology.schema.json), with `run`
    /// of the run.json that `lab run` saves (lab/run.schema.json), with `runs` of the
    /// runs.json of repeated runs (lab/runs.schema.json).
    Schema(SchemaArgs),
    /// The main job: build the lab, warm up, run the workload in every cell while
    /// capturing both ends of each link, print and save the tables (results/), check
    /// the topology's expectations, and take everything down. Needs root.
    Run(RunArgs),
    /// Print the report of a saved run again, from its run.json; with --out, write
    /// report.md, report.html and the plots.
    Report(ReportArgs),
    /// Compare two runs: each metric per profile and approach, with units and the
    /// change; with --threshold, exit 3 when a value got worse by more than that.
    Compare(CompareArgs),
    /// Join the results of a run's shards (`lab run --shard i/n` on several machines)
    /// into one run: one run.json, one report, the expectations checked on the whole.
    Merge(MergeArgs),
    /// Build a topology's lab (namespaces, links, servers), print what is where, and
    /// return; the lab stays up until `lab down`. Needs root.
    Up(UpArgs),
    /// Show the labs that are up: cells, namespaces, addresses, processes (pid, state,
    /// RSS), shaping, and server URLs to try by hand.
    Status(StatusArgs),
    /// Open an interactive shell inside a lab namespace, e.g. `lab shell wt` (the wt
    /// cell's client side), `lab shell wt.server`, `lab shell sse@degraded.wire`,
    /// `lab shell c3`, `lab shell llm`.
    Shell(ShellArgs),
    /// Run one command inside a lab namespace and return its exit status, e.g.
    /// `lab exec wt -- ping -c 3 198.18.2.2`. `lab` as the command is this lab binary.
    Exec(ExecArgs),
    /// Take a lab down: stop its processes, remove its namespaces (and with them every
    /// link) and its run directory, in reverse order. Keeps going past errors.
    Down(DownArgs),
    /// Remove what a killed lab left behind (even after SIGKILL), using the state
    /// records in /run/lab and lab's ownership marks; safe to run twice. Labs that are
    /// up are kept unless --all.
    Clean(CleanArgs),
    /// A running lab's links: `lab link show`, and `lab link set wt delay 100ms loss 2%`
    /// to change a cell's link without taking the lab down (both backends; root).
    #[command(subcommand)]
    Link(Link),
    /// Microbenchmarks. `lab bench quic`: the QUIC document's targets (stream open,
    /// one stream's throughput, streams at once, datagram latency) on loopback, or with
    /// --cell through a lab cell's link (server and client in the cell's namespaces).
    #[command(subcommand)]
    Bench(Bench),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell, e.g.
    /// `lab completions bash > /usr/local/share/bash-completion/completions/lab`
    /// (scripts/install.sh installs them).
    Completions(CompletionsArgs),
    /// Write the man pages (lab.1 and one per command, lab-run.1, ...) into a directory
    /// (scripts/install.sh installs them).
    Man(ManArgs),
    /// Run one part of an approach that runs as processes of its own, as a node of a
    /// topology, in the foreground: `lab part fanout api` (an API server) or `lab part
    /// fanout gateway` (a WebSocket gateway). Plain HTTP, behind a load balancer that
    /// ends TLS; see topologies/fanout.yaml.
    Part(PartArgs),
    /// Relay TCP from a lab namespace to an upstream on the host (started by `lab up`
    /// for a `url:` upstream).
    #[command(hide = true)]
    Relay(RelayArgs),
    /// The userspace link emulator: forwards frames between two interfaces over
    /// AF_PACKET, shaping each direction (started by `lab up` in each wire namespace
    /// when the kernel has no netem).
    #[command(hide = true)]
    Wire(WireArgs),
    /// Becomes a command (exec, same process) once lab has recorded it: how `lab up`
    /// starts a server or a node of the user's. `lab` as the command is this lab.
    #[command(hide = true)]
    ExecServer(ExecServerArgs),
    /// A process a server starts of its own, such as the handoff server's streaming
    /// daemon (started by `lab serve <server>`, never by hand).
    #[command(hide = true)]
    Helper(HelperArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Parts: fanout api (an API server), fanout gateway (a WebSocket gateway).\n\nExample (nodes of topologies/fanout.yaml):\n  lab part fanout api --listen 198.19.255.2:8000 --broker redis://198.19.255.1:6379 --upstream http://198.19.255.254:11434 --model gemma3:12b\n  lab part fanout gateway --listen 198.19.255.4:8001 --broker redis://198.19.255.1:6379"
)]
pub struct PartArgs {
    /// The approach's server, as `lab serve` names it (e.g. fanout).
    pub server: String,
    /// The part (e.g. api, gateway).
    pub part: String,
    /// Address and port to listen on (plain HTTP).
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// The broker's URL, e.g. redis://198.19.255.1:6379.
    #[arg(long)]
    pub broker: Option<String>,
    /// The OpenAI-compatible upstream's base URL (an API server's).
    #[arg(long)]
    pub upstream: Option<String>,
    /// The model it asks the upstream for.
    #[arg(long, default_value = "gemma3:12b")]
    pub model: String,
}

#[derive(Debug, Args)]
pub struct HelperArgs {
    /// The server whose helper this is.
    pub server: String,
    /// The helper's settings, as JSON, from its server.
    #[arg(long)]
    pub config: String,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (made if missing).
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Which file's schema.
    #[arg(value_parser = ["topology", "run", "runs"], default_value = "topology")]
    pub of: String,
}

#[derive(Debug, Args)]
pub struct ExecServerArgs {
    /// The directory to run it in (a node's own).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WireArgs {
    /// The interface towards the client.
    #[arg(long, default_value = "to-client")]
    pub client_if: String,
    /// The interface towards the server.
    #[arg(long, default_value = "to-server")]
    pub server_if: String,
    /// Client-to-server settings, as JSON: {"delay":"50ms","loss":"1%","rate":"10mbit"}.
    #[arg(long, default_value = "{}")]
    pub up: String,
    /// Server-to-client settings, as JSON.
    #[arg(long, default_value = "{}")]
    pub down: String,
    /// Seed of loss, jitter and the rest.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write counters here (JSON) every second and at exit.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Never sleep: poll the interfaces all the time, at the cost of one CPU, so that
    /// a frame after idle meets no wake-up.
    #[arg(long)]
    pub busy_poll: bool,
    /// Slots in each interface's receive ring, 2 KiB each: a power of two from 32 to
    /// 262144. Frames that arrive while the ring is full are lost (and counted).
    #[arg(long, default_value_t = crate::topology::model::ring::DEFAULT_FRAMES, value_parser = ring_frames)]
    pub ring_frames: u32,
}

fn ring_frames(s: &str) -> Result<u32, String> {
    use crate::topology::model::ring::{MAX_FRAMES, MIN_FRAMES, valid_frames};
    match s.parse::<u32>() {
        Ok(n) if valid_frames(n) => Ok(n),
        _ => Err(format!(
            "want a power of two from {MIN_FRAMES} to {MAX_FRAMES}, e.g. 4096 or 32768"
        )),
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 everything ran and every expectation holds; 1 the run had errors \
(a failed prompt, a token mismatch, a capture that disagrees with the kernel, a lab that would not \
build); 2 bad input (topology, expectations, no root); 3 the run was clean but an expectation \
failed; 130 interrupted (what was measured is saved, the lab is taken down). Over repeated \
runs (--runs): 1 if any run had errors, 3 if an expectation failed over the runs."
)]
pub struct RunArgs {
    /// The topology file, e.g. topologies/degraded.yaml.
    pub topology: PathBuf,
    /// Where to save results: a directory <timestamp>-<name>/ is made in it.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Also write every captured frame: pcap/<cell>-client.pcapng and -server.pcapng,
    /// with the kernel's timestamps (ns) and the client's TLS secrets embedded (a
    /// Decryption Secrets Block), so that Wireshark decrypts the TLS and QUIC traffic
    /// from the one file. The files are mode 0600: they hold the secrets.
    #[arg(long)]
    pub pcap: bool,
    /// Run one part of the cells, for splitting a run over machines: `2/3` runs cells
    /// 2, 5, 8, ... (every third, from the second, in plan order). Expectations are
    /// not checked on a shard; `lab merge` joins the shards' results into one run and
    /// checks them there.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::plan::Shard>,
    /// Run the whole matrix N times (instead of `workload.runs`), each run built,
    /// measured and taken down on its own, with the shaping seed plus its number less
    /// one. Each run's results go in run-1/ ... run-N/ of one results directory; over
    /// the runs, runs.json and report.md give every headline metric's median with a
    /// confidence interval, each approach against the first with a Mann-Whitney
    /// p-value, and the expectations decided over the runs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=crate::topology::model::MAX_RUNS as i64))]
    pub runs: Option<u32>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Without --out the report is printed and nothing is written. With --out DIR, \
DIR gets report.md, report.html and the plots; lab refuses to replace files there unless --force."
)]
pub struct ReportArgs {
    /// A results directory (or its run.json); of repeated runs, the directory with
    /// runs.json (the report over the runs) or one run's run-<i>/.
    pub results: PathBuf,
    /// Write report.md, report.html and the plots into this directory (made if missing).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace report files that are already in --out.
    #[arg(long, requires = "out")]
    pub force: bool,
    /// The prompt whose token arrivals timeline.svg shows (1 = the first).
    #[arg(long, default_value_t = 1)]
    pub prompt: usize,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Times are in ms or s, bytes per token in B/token. Every compared metric is a \
cost (larger is worse) except tokens_avg, where a change either way counts.\n\n\
Either side may be repeated runs (`lab run --runs N`, a directory with runs.json): its values \
are then the medians over its runs, and a two-sided Mann-Whitney U test over the two sets of \
runs gives each change a p-value; it is significant at p <= 0.05, which takes at least 4 runs \
against 4. With a test possible, --threshold counts only significant changes.\n\n\
Exit status: 0 compared (and nothing moved past --threshold); 2 bad input; 3 a value moved \
past --threshold the worse way: a regression gate between two runs."
)]
pub struct CompareArgs {
    /// The first results directory (or its run.json or runs.json): the baseline.
    pub a: PathBuf,
    /// The second: the run, or runs, checked against the baseline.
    pub b: PathBuf,
    /// Print JSON: both runs, and every row with its unit, values, change and verdict.
    #[arg(long)]
    pub json: bool,
    /// Fail (exit 3) when a value of b is worse than a's by more than this, e.g. `10%`.
    #[arg(long, value_parser = parse_fraction)]
    pub threshold: Option<f64>,
    /// Compare this metric (repeatable; default: ttft_p50, ttft_p95, tbt_avg, total_avg,
    /// tokens_avg, bytes_per_token, wire_bytes_per_token, errors). Any metric an
    /// expectation can name.
    #[arg(long = "metric", value_parser = parse_metric)]
    pub metrics: Vec<String>,
}

fn parse_metric(s: &str) -> Result<String, String> {
    let all = crate::topology::expect::METRICS;
    if all.iter().any(|m| m.0 == s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "unknown metric '{s}'; valid: {}",
            all.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
        ))
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: as lab run's: 0 every expectation holds; 1 a shard had errors; \
2 bad input (not shards of one run, a shard missing or twice); 3 an expectation failed."
)]
pub struct MergeArgs {
    /// The shards' results directories (or run.json files), one per shard.
    #[arg(required = true, num_args = 1..)]
    pub shards: Vec<PathBuf>,
    /// Where to save the merged run: a directory <timestamp>-<name>-merged/ is made in it.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The topology file, e.g. topologies/degraded.yaml.
    pub topology: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this lab (default: every lab that is up).
    #[arg(long)]
    pub lab: Option<String>,
    /// Print JSON: each lab's state record plus live process and namespace facts.
    #[arg(long)]
    pub json: bool,
}

/// Node names: `wt`, `sse`, `raw` (the client side of that approach's cell, when the
/// lab has one profile), `wt@PROFILE`, `c3` (a cell by id), `llm`, or a namespace name;
/// add `.client`, `.wire` or `.server` to pick a side.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The node: wt, wt.server, wt@degraded.wire, c3, llm, ...
    pub node: String,
    /// The lab (default: the only lab that is up).
    #[arg(long)]
    pub lab: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Link {
    /// Print each cell's link settings as they are in force now.
    Show(LinkShowArgs),
    /// Change a cell's link while the lab runs: a profile's fields, with the same names,
    /// units and checks as in a topology file, as pairs (`delay 100ms loss 2%`, or
    /// `delay=100ms`). They replace the direction's settings (fields not given take
    /// their defaults: `delay 0ms` clears the link). Bad settings are exit 2, and the
    /// link is left as it was.
    #[command(
        after_help = "Examples:\n  sudo lab link set wt delay 100ms loss 2%\n  sudo lab link set wt@degraded --down rate 1mbit\n  sudo lab link set c0 delay 0ms\n  lab link show"
    )]
    Set(LinkSetArgs),
}

#[derive(Debug, Args)]
pub struct LinkShowArgs {
    /// Only this cell (wt, wt@baseline, c3, ...); default: every cell.
    pub node: Option<String>,
    /// The lab (default: the only lab that is up).
    #[arg(long)]
    pub lab: Option<String>,
}

#[derive(Debug, Args)]
pub struct LinkSetArgs {
    /// The cell: wt, wt@baseline, c3, ... (any side of it).
    pub node: String,
    /// Change only the client-to-server direction.
    #[arg(long, conflicts_with = "down")]
    pub up: bool,
    /// Change only the server-to-client direction.
    #[arg(long)]
    pub down: bool,
    /// The lab (default: the only lab that is up).
    #[arg(long)]
    pub lab: Option<String>,
    /// The settings, as pairs: delay 100ms jitter 10ms loss 2% rate 1mbit limit 100 ...
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    pub settings: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// lab's QUIC stack (quinn, as `wt` and `quic` configure it) against the QUIC
    /// document's targets: open a stream and echo a byte (under 100 us), one stream's
    /// throughput (over 100 MB/s), streams open at once (1000+), a datagram's echo
    /// (under 1 ms). On loopback, or with --cell between the cell's server and client
    /// namespaces, through its link (a lab from `lab up`; root). Prints a table, or JSON.
    #[command(
        after_help = "Examples:\n  lab bench quic\n  sudo lab up topologies/baseline.yaml && sudo lab bench quic --cell c0 && sudo lab down\n  lab bench quic --quick --json"
    )]
    Quic(BenchQuicArgs),
}

#[derive(Debug, Args)]
pub struct BenchQuicArgs {
    /// A cell of a lab that is up (`lab up`): wt, wt@baseline, c3, ... The server
    /// binds in its server namespace, the client in its client namespace.
    #[arg(long)]
    pub cell: Option<String>,
    /// The lab (default: the only lab that is up).
    #[arg(long)]
    pub lab: Option<String>,
    /// A few seconds' worth (200 opens, 16 MiB, 1000 streams, 200 datagrams) instead of
    /// 2000 opens, 256 MiB, 2000 streams and 2000 datagrams.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The node: wt, wt.server, wt@degraded.wire, c3, llm, ...
    pub node: String,
    /// The lab (default: the only lab that is up).
    #[arg(long)]
    pub lab: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The lab (default: the only lab that is up).
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Also take down labs that are up and healthy.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The namespace to listen in.
    #[arg(long)]
    pub netns: String,
    /// Address to listen on inside it.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The upstream's http:// base URL, dialled from the host.
    #[arg(long)]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The topology file, e.g. topologies/degraded.yaml.
    pub topology: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Lay the plan out for this backend (kernel: bridged wire namespaces with netem;
    /// userspace: `lab wire` between the veths). Default: what the topology asks for;
    /// for auto, what `lab up` would pick here (probing for netem needs root; without
    /// root the plan stays undecided).
    #[arg(long, value_parser = ["kernel", "userspace"])]
    pub backend: Option<String>,
}

/// Parses `250ms`, `1.5s`, `2m`, or `0`: the topology's durations, one parser for both.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<crate::topology::units::Dur>().map(|d| d.0)
}

/// Parses `10%` (a topology percentage) or a bare fraction such as `0.1`, in [0, 1].
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    if t.ends_with('%') {
        return t.parse::<crate::topology::units::Percent>().map(|p| p.0);
    }
    match t.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("'{s}' is outside 0..1; write e.g. 10% or 0.1")),
        Err(_) => Err(format!("'{s}' is not a fraction; write e.g. 10% or 0.1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert!(parse_duration("250").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("5h")
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert!(parse_duration("2h").is_err() && parse_duration("61m").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("10%").unwrap(), 0.1);
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        assert!(parse_fraction("150%").is_err());
        assert!(parse_fraction("x").is_err());
    }
}
