//! A direction's link settings, resolved from the topology into plain numbers, and the
//! defaults both backends share. Pure. The plan resolves each direction once; the
//! kernel backend's encoders, `lab wire`'s engine, `lab run`'s quiet times and every
//! description read these numbers, never the topology's fields.

use crate::topology::model::{Distribution, Link};
use crate::topology::units::Size;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// netem's own default queue limit, in packets.
pub const NETEM_DEFAULT_LIMIT: u64 = 1000;
/// Line rate assumed for the queue-limit default when a direction has no rate.
pub const UNLIMITED_RATE_BPS: u64 = 10_000_000_000;
/// Frame size assumed for the queue-limit default.
pub const FULL_FRAME: u64 = 1514;

#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    #[default]
    None,
    /// Independent loss with this probability.
    Random(f64),
    /// netem's Gilbert-Elliott model: p (good to bad), r (bad to good), h (1 - loss in
    /// bad), k (1 - loss in good).
    GilbertElliott { p: f64, r: f64, h: f64, k: f64 },
}

#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Packets(u64),
    Bytes(u64),
}

/// One direction's settings, as numbers: what the plan carries for each direction of
/// each cell, and what both backends apply. Computed once, from the topology, by
/// [`Params::from_link`]. In JSON, settings that change nothing are left out.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    #[schemars(with = "crate::topology::units::Dur")]
    #[serde(
        with = "crate::topology::units::as_dur",
        default,
        skip_serializing_if = "Duration::is_zero"
    )]
    pub delay: Duration,
    #[schemars(with = "crate::topology::units::Dur")]
    #[serde(
        with = "crate::topology::units::as_dur",
        default,
        skip_serializing_if = "Duration::is_zero"
    )]
    pub jitter: Duration,
    /// Normal jitter (else uniform).
    #[serde(default, skip_serializing_if = "is_false")]
    pub normal: bool,
    #[serde(default, skip_serializing_if = "is_no_loss")]
    pub loss: Loss,
    /// Bits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Bytes added to each packet's length for the rate.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub overhead: i64,
    pub limit: Limit,
    /// Whether `limit` came from the topology (else it is the computed default).
    #[serde(default, skip_serializing_if = "is_false")]
    pub limit_set: bool,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub reorder: f64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub duplicate: f64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub corrupt: f64,
    /// A Mahimahi trace file (absolute path) whose delivery chances pace the link,
    /// instead of a rate; the userspace backend only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !b
}
fn is_no_loss(l: &Loss) -> bool {
    *l == Loss::None
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

/// The default queue limit: netem's 1000 packets, or twice the rate-delay product in
/// full frames when that is larger, so that the queue never caps throughput below the
/// configured rate. Without a rate, 10 Gbit/s stands in for the line rate.
pub fn default_limit(rate: Option<u64>, delay: Duration, jitter: Duration) -> u64 {
    let rate = rate.unwrap_or(UNLIMITED_RATE_BPS) as u128;
    let t_ns = (delay + jitter).as_nanos();
    let bdp_bytes = rate * t_ns / 8 / 1_000_000_000;
    let frames = bdp_bytes.div_ceil(FULL_FRAME as u128) as u64;
    NETEM_DEFAULT_LIMIT.max(frames.saturating_mul(2))
}

impl Params {
    pub fn from_link(l: &Link) -> Params {
        let delay = l.delay.map(|d| d.0).unwrap_or_default();
        let jitter = l.jitter.map(|d| d.0).unwrap_or_default();
        let rate = l.rate.map(|r| r.0);
        let loss = match (l.loss, l.gilbert_elliott) {
            (_, Some(g)) => Loss::GilbertElliott {
                p: g.p.0,
                r: g.r.map_or(1.0 - g.p.0, |r| r.0),
                h: 1.0 - g.one_minus_h.map_or(1.0, |x| x.0),
                k: 1.0 - g.one_minus_k.map_or(0.0, |x| x.0),
            },
            (Some(p), None) if p.0 > 0.0 => Loss::Random(p.0),
            _ => Loss::None,
        };
        let (limit, limit_set) = match l.limit {
            Some(Size::Packets(n)) => (Limit::Packets(n), true),
            Some(Size::Bytes(n)) => (Limit::Bytes(n), true),
            // A trace's queue is netem's default unless the profile gives one.
            None if l.trace.is_some() => (Limit::Packets(NETEM_DEFAULT_LIMIT), false),
            None => (Limit::Packets(default_limit(rate, delay, jitter)), false),
        };
        Params {
            delay,
            jitter,
            normal: l.distribution == Some(Distribution::Normal),
            loss,
            rate,
            overhead: l.overhead.unwrap_or(0) as i64,
            limit,
            limit_set,
            reorder: l.reorder.map_or(0.0, |p| p.0),
            duplicate: l.duplicate.map_or(0.0, |p| p.0),
            corrupt: l.corrupt.map_or(0.0, |p| p.0),
            trace: match &l.trace {
                Some(crate::topology::model::TraceSpec::File(f)) => Some(f.clone()),
                _ => None,
            },
        }
    }

    /// The longest one-way delay a packet can see: the delay plus its jitter.
    pub fn max_delay(&self) -> Duration {
        self.delay + self.jitter
    }

    /// One line describing these settings, in tc's words, e.g. `delay 200ms, loss 5%`.
    pub fn describe(&self) -> String {
        use crate::topology::units::{Dur, Percent, Rate, Size};
        let mut parts = Vec::new();
        if !self.delay.is_zero() || !self.jitter.is_zero() {
            let mut s = format!("delay {}", Dur(self.delay));
            if !self.jitter.is_zero() {
                s.push_str(&format!(" ± {}", Dur(self.jitter)));
                if self.normal {
                    s.push_str(" normal");
                }
            }
            parts.push(s);
        }
        match self.loss {
            Loss::None => {}
            Loss::Random(p) => parts.push(format!("loss {}", Percent(p))),
            Loss::GilbertElliott { p, r, h, k } => parts.push(format!(
                "loss gemodel p {} r {} 1-h {} 1-k {}",
                Percent(p),
                Percent(r),
                Percent(1.0 - h),
                Percent(1.0 - k)
            )),
        }
        if let Some(t) = &self.trace {
            let name = std::path::Path::new(t)
                .file_name()
                .map_or(t.clone(), |n| n.to_string_lossy().into_owned());
            parts.push(format!("trace {name}"));
        }
        if let Some(r) = self.rate {
            let mut s = format!("rate {}", Rate(r));
            if self.overhead != 0 {
                s.push_str(&format!(" overhead {}", self.overhead));
            }
            parts.push(s);
        }
        if self.limit_set {
            parts.push(format!(
                "limit {}",
                match self.limit {
                    Limit::Packets(n) => Size::Packets(n),
                    Limit::Bytes(n) => Size::Bytes(n),
                }
            ));
        }
        for (name, v) in [
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
        ] {
            if v > 0.0 {
                parts.push(format!("{name} {}", Percent(v)));
            }
        }
        if parts.is_empty() {
            "unshaped".into()
        } else {
            parts.join(", ")
        }
    }

    /// Does this direction change nothing?
    pub fn is_identity(&self) -> bool {
        self.delay.is_zero()
            && self.jitter.is_zero()
            && self.loss == Loss::None
            && self.rate.is_none()
            && self.reorder == 0.0
            && self.duplicate == 0.0
            && self.corrupt == 0.0
            && !self.limit_set
            && self.trace.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::model::GilbertElliott;
    use crate::topology::units::{Dur, Percent, Rate};

    #[test]
    fn default_limit_covers_the_rate_delay_product() {
        // 100 kbit at 200 ms: 2.5 KB in flight, netem's 1000 packets is plenty.
        let ms = Duration::from_millis;
        assert_eq!(default_limit(Some(100_000), ms(200), ms(0)), 1000);
        // 1 gbit at 200 ms: 25 MB in flight = 16,513 frames; twice that.
        assert_eq!(default_limit(Some(1_000_000_000), ms(200), ms(0)), 33_026);
        // No rate, 50 ms: 10 Gbit/s stands in: 62.5 MB = 41,282 frames; twice that.
        assert_eq!(default_limit(None, ms(50), ms(0)), 82_564);
        assert_eq!(default_limit(None, ms(0), ms(0)), 1000);
    }

    #[test]
    fn links_resolve_to_numbers() {
        let l = Link {
            delay: Some(Dur(Duration::from_millis(200))),
            loss: Some(Percent(0.05)),
            rate: Some(Rate(100_000)),
            ..Link::default()
        };
        let p = Params::from_link(&l);
        assert_eq!(p.loss, Loss::Random(0.05));
        assert_eq!(p.rate, Some(100_000));
        assert_eq!(p.limit, Limit::Packets(1000));
        assert!(!p.limit_set && !p.is_identity());
        let g = Link {
            gilbert_elliott: Some(GilbertElliott {
                p: Percent(0.01),
                r: Some(Percent(0.25)),
                one_minus_h: None,
                one_minus_k: None,
            }),
            ..Link::default()
        };
        assert_eq!(
            Params::from_link(&g).loss,
            Loss::GilbertElliott {
                p: 0.01,
                r: 0.25,
                h: 0.0,
                k: 1.0
            }
        );
        assert!(Params::from_link(&Link::default()).is_identity());
        // JSON leaves out what changes nothing, and reads back the same.
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"delay":"200ms","loss":{"random":0.05},"rate":100000,"limit":{"packets":1000}}"#
        );
        assert_eq!(serde_json::from_str::<Params>(&json).unwrap(), p);
    }
}
