//! Units of topology files, parsed once into types: durations (`200ms`, `1.5s`),
//! percentages (`5%`), bit rates (`100kbit`, `10mbit`, `1gbit`) and sizes (`1000` packets,
//! `64kb` bytes). Pure code.
//!
//! Rates and sizes follow tc's conventions, so numbers mean the same in lab and in `tc`:
//! `kbit` is 1000 bits per second; `kb` is 1024 bytes.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// Splits `200ms` into its number (`200`) and unit (`ms`). None if there is no number.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let digits = num.chars().filter(char::is_ascii_digit).count();
    (digits > 0 && num.matches('.').count() <= 1).then_some((num, unit.trim()))
}

/// A decimal number (`200`, `1.5`) times `scale`, exactly, with any fraction of a unit
/// truncated. None if it does not fit in a u128. No floating point: units are parsed
/// exactly, so a value survives being written out and read back.
fn scaled(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let mut v: u128 = 0;
    for d in int.bytes() {
        v = v.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
    }
    v = v.checked_mul(scale)?;
    // Digits past the 20th cannot change the result at any scale used here.
    let frac = &frac[..frac.len().min(20)];
    let mut f: u128 = 0;
    for d in frac.bytes() {
        f = f * 10 + u128::from(d - b'0');
    }
    let part = f.checked_mul(scale)? / 10u128.pow(frac.len() as u32);
    v.checked_add(part)
}

macro_rules! string_unit {
    ($t:ident, $pattern:expr, $desc:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl JsonSchema for $t {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($t))
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": ["string", "integer"],
                    "pattern": $pattern,
                    "description": $desc,
                })
            }
        }
    };
}

/// A duration: `0`, `500us`, `200ms`, `1.5s`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

/// The longest duration a topology may give.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "write a duration such as 200ms, 1.5s or 500us";
        if s.trim() == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let (num, unit) =
            split_number(s).ok_or_else(|| format!("'{s}' is not a duration; {hint}"))?;
        let ns_per: u128 = match unit {
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "" => return Err(format!("'{s}' has no unit; {hint}")),
            u => {
                return Err(format!(
                    "unknown duration unit '{u}' in '{s}'; valid: us, ms, s, m"
                ));
            }
        };
        match scaled(num, ns_per) {
            Some(ns) if ns <= MAX_DURATION.as_nanos() => Ok(Self(Duration::from_nanos(ns as u64))),
            _ => Err(format!("'{s}' is over an hour")),
        }
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Exact: the largest unit that divides the duration, else fractional microseconds.
        let ns = self.0.as_nanos();
        if ns == 0 {
            write!(f, "0")
        } else if ns.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", ns / 1_000_000_000)
        } else if ns.is_multiple_of(1_000_000) {
            write!(f, "{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1000) {
            write!(f, "{}us", ns / 1000)
        } else {
            let frac = format!("{:03}", ns % 1000);
            write!(f, "{}.{}us", ns / 1000, frac.trim_end_matches('0'))
        }
    }
}
/// Serde for a `Duration` written as a [`Dur`] (`"200ms"`), exactly: for resolved
/// settings such as a plan's link parameters.
pub mod as_dur {
    use super::Dur;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Dur(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Dur::deserialize(d).map(|d| d.0)
    }
}

string_unit!(
    Dur,
    "^(0|[0-9]+(\\.[0-9]+)?(us|ms|s|m))$",
    "A duration: 500us, 200ms, 1.5s, 2m, or 0."
);

/// A percentage, `5%` or `0.5%`, stored as a fraction in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(pub f64);

impl std::str::FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let Some(num) = t.strip_suffix('%') else {
            return Err(format!(
                "'{s}' is not a percentage; write it with a % sign, e.g. 5% or 0.5%"
            ));
        };
        let v: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a percentage; write e.g. 5% or 0.5%"))?;
        if !(0.0..=100.0).contains(&v) || v.is_nan() {
            return Err(format!("'{s}' is outside 0%..100%"));
        }
        Ok(Self(v / 100.0))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0 * 100.0;
        if (p - p.round()).abs() < 1e-9 {
            write!(f, "{}%", p.round())
        } else {
            write!(f, "{}%", (p * 1e6).round() / 1e6)
        }
    }
}
string_unit!(Percent, "^[0-9]+(\\.[0-9]+)?%$", "A percentage: 5%, 0.5%.");

/// The highest rate a topology may give: 1 Tbit/s, far above what a veth or the
/// emulator carries, and well inside netem's 64-bit rate.
pub const MAX_RATE: u64 = 1_000_000_000_000;

/// A bit rate in bits per second: `100kbit`, `10mbit`, `1gbit`, `512bit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rate(pub u64);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "write a bit rate such as 100kbit, 10mbit or 1gbit";
        let (num, unit) = split_number(s).ok_or_else(|| format!("'{s}' is not a rate; {hint}"))?;
        let mult: u128 = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1,
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            "bps" | "kbps" | "mbps" | "gbps" => {
                return Err(format!(
                    "'{s}' is ambiguous: tc reads {unit} as bytes per second; {hint} (8 bits per byte)"
                ));
            }
            "" => return Err(format!("'{s}' has no unit; {hint}")),
            u => {
                return Err(format!(
                    "unknown rate unit '{u}' in '{s}'; valid: bit, kbit, mbit, gbit"
                ));
            }
        };
        match scaled(num, mult) {
            Some(bits) if bits < 8 => Err(format!("'{s}' is below 8 bit/s")),
            Some(bits) if bits <= u128::from(MAX_RATE) => Ok(Self(bits as u64)),
            _ => Err(format!(
                "'{s}' is out of range: the highest rate is {}",
                Rate(MAX_RATE)
            )),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (m, u) in [(1_000_000_000, "gbit"), (1_000_000, "mbit"), (1000, "kbit")] {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}bit", self.0)
    }
}
string_unit!(
    Rate,
    "^[0-9]+(\\.[0-9]+)?(bit|kbit|mbit|gbit)$",
    "A bit rate: 512bit, 100kbit, 10mbit, 1gbit (1000-based, as in tc)."
);

/// The largest queue limit, in packets or bytes: netem's limit is a 32-bit count.
pub const MAX_LIMIT: u64 = u32::MAX as u64;

/// A queue limit: a number of packets (`1000`) or of bytes (`64kb`, `1mb`, `1500b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Packets(u64),
    Bytes(u64),
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "write a packet count such as 1000, or bytes such as 64kb or 1mb";
        let (num, unit) = split_number(s).ok_or_else(|| format!("'{s}' is not a size; {hint}"))?;
        let big = || format!("'{s}': a queue limit is at most {MAX_LIMIT}");
        let fit = |n: Option<u128>| match n {
            Some(n) if n <= u128::from(MAX_LIMIT) => Ok(n as u64),
            _ => Err(big()),
        };
        let r = match unit.to_ascii_lowercase().as_str() {
            "" | "p" | "pkt" | "packets" => {
                if num.contains('.') {
                    return Err(format!("'{s}': a packet count is a whole number"));
                }
                Self::Packets(fit(scaled(num, 1))?)
            }
            "b" => Self::Bytes(fit(scaled(num, 1))?),
            "kb" => Self::Bytes(fit(scaled(num, 1024))?),
            "mb" => Self::Bytes(fit(scaled(num, 1024 * 1024))?),
            u => {
                return Err(format!(
                    "unknown size unit '{u}' in '{s}'; valid: (none) for packets, b, kb, mb"
                ));
            }
        };
        match r {
            Self::Packets(0) | Self::Bytes(0) => {
                Err(format!("'{s}': a queue limit must be above zero"))
            }
            r => Ok(r),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Packets(p) => write!(f, "{p}"),
            Self::Bytes(b) if b.is_multiple_of(1024 * 1024) => write!(f, "{}mb", b / (1024 * 1024)),
            Self::Bytes(b) if b.is_multiple_of(1024) => write!(f, "{}kb", b / 1024),
            Self::Bytes(b) => write!(f, "{b}b"),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A bare number may come as a YAML integer.
        let v = String::deserialize(d)?;
        v.parse().map_err(serde::de::Error::custom)
    }
}
impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}
impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Size")
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "integer"],
            "pattern": "^[0-9]+(\\.[0-9]+)?(|p|b|kb|mb)$",
            "description": "A queue limit: packets (1000) or bytes (1500b, 64kb, 1mb; 1024-based, as in tc).",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "200ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(200)
        );
        assert_eq!(
            "1.5s".parse::<Dur>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!("0".parse::<Dur>().unwrap().0, Duration::ZERO);
        assert_eq!("500us".parse::<Dur>().unwrap().to_string(), "500us");
        assert_eq!("1.5s".parse::<Dur>().unwrap().to_string(), "1500ms");
        assert!("200".parse::<Dur>().unwrap_err().contains("no unit"));
        assert!(
            "2h".parse::<Dur>()
                .unwrap_err()
                .contains("valid: us, ms, s, m")
        );
        assert!("fast".parse::<Dur>().is_err());
        assert!("1.2.3s".parse::<Dur>().is_err());
        assert!(".s".parse::<Dur>().is_err());
        assert!("61m".parse::<Dur>().unwrap_err().contains("over an hour"));
        assert!(
            "99999999999999999999999999999999999999999s"
                .parse::<Dur>()
                .unwrap_err()
                .contains("over an hour")
        );
        // Exact, both ways: no floating point between the text and the nanoseconds.
        for text in ["1.234us", "0.5us", "200ms", "1s", "1.000001s", "2.5m"] {
            let d = text.parse::<Dur>().unwrap();
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d, "{text}");
        }
        assert_eq!("1.234us".parse::<Dur>().unwrap().0.as_nanos(), 1234);
        assert_eq!("1.000001s".parse::<Dur>().unwrap().to_string(), "1000001us");
        assert_eq!("0.1us".parse::<Dur>().unwrap().to_string(), "0.1us");
    }

    #[test]
    fn percents() {
        assert_eq!("5%".parse::<Percent>().unwrap().0, 0.05);
        assert_eq!("0.5%".parse::<Percent>().unwrap().to_string(), "0.5%");
        assert_eq!("100%".parse::<Percent>().unwrap().0, 1.0);
        assert!("5".parse::<Percent>().unwrap_err().contains("% sign"));
        assert!("101%".parse::<Percent>().unwrap_err().contains("outside"));
    }

    #[test]
    fn rates() {
        assert_eq!("100kbit".parse::<Rate>().unwrap().0, 100_000);
        assert_eq!("10mbit".parse::<Rate>().unwrap().0, 10_000_000);
        assert_eq!("1gbit".parse::<Rate>().unwrap().0, 1_000_000_000);
        assert_eq!("1.5mbit".parse::<Rate>().unwrap().to_string(), "1500kbit");
        assert!("100kbps".parse::<Rate>().unwrap_err().contains("ambiguous"));
        assert!("100".parse::<Rate>().unwrap_err().contains("no unit"));
        assert!(
            "100kb"
                .parse::<Rate>()
                .unwrap_err()
                .contains("valid: bit, kbit, mbit, gbit")
        );
        assert_eq!(
            "0.001kbit".parse::<Rate>().unwrap_err(),
            "'0.001kbit' is below 8 bit/s"
        );
        assert_eq!(
            "99999999999999999999999gbit".parse::<Rate>().unwrap_err(),
            "'99999999999999999999999gbit' is out of range: the highest rate is 1000gbit"
        );
        assert_eq!("1000gbit".parse::<Rate>().unwrap().0, MAX_RATE);
    }

    #[test]
    fn sizes() {
        assert_eq!("1000".parse::<Size>().unwrap(), Size::Packets(1000));
        assert_eq!("64kb".parse::<Size>().unwrap(), Size::Bytes(65536));
        assert_eq!("1mb".parse::<Size>().unwrap().to_string(), "1mb");
        assert!("0".parse::<Size>().unwrap_err().contains("above zero"));
        assert!("1.5".parse::<Size>().unwrap_err().contains("whole number"));
        assert!("3gb".parse::<Size>().is_err());
        assert!(
            "4096mb"
                .parse::<Size>()
                .unwrap_err()
                .contains("at most 4294967295")
        );
        assert!(
            "99999999999999999999999"
                .parse::<Size>()
                .unwrap_err()
                .contains("at most")
        );
    }
}

/// As [`as_dur`], for an optional `Duration`.
pub mod as_opt_dur {
    use super::Dur;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&Dur(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Dur>::deserialize(d)?.map(|d| d.0))
    }
}
