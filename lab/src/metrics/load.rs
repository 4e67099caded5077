//! A cell's load test in `run.json`: each level as the load generator reported it, what
//! the server used over the level's hold (sampled from /proc), the wire bytes and
//! packets per token over the level, and whether every stream got its answer exactly.
//! Pure: the samples and counters come from `launch::load`.

use lab_clients::load::LevelSummary;
use serde::{Deserialize, Serialize};

/// One resource sample of the server: the server process and its descendants.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_unix_ms: f64,
    pub processes: u32,
    pub rss_kib: u64,
    /// CPU seconds since the process started, user and system.
    pub user_s: f64,
    pub system_s: f64,
    pub threads: u64,
    pub fds: u64,
}

/// What the server used over one level's hold.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Samples taken in the hold.
    pub samples: usize,
    pub rss_kib_mean: f64,
    pub rss_kib_peak: u64,
    /// CPU over the hold, in percent of one CPU.
    pub user_pct: f64,
    pub system_pct: f64,
    pub threads_peak: u64,
    pub fds_peak: u64,
    /// (Mean RSS in the hold - RSS idle before the first level) / streams in flight at
    /// the level's peak, in KB (1024 bytes).
    pub kb_per_stream: Option<f64>,
}

impl Resources {
    /// The server's use over `[from, to]` (unix ms), against its idle `baseline` RSS,
    /// for `streams` in flight; `None` without two samples in the window.
    pub fn over(
        samples: &[Sample],
        from: f64,
        to: f64,
        baseline: Option<u64>,
        streams: u64,
    ) -> Option<Resources> {
        let w: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at_unix_ms >= from && s.at_unix_ms <= to)
            .collect();
        let (first, last) = (w.first()?, w.last()?);
        let secs = (last.at_unix_ms - first.at_unix_ms) / 1000.0;
        if w.len() < 2 || secs <= 0.0 {
            return None;
        }
        let mean = w.iter().map(|s| s.rss_kib as f64).sum::<f64>() / w.len() as f64;
        Some(Resources {
            samples: w.len(),
            rss_kib_mean: mean,
            rss_kib_peak: w.iter().map(|s| s.rss_kib).max().unwrap_or(0),
            user_pct: (last.user_s - first.user_s) / secs * 100.0,
            system_pct: (last.system_s - first.system_s) / secs * 100.0,
            threads_peak: w.iter().map(|s| s.threads).max().unwrap_or(0),
            fds_peak: w.iter().map(|s| s.fds).max().unwrap_or(0),
            kb_per_stream: baseline
                .filter(|_| streams > 0)
                .map(|b| (mean - b as f64) / streams as f64),
        })
    }
}

/// Bytes and packets at the client's interface over a level (the kernel's counters,
/// which every cell's capture is checked against).
#[derive(schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WireCount {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub packets_up: u64,
    pub packets_down: u64,
}

/// One level of a cell's load test.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    /// As the load generator reported it.
    pub summary: LevelSummary,
    /// The server over the hold.
    pub server: Option<Resources>,
    /// The load generator (all its processes) over the hold; its `kb_per_stream` is
    /// its whole mean RSS over the peak open streams (no idle RSS is taken off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Resources>,
    /// The client's interface from the level's start to its end.
    pub wire: Option<WireCount>,
    /// The host's own drops from the level's start to its end (both ends, the wire
    /// namespace, the machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<crate::capture::stack::CellStack>,
    /// Completed streams whose tokens differ from the mock's answer to their prompt
    /// (the embedded mock only): prompt number and why.
    pub wrong: Vec<String>,
    /// Completed streams checked against the mock's answer (0 with a real upstream,
    /// whose answers are not known).
    pub checked: u64,
    /// Of them, the streams whose tokens were wrong (lost or altered).
    #[serde(default)]
    pub wrong_streams: u64,
}

impl LevelResult {
    /// Wire bytes per token over the level (both directions).
    pub fn wire_bytes_per_token(&self) -> Option<f64> {
        let w = self.wire?;
        (self.summary.tokens > 0)
            .then(|| (w.bytes_up + w.bytes_down) as f64 / self.summary.tokens as f64)
    }

    /// Wire packets per token over the level (both directions).
    pub fn packets_per_token(&self) -> Option<f64> {
        let w = self.wire?;
        (self.summary.tokens > 0)
            .then(|| (w.packets_up + w.packets_down) as f64 / self.summary.tokens as f64)
    }
}

/// A cell's load test.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellLoad {
    pub levels: Vec<LevelResult>,
    /// The server's RSS, idle, before the first level (KiB).
    pub baseline_rss_kib: Option<u64>,
    /// Every resource sample of the server, over the whole test.
    pub samples: Vec<Sample>,
    /// Every resource sample of the load generator (its process tree), taken with the
    /// server's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_samples: Vec<Sample>,
    /// How often the server was sampled, in ms.
    pub sample_ms: u64,
}

/// The expectation metrics of a load test: those of its highest level (an open loop's
/// last), except `success_pct` and `good_pct` (the lowest over the levels), `lag_p99`
/// (the highest), `failed`, `wrong_streams` and `invalid_levels` (summed) and
/// `max_rate_at_slo` (over the levels).
pub fn metric(l: &CellLoad, name: &str) -> Option<f64> {
    let top = l.levels.iter().max_by_key(|x| x.summary.level)?;
    let s = &top.summary;
    let r = top.server.as_ref();
    match name {
        "success_pct" => l
            .levels
            .iter()
            .filter_map(|x| x.summary.success_pct())
            .reduce(f64::min),
        "failed" | "errors" => Some(l.levels.iter().map(|x| x.summary.failed).sum::<u64>() as f64),
        "wrong_streams" => Some(l.levels.iter().map(|x| x.wrong_streams).sum::<u64>() as f64),
        "connect_p50" => s.connect_ms.p50,
        "ttft_p50" => s.ttft_ms.p50,
        "ttft_p95" => s.ttft_ms.p95,
        "ttft_p99" => s.ttft_ms.p99,
        "tbt_p50" => s.tbt_ms.p50,
        "tbt_p95" => s.tbt_ms.p95,
        "tbt_p99" => s.tbt_ms.p99,
        "tokens_per_s" => Some(s.tokens_per_s),
        "rss_mib" => r.map(|r| r.rss_kib_mean / 1024.0),
        "kb_per_stream" => r.and_then(|r| r.kb_per_stream),
        "cpu_pct" => r.map(|r| r.user_pct + r.system_pct),
        "wire_bytes_per_token" => top.wire_bytes_per_token(),
        "packets_per_token" => top.packets_per_token(),
        "max_rate_at_slo" => {
            let all: Vec<_> = l.levels.iter().map(|x| x.summary.clone()).collect();
            lab_clients::load::open::max_rate_at_slo(&all)
        }
        "good_pct" => l
            .levels
            .iter()
            .filter_map(|x| Some(x.summary.slo?.good_pct))
            .reduce(f64::min),
        "lag_p99" => l
            .levels
            .iter()
            .filter_map(|x| x.summary.open.as_ref()?.lag_ms.p99)
            .reduce(f64::max),
        "invalid_levels" => Some(
            l.levels
                .iter()
                .filter(|x| x.summary.open.as_ref().is_some_and(|o| !o.valid))
                .count() as f64,
        ),
        _ => None,
    }
}

/// Checks each completed stream's tokens against `expected(prompt)`: the digest and
/// token count of the mock's answer. Returns (streams checked, streams wrong, what was
/// wrong).
pub fn check_digests(
    s: &LevelSummary,
    prompts: &[lab_clients::Prompt],
    expected: &dyn Fn(&lab_clients::Prompt) -> (String, usize),
) -> (u64, u64, Vec<String>) {
    let mut checked = 0;
    let mut bad = 0;
    let mut wrong = Vec::new();
    for d in &s.digests {
        checked += d.streams;
        let Some(p) = prompts.get(d.prompt) else {
            bad += d.streams;
            wrong.push(format!(
                "{} streams answered prompt {} of {}",
                d.streams,
                d.prompt + 1,
                prompts.len()
            ));
            continue;
        };
        let (digest, tokens) = expected(p);
        if d.digest != digest {
            bad += d.streams;
            wrong.push(format!(
                "prompt {}: {} streams got {} tokens (digest {}) where the mock sent {tokens} (digest {})",
                d.prompt + 1,
                d.streams,
                d.tokens,
                &d.digest[..12.min(d.digest.len())],
                &digest[..12.min(digest.len())]
            ));
        }
    }
    (checked, bad, wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, rss: u64, user: f64) -> Sample {
        Sample {
            at_unix_ms: t,
            processes: 1,
            rss_kib: rss,
            user_s: user,
            system_s: user / 2.0,
            threads: 3,
            fds: 10,
        }
    }

    #[test]
    fn resources_over_the_hold() {
        let s = [
            sample(0.0, 1000, 0.0),
            sample(1000.0, 11_000, 0.5),
            sample(2000.0, 13_000, 1.0),
            sample(3000.0, 99_000, 9.0),
        ];
        let r = Resources::over(&s, 900.0, 2100.0, Some(2000), 100).unwrap();
        assert_eq!(r.samples, 2);
        assert_eq!(r.rss_kib_mean, 12_000.0);
        assert_eq!(r.rss_kib_peak, 13_000);
        assert!((r.user_pct - 50.0).abs() < 1e-9);
        assert!((r.system_pct - 25.0).abs() < 1e-9);
        // 10,000 KiB over 100 streams: 100 KiB each.
        assert!((r.kb_per_stream.unwrap() - 100.0).abs() < 1e-9);
        assert!(Resources::over(&s, 900.0, 1100.0, Some(0), 1).is_none());
    }

    #[test]
    fn digests_are_checked_against_the_mock() {
        let mut s: LevelSummary = serde_json::from_value(serde_json::json!({
            "level": 2, "ramp_start_unix_ms": 0.0, "hold_start_unix_ms": 0.0,
            "hold_end_unix_ms": 0.0, "end_unix_ms": 0.0, "started": 3, "completed": 3,
            "failed": 0, "errors": {}, "error_samples": {}, "peak_open": 2,
            "connections": 2, "connect_ms": {"count": 0}, "ttft_ms": {"count": 0},
            "tbt_ms": {"count": 0}, "duration_ms": {"count": 0}, "tokens": 6,
            "token_bytes": 12, "tokens_in_hold": 0, "tokens_per_s": 0.0,
            "digests": [{"prompt": 0, "digest": "aa", "tokens": 2, "streams": 2},
                        {"prompt": 1, "digest": "bb", "tokens": 2, "streams": 1}]
        }))
        .unwrap();
        let prompts = vec![
            lab_clients::Prompt::new("one"),
            lab_clients::Prompt::new("two"),
        ];
        let exp = |p: &lab_clients::Prompt| {
            if p.text == "one" {
                ("aa".to_owned(), 2)
            } else {
                ("cc".to_owned(), 3)
            }
        };
        let (n, bad, wrong) = check_digests(&s, &prompts, &exp);
        assert_eq!((n, bad), (3, 1));
        assert_eq!(wrong.len(), 1, "{wrong:?}");
        assert!(
            wrong[0].starts_with("prompt 2: 1 streams got 2 tokens"),
            "{wrong:?}"
        );
        s.digests[1].digest = "cc".into();
        assert_eq!(check_digests(&s, &prompts, &exp).1, 0);
        assert!(check_digests(&s, &prompts, &exp).2.is_empty());
    }
}
