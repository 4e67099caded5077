//! The raw-API runner: `POST /v1/chat/completions` with `stream: true` through the TLS
//! proxy, parsing OpenAI chat chunks. A token is a chunk with non-empty delta content.

use crate::http::{EventMeaning, HttpRunner, SseApi, Version};
use crate::record::{ErrorCategory, PromptError};
use crate::{Runner, RunnerOpts, Target};
use lab_codec::openai::{ChatChunk, ChatRequest, ErrorBody};
use lab_codec::sse;

/// The raw-API runner for `target`.
pub fn runner(target: Target, opts: &RunnerOpts) -> anyhow::Result<Box<dyn Runner>> {
    let api = RawApi {
        model: opts.model.clone(),
        sampling: opts.sampling,
    };
    Ok(Box::new(HttpRunner::new(
        api,
        target,
        opts,
        Version::Http1,
    )?))
}

/// The raw OpenAI-compatible API.
pub struct RawApi {
    pub model: String,
    /// The sampling settings every request carries.
    pub sampling: lab_codec::openai::Sampling,
}

impl SseApi for RawApi {
    fn body(&self, prompt: &crate::Prompt) -> Vec<u8> {
        let sampling = self.sampling.answer_len(prompt.max_tokens);
        serde_json::to_vec(&ChatRequest::user(&self.model, &prompt.text, true).with(sampling))
            .unwrap_or_default()
    }
    fn event(&self, ev: sse::Event) -> EventMeaning {
        if ev.is_done() {
            return EventMeaning::Done;
        }
        match serde_json::from_str::<ChatChunk>(&ev.data) {
            Ok(c) => c
                .content()
                .map_or(EventMeaning::Skip, |t| EventMeaning::Token(t.to_owned())),
            Err(e) => match serde_json::from_str::<ErrorBody>(&ev.data) {
                Ok(err) => EventMeaning::Failed(PromptError::new(
                    ErrorCategory::Upstream,
                    err.error.message,
                )),
                Err(_) => EventMeaning::Failed(PromptError::new(
                    ErrorCategory::Receive,
                    format!("not a chat chunk: {e}"),
                )),
            },
        }
    }
}
