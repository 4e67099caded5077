//! An open-loop load test as people who know the serving benchmarks read it: per rate,
//! how well the client kept its schedule, the serving metrics (TTFT, ITL, TPOT, E2E at
//! p50 to p99.9), throughput, and goodput under the SLOs; then why a level is not
//! valid, and each approach's highest rate at the SLOs. Definitions: docs/metrics.md.
//! Pure.

use super::load::{errors, ms};
use lab_clients::load::LevelSummary;

#[derive(tabled::Tabled)]
struct Row {
    #[tabled(rename = "Rate")]
    rate: String,
    #[tabled(rename = "Approach")]
    approach: String,
    #[tabled(rename = "Sent")]
    sent: u64,
    #[tabled(rename = "Errors")]
    errors: String,
    #[tabled(rename = "Lag p50/p99/max")]
    lag: String,
    #[tabled(rename = "Late/dropped")]
    late: String,
    #[tabled(rename = "Valid")]
    valid: String,
    #[tabled(rename = "TTFT p50/p90/p99/p99.9")]
    ttft: String,
    #[tabled(rename = "ITL p50/p99")]
    itl: String,
    #[tabled(rename = "TPOT p50/p99")]
    tpot: String,
    #[tabled(rename = "E2E p50/p99")]
    e2e: String,
    #[tabled(rename = "Req/s")]
    rps: String,
    #[tabled(rename = "Tok/s")]
    tps: String,
    #[tabled(rename = "Good")]
    good: String,
    #[tabled(rename = "Goodput/s")]
    goodput: String,
}

fn row(approach: &str, s: &LevelSummary) -> Option<Row> {
    let o = s.open.as_ref()?;
    let join = |v: &[Option<f64>]| v.iter().map(|x| ms(*x)).collect::<Vec<_>>().join(" / ");
    Some(Row {
        rate: s.label(),
        approach: approach.to_owned(),
        sent: o.sent,
        errors: errors(s),
        lag: join(&[o.lag_ms.p50, o.lag_ms.p99, o.lag_ms.max]),
        late: format!("{} / {}", o.late, o.dropped),
        valid: if o.valid { "yes".into() } else { "NO".into() },
        ttft: join(&[s.ttft_ms.p50, s.ttft_ms.p90, s.ttft_ms.p99, s.ttft_ms.p999]),
        itl: join(&[s.tbt_ms.p50, s.tbt_ms.p99]),
        tpot: join(&[s.tpot_ms.p50, s.tpot_ms.p99]),
        e2e: join(&[s.duration_ms.p50, s.duration_ms.p99]),
        rps: format!("{:.2}", s.requests_per_s),
        tps: format!("{:.0}", s.tokens_per_s),
        good: s.slo.map_or("-".into(), |v| {
            let why = match (v.met, o.valid) {
                (true, _) => "",
                (false, true) => " (miss)",
                (false, false) => " (not valid)",
            };
            format!("{:.1}%{why}", v.good_pct)
        }),
        goodput: s
            .slo
            .map_or("-".into(), |v| format!("{:.2}", v.goodput_per_s)),
    })
}

/// Whether any level of these is an open loop's.
pub fn any_open<'a>(mut levels: impl Iterator<Item = &'a LevelSummary>) -> bool {
    levels.any(|s| s.open.is_some())
}

/// The open-loop table, rows by rate (then the approaches' order), the reasons a level
/// is not valid, and each approach's max rate at the SLOs.
pub fn section(cells: &[(String, Vec<&LevelSummary>)]) -> String {
    let mut rows: Vec<(f64, usize, Row)> = Vec::new();
    for (i, (a, levels)) in cells.iter().enumerate() {
        for s in levels {
            let rate = s.open.as_ref().and_then(|o| o.rate).unwrap_or(0.0);
            rows.extend(row(a, s).map(|r| (rate, i, r)));
        }
    }
    rows.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let mut out = String::from(
        "Open loop: each request sent at its scheduled time whatever the server did, every latency from that time; the lag is how late the client really sent it (late: over the lag bound). ITL pools every gap between chunks (a token each unless the upstream batches); TPOT is per request, (E2E - TTFT) / (output tokens - 1); Req/s and Tok/s are over the measured window (warm-up and cool-down left out); Good is the share of requests that met every SLO:\n\n",
    );
    out.push_str(&crate::table::markdown(
        rows.into_iter().map(|r| r.2).collect::<Vec<_>>(),
    ));
    out.push_str("\n\n");
    for (a, levels) in cells {
        for s in levels {
            let Some(o) = &s.open else { continue };
            for why in &o.invalid {
                out.push_str(&format!("- {a} at {}: not valid: {why}\n", s.label()));
            }
        }
        let owned: Vec<LevelSummary> = levels.iter().map(|s| (*s).clone()).collect();
        if owned.iter().any(|s| s.slo.is_some()) {
            let line = match lab_clients::load::open::max_rate_at_slo(&owned) {
                Some(r) => format!(
                    "- {a}: max rate at SLO {} req/s (the highest valid level whose good share reached the SLOs')\n",
                    lab_clients::load::fmt_rate(r)
                ),
                None => format!("- {a}: no rate met the SLOs\n"),
            };
            out.push_str(&line);
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_clients::load::{OpenLevel, Percentiles, SloResult};

    fn level(rate: f64, good_pct: f64, valid: bool) -> LevelSummary {
        let mut s: LevelSummary = serde_json::from_value(serde_json::json!({
            "level": 1, "ramp_start_unix_ms": 0.0, "hold_start_unix_ms": 0.0,
            "hold_end_unix_ms": 1000.0, "end_unix_ms": 1000.0, "started": 10,
            "completed": 10, "failed": 0, "errors": {}, "error_samples": {},
            "peak_open": 2, "connections": 1, "connect_ms": Percentiles::default(),
            "ttft_ms": Percentiles { count: 10, p50: Some(40.0), p999: Some(90.0), ..Default::default() },
            "tbt_ms": Percentiles::default(), "duration_ms": Percentiles::default(),
            "tokens": 100, "token_bytes": 400, "tokens_in_hold": 100, "tokens_per_s": 100.0,
            "digests": [],
        }))
        .unwrap();
        s.open = Some(OpenLevel {
            rate: Some(rate),
            process: "poisson".into(),
            sent: 10,
            valid,
            invalid: if valid {
                vec![]
            } else {
                vec!["the client fell behind".into()]
            },
            ..OpenLevel::default()
        });
        s.slo = Some(SloResult {
            judged: 10,
            good: (good_pct / 10.0) as u64,
            good_pct,
            goodput_per_s: good_pct / 10.0,
            met: valid && good_pct >= 90.0,
        });
        s
    }

    #[test]
    fn the_section_orders_rates_and_says_why_and_how_far() {
        let a = [
            level(10.0, 100.0, true),
            level(40.0, 50.0, true),
            level(25.0, 95.0, true),
        ];
        let b = [level(10.0, 100.0, false)];
        let cells = vec![
            ("sse".to_owned(), a.iter().collect()),
            ("wt".to_owned(), b.iter().collect()),
        ];
        let out = section(&cells);
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .collect();
        let first: Vec<String> = rows
            .iter()
            .map(|r| {
                r.split('|').nth(1).unwrap().trim().to_owned()
                    + " "
                    + r.split('|').nth(2).unwrap().trim()
            })
            .collect();
        assert_eq!(
            first,
            [
                "10 req/s sse",
                "10 req/s wt",
                "25 req/s sse",
                "40 req/s sse"
            ],
            "{out}"
        );
        assert!(out.contains("50.0% (miss)"), "{out}");
        assert!(out.contains("40.0ms / - / - / 90.0ms"), "{out}");
        assert!(out.contains("100.0% (not valid)"), "{out}");
        assert!(
            out.contains("- wt at 10 req/s: not valid: the client fell behind"),
            "{out}"
        );
        assert!(out.contains("- sse: max rate at SLO 25 req/s"), "{out}");
        assert!(out.contains("- wt: no rate met the SLOs"), "{out}");
    }
}
