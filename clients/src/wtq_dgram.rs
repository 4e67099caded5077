//! The second WebTransport stack's datagram runner (`wtq-dgram`): the `wtq` runner with
//! its tokens in datagrams ([`crate::dgram`]).

use crate::wt::{Answers, WtRunner};
use crate::wtq::Wtq;
use crate::{Runner, RunnerOpts, Target};

/// The web-transport-quinn datagram runner for `target` (its path is the session path).
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    let stack = Wtq::new(&target, opts)?;
    Ok(Box::new(WtRunner::new(stack, opts, Answers::Datagrams)))
}
