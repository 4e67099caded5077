//! Repeated runs of one topology (`workload.runs`, `lab run --runs N`): `runs.json`.
//! Each run is a whole run of its own (its run.json and report in `run-<i>/`); here
//! are every metric's values over the runs, their median with a confidence interval,
//! and the expectations decided over the runs. Pure.

use super::{Run, metric};
use crate::stats::{self, Interval};
use crate::topology::expect::{self, METRICS, Outcome, unit};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The version of the runs.json format.
pub const FORMAT: u32 = 1;

/// The confidence level of the intervals.
pub const LEVEL: f64 = 0.95;

/// The metrics the report of a prompt workload shows over runs, in its column order.
pub const HEADLINE: [&str; 8] = [
    "ttft_p50",
    "ttft_p95",
    "tbt_avg",
    "total_avg",
    "setup",
    "wire_bytes_per_token",
    "bytes_per_token",
    "errors",
];

/// The same for a load test.
pub const LOAD_HEADLINE: [&str; 7] = [
    "success_pct",
    "connect_p50",
    "ttft_p50",
    "tbt_p50",
    "tokens_per_s",
    "rss_mib",
    "kb_per_stream",
];

/// One run of the series.
#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct RunRef {
    /// Its directory, next to runs.json (`run-1`, ...), with its run.json and report.
    pub dir: String,
    /// Its shaping seed: the topology's plus the run's number less one.
    pub seed: u64,
    pub seconds: f64,
    /// Its run errors (failed prompts, token mismatches, captures that disagree).
    pub errors: Vec<String>,
    /// It was stopped by Ctrl-C or SIGTERM: what it measured is kept.
    #[serde(default)]
    pub interrupted: bool,
}

/// One metric of one cell over the runs.
#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct MetricStats {
    pub metric: String,
    pub unit: String,
    /// Its value in each run, in run order; null where that run had none.
    pub values: Vec<Option<f64>>,
    /// The median of the values there are.
    pub median: Option<f64>,
    /// The interval for the median from order statistics, with its coverage.
    pub interval: Option<Interval>,
}

/// One cell (approach under a profile) over the runs.
#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct CellStats {
    pub profile: String,
    pub approach: String,
    /// The cell's link, as the report's heading gives it.
    pub link: String,
    /// The library under a QUIC approach, as the registry names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    pub metrics: Vec<MetricStats>,
}

impl CellStats {
    pub fn get(&self, metric: &str) -> Option<&MetricStats> {
        self.metrics.iter().find(|m| m.metric == metric)
    }

    /// The values there are of `metric`, over the runs.
    pub fn values(&self, metric: &str) -> Vec<f64> {
        self.get(metric)
            .map(|m| m.values.iter().flatten().copied().collect())
            .unwrap_or_default()
    }
}

/// `runs.json`: a topology run several times.
#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    /// The version of this format ([`FORMAT`]).
    pub format: u32,
    pub name: String,
    pub topology: PathBuf,
    pub started_unix: u64,
    pub seconds: f64,
    /// The runs asked for; `runs` has fewer when the series was interrupted.
    pub asked: u32,
    /// The confidence level the intervals aim at.
    pub level: f64,
    /// Whether the whole load test was run (`workload.load`): which metrics lead.
    #[serde(default)]
    pub load: bool,
    pub runs: Vec<RunRef>,
    /// Every cell, in plan order, with every metric that has a value in some run.
    pub cells: Vec<CellStats>,
    /// The topology's expectations as written, and what became of them over the runs.
    pub expect: Vec<String>,
    pub expectations: Vec<Outcome>,
}

/// The JSON schema of runs.json, as published in lab/runs.schema.json.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Series);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

impl Series {
    /// The series of `runs` (each with its reference), in run order.
    pub fn of(asked: u32, seconds: f64, runs: &[(RunRef, &Run)]) -> Result<Series, String> {
        let first = runs.first().ok_or("no run finished")?.1;
        let mut cells: Vec<CellStats> = Vec::new();
        for c in &first.cells {
            let (approach, profile) = (&c.cell.name, &c.cell.profile);
            let metrics = METRICS
                .iter()
                .filter_map(|(m, _, _)| {
                    let values: Vec<Option<f64>> = runs
                        .iter()
                        .map(|(_, r)| metric(r, approach, profile, m))
                        .collect();
                    let there: Vec<f64> = values.iter().flatten().copied().collect();
                    (!there.is_empty()).then(|| MetricStats {
                        metric: (*m).to_owned(),
                        unit: unit(m).to_owned(),
                        median: stats::median(&there),
                        interval: stats::median_interval(&there, LEVEL),
                        values,
                    })
                })
                .collect();
            cells.push(CellStats {
                profile: profile.clone(),
                approach: approach.clone(),
                link: super::link_of(&c.cell),
                stack: c.cell.approach.stack.map(str::to_owned),
                metrics,
            });
        }
        let mut s = Series {
            format: FORMAT,
            name: first.name.clone(),
            topology: first.topology.clone(),
            started_unix: first.started_unix,
            seconds,
            asked,
            level: LEVEL,
            load: first.plan.workload.load.is_some(),
            runs: runs.iter().map(|(r, _)| r.clone()).collect(),
            cells,
            expect: first.expect.clone(),
            expectations: Vec::new(),
        };
        s.decide()?;
        Ok(s)
    }

    /// The profiles, in plan order.
    pub fn profiles(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for c in &self.cells {
            if !v.contains(&c.profile) {
                v.push(c.profile.clone());
            }
        }
        v
    }

    /// The approaches, in plan order.
    pub fn approaches(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for c in &self.cells {
            if !v.contains(&c.approach) {
                v.push(c.approach.clone());
            }
        }
        v
    }

    pub fn cell(&self, approach: &str, profile: &str) -> Option<&CellStats> {
        self.cells
            .iter()
            .find(|c| c.approach == approach && c.profile == profile)
    }

    /// The headline metrics, in the report's order.
    pub fn headline(&self) -> &'static [&'static str] {
        if self.load { &LOAD_HEADLINE } else { &HEADLINE }
    }

    /// Decides the expectations over the runs: medians compared, or a rank test for
    /// those with a confidence.
    fn decide(&mut self) -> Result<(), String> {
        let (approaches, profiles) = (self.approaches(), self.profiles());
        let mut out = Vec::new();
        for text in &self.expect {
            let e = expect::parse(text, &approaches, &profiles)
                .map_err(|e| format!("expectation `{text}`: {e}"))?;
            out.extend(expect::evaluate_runs(&e, &profiles, &|a, p, m| {
                self.cell(a, p).map(|c| c.values(m)).unwrap_or_default()
            }));
        }
        self.expectations = out;
        Ok(())
    }
}
