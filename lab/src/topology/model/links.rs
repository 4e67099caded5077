//! A profile's links as written: impairments per direction, traces, loss models.

use super::*;

/// Link impairments for one direction, or for both.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// One-way delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Dur>,
    /// Delay variation around `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Dur>,
    /// Jitter distribution: uniform (default) or normal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    /// Random loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Percent>,
    /// Bursty loss, netem's Gilbert-Elliott model (instead of `loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gilbert_elliott: Option<GilbertElliott>,
    /// Bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Bytes added to each packet when computing the rate (e.g. link-layer framing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<i32>,
    /// Queue limit, packets (1000) or bytes (64kb). Default: enough for the rate-delay product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Size>,
    /// Share of packets sent at once, ahead of delayed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<Percent>,
    /// Share of packets duplicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<Percent>,
    /// Share of packets with a flipped bit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<Percent>,
    /// A Mahimahi trace (one millisecond per line, each a chance to deliver 1500 bytes;
    /// it loops) that paces the link instead of `rate`: a file for both directions, or
    /// `{ up: FILE, down: FILE }`. Paths are relative to the topology file. The
    /// userspace backend only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceSpec>,
}

/// A link's trace: one file, or one per direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum TraceSpec {
    File(String),
    Split(TraceSplit),
}

impl<'de> Deserialize<'de> for TraceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TraceSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a trace file, or { up: FILE, down: FILE }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TraceSpec, E> {
                Ok(TraceSpec::File(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<TraceSpec, A::Error> {
                let mut split = TraceSplit {
                    up: None,
                    down: None,
                };
                while let Some(k) = m.next_key::<String>()? {
                    let slot = match k.as_str() {
                        "up" => &mut split.up,
                        "down" => &mut split.down,
                        o => {
                            return Err(serde::de::Error::custom(format!(
                                "unknown direction '{o}' of a trace; valid: up, down"
                            )));
                        }
                    };
                    *slot = Some(m.next_value::<String>()?);
                }
                Ok(TraceSpec::Split(split))
            }
        }
        d.deserialize_any(V)
    }
}

/// A trace file per direction (either may be absent: that direction has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceSplit {
    #[serde(default)]
    pub up: Option<String>,
    #[serde(default)]
    pub down: Option<String>,
}

impl TraceSpec {
    /// The file for one direction.
    pub fn for_direction(&self, up: bool) -> Option<String> {
        match self {
            TraceSpec::File(f) => Some(f.clone()),
            TraceSpec::Split(s) => {
                if up {
                    s.up.clone()
                } else {
                    s.down.clone()
                }
            }
        }
    }
}

// The profile as written; the parser resolves it into a `Profile`. This type gives the
// schema.
/// A network profile: impairments for both directions, optionally per direction.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Profile")]
pub struct WrittenProfile {
    #[serde(flatten)]
    pub link: Link,
    /// Which directions the profile's own fields shape: both (default), up (client to
    /// server only, as the reference's pf rules did) or down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Client-to-server settings; they replace the profile's own fields for that direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<Link>,
    /// Server-to-client settings; they replace the profile's own fields for that direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<Link>,
}

/// The profile's keys besides the link fields.
pub const PROFILE_KEYS: [&str; 3] = ["direction", "up", "down"];

/// A network profile, resolved per direction: `direction`, `up:` and `down:` applied.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profile {
    /// Client to server.
    pub up: Link,
    /// Server to client.
    pub down: Link,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Both,
    Up,
    Down,
}

/// netem's Gilbert-Elliott loss model (`loss gemodel p r 1-h 1-k`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state.
    pub p: Percent,
    /// Probability of moving from the bad to the good state (default 100% - p).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<Percent>,
    /// Loss probability in the bad state, netem's 1-h (default 100%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_minus_h: Option<Percent>,
    /// Loss probability in the good state, netem's 1-k (default 0%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_minus_k: Option<Percent>,
}
