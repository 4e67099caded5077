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

/// One request of a run: what is asked, and the answer's length in tokens when the
/// request sets one. A JSON line of a prompts file is this, `{"prompt": "...",
/// "max_tokens": 64}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Prompt {
    #[serde(rename = "prompt")]
    pub text: String,
    /// An answer of exactly this many tokens: the raw client sends `max_tokens` with
    /// `ignore_eos`, the SSE clients `max_tokens` in their body, the WebSocket,
    /// WebTransport and QUIC clients an answer-length message before the prompt
    /// ([`lab_codec::wt::ANSWER_LEN`]). Without it the upstream decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

impl Prompt {
    /// A prompt whose answer's length the upstream decides.
    pub fn new(text: impl Into<String>) -> Self {
        Prompt {
            text: text.into(),
            max_tokens: None,
        }
    }

    /// The prompt asking for an answer of `n` tokens.
    pub fn with_len(mut self, n: Option<u32>) -> Self {
        self.max_tokens = n;
        self
    }
}

impl AsRef<str> for Prompt {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// The prompt's text, as a person reads it.
impl std::fmt::Display for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The most tokens an answer may be asked to have.
pub const MAX_ANSWER_TOKENS: u32 = lab_codec::wt::MAX_ANSWER_LEN;

/// The reference prompts.
pub fn reference() -> Vec<Prompt> {
    REFERENCE.iter().map(|s| Prompt::new(*s)).collect()
}

/// Parses a prompts file: one prompt per line; blank lines and lines starting with `#`
/// are skipped. A literal `\n` in a line stands for a line break inside the prompt.
pub fn parse(text: &str) -> Vec<Prompt> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| Prompt::new(l.replace("\\n", "\n")))
        .collect()
}

/// Parses JSON lines, each an object with a string `prompt` and, if it sets its
/// answer's length, `max_tokens` (1 to [`MAX_ANSWER_TOKENS`]); blank lines are skipped,
/// other fields passed over.
pub fn parse_jsonl(text: &str) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).with_context(|| format!("line {n}: not a JSON object"))?;
        let max_tokens = match v.get("max_tokens") {
            None | Some(serde_json::Value::Null) => None,
            Some(m) => Some(
                m.as_u64()
                    .and_then(lab_codec::wt::answer_len)
                    .with_context(|| {
                        format!("line {n}: max_tokens is {m}; it is the answer's length, 1 to {MAX_ANSWER_TOKENS} tokens")
                    })?,
            ),
        };
        match v.get("prompt") {
            Some(serde_json::Value::String(p)) if !p.trim().is_empty() => {
                out.push(Prompt::new(p.clone()).with_len(max_tokens))
            }
            _ => bail!("line {n}: no string `prompt`, e.g. {{\"prompt\": \"What is TCP?\"}}"),
        }
    }
    Ok(out)
}

/// Writes prompts as JSON lines, as [`parse_jsonl`] reads them: a prompt's line breaks
/// and its answer's length travel whole.
pub fn to_jsonl(prompts: &[Prompt]) -> String {
    let mut s = String::new();
    for p in prompts {
        s.push_str(&serde_json::to_string(p).unwrap_or_default());
        s.push('\n');
    }
    s
}

/// Parses a ShareGPT file (a JSON array of `{"conversations": [{"from": "human",
/// "value": ...}, {"from": "gpt", ...}, ...]}`): each conversation's first turn from
/// `human` or `user`; conversations without one are passed over.
pub fn parse_sharegpt(text: &str) -> Result<Vec<Prompt>> {
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
        .map(Prompt::new)
        .collect())
}

/// Loads a prompts file, refusing an empty one: `.jsonl` is JSON lines, `.json` is
/// ShareGPT, anything else one prompt per line.
pub fn load(path: &Path) -> Result<Vec<Prompt>> {
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
        Lengths::parse_in(s, "words")
    }
}

impl Lengths {
    /// `fixed:N`, `uniform:MIN:MAX` or `normal:MEAN:SD` in `unit` (words, tokens), each
    /// length 1 to 100,000; the errors name the unit.
    pub fn parse_in(s: &str, unit: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let n = |x: &str| {
            x.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| format!("'{x}' is not a length of 1 to 100000 {unit}"))
        };
        let f = |x: &str| {
            x.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 100_000.0)
                .ok_or_else(|| format!("'{x}' is not a number of {unit} from 0 to 100000"))
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
                    return Err(format!("normal: the mean is at least 1 ({unit})"));
                }
                Lengths::Normal(m, f(d)?)
            }
            _ => {
                return Err(format!(
                    "'{s}' is not a length distribution: fixed:N, uniform:MIN:MAX or normal:MEAN:SD ({unit})"
                ));
            }
        };
        Ok(l)
    }

    /// `count` lengths drawn with `seed`: fixed exactly, uniform each as likely, normal
    /// rounded and at least 1, never over 100,000.
    pub fn draw(self, count: usize, seed: u64) -> Vec<u32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = match self {
            Lengths::Normal(m, d) => rand_distr::Normal::new(m, d).ok(),
            _ => None,
        };
        (0..count)
            .map(|_| match (self, &normal) {
                (Lengths::Fixed(n), _) => n,
                (Lengths::Uniform(a, b), _) => rng.random_range(a..=b),
                (_, Some(nd)) => {
                    let v: f64 = rand_distr::Distribution::sample(nd, &mut rng);
                    v.round().clamp(1.0, 100_000.0) as u32
                }
                (Lengths::Normal(m, _), None) => m.round().max(1.0) as u32,
            })
            .collect()
    }
}

/// `count` prompts with lengths from `lengths`, drawn with `seed` (the same seed gives
/// the same prompts): each a question over words from a fixed list, as many words as
/// drawn.
pub fn generated(lengths: Lengths, count: usize, seed: u64) -> Vec<Prompt> {
    use rand::{Rng, SeedableRng};
    const WORDS: [&str; 32] = [
        "network", "packet", "latency", "stream", "token", "model", "server", "client", "window",
        "buffer", "queue", "route", "signal", "frame", "header", "socket", "cache", "thread",
        "kernel", "proxy", "session", "answer", "question", "channel", "loss", "delay", "rate",
        "link", "byte", "order", "timer", "event",
    ];
    // The words come from a stream of their own, after the lengths'.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x776f_7264);
    lengths
        .draw(count, seed)
        .into_iter()
        .map(|len| {
            let mut p = String::from("Tell me about");
            for _ in 0..len.saturating_sub(3) {
                p.push(' ');
                p.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            }
            p.push('?');
            Prompt::new(p)
        })
        .collect()
}

/// Gives each prompt without a length of its own an answer length from `lengths`,
/// drawn with `seed` (in the prompts' order, so the same seed gives the same lengths).
pub fn with_answer_lengths(mut prompts: Vec<Prompt>, lengths: Lengths, seed: u64) -> Vec<Prompt> {
    // A stream of its own, so the prompts' words do not move with it.
    let drawn = lengths.draw(prompts.len(), seed ^ 0x616e_7377);
    for (p, n) in prompts.iter_mut().zip(drawn) {
        p.max_tokens.get_or_insert(n);
    }
    prompts
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
        let p = parse_jsonl(
            "{\"prompt\": \"a b\"}\n\n{\"prompt\": \"c\", \"id\": 3, \"max_tokens\": 9}\n",
        )
        .unwrap();
        assert_eq!(p, [Prompt::new("a b"), Prompt::new("c").with_len(Some(9))]);
        assert_eq!(parse_jsonl(&to_jsonl(&p)).unwrap(), p);
        let nl = [Prompt::new("two\nlines").with_len(Some(3))];
        assert_eq!(parse_jsonl(&to_jsonl(&nl)).unwrap(), nl);
        for bad in ["0", "\"9\"", "1.5", "2000000"] {
            let e = parse_jsonl(&format!("{{\"prompt\": \"a\", \"max_tokens\": {bad}}}\n"))
                .unwrap_err();
            assert!(
                format!("{e:#}").contains("line 1: max_tokens is")
                    && format!("{e:#}").contains("1 to 1000000 tokens"),
                "{e:#}"
            );
        }
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
        assert_eq!(
            parse_sharegpt(g).unwrap(),
            [Prompt::new("first?"), Prompt::new("third?")]
        );
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
        let words = |p: &Prompt| p.text.split(' ').count() as f64;
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

    /// Answer lengths are drawn per prompt, repeat with the seed, keep a line's own
    /// length, and leave the prompts' words alone.
    #[test]
    fn answer_lengths_are_drawn_per_prompt_and_a_lines_own_is_kept() {
        let base = generated(Lengths::Fixed(8), 500, 3);
        let mut mixed = base.clone();
        mixed[0].max_tokens = Some(7);
        let a = with_answer_lengths(mixed.clone(), Lengths::Uniform(20, 40), 3);
        assert_eq!(a[0].max_tokens, Some(7));
        assert!(
            a[1..]
                .iter()
                .all(|p| (20..=40).contains(&p.max_tokens.unwrap()))
        );
        assert!(
            a.iter().any(|p| p.max_tokens == Some(20))
                && a.iter().any(|p| p.max_tokens == Some(40))
        );
        assert!(a.iter().zip(&base).all(|(x, y)| x.text == y.text));
        assert_eq!(
            with_answer_lengths(mixed.clone(), Lengths::Uniform(20, 40), 3),
            a
        );
        assert_ne!(with_answer_lengths(mixed, Lengths::Uniform(20, 40), 4), a);
        let e = Lengths::parse_in("fixed:0", "tokens").unwrap_err();
        assert!(e.contains("1 to 100000 tokens"), "{e}");
    }

    #[test]
    fn file_format() {
        let p = parse("# comment\n\nfirst\n  second  \nline\\nbreak\n");
        assert_eq!(
            p,
            vec![
                Prompt::new("first"),
                Prompt::new("  second"),
                Prompt::new("line\nbreak")
            ]
        );
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
