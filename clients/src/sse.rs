//! The SSE runner: `POST /chat` with `{"message": ...}`; every `data:` event is one token,
//! `data: [DONE]` ends the answer, and an `event: error` reports an upstream failure.

use crate::http::{EventMeaning, SseApi};
use crate::record::{ErrorCategory, PromptError};
use lab_codec::sse;

/// lab's SSE server API.
pub struct SseServerApi;

impl SseApi for SseServerApi {
    fn name(&self) -> &'static str {
        "sse"
    }
    fn default_path(&self) -> &'static str {
        "/chat"
    }
    fn body(&self, prompt: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "message": prompt })).unwrap_or_default()
    }
    fn event(&self, ev: sse::Event) -> EventMeaning {
        if ev.is_done() {
            EventMeaning::Done
        } else if ev.kind() == "error" {
            EventMeaning::Failed(PromptError::new(ErrorCategory::Upstream, ev.data))
        } else if ev.kind() == "message" {
            EventMeaning::Token(ev.data)
        } else {
            EventMeaning::Skip
        }
    }
}
