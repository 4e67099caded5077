//! Every subcommand's handler. Handlers print what a person reads and choose the exit
//! status; the work is done by the stages they call. [`main`] dispatches a parsed
//! command line.

/// Prints a line on stdout, for commands that build, run or take down labs: a reader
/// that went away (`lab run | head`) must not kill the command halfway, so a failed
/// write is dropped (what was not printed is in the saved results).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// As [`say!`], on stderr.
macro_rules! tell {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Prints on stdout for `lab client` and `lab demo`. They talk to the network, where a
/// write to a closed connection must be an error and not a death (writev has no
/// MSG_NOSIGNAL), so they keep SIGPIPE ignored; a reader of their output that went away
/// ends them as SIGPIPE would (status 141 in a shell).
macro_rules! out {
    ($($t:tt)*) => {{
        $crate::commands::write_out(format_args!($($t)*), false)
    }};
}

/// As [`out!`], with a line feed.
macro_rules! outln {
    ($($t:tt)*) => {{
        $crate::commands::write_out(format_args!($($t)*), true)
    }};
}

/// Writes to stdout; a closed stdout ends the process by SIGPIPE.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| o.flush());
    if let Err(e) = r
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        // SAFETY: the default action of SIGPIPE, then SIGPIPE: the process ends here.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
        std::process::exit(128 + libc::SIGPIPE);
    }
}

pub mod client;
pub mod demo;
mod faults;
pub mod lab;
pub mod link;
pub mod load;
pub mod load_workers;
pub mod plan;
pub mod progress;
pub mod report;
pub mod results;
pub mod run;
pub mod serve;
pub mod serve_workers;
pub mod wire;

use crate::cli::{Cli, Command};
use std::process::ExitCode;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the command ran but something failed (a prompt, a digest check, a lab
/// that would not build).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad input (flags, files, a topology, no root), reported before anything
/// ran.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of `lab run`: the run was clean but an expectation failed.
pub const EXIT_EXPECTATION: u8 = 3;
/// Exit status when Ctrl-C or SIGTERM interrupted the command (after it cleaned up).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Whether a command only reads files and prints: it may die of SIGPIPE when its
/// reader goes away (status 141, what `head` and shells expect). Every other command
/// builds, runs, serves or removes something and must finish what it started, or talks
/// to the network, so it keeps SIGPIPE ignored and prints with [`say!`] or [`out!`].
fn only_prints(c: &Command) -> bool {
    matches!(
        c,
        Command::Plan(_)
            | Command::Schema(_)
            | Command::Completions(_)
            | Command::Report(_)
            | Command::Compare(_)
            | Command::Status(_)
    )
}

/// Runs a parsed command line and returns the process's exit status.
pub fn main(cli: Cli) -> ExitCode {
    // A process lab started waits here until lab has recorded it.
    crate::netlab::procs::hold();
    if only_prints(&cli.command) {
        // SAFETY: restoring the default action of SIGPIPE before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // web-transport-quinn warns of every session whose peer closed the connection
    // without a WebTransport close capsule, which is how lab's clients end sessions (as
    // with wtransport): quiet unless asked for by name.
    if !cli.log.contains("web_transport_quinn")
        && !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("web_transport_quinn"))
        && let Ok(d) = "web_transport_quinn::session=error".parse()
    {
        filter = filter.add_directive(d);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // The link emulator runs without an async runtime: its threads must all block the
    // stop signals, which a runtime's worker threads would not.
    if let Command::Wire(a) = cli.command {
        return ExitCode::from(match wire::run(a) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                tell!("lab: {e:#}");
                EXIT_FAILED
            }
        });
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tell!("lab: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    ExitCode::from(match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            tell!("lab: {e:#}");
            EXIT_USAGE
        }
    })
}

async fn dispatch(command: Command) -> anyhow::Result<u8> {
    let ok = |b: bool| if b { EXIT_OK } else { EXIT_FAILED };
    match command {
        Command::Serve(s) => serve::run(s).await.map(|()| EXIT_OK),
        Command::Client(c) => client::run(*c).await.map(ok),
        Command::Load(a) => load::run(*a).await.map(ok),
        Command::Demo(d) => demo::run(d).await.map(ok),
        Command::Plan(p) => plan::run(&p),
        Command::Schema(a) => plan::schema(&a),
        Command::Run(a) => run::run(a).await,
        Command::Report(a) => report::report(a),
        Command::Compare(a) => report::compare(a),
        Command::Merge(a) => report::merge(a),
        Command::Completions(a) => plan::completions(&a),
        Command::Man(a) => plan::man(&a),
        Command::Up(a) => lab::up(a).await,
        Command::Status(a) => lab::status(a),
        Command::Shell(a) => lab::shell(a),
        Command::Exec(a) => lab::exec(a),
        Command::Bench(crate::cli::Bench::Quic(a)) => lab::bench_quic(a).await,
        Command::Link(crate::cli::Link::Show(a)) => link::show(a),
        Command::Link(crate::cli::Link::Set(a)) => link::set(a),
        Command::Down(a) => lab::down(a),
        Command::Clean(a) => lab::clean(a),
        Command::Relay(a) => lab::relay(a).await,
        Command::Wire(a) => wire::run(a).map(|()| EXIT_OK),
        Command::ExecServer(a) => lab::exec_server(a),
        Command::Helper(a) => serve::helper(a).await.map(|()| EXIT_OK),
        Command::Part(a) => serve::part(a).await.map(|()| EXIT_OK),
    }
}

/// Prints why a command refuses to run; bad input.
pub fn refuse(e: anyhow::Error) -> anyhow::Result<u8> {
    tell!("lab: {e:#}");
    Ok(EXIT_USAGE)
}

/// Loads a topology and its plan, or prints every problem and gives the exit status.
pub fn load_topology(
    path: &std::path::Path,
) -> Result<(crate::topology::model::Topology, crate::plan::Plan), u8> {
    crate::plan::load(path).map_err(|e| {
        let text = e.to_string();
        eprint!("lab: {text}");
        if !text.ends_with('\n') {
            eprintln!();
        }
        EXIT_USAGE
    })
}

/// Counts Ctrl-C (SIGINT) and SIGTERM from the moment it is made: once made, neither
/// kills the process any more, the command decides what they mean.
pub struct Signals {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    seen: tokio::sync::watch::Receiver<usize>,
    /// Set in the signal handler itself (the count above follows a moment later, once
    /// the runtime has passed the signal on).
    caught: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Signals {
    pub fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let caught = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [libc::SIGINT, libc::SIGTERM] {
            signal_hook::flag::register(sig, caught.clone())?;
        }
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, seen) = tokio::sync::watch::channel(0);
        let c = count.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let _ = tx.send(n);
            }
        });
        Ok(Signals {
            count,
            seen,
            caught,
        })
    }

    /// Whether a signal has come, as the handler saw it (not waiting for the count).
    pub fn caught(&self) -> bool {
        self.caught.load(std::sync::atomic::Ordering::SeqCst) || self.count() > 0
    }

    /// How many signals have come.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` signals have come in all.
    pub async fn wait(&self, n: usize) {
        let mut seen = self.seen.clone();
        let _ = seen.wait_for(|&c| c >= n).await;
    }
}
