//! Bringing a lab up and taking it down.
//!
//! `up` records every object in the state record before or right after creating it, and
//! holds a guard that takes everything down again if building fails, is interrupted, or
//! panics. Teardown is synchronous and needs no netlink: stop the processes (pidfd, so a
//! reused pid is never signalled) and what they left in their sessions, then unmount
//! and unlink the namespaces in reverse
//! order — their interfaces go with them — then remove the run directory.

use super::procs::{self, Started};
use super::state::{Phase, State};
use super::{links, sys};
use crate::plan::layout::Shaper;
use crate::plan::{HOST, Plan, RUN_ROOT, Ready, run_dir};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long processes get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Takes the lab down on drop unless disarmed: covers errors, interruption and panics.
struct Guard {
    state: Option<State>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut s) = self.state.take() {
            let failures = teardown(&mut s);
            for f in failures {
                tracing::error!("while taking {} down: {f}", s.name);
            }
        }
    }
}

impl Guard {
    fn state(&mut self) -> &mut State {
        self.state
            .as_mut()
            .expect("guard holds the state until disarmed")
    }
}

fn check(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Builds the lab of `plan` and starts its processes. On success the lab stays up and
/// its state record says what is where; on any failure everything is already removed.
/// With `hand_over`, the finished lab is recorded as handed over (it outlives this
/// process); otherwise it stays this process's, and is a leftover if it dies. `stage`
/// hears what is being done, step by step.
///
/// In order: refuse a name or a namespace that is taken; claim the run directory with
/// the state record in it (from then on the guard takes down whatever is recorded);
/// the namespaces; the links and their addresses; kernel settings and routes; the
/// qdiscs (kernel backend); the processes, the LLM first.
pub fn up(
    topology: &Path,
    plan: &Plan,
    cancel: &AtomicBool,
    hand_over: bool,
    stage: &dyn Fn(&str),
) -> Result<State> {
    let Some(shaping) = &plan.shaping else {
        bail!(
            "the plan has no shaping backend yet; decide it (plan::layout::decide) before building"
        );
    };
    check_congestion(plan)?;
    let dir = PathBuf::from(run_dir(&plan.name));
    // /run/lab is root's and no one else's: lab writes state and runs processes from it.
    super::files::SafeDir::open(Path::new(RUN_ROOT), true)?;
    refuse_taken(plan)?;
    let state = new_state(topology, plan);
    claim_run_dir(plan, &state, &dir)?;
    let mut guard = Guard { state: Some(state) };

    stage(&format!("creating {} namespaces", plan.namespaces.len()));
    create_namespaces(plan, &mut guard, cancel)?;
    let mut fds: HashMap<String, File> = HashMap::new();
    for ns in &plan.namespaces {
        fds.insert(ns.clone(), sys::open_netns(ns)?);
    }
    check(cancel)?;
    stage(&format!(
        "creating and configuring {} interfaces",
        plan.interfaces.len()
    ));
    links::create(plan, &fds)?;
    check(cancel)?;
    configure_namespaces(plan, &fds)?;
    links::wait_running(plan, &fds)?;
    set_sysctls(plan, &fds)?;
    tune_routes(plan, &fds)?;
    check(cancel)?;

    if shaping.backend == Shaper::Kernel {
        stage("shaping the links with netem");
        super::qdisc::apply_plan(plan, &fds)?;
    }
    check(cancel)?;

    start_processes(plan, &fds, &dir, &mut guard, cancel, stage)?;
    check(cancel)?;
    guard.state().phase = Phase::Up;
    guard.state().handed_over = hand_over;
    guard.state().save()?;
    Ok(guard.state.take().expect("state present"))
}

/// A lab of the same name, or any of the plan's namespaces, already there: refused, with
/// what to do.
fn refuse_taken(plan: &Plan) -> Result<()> {
    if let Ok(s) = State::load(&plan.name) {
        bail!(
            "a lab named {} is already {} (built by pid {}{}); take it down with `lab down {}`",
            plan.name,
            match s.phase {
                Phase::Up => "up",
                Phase::Building => "being built",
            },
            s.owner_pid,
            if s.owner_alive() {
                ""
            } else {
                ", which has exited"
            },
            plan.name
        );
    }
    let taken: Vec<&String> = plan
        .namespaces
        .iter()
        .filter(|n| sys::netns_exists(n))
        .collect();
    if !taken.is_empty() {
        bail!(
            "network namespace{} {} already exist{}; if a killed lab left {}, `lab clean` removes {}",
            if taken.len() > 1 { "s" } else { "" },
            taken
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if taken.len() > 1 { "" } else { "s" },
            if taken.len() > 1 { "them" } else { "it" },
            if taken.len() > 1 { "them" } else { "it" },
        );
    }
    Ok(())
}

/// The state record of a lab being built by this process.
fn new_state(topology: &Path, plan: &Plan) -> State {
    let me = std::process::id();
    State {
        name: plan.name.clone(),
        topology: std::fs::canonicalize(topology).unwrap_or_else(|_| topology.to_owned()),
        created: now_secs(),
        phase: Phase::Building,
        owner_pid: me,
        owner_start: sys::start_time(me).unwrap_or(0),
        handed_over: false,
        // Every namespace is recorded before it is created: creation is create-new, so
        // a name in the record is never someone else's.
        namespaces: plan.namespaces.clone(),
        processes: Vec::new(),
        plan: plan.clone(),
    }
}

/// The run directory is the lock. It is prepared under a temporary name and renamed
/// into place without replacing anything, so it never exists without its record.
fn claim_run_dir(plan: &Plan, state: &State, dir: &Path) -> Result<()> {
    let tmp = Path::new(RUN_ROOT).join(format!(".building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755));
    for sub in ["logs", "certs", "wire", "keys"] {
        std::fs::create_dir(tmp.join(sub))
            .with_context(|| format!("cannot create {}", tmp.join(sub).display()))?;
    }
    // The clients' TLS secrets: root's alone.
    std::fs::set_permissions(tmp.join("keys"), std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot protect {}", tmp.join("keys").display()))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(e) = sys::rename_noreplace(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if e.kind() == ErrorKind::AlreadyExists {
            bail!(
                "a lab named {} is already up or being built ({} exists); `lab status` shows it",
                plan.name,
                dir.display()
            );
        }
        return Err(e).with_context(|| format!("cannot create {}", dir.display()));
    }
    Ok(())
}

/// Creates the plan's namespaces in order; on a failure the record keeps only the ones
/// this call made.
fn create_namespaces(plan: &Plan, guard: &mut Guard, cancel: &AtomicBool) -> Result<()> {
    sys::ensure_netns_dir()?;
    for (k, ns) in plan.namespaces.iter().enumerate() {
        let made = check(cancel).and_then(|()| sys::create_netns(ns, plan.ipv6));
        if let Err(e) = made {
            // Only the ones before k are ours.
            guard.state().namespaces.truncate(k);
            guard.state().save()?;
            return Err(e);
        }
    }
    Ok(())
}

/// Addresses, bridges and links up inside each namespace, a thread a namespace.
fn configure_namespaces(plan: &Plan, fds: &HashMap<String, File>) -> Result<()> {
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = plan
            .namespaces
            .iter()
            .map(|ns| {
                let ifaces: Vec<_> = plan
                    .interfaces
                    .iter()
                    .filter(|i| &i.namespace == ns)
                    .collect();
                let fd = &fds[ns];
                let name = &plan.name;
                s.spawn(move || {
                    links::configure(name, fd, &ifaces)
                        .with_context(|| format!("cannot configure namespace {ns}"))
                })
            })
            .collect();
        for h in handles {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a configuration thread panicked")))?;
        }
        Ok(())
    })
}

/// Kernel settings of the namespaces (a load test's queues and port range).
fn set_sysctls(plan: &Plan, fds: &HashMap<String, File>) -> Result<()> {
    for c in &plan.sysctls {
        sys::in_netns(&fds[&c.namespace], || {
            sys::write_sysctl(&c.key, &c.value, false)
        })
        .with_context(|| format!("cannot set {} in {} ({})", c.key, c.namespace, c.why))?;
    }
    Ok(())
}

/// TCP settings on the routes between each cell's ends, on both ends.
fn tune_routes(plan: &Plan, fds: &HashMap<String, File>) -> Result<()> {
    for c in &plan.cells {
        if links::tcp_metrics(&c.transport.tcp).is_empty() {
            continue;
        }
        for ns in [&c.client_ns, &c.server_ns] {
            let addr = plan
                .interfaces
                .iter()
                .find(|i| &i.namespace == ns && i.name == "to-wire")
                .and_then(|i| i.address.as_deref())
                .ok_or_else(|| anyhow::anyhow!("{ns} has no to-wire address in the plan"))?;
            links::tune_route(&fds[ns], "to-wire", addr, &c.transport.tcp)?;
        }
    }
    Ok(())
}

/// The LLM (or the relay) first, then every server and link emulator at once: each
/// started and recorded, then all waited for until ready.
fn start_processes(
    plan: &Plan,
    fds: &HashMap<String, File>,
    dir: &Path,
    guard: &mut Guard,
    cancel: &AtomicBool,
    stage: &dyn Fn(&str),
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the lab executable")?;
    write_hosts(plan, dir)?;
    let server_side = |ns: &str| {
        plan.cells
            .iter()
            .find(|c| c.server_ns == ns || c.wire_ns == ns)
            .map(|c| c.id.clone())
    };
    let cell_of = |ns: &str| {
        server_side(ns).or_else(|| {
            plan.nodes
                .iter()
                .find(|n| n.namespace == ns)
                .and_then(|n| n.cell.clone())
        })
    };
    // The LLM and the nodes first: the servers may reach them as they start.
    let mut waves: [Vec<&crate::plan::Process>; 2] = [Vec::new(), Vec::new()];
    for p in &plan.processes {
        let wave = usize::from(server_side(&p.namespace).is_some());
        waves[wave].push(p);
    }
    for (w, wave) in waves.into_iter().enumerate() {
        stage(&if w == 0 {
            match plan.nodes.len() {
                0 => "starting the LLM".to_owned(),
                n => format!("starting the LLM and {n} nodes, waiting until each is ready"),
            }
        } else {
            format!(
                "starting {} servers and link emulators, waiting until each is ready",
                wave.len()
            )
        });
        let mut started: Vec<Started> = Vec::new();
        for p in wave {
            check(cancel)?;
            let cell = cell_of(&p.namespace);
            let mut st = start_one(&exe, plan, p, cell.as_deref(), fds, dir)?;
            guard.state().processes.push(st.record.clone());
            guard.state().save()?;
            st.release()?;
            started.push(st);
        }
        for mut st in started {
            st.wait_ready(procs::READY_TIMEOUT, cancel)?;
            let rec = st.record.clone();
            if let Some(slot) = guard
                .state()
                .processes
                .iter_mut()
                .find(|r| r.pid == rec.pid)
            {
                *slot = rec;
            }
        }
        guard.state().save()?;
    }
    Ok(())
}

/// The hosts files of a lab with nodes (none without): the machine's /etc/hosts with
/// the lab's names added, one for the shared namespaces and one a cell.
fn write_hosts(plan: &Plan, dir: &Path) -> Result<()> {
    use crate::plan::nodes::hosts;
    if plan.nodes.is_empty() {
        return Ok(());
    }
    let base = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let d = super::files::SafeDir::open(&dir.join("hosts"), true)?;
    d.write("shared", hosts(plan, None, &base).as_bytes(), 0o644)?;
    for c in &plan.cells {
        d.write(&c.id, hosts(plan, Some(&c.id), &base).as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Starts one planned process in its namespace, its output to its log; a server of the
/// user's gets a certificate lab made, in its cell's certs/.
fn start_one(
    exe: &Path,
    plan: &Plan,
    p: &crate::plan::Process,
    cell: Option<&str>,
    fds: &HashMap<String, File>,
    dir: &Path,
) -> Result<Started> {
    let made = match &p.certs {
        Some(c) => {
            let ck = lab_servers::tls::CertKey::generate(std::slice::from_ref(&c.san))?;
            let d = super::files::SafeDir::open(Path::new(&c.dir), true)?;
            d.write("cert.pem", ck.cert_pem.as_bytes(), 0o644)?;
            d.write("key.pem", ck.key_pem.as_bytes(), 0o600)?;
            // Both in one file, for a program that takes them so (HAProxy's `crt`).
            let both = format!("{}{}", ck.cert_pem, ck.key_pem);
            d.write("cert-key.pem", both.as_bytes(), 0o600)?;
            Some(ck.sha256_hex())
        }
        None => None,
    };
    if let Some(f) = &p.files {
        let d = super::files::SafeDir::open(Path::new(&f.dir), true)?;
        for (name, text) in &f.files {
            d.write(name, text.as_bytes(), 0o644)?;
        }
    }
    let ns = if p.namespace == HOST {
        None
    } else {
        Some(&fds[&p.namespace])
    };
    // A program of the user's (a node, a server of theirs) finds the nodes by name.
    let hosts = match p.ready {
        Ready::Line => None,
        _ => crate::plan::nodes::hosts_scope(plan, &p.namespace)
            .map(|c| crate::plan::nodes::hosts_path(&plan.name, c.as_deref())),
    };
    let base = match cell {
        Some(c) => format!("{c}-{}", p.role),
        None => p.role.clone(),
    };
    let log = dir
        .join("logs")
        .join(format!("{}.log", base.replace(' ', "-")));
    let mut st = procs::start(
        exe,
        &p.role,
        cell,
        &p.namespace,
        ns,
        &p.argv,
        log,
        &p.env,
        procs::Lifetime::Held,
        p.ready.clone(),
        hosts.as_deref().map(Path::new),
    )?;
    if made.is_some() {
        st.record.cert_sha256 = made;
    }
    Ok(st)
}

/// Every TCP congestion controller a cell names must be one this kernel has, or no
/// connection could use it; said before anything is built.
fn check_congestion(plan: &Plan) -> Result<()> {
    const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
    let wanted: Vec<(&str, &str)> = plan
        .cells
        .iter()
        .filter_map(|c| Some((c.id.as_str(), c.transport.tcp.congestion.as_deref()?)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let have =
        std::fs::read_to_string(AVAILABLE).with_context(|| format!("cannot read {AVAILABLE}"))?;
    let have: Vec<&str> = have.split_whitespace().collect();
    for (cell, cc) in wanted {
        if !have.contains(&cc) {
            bail!(
                "cell {cell}: transport.tcp.congestion '{cc}' is not available in this kernel; available: {} (a module such as tcp_{cc} may need loading first)",
                have.join(", ")
            );
        }
    }
    Ok(())
}

/// Takes a lab down: processes, namespaces in reverse order, then the run directory.
/// Keeps going past errors and returns what it could not remove.
pub fn teardown(state: &mut State) -> Vec<String> {
    let mut failures = Vec::new();
    // Signal every process first, then wait for all of them: one grace period in total.
    let fds: Vec<_> = state
        .processes
        .iter()
        .rev()
        .filter_map(|p| sys::Pidfd::open(p.pid, p.start).map(|fd| (p, fd)))
        .collect();
    for (_, fd) in &fds {
        fd.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    for (p, fd) in &fds {
        if !fd.wait_exit(deadline) {
            fd.signal(libc::SIGKILL);
            if !fd.wait_exit(Instant::now() + Duration::from_secs(5)) {
                failures.push(format!("the {} (pid {}) survived SIGKILL", p.role, p.pid));
            }
        }
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(p.pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    // What a killed browser client left of its browser, before its namespace goes.
    failures.extend(super::browsers::stop_left(&state.dir(), &state.namespaces));
    // What the processes started in their sessions (a node's workers, a crashed
    // server's children).
    failures.extend(super::sessions::stop_left(
        &state.processes,
        &state.namespaces,
    ));
    let node_namespaces: Vec<String> = state
        .plan
        .nodes
        .iter()
        .map(|n| n.namespace.clone())
        .filter(|n| state.namespaces.contains(n))
        .collect();
    failures.extend(super::sessions::strays(&node_namespaces));
    for ns in state.namespaces.iter().rev() {
        if let Err(e) = sys::delete_netns(ns) {
            failures.push(format!("{e:#}"));
        }
    }
    if failures.is_empty() {
        let dir = state.dir();
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != ErrorKind::NotFound
        {
            failures.push(format!("cannot remove {}: {e}", dir.display()));
        }
    } else {
        // Keep the record so `lab clean` can finish the job.
        let _ = state.save();
    }
    failures
}
