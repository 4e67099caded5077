//! The handoff runner: `POST /chat` with `{"message": ...}` over plain HTTP/1.1 (no TLS)
//! to the handoff server's front; the answer is SSE, as from the SSE server, written by
//! the streaming daemon that the front handed the socket to. The daemon closes the
//! connection after each answer, so every prompt takes a connection of its own, in
//! `reuse` mode too. Records carry the time to the response head (`ttfb_ms`) and the
//! server's hand-off latency (`handoff_ms`, from its `Lab-Handoff-Us` header).

use crate::http::{EventMeaning, HttpRunner, SseApi, Version};
use crate::sse::SseServerApi;
use crate::{Runner, RunnerOpts, ServerTiming, Target};
use lab_codec::sse;

/// The server's hand-off latency: its `Lab-Handoff-Us` header (lab-servers'
/// `handoff::HANDOFF_HEADER`), recorded as `handoff_ms`.
pub const TIMING: ServerTiming = ServerTiming {
    header: "lab-handoff-us",
    key: "handoff_ms",
    what: "hand-off, front to streaming daemon",
    how: "SCM_RIGHTS over a Unix socket",
    note: "The daemon writes the head before it asks the upstream, so TTFB is the front's and the daemon's, and TTFT minus TTFB the upstream's.",
};

/// The SSE server's API, with the hand-off header read.
struct HandoffApi(SseServerApi);

impl SseApi for HandoffApi {
    fn body(&self, prompt: &crate::Prompt) -> Vec<u8> {
        self.0.body(prompt)
    }
    fn event(&self, ev: sse::Event) -> EventMeaning {
        self.0.event(ev)
    }
    fn timing(&self) -> Option<&'static ServerTiming> {
        Some(&TIMING)
    }
}

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
        HandoffApi(SseServerApi { usage: opts.usage }),
        target,
        opts,
        Version::Http1,
    )?))
}
