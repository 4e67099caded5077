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
        usage: opts.usage,
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
    /// Ask for the answer's token count (`stream_options.include_usage`).
    pub usage: bool,
}

impl SseApi for RawApi {
    fn body(&self, prompt: &crate::Prompt) -> Vec<u8> {
        let sampling = self.sampling.answer_len(prompt.max_tokens);
        let mut req = ChatRequest::user(&self.model, &prompt.text, true).with(sampling);
        if self.usage {
            req.stream_options = Some(lab_codec::openai::StreamOptions {
                include_usage: true,
            });
        }
        serde_json::to_vec(&req).unwrap_or_default()
    }
    fn event(&self, ev: sse::Event) -> EventMeaning {
        if ev.is_done() {
            return EventMeaning::Done;
        }
        match serde_json::from_str::<ChatChunk>(&ev.data) {
            Ok(c) => match (c.content(), &c.usage) {
                (Some(t), _) => EventMeaning::Token(t.to_owned()),
                (None, Some(u)) => EventMeaning::Usage(u.completion_tokens),
                (None, None) => EventMeaning::Skip,
            },
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
