//! The resolved plan of a lab: cells, namespaces, interfaces, addresses, processes and
//! the link settings of each direction. Pure: computed from a parsed topology, with no
//! root and no system calls, so `lab plan` and snapshot tests show exactly what `lab up`
//! will build. [`layout`] lays it out for a shaping backend, [`render`] prints it, and
//! [`node`] names its namespaces for `lab shell` and `lab exec`.
//!
//! Naming and addressing:
//! - namespaces `lab-<name>-llm` and, per cell `c<i>`, `lab-<name>-c<i>-client`,
//!   `-wire` and `-server` (visible in `ip netns list`);
//! - inside namespaces, fixed interface names: `to-wire` (client, server), `to-client`,
//!   `to-server` and `br0` (wire), `to-llm` (server), `br0` and `to-c<i>` (llm);
//! - the shaped segment of cell i is 198.18.i.0/24: client .1, server .2;
//! - the unshaped LLM network is 198.19.0.0/16: the LLM at 198.19.255.254, the server of
//!   cell i at 198.19.0.(i+1).

pub mod layout;
pub mod node;
pub mod render;

use crate::approach::{Approach, Model, Transport};
use crate::shaping::params::Params;
use crate::topology::model::*;
use crate::topology::units::{Dur, Percent};
use lab_codec::transport::Settings;
pub use layout::{Shaper, ShapingChoice, wire_stats_path, with_backend};
pub use render::render;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

pub use crate::topology::model::MAX_CELLS;

impl Plan {
    /// Gives cells of a plan saved before cells had names their approach's name.
    pub fn fill_names(&mut self) {
        for c in &mut self.cells {
            if c.name.is_empty() {
                c.name = c.approach.name.to_owned();
            }
        }
    }
}

/// One part of a run split over machines: `index` of `count` (from 1), as `i/n`. Cell k
/// (from 0, plan order) belongs to shard `k % n + 1`: deterministic, and each shard
/// gets every n-th cell, so profiles and approaches spread evenly.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a shard: write i/n with 1 <= i <= n, e.g. 1/3");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether the cell at plan position `k` belongs to this shard.
    pub fn has(&self, k: usize) -> bool {
        k % self.count + 1 == self.index
    }
}

impl Plan {
    /// The part of the plan that `shard` runs: its cells, their namespaces, links and
    /// processes, and the LLM node (every shard has its own). Cells keep their ids and
    /// addresses, so the shards' results merge into the unsharded run's cells.
    pub fn shard(&self, shard: Shard) -> Result<Plan, String> {
        let cells: Vec<Cell> = self
            .cells
            .iter()
            .enumerate()
            .filter(|(k, _)| shard.has(*k))
            .map(|(_, c)| c.clone())
            .collect();
        if cells.is_empty() {
            return Err(format!(
                "shard {shard} has no cells: the topology has {} cells; use at most {} shards",
                self.cells.len(),
                self.cells.len()
            ));
        }
        let dropped: Vec<&str> = self
            .cells
            .iter()
            .filter(|c| !cells.iter().any(|k| k.id == c.id))
            .flat_map(|c| {
                [
                    c.client_ns.as_str(),
                    c.wire_ns.as_str(),
                    c.server_ns.as_str(),
                ]
            })
            .collect();
        let kept = |ns: &str| !dropped.contains(&ns);
        let mut p = self.clone();
        p.cells = cells;
        p.namespaces.retain(|n| kept(n));
        p.interfaces.retain(|i| {
            kept(&i.namespace)
                && i.peer
                    .as_deref()
                    .is_none_or(|peer| kept(peer.split('/').next().unwrap_or(peer)))
        });
        p.processes.retain(|pr| kept(&pr.namespace));
        Ok(p)
    }
}

/// Reads and checks a topology file and plans it.
pub fn load(path: &std::path::Path) -> Result<(Topology, Plan), crate::topology::LoadError> {
    let t = crate::topology::load(path)?;
    let p = plan(&t).map_err(crate::topology::LoadError::Plan)?;
    Ok((t, p))
}

pub const LLM_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);
pub const LLM_PORT: u16 = 11434;

/// Where a lab that is up keeps its state record, logs and certificates:
/// `/run/lab/<name>/`.
pub const RUN_ROOT: &str = "/run/lab";

/// The run directory of the lab `name`.
pub fn run_dir(name: &str) -> String {
    format!("{RUN_ROOT}/{name}")
}

/// `namespace` of a process that runs in the host's namespace (the relay).
pub const HOST: &str = "host";

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub prefix: String,
    /// The backend the topology asks for.
    pub backend: Backend,
    /// The backend in use, once decided (`lab up` probes for netem when asked for auto).
    #[serde(default)]
    pub shaping: Option<ShapingChoice>,
    pub seed: u64,
    /// `lab wire` polls all the time instead of sleeping when idle.
    #[serde(default)]
    pub busy_poll: bool,
    /// Slots in each of `lab wire`'s receive rings.
    #[serde(default = "default_ring_frames")]
    pub ring_frames: u32,
    pub ipv6: bool,
    pub llm: LlmNode,
    pub workload: Workload,
    pub cells: Vec<Cell>,
    pub namespaces: Vec<String>,
    pub interfaces: Vec<Iface>,
    pub processes: Vec<Process>,
    /// Kernel settings of lab's namespaces (a load test's backlogs and port range).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<Sysctl>,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmNode {
    pub namespace: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// `mock` or `relay` (to a URL on the host).
    pub kind: String,
    pub model: String,
    /// What the mock runs with, or the relayed URL.
    pub detail: String,
    /// The mock's seed and answer cap, which fix every answer (absent for a relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock_seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock_max_tokens: Option<usize>,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub id: String,
    pub index: usize,
    /// The approach's name in the topology (lab's own approach's name, or the name of a
    /// server of the user's): what reports, expectations and node names say. (Absent
    /// in plans saved before it existed: [`Plan::fill_names`] fills it in.)
    #[serde(default)]
    pub name: String,
    /// The protocol its server speaks; lab's client for it measures the cell.
    pub approach: Approach,
    pub profile: String,
    pub client_ns: String,
    pub wire_ns: String,
    pub server_ns: String,
    pub client_addr: Ipv4Addr,
    pub server_addr: Ipv4Addr,
    pub server_llm_addr: Ipv4Addr,
    pub port: u16,
    pub url: String,
    /// Client to server, resolved.
    pub up: Params,
    /// Server to client, resolved.
    pub down: Params,
    /// QUIC and TCP settings, resolved (the stacks' defaults, the topology's, then the
    /// approach's own). Absent in plans saved before it existed: the defaults, with
    /// the kernel's socket buffers.
    #[serde(default = "Settings::before_buffers")]
    pub transport: Settings,
    /// The client's addresses a load test connects from, in turn (the first is
    /// `client_addr`); empty outside load tests with more streams than one address
    /// holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Ipv4Addr>,
    /// The approach entry's own connection mode, over `workload.connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    /// The client that measures the cell: lab's native one, or headless Chromium.
    #[serde(default, skip_serializing_if = "is_native")]
    pub client: ClientKind,
}

fn is_native(c: &ClientKind) -> bool {
    *c == ClientKind::Native
}

impl Cell {
    /// The cell's connection mode: its approach entry's own, or the workload's.
    pub fn connection(&self, w: &Workload) -> Connection {
        self.connection.unwrap_or(w.connection)
    }
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iface {
    pub namespace: String,
    pub name: String,
    /// `veth` (with its peer), or `bridge`.
    pub kind: String,
    pub peer: Option<String>,
    /// Address with prefix length, if any.
    pub address: Option<String>,
    /// More addresses (a load test's extra client addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_addresses: Vec<String>,
    /// The bridge it is a port of, if any.
    pub master: Option<String>,
}

/// A kernel setting of one lab namespace (`/proc/sys/<key>` inside it).
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctl {
    pub namespace: String,
    /// The path under /proc/sys, e.g. `net/core/somaxconn`.
    pub key: String,
    pub value: String,
    /// Why lab sets it.
    pub why: String,
}

/// How lab knows a process it started is ready.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Ready {
    /// It prints a JSON ready line on stdout (every `lab` process).
    #[default]
    Line,
    /// It listens on this port (TCP) or has it bound (UDP): a server of the user's.
    Port { transport: Transport, port: u16 },
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub namespace: String,
    pub role: String,
    pub argv: Vec<String>,
    /// How lab knows it is ready.
    #[serde(default, skip_serializing_if = "is_line")]
    pub ready: Ready,
    /// A directory into which lab writes a fresh certificate and key (cert.pem,
    /// key.pem) for this address before starting it: for servers of the user's, which
    /// do not make their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs: Option<CertsFor>,
}

fn is_line(r: &Ready) -> bool {
    *r == Ready::Line
}

/// Where lab writes a server's certificate, and the address it is for.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertsFor {
    pub dir: String,
    pub san: String,
}

/// Computes the plan. Fails only when the lab has more cells than addresses.
pub fn plan(t: &Topology) -> Result<Plan, String> {
    let ncells = t.profiles.len() * t.approaches.len();
    if ncells > MAX_CELLS {
        return Err(format!(
            "{ncells} cells (profiles x approaches) is over the limit of {MAX_CELLS}; split the topology"
        ));
    }
    let prefix = format!("lab-{}", t.name);
    let llm_ns = format!("{prefix}-llm");
    let upstream = format!("http://{LLM_ADDR}:{LLM_PORT}");
    let mut namespaces = vec![llm_ns.clone()];
    let mut interfaces = vec![Iface {
        namespace: llm_ns.clone(),
        name: "br0".into(),
        kind: "bridge".into(),
        peer: None,
        address: Some(format!("{LLM_ADDR}/16")),
        more_addresses: Vec::new(),
        master: None,
    }];
    let mut processes = Vec::new();
    let llm = match &t.llm.url {
        Some(url) => LlmNode {
            namespace: llm_ns.clone(),
            address: LLM_ADDR,
            port: LLM_PORT,
            kind: "relay".into(),
            model: t.llm.model.clone(),
            detail: url.clone(),
            mock_seed: None,
            mock_max_tokens: None,
        },
        None => {
            let m = t.llm.mock.clone().unwrap_or_default();
            let format = match m.format.unwrap_or(MockFormat::OllamaLegacy) {
                MockFormat::OllamaLegacy => "ollama-legacy",
                MockFormat::Ollama => "ollama",
                MockFormat::Openai => "openai",
            };
            let load = t.workload.load.as_ref();
            let ttft = m.ttft.unwrap_or(Dur(std::time::Duration::from_millis(250)));
            // A load test sets the answers' pace and length for its run.
            let tbt = load
                .and_then(|l| l.tbt)
                .or(m.tbt)
                .unwrap_or(Dur(std::time::Duration::from_millis(35)));
            let max_tokens = load.and_then(|l| l.tokens).or(m.max_tokens);
            let jitter = m.jitter.unwrap_or(Percent(0.1));
            let seed = m.seed.unwrap_or(1);
            let mut argv: Vec<String> = ["lab", "serve", "llm", "--listen"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            argv.push(format!("{LLM_ADDR}:{LLM_PORT}"));
            for (k, v) in [
                ("--format", format.to_owned()),
                ("--ttft", ttft.to_string()),
                ("--tbt", tbt.to_string()),
                ("--jitter", jitter.to_string()),
                ("--seed", seed.to_string()),
                ("--model", t.llm.model.clone()),
            ] {
                argv.push(k.into());
                argv.push(v);
            }
            if let Some(n) = max_tokens {
                argv.push("--max-tokens".into());
                argv.push(n.to_string());
            }
            processes.push(Process {
                namespace: llm_ns.clone(),
                role: "llm".into(),
                argv,
                ready: Ready::Line,
                certs: None,
            });
            LlmNode {
                namespace: llm_ns.clone(),
                address: LLM_ADDR,
                port: LLM_PORT,
                kind: "mock".into(),
                model: t.llm.model.clone(),
                detail: format!(
                    "{format}, ttft {ttft}, tbt {tbt}, jitter {jitter}, seed {seed}{}",
                    max_tokens.map_or(String::new(), |n| format!(", at most {n} tokens"))
                ),
                mock_seed: Some(seed),
                mock_max_tokens: max_tokens,
            }
        }
    };
    if t.llm.url.is_some() {
        processes.push(Process {
            namespace: HOST.into(),
            role: "relay".into(),
            argv: vec![
                "lab".into(),
                "relay".into(),
                "--netns".into(),
                llm_ns.clone(),
                "--listen".into(),
                format!("{LLM_ADDR}:{LLM_PORT}"),
                "--to".into(),
                llm.detail.clone(),
            ],
            ready: Ready::Line,
            certs: None,
        });
    }

    // A load test's servers share one HTTP/2 connection to the mock for all their
    // streams (a relayed real upstream speaks HTTP/1.1 only).
    let multiplex_upstream = t.workload.load.is_some() && t.llm.url.is_none();
    let mut sysctls = Vec::new();
    let mut cells = Vec::with_capacity(ncells);
    for (pname, profile) in &t.profiles {
        let (up, down) = (
            Params::from_link(&profile.up),
            Params::from_link(&profile.down),
        );
        for ca in &t.approaches {
            let a = ca.protocol;
            let mut transport = t.transport.over(&Settings::default());
            if let Some(own) = &ca.transport {
                transport = own.over(&transport);
            }
            let i = cells.len();
            let id = format!("c{i}");
            let client_ns = format!("{prefix}-{id}-client");
            let wire_ns = format!("{prefix}-{id}-wire");
            let server_ns = format!("{prefix}-{id}-server");
            let client_addr = Ipv4Addr::new(198, 18, i as u8, 1);
            let server_addr = Ipv4Addr::new(198, 18, i as u8, 2);
            let server_llm_addr = Ipv4Addr::new(198, 19, 0, i as u8 + 1);
            let p = match &ca.server {
                ServerSpec::Builtin => a.port,
                ServerSpec::Command { port, .. } => *port,
            };
            let url = a.url(format!("{server_addr}:{p}"));
            namespaces.extend([client_ns.clone(), wire_ns.clone(), server_ns.clone()]);
            let veth = |ns: &str,
                        name: &str,
                        peer: String,
                        address: Option<String>,
                        master: Option<&str>| Iface {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                kind: "veth".into(),
                peer: Some(peer),
                address,
                more_addresses: Vec::new(),
                master: master.map(str::to_owned),
            };
            interfaces.push(veth(
                &client_ns,
                "to-wire",
                format!("{wire_ns}/to-client"),
                Some(format!("{client_addr}/24")),
                None,
            ));
            interfaces.push(Iface {
                namespace: wire_ns.clone(),
                name: "br0".into(),
                kind: "bridge".into(),
                peer: None,
                address: None,
                more_addresses: Vec::new(),
                master: None,
            });
            interfaces.push(veth(
                &wire_ns,
                "to-client",
                format!("{client_ns}/to-wire"),
                None,
                Some("br0"),
            ));
            interfaces.push(veth(
                &wire_ns,
                "to-server",
                format!("{server_ns}/to-wire"),
                None,
                Some("br0"),
            ));
            interfaces.push(veth(
                &server_ns,
                "to-wire",
                format!("{wire_ns}/to-server"),
                Some(format!("{server_addr}/24")),
                None,
            ));
            interfaces.push(veth(
                &server_ns,
                "to-llm",
                format!("{llm_ns}/to-{id}"),
                Some(format!("{server_llm_addr}/16")),
                None,
            ));
            interfaces.push(veth(
                &llm_ns,
                &format!("to-{id}"),
                format!("{server_ns}/to-llm"),
                None,
                Some("br0"),
            ));
            let certs = format!("{}/certs/{id}", run_dir(&t.name));
            let process = match &ca.server {
                ServerSpec::Builtin => {
                    let mut argv: Vec<String> = vec!["lab".into(), "serve".into(), a.server.into()];
                    argv.extend(["--listen".into(), format!("{server_addr}:{p}")]);
                    argv.extend(["--upstream".into(), upstream.clone()]);
                    if multiplex_upstream {
                        argv.push("--upstream-h2".into());
                    }
                    if a.model == Model::Server {
                        argv.extend(["--model".into(), t.llm.model.clone()]);
                    }
                    argv.extend(["--san".into(), server_addr.to_string()]);
                    argv.extend(["--cert-out".into(), certs]);
                    if !transport.is_default() {
                        argv.extend(["--transport".into(), transport.to_json()]);
                    }
                    Process {
                        namespace: server_ns.clone(),
                        role: format!("{} server", ca.name),
                        argv,
                        ready: Ready::Line,
                        certs: None,
                    }
                }
                ServerSpec::Command { argv, .. } => {
                    let fill = |arg: &str| {
                        [
                            ("{listen}", format!("{server_addr}:{p}")),
                            ("{host}", server_addr.to_string()),
                            ("{port}", p.to_string()),
                            ("{upstream}", upstream.clone()),
                            ("{model}", t.llm.model.clone()),
                            ("{cert}", format!("{certs}/cert.pem")),
                            ("{key}", format!("{certs}/key.pem")),
                        ]
                        .iter()
                        .fold(arg.to_owned(), |s, (k, v)| s.replace(k, v))
                    };
                    // `lab exec-server` waits until lab has recorded it, then becomes
                    // the command (same process).
                    let mut full: Vec<String> =
                        vec!["lab".into(), "exec-server".into(), "--".into()];
                    full.extend(argv.iter().map(|a| fill(a)));
                    Process {
                        namespace: server_ns.clone(),
                        role: format!("{} server", ca.name),
                        argv: full,
                        ready: Ready::Port {
                            transport: a.transport,
                            port: p,
                        },
                        certs: Some(CertsFor {
                            dir: certs,
                            san: server_addr.to_string(),
                        }),
                    }
                }
            };
            processes.push(process);
            let mut sources = Vec::new();
            if let Some(l) = &t.workload.load {
                // Enough client addresses that ports never run out towards the one
                // server port, and room in the kernel's queues.
                let n = l.top().div_ceil(STREAMS_PER_SOURCE) as u8;
                if n > 1 {
                    sources.push(client_addr);
                    for k in 0..n - 1 {
                        sources.push(Ipv4Addr::new(198, 18, i as u8, 10 + k));
                    }
                    if let Some(c) = interfaces
                        .iter_mut()
                        .find(|f| f.namespace == client_ns && f.name == "to-wire")
                    {
                        c.more_addresses = sources[1..].iter().map(|a| format!("{a}/24")).collect();
                    }
                }
                let set = |ns: &str, key: &str, value: &str, why: &str| Sysctl {
                    namespace: ns.to_owned(),
                    key: key.to_owned(),
                    value: value.to_owned(),
                    why: why.to_owned(),
                };
                sysctls.extend([
                    set(
                        &client_ns,
                        "net/ipv4/ip_local_port_range",
                        "1024 65535",
                        "ports for a load test's connections",
                    ),
                    set(
                        &server_ns,
                        "net/core/somaxconn",
                        "65535",
                        "a load test's connections waiting to be accepted",
                    ),
                    set(
                        &server_ns,
                        "net/ipv4/tcp_max_syn_backlog",
                        "65535",
                        "a load test's connections being set up",
                    ),
                ]);
            }
            cells.push(Cell {
                id,
                index: i,
                name: ca.name.clone(),
                approach: a,
                profile: pname.clone(),
                client_ns,
                wire_ns,
                server_ns,
                client_addr,
                server_addr,
                server_llm_addr,
                port: p,
                url,
                up: up.clone(),
                down: down.clone(),
                transport,
                sources,
                connection: ca.connection,
                client: ca.client,
            });
        }
    }
    Ok(Plan {
        name: t.name.clone(),
        prefix,
        backend: t.shaping.backend,
        shaping: None,
        seed: t.shaping.seed.unwrap_or(1),
        busy_poll: t.shaping.busy_poll,
        ring_frames: ring_frames(t),
        ipv6: t.ipv6,
        llm,
        workload: t.workload.clone(),
        cells,
        namespaces,
        interfaces,
        processes,
        sysctls,
    })
}

fn default_ring_frames() -> u32 {
    crate::wire::ring::DEFAULT_FRAMES
}

/// Slots in each of `lab wire`'s receive rings: what the topology says; else, for a
/// load test, room for four frames from every stream of its largest level at once (the
/// next power of two, 4096 to 65536); else 4096. At 10,000 streams on two cores a ring
/// of 16384 still overflowed while the emulator waited for a CPU; 65536 did not.
fn ring_frames(t: &Topology) -> u32 {
    use crate::wire::ring::DEFAULT_FRAMES;
    if let Some(n) = t.shaping.ring_frames {
        return n;
    }
    let most = t
        .workload
        .load
        .as_ref()
        .and_then(|l| l.levels.iter().max().copied())
        .unwrap_or(0);
    most.saturating_mul(4)
        .next_power_of_two()
        .clamp(DEFAULT_FRAMES, 65_536)
}
