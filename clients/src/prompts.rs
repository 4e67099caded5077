//! Prompts: the reference benchmark's ten; a file of one prompt per line, JSON lines
//! with a `prompt` each, or a ShareGPT JSON file (each conversation's first human turn);
//! or prompts of lengths drawn from a distribution.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// The ten prompts of the reference benchmark (its `benchmark/main.go`), in order.
pub const REFERENCE: [&str; 10] = [
    "What is the capital of France?",
    "Explain the difference between a stack and a queue.",
    "Write a haiku about programming.",
    "What are the first 10 prime numbers?",
    "Explain how a hash table works in simple terms.",
    "Write a short Go function that reverses a string.",
    "What causes a rainbow to appear?",
    "Compare TCP and UDP in three sentences.",
    "What is the time complexity of binary search and why?",
    "Describe the observer design pattern briefly.",
];

/// The reference prompts as owned strings.
pub fn reference() -> Vec<String> {
    REFERENCE.iter().map(|s| (*s).to_owned()).collect()
}

/// Parses a prompts file: one prompt per line; blank lines and lines starting with `#`
/// are skipped. A literal `\n` in a line stands for a line break inside the prompt.
pub fn parse(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.replace("\\n", "\n"))
        .collect()
}

/// Parses JSON lines, each an object with a string `prompt` (blank lines skipped).
/// A line's `max_tokens` is refused: lab's WebSocket, WebTransport and QUIC framings
/// carry the prompt alone, so an answer's length is set for the whole run
/// (`llm.sampling.max_tokens`, `mock.max_tokens`, `workload.load.tokens`).
pub fn parse_jsonl(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).with_context(|| format!("line {n}: not a JSON object"))?;
        if v.contains_key("max_tokens") {
            bail!(
                "line {n}: a prompt's own max_tokens is not supported: the answer's length is the run's (llm.sampling.max_tokens for a real model, mock.max_tokens or workload.load.tokens for the mock)"
            );
        }
        match v.get("prompt") {
            Some(serde_json::Value::String(p)) if !p.trim().is_empty() => out.push(p.clone()),
            _ => bail!("line {n}: no string `prompt`, e.g. {{\"prompt\": \"What is TCP?\"}}"),
        }
    }
    Ok(out)
}

/// Parses a ShareGPT file (a JSON array of `{"conversations": [{"from": "human",
/// "value": ...}, {"from": "gpt", ...}, ...]}`): each conversation's first turn from
/// `human` or `user`; conversations without one are passed over.
pub fn parse_sharegpt(text: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Turn {
        from: String,
        value: String,
    }
    #[derive(serde::Deserialize)]
    struct Conversation {
        #[serde(default)]
        conversations: Vec<Turn>,
    }
    let all: Vec<Conversation> = serde_json::from_str(text)
        .context("not a ShareGPT file: a JSON array of objects with `conversations`")?;
    Ok(all
        .into_iter()
        .filter_map(|c| {
            c.conversations
                .into_iter()
                .find(|t| t.from == "human" || t.from == "user")
                .map(|t| t.value)
                .filter(|v| !v.trim().is_empty())
        })
        .collect())
}

/// Loads a prompts file, refusing an empty one: `.jsonl` is JSON lines, `.json` is
/// ShareGPT, anything else one prompt per line.
pub fn load(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read prompts file {}", path.display()))?;
    let prompts = match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => {
            parse_jsonl(&text).with_context(|| format!("prompts file {}", path.display()))?
        }
        Some("json") => {
            parse_sharegpt(&text).with_context(|| format!("prompts file {}", path.display()))?
        }
        _ => parse(&text),
    };
    if prompts.is_empty() {
        bail!(
            "prompts file {} has no prompts: write one prompt per line (lines starting with # are comments)",
            path.display()
        );
    }
    Ok(prompts)
}

/// How long generated prompts are, in words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lengths {
    Fixed(u32),
    /// From the first to the second, inclusive, each as likely.
    Uniform(u32, u32),
    /// Normal with a mean and a standard deviation, rounded, at least 1.
    Normal(f64, f64),
}

impl std::str::FromStr for Lengths {
    type Err = String;
    /// `fixed:128`, `uniform:64:512` or `normal:256:64` (mean and deviation), in words.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let n = |x: &str| {
            x.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| format!("'{x}' is not a length of 1 to 100000 words"))
        };
        let f = |x: &str| {
            x.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 100_000.0)
                .ok_or_else(|| format!("'{x}' is not a number of words from 0 to 100000"))
        };
        let l = match parts.as_slice() {
            ["fixed", a] => Lengths::Fixed(n(a)?),
            ["uniform", a, b] => {
                let (a, b) = (n(a)?, n(b)?);
                if a > b {
                    return Err(format!("uniform:{a}:{b}: the first is over the second"));
                }
                Lengths::Uniform(a, b)
            }
            ["normal", m, d] => {
                let m = f(m)?;
                if m < 1.0 {
                    return Err("normal: the mean is at least 1 word".into());
                }
                Lengths::Normal(m, f(d)?)
            }
            _ => {
                return Err(format!(
                    "'{s}' is not a length distribution: fixed:N, uniform:MIN:MAX or normal:MEAN:SD (words)"
                ));
            }
        };
        Ok(l)
    }
}

/// `count` prompts with lengths from `lengths`, drawn with `seed` (the same seed gives
/// the same prompts): each a question over words from a fixed list, as many words as
/// drawn.
pub fn generated(lengths: Lengths, count: usize, seed: u64) -> Vec<String> {
    use rand::{Rng, SeedableRng};
    const WORDS: [&str; 32] = [
        "network", "packet", "latency", "stream", "token", "model", "server", "client", "window",
        "buffer", "queue", "route", "signal", "frame", "header", "socket", "cache", "thread",
        "kernel", "proxy", "session", "answer", "question", "channel", "loss", "delay", "rate",
        "link", "byte", "order", "timer", "event",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = match lengths {
        Lengths::Normal(m, d) => rand_distr::Normal::new(m, d).ok(),
        _ => None,
    };
    (0..count)
        .map(|_| {
            let len = match (lengths, &normal) {
                (Lengths::Fixed(n), _) => n,
                (Lengths::Uniform(a, b), _) => rng.random_range(a..=b),
                (_, Some(nd)) => {
                    let v: f64 = rand_distr::Distribution::sample(nd, &mut rng);
                    v.round().max(1.0) as u32
                }
                (Lengths::Normal(m, _), None) => m.round().max(1.0) as u32,
            };
            let mut p = String::from("Tell me about");
            for _ in 0..len.saturating_sub(3) {
                p.push(' ');
                p.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            }
            p.push('?');
            p
        })
        .collect()
}

/// Checks that every urgent prompt number (from 1, as prompt lines show them) is one of
/// the `total` prompts a run sends, so a typo is an error and not a run without urgent
/// prompts.
pub fn check_urgent(urgent: &[u64], total: usize) -> anyhow::Result<()> {
    match urgent.iter().find(|&&n| n == 0 || n > total as u64) {
        Some(n) => anyhow::bail!(
            "urgent prompt {n} is not one of the {total} prompts this run sends (numbered from 1, across repeats)"
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_has_ten() {
        assert_eq!(reference().len(), 10);
        assert_eq!(REFERENCE[0], "What is the capital of France?");
    }

    #[test]
    fn json_lines_and_sharegpt_files_give_their_prompts() {
        let p = parse_jsonl("{\"prompt\": \"a b\"}\n\n{\"prompt\": \"c\", \"id\": 3}\n").unwrap();
        assert_eq!(p, ["a b", "c"]);
        let e = parse_jsonl("{\"prompt\": \"a\", \"max_tokens\": 9}\n").unwrap_err();
        assert!(
            e.to_string().contains("line 1: a prompt's own max_tokens"),
            "{e}"
        );
        let e = parse_jsonl("{\"text\": \"a\"}\n").unwrap_err();
        assert!(e.to_string().contains("line 1: no string `prompt`"), "{e}");
        let e = parse_jsonl("a\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("line 1: not a JSON object"),
            "{e:#}"
        );
        let g = r#"[{"id": "x", "conversations": [{"from": "system", "value": "s"},
                     {"from": "human", "value": "first?"}, {"from": "gpt", "value": "A."},
                     {"from": "human", "value": "second?"}]},
                    {"conversations": [{"from": "gpt", "value": "only an answer"}]},
                    {"conversations": [{"from": "user", "value": "third?"}]}]"#;
        assert_eq!(parse_sharegpt(g).unwrap(), ["first?", "third?"]);
        assert!(parse_sharegpt("{}").is_err());
    }

    #[test]
    fn lengths_are_parsed_and_bad_ones_explained() {
        assert_eq!("fixed:128".parse(), Ok(Lengths::Fixed(128)));
        assert_eq!("uniform:64:512".parse(), Ok(Lengths::Uniform(64, 512)));
        assert_eq!("normal:256:64".parse(), Ok(Lengths::Normal(256.0, 64.0)));
        for (bad, why) in [
            ("uniform:9:3", "over the second"),
            ("fixed:0", "1 to 100000"),
            ("normal:0.5:1", "at least 1"),
            ("gauss:3", "fixed:N, uniform:MIN:MAX or normal:MEAN:SD"),
        ] {
            let e = bad.parse::<Lengths>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// Generated prompts have the drawn lengths: fixed exactly, uniform within its range
    /// and over all of it, normal with its mean and deviation; a seed repeats.
    #[test]
    fn generated_prompts_have_the_drawn_lengths() {
        let words = |p: &String| p.split(' ').count() as f64;
        let f = generated(Lengths::Fixed(40), 50, 1);
        assert!(f.iter().all(|p| words(p) == 40.0), "{:?}", f[0]);
        let u = generated(Lengths::Uniform(10, 20), 2000, 1);
        let lens: Vec<f64> = u.iter().map(words).collect();
        assert!(lens.iter().all(|&l| (10.0..=20.0).contains(&l)));
        assert!(lens.contains(&10.0) && lens.contains(&20.0));
        let n = generated(Lengths::Normal(200.0, 20.0), 4000, 1);
        let lens: Vec<f64> = n.iter().map(words).collect();
        let mean = lens.iter().sum::<f64>() / lens.len() as f64;
        let sd = (lens.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lens.len() as f64).sqrt();
        assert!((mean / 200.0 - 1.0).abs() < 0.02, "{mean}");
        assert!((sd / 20.0 - 1.0).abs() < 0.05, "{sd}");
        assert_eq!(generated(Lengths::Normal(200.0, 20.0), 4000, 1), n);
        assert_ne!(generated(Lengths::Normal(200.0, 20.0), 4000, 2), n);
    }

    #[test]
    fn file_format() {
        let p = parse("# comment\n\nfirst\n  second  \nline\\nbreak\n");
        assert_eq!(p, vec!["first", "  second", "line\nbreak"]);
    }

    #[test]
    fn empty_file_is_an_error() {
        let path = std::env::temp_dir().join(format!("lab-prompts-{}.txt", std::process::id()));
        std::fs::write(&path, "# nothing\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("no prompts"), "{e}");
        assert!(load(Path::new("/nonexistent/p.txt")).is_err());
    }
}
