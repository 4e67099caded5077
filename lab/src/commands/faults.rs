//! The faults a topology asks for (a node's `kill_after`): lab kills the node that long
//! after the run's first measured workload starts (after its warm-up), by the pid it
//! recorded and only if that process is still the one it started, and the run reports
//! the kill as done on purpose.

use crate::netlab::state::State;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The faults of one run, under way.
pub struct Faults {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    done: Arc<Mutex<Vec<Done>>>,
    /// When the first measured workload started: the faults' clock.
    armed: Arc<OnceLock<Instant>>,
}

/// A fault carried out.
#[derive(Debug, Clone)]
pub struct Done {
    /// The killed node's namespace.
    pub namespace: String,
    /// What the report says.
    pub line: String,
}

/// Sets up every node's `kill_after`; each waits for [`Faults::arm`]'s call.
pub fn start(st: &Arc<State>) -> Faults {
    let done = Arc::new(Mutex::new(Vec::new()));
    let armed: Arc<OnceLock<Instant>> = Arc::default();
    let mut tasks = Vec::new();
    for n in &st.plan.nodes {
        let Some(after) = n.kill_after else {
            continue;
        };
        let Some(p) = st.processes.iter().find(|p| p.namespace == n.namespace) else {
            continue;
        };
        let (pid, start, role, ns) = (p.pid, p.start, p.role.clone(), p.namespace.clone());
        let (done, armed) = (done.clone(), armed.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = loop {
                if let Some(t) = armed.get() {
                    break *t;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            tokio::time::sleep_until((t0 + after).into()).await;
            let line = kill(pid, start, &role, &ns, t0.elapsed());
            if let Ok(mut d) = done.lock() {
                d.push(Done {
                    namespace: ns,
                    line,
                });
            }
        }));
    }
    Faults { tasks, done, armed }
}

/// SIGKILL to `pid` if it is still the process that started at `start`.
fn kill(pid: u32, start: u64, role: &str, ns: &str, at: Duration) -> String {
    if crate::netlab::live::process_live(pid, start).is_none() {
        return format!(
            "the {role} (in {ns}) was to be killed {:.1} s into the workload, but had exited already",
            at.as_secs_f64()
        );
    }
    let pid_t = nix::unistd::Pid::from_raw(pid as i32);
    match nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) => format!(
            "the {role} (pid {pid}, in {ns}) was killed at {:.1} s into the workload, as the topology's kill_after asked",
            at.as_secs_f64()
        ),
        Err(e) => format!("the {role} (pid {pid}, in {ns}) could not be killed: {e}"),
    }
}

impl Faults {
    /// What starts the faults' clock (the first call counts): for the cells to call as
    /// their measured workload starts.
    pub fn arm(&self) -> impl Fn() + Send + Sync + 'static {
        let armed = self.armed.clone();
        move || {
            armed.get_or_init(Instant::now);
        }
    }

    /// Stops the faults not yet due; those carried out.
    pub fn finish(self) -> Vec<Done> {
        for t in &self.tasks {
            t.abort();
        }
        self.done.lock().map(|d| d.clone()).unwrap_or_default()
    }
}
