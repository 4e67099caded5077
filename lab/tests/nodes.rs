//! Root integration tests of the user's nodes (`nodes:`): programs that are not lab
//! (Debian's redis-server, sh), in namespaces of their own, for real. `lab up`,
//! `status`, `exec`, `shell` and `down` work on them; what they start in their session
//! goes with them; a SIGKILL of `lab run` and then `lab clean` leaves no process; a node
//! that exits is reported with its log.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// A topology named `name` with one `sse` cell, a fast mock, and `nodes`.
fn topology(name: &str, workload: &str, nodes: &str) -> Tmp {
    tmpfile(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\napproaches: [sse]\nllm:\n  mock: {{ ttft: 5ms, tbt: 1ms, jitter: 0%, max_tokens: 12 }}\nprofiles:\n  lan: {{ delay: 1ms }}\n{workload}nodes:\n{nodes}"
        ),
    )
}

/// A shared redis-server with its config file rendered by lab, and a cell node that
/// starts redis-server through sh, its address in the environment, with a `sleep` it
/// forked left in its session (as a program's worker would be), after writing its
/// environment, and what its /etc/hosts says of `store`, into its working directory.
const NODES: &str = r#"  store:
    scope: shared
    command: [redis-server, "{dir}/store.conf"]
    ports: [6379]
    files:
      store.conf: "bind {addr}\nport 6379\nsave \"\"\nappendonly no\nprotected-mode no\n"
  cache:
    command: [sh, -c, "env > env.txt; getent hosts store > store.txt; sleep 600 & exec redis-server --bind $BIND --port 6380 --save '' --appendonly no --protected-mode no"]
    ports: [tcp/6380]
    env: { BIND: "{addr}", STORE: "{node:store}" }
"#;

#[test]
fn a_node_that_is_not_lab_is_up_in_status_exec_shell_and_down() {
    let name = "tnodes";
    let _down = Down(name.into());
    let topo = topology(name, "", NODES);
    let out = ok(&["up", topo.to_str().unwrap()]);
    // `lab up` (and `lab status`) list the nodes, their addresses and processes.
    for want in [
        "| store | shared | lab-tnodes-store    | 198.19.255.1 | tcp/6379 |",
        "| cache | c0     | lab-tnodes-c0-cache | 198.19.2.1   | tcp/6380 |",
        "node store",
        "c0 node cache",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    let st = status_json(name);
    let live = st["live"]["processes"].as_array().unwrap();
    for role in ["node store", "node cache"] {
        let p = live.iter().find(|p| p["role"] == role).unwrap();
        assert_eq!(p["alive"], true, "{p}");
    }
    assert_eq!(st["plan"]["nodes"].as_array().unwrap().len(), 2);

    // The cell's server reaches both nodes; each node is named in `lab exec`.
    let ping = |node: &str, host: &str, port: &str| {
        ok(&[
            "exec",
            "--lab",
            name,
            node,
            "--",
            "redis-cli",
            "-h",
            host,
            "-p",
            port,
            "ping",
        ])
    };
    assert_eq!(ping("sse.server", "198.19.255.1", "6379").trim(), "PONG");
    assert_eq!(ping("sse.server", "198.19.2.1", "6380").trim(), "PONG");
    assert_eq!(ping("store", "198.19.2.1", "6380").trim(), "PONG");
    assert_eq!(ping("c0.cache", "198.19.255.1", "6379").trim(), "PONG");
    // By name too: the lab's hosts file is /etc/hosts in its shells and commands.
    assert_eq!(ping("sse.server", "store", "6379").trim(), "PONG");
    assert_eq!(ping("sse.server", "cache", "6380").trim(), "PONG");
    let found = ok(&[
        "exec", "--lab", name, "sse", "--", "getent", "hosts", "cache",
    ]);
    assert!(found.starts_with("198.19.2.1 "), "{found}");
    let hosts = ok(&["exec", "--lab", name, "llm", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains("198.19.255.1\tstore\n"), "{hosts}");
    assert!(
        !hosts.contains("cache"),
        "the shared hosts file names no cell's node: {hosts}"
    );
    // The rendered file, and the node's own environment and directory.
    let conf = std::fs::read_to_string("/run/lab/tnodes/nodes/store/store.conf").unwrap();
    assert!(conf.starts_with("bind 198.19.255.1\nport 6379\n"), "{conf}");
    // The node ran in its own directory (where it wrote env.txt) with its environment.
    let env = std::fs::read_to_string("/run/lab/tnodes/nodes/c0-cache/env.txt").unwrap();
    for want in ["BIND=198.19.2.1", "STORE=198.19.255.1"] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    let store = std::fs::read_to_string("/run/lab/tnodes/nodes/c0-cache/store.txt").unwrap();
    assert!(store.starts_with("198.19.255.1 "), "{store:?}");

    // A shell in the node's namespace sees the node's address.
    let mut sh = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["shell", "--lab", name, "cache"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sh.stdin
        .take()
        .unwrap()
        .write_all(b"cat /proc/net/fib_trie | grep -c 198.19.2.1; exit 7\n")
        .unwrap();
    let o = sh.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains('2'),
        "{}",
        text(&o)
    );

    // `lab down` stops the nodes and what they forked (the sleep), and removes all.
    let procs = processes_and_sessions(&st);
    assert!(
        procs.len() > st["processes"].as_array().unwrap().len(),
        "the cache node's sleep is not in its session: {procs:?}"
    );
    let out = ok(&["down", name]);
    assert!(out.contains("is down"), "{out}");
    assert_gone(name, &procs);
}

#[test]
fn a_sigkilled_run_with_nodes_leaves_no_process_after_clean() {
    let name = "tnodekill";
    let _down = Down(name.into());
    // Enough prompts that the run is still going when it is killed.
    let topo = topology(name, "workload: { repeat: 50 }\n", NODES);
    let results = tmpdir("tnodekill-results");
    let (mut run, st) = run_until_up(name, &topo, &results);
    let procs = processes_and_sessions(&st);
    assert!(procs.iter().all(|(p, s)| running(*p, *s)), "{procs:?}");
    run.kill().unwrap();
    run.wait().unwrap();
    let out = ok(&["clean"]);
    assert!(out.contains(&format!("lab {name} is down")), "{out}");
    assert_gone(name, &procs);
}

#[test]
fn a_node_that_exits_is_reported_with_its_log_and_nothing_is_left() {
    // At `lab up`: the node exits before it listens.
    let name = "tnodefail";
    let _down = Down(name.into());
    let topo = topology(
        name,
        "",
        "  broken:\n    command: [sh, -c, \"echo no config file here >&2; exit 3\"]\n    ports: [7000]\n",
    );
    let o = lab(&["up", topo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "the node broken",
        "exited (exit status: 3) before it listened on TCP port 7000",
        "no config file here",
        "nothing was left behind",
    ] {
        assert!(err.contains(want), "{want:?} not in\n{err}");
    }
    assert_nothing_left(name, &[]);

    // During `lab run`: the node is ready (it has no ports), and exits when the test
    // says so, while the prompts (ten, about 0.4 s each) are still running.
    let name = "tnodequit";
    let _down = Down(name.into());
    let topo = tmpfile(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\napproaches: [sse]\nllm:\n  mock: {{ ttft: 5ms, tbt: 30ms, jitter: 0%, max_tokens: 12 }}\nprofiles:\n  lan: {{}}\nnodes:\n  quitter:\n    scope: shared\n    command: [sh, -c, \"while [ ! -e stop ]; do sleep 0.05; done; echo going away >&2\"]\n"
        ),
    );
    let results = tmpdir("tnodequit-results");
    let (run, _) = run_until_up(name, &topo, &results);
    std::fs::write(format!("/run/lab/{name}/nodes/quitter/stop"), b"").unwrap();
    let o = run.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the node quitter") && err.contains("exited during the run"),
        "{err}"
    );
    assert!(err.contains("going away"), "{err}");
    let (dir, run) = saved_run(&results);
    assert_eq!(run["nodes_exited"].as_array().unwrap().len(), 1, "{run}");
    // The run's logs are kept with its results, the node's among them.
    assert!(dir.join("logs/node-quitter.log").is_file());
    assert_nothing_left(name, &[]);
}

/// A namespace's count of SYNs sent again (`TcpExtTCPSynRetrans`, from nstat).
fn syn_retrans(ns: &str) -> u64 {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nstat", "-az", "TcpExtTCPSynRetrans"])
        .output()
        .expect("nstat (iproute2)");
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find_map(|l| l.strip_prefix("TcpExtTCPSynRetrans"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExtTCPSynRetrans in {out}"))
}

/// When `lab up` returns, every link of the lab is running (operstate up), so the first
/// packets a process sends are not dropped: before lab waited for this, the kernel's
/// link watcher took up to a second to start a new link, and the first connection
/// from a server to a node lost its ARP exchange and sent its SYN again 1 s later.
#[test]
fn every_link_is_running_when_up_returns_and_no_first_syn_is_sent_twice() {
    let name = "tlinks";
    let _down = Down(name.into());
    // Three Redis nodes: enough links that the kernel starts them in more than one
    // batch, and nodes that are ready at once, so that `lab up` is quick.
    let redis = |n: &str| {
        format!(
            "  {n}:\n    scope: shared\n    command: [redis-server, --bind, \"{{addr}}\", --port, \"6379\", --save, \"\", --protected-mode, \"no\"]\n    ports: [6379]\n"
        )
    };
    let nodes = [redis("r1"), redis("r2"), redis("r3")].concat();
    let topo = topology(name, "", &nodes);
    ok(&["up", topo.to_str().unwrap()]);
    // First: every interface of every namespace is operationally up.
    let namespaces = namespaces_of(name);
    assert_eq!(namespaces.len(), 7, "{namespaces:?}");
    for ns in &namespaces {
        let o = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if line.contains(": lo:") {
                continue;
            }
            assert!(line.contains("state UP"), "{ns}: {line}");
        }
    }
    // Then the first connection from the server's namespace to the LLM and to a node
    // that nothing has spoken to yet sends its SYN once.
    let server = format!("lab-{name}-c0-server");
    let before = syn_retrans(&server);
    for (host, port) in [("198.19.255.254", "11434"), ("198.19.255.3", "6379")] {
        let o = Command::new("ip")
            .args(["netns", "exec", &server, "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{host}:{port}: {}", text(&o));
    }
    assert_eq!(syn_retrans(&server), before, "a first SYN was sent again");
    ok(&["down", name]);
    assert_gone(name, &[]);
}
