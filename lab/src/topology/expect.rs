//! Expectations: the `expect:` list of a topology, checked at the end of `lab run`.
//! Pure: parsed and evaluated against a metrics lookup.
//!
//! An expectation compares two operands: `<approach>[@<profile>].<metric>` or a
//! constant, e.g. `wt.wire_bytes_per_token < sse.wire_bytes_per_token` or
//! `sse@degraded.ttft_p50 < 1.5s`. An operand without `@profile` stands for every
//! profile in turn: the expectation must hold in each.
//!
//! Over repeated runs (`workload.runs`) an expectation compares the medians of the runs,
//! or, ending in `with 95% confidence` (any level from 50% to 99.9%), asks whether the
//! difference is more than noise: Mann–Whitney U over the two cells' runs, or the sign
//! test against a constant ([`crate::stats`]). Such an expectation needs
//! enough runs for its test to reach the level ([`min_runs`]).

use serde::{Deserialize, Serialize};

#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Milliseconds.
    Time,
    Count,
}

/// The metrics an expectation can name, with their kind and meaning.
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("ttft_p50", Kind::Time, "median time to first token"),
    (
        "ttft_p95",
        Kind::Time,
        "95th percentile time to first token",
    ),
    (
        "ttft_p99",
        Kind::Time,
        "99th percentile time to first token",
    ),
    ("tbt_avg", Kind::Time, "mean time between tokens"),
    ("total_avg", Kind::Time, "mean time per prompt"),
    ("setup", Kind::Time, "mean connection set-up time"),
    ("tokens_avg", Kind::Count, "mean tokens per prompt"),
    (
        "bytes_per_token",
        Kind::Count,
        "application bytes per token",
    ),
    (
        "wire_bytes_per_token",
        Kind::Count,
        "bytes on the wire (both directions, L2) per token",
    ),
    (
        "wire_bytes",
        Kind::Count,
        "bytes on the wire, both directions, L2",
    ),
    (
        "packets",
        Kind::Count,
        "frames on the wire, both directions",
    ),
    ("errors", Kind::Count, "prompts that failed"),
    (
        "l3_bytes_per_token",
        Kind::Count,
        "bytes on the wire (both directions, from the IP header on) per token",
    ),
    (
        "ack_packets_per_token",
        Kind::Count,
        "pure ACK packets (both directions) per token, from the capture's anatomy",
    ),
    (
        "data_packets_per_token",
        Kind::Count,
        "packets carrying data (both directions) per token, from the capture's anatomy",
    ),
    (
        "gap_p99",
        Kind::Time,
        "99th percentile gap between consecutive tokens of an answer, over all answers",
    ),
    ("gap_max", Kind::Time, "the longest gap between tokens"),
    (
        "stalled_per_answer",
        Kind::Time,
        "time per answer that tokens spent in stalls (gaps over 3x the median), beyond the median gap",
    ),
    (
        "streams_per_stall",
        Kind::Count,
        "streams of one connection stalled at once, on average over stalls (head-of-line blocking)",
    ),
    (
        "delivered_pct",
        Kind::Count,
        "tokens delivered in datagrams, as a percentage of those sent (wt-dgram only)",
    ),
    (
        "success_pct",
        Kind::Count,
        "load test: streams completed, as a percentage of those started, at the worst level",
    ),
    (
        "failed",
        Kind::Count,
        "load test: streams failed, all levels",
    ),
    (
        "wrong_streams",
        Kind::Count,
        "load test: completed streams whose tokens differ from the mock's answer",
    ),
    (
        "connect_p50",
        Kind::Time,
        "load test: median connect time at the highest level",
    ),
    (
        "tbt_p50",
        Kind::Time,
        "load test: median gap between tokens at the highest level",
    ),
    (
        "tbt_p95",
        Kind::Time,
        "load test: 95th percentile gap between tokens at the highest level",
    ),
    (
        "tbt_p99",
        Kind::Time,
        "load test: 99th percentile gap between tokens at the highest level",
    ),
    (
        "tokens_per_s",
        Kind::Count,
        "load test: tokens per second delivered in the hold of the highest level",
    ),
    (
        "rss_mib",
        Kind::Count,
        "load test: the server's mean RSS over the highest level's hold",
    ),
    (
        "kb_per_stream",
        Kind::Count,
        "load test: the server's RSS over idle per open stream at the highest level",
    ),
    (
        "cpu_pct",
        Kind::Count,
        "load test: the server's CPU (user + system, % of one CPU) over the highest level's hold",
    ),
    (
        "packets_per_token",
        Kind::Count,
        "load test: frames on the wire (both directions) per token at the highest level",
    ),
    (
        "max_rate_at_slo",
        Kind::Count,
        "open-loop load test: the highest rate (requests/s) whose level met the SLOs",
    ),
    (
        "good_pct",
        Kind::Count,
        "load test with SLOs: good requests, as a percentage of those judged, at the worst level",
    ),
    (
        "lag_p99",
        Kind::Time,
        "open-loop load test: the schedule lag's 99th percentile at its worst level",
    ),
    (
        "invalid_levels",
        Kind::Count,
        "open-loop load test: levels marked not valid (behind schedule, dropped arrivals, client CPU)",
    ),
];

/// The unit a metric's values are in (times in milliseconds).
pub fn unit(metric: &str) -> &'static str {
    match metric {
        m if kind_of(m) == Some(Kind::Time) => "ms",
        "tokens_avg" => "tokens",
        "wire_bytes" => "B",
        "packets" => "packets",
        "errors" => "prompts",
        "streams_per_stall" => "streams",
        "delivered_pct" | "success_pct" | "cpu_pct" => "%",
        "failed" | "wrong_streams" => "streams",
        "tokens_per_s" => "tokens/s",
        "max_rate_at_slo" => "requests/s",
        "good_pct" => "%",
        "invalid_levels" => "levels",
        "rss_mib" => "MiB",
        "kb_per_stream" => "KB",
        m if m.ends_with("bytes_per_token") => "B/token",
        m if m.ends_with("packets_per_token") => "packets/token",
        _ => "",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Metric {
        approach: String,
        profile: Option<String>,
        metric: String,
    },
    Const(f64, Kind),
}

#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    pub text: String,
    pub lhs: Operand,
    pub op: Op,
    pub rhs: Operand,
    /// `with 95% confidence`: the level (0.95), decided by a rank test over the runs.
    pub confidence: Option<f64>,
}

/// Why `e` cannot be decided over `runs` runs, if it cannot: its test needs more.
pub fn too_few_runs(e: &Expect, runs: u32) -> Option<String> {
    let need = min_runs(e);
    (runs < need).then(|| {
        format!(
            "its test needs at least {need} runs to reach {}% (runs: {runs}); set workload.runs: {need} or more, or use `lab run --runs {need}`",
            e.confidence.unwrap_or(0.0) * 100.0
        )
    })
}

/// Splits `... with 95% confidence` into the comparison and the level.
fn confidence_suffix(text: &str) -> Result<(&str, Option<f64>), String> {
    let t = text.trim_end();
    let Some(head) = t.strip_suffix("confidence") else {
        return Ok((text, None));
    };
    let (cmp, level) = head
        .trim_end()
        .rsplit_once(" with ")
        .ok_or("write the level as `... with 95% confidence`")?;
    let pct = level
        .trim()
        .strip_suffix('%')
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| {
            format!(
                "'{}' is not a level; write e.g. `with 95% confidence`",
                level.trim()
            )
        })?;
    if !(50.0..=99.9).contains(&pct) {
        return Err(format!(
            "a confidence of {pct}% is out of range; use 50% to 99.9%, e.g. 95%"
        ));
    }
    Ok((cmp, Some(pct / 100.0)))
}

/// The fewest runs with which `e`'s test can reach its confidence level (1 for an
/// expectation without one): Mann–Whitney between two cells' runs, n each, can give a
/// one-sided p-value no smaller than 1 / C(2n, n); the sign test against a constant
/// none smaller than 1 / 2^n.
pub fn min_runs(e: &Expect) -> u32 {
    let Some(level) = e.confidence else {
        return 1;
    };
    let alpha = 1.0 - level;
    let constant = matches!(e.lhs, Operand::Const(..)) || matches!(e.rhs, Operand::Const(..));
    (1..=200)
        .find(|&n| {
            let p = if constant {
                crate::stats::sign_test_min_p(n as usize)
            } else {
                crate::stats::mann_whitney_min_p(n as usize, n as usize)
            };
            p <= alpha + 1e-12
        })
        .unwrap_or(200)
}

fn kind_of(metric: &str) -> Option<Kind> {
    METRICS.iter().find(|m| m.0 == metric).map(|m| m.1)
}

fn operand(s: &str, approaches: &[String], profiles: &[String]) -> Result<Operand, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an operand is missing".into());
    }
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let v: f64 = s[..end]
            .parse()
            .map_err(|_| format!("'{s}' is not a number"))?;
        return match &s[end..] {
            "" => Ok(Operand::Const(v, Kind::Count)),
            "us" => Ok(Operand::Const(v / 1000.0, Kind::Time)),
            "ms" => Ok(Operand::Const(v, Kind::Time)),
            "s" => Ok(Operand::Const(v * 1000.0, Kind::Time)),
            u => Err(format!(
                "unknown unit '{u}' in '{s}'; use us, ms or s, or none for counts"
            )),
        };
    }
    let (subject, metric) = s
        .rsplit_once('.')
        .ok_or_else(|| format!("'{s}' is neither a number nor <approach>[@<profile>].<metric>"))?;
    let (approach, profile) = match subject.split_once('@') {
        Some((a, p)) => (a, Some(p)),
        None => (subject, None),
    };
    if !approaches.iter().any(|a| a == approach) {
        return Err(format!(
            "'{approach}' is not an approach of this topology ({})",
            approaches.join(", ")
        ));
    }
    if let Some(p) = profile
        && !profiles.iter().any(|x| x == p)
    {
        return Err(format!(
            "'{p}' is not a profile of this topology ({})",
            profiles.join(", ")
        ));
    }
    if kind_of(metric).is_none() {
        let names: Vec<&str> = METRICS.iter().map(|m| m.0).collect();
        return Err(format!(
            "unknown metric '{metric}'; valid: {}",
            names.join(", ")
        ));
    }
    Ok(Operand::Metric {
        approach: approach.to_owned(),
        profile: profile.map(str::to_owned),
        metric: metric.to_owned(),
    })
}

fn kind(o: &Operand) -> Kind {
    match o {
        Operand::Const(_, k) => *k,
        Operand::Metric { metric, .. } => kind_of(metric).unwrap_or(Kind::Count),
    }
}

/// Parses one expectation against the topology's approaches and profiles.
pub fn parse(whole: &str, approaches: &[String], profiles: &[String]) -> Result<Expect, String> {
    let (text, confidence) = confidence_suffix(whole)?;
    let ops = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];
    let (at, sym, op) = ops
        .iter()
        .filter_map(|(sym, op)| text.find(sym).map(|i| (i, *sym, *op)))
        .min_by_key(|(i, sym, _)| (*i, std::cmp::Reverse(sym.len())))
        .ok_or_else(|| {
            "no comparison; write e.g. wt.wire_bytes_per_token < sse.wire_bytes_per_token"
                .to_owned()
        })?;
    let lhs = operand(&text[..at], approaches, profiles)?;
    let rhs = operand(&text[at + sym.len()..], approaches, profiles)?;
    if kind(&lhs) != kind(&rhs) {
        return Err(match (&lhs, &rhs) {
            (_, Operand::Const(v, Kind::Count)) | (Operand::Const(v, Kind::Count), _) => {
                format!("{v} needs a time unit to compare with a time, e.g. {v}ms or {v}s")
            }
            _ => "compares a time with a count".into(),
        });
    }
    if matches!((&lhs, &rhs), (Operand::Const(..), Operand::Const(..))) {
        return Err("compares two constants; name a metric".into());
    }
    if confidence.is_some() && matches!(op, Op::Eq | Op::Ne) {
        return Err(
            "a confidence goes with <, <=, > or >= (which side is smaller); == and != have none"
                .into(),
        );
    }
    Ok(Expect {
        text: whole.to_owned(),
        lhs,
        op,
        rhs,
        confidence,
    })
}

/// The result of one expectation under one profile.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub expect: String,
    pub profile: String,
    /// The values compared: over repeated runs, the medians of the runs.
    pub lhs: Option<f64>,
    pub rhs: Option<f64>,
    pub holds: bool,
    /// With a confidence: the one-sided p-value of the comparison over the runs
    /// (Mann–Whitney U, or the sign test against a constant); it holds when at most
    /// one minus the level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// How many runs each side had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<usize>,
}

/// Evaluates `e` under each profile it covers, on one run. `metric(approach, profile,
/// name)` gives a metric's value, or None if the run has no value (a cell with no
/// answers): such an expectation does not hold.
pub fn evaluate(
    e: &Expect,
    profiles: &[String],
    metric: &dyn Fn(&str, &str, &str) -> Option<f64>,
) -> Vec<Outcome> {
    evaluate_runs(e, profiles, &|a, p, m| {
        metric(a, p, m).into_iter().collect()
    })
}

/// Evaluates `e` under each profile it covers, over repeated runs: `values(approach,
/// profile, name)` gives the metric's value in each run that has one. Without a
/// confidence the medians are compared; with one, the rank test decides
/// ([`crate::stats`]): `a < b` holds when the one-sided p-value of "a's runs
/// tend to be smaller than b's" is at most one minus the level.
pub fn evaluate_runs(
    e: &Expect,
    profiles: &[String],
    values: &dyn Fn(&str, &str, &str) -> Vec<f64>,
) -> Vec<Outcome> {
    use crate::stats;
    let fixed = |o: &Operand| match o {
        Operand::Metric { profile, .. } => profile.clone(),
        Operand::Const(..) => None,
    };
    let covered: Vec<String> = match (fixed(&e.lhs), fixed(&e.rhs)) {
        (Some(p), _) | (None, Some(p))
            if matches!(e.lhs, Operand::Const(..))
                || matches!(e.rhs, Operand::Const(..))
                || (fixed(&e.lhs).is_some() && fixed(&e.rhs).is_some()) =>
        {
            vec![p]
        }
        _ => profiles.to_vec(),
    };
    covered
        .into_iter()
        .map(|p| {
            let runs = |o: &Operand| match o {
                Operand::Const(v, _) => vec![*v],
                Operand::Metric {
                    approach,
                    profile,
                    metric: m,
                } => values(approach, profile.as_deref().unwrap_or(&p), m),
            };
            let (l, r) = (runs(&e.lhs), runs(&e.rhs));
            let (lhs, rhs) = (stats::median(&l), stats::median(&r));
            let (holds, p_value) = match e.confidence {
                None => (
                    matches!((lhs, rhs), (Some(a), Some(b)) if e.op.holds(a, b)),
                    None,
                ),
                Some(level) => {
                    // "smaller" is lhs < rhs for < and <=, rhs < lhs for > and >=.
                    let (small, large, small_const, large_const) = match e.op {
                        Op::Gt | Op::Ge => (&r, &l, &e.rhs, &e.lhs),
                        _ => (&l, &r, &e.lhs, &e.rhs),
                    };
                    let p = match (small_const, large_const) {
                        (_, Operand::Const(c, _)) => stats::below(small, *c),
                        (Operand::Const(c, _), _) => {
                            let negated: Vec<f64> = large.iter().map(|v| -v).collect();
                            stats::below(&negated, -c)
                        }
                        _ => stats::less(small, large),
                    };
                    (p.is_some_and(|p| p <= 1.0 - level + 1e-12), p)
                }
            };
            let n = |o: &Operand, v: &[f64]| match o {
                Operand::Const(..) => None,
                Operand::Metric { .. } => Some(v.len()),
            };
            Outcome {
                expect: e.text.clone(),
                profile: p,
                lhs,
                rhs,
                holds,
                p_value,
                runs: n(&e.lhs, &l).or(n(&e.rhs, &r)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_metrics_constants_and_units() {
        let (a, p) = (names(&["raw", "sse", "wt"]), names(&["base", "degraded"]));
        let e = parse("wt.wire_bytes_per_token < sse.wire_bytes_per_token", &a, &p).unwrap();
        assert_eq!(e.op, Op::Lt);
        let e = parse("sse@degraded.ttft_p50 <= 1.5s", &a, &p).unwrap();
        assert_eq!(e.rhs, Operand::Const(1500.0, Kind::Time));
        assert_eq!(
            e.lhs,
            Operand::Metric {
                approach: "sse".into(),
                profile: Some("degraded".into()),
                metric: "ttft_p50".into()
            }
        );
        assert_eq!(parse("wt.errors == 0", &a, &p).unwrap().op, Op::Eq);
        assert_eq!(
            parse("raw.ttft_p99>=250us", &a, &p).unwrap().rhs,
            Operand::Const(0.25, Kind::Time)
        );
    }

    #[test]
    fn bad_expectations_say_what_is_wrong() {
        let (a, p) = (names(&["sse", "wt"]), names(&["base"]));
        let err = |s: &str| parse(s, &a, &p).unwrap_err();
        assert!(err("wt.ttft_p50").contains("no comparison"));
        assert!(
            err("raw.ttft_p50 < 1s")
                .contains("'raw' is not an approach of this topology (sse, wt)")
        );
        assert!(err("wt@bad.ttft_p50 < 1s").contains("'bad' is not a profile"));
        assert!(err("wt.latency < 1s").contains("unknown metric 'latency'; valid: ttft_p50"));
        assert!(err("wt.ttft_p50 < 1.5").contains("1.5 needs a time unit"));
        assert!(err("wt.ttft_p50 < 1.5h").contains("unknown unit 'h'"));
        assert!(err("wt.packets < sse.ttft_p50").contains("compares a time with a count"));
        assert!(err("1 < 2").contains("compares two constants"));
    }

    #[test]
    fn evaluates_per_profile() {
        let (a, p) = (names(&["sse", "wt"]), names(&["base", "bad"]));
        let m = |ap: &str, pr: &str, _: &str| -> Option<f64> {
            Some(match (ap, pr) {
                ("wt", "base") => 7.0,
                ("sse", "base") => 13.0,
                ("wt", "bad") => 20.0,
                ("sse", "bad") => 14.0,
                _ => return None,
            })
        };
        let e = parse("wt.wire_bytes_per_token < sse.wire_bytes_per_token", &a, &p).unwrap();
        let o = evaluate(&e, &p, &m);
        assert_eq!(o.len(), 2);
        assert!(o[0].holds && o[0].profile == "base");
        assert!(!o[1].holds && o[1].lhs == Some(20.0));
        let e = parse("sse@bad.packets < 15", &a, &p).unwrap();
        let o = evaluate(&e, &p, &m);
        assert_eq!(
            (o.len(), o[0].holds, o[0].profile.as_str()),
            (1, true, "bad")
        );
        // A missing value never holds.
        let none = |_: &str, _: &str, _: &str| None;
        assert!(!evaluate(&e, &p, &none)[0].holds);
    }

    #[test]
    fn confidence_is_parsed_checked_and_decided_by_rank_tests() {
        let (a, p) = (names(&["sse", "wt"]), names(&["base"]));
        let e = parse("wt.ttft_p50 < sse.ttft_p50 with 95% confidence", &a, &p).unwrap();
        assert_eq!(e.confidence, Some(0.95));
        assert_eq!(e.op, Op::Lt);
        // Mann-Whitney reaches 5% with three runs each (1/20), the sign test with five.
        assert_eq!(min_runs(&e), 3);
        let c = parse("wt.ttft_p50 < 2s with 95% confidence", &a, &p).unwrap();
        assert_eq!(min_runs(&c), 5);
        assert_eq!(min_runs(&parse("wt.ttft_p50 < 2s", &a, &p).unwrap()), 1);
        let err = |s: &str| parse(s, &a, &p).unwrap_err();
        assert!(err("wt.errors == 0 with 95% confidence").contains("goes with <"));
        assert!(err("wt.ttft_p50 < 1s with 100% confidence").contains("out of range"));
        assert!(
            err("wt.ttft_p50 < 1s with lots of confidence").contains("'lots of' is not a level")
        );
        assert!(err("wt.ttft_p50 < 1s confidence").contains("with 95% confidence"));

        let apart = |ap: &str, _: &str, _: &str| -> Vec<f64> {
            match ap {
                "wt" => vec![10.0, 11.0, 12.0, 13.0, 14.0],
                _ => vec![20.0, 21.0, 22.0, 23.0, 24.0],
            }
        };
        let o = evaluate_runs(&e, &p, &apart);
        assert!(o[0].holds);
        assert!((o[0].p_value.unwrap() - 1.0 / 252.0).abs() < 1e-9);
        assert_eq!(
            (o[0].lhs, o[0].rhs, o[0].runs),
            (Some(12.0), Some(22.0), Some(5))
        );
        // The other way round it does not hold, and > turns the test around.
        let r = parse("sse.ttft_p50 < wt.ttft_p50 with 95% confidence", &a, &p).unwrap();
        assert!(!evaluate_runs(&r, &p, &apart)[0].holds);
        let g = parse("sse.ttft_p50 > wt.ttft_p50 with 95% confidence", &a, &p).unwrap();
        assert!(evaluate_runs(&g, &p, &apart)[0].holds);
        // Overlapping runs: the medians differ, the test says it may be noise.
        let mixed = |ap: &str, _: &str, _: &str| -> Vec<f64> {
            match ap {
                "wt" => vec![10.0, 15.0, 12.0, 25.0, 14.0],
                _ => vec![20.0, 11.0, 22.0, 13.0, 24.0],
            }
        };
        let o = evaluate_runs(&e, &p, &mixed)[0].clone();
        assert!(!o.holds && o.lhs < o.rhs, "{o:?}");
        let plain = parse("wt.ttft_p50 < sse.ttft_p50", &a, &p).unwrap();
        assert!(evaluate_runs(&plain, &p, &mixed)[0].holds);
        // Against a constant: the sign test, on either side.
        assert!(evaluate_runs(&c, &p, &apart)[0].holds);
        let k = parse("2s > wt.ttft_p50 with 95% confidence", &a, &p).unwrap();
        let o = evaluate_runs(&k, &p, &|_, _, _| vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(o[0].holds && (o[0].p_value.unwrap() - 1.0 / 32.0).abs() < 1e-9);
        let o = evaluate_runs(&c, &p, &|_, _, _| vec![1.0, 2.0, 3.0, 4.0, 2500.0]);
        assert!(!o[0].holds);
    }
}
