//! [`plan`]: a topology resolved in stages, each pure. The LLM node first (the mock and
//! its settings, or a relay to a URL); then, per profile and approach, a cell: its
//! names and addresses with its link settings, its links, its server process, and a load
//! test's extra client addresses and kernel settings.

use super::*;

/// Plans a topology: every namespace, link, address, process and link setting that
/// `lab up` builds, in the order it builds them. Fails only when the lab has more cells
/// than addresses.
pub fn plan(t: &Topology) -> Result<Plan, String> {
    let ncells = t.profiles.len() * t.approaches.len();
    if ncells > MAX_CELLS {
        return Err(format!(
            "{ncells} cells (profiles x approaches) is over the limit of {MAX_CELLS}; split the topology"
        ));
    }
    let prefix = format!("lab-{}", t.name);
    let llm_ns = format!("{prefix}-llm");
    let (llm, mut processes) = llm_node(t, &llm_ns);
    let mut namespaces = vec![llm_ns.clone()];
    let mut interfaces = vec![bridge(&llm_ns, Some(format!("{LLM_ADDR}/16")))];
    let mut sysctls = Vec::new();
    let mut cells = Vec::with_capacity(ncells);
    for (pname, profile) in &t.profiles {
        let (up, down) = (
            Params::from_link(&profile.up),
            Params::from_link(&profile.down),
        );
        for ca in &t.approaches {
            let mut cell = new_cell(t, &prefix, cells.len(), pname, ca, (&up, &down));
            namespaces.extend([
                cell.client_ns.clone(),
                cell.wire_ns.clone(),
                cell.server_ns.clone(),
            ]);
            let mut links = cell_links(&cell, &llm_ns);
            processes.push(server_process(t, ca, &cell));
            if let Some(l) = &t.workload.load {
                cell.sources = load_sources(l, &cell);
                if let Some(c) = links
                    .iter_mut()
                    .find(|f| f.namespace == cell.client_ns && f.name == "to-wire")
                    && cell.sources.len() > 1
                {
                    c.more_addresses = cell.sources[1..]
                        .iter()
                        .map(|a| format!("{a}/24"))
                        .collect();
                }
                sysctls.extend(load_sysctls(&cell));
            }
            interfaces.extend(links);
            cells.push(cell);
        }
    }
    // The nodes start with the LLM, before the servers that may reach them.
    let laid = super::nodes::lay_out(t, &prefix, &llm_ns, &cells);
    namespaces.extend(laid.namespaces);
    interfaces.extend(laid.interfaces);
    let servers = processes.split_off(1);
    processes.extend(laid.processes);
    processes.extend(servers);
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
        nodes: laid.nodes,
    })
}

/// The LLM node, and the process that serves it: the embedded mock in the LLM
/// namespace, or a relay in the host's namespace to the topology's URL.
fn llm_node(t: &Topology, llm_ns: &str) -> (LlmNode, Vec<Process>) {
    let Some(url) = &t.llm.url else {
        return mock_node(t, llm_ns);
    };
    let relay = line_process(
        HOST,
        "relay",
        vec![
            "lab".into(),
            "relay".into(),
            "--netns".into(),
            llm_ns.to_owned(),
            "--listen".into(),
            format!("{LLM_ADDR}:{LLM_PORT}"),
            "--to".into(),
            url.clone(),
        ],
    );
    let detail = match t.llm.sampling {
        Some(s) => format!("{url}, sampling {}", s.to_sampling().to_json()),
        None => url.clone(),
    };
    let node = llm_at(t, llm_ns, "relay", detail);
    (node, vec![relay])
}

/// The embedded mock: its settings (a load test sets the answers' pace and length for
/// its run) and its `lab serve llm` process.
fn mock_node(t: &Topology, llm_ns: &str) -> (LlmNode, Vec<Process>) {
    let m = t.llm.mock.clone().unwrap_or_default();
    let format = match m.format.unwrap_or(MockFormat::OllamaLegacy) {
        MockFormat::OllamaLegacy => "ollama-legacy",
        MockFormat::Ollama => "ollama",
        MockFormat::Openai => "openai",
    };
    let load = t.workload.load.as_ref();
    let ttft = m.ttft.unwrap_or(Dur(std::time::Duration::from_millis(250)));
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
    let chunk_tokens = m.chunk_tokens.filter(|&n| n > 1);
    if let Some(n) = chunk_tokens {
        argv.push("--chunk-tokens".into());
        argv.push(n.to_string());
    }
    let process = line_process(llm_ns, "llm", argv);
    let node = LlmNode {
        mock_seed: Some(seed),
        mock_max_tokens: max_tokens,
        mock_chunk_tokens: chunk_tokens,
        ..llm_at(
            t,
            llm_ns,
            "mock",
            format!(
                "{format}, ttft {ttft}, tbt {tbt}, jitter {jitter}, seed {seed}{}{}",
                max_tokens.map_or(String::new(), |n| format!(", at most {n} tokens")),
                chunk_tokens.map_or(String::new(), |n| format!(", {n} tokens a chunk"))
            ),
        )
    };
    (node, vec![process])
}

/// The LLM node in `namespace`, at lab's LLM address: a `kind` (mock or relay) and what
/// it runs with.
fn llm_at(t: &Topology, namespace: &str, kind: &str, detail: String) -> LlmNode {
    LlmNode {
        namespace: namespace.to_owned(),
        address: LLM_ADDR,
        port: LLM_PORT,
        kind: kind.into(),
        model: t.llm.model.clone(),
        detail,
        mock_seed: None,
        mock_max_tokens: None,
        mock_chunk_tokens: None,
        sampling: t.llm.sampling.map(|s| s.to_sampling()),
    }
}

/// A process of lab's own, ready when it prints its line.
fn line_process(namespace: &str, role: &str, argv: Vec<String>) -> Process {
    Process {
        namespace: namespace.to_owned(),
        role: role.to_owned(),
        argv,
        ready: Ready::Line,
        certs: None,
        env: Vec::new(),
        files: None,
    }
}

/// Cell `i`: its namespaces, addresses, server port and URL, and its transport
/// settings (lab's defaults, under the topology's, under the approach's own), and its
/// profile's link settings (up, down). A load test's sources are the caller's to fill in.
fn new_cell(
    t: &Topology,
    prefix: &str,
    i: usize,
    profile: &str,
    ca: &CellApproach,
    (up, down): (&Params, &Params),
) -> Cell {
    let a = ca.protocol;
    let mut transport = t.transport.over(&Settings::default());
    if let Some(own) = &ca.transport {
        transport = own.over(&transport);
    }
    let id = format!("c{i}");
    let server_addr = Ipv4Addr::new(198, 18, i as u8, 2);
    let port = match &ca.server {
        ServerSpec::Builtin => a.port,
        ServerSpec::Command { port, .. } => *port,
    };
    Cell {
        client_ns: format!("{prefix}-{id}-client"),
        wire_ns: format!("{prefix}-{id}-wire"),
        server_ns: format!("{prefix}-{id}-server"),
        id,
        index: i,
        name: ca.name.clone(),
        approach: a,
        profile: profile.to_owned(),
        client_addr: Ipv4Addr::new(198, 18, i as u8, 1),
        server_addr,
        server_llm_addr: Ipv4Addr::new(198, 19, 0, i as u8 + 1),
        port,
        url: a.url(format!("{server_addr}:{port}")),
        up: up.clone(),
        down: down.clone(),
        transport,
        sources: Vec::new(),
        connection: ca.connection,
        client: ca.client,
    }
}

/// A bridge named `br0` in `namespace`.
pub(super) fn bridge(namespace: &str, address: Option<String>) -> Iface {
    Iface {
        namespace: namespace.to_owned(),
        name: "br0".into(),
        kind: "bridge".into(),
        peer: None,
        address,
        more_addresses: Vec::new(),
        master: None,
    }
}

/// One end of a veth pair; `peer` is `namespace/name` of the other end.
pub(super) fn veth(
    namespace: &str,
    name: &str,
    peer: String,
    address: Option<String>,
    master: Option<&str>,
) -> Iface {
    Iface {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        kind: "veth".into(),
        peer: Some(peer),
        address,
        more_addresses: Vec::new(),
        master: master.map(str::to_owned),
    }
}

/// A cell's links: client to the wire's bridge to the server, and the server to the
/// LLM namespace's bridge.
fn cell_links(c: &Cell, llm_ns: &str) -> Vec<Iface> {
    let (client, wire, server, id) = (&c.client_ns, &c.wire_ns, &c.server_ns, &c.id);
    vec![
        veth(
            client,
            "to-wire",
            format!("{wire}/to-client"),
            Some(format!("{}/24", c.client_addr)),
            None,
        ),
        bridge(wire, None),
        veth(
            wire,
            "to-client",
            format!("{client}/to-wire"),
            None,
            Some("br0"),
        ),
        veth(
            wire,
            "to-server",
            format!("{server}/to-wire"),
            None,
            Some("br0"),
        ),
        veth(
            server,
            "to-wire",
            format!("{wire}/to-server"),
            Some(format!("{}/24", c.server_addr)),
            None,
        ),
        veth(
            server,
            "to-llm",
            format!("{llm_ns}/to-{id}"),
            Some(format!("{}/16", c.server_llm_addr)),
            None,
        ),
        veth(
            llm_ns,
            &format!("to-{id}"),
            format!("{server}/to-llm"),
            None,
            Some("br0"),
        ),
    ]
}

/// A cell's server: lab's own (`lab serve`), or the user's command with lab's
/// placeholders filled in, run through `lab exec-server`.
fn server_process(t: &Topology, ca: &CellApproach, c: &Cell) -> Process {
    let a = ca.protocol;
    let (addr, p) = (c.server_addr, c.port);
    let upstream = format!("http://{LLM_ADDR}:{LLM_PORT}");
    let certs = format!("{}/certs/{}", run_dir(&t.name), c.id);
    let role = format!("{} server", ca.name);
    match &ca.server {
        ServerSpec::Builtin => {
            let mut argv: Vec<String> = vec!["lab".into(), "serve".into(), a.server.into()];
            argv.extend(["--listen".into(), format!("{addr}:{p}")]);
            argv.extend(["--upstream".into(), upstream]);
            // A load test's servers share one HTTP/2 connection to the mock for all
            // their streams (a relayed real upstream speaks HTTP/1.1 only).
            if t.workload.load.is_some() && t.llm.url.is_none() {
                argv.push("--upstream-h2".into());
            }
            // Past one process's open files, a load test's TCP server runs as several.
            if let Some(l) = &t.workload.load
                && a.shares_port()
                && l.server_workers() > 1
            {
                argv.extend(["--workers".into(), l.server_workers().to_string()]);
            }
            if a.model == Model::Server {
                argv.extend(["--model".into(), t.llm.model.clone()]);
                if let Some(s) = t.llm.sampling {
                    argv.extend(["--sampling".into(), s.to_sampling().to_json()]);
                }
            }
            argv.extend(["--san".into(), addr.to_string()]);
            argv.extend(["--cert-out".into(), certs]);
            if !c.transport.is_default() {
                argv.extend(["--transport".into(), c.transport.to_json()]);
            }
            line_process(&c.server_ns, &role, argv)
        }
        ServerSpec::Command { argv, files, .. } => {
            let fill = |arg: &str| {
                let filled = [
                    ("{listen}", format!("{addr}:{p}")),
                    ("{host}", addr.to_string()),
                    ("{port}", p.to_string()),
                    ("{upstream}", upstream.clone()),
                    ("{model}", t.llm.model.clone()),
                    ("{cert}", format!("{certs}/cert.pem")),
                    ("{key}", format!("{certs}/key.pem")),
                    ("{pem}", format!("{certs}/cert-key.pem")),
                    ("{dir}", certs.clone()),
                ]
                .iter()
                .fold(arg.to_owned(), |s, (k, v)| s.replace(k, v));
                super::nodes::fill(&filled, &|w| {
                    Some(
                        super::nodes::address_of(t, w.strip_prefix("node:")?, c.index)?.to_string(),
                    )
                })
            };
            // `lab exec-server` waits until lab has recorded it, then becomes the
            // command (same process), in the server's own directory.
            let mut full: Vec<String> = vec!["lab".into(), "exec-server".into()];
            full.extend(["--dir".into(), certs.clone(), "--".into()]);
            full.extend(argv.iter().map(|a| fill(a)));
            Process {
                namespace: c.server_ns.clone(),
                role,
                argv: full,
                ready: Ready::Port {
                    transport: a.transport,
                    port: p,
                },
                certs: Some(CertsFor {
                    dir: certs.clone(),
                    san: addr.to_string(),
                }),
                env: Vec::new(),
                files: (!files.is_empty()).then(|| super::nodes::FilesFor {
                    dir: certs.clone(),
                    files: files
                        .iter()
                        .map(|(n, text)| (n.clone(), fill(text)))
                        .collect(),
                }),
            }
        }
    }
}

/// A load test's client addresses: enough that ports never run out towards the one
/// server port (the client's own address first), or none when one address is enough.
fn load_sources(l: &LoadWorkload, c: &Cell) -> Vec<Ipv4Addr> {
    let n = l.top().div_ceil(STREAMS_PER_SOURCE) as u8;
    if n <= 1 {
        return Vec::new();
    }
    let mut sources = vec![c.client_addr];
    for k in 0..n - 1 {
        sources.push(Ipv4Addr::new(198, 18, c.index as u8, 10 + k));
    }
    sources
}

/// A load test's kernel settings: ports for its connections, and room in the server's
/// queues.
fn load_sysctls(c: &Cell) -> [Sysctl; 3] {
    let set = |ns: &str, key: &str, value: &str, why: &str| Sysctl {
        namespace: ns.to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
        why: why.to_owned(),
    };
    [
        set(
            &c.client_ns,
            "net/ipv4/ip_local_port_range",
            "1024 65535",
            "ports for a load test's connections",
        ),
        set(
            &c.server_ns,
            "net/core/somaxconn",
            "65535",
            "a load test's connections waiting to be accepted",
        ),
        set(
            &c.server_ns,
            "net/ipv4/tcp_max_syn_backlog",
            "65535",
            "a load test's connections being set up",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(yaml: &str) -> Topology {
        crate::topology::parse::parse("t.yaml", yaml).expect("valid topology")
    }

    /// A cell's names and addresses follow from its index alone: its three namespaces,
    /// 198.18.i.1 and .2 on the shaped segment, 198.19.0.(i+1) towards the LLM.
    #[test]
    fn a_cell_s_names_and_addresses_come_from_its_index() {
        let p = plan(&topology(
            "name: nm\napproaches: [sse, wt]\nprofiles:\n  a: {}\n  b: { delay: 5ms }\n",
        ))
        .unwrap();
        assert_eq!(p.cells.len(), 4);
        let c = &p.cells[3];
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.profile.as_str()),
            ("c3", "wt", "b")
        );
        assert_eq!(
            (
                c.client_ns.as_str(),
                c.wire_ns.as_str(),
                c.server_ns.as_str()
            ),
            ("lab-nm-c3-client", "lab-nm-c3-wire", "lab-nm-c3-server")
        );
        assert_eq!(c.client_addr.to_string(), "198.18.3.1");
        assert_eq!(c.server_addr.to_string(), "198.18.3.2");
        assert_eq!(c.server_llm_addr.to_string(), "198.19.0.4");
        assert_eq!(c.url, "https://198.18.3.2:4433/wt");
    }

    /// Each cell's links: a veth from its client and from its server to its wire
    /// namespace, the wire's bridge, and a veth from its server to the LLM's bridge;
    /// every name fits the kernel's 15 characters.
    #[test]
    fn a_cell_s_links_join_client_wire_server_and_llm() {
        let p = plan(&topology(
            "name: links\napproaches: [sse]\nprofiles:\n  a: {}\n",
        ))
        .unwrap();
        let links = cell_links(&p.cells[0], &p.llm.namespace);
        let named: Vec<(&str, &str)> = links
            .iter()
            .map(|i| (i.namespace.as_str(), i.name.as_str()))
            .collect();
        for want in [
            ("lab-links-c0-client", "to-wire"),
            ("lab-links-c0-server", "to-wire"),
            ("lab-links-c0-wire", "br0"),
            ("lab-links-c0-wire", "to-client"),
            ("lab-links-c0-wire", "to-server"),
            ("lab-links-c0-server", "to-llm"),
            ("lab-links-llm", "to-c0"),
        ] {
            assert!(named.contains(&want), "{want:?} not in {named:?}");
        }
        assert!(links.iter().all(|i| i.name.len() <= 15));
    }

    /// A load test takes more client addresses once its top level is past what one
    /// source's ports hold, and opens the kernel's queues and port range for it.
    #[test]
    fn a_load_test_gets_its_sources_and_kernel_settings() {
        let load = |top: u32| {
            plan(&topology(&format!(
                "name: ld\napproaches: [sse]\nprofiles:\n  a: {{}}\nworkload:\n  load: {{ levels: [{top}], ramp: 1s, hold: 1s }}\n"
            )))
            .unwrap()
        };
        let small = load(100);
        assert!(small.cells[0].sources.is_empty());
        let big = load(3 * STREAMS_PER_SOURCE + 1);
        let s = &big.cells[0].sources;
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], big.cells[0].client_addr);
        assert_eq!(s[1].to_string(), "198.18.0.10");
        let keys: Vec<&str> = big.sysctls.iter().map(|s| s.key.as_str()).collect();
        for k in [
            "net/ipv4/ip_local_port_range",
            "net/core/somaxconn",
            "net/ipv4/tcp_max_syn_backlog",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
    }

    /// Past 15,000 streams, the TCP servers that run alone serve their port from
    /// several processes, and the others from one; `server_workers` sets the count.
    #[test]
    fn a_large_load_test_gets_server_workers_where_a_server_shares_its_port() {
        let workers = |level: u32, extra: &str| -> Vec<(String, Option<String>)> {
            let p = plan(&topology(&format!(
                "name: sw\napproaches: [sse, ws, wt, handoff]\nprofiles:\n  a: {{}}\nworkload:\n  load: {{ levels: [{level}], ramp: 1s, hold: 1s{extra} }}\n"
            )))
            .unwrap();
            p.processes
                .iter()
                .filter(|p| p.role.ends_with(" server"))
                .map(|p| {
                    let at = p.argv.iter().position(|a| a == "--workers");
                    (p.role.clone(), at.map(|i| p.argv[i + 1].clone()))
                })
                .collect()
        };
        let two = Some("2".to_owned());
        assert_eq!(
            workers(20_000, ""),
            vec![
                ("sse server".to_owned(), two.clone()),
                ("ws server".to_owned(), two),
                ("wt server".to_owned(), None),
                ("handoff server".to_owned(), None),
            ]
        );
        assert!(workers(15_000, "").iter().all(|(_, w)| w.is_none()));
        assert_eq!(
            workers(100, ", server_workers: 3")[1].1.as_deref(),
            Some("3")
        );
    }

    /// The LLM node: the mock in its own namespace by default, with the topology's
    /// settings on its command line; with a URL, a relay on the host instead.
    #[test]
    fn the_llm_node_is_the_mock_or_a_relay_to_the_url() {
        let t = topology(
            "name: m\napproaches: [sse]\nllm:\n  mock: { format: openai, tbt: 7ms }\nprofiles:\n  a: {}\n",
        );
        let (node, procs) = llm_node(&t, "lab-m-llm");
        assert_eq!(node.namespace, "lab-m-llm");
        let argv = procs[0].argv.join(" ");
        assert!(argv.contains("openai") && argv.contains("7ms"), "{argv}");
        let t = topology(
            "name: r\napproaches: [sse]\nllm:\n  url: http://127.0.0.1:11434\nprofiles:\n  a: {}\n",
        );
        let (_, procs) = llm_node(&t, "lab-r-llm");
        assert!(
            procs
                .iter()
                .any(|p| p.role == "relay" && p.namespace == HOST)
        );
    }
}
