//! The SSE-over-HTTP/2 runner: lab's SSE server API ([`crate::sse`]) on an HTTP/2
//! connection. In `reuse` mode the runners of one client share one connection, so
//! prompts in flight at once go as streams of it.

use crate::http::{HttpRunner, Version};
use crate::sse::SseServerApi;
use crate::{Runner, RunnerOpts, Target};

/// The SSE-over-HTTP/2 runner for `target`.
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    Ok(Box::new(HttpRunner::new(
        SseServerApi { usage: opts.usage },
        target,
        opts,
        Version::Http2,
    )?))
}
