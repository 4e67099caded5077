//! The namespace lab's commands: `lab up`, `status`, `shell`, `exec`, `down`, `clean`,
//! and the hidden `relay`. They print and choose exit statuses; the work is
//! [`crate::netlab`]'s.

use super::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, load_topology, refuse};
use crate::cli::{CleanArgs, DownArgs, ExecArgs, RelayArgs, ShellArgs, StatusArgs, UpArgs};
use crate::netlab::state::{self, Phase, State};
use crate::netlab::{lifecycle, links, live, qdisc, relay, shell, sys};
use crate::report::status;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Builds the lab of `plan`, or says why not and gives the exit status. A signal during
/// the build wins over the build finishing: whatever was built is taken down. With
/// `hand_over`, the finished lab is recorded as handed over (it stays up after this
/// process); otherwise it belongs to this process, and `lab clean` removes it if this
/// process dies.
pub async fn build(
    topology: &std::path::Path,
    plan: crate::plan::Plan,
    hand_over: bool,
    signals: &super::Signals,
    progress: &super::progress::Progress,
) -> Result<State, u8> {
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let topo = topology.to_owned();
    let p = progress.clone();
    let name = plan.name.clone();
    let mut job = tokio::task::spawn_blocking(move || {
        lifecycle::up(&topo, &plan, &c, hand_over, &|s| {
            p.stage(&format!("building lab {name}: {s}"))
        })
    });
    let result = tokio::select! {
        // A signal that comes as the build ends wins: the lab is taken down.
        biased;
        () = signals.wait(1) => {
            tell!("lab: interrupted; taking the lab down");
            cancel.store(true, Ordering::SeqCst);
            // The build may have finished in the meantime: then it is taken down here.
            if let Ok(Ok(mut state)) = job.await {
                for f in lifecycle::teardown(&mut state) {
                    tell!("lab: while taking {} down: {f}", state.name);
                }
            }
            return Err(EXIT_INTERRUPTED);
        }
        r = &mut job => r,
    };
    match result {
        Ok(Ok(state)) => Ok(state),
        Ok(Err(e)) => {
            tell!("lab: {e:#}\nlab: nothing was left behind");
            Err(EXIT_FAILED)
        }
        Err(e) => {
            tell!("lab: building the lab failed: {e}");
            Err(EXIT_FAILED)
        }
    }
}

/// `lab up`: build, start, report, return; the lab stays up.
pub async fn up(a: UpArgs) -> Result<u8> {
    let signals = super::Signals::new()?;
    if let Err(e) = sys::require_privileges("up") {
        return refuse(e);
    }
    let plan = match load_topology(&a.topology) {
        Ok((_, plan)) => plan,
        Err(code) => return Ok(code),
    };
    let plan = match crate::plan::layout::decide(plan, qdisc::probe_netem) {
        Ok(p) => p,
        Err(e) => {
            tell!("lab: {e:#}\nlab: nothing was built");
            return Ok(EXIT_FAILED);
        }
    };
    let started = std::time::Instant::now();
    let progress = super::progress::Progress::new();
    let built = build(&a.topology, plan, true, &signals, &progress).await;
    progress.finish();
    let state = match built {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    say!(
        "lab {} is up: {} cells, {} namespaces, {} processes, built in {} ms\n",
        state.name,
        state.plan.cells.len(),
        state.namespaces.len(),
        state.processes.len(),
        started.elapsed().as_millis()
    );
    say!(
        "{}",
        status::render(&state, &live::gather(&state)).trim_end_matches('\n')
    );
    Ok(hand_over(state, &signals))
}

/// The end of `lab up`: a signal up to here (Ctrl-C while the status printed, say)
/// takes the lab down and exits 130. From here on the lab is handed over: the stop
/// signals get their default action back, so one that comes later ends this process
/// as it would any other and leaves the lab up, as it is recorded. The handler marks a
/// signal as it comes, so one caught just before the default action is back is seen.
fn hand_over(mut state: State, signals: &super::Signals) -> u8 {
    if !signals.caught() {
        // SAFETY: restoring the default action of two signals; the handlers lab had
        // for them are not called again.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
        }
        if !signals.caught() {
            // When, on the machine's monotonic clock: a signal sent before this was
            // caught (a test holds lab to that).
            tracing::debug!("handed over at CLOCK_MONOTONIC {} ns", sys::now_ns());
            return EXIT_OK;
        }
    }
    tell!("lab: interrupted; taking the lab down");
    for f in lifecycle::teardown(&mut state) {
        tell!("lab: while taking {} down: {f}", state.name);
    }
    EXIT_INTERRUPTED
}

/// `lab down [name]`.
pub fn down(a: DownArgs) -> Result<u8> {
    if let Err(e) = sys::require_privileges("down") {
        return refuse(e);
    }
    let name = match state::pick(a.name.as_deref()) {
        Ok(n) => n,
        Err(e) => return refuse(e),
    };
    let mut s = State::load(&name)?;
    if !s.handed_over && s.owner_alive() {
        tell!(
            "lab: lab {name} belongs to pid {}, which is {} it; interrupt that (Ctrl-C) and it takes the lab down itself",
            s.owner_pid,
            if s.phase == Phase::Building {
                "building"
            } else {
                "running"
            }
        );
        return Ok(EXIT_FAILED);
    }
    Ok(report_down(&mut s))
}

fn report_down(s: &mut State) -> u8 {
    let failures = lifecycle::teardown(s);
    if failures.is_empty() {
        say!(
            "lab {} is down: stopped {} processes, removed {} namespaces and {}",
            s.name,
            s.processes.len(),
            s.namespaces.len(),
            s.dir().display()
        );
        EXIT_OK
    } else {
        for f in &failures {
            tell!("lab: could not remove: {f}");
        }
        tell!(
            "lab: {} is partly down; its state record is kept, so `lab clean` can retry",
            s.name
        );
        EXIT_FAILED
    }
}

/// `lab clean`: removes what killed labs left behind.
pub fn clean(a: CleanArgs) -> Result<u8> {
    if let Err(e) = sys::require_privileges("clean") {
        return refuse(e);
    }
    let mut code = EXIT_OK;
    let mut kept: HashSet<String> = HashSet::new();
    let mut did = 0;
    for name in state::lab_names() {
        match State::load(&name) {
            Ok(mut s) => {
                let leftover = s.orphaned() || a.all;
                if leftover {
                    did += 1;
                    if report_down(&mut s) != EXIT_OK {
                        code = EXIT_FAILED;
                    }
                } else {
                    say!(
                        "lab {name} is {}; kept (`lab down {name}`, or `lab clean --all`)",
                        match (s.phase, s.handed_over) {
                            (Phase::Up, true) => "up".to_owned(),
                            (Phase::Up, false) => format!("in use by pid {}", s.owner_pid),
                            (Phase::Building, _) => format!("being built by pid {}", s.owner_pid),
                        }
                    );
                    kept.extend(s.namespaces);
                }
            }
            Err(_) => {
                // A run directory with no readable record: lab's own tree, nothing else
                // to go on; marked namespaces are found below.
                let dir = std::path::PathBuf::from(crate::plan::run_dir(&name));
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {
                        did += 1;
                        say!("removed {} (it had no state record)", dir.display());
                    }
                    // A `lab down` finished removing it meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tell!("lab: cannot remove {}: {e}", dir.display());
                        code = EXIT_FAILED;
                    }
                }
            }
        }
    }
    // Run directories that a `lab up` was still preparing when it died.
    for e in std::fs::read_dir(crate::plan::RUN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".building-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if sys::start_time(pid).is_none() && std::fs::remove_dir_all(e.path()).is_ok() {
            did += 1;
            say!("removed {}", e.path().display());
        }
    }
    // Namespaces that carry lab's mark but are in no record.
    let entries = std::fs::read_dir(sys::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten();
    for e in entries {
        let Ok(ns) = e.file_name().into_string() else {
            continue;
        };
        if !ns.starts_with("lab-") || kept.contains(&ns) {
            continue;
        }
        let marked = sys::open_netns(&ns)
            .ok()
            .and_then(|f| links::ns_marked(&f).ok().flatten());
        if let Some(lab) = marked {
            // A lab whose build began after the records were read above: it recorded
            // this namespace before creating it, so its record, read now, lists it.
            if State::load(&lab).is_ok_and(|s| s.namespaces.contains(&ns)) {
                continue;
            }
            match sys::delete_netns(&ns) {
                Ok(()) => {
                    did += 1;
                    say!("removed namespace {ns} (marked as lab {lab}'s, in no record)");
                }
                Err(e) => {
                    tell!("lab: {e:#}");
                    code = EXIT_FAILED;
                }
            }
        }
    }
    if did == 0 {
        say!("nothing to clean");
    }
    Ok(code)
}

/// `lab status`.
pub fn status(a: StatusArgs) -> Result<u8> {
    let names = match &a.lab {
        Some(n) => match state::pick(Some(n)) {
            Ok(n) => vec![n],
            Err(e) => return refuse(e),
        },
        None => state::lab_names(),
    };
    let states: Vec<State> = names
        .iter()
        .map(|n| State::load(n))
        .collect::<Result<_>>()?;
    let labs: Vec<(State, live::Live)> = states
        .into_iter()
        .map(|s| {
            let l = live::gather(&s);
            (s, l)
        })
        .collect();
    if a.json {
        say!("{}", serde_json::to_string_pretty(&status::json(&labs))?);
    } else if labs.is_empty() {
        say!("no lab is up; start one with `lab up topologies/<file>.yaml`");
    } else {
        let parts: Vec<String> = labs.iter().map(|(s, l)| status::render(s, l)).collect();
        say!("{}", parts.join("\n").trim_end_matches('\n'));
    }
    Ok(EXIT_OK)
}

fn node_env(lab: &str, node: &str, ns: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("LAB_NAME".to_owned(), lab.to_owned()),
        ("LAB_NODE".to_owned(), node.to_owned()),
        ("LAB_NETNS".to_owned(), ns.to_owned()),
    ])
}

/// The hosts file a shell or command in `ns` gets: its cell's (or the shared one) in
/// a lab with nodes.
fn hosts_of(s: &State, ns: &str) -> Option<std::path::PathBuf> {
    let scope = crate::plan::nodes::hosts_scope(&s.plan, ns)?;
    let p = std::path::PathBuf::from(crate::plan::nodes::hosts_path(&s.name, scope.as_deref()));
    p.is_file().then_some(p)
}

fn resolve(lab: Option<&str>, node: &str) -> Result<(State, String)> {
    let name = state::pick(lab)?;
    let s = State::load(&name)?;
    let ns = crate::plan::node::resolve(&s.plan, node)?;
    Ok((s, ns))
}

/// `lab shell <node>`.
pub fn shell(a: ShellArgs) -> Result<u8> {
    if let Err(e) = sys::require_privileges("shell") {
        return refuse(e);
    }
    let (s, ns) = match resolve(a.lab.as_deref(), &a.node) {
        Ok(x) => x,
        Err(e) => return refuse(e),
    };
    let rc = s.dir().join(format!("shell-{}.rc", std::process::id()));
    let (argv, rc_text) = shell::shell_argv(&a.node, &rc);
    let mut env = node_env(&s.name, &a.node, &ns);
    if let Some(t) = &rc_text {
        std::fs::write(&rc, t).with_context(|| format!("cannot write {}", rc.display()))?;
    } else {
        env.insert("PS1".into(), format!("[lab {}] # ", a.node));
    }
    tell!("lab: shell in {ns} (node {}); `exit` to leave", a.node);
    let code = shell::run_in(&ns, &argv, &env, hosts_of(&s, &ns).as_deref());
    if rc_text.is_some() {
        let _ = std::fs::remove_file(&rc);
    }
    code
}

/// `lab exec <node> -- cmd args...`.
pub fn exec(a: ExecArgs) -> Result<u8> {
    if let Err(e) = sys::require_privileges("exec") {
        return refuse(e);
    }
    let (s, ns) = match resolve(a.lab.as_deref(), &a.node) {
        Ok(x) => x,
        Err(e) => return refuse(e),
    };
    // `lab` as the command means this very executable, so in-lab clients match the servers.
    let mut argv = a.command.clone();
    if argv[0] == "lab" {
        argv[0] = std::env::current_exe()?.display().to_string();
    }
    shell::run_in(
        &ns,
        &argv,
        &node_env(&s.name, &a.node, &ns),
        hosts_of(&s, &ns).as_deref(),
    )
}

/// `lab bench quic`: on loopback, or through a cell of a lab that is up.
pub async fn bench_quic(a: crate::cli::BenchQuicArgs) -> Result<u8> {
    use crate::bench;
    let sizes = if a.quick {
        bench::Sizes::QUICK
    } else {
        bench::Sizes::FULL
    };
    let (path, (server, client)) = match &a.cell {
        None => ("loopback".to_owned(), bench::loopback()?),
        Some(node) => {
            if let Err(e) = sys::require_privileges("bench quic --cell") {
                return refuse(e);
            }
            let s = match state::pick(a.lab.as_deref()).and_then(|n| State::load(&n)) {
                Ok(s) => s,
                Err(e) => return refuse(e),
            };
            let cell = match super::link::cell_of(&s, node) {
                Ok(i) => &s.plan.cells[i],
                Err(e) => return refuse(e),
            };
            let link = if cell.up == cell.down {
                cell.up.describe()
            } else {
                format!("up {}, down {}", cell.up.describe(), cell.down.describe())
            };
            let path = format!(
                "lab {} cell {} ({}@{}: {} to {}, {})",
                s.name, cell.id, cell.name, cell.profile, cell.client_addr, cell.server_addr, link
            );
            (path, bench::in_cell(cell)?)
        }
    };
    tell!("lab: measuring QUIC on {path}");
    let r = bench::run(server, client, &path, sizes).await?;
    if a.json {
        say!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        say!("{}", r.table());
    }
    Ok(EXIT_OK)
}

/// `lab relay` (started by `lab up` for a `url:` upstream).
pub async fn relay(a: RelayArgs) -> Result<u8> {
    // Registered before the ready line: a SIGTERM right after it is a clean stop.
    let signals = super::Signals::new()?;
    let to = relay::authority(&a.to)?;
    let listener = relay::bind_in(&a.netns, a.listen)?;
    let line = serde_json::json!({
        "event": "ready",
        "server": "relay",
        "listen": a.listen.to_string(),
        "url": format!("http://{}", a.listen),
        "cert_sha256": null,
    });
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    tracing::info!("relaying {} in {} to {to} on the host", a.listen, a.netns);
    tokio::select! {
        r = relay::serve(listener, to) => r.map(|()| EXIT_OK),
        () = signals.wait(1) => Ok(EXIT_OK),
    }
}

/// `lab exec-server [--dir D] -- cmd args...` (started by `lab up` for a server or a
/// node of the user's):
/// by now lab has recorded this process, so it becomes the command, keeping its pid.
pub fn exec_server(a: crate::cli::ExecServerArgs) -> Result<u8> {
    use std::os::unix::process::CommandExt;
    let mut argv = a.command;
    if argv[0] == "lab" {
        argv[0] = std::env::current_exe()?.display().to_string();
    }
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if let Some(d) = &a.dir {
        cmd.current_dir(d);
    }
    let err = cmd.exec();
    tell!("lab: cannot run {}: {err}", argv[0]);
    Ok(127)
}
