//! The SSE runner: `POST /chat` with `{"message": ...}`; every `data:` event is one token,
//! `data: [DONE]` ends the answer, and an `event: error` reports an upstream failure.

use crate::http::{EventMeaning, HttpRunner, SseApi, Version};
use crate::record::{ErrorCategory, PromptError};
use crate::{Runner, RunnerOpts, Target};
use lab_codec::sse;

/// The SSE runner for `target`.
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    Ok(Box::new(HttpRunner::new(
        SseServerApi { usage: opts.usage },
        target,
        opts,
        Version::Http1,
    )?))
}

/// lab's SSE server API; with `usage`, each request asks for the upstream's token
/// count (`"usage": true`), which comes as an `event: usage`.
pub struct SseServerApi {
    pub usage: bool,
}

impl SseApi for SseServerApi {
    fn body(&self, prompt: &crate::Prompt) -> Vec<u8> {
        let mut b = serde_json::json!({ "message": prompt.text });
        if let Some(n) = prompt.max_tokens {
            b["max_tokens"] = n.into();
        }
        if self.usage {
            b["usage"] = true.into();
        }
        serde_json::to_vec(&b).unwrap_or_default()
    }
    fn event(&self, ev: sse::Event) -> EventMeaning {
        if ev.is_done() {
            EventMeaning::Done
        } else if ev.kind() == "error" {
            EventMeaning::Failed(PromptError::new(ErrorCategory::Upstream, ev.data))
        } else if ev.kind() == "usage" {
            match ev.data.trim().parse::<u64>() {
                Ok(n) => EventMeaning::Usage(n),
                Err(_) => EventMeaning::Failed(PromptError::new(
                    ErrorCategory::Receive,
                    format!("usage event {:?} is not a count of tokens", ev.data),
                )),
            }
        } else if ev.kind() == "message" {
            EventMeaning::Token(ev.data)
        } else {
            EventMeaning::Skip
        }
    }
}
