//! Open-loop arrivals: when each request of a level is to be sent, worked out in full
//! before the level starts, so that a slow server cannot hold back the next request
//! (no coordinated omission).
//!
//! A level at `rate` requests per second draws its gaps from a process with mean 1 in
//! "operational time": exactly 1 (constant), exponential (Poisson), or gamma with shape
//! `burstiness` and mean 1 (its coefficient of variation is 1/sqrt(burstiness): below 1
//! is burstier than Poisson, above 1 smoother; 1 is Poisson). Operational time is turned
//! into wall time through the level's intensity: rising in a straight line from 0 to
//! `rate` over the ramp, then flat. So the ramp keeps the process's shape at every
//! moment, and the same seed gives the same times on every machine.

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand_distr::{Distribution, Exp1, Gamma};
use std::time::Duration;

/// The process the gaps between arrivals come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Process {
    /// Evenly spaced, 1/rate apart.
    Constant,
    /// Exponential gaps: a Poisson process.
    Poisson,
    /// Gamma gaps with this shape (the burstiness factor; 1 is Poisson).
    Gamma(f64),
}

impl Process {
    /// The process by its name in a topology (`constant`, `poisson`, `gamma`), with the
    /// burstiness factor for gamma.
    pub fn named(name: &str, burstiness: Option<f64>) -> anyhow::Result<Process> {
        let p = match (name, burstiness) {
            ("constant", None) => Process::Constant,
            ("poisson", None | Some(1.0)) => Process::Poisson,
            ("gamma", Some(b)) if b.is_finite() && b > 0.0 => Process::Gamma(b),
            ("gamma", Some(b)) => {
                bail!("burstiness {b} is not above zero; 1 is Poisson, lower is burstier")
            }
            ("gamma", None) => Process::Gamma(1.0),
            ("constant" | "poisson", Some(_)) => {
                bail!("burstiness is for `gamma` arrivals only")
            }
            (other, _) => {
                bail!("unknown arrival process '{other}'; use constant, poisson or gamma")
            }
        };
        Ok(p)
    }

    /// Its name, as a topology gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Process::Constant => "constant",
            Process::Poisson => "poisson",
            Process::Gamma(_) => "gamma",
        }
    }
}

/// How a level's arrivals are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrivals {
    pub process: Process,
    /// The seed; a level's draw uses it with the level's number, so levels differ and
    /// every run repeats.
    pub seed: u64,
    /// From the level's start to its last arrival.
    pub duration: Duration,
    /// The rate climbs from 0 to the level's rate over this long (zero: at once).
    pub ramp: Duration,
    /// Stop after this many arrivals, if the duration has not ended first.
    pub max_requests: Option<u64>,
}

/// Arrival `i` of a level at `rate` per second, in seconds from the level's start.
fn wall_time(op: f64, rate: f64, ramp: f64) -> f64 {
    // Intensity rate*t/ramp up to the ramp's end, then rate: operational time
    // rate*t^2/(2*ramp) then rate*(t - ramp/2).
    let at_ramp_end = rate * ramp / 2.0;
    if ramp > 0.0 && op < at_ramp_end {
        (2.0 * ramp * op / rate).sqrt()
    } else {
        op / rate + ramp / 2.0
    }
}

/// The send times of level number `level` (from 0) at `rate` requests per second, from
/// the level's start, in order.
pub fn schedule(a: &Arrivals, rate: f64, level: u64) -> Vec<Duration> {
    if !(rate.is_finite() && rate > 0.0) {
        return Vec::new();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        a.seed.wrapping_mul(0x9E37_79B9).wrapping_add(level),
    );
    let gamma = match a.process {
        Process::Gamma(k) => Gamma::new(k, 1.0 / k).ok(),
        _ => None,
    };
    let end = a.duration.as_secs_f64();
    let ramp = a.ramp.as_secs_f64().min(end);
    let max = a.max_requests.unwrap_or(u64::MAX);
    let mut out = Vec::new();
    let mut op = 0.0;
    while (out.len() as u64) < max {
        op += match (a.process, &gamma) {
            (Process::Constant, _) => 1.0,
            (Process::Gamma(_), Some(g)) => g.sample(&mut rng),
            _ => Exp1.sample(&mut rng),
        };
        let t = wall_time(op, rate, ramp);
        if t >= end {
            break;
        }
        out.push(Duration::from_secs_f64(t));
    }
    out
}

/// Reads a trace of send times: one per line, either a number of seconds or a JSON
/// object with `timestamp` in milliseconds (the Mooncake trace format, one request per
/// line); blank lines and lines starting with `#` are passed over. Times are taken from
/// the first one, and must not go back.
pub fn read_trace(text: &str) -> anyhow::Result<Vec<Duration>> {
    let mut out: Vec<f64> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let secs = if line.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("line {n}: not JSON"))?;
            v.get("timestamp")
                .and_then(serde_json::Value::as_f64)
                .with_context(|| {
                    format!("line {n}: no number `timestamp` (milliseconds) in {line}")
                })?
                / 1000.0
        } else {
            line.parse::<f64>().map_err(|_| {
                anyhow::anyhow!(
                    "line {n}: '{line}' is not a time in seconds (or a JSON object with `timestamp` in ms)"
                )
            })?
        };
        if !secs.is_finite() || secs < 0.0 {
            bail!("line {n}: {secs} is not a time at or after 0");
        }
        if let Some(&last) = out.last()
            && secs < last
        {
            bail!(
                "line {n}: {secs} s is before the line above ({last} s); a trace is in time order"
            );
        }
        out.push(secs);
    }
    if out.is_empty() {
        bail!("the trace has no send times");
    }
    let first = out[0];
    Ok(out
        .into_iter()
        .map(|s| Duration::from_secs_f64(s - first))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(process: Process, secs: u64) -> Arrivals {
        Arrivals {
            process,
            seed: 7,
            duration: Duration::from_secs(secs),
            ramp: Duration::ZERO,
            max_requests: None,
        }
    }

    fn gaps(t: &[Duration]) -> Vec<f64> {
        t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }

    fn mean_cv(g: &[f64]) -> (f64, f64) {
        let n = g.len() as f64;
        let mean = g.iter().sum::<f64>() / n;
        let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn seeded_arrivals_repeat_exactly_and_seeds_and_levels_differ() {
        let a = spec(Process::Poisson, 60);
        assert_eq!(schedule(&a, 20.0, 0), schedule(&a, 20.0, 0));
        assert_ne!(schedule(&a, 20.0, 0), schedule(&a, 20.0, 1));
        let b = Arrivals {
            seed: 8,
            ..a.clone()
        };
        assert_ne!(schedule(&a, 20.0, 0), schedule(&b, 20.0, 0));
        let g = spec(Process::Gamma(0.5), 60);
        assert_eq!(schedule(&g, 20.0, 3), schedule(&g, 20.0, 3));
    }

    /// Over 10,000 Poisson arrivals the mean gap is within 2% of 1/rate and the
    /// coefficient of variation within 5% of 1.
    #[test]
    fn poisson_gaps_have_the_rate_and_a_cv_of_one() {
        let a = Arrivals {
            max_requests: Some(10_001),
            ..spec(Process::Poisson, 100_000)
        };
        for seed in [1, 2, 3] {
            let t = schedule(&Arrivals { seed, ..a.clone() }, 50.0, 0);
            assert_eq!(t.len(), 10_001);
            let (mean, cv) = mean_cv(&gaps(&t));
            assert!((mean * 50.0 - 1.0).abs() < 0.02, "mean gap {mean}");
            assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
        }
    }

    #[test]
    fn gamma_burstiness_sets_the_cv_and_keeps_the_rate() {
        for (k, want_cv) in [(0.25, 2.0), (4.0, 0.5)] {
            let a = Arrivals {
                max_requests: Some(20_001),
                ..spec(Process::Gamma(k), 100_000)
            };
            let (mean, cv) = mean_cv(&gaps(&schedule(&a, 10.0, 0)));
            assert!((mean * 10.0 - 1.0).abs() < 0.03, "k {k}: mean gap {mean}");
            assert!((cv / want_cv - 1.0).abs() < 0.05, "k {k}: cv {cv}");
        }
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced_and_stop_at_the_duration_or_the_count() {
        let t = schedule(&spec(Process::Constant, 2), 10.0, 0);
        assert_eq!(t.len(), 19, "0.1 s to 1.9 s");
        assert!(gaps(&t).iter().all(|g| (g - 0.1).abs() < 1e-9));
        let a = Arrivals {
            max_requests: Some(5),
            ..spec(Process::Constant, 2)
        };
        assert_eq!(schedule(&a, 10.0, 0).len(), 5);
        assert!(schedule(&a, 0.0, 0).is_empty());
    }

    /// Over a ramp the rate climbs in a straight line: a quarter of the ramp's arrivals
    /// fall in its first half, and after it the rate is the level's.
    #[test]
    fn the_ramp_climbs_in_a_straight_line() {
        let a = Arrivals {
            ramp: Duration::from_secs(10),
            ..spec(Process::Constant, 21)
        };
        let t = schedule(&a, 100.0, 0);
        let before = |s: f64| t.iter().filter(|d| d.as_secs_f64() <= s + 1e-9).count();
        assert_eq!(before(10.0), 500, "rate*ramp/2");
        assert_eq!(before(5.0), 125, "a quarter of the ramp's arrivals");
        assert_eq!(before(20.0) - before(10.0), 1000, "100/s after the ramp");
    }

    #[test]
    fn processes_are_named_and_wrong_names_are_explained() {
        assert_eq!(Process::named("poisson", None).unwrap(), Process::Poisson);
        assert_eq!(
            Process::named("gamma", Some(0.5)).unwrap(),
            Process::Gamma(0.5)
        );
        let e = Process::named("gamma", Some(0.0)).unwrap_err().to_string();
        assert!(e.contains("not above zero"), "{e}");
        let e = Process::named("constant", Some(2.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gamma"), "{e}");
        let e = Process::named("bursty", None).unwrap_err().to_string();
        assert!(e.contains("constant, poisson or gamma"), "{e}");
    }

    #[test]
    fn traces_are_read_in_seconds_or_mooncake_ms_and_checked() {
        let t = read_trace("# start\n1.5\n\n2.0\n2.25\n").unwrap();
        assert_eq!(t, [0.0, 0.5, 0.75].map(Duration::from_secs_f64).to_vec());
        let t =
            read_trace("{\"timestamp\": 0, \"input_length\": 10}\n{\"timestamp\": 250}\n").unwrap();
        assert_eq!(t[1], Duration::from_millis(250));
        let e = read_trace("1\n0.5\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("time order"), "{e}");
        let e = read_trace("1\nsoon\n").unwrap_err().to_string();
        assert!(e.contains("line 2: 'soon'"), "{e}");
        let e = read_trace("{\"ts\": 3}\n").unwrap_err().to_string();
        assert!(e.contains("timestamp"), "{e}");
        assert!(read_trace("# nothing\n").is_err());
    }
}
