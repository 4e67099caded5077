//! The handoff runner: `POST /chat` with `{"message": ...}` over plain HTTP/1.1 (no TLS)
//! to the handoff server's front; the answer is SSE, as from the SSE server, written by
//! the streaming daemon that the front handed the socket to. The daemon closes the
//! connection after each answer, so every prompt takes a connection of its own, in
//! `reuse` mode too. Records carry the time to the response head (`ttfb_ms`) and the
//! server's hand-off latency (`handoff_ms`, from its `Lab-Handoff-Us` header).

use crate::http::{HttpRunner, Version};
use crate::sse::SseServerApi;
use crate::{Runner, RunnerOpts, Target};

/// The handoff runner for `target` (an `http://` URL).
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    if target.tls {
        anyhow::bail!(
            "the handoff server speaks plain HTTP; use http://{}{}",
            target.authority,
            target.path
        );
    }
    Ok(Box::new(HttpRunner::new(
        SseServerApi,
        target,
        opts,
        Version::Http1,
    )?))
}
