//! Single-threaded runtimes for the WebTransport clients' endpoints.
//!
//! wtransport 0.7.2 writes each HTTP/3 frame in three writes (type, length, payload).
//! On a multi-threaded runtime quinn's connection driver can run on another thread
//! between them and send the client's SETTINGS frame in more than one packet; and
//! wtransport's server loses a SETTINGS frame that arrives in pieces while the CONNECT
//! request's stream comes in (it drops a half-done read of its control stream; see
//! `servers/tests/webtransport_libraries.rs`). The session then never sets up, or the
//! server closes it with an HTTP/3 error (H3_EXCESSIVE_LOAD, H3_FRAME_UNEXPECTED).
//!
//! So each WebTransport client endpoint lives on one of these runtimes, one thread each:
//! its quinn drivers and wtransport's connection driver run there, and the driver's
//! writes of a frame all happen before quinn's connection driver can send a packet. The
//! runners' own work (streams, timing) stays on the caller's runtime. Endpoints are
//! spread over as many runtimes as the machine has CPUs.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::runtime::Handle;
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::ConnectingError;
use wtransport::{ClientConfig, Connection, Endpoint};

/// A wtransport client endpoint that lives on one of these runtimes: its `connect` sets
/// sessions up there.
#[derive(Clone)]
pub struct WtClient {
    rt: Handle,
    endpoint: Arc<Endpoint<Client>>,
}

impl WtClient {
    /// The endpoint of `cfg`, on the next runtime.
    pub fn new(cfg: ClientConfig) -> anyhow::Result<Self> {
        Self::on(cfg, None)
    }

    /// The endpoint of `cfg`, on runtime `k` (of [`runtimes`]), or the next one when
    /// `None`.
    pub fn on(cfg: ClientConfig, k: Option<usize>) -> anyhow::Result<Self> {
        let rt = match k {
            Some(k) => nth(k)?,
            None => next()?,
        };
        let endpoint = {
            let _on = rt.enter();
            Endpoint::client(cfg)?
        };
        Ok(Self {
            rt,
            endpoint: Arc::new(endpoint),
        })
    }

    /// The runtime the endpoint lives on.
    pub fn runtime(&self) -> &Handle {
        &self.rt
    }

    /// A WebTransport session to `url`, set up on the endpoint's runtime.
    pub async fn connect(&self, url: impl Into<String>) -> Result<Connection, ConnectingError> {
        let (endpoint, url) = (self.endpoint.clone(), url.into());
        run_on(&self.rt, async move { endpoint.connect(url).await }).await
    }
}

/// The endpoint, for everything but setting sessions up.
impl std::ops::Deref for WtClient {
    type Target = Endpoint<Client>;
    fn deref(&self) -> &Endpoint<Client> {
        &self.endpoint
    }
}

struct Pool {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();

fn start() -> Result<Pool, String> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a QUIC client runtime: {e}"))?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("quic-client-{i}"))
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .map_err(|e| format!("a QUIC client thread: {e}"))?;
    }
    Ok(Pool {
        handles,
        next: AtomicUsize::new(0),
    })
}

fn pool() -> anyhow::Result<&'static Pool> {
    POOL.get_or_init(start)
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A single-threaded runtime for one more endpoint: the runtimes in turn.
pub fn next() -> anyhow::Result<Handle> {
    let pool = pool()?;
    let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.handles.len();
    Ok(pool.handles[i].clone())
}

/// How many runtimes there are: one per CPU.
pub fn runtimes() -> anyhow::Result<usize> {
    Ok(pool()?.handles.len())
}

/// Runtime `k` of [`runtimes`] (modulo their number).
pub fn nth(k: usize) -> anyhow::Result<Handle> {
    let pool = pool()?;
    Ok(pool.handles[k % pool.handles.len()].clone())
}

/// Runs `fut` on `rt` and waits for it; dropping the wait (a prompt's timeout) stops it.
/// A panic in `fut` goes on here.
pub async fn run_on<F>(rt: &Handle, fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    struct Abort<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for Abort<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = Abort(rt.spawn(fut));
    match (&mut task.0).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only dropping `task` aborts it, and the runtimes run until the process ends.
        Err(e) => unreachable!("a QUIC client runtime's task ended early: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_on_a_thread_of_its_own_and_a_dropped_wait_stops_the_task() {
        let rt = next().unwrap();
        let name = run_on(&rt, async {
            std::thread::current().name().map(String::from)
        })
        .await;
        assert!(name.unwrap().starts_with("quic-client-"));
        // Only a current-thread runtime runs its tasks on the one thread.
        assert_eq!(
            rt.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = run_on(&rt, async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), waiting)
                .await
                .is_err()
        );
        // The task was aborted, so its end of the channel is gone.
        assert!(rx.await.is_err());
    }
}
