//! A run's results and what they add up to: the `run.json` model (every cell's records,
//! both ends' capture and kernel counters, the emulator's counters), the metrics that
//! expectations and tables name, the token digests compared across approaches, and what
//! counts as a run error. Pure.

use crate::anatomy::{self, Anatomy, KeyLog};
use crate::approach::Approach;
use crate::capture::{Counts, Frames, Kernel};
use crate::plan::{Cell, Plan};
use crate::topology::expect::Outcome;
use lab_clients::record::{PromptRecord, Summary};
use lab_clients::stats::ConnStats;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub mod datagrams;
pub mod load;
pub mod merge;
pub mod repeat;
pub mod stalls;
pub mod summary;

/// One end of a cell's link: what the capture counted and what the kernel counted.
#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct End {
    pub capture: Counts,
    pub kernel: Kernel,
    /// Differences between the two (empty when they agree exactly).
    pub differences: Vec<String>,
    /// What was set apart to make them agree (frames at the window's edge), if anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A cell's captures decoded: at the client's interface (what it sent is up) and at the
/// server's (what it sent is down).
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellAnatomy {
    pub client: Anatomy,
    pub server: Anatomy,
}

impl CellAnatomy {
    /// Decodes both ends' frames of `cell` with the client's key log.
    pub fn of(cell: &Cell, client: &Frames, server: &Frames, keys: &KeyLog) -> CellAnatomy {
        let wire = cell.approach.wire;
        let one = |f: &Frames, at_client: bool| {
            let mut a = anatomy::analyze(&f.frames(), at_client, cell.port, wire, keys);
            if f.dropped > 0 {
                a.notes.push(format!(
                    "{} frames were counted but not kept (over {} MiB): the anatomy covers the rest",
                    f.dropped,
                    crate::capture::socket::MAX_KEPT >> 20
                ));
            }
            a
        };
        CellAnatomy {
            client: one(client, true),
            server: one(server, false),
        }
    }
}

/// What one cell produced.
#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    pub cell: Cell,
    pub records: Vec<PromptRecord>,
    /// The client at the client's end of the link, the server at the other.
    pub client: Option<End>,
    pub server: Option<End>,
    /// The emulator's counters at the end (userspace backend; warm-up included).
    pub wire: Option<crate::shaping::stats::WireStats>,
    /// The host's own drops over the workload, at both ends, in the wire namespace
    /// and on the machine (the same window as the capture); absent when not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<crate::capture::stack::CellStack>,
    pub warmup_error: Option<String>,
    /// The warm-up's first try failed with this, and its second try did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_retried: Option<String>,
    /// Every captured byte by layer and every packet by class, at both ends.
    #[serde(default)]
    pub anatomy: Option<CellAnatomy>,
    /// The client's connections' own transport statistics (TCP_INFO, quinn's).
    #[serde(default)]
    pub connections: Vec<ConnStats>,
    /// The cell's load test (`workload.load`): its levels, and the server's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<load::CellLoad>,
    /// Errors of the cell itself (capture, a client that would not start or end).
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// Everything about a run: `run.json`.
#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// The version of this format ([`summary::FORMAT`]); 1 when absent.
    #[serde(default = "format_one")]
    pub format: u32,
    pub name: String,
    pub topology: PathBuf,
    pub started_unix: u64,
    pub seconds: f64,
    pub environment: serde_json::Value,
    pub plan: Plan,
    pub cells: Vec<CellResult>,
    pub expectations: Vec<Outcome>,
    pub digest_mismatches: Vec<String>,
    /// The topology's expectations as written: checked on this run, or, for a shard,
    /// on the merged run (`lab merge`).
    #[serde(default)]
    pub expect: Vec<String>,
    /// Which part of a sharded run this is (`lab run --shard`); absent for a whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::plan::Shard>,
    /// Each cell's figures as the tables show them.
    #[serde(default)]
    pub summaries: Vec<summary::CellSummary>,
    /// The user's nodes that exited before the run ended, each with its log's last
    /// lines: the run's figures may have lost what the node did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes_exited: Vec<String>,
    /// The faults the topology asked for (a node's `kill_after`), as carried out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
}

/// The JSON schema of run.json, as published in lab/run.schema.json.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Run);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

fn format_one() -> u32 {
    1
}

impl Run {
    /// Works out what follows from the cells: token mismatches, the expectations
    /// (not for a shard: its cells are not the whole run; not those with a confidence,
    /// which repeated runs decide), the cells' summaries, and
    /// the current format. Fails if an expectation no longer parses against the plan.
    pub fn conclude(&mut self) -> Result<(), String> {
        self.format = summary::FORMAT;
        self.digest_mismatches = digest_mismatches(self);
        self.expectations.clear();
        if self.shard.is_none() {
            let mut approaches: Vec<String> = Vec::new();
            let mut profiles: Vec<String> = Vec::new();
            for c in &self.plan.cells {
                if !approaches.contains(&c.name) {
                    approaches.push(c.name.clone());
                }
                if !profiles.contains(&c.profile) {
                    profiles.push(c.profile.clone());
                }
            }
            let mut outcomes = Vec::new();
            for text in &self.expect {
                let e = crate::topology::expect::parse(text, &approaches, &profiles)
                    .map_err(|e| format!("expectation `{text}`: {e}"))?;
                // A confidence is decided over repeated runs (runs.json), not on one.
                if e.confidence.is_some() {
                    continue;
                }
                outcomes.extend(crate::topology::expect::evaluate(
                    &e,
                    &profiles,
                    &|ap, pr, m| metric(self, ap, pr, m),
                ));
            }
            self.expectations = outcomes;
        }
        self.summaries = summary::of_run(self);
        Ok(())
    }
}

impl CellResult {
    /// A cell with nothing measured yet.
    pub fn empty(cell: &Cell) -> CellResult {
        CellResult {
            cell: cell.clone(),
            records: Vec::new(),
            client: None,
            server: None,
            wire: None,
            stack: None,
            warmup_error: None,
            warmup_retried: None,
            anatomy: None,
            connections: Vec::new(),
            load: None,
            errors: Vec::new(),
            seconds: 0.0,
        }
    }
}

/// A cell's link, both directions in one phrase when they are alike.
pub fn link_of(cell: &Cell) -> String {
    let (u, d) = (cell.up.describe(), cell.down.describe());
    if u == d {
        u
    } else {
        format!("up: {u}; down: {d}")
    }
}

/// The cells of one profile, in plan order.
pub fn cells_of<'a>(run: &'a Run, profile: &str) -> Vec<&'a CellResult> {
    run.cells
        .iter()
        .filter(|c| c.cell.profile == profile)
        .collect()
}

/// The profiles of a run, in plan order.
pub fn profiles(run: &Run) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for c in &run.cells {
        if !v.contains(&c.cell.profile) {
            v.push(c.cell.profile.clone());
        }
    }
    v
}

/// Successful tokens of a cell.
pub fn tokens(c: &CellResult) -> usize {
    c.records
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.tokens)
        .sum()
}

/// Wire totals at the client's end: (bytes up, bytes down, frames up, frames down).
pub fn wire(c: &CellResult) -> Option<(u64, u64, u64, u64)> {
    c.client.as_ref().map(|e| {
        (
            e.capture.tx.l2_bytes,
            e.capture.rx.l2_bytes,
            e.capture.tx.frames,
            e.capture.rx.frames,
        )
    })
}

/// A metric of `approach` under `profile`, as expectations name them.
pub fn metric(run: &Run, approach: &str, profile: &str, name: &str) -> Option<f64> {
    let c = run
        .cells
        .iter()
        .find(|c| c.cell.profile == profile && c.cell.name == approach)?;
    if let Some(l) = &c.load {
        return load::metric(l, name);
    }
    let s = Summary::of(approach, &c.records);
    let ok = s.prompts - s.errors;
    let toks = tokens(c) as f64;
    match name {
        "ttft_p50" => s.ttft_p50_ms,
        "ttft_p95" => s.ttft_p95_ms,
        "ttft_p99" => s.ttft_p99_ms,
        "tbt_avg" => s.avg_tbt_ms,
        "total_avg" => (ok > 0).then_some(s.avg_total_ms),
        "setup" => s.avg_connect_ms,
        "tokens_avg" => (ok > 0).then_some(s.avg_tokens),
        "bytes_per_token" => s.avg_bytes_per_token,
        "wire_bytes_per_token" => wire(c)
            .filter(|_| toks > 0.0)
            .map(|(u, d, _, _)| (u + d) as f64 / toks),
        "wire_bytes" => wire(c).map(|(u, d, _, _)| (u + d) as f64),
        "packets" => wire(c).map(|(_, _, fu, fd)| (fu + fd) as f64),
        "errors" => Some(s.errors as f64),
        "l3_bytes_per_token" => c
            .client
            .as_ref()
            .filter(|_| toks > 0.0)
            .map(|e| (e.capture.tx.l3_bytes + e.capture.rx.l3_bytes) as f64 / toks),
        "gap_p99" => stalls::of(&c.records).map(|s| s.gap_p99_ms),
        "gap_max" => stalls::of(&c.records).map(|s| s.gap_max_ms),
        "stalled_per_answer" => stalls::of(&c.records).map(|s| s.stalled_ms_per_answer),
        "streams_per_stall" => stalls::of(&c.records).and_then(|s| s.streams_per_stall),
        "delivered_pct" => datagrams::of(&c.records, &c.connections).map(|t| t.delivered_pct()),
        "ack_packets_per_token" | "data_packets_per_token" => {
            let a = c.anatomy.as_ref().filter(|_| toks > 0.0)?;
            let (u, d) = (&a.client.up.packets, &a.client.down.packets);
            Some(if name == "ack_packets_per_token" {
                (u.ack + d.ack) as f64 / toks
            } else {
                (u.data + d.data) as f64 / toks
            })
        }
        _ => None,
    }
}

/// Prompts whose tokens differ between approaches of one profile (the embedded mock
/// answers every approach with the same tokens).
pub fn digest_mismatches(run: &Run) -> Vec<String> {
    if run.plan.llm.kind != "mock" {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in profiles(run) {
        let cells = cells_of(run, &p);
        // Per prompt, every whole answer against the first: tokens lost in datagrams
        // are counted (the datagram line), not taken for different tokens.
        let mut indices: Vec<usize> = cells
            .iter()
            .flat_map(|c| c.records.iter().map(|r| r.index))
            .collect();
        indices.sort_unstable();
        indices.dedup();
        for i in indices {
            let whole: Vec<(&str, &PromptRecord)> = cells
                .iter()
                .filter_map(|c| {
                    let r = c.records.iter().find(|r| r.index == i)?;
                    (r.error.is_none() && r.whole()).then_some((c.cell.name.as_str(), r))
                })
                .collect();
            let Some(&(first, r)) = whole.first() else {
                continue;
            };
            for &(other, o) in &whole[1..] {
                if o.digest != r.digest {
                    out.push(format!(
                        "{p}: prompt {} ({}): {first} and {other} received different tokens",
                        i + 1,
                        r.prompt,
                    ));
                }
            }
        }
    }
    out
}

/// Everything that makes the run itself a failure.
pub fn run_errors(run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    for c in &run.cells {
        let who = format!("{} ({}@{})", c.cell.id, c.cell.name, c.cell.profile);
        for e in &c.errors {
            out.push(format!("{who}: {e}"));
        }
        let failed: Vec<_> = c.records.iter().filter(|r| r.error.is_some()).collect();
        if !failed.is_empty() {
            out.push(format!(
                "{who}: {} of {} prompts failed ({})",
                failed.len(),
                c.records.len(),
                failed
                    .iter()
                    .filter_map(|r| r.error.as_ref().map(|e| e.category.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(w) = &c.warmup_error {
            out.push(format!("{who}: the warm-up failed: {w}"));
        }
        // A load test's failed streams are its findings (the tables, `success_pct`);
        // tokens lost or altered in a completed stream are an error.
        for l in c.load.iter().flat_map(|l| &l.levels) {
            if l.wrong_streams > 0 {
                out.push(format!(
                    "{who}: level {}: {} of {} completed streams got tokens other than the mock's answer: {}",
                    l.summary.level,
                    l.wrong_streams,
                    l.checked,
                    l.wrong.join("; ")
                ));
            }
        }
        if let Some(w) = &c.wire
            && w.up.dropped_input + w.down.dropped_input > 0
        {
            out.push(format!(
                "{who}: the link emulator fell behind: {} frames up and {} down found its receive ring full and were lost, beyond what the profile asks for (`shaping.ring_frames` gives the rings more room)",
                w.up.dropped_input, w.down.dropped_input
            ));
        }
        for (side, e) in [("client", &c.client), ("server", &c.server)] {
            if let Some(e) = e
                && !e.differences.is_empty()
            {
                out.push(format!(
                    "{who}: the {side}-side capture and the kernel's counters differ: {}",
                    e.differences.join("; ")
                ));
            }
        }
    }
    out.extend(run.digest_mismatches.iter().cloned());
    out.extend(run.nodes_exited.iter().cloned());
    out
}

/// Token digests of one prompt across approaches, and the mock's expected digest.
#[derive(Debug, PartialEq, Eq)]
pub struct DigestCheck {
    pub compared: usize,
    pub mismatches: Vec<String>,
}

/// Compares digests per prompt index across approaches (and with `expected`, if given).
pub fn check_digests(
    results: &[(Approach, Vec<PromptRecord>)],
    expected: Option<&dyn Fn(usize) -> String>,
) -> DigestCheck {
    let n = results.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    let mut check = DigestCheck {
        compared: 0,
        mismatches: Vec::new(),
    };
    for i in 0..n {
        let mut seen: Vec<(String, String)> = Vec::new();
        for (a, recs) in results {
            if let Some(r) = recs.get(i).filter(|r| r.error.is_none() && r.whole()) {
                seen.push((a.name.to_owned(), r.digest.clone()));
            }
        }
        if let Some(f) = expected {
            seen.push(("mock".into(), f(i)));
        }
        if seen.len() < 2 {
            continue;
        }
        check.compared += 1;
        if seen.iter().any(|(_, d)| *d != seen[0].1) {
            let detail: Vec<String> = seen
                .iter()
                .map(|(a, d)| format!("{a}={}", &d[..12.min(d.len())]))
                .collect();
            check
                .mismatches
                .push(format!("prompt {}: {}", i + 1, detail.join(" ")));
        }
    }
    check
}
