//! The report of repeated runs (runs.json): per profile, each headline metric's median
//! over the runs with its confidence interval; every approach against the first, the
//! change of the medians with the p-value of a rank test, so a difference can be told
//! from noise; and the expectations decided over the runs. Pure.

use crate::metrics::repeat::Series;
use crate::stats;
use tabled::builder::Builder;

/// Significance level of the "against the first" table's marks.
const ALPHA: f64 = 0.05;

/// A column's title.
fn title(metric: &str) -> String {
    match metric {
        "ttft_p50" => "P50 TTFT (ms)".into(),
        "ttft_p95" => "P95 TTFT (ms)".into(),
        "tbt_avg" => "Avg TBT (ms)".into(),
        "total_avg" => "Avg Total (ms)".into(),
        "setup" => "Setup (ms)".into(),
        "wire_bytes_per_token" => "Wire B/tok".into(),
        "bytes_per_token" => "Avg B/tok".into(),
        "errors" => "Errors".into(),
        "success_pct" => "Success %".into(),
        "connect_p50" => "P50 connect (ms)".into(),
        "tbt_p50" => "P50 TBT (ms)".into(),
        "tokens_per_s" => "Tokens/s".into(),
        "rss_mib" => "RSS (MiB)".into(),
        "kb_per_stream" => "KB/stream".into(),
        m => m.to_owned(),
    }
}

/// A number with as many decimals as its size needs.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if (v.fract() == 0.0 && a < 1e12) || a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// What the intervals with `n` runs cover, in a sentence.
fn coverage_line(n: usize, level: f64) -> String {
    let dummy: Vec<f64> = (1..=n).map(|i| i as f64).collect();
    let widest = stats::median_interval(&dummy, level).map_or(0.0, |i| i.coverage);
    let need = (2..=100)
        .find(|&k| {
            let d: Vec<f64> = (1..=k).map(|i| i as f64).collect();
            stats::median_interval(&d, level).is_some_and(|i| i.coverage >= level)
        })
        .unwrap_or(100);
    if widest >= level {
        format!(
            "Each figure is the median over the runs, then the interval [lo, hi] from order statistics that covers the true median with probability at least {:.0}% (with {n} runs: {:.1}%), whatever the distribution.",
            level * 100.0,
            widest * 100.0
        )
    } else {
        format!(
            "Each figure is the median over the runs, then the interval [lo, hi] from order statistics: with {n} runs the widest, smallest to largest, which covers the true median with probability {:.1}%; {:.0}% takes {need} runs or more.",
            widest * 100.0,
            level * 100.0
        )
    }
}

/// The report of a series, as printed and saved in report.md.
pub fn render(s: &Series) -> String {
    let n = s.runs.len();
    let mut out = format!(
        "# lab run: {}, {} runs\n\n{n} runs in {:.1} s",
        s.name, n, s.seconds
    );
    if (n as u32) < s.asked {
        out.push_str(&format!(
            " (of {} asked: interrupted; the figures are over the runs that finished)",
            s.asked
        ));
    }
    out.push_str(&format!(
        "; shaping seeds {}; each run's own report and run.json are in {}.\n\n",
        s.runs
            .iter()
            .map(|r| r.seed.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        s.runs
            .iter()
            .map(|r| format!("{}/", r.dir))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for r in &s.runs {
        if !r.errors.is_empty() {
            out.push_str(&format!(
                "- {} had errors: {}\n",
                r.dir,
                r.errors.join("; ")
            ));
        }
    }
    let mut stacks: Vec<(&str, Vec<&str>)> = Vec::new();
    for c in &s.cells {
        let Some(st) = c.stack.as_deref() else {
            continue;
        };
        match stacks.iter_mut().find(|(x, _)| *x == st) {
            Some((_, names)) if !names.contains(&c.approach.as_str()) => names.push(&c.approach),
            Some(_) => {}
            None => stacks.push((st, vec![&c.approach])),
        }
    }
    if !stacks.is_empty() {
        for (st, names) in stacks {
            out.push_str(&format!("- stack ({}): {st}\n", names.join(", ")));
        }
        out.push('\n');
    }
    out.push_str(&coverage_line(n, s.level));
    out.push_str("\n\n");
    let head = s.headline();
    for p in s.profiles() {
        let cells: Vec<_> = s.cells.iter().filter(|c| c.profile == p).collect();
        let link = cells.first().map(|c| c.link.clone()).unwrap_or_default();
        out.push_str(&format!("## {p} ({link}), over {n} runs\n\n"));
        let mut b = Builder::default();
        let mut h = vec!["Approach".to_owned()];
        h.extend(head.iter().map(|m| title(m)));
        b.push_record(h);
        for c in &cells {
            let mut row = vec![c.approach.clone()];
            for m in head {
                row.push(match c.get(m) {
                    Some(ms) => match (ms.median, ms.interval) {
                        (Some(v), Some(i)) if n > 1 => {
                            format!("{} [{}, {}]", num(v), num(i.lo), num(i.hi))
                        }
                        (Some(v), _) => num(v),
                        _ => "-".into(),
                    },
                    None => "-".into(),
                });
            }
            b.push_record(row);
        }
        out.push_str(&crate::table::grid(b));
        out.push_str("\n\n");
        if cells.len() > 1 && n > 1 {
            out.push_str(&against_first(&cells, head));
        }
    }
    if !s.expectations.is_empty() {
        out.push_str("## Expectations (over the runs)\n\n");
        for o in &s.expectations {
            let v = |x: Option<f64>| x.map_or("no value".to_owned(), num);
            let test = match (o.p_value, o.runs) {
                (Some(p), Some(k)) => format!(", p = {p:.4} over {k} runs"),
                (None, Some(k)) if o.expect.trim_end().ends_with("confidence") => {
                    format!(", no test possible over {k} runs")
                }
                _ => String::new(),
            };
            out.push_str(&format!(
                "- {} `{}` under {}: medians {} vs {}{test}\n",
                if o.holds { "holds:" } else { "FAILS:" },
                o.expect,
                o.profile,
                v(o.lhs),
                v(o.rhs)
            ));
        }
        out.push('\n');
    }
    out
}

/// Each approach of a profile against the first: the change of each headline median,
/// and the two-sided p-value that the two sets of runs differ (Mann–Whitney U).
fn against_first(cells: &[&crate::metrics::repeat::CellStats], head: &[&str]) -> String {
    let first = cells[0];
    let mut b = Builder::default();
    let mut h = vec![format!("vs {}", first.approach)];
    h.extend(head.iter().map(|m| title(m)));
    b.push_record(h);
    for c in &cells[1..] {
        let mut row = vec![c.approach.clone()];
        for m in head {
            let (x, y) = (first.values(m), c.values(m));
            let (mx, my) = (stats::median(&x), stats::median(&y));
            let change = match (mx, my) {
                (Some(a), Some(b)) if a != 0.0 => format!("{:+.1}%", (b - a) / a * 100.0),
                (Some(a), Some(b)) if a == b => "0%".into(),
                (Some(a), Some(b)) => format!("{:+}", num(b - a)),
                _ => "-".into(),
            };
            row.push(match stats::differ(&x, &y) {
                Some(p) if change != "-" => {
                    format!("{change} (p {p:.3}){}", if p <= ALPHA { " *" } else { "" })
                }
                _ => change,
            });
        }
        b.push_record(row);
    }
    format!(
        "Against {}: the change of each median, and the two-sided p-value of a Mann–Whitney U test over the runs; * marks p <= {ALPHA} (a difference the runs show is more than noise). The smallest p-value n runs against n can give is 2 / C(2n, n): 0.1 for 3, 0.029 for 4, 0.008 for 5.\n\n{}\n\n",
        first.approach,
        crate::table::grid(b)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_is_said_as_it_is() {
        assert!(coverage_line(5, 0.95).contains("93.8%; 95% takes 6 runs"));
        assert!(coverage_line(6, 0.95).contains("at least 95% (with 6 runs: 96.9%)"));
        assert_eq!(num(704.25), "704.2");
        assert_eq!(num(7.0), "7");
        assert_eq!(num(2.5061), "2.51");
        assert_eq!(num(12345.6), "12346");
    }
}
