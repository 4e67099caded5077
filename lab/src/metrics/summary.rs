//! The figures of each cell as the report's tables show them, saved in run.json so that
//! scripts read numbers instead of recomputing them from the records. Pure.

use super::{CellResult, Run, metric, tokens, wire};
use crate::anatomy::Side;
use crate::topology::expect::METRICS;
use lab_clients::record::Summary;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The version of run.json's format. 1: no `format` field, no `summaries`. 2: both.
/// A reader refuses a version newer than it knows.
pub const FORMAT: u32 = 2;

/// One cell's figures: the summary table's row, every metric an expectation can name,
/// the wire table's row, and the anatomy table's rows.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    /// The cell's id (`c1`), approach name and profile.
    pub id: String,
    pub approach: String,
    pub profile: String,
    /// The library under a QUIC approach (`wtransport 0.7.2`), as the registry names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The summary table's row (times in ms).
    pub summary: Summary,
    /// Every metric an expectation can name that has a value here, by name; units as
    /// `lab compare` prints them (times in ms, bytes, packets, per token where named so).
    pub metrics: BTreeMap<String, f64>,
    /// The wire table's row, at the client's interface.
    pub wire: Option<WireRow>,
    /// The anatomy table's rows, per direction.
    pub anatomy: Option<Directions>,
}

/// Bytes and packets at the client's interface over the cell's run.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireRow {
    /// L2 bytes (Ethernet header included) and frames, each way.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub packets_up: u64,
    pub packets_down: u64,
    /// L3 bytes (IP packets only, no Ethernet header), both ways.
    pub l3_bytes: u64,
    /// Tokens of the cell's successful prompts.
    pub tokens: usize,
    pub bytes_per_token: Option<f64>,
    pub l3_bytes_per_token: Option<f64>,
}

/// The anatomy per token of both directions.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Directions {
    pub up: PerToken,
    pub down: PerToken,
}

/// One direction per token: packets by class, bytes by layer (adding up to `bytes`),
/// and what the sending end put on the wire again.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerToken {
    pub data_packets: f64,
    pub ack_packets: f64,
    pub other_packets: f64,
    pub bytes: f64,
    pub layers: BTreeMap<String, f64>,
    pub resent_by_sender: f64,
}

fn per_token(side: &Side, sender: &Side, toks: usize) -> PerToken {
    let t = toks as f64;
    let layers = match serde_json::to_value(side.layers) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_u64()? as f64 / t)))
            .collect(),
        _ => BTreeMap::new(),
    };
    PerToken {
        data_packets: side.packets.data as f64 / t,
        ack_packets: side.packets.ack as f64 / t,
        other_packets: side.packets.other as f64 / t,
        bytes: side.bytes as f64 / t,
        layers,
        resent_by_sender: sender.layers.retransmitted as f64 / t,
    }
}

/// The figures of one cell of `run`.
pub fn of_cell(run: &Run, c: &CellResult) -> CellSummary {
    let name = &c.cell.name;
    let profile = &c.cell.profile;
    let metrics = METRICS
        .iter()
        .filter_map(|(m, ..)| Some(((*m).to_owned(), metric(run, name, profile, m)?)))
        .collect();
    let t = tokens(c);
    let per = |b: u64| (t > 0).then(|| b as f64 / t as f64);
    let wire = wire(c).zip(c.client.as_ref()).map(|((u, d, pu, pd), e)| {
        let l3 = e.capture.tx.l3_bytes + e.capture.rx.l3_bytes;
        WireRow {
            bytes_up: u,
            bytes_down: d,
            packets_up: pu,
            packets_down: pd,
            l3_bytes: l3,
            tokens: t,
            bytes_per_token: per(u + d),
            l3_bytes_per_token: per(l3),
        }
    });
    let anatomy = c.anatomy.as_ref().filter(|_| t > 0).map(|a| Directions {
        up: per_token(&a.client.up, &a.client.up, t),
        down: per_token(&a.client.down, &a.server.down, t),
    });
    CellSummary {
        id: c.cell.id.clone(),
        approach: name.clone(),
        profile: profile.clone(),
        stack: c.cell.approach.stack.map(|s| {
            if c.cell.client.is_browser() {
                format!("{s} (server; the client is headless Chromium)")
            } else {
                s.to_owned()
            }
        }),
        summary: Summary::of(name, &c.records),
        metrics,
        wire,
        anatomy,
    }
}

/// The figures of every cell of `run`, in plan order.
pub fn of_run(run: &Run) -> Vec<CellSummary> {
    run.cells.iter().map(|c| of_cell(run, c)).collect()
}
