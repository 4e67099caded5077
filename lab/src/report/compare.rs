//! Two runs compared: each metric per profile and approach, with its unit, the change,
//! and whether it moved past a threshold in the worse direction (a regression gate for
//! CI). Pure.

use crate::metrics::{Run, metric};
use crate::topology::expect::unit;
use serde::Serialize;
use tabled::settings::Style;

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

/// One metric of one cell in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub profile: String,
    pub approach: String,
    pub metric: String,
    pub unit: &'static str,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// (b - a) / a, in percent; absent when either is absent, or a is 0 and b is not.
    pub change_percent: Option<f64>,
    /// Past the threshold in the worse direction (a regression).
    pub regressed: bool,
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub name: String,
    pub started: String,
    pub cells: usize,
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

fn side(r: &Run) -> Side {
    Side {
        name: r.name.clone(),
        started: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.started_unix),
        )
        .to_string(),
        cells: r.cells.len(),
    }
}

fn key(c: &crate::metrics::CellResult) -> String {
    format!("{}@{}", c.cell.name, c.cell.profile)
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
pub fn compare(a: &Run, b: &Run, metrics: &[String], threshold: Option<f64>) -> Comparison {
    let names: Vec<String> = if metrics.is_empty() {
        DEFAULT.iter().map(|s| (*s).to_owned()).collect()
    } else {
        metrics.to_vec()
    };
    let mut rows = Vec::new();
    for c in &a.cells {
        let (ap, p) = (&c.cell.name, &c.cell.profile);
        if !b.cells.iter().any(|x| key(x) == key(c)) {
            continue;
        }
        for m in &names {
            let (va, vb) = (metric(a, ap, p, m), metric(b, ap, p, m));
            let change_percent = match (va, vb) {
                (Some(x), Some(y)) if x != 0.0 => Some((y - x) / x * 100.0),
                (Some(x), Some(y)) if x == y => Some(0.0),
                _ => None,
            };
            rows.push(Row {
                profile: p.clone(),
                approach: ap.clone(),
                metric: m.clone(),
                unit: unit(m),
                a: va,
                b: vb,
                change_percent,
                regressed: match (va, vb, threshold) {
                    (Some(x), Some(y), Some(t)) => regressed(m, x, y, t),
                    _ => false,
                },
            });
        }
    }
    let only = |x: &Run, y: &Run| -> Vec<String> {
        x.cells
            .iter()
            .filter(|c| !y.cells.iter().any(|o| key(o) == key(c)))
            .map(key)
            .collect()
    };
    let regressions = rows.iter().filter(|r| r.regressed).count();
    Comparison {
        a: side(a),
        b: side(b),
        threshold,
        only_in_a: only(a, b),
        only_in_b: only(b, a),
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
        #[derive(tabled::Tabled)]
        struct Line {
            profile: String,
            approach: String,
            metric: String,
            a: String,
            b: String,
            change: String,
        }
        let lines: Vec<Line> = self
            .rows
            .iter()
            .map(|r| Line {
                profile: r.profile.clone(),
                approach: r.approach.clone(),
                metric: r.metric.clone(),
                a: human(r.a, r.unit),
                b: human(r.b, r.unit),
                change: match r.change_percent {
                    Some(c) => format!("{c:+.1}%{}", if r.regressed { " WORSE" } else { "" }),
                    None => "-".into(),
                },
            })
            .collect();
        let mut out = format!(
            "a: {} ({} cells, started {})\nb: {} ({} cells, started {})\n\n",
            self.a.name, self.a.cells, self.a.started, self.b.name, self.b.cells, self.b.started
        );
        out.push_str(
            &tabled::Table::new(lines)
                .with(Style::markdown())
                .to_string(),
        );
        out.push('\n');
        for (which, v) in [("a", &self.only_in_a), ("b", &self.only_in_b)] {
            if !v.is_empty() {
                out.push_str(&format!("\nonly in {which}: {}\n", v.join(", ")));
            }
        }
        if let Some(t) = self.threshold {
            out.push_str(&format!(
                "\n{} of {} values moved more than {:.1}% the worse way (b against a)\n",
                self.regressions,
                self.rows.len(),
                t * 100.0
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
