//! Two runs compared: each metric per profile and approach, with its unit, the change,
//! and whether it moved past a threshold in the worse direction (a regression gate for
//! CI). Either side may be repeated runs (runs.json): then each value is the median over
//! the runs, and a Mann–Whitney U test over the two sets of runs says whether the
//! change is more than noise. Pure.

use crate::metrics::repeat::Series;
use crate::metrics::{Run, metric};
use crate::stats;
use crate::topology::expect::unit;
use serde::Serialize;

/// The metrics compared by default.
pub const DEFAULT: [&str; 8] = [
    "ttft_p50",
    "ttft_p95",
    "tbt_avg",
    "total_avg",
    "tokens_avg",
    "bytes_per_token",
    "wire_bytes_per_token",
    "errors",
];

/// Whether a larger value is worse. Every compared metric is a cost except the tokens
/// per prompt, which should not move at all: a change either way counts.
fn larger_is_worse(metric: &str) -> Option<bool> {
    (metric != "tokens_avg").then_some(true)
}

/// The significance level of the comparison's test.
pub const ALPHA: f64 = 0.05;

/// One metric of one cell in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub profile: String,
    pub approach: String,
    pub metric: String,
    pub unit: &'static str,
    /// The value, or over repeated runs the median of the runs.
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// (b - a) / a, in percent; absent when either is absent, or a is 0 and b is not.
    pub change_percent: Option<f64>,
    /// The runs with a value on each side.
    pub runs_a: usize,
    pub runs_b: usize,
    /// The two-sided p-value of a Mann–Whitney U test that the two sets of runs
    /// differ; absent when the runs cannot reach [`ALPHA`] (it takes 4 runs against 4,
    /// 3 against 5 or 2 against 8): one run against one can never be told from noise.
    pub p_value: Option<f64>,
    /// p_value <= ALPHA: the change is more than noise; absent without a p-value.
    pub significant: Option<bool>,
    /// Past the threshold in the worse direction (a regression), and, where a test
    /// was possible, significant.
    pub regressed: bool,
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub name: String,
    pub started: String,
    pub cells: usize,
    /// How many runs it holds (1 for a plain run).
    pub runs: usize,
}

/// What a side of the comparison is: one run, or repeated runs.
pub enum Source<'a> {
    Run(&'a Run),
    Series(&'a Series),
}

impl Source<'_> {
    /// The cells, as approach@profile, in plan order.
    fn keys(&self) -> Vec<(String, String)> {
        match self {
            Source::Run(r) => r
                .cells
                .iter()
                .map(|c| (c.cell.name.clone(), c.cell.profile.clone()))
                .collect(),
            Source::Series(s) => s
                .cells
                .iter()
                .map(|c| (c.approach.clone(), c.profile.clone()))
                .collect(),
        }
    }

    /// The metric's value in each run that has one.
    fn values(&self, approach: &str, profile: &str, m: &str) -> Vec<f64> {
        match self {
            Source::Run(r) => metric(r, approach, profile, m).into_iter().collect(),
            Source::Series(s) => s
                .cell(approach, profile)
                .map(|c| c.values(m))
                .unwrap_or_default(),
        }
    }

    fn side(&self) -> Side {
        let (name, started, cells, runs) = match self {
            Source::Run(r) => (&r.name, r.started_unix, r.cells.len(), 1),
            Source::Series(s) => (&s.name, s.started_unix, s.cells.len(), s.runs.len()),
        };
        Side {
            name: name.clone(),
            started: humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(started),
            )
            .to_string(),
            cells,
            runs,
        }
    }
}

/// Two runs compared.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    /// The threshold, as a fraction (0.1 = 10%); absent: nothing is a regression.
    pub threshold: Option<f64>,
    pub rows: Vec<Row>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub regressions: usize,
}

/// Whether `b` moved from `a` past `threshold` in the worse direction of `metric`.
fn regressed(metric: &str, a: f64, b: f64, threshold: f64) -> bool {
    let limit = a.abs() * threshold;
    match larger_is_worse(metric) {
        Some(true) => b - a > limit,
        Some(false) => a - b > limit,
        None => (b - a).abs() > limit,
    }
}

/// Compares `metrics` (default: [`DEFAULT`]) of every cell the two runs share.
pub fn compare(
    a: &Source<'_>,
    b: &Source<'_>,
    metrics: &[String],
    threshold: Option<f64>,
) -> Comparison {
    let names: Vec<String> = if metrics.is_empty() {
        DEFAULT.iter().map(|s| (*s).to_owned()).collect()
    } else {
        metrics.to_vec()
    };
    let (ka, kb) = (a.keys(), b.keys());
    let mut rows = Vec::new();
    for (ap, p) in ka.iter().filter(|k| kb.contains(k)) {
        for m in &names {
            let (xa, xb) = (a.values(ap, p, m), b.values(ap, p, m));
            let (va, vb) = (stats::median(&xa), stats::median(&xb));
            let change_percent = match (va, vb) {
                (Some(x), Some(y)) if x != 0.0 => Some((y - x) / x * 100.0),
                (Some(x), Some(y)) if x == y => Some(0.0),
                _ => None,
            };
            // Two-sided: the smallest p-value is twice the one-sided one.
            let testable = 2.0 * stats::mann_whitney_min_p(xa.len(), xb.len()) <= ALPHA;
            let p_value = if testable {
                stats::differ(&xa, &xb)
            } else {
                None
            };
            let significant = p_value.map(|p| p <= ALPHA);
            rows.push(Row {
                profile: p.clone(),
                approach: ap.clone(),
                metric: m.clone(),
                unit: unit(m),
                a: va,
                b: vb,
                change_percent,
                runs_a: xa.len(),
                runs_b: xb.len(),
                p_value,
                significant,
                regressed: match (va, vb, threshold) {
                    (Some(x), Some(y), Some(t)) => {
                        regressed(m, x, y, t) && significant != Some(false)
                    }
                    _ => false,
                },
            });
        }
    }
    let only = |x: &[(String, String)], y: &[(String, String)]| -> Vec<String> {
        x.iter()
            .filter(|k| !y.contains(k))
            .map(|(ap, p)| format!("{ap}@{p}"))
            .collect()
    };
    let regressions = rows.iter().filter(|r| r.regressed).count();
    Comparison {
        a: a.side(),
        b: b.side(),
        threshold,
        only_in_a: only(&ka, &kb),
        only_in_b: only(&kb, &ka),
        regressions,
        rows,
    }
}

/// A value with its unit, times in ms or s as reads best.
pub fn human(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".into(),
        Some(v) if unit == "ms" && v.abs() >= 1000.0 => format!("{:.2} s", v / 1000.0),
        Some(v) if unit == "ms" => format!("{v:.1} ms"),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.2} {unit}"),
    }
}

impl Comparison {
    /// The comparison as a table for people.
    pub fn render(&self) -> String {
        let tested = self.a.runs > 1 || self.b.runs > 1;
        let mut b = tabled::builder::Builder::default();
        let mut head = vec!["profile", "approach", "metric", "a", "b", "change"];
        if tested {
            head.extend(["p", "significant"]);
        }
        b.push_record(head);
        for r in &self.rows {
            let mut line = vec![
                r.profile.clone(),
                r.approach.clone(),
                r.metric.clone(),
                human(r.a, r.unit),
                human(r.b, r.unit),
                match r.change_percent {
                    Some(c) => format!("{c:+.1}%{}", if r.regressed { " WORSE" } else { "" }),
                    None => "-".into(),
                },
            ];
            if tested {
                line.push(r.p_value.map_or("-".into(), |p| format!("{p:.3}")));
                line.push(match r.significant {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => format!("- ({} vs {} runs)", r.runs_a, r.runs_b),
                });
            }
            b.push_record(line);
        }
        let runs = |s: &Side| {
            if s.runs > 1 {
                format!(", {} runs: medians", s.runs)
            } else {
                String::new()
            }
        };
        let mut out = format!(
            "a: {} ({} cells, started {}{})\nb: {} ({} cells, started {}{})\n\n",
            self.a.name,
            self.a.cells,
            self.a.started,
            runs(&self.a),
            self.b.name,
            self.b.cells,
            self.b.started,
            runs(&self.b)
        );
        out.push_str(&crate::table::grid(b));
        out.push('\n');
        if tested {
            let tests = self.rows.iter().filter(|r| r.p_value.is_some()).count();
            let hits = self
                .rows
                .iter()
                .filter(|r| r.significant == Some(true))
                .count();
            out.push_str(&format!(
                "\np: two-sided Mann-Whitney U over the two sets of runs; significant when p <= {ALPHA} (the change is more than the runs' own spread). A p-value that small takes 4 runs against 4 (or 3 against 5, 2 against 8).\n\n{hits} of {tests} tested changes are significant. Were nothing different between a and b, about {:.1} of {tests} would be by chance alone ({ALPHA} each): read one significant change among many with that in mind, and run again to confirm it.\n",
                tests as f64 * ALPHA
            ));
        }
        for (which, v) in [("a", &self.only_in_a), ("b", &self.only_in_b)] {
            if !v.is_empty() {
                out.push_str(&format!("\nonly in {which}: {}\n", v.join(", ")));
            }
        }
        if let Some(t) = self.threshold {
            out.push_str(&format!(
                "\n{} of {} values moved more than {:.1}% the worse way (b against a){}\n",
                self.regressions,
                self.rows.len(),
                t * 100.0,
                if tested {
                    ", and significantly where the runs allow a test"
                } else {
                    ""
                }
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regressions_are_moves_the_worse_way_past_the_threshold() {
        assert!(regressed("ttft_p50", 100.0, 111.0, 0.1));
        assert!(!regressed("ttft_p50", 100.0, 109.0, 0.1));
        assert!(!regressed("ttft_p50", 100.0, 50.0, 0.1));
        assert!(regressed("tokens_avg", 100.0, 80.0, 0.1));
        assert!(regressed("errors", 0.0, 1.0, 0.1));
        assert!(!regressed("errors", 0.0, 0.0, 0.1));
    }

    #[test]
    fn values_read_with_units() {
        assert_eq!(human(Some(1459.0), "ms"), "1.46 s");
        assert_eq!(human(Some(35.25), "ms"), "35.2 ms");
        assert_eq!(human(Some(144.63), "B/token"), "144.63 B/token");
        assert_eq!(human(Some(0.0), "prompts"), "0 prompts");
        assert_eq!(human(None, "ms"), "-");
    }
}
