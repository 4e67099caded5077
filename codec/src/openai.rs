//! OpenAI chat-completion types (request, streaming chunk, completion, usage, error body),
//! and byte-exact chunk writers for the three stream formats the mock LLM speaks.
//!
//! The serde types are what clients and servers parse. The writers in [`ChunkWriter`]
//! produce the exact bytes Ollama sends (Go `encoding/json` compact output with its
//! escaping, fixed field order), which serde_json cannot be told to reproduce.

use serde::{Deserialize, Serialize};

/// A chat-completion request. Unknown fields are accepted and ignored, as the API does.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ChatRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Required by the API; `None` when the field is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// How the model samples: temperature, seed, the answer's most tokens.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// A request's sampling settings, sent as the API's own fields where set: a real
/// model at temperature 0 with a seed gives the same answer to the same prompt. The
/// mock's answers are fixed by its own seed and ignore them.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Keep generating to `max_tokens` past the end the model would choose (vLLM's and
    /// llama.cpp's extension, which vLLM's benchmarks send to fix an answer's length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

impl Sampling {
    /// Whether nothing is set (the upstream's defaults).
    pub fn is_default(&self) -> bool {
        *self == Sampling::default()
    }

    /// Reads `{"temperature":0,"seed":1,"max_tokens":64}` (any of them), refusing
    /// other fields.
    pub fn from_json(s: &str) -> Result<Sampling, String> {
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(s).map_err(|e| format!("not a JSON object: {e}"))?;
        if let Some(k) = v
            .keys()
            .find(|k| !["temperature", "seed", "max_tokens", "ignore_eos"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown field '{k}'; valid fields: temperature, seed, max_tokens, ignore_eos"
            ));
        }
        serde_json::from_value(serde_json::Value::Object(v)).map_err(|e| e.to_string())
    }

    /// As `from_json` reads it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// These settings for an answer of exactly `n` tokens (`max_tokens` with
    /// `ignore_eos`), or unchanged without `n`.
    pub fn answer_len(mut self, n: Option<u32>) -> Self {
        if let Some(n) = n {
            self.max_tokens = Some(n);
            self.ignore_eos = Some(true);
        }
        self
    }
}

impl ChatRequest {
    /// The request with `sampling`'s settings.
    pub fn with(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// A streaming request with one user message, as lab's clients and servers send it.
    pub fn user(model: &str, prompt: &str, stream: bool) -> Self {
        Self {
            model: Some(model.to_owned()),
            messages: Some(vec![ChatMessage {
                role: "user".into(),
                content: prompt.into(),
            }]),
            stream: Some(stream),
            stream_options: None,
            sampling: Sampling::default(),
        }
    }

    /// The content of the last user message, which the mock answers.
    pub fn last_user_content(&self) -> Option<&str> {
        self.messages
            .as_ref()?
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
    }
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
}

#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default,
)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// One `chat.completion.chunk` of a stream.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatChunk {
    /// The content of the first choice's delta, if it is non-empty.
    pub fn content(&self) -> Option<&str> {
        self.choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
            .filter(|c| !c.is_empty())
    }
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A non-streaming `chat.completion`.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub message: ChatMessage,
    pub finish_reason: Option<String>,
}

/// The body of an API error: `{"error":{"message":..,"type":..,"param":..,"code":..}}`.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.to_owned(),
                param: None,
                code: None,
            },
        }
    }

    /// Serialized as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// A `GET /v1/models` response.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
}

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it (with HTML escaping
/// on, as Ollama leaves it): `<`, `>`, `&`, U+2028 and U+2029 become `\u` escapes.
pub fn push_go_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `s` as a JSON string with standard (serde_json) escaping.
pub fn push_plain_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
}

/// The three chunk formats the mock LLM can emit.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum StreamFormat {
    /// Ollama v0.6.0 .. v0.32.5: role on every chunk, `created` per chunk. The reference.
    #[default]
    OllamaLegacy,
    /// Ollama v0.32.6 on: role on the first chunk only, `delta:{}` on the finish chunk.
    Ollama,
    /// OpenAI's own shape: a role-only first chunk, `logprobs:null`, standard escaping.
    Openai,
}

impl std::str::FromStr for StreamFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ollama-legacy" => Ok(Self::OllamaLegacy),
            "ollama" => Ok(Self::Ollama),
            "openai" => Ok(Self::Openai),
            other => Err(format!(
                "unknown stream format '{other}'; valid: ollama-legacy, ollama, openai"
            )),
        }
    }
}

impl std::fmt::Display for StreamFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OllamaLegacy => "ollama-legacy",
            Self::Ollama => "ollama",
            Self::Openai => "openai",
        })
    }
}

/// Writes the `data: <json>\n\n` events of one stream, byte-exact for the chosen format.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    pub format: StreamFormat,
    pub id: String,
    pub model: String,
    /// Set by the first content chunk in the formats that send `role` only once.
    sent_first: bool,
    include_usage: bool,
}

impl ChunkWriter {
    pub fn new(format: StreamFormat, id: String, model: String, include_usage: bool) -> Self {
        Self {
            format,
            id,
            model,
            sent_first: false,
            include_usage,
        }
    }

    fn push_str(&self, out: &mut String, s: &str) {
        match self.format {
            StreamFormat::Openai => push_plain_json_str(out, s),
            _ => push_go_json_str(out, s),
        }
    }

    fn head(&self, out: &mut String, created: i64) {
        out.push_str("data: {\"id\":");
        self.push_str(out, &self.id);
        out.push_str(",\"object\":\"chat.completion.chunk\",\"created\":");
        out.push_str(&created.to_string());
        out.push_str(",\"model\":");
        self.push_str(out, &self.model);
        out.push_str(",\"system_fingerprint\":\"fp_ollama\",\"choices\":");
    }

    fn tail(&self, out: &mut String) {
        if self.format == StreamFormat::Openai && self.include_usage {
            out.push_str(",\"usage\":null");
        }
        out.push_str("}\n\n");
    }

    /// Events that precede the first token (only OpenAI's role-only chunk).
    pub fn preamble(&mut self, out: &mut String, created: i64) {
        if self.format == StreamFormat::Openai && !self.sent_first {
            self.sent_first = true;
            self.head(out, created);
            out.push_str(
                "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]",
            );
            self.tail(out);
        }
    }

    /// One content event.
    pub fn content(&mut self, out: &mut String, created: i64, token: &str) {
        self.preamble(out, created);
        self.head(out, created);
        match self.format {
            StreamFormat::OllamaLegacy => {
                out.push_str("[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":");
                self.push_str(out, token);
                out.push_str("},\"finish_reason\":null}]");
            }
            StreamFormat::Ollama => {
                if self.sent_first {
                    out.push_str("[{\"index\":0,\"delta\":{\"content\":");
                } else {
                    out.push_str("[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":");
                }
                self.sent_first = true;
                self.push_str(out, token);
                out.push_str("},\"finish_reason\":null}]");
            }
            StreamFormat::Openai => {
                out.push_str("[{\"index\":0,\"delta\":{\"content\":");
                self.push_str(out, token);
                out.push_str("},\"logprobs\":null,\"finish_reason\":null}]");
            }
        }
        self.tail(out);
    }

    /// The finish event, the usage event when asked for, and `data: [DONE]`.
    pub fn finish(&mut self, out: &mut String, created: i64, usage: Usage) {
        self.preamble(out, created);
        self.head(out, created);
        match self.format {
            StreamFormat::OllamaLegacy => out.push_str(
                "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"stop\"}]",
            ),
            StreamFormat::Ollama => {
                out.push_str("[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]")
            }
            StreamFormat::Openai => out.push_str(
                "[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]",
            ),
        }
        self.tail(out);
        if self.include_usage {
            self.head(out, created);
            out.push_str("[],\"usage\":{\"prompt_tokens\":");
            out.push_str(&usage.prompt_tokens.to_string());
            out.push_str(",\"completion_tokens\":");
            out.push_str(&usage.completion_tokens.to_string());
            out.push_str(",\"total_tokens\":");
            out.push_str(&usage.total_tokens.to_string());
            out.push_str("}}\n\n");
        }
        out.push_str("data: [DONE]\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sampling settings go out as the API's own fields, only where set, and are read
    /// back; `--sampling` refuses fields it does not know.
    #[test]
    fn sampling_travels_in_the_request_where_set() {
        let plain = serde_json::to_string(&ChatRequest::user("m", "hi", true)).unwrap();
        assert!(
            !plain.contains("temperature") && !plain.contains("seed"),
            "{plain}"
        );
        let s = Sampling::from_json(r#"{"temperature":0,"seed":7,"max_tokens":12}"#).unwrap();
        let body = serde_json::to_string(&ChatRequest::user("m", "hi", true).with(s)).unwrap();
        assert!(
            body.ends_with(r#""stream":true,"temperature":0.0,"seed":7,"max_tokens":12}"#),
            "{body}"
        );
        let back: ChatRequest = serde_json::from_str(&body).unwrap();
        assert_eq!(back.sampling, s);
        assert_eq!(Sampling::from_json(&s.to_json()).unwrap(), s);
        let e = Sampling::from_json(r#"{"top_p":0.9}"#).unwrap_err();
        assert!(e.contains("unknown field 'top_p'"), "{e}");
        assert!(Sampling::from_json("[1]").is_err());
        // Other fields of a request are still passed over.
        let r: ChatRequest = serde_json::from_str(r#"{"model":"m","top_p":0.5}"#).unwrap();
        assert!(r.sampling.is_default());
    }

    fn legacy() -> ChunkWriter {
        ChunkWriter::new(
            StreamFormat::OllamaLegacy,
            "chatcmpl-123".into(),
            "gemma3:12b".into(),
            false,
        )
    }

    /// The literal example from shared/reference/ollama-stream.md.
    #[test]
    fn legacy_matches_the_reference_bytes() {
        let mut w = legacy();
        let mut out = String::new();
        w.content(&mut out, 1_700_000_000, "Hello");
        assert_eq!(
            out,
            "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemma3:12b\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n"
        );
        assert_eq!(out.len(), 229);
        out.clear();
        w.content(&mut out, 1_700_000_000, " world");
        assert_eq!(out.len(), 230);
        out.clear();
        w.finish(
            &mut out,
            1_700_000_000,
            Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            },
        );
        let (finish, done) = out.split_at(out.len() - 14);
        assert_eq!(finish.len(), 226);
        assert!(finish.ends_with("\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\n"));
        assert_eq!(done, "data: [DONE]\n\n");
    }

    #[test]
    fn legacy_content_event_is_224_plus_escaped_token() {
        let mut w = legacy();
        for token in ["a", "<b>", "日本", "\"q\"", "x\ny"] {
            let mut out = String::new();
            w.content(&mut out, 1_700_000_000, token);
            let mut esc = String::new();
            push_go_json_str(&mut esc, token);
            assert_eq!(out.len(), 224 + esc.len() - 2, "{token:?}");
        }
    }

    #[test]
    fn go_escaping() {
        let mut s = String::new();
        push_go_json_str(&mut s, "<a href=\"x\">&\\\n\t\u{1}\u{2028}é\u{8}\u{c}");
        assert_eq!(
            s,
            r#""\u003ca href=\"x\"\u003e\u0026\\\n\t\u0001\u2028é\b\f""#
        );
        // It parses back to the same string.
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "<a href=\"x\">&\\\n\t\u{1}\u{2028}é\u{8}\u{c}");
    }

    #[test]
    fn current_ollama_format_sends_role_once() {
        let mut w = ChunkWriter::new(StreamFormat::Ollama, "chatcmpl-7".into(), "m".into(), true);
        let mut out = String::new();
        w.content(&mut out, 1, "A");
        w.content(&mut out, 1, "B");
        w.finish(
            &mut out,
            1,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                total_tokens: 5,
            },
        );
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 5);
        assert!(events[0].contains("\"delta\":{\"role\":\"assistant\",\"content\":\"A\"}"));
        assert!(events[1].contains("\"delta\":{\"content\":\"B\"}"));
        assert!(events[2].contains("\"delta\":{},\"finish_reason\":\"stop\""));
        assert!(events[3].ends_with(
            "\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}"
        ));
        assert_eq!(events[4], "data: [DONE]");
    }

    #[test]
    fn every_format_parses_as_chat_chunks() {
        for format in [
            StreamFormat::OllamaLegacy,
            StreamFormat::Ollama,
            StreamFormat::Openai,
        ] {
            let mut w = ChunkWriter::new(format, "chatcmpl-1".into(), "m".into(), true);
            let mut out = String::new();
            w.content(&mut out, 1, "<x>");
            w.content(&mut out, 1, " y");
            w.finish(
                &mut out,
                1,
                Usage {
                    prompt_tokens: 1,
                    completion_tokens: 2,
                    total_tokens: 3,
                },
            );
            let mut contents = Vec::new();
            let mut usage = None;
            for ev in out.split("\n\n").filter(|e| !e.is_empty()) {
                let json = ev.strip_prefix("data: ").unwrap();
                if json == "[DONE]" {
                    continue;
                }
                let c: ChatChunk = serde_json::from_str(json).unwrap();
                if let Some(t) = c.content() {
                    contents.push(t.to_owned());
                }
                usage = usage.or(c.usage);
            }
            assert_eq!(contents, vec!["<x>", " y"], "{format}");
            assert_eq!(usage.unwrap().total_tokens, 3, "{format}");
        }
    }

    #[test]
    fn request_parsing() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.2}"#,
        )
        .unwrap();
        assert_eq!(r.last_user_content(), Some("hi"));
        assert!(r.stream_options.unwrap().include_usage);
        let r: ChatRequest = serde_json::from_str(r#"{"model":"m"}"#).unwrap();
        assert!(r.messages.is_none());
    }

    #[test]
    fn error_body_shape() {
        let e = ErrorBody::new("invalid_request_error", "messages is required");
        assert_eq!(
            e.to_json(),
            r#"{"error":{"message":"messages is required","type":"invalid_request_error","param":null,"code":null}}"#
        );
    }
}
