//! Per-prompt records and their summary. Pure code.
//!
//! A [`Recorder`] timestamps each token as the client decodes it; [`PromptRecord`] is what
//! one prompt produced (JSON lines for machines); [`Summary`] aggregates records of one
//! approach the way the reference benchmark's table does, plus percentiles.

pub use crate::tallies::{DatagramCounts, RelayCounts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a client uses connections.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A new TCP+TLS connection, or QUIC+WebTransport session, for every prompt.
    Fresh,
    /// One persistent connection for all prompts.
    #[default]
    Reuse,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fresh" => Ok(Self::Fresh),
            "reuse" => Ok(Self::Reuse),
            o => Err(format!(
                "unknown connection mode '{o}'; valid: fresh, reuse"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fresh => "fresh",
            Self::Reuse => "reuse",
        })
    }
}

/// What went wrong with a prompt, by where it broke.
#[derive(
    schemars::JsonSchema,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ErrorCategory {
    /// The server could not be reached: TCP connect refused or timed out, no answer to
    /// a QUIC Initial.
    Connect,
    /// The server answered, but the TLS or QUIC handshake, or the HTTP, WebSocket or
    /// WebTransport set-up on top of it, failed.
    Handshake,
    /// The request could not be sent on an established connection.
    Send,
    /// The response broke off or was malformed.
    Receive,
    /// The prompt took longer than the client's timeout.
    Timeout,
    /// The server turned the request away: an HTTP 4xx, 429 or 503, a refused
    /// WebTransport session or QUIC connection.
    Rejected,
    /// The server reported that its upstream LLM failed.
    Upstream,
}

impl ErrorCategory {
    /// Every category, in the order reports list them.
    pub const ALL: [ErrorCategory; 7] = [
        Self::Connect,
        Self::Handshake,
        Self::Send,
        Self::Receive,
        Self::Timeout,
        Self::Rejected,
        Self::Upstream,
    ];

    /// Whether the failure came before the server took the request, so that a client
    /// should back off before it tries again.
    pub fn before_request(self) -> bool {
        matches!(self, Self::Connect | Self::Handshake | Self::Rejected)
    }
}

impl std::fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Handshake => "handshake",
            Self::Send => "send",
            Self::Receive => "receive",
            Self::Timeout => "timeout",
            Self::Rejected => "rejected",
            Self::Upstream => "upstream",
        })
    }
}

/// A prompt's failure.
#[derive(
    schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error,
)]
#[error("{category}: {message}")]
pub struct PromptError {
    pub category: ErrorCategory,
    pub message: String,
}

impl PromptError {
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
        }
    }
}

/// Everything one prompt produced. Times are milliseconds from the request start (the
/// moment the client began, including connection set-up in `fresh` mode).
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRecord {
    pub approach: String,
    pub mode: Mode,
    pub index: usize,
    pub prompt: String,
    /// Wall-clock request start, Unix milliseconds.
    pub start_unix_ms: f64,
    /// Connection set-up (TCP+TLS, or QUIC+WebTransport) in this prompt; `None` when an
    /// existing connection was reused.
    pub connect_ms: Option<f64>,
    /// Whether an existing connection carried this prompt.
    pub reused: bool,
    /// Time to the first content token.
    pub ttft_ms: Option<f64>,
    /// Arrival time of every token.
    pub token_ms: Vec<f64>,
    pub tbt_mean_ms: Option<f64>,
    pub tbt_p50_ms: Option<f64>,
    pub tbt_p95_ms: Option<f64>,
    pub tbt_p99_ms: Option<f64>,
    pub total_ms: f64,
    pub tokens: usize,
    /// The tokens' own bytes (UTF-8), as decoded: what a capture's anatomy calls payload.
    #[serde(default)]
    pub token_bytes: u64,
    /// Application bytes received: the response body after TLS and HTTP chunking, or the
    /// WebTransport stream's bytes.
    pub app_bytes: u64,
    /// SHA-256 over the tokens, each as `<len>:<token>`; equal token sequences give equal
    /// digests whatever the transport.
    pub digest: String,
    pub error: Option<PromptError>,
    /// Which connection carried it: connections are numbered from 0 in the order the
    /// client set them up. With prompts in flight at once, this and `slot` say whose
    /// stall a slow answer was.
    #[serde(default)]
    pub conn: u32,
    /// Which of the client's concurrent slots ran it (0 without concurrency).
    #[serde(default)]
    pub slot: u32,
    /// The transport stream that carried it, where the client library names one (the
    /// QUIC stream id of a WebTransport prompt).
    #[serde(default)]
    pub stream: Option<u64>,
    /// Raw QUIC in `fresh` mode: whether the prompt went out as 0-RTT data and the
    /// server accepted it (`false`: no session to resume, or refused); absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_rtt: Option<bool>,
    /// Marked urgent by the workload (`--urgent`): the approaches with stream
    /// priorities ask the server to send its answer first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
    /// Tokens in datagrams (`wt-dgram`): what the server sent, what arrived, what was
    /// lost and what came out of order; absent elsewhere. `tokens` counts the delivered
    /// ones, and the digest is over them in sequence order, so it equals the other
    /// approaches' only when nothing was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagrams: Option<DatagramCounts>,
    /// Tokens relayed through a broker (`fanout`): what the API server published, what
    /// the client got, what was lost while its WebSocket was down, and its reconnects;
    /// absent elsewhere. The digest is over the delivered tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayCounts>,
    /// The upstream's count of the answer's tokens (`usage.completion_tokens`), where
    /// the client asked for it and the upstream gave it. `tokens` counts the content
    /// chunks that arrived: a chunk that carries several tokens is one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_tokens: Option<u64>,
    /// Time to the first byte of the answer (the HTTP response head), from the same
    /// start as `ttft_ms`; the HTTP approaches only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    /// Latencies the server measured about itself and sent in a response header
    /// (a [`crate::ServerTiming`]), in milliseconds, each under its own field name: the
    /// handoff server's `handoff_ms`, its front's `sendmsg` of the socket to the
    /// streaming daemon's receipt of it. Empty, and absent from the JSON, elsewhere.
    #[serde(flatten, deserialize_with = "numbers_only")]
    pub server_ms: std::collections::BTreeMap<String, f64>,
}

/// The fields a record has beyond its own, kept as server timings where they are
/// numbers: a field another version of lab wrote (a flag, a text) is passed over, as
/// serde passes over unknown fields, rather than failing the whole run.json.
fn numbers_only<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, f64>, D::Error> {
    let all = std::collections::BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    Ok(all
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_f64()?)))
        .collect())
}

impl PromptRecord {
    /// Whether the record holds the whole answer: true except for a datagram answer
    /// with tokens lost. Only whole answers' digests are compared.
    pub fn whole(&self) -> bool {
        self.datagrams.is_none_or(|d| d.complete()) && self.relay.is_none_or(|r| r.lost == 0)
    }
}

/// Collects one prompt's events as they happen.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    start_unix_ms: f64,
    connect: Option<Duration>,
    reused: bool,
    times: Vec<Duration>,
    hasher: Sha256,
    bytes: u64,
    token_bytes: u64,
    conn: u32,
    stream: Option<u64>,
    zero_rtt: Option<bool>,
    /// Datagram tokens by sequence number, and their counts.
    datagrams: Option<(std::collections::BTreeMap<u64, String>, DatagramCounts)>,
    relay: Option<RelayCounts>,
    first_byte: Option<Duration>,
    server: std::collections::BTreeMap<String, f64>,
    usage: Option<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::start()
    }
}

impl Recorder {
    /// Starts the clock.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            start_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            connect: None,
            reused: false,
            times: Vec::new(),
            hasher: Sha256::new(),
            bytes: 0,
            token_bytes: 0,
            conn: 0,
            stream: None,
            zero_rtt: None,
            datagrams: None,
            relay: None,
            first_byte: None,
            server: Default::default(),
            usage: None,
        }
    }

    /// The upstream counted the answer's tokens: `n`.
    pub fn usage(&mut self, n: u64) {
        self.usage = Some(n);
    }

    /// The answer's first byte (its response head) arrived now.
    pub fn first_byte(&mut self) {
        self.first_byte.get_or_insert(self.start.elapsed());
    }

    /// The server says that what `key` names took `took`.
    pub fn server_timing(&mut self, key: &str, took: Duration) {
        self.server
            .insert(key.to_owned(), took.as_secs_f64() * 1000.0);
    }

    /// The server says that what `key` names took `ms` milliseconds.
    pub fn server_timing_ms(&mut self, key: &str, ms: f64) {
        self.server.insert(key.to_owned(), ms);
    }

    /// The answer's tokens relayed through a broker.
    pub fn relay(&mut self, counts: RelayCounts) {
        self.relay = Some(counts);
    }

    /// A token arrived now in a datagram with sequence number `seq`. Its digest waits
    /// for the answer's end, in sequence order. `false` if that number came before.
    pub fn datagram_token(&mut self, seq: u64, tok: &str) -> bool {
        let (toks, counts) = self.datagrams.get_or_insert_default();
        if toks.contains_key(&seq) {
            return false;
        }
        if toks.last_key_value().is_some_and(|(&high, _)| high > seq) {
            counts.reordered += 1;
        }
        counts.delivered += 1;
        toks.insert(seq, tok.to_owned());
        self.times.push(self.start.elapsed());
        self.token_bytes += tok.len() as u64;
        true
    }

    /// As [`Self::datagram_token`], for a token that arrived at `at` after the start
    /// (the browser client's, timed in its page).
    pub fn datagram_token_at(&mut self, seq: u64, tok: &str, at: Duration) -> bool {
        let fresh = self.datagram_token(seq, tok);
        if fresh && let Some(t) = self.times.last_mut() {
            *t = at;
        }
        fresh
    }

    /// The server's tally of an answer in datagrams: what it sent.
    pub fn datagram_tally(&mut self, sent: u64, sent_bytes: u64) {
        let (_, counts) = self.datagrams.get_or_insert_default();
        counts.sent = sent;
        counts.sent_bytes = sent_bytes;
    }

    /// Datagram tokens delivered so far.
    pub fn datagrams_delivered(&self) -> u64 {
        self.datagrams.as_ref().map_or(0, |(_, c)| c.delivered)
    }

    /// Whether the prompt went out as 0-RTT data that the server accepted.
    pub fn zero_rtt(&mut self, accepted: bool) {
        self.zero_rtt = Some(accepted);
    }

    /// The prompt went on connection number `n`.
    pub fn conn(&mut self, n: u32) {
        self.conn = n;
    }

    /// The prompt went on the transport stream `id`.
    pub fn stream(&mut self, id: u64) {
        self.stream = Some(id);
    }

    pub fn connected(&mut self, took: Duration) {
        self.connect = Some(took);
    }

    pub fn reused(&mut self) {
        self.reused = true;
    }

    /// Whether an existing connection carries the prompt.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    pub fn bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// A content token arrived now.
    pub fn token(&mut self, tok: &str) {
        self.token_at(tok, self.start.elapsed());
    }

    /// A content token arrived at `at` after the start (for tests and replays).
    pub fn token_at(&mut self, tok: &str, at: Duration) {
        self.times.push(at);
        self.token_bytes += tok.len() as u64;
        digest_token(&mut self.hasher, tok);
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Closes the record.
    pub fn finish(
        self,
        approach: &str,
        mode: Mode,
        index: usize,
        prompt: &str,
        error: Option<PromptError>,
    ) -> PromptRecord {
        let total = self.start.elapsed();
        self.finish_at(approach, mode, index, prompt, error, total)
    }

    pub fn finish_at(
        self,
        approach: &str,
        mode: Mode,
        index: usize,
        prompt: &str,
        error: Option<PromptError>,
        total: Duration,
    ) -> PromptRecord {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut hasher = self.hasher;
        let datagrams = self.datagrams.map(|(toks, mut counts)| {
            for t in toks.values() {
                digest_token(&mut hasher, t);
            }
            counts.lost = counts.sent.saturating_sub(counts.delivered);
            counts
        });
        let token_ms: Vec<f64> = self.times.iter().copied().map(ms).collect();
        let mut gaps: Vec<f64> = token_ms.windows(2).map(|w| w[1] - w[0]).collect();
        let tbt_mean_ms = (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64);
        gaps.sort_by(f64::total_cmp);
        PromptRecord {
            approach: approach.to_owned(),
            mode,
            index,
            prompt: prompt.to_owned(),
            start_unix_ms: self.start_unix_ms,
            connect_ms: self.connect.map(ms),
            reused: self.reused,
            ttft_ms: token_ms.first().copied(),
            tbt_mean_ms,
            tbt_p50_ms: percentile(&gaps, 50.0),
            tbt_p95_ms: percentile(&gaps, 95.0),
            tbt_p99_ms: percentile(&gaps, 99.0),
            total_ms: ms(total),
            tokens: token_ms.len(),
            token_bytes: self.token_bytes,
            token_ms,
            app_bytes: self.bytes,
            digest: hex::encode(hasher.finalize()),
            error,
            conn: self.conn,
            slot: 0,
            stream: self.stream,
            zero_rtt: self.zero_rtt,
            urgent: false,
            datagrams,
            relay: self.relay,
            usage_tokens: self.usage,
            ttfb_ms: self.first_byte.map(ms),
            server_ms: self.server,
        }
    }
}

/// Adds one token to a digest as `<len>:<token>`, so token boundaries count.
pub fn digest_token(h: &mut Sha256, tok: &str) {
    h.update(tok.len().to_string().as_bytes());
    h.update(b":");
    h.update(tok.as_bytes());
}

/// The digest of a whole token sequence.
pub fn digest_tokens<S: AsRef<str>>(tokens: &[S]) -> String {
    let mut h = Sha256::new();
    for t in tokens {
        digest_token(&mut h, t.as_ref());
    }
    hex::encode(h.finalize())
}

/// Nearest-rank percentile of sorted values (the reference's definition).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// The summary of one approach's records: the reference's columns plus percentiles.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub approach: String,
    pub prompts: usize,
    pub errors: usize,
    pub avg_bytes: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    /// Total inter-token time over all gaps, as the reference averaged it.
    pub avg_tbt_ms: Option<f64>,
    pub avg_total_ms: f64,
    pub avg_tokens: f64,
    pub avg_bytes_per_token: Option<f64>,
    /// Mean set-up time over prompts that set up a connection.
    pub avg_connect_ms: Option<f64>,
    /// Prompts that set up a new connection.
    pub connections: usize,
}

impl Summary {
    /// Summarises the successful records of one approach; failed ones are counted apart.
    pub fn of(approach: &str, records: &[PromptRecord]) -> Self {
        let ok: Vec<&PromptRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let n = ok.len();
        let nf = n.max(1) as f64;
        let mut ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
        ttfts.sort_by(f64::total_cmp);
        let tokens: usize = ok.iter().map(|r| r.tokens).sum();
        let bytes: u64 = ok.iter().map(|r| r.app_bytes).sum();
        let gap_sum: f64 = ok
            .iter()
            .filter(|r| r.tokens > 1)
            .map(|r| r.token_ms[r.tokens - 1] - r.token_ms[0])
            .sum();
        let gaps: usize = ok.iter().map(|r| r.tokens.saturating_sub(1)).sum();
        let connects: Vec<f64> = records.iter().filter_map(|r| r.connect_ms).collect();
        Self {
            approach: approach.to_owned(),
            prompts: records.len(),
            errors: records.len() - n,
            avg_bytes: bytes as f64 / nf,
            ttft_p50_ms: percentile(&ttfts, 50.0),
            ttft_p95_ms: percentile(&ttfts, 95.0),
            ttft_p99_ms: percentile(&ttfts, 99.0),
            avg_tbt_ms: (gaps > 0).then(|| gap_sum / gaps as f64),
            avg_total_ms: ok.iter().map(|r| r.total_ms).sum::<f64>() / nf,
            avg_tokens: tokens as f64 / nf,
            avg_bytes_per_token: (tokens > 0).then(|| bytes as f64 / tokens as f64),
            avg_connect_ms: (!connects.is_empty())
                .then(|| connects.iter().sum::<f64>() / connects.len() as f64),
            connections: connects.len(),
        }
    }
}

/// One line per prompt, in the reference's style.
pub fn prompt_line(r: &PromptRecord) -> String {
    let short: String = r.prompt.chars().take(40).collect();
    match &r.error {
        Some(e) => format!("  [{}] {}... ERROR {}", r.index + 1, short, e),
        None => format!(
            "  [{}] {}... {} tokens, TTFT {}, avg TBT {}, {} total, {} bytes, {:.1} B/tok{}{}",
            r.index + 1,
            short,
            r.tokens,
            fmt_ms(r.ttft_ms),
            fmt_ms(r.tbt_mean_ms),
            fmt_ms(Some(r.total_ms)),
            r.app_bytes,
            if r.tokens > 0 {
                r.app_bytes as f64 / r.tokens as f64
            } else {
                0.0
            },
            r.connect_ms
                .map_or(String::new(), |c| format!(", connect {c:.1}ms")),
            match r.zero_rtt {
                Some(true) => ", 0-RTT accepted",
                Some(false) => ", no 0-RTT",
                None => "",
            },
        ),
    }
}

/// Milliseconds with a unit, or `-`.
pub fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(ms) if ms >= 10_000.0 => format!("{:.2}s", ms / 1000.0),
        Some(ms) if ms >= 100.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{ms:.1}ms"),
    }
}

/// The summary table (tabled), one row per approach.
pub fn summary_table(rows: &[Summary]) -> String {
    use tabled::settings::Style;
    #[derive(tabled::Tabled)]
    struct Row {
        #[tabled(rename = "Approach")]
        approach: String,
        #[tabled(rename = "Avg Bytes")]
        avg_bytes: String,
        #[tabled(rename = "P50 TTFT")]
        p50: String,
        #[tabled(rename = "P95 TTFT")]
        p95: String,
        #[tabled(rename = "P99 TTFT")]
        p99: String,
        #[tabled(rename = "Avg TBT")]
        tbt: String,
        #[tabled(rename = "Avg Total")]
        total: String,
        #[tabled(rename = "Avg Tokens")]
        tokens: String,
        #[tabled(rename = "Avg B/tok")]
        bpt: String,
        #[tabled(rename = "Setup")]
        setup: String,
        #[tabled(rename = "Conns")]
        conns: String,
        #[tabled(rename = "Errors")]
        errors: String,
    }
    let rows: Vec<Row> = rows
        .iter()
        .map(|s| Row {
            approach: s.approach.clone(),
            avg_bytes: format!("{:.0}", s.avg_bytes),
            p50: fmt_ms(s.ttft_p50_ms),
            p95: fmt_ms(s.ttft_p95_ms),
            p99: fmt_ms(s.ttft_p99_ms),
            tbt: fmt_ms(s.avg_tbt_ms),
            total: fmt_ms(Some(s.avg_total_ms)),
            tokens: format!("{:.1}", s.avg_tokens),
            bpt: s
                .avg_bytes_per_token
                .map_or("-".into(), |b| format!("{b:.1}")),
            setup: fmt_ms(s.avg_connect_ms),
            conns: s.connections.to_string(),
            errors: format!("{}/{}", s.errors, s.prompts),
        })
        .collect();
    tabled::Table::new(rows).with(Style::markdown()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(times_ms: &[u64], bytes: u64) -> PromptRecord {
        let mut r = Recorder::start();
        r.bytes(bytes as usize);
        for (i, t) in times_ms.iter().enumerate() {
            r.token_at(&format!("t{i}"), Duration::from_millis(*t));
        }
        r.finish_at(
            "x",
            Mode::Reuse,
            0,
            "p",
            None,
            Duration::from_millis(times_ms.last().copied().unwrap_or(0) + 5),
        )
    }

    /// A server's timing goes out under its own name and comes back; a field of
    /// another version that is not a number is passed over, not an error.
    #[test]
    fn server_timings_round_trip_and_unknown_fields_are_passed_over() {
        let mut r = Recorder::start();
        r.server_timing("handoff_ms", Duration::from_micros(250));
        let r = r.finish("x", Mode::Reuse, 0, "p", None);
        let mut v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["handoff_ms"], 0.25);
        let back: PromptRecord = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back.server_ms, r.server_ms);
        v["some_flag"] = serde_json::json!(true);
        v["some_text"] = serde_json::json!("x");
        let back: PromptRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back.server_ms.keys().collect::<Vec<_>>(), ["handoff_ms"]);
        // A record without timings writes none.
        let plain = serde_json::to_value(rec(&[1, 2], 10)).unwrap();
        assert!(plain.get("handoff_ms").is_none());
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&v, 95.0), Some(10.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn record_derives_ttft_and_tbt() {
        let r = rec(&[250, 285, 320, 400], 1000);
        assert_eq!(r.ttft_ms, Some(250.0));
        assert_eq!(r.tokens, 4);
        assert!((r.tbt_mean_ms.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(r.tbt_p50_ms, Some(35.0));
        assert_eq!(r.tbt_p99_ms, Some(80.0));
        assert_eq!(r.total_ms, 405.0);
        assert_eq!(r.digest, digest_tokens(&["t0", "t1", "t2", "t3"]));
    }

    #[test]
    fn digest_respects_token_boundaries() {
        assert_ne!(digest_tokens(&["ab", "c"]), digest_tokens(&["a", "bc"]));
        assert_eq!(digest_tokens(&["a"]), digest_tokens(&["a".to_string()]));
    }

    #[test]
    fn summary_matches_the_reference_arithmetic() {
        let a = rec(&[100, 110, 120], 300); // 2 gaps of 10
        let b = rec(&[200, 240], 200); // 1 gap of 40
        let mut failed = rec(&[], 0);
        failed.error = Some(PromptError::new(ErrorCategory::Timeout, "slow"));
        let s = Summary::of("x", &[a, b, failed]);
        assert_eq!(s.prompts, 3);
        assert_eq!(s.errors, 1);
        assert_eq!(s.avg_bytes, 250.0);
        assert_eq!(s.avg_tokens, 2.5);
        assert_eq!(s.avg_bytes_per_token, Some(100.0));
        assert_eq!(s.ttft_p50_ms, Some(100.0));
        assert_eq!(s.ttft_p95_ms, Some(200.0));
        // (10 + 10 + 40) / 3 gaps
        assert!((s.avg_tbt_ms.unwrap() - 20.0).abs() < 1e-9);
        let table = summary_table(&[s]);
        assert!(table.contains("| Approach"));
        assert!(table.contains("| x "));
    }

    #[test]
    fn lines_and_units() {
        assert_eq!(fmt_ms(Some(12.34)), "12.3ms");
        assert_eq!(fmt_ms(Some(250.4)), "250ms");
        assert_eq!(fmt_ms(Some(12_345.0)), "12.35s");
        let l = prompt_line(&rec(&[250, 285], 460));
        assert!(l.contains("2 tokens, TTFT 250ms, avg TBT 35.0ms"), "{l}");
        assert!(l.contains("230.0 B/tok"), "{l}");
    }
}
