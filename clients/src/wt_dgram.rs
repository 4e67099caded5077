//! The WebTransport datagram runner (`wt-dgram`), on wtransport: the `wt` runner with
//! its tokens in datagrams ([`crate::dgram`]).

use crate::wt::{Answers, WtRunner, Wtransport};
use crate::{Runner, RunnerOpts, Target};

/// The WebTransport datagram runner for `target` (its path is the session path).
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    let stack = Wtransport::new(&target, opts)?;
    Ok(Box::new(WtRunner::new(stack, opts, Answers::Datagrams)))
}
