//! Deterministic, realistic-looking token sequences for the mock LLM.
//!
//! The answer to a prompt is a pure function of (seed, model, prompt): every approach
//! therefore carries the identical tokens, and a client can verify what it received.
//! The text mixes what real chat models stream: word pieces with leading spaces,
//! punctuation, paragraph breaks, lists, inline and fenced code, non-ASCII text, and the
//! characters JSON must escape (`< > & " \`). Response lengths follow a log-normal
//! spread (median about 190 tokens) clamped to 15..=1100, as chat answers do.
//!
//! Pure code: no clocks, no I/O. Timing lives in [`Schedule`].

use lab_codec::rng::SplitMix64;
use std::time::Duration;

/// Shortest and longest answer, in tokens.
pub const MIN_TOKENS: usize = 15;
pub const MAX_TOKENS: usize = 1100;

/// FNV-1a over the inputs, so the key is stable across platforms and versions.
pub fn key(seed: u64, model: &str, prompt: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in [model.as_bytes(), &[0xff], prompt.as_bytes()] {
        for &b in part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "on",
    "this",
    "by",
    "are",
    "be",
    "can",
    "an",
    "or",
    "each",
    "when",
    "which",
    "you",
    "your",
    "data",
    "value",
    "function",
    "memory",
    "network",
    "packet",
    "latency",
    "stream",
    "token",
    "server",
    "client",
    "request",
    "response",
    "connection",
    "buffer",
    "queue",
    "stack",
    "element",
    "order",
    "simple",
    "example",
    "result",
    "time",
    "first",
    "last",
    "number",
    "because",
    "however",
    "usually",
    "quickly",
    "structure",
    "algorithm",
    "complexity",
    "prime",
    "light",
    "water",
    "color",
    "pattern",
    "observer",
    "subject",
    "state",
    "change",
    "update",
    "list",
    "table",
    "key",
    "index",
    "search",
    "binary",
    "sorted",
    "half",
    "step",
    "reliable",
    "ordered",
    "delivery",
    "protocol",
    "handshake",
    "bandwidth",
    "throughput",
    "congestion",
    "window",
    "retransmission",
    "capital",
    "city",
    "France",
    "Paris",
    "river",
    "museum",
    "history",
    "haiku",
    "code",
    "compiler",
    "variable",
    "string",
    "reverse",
    "character",
    "sunlight",
    "raindrop",
    "refraction",
    "dispersion",
    "reflection",
    "spectrum",
    "angle",
    "degrees",
];

const NON_ASCII: &[&str] = &[
    " café",
    " naïve",
    " —",
    " 東京",
    " 🚀",
    " über",
    " résumé",
    " “quoted”",
    " π",
    " ≈",
    " 日本語",
    " ñ",
];

const CODE_LINES: &[&[&str]] = &[
    &[
        "fn", " reverse", "(s", ":", " &", "str", ")", " ->", " String", " {",
    ],
    &["    ", "s", ".chars", "()", ".rev", "()", ".collect", "()"],
    &["}"],
    &["if", " a", " <", " b", " &&", " c", " >", " d", " {"],
    &["    ", "println", "!(\"", "{}\\", "n\"", ",", " x", ");"],
    &["let", " path", " =", " \"", "C", ":\\\\", "tmp", "\"", ";"],
    &[
        "return", " <", "div", " class", "=\"", "x", "\">", "&", "amp", ";</", "div", ">",
    ],
    &["\t", "i", " +=", " 1", ";"],
];

/// Generates the token sequence for one answer.
///
/// `max_tokens` caps the length (a request's `max_tokens`, or the server's own cap).
pub fn tokens(seed: u64, model: &str, prompt: &str, max_tokens: Option<usize>) -> Vec<String> {
    sized(seed, model, prompt, None, max_tokens)
}

/// The answer with `exact` tokens whatever its drawn length (a request's `max_tokens`
/// with `ignore_eos`, as vLLM's benchmarks ask), then capped by `cap` (the server's own
/// cap). An answer of `exact` tokens begins with the tokens of the drawn answer, so
/// every length of one prompt shares its start.
pub fn sized(
    seed: u64,
    model: &str,
    prompt: &str,
    exact: Option<usize>,
    cap: Option<usize>,
) -> Vec<String> {
    let mut rng = SplitMix64::new(key(seed, model, prompt));
    let drawn = answer_len(&mut rng);
    let len = exact.unwrap_or(drawn).min(cap.unwrap_or(usize::MAX)).max(1);
    let mut out: Vec<String> = Vec::with_capacity(len + 16);
    while out.len() < len {
        let roll = rng.f64();
        if roll < 0.05 && !out.is_empty() {
            code_block(&mut rng, &mut out);
        } else if roll < 0.10 && !out.is_empty() {
            list(&mut rng, &mut out);
        } else {
            sentence(&mut rng, &mut out);
            if rng.chance(0.18) {
                out.push("\n\n".into());
            }
        }
    }
    out.truncate(len);
    out
}

/// Log-normal with median ~190 tokens, clamped to [MIN_TOKENS, MAX_TOKENS].
fn answer_len(rng: &mut SplitMix64) -> usize {
    let l = (190f64.ln() + 0.8 * rng.normal()).exp();
    (l.round() as usize).clamp(MIN_TOKENS, MAX_TOKENS)
}

fn word(rng: &mut SplitMix64, capital: bool, out: &mut Vec<String>) {
    let w = rng.pick(WORDS);
    let w = if capital {
        let mut c = w.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    } else {
        w.to_owned()
    };
    let lead = if capital && out.last().is_none_or(|t| t.ends_with('\n')) {
        ""
    } else {
        " "
    };
    // Long words arrive as two pieces, as BPE tokenizers split them.
    if w.chars().count() > 7 && rng.chance(0.6) {
        let cut = w
            .char_indices()
            .nth(w.chars().count() / 2)
            .map_or(w.len(), |(i, _)| i);
        out.push(format!("{lead}{}", &w[..cut]));
        out.push(w[cut..].to_owned());
    } else {
        out.push(format!("{lead}{w}"));
    }
}

fn sentence(rng: &mut SplitMix64, out: &mut Vec<String>) {
    let n = 6 + rng.below(16);
    for i in 0..n {
        word(rng, i == 0, out);
        let r = rng.f64();
        if r < 0.04 {
            out.push(rng.pick(NON_ASCII).to_owned());
        } else if r < 0.07 {
            out.push(",".into());
        } else if r < 0.09 {
            out.push(" `".into());
            out.push(
                rng.pick(&[
                    "hash", "map", "O(log", "n)", "<T>", "a && b", "\"x\"", "\\n",
                ])
                .to_owned(),
            );
            out.push("`".into());
        } else if r < 0.10 {
            out.push(" (".into());
            word(rng, false, out);
            out.push(")".into());
        }
    }
    out.push(
        rng.pick(&[".", ".", ".", ".", "!", "?", ":", ";"])
            .to_owned(),
    );
}

fn list(rng: &mut SplitMix64, out: &mut Vec<String>) {
    out.push("\n\n".into());
    let items = 2 + rng.below(4);
    let numbered = rng.chance(0.5);
    for i in 0..items {
        if numbered {
            out.push(format!("{}", i + 1));
            out.push(".".into());
        } else {
            out.push("-".into());
        }
        out.push(" **".into());
        word(rng, true, out);
        out.push("**".into());
        for _ in 0..(2 + rng.below(8)) {
            word(rng, false, out);
        }
        out.push("\n".into());
    }
    out.push("\n".into());
}

fn code_block(rng: &mut SplitMix64, out: &mut Vec<String>) {
    out.push("\n\n".into());
    out.push("```".into());
    out.push(
        rng.pick(&["rust", "go", "python", "html", "text"])
            .to_owned(),
    );
    out.push("\n".into());
    for _ in 0..(2 + rng.below(4)) {
        for t in CODE_LINES[rng.below(CODE_LINES.len())] {
            out.push((*t).to_owned());
        }
        out.push("\n".into());
    }
    out.push("```".into());
    out.push("\n\n".into());
}

/// A deterministic estimate of the prompt's token count for `usage`: about four
/// characters a token, plus the chat template's overhead.
pub fn prompt_tokens(prompt: &str) -> u64 {
    (prompt.chars().count() as u64).div_ceil(4) + 10
}

/// When each token of an answer is due, relative to the request's arrival.
///
/// Token 0 is due after `ttft`, each later one `tbt` after the one before; each interval
/// is scaled by a factor uniform in [1 - jitter, 1 + jitter], drawn from a stream seeded
/// like the text, so timing is reproducible too.
#[derive(Debug, Clone)]
pub struct Schedule {
    rng: SplitMix64,
    ttft: Duration,
    tbt: Duration,
    jitter: f64,
    at: Duration,
    first: bool,
}

impl Schedule {
    pub fn new(key: u64, ttft: Duration, tbt: Duration, jitter: f64) -> Self {
        Self {
            rng: SplitMix64::new(key ^ 0x5DEE_CE66_D1CE_5EED),
            ttft,
            tbt,
            jitter: jitter.clamp(0.0, 1.0),
            at: Duration::ZERO,
            first: true,
        }
    }

    fn scaled(&mut self, d: Duration) -> Duration {
        if self.jitter == 0.0 || d.is_zero() {
            return d;
        }
        let f = 1.0 + self.jitter * (2.0 * self.rng.f64() - 1.0);
        d.mul_f64(f)
    }

    /// The offset at which the next token is due.
    pub fn next_due(&mut self) -> Duration {
        let step = if self.first {
            self.first = false;
            self.scaled(self.ttft)
        } else {
            self.scaled(self.tbt)
        };
        self.at += step;
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPTS: [&str; 4] = [
        "What is the capital of France?",
        "Write a haiku about programming.",
        "Compare TCP and UDP in three sentences.",
        "Describe the observer design pattern briefly.",
    ];

    #[test]
    fn deterministic_in_seed_model_prompt() {
        for p in PROMPTS {
            assert_eq!(tokens(1, "m", p, None), tokens(1, "m", p, None));
            assert_ne!(tokens(1, "m", p, None), tokens(2, "m", p, None));
            assert_ne!(tokens(1, "m", p, None), tokens(1, "n", p, None));
        }
        assert_ne!(
            tokens(1, "m", PROMPTS[0], None),
            tokens(1, "m", PROMPTS[1], None)
        );
    }

    #[test]
    fn the_sequence_is_fixed_across_versions() {
        // A change here changes every recorded digest: do it only on purpose.
        let t = tokens(1, "gemma3:12b", "What is the capital of France?", Some(6));
        assert_eq!(t.len(), 6);
        assert_eq!(key(1, "gemma3:12b", "x"), key(1, "gemma3:12b", "x"));
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn lengths_spread_like_a_chat_model() {
        let mut lens: Vec<usize> = (0..2000)
            .map(|i| tokens(7, "m", &format!("prompt {i}"), None).len())
            .collect();
        lens.sort_unstable();
        let (min, max, med) = (lens[0], lens[lens.len() - 1], lens[lens.len() / 2]);
        assert!(min >= MIN_TOKENS && max <= MAX_TOKENS, "{min}..{max}");
        assert!(min <= 30, "shortest {min}");
        assert!(max >= 900, "longest {max}");
        assert!((150..=240).contains(&med), "median {med}");
    }

    #[test]
    fn text_has_every_kind_of_piece() {
        let all: Vec<String> = (0..200)
            .flat_map(|i| tokens(1, "m", &format!("p{i}"), None))
            .collect();
        let joined = all.concat();
        for needle in ["<", ">", "&", "\"", "\\", "\n", "```", " the"] {
            assert!(joined.contains(needle), "missing {needle:?}");
        }
        assert!(!joined.is_ascii(), "no non-ASCII");
        assert!(all.iter().all(|t| !t.is_empty()), "an empty token");
        assert!(!joined.contains('\r'), "CR cannot travel over SSE");
        assert!(all.iter().any(|t| t.starts_with(' ')));
    }

    #[test]
    fn max_tokens_caps() {
        for p in PROMPTS {
            assert!(tokens(1, "m", p, Some(5)).len() <= 5);
        }
    }

    /// An exact length is kept whether it is under or over the drawn one, the server's
    /// cap still caps it, and every length of a prompt begins with the same tokens.
    #[test]
    fn an_exact_length_is_kept_and_shares_the_drawn_answers_start() {
        for p in PROMPTS {
            let drawn = tokens(1, "m", p, None);
            for n in [1, 7, drawn.len(), drawn.len() + 300, 3000] {
                let t = sized(1, "m", p, Some(n), None);
                assert_eq!(t.len(), n, "{p}");
                let k = n.min(drawn.len());
                assert_eq!(t[..k], drawn[..k], "{p} at {n}");
            }
            assert_eq!(sized(1, "m", p, Some(500), Some(40)).len(), 40);
            assert_eq!(sized(1, "m", p, None, None), drawn);
        }
    }

    #[test]
    fn schedule_without_jitter_is_exact() {
        let mut s = Schedule::new(
            1,
            Duration::from_millis(250),
            Duration::from_millis(35),
            0.0,
        );
        assert_eq!(s.next_due(), Duration::from_millis(250));
        assert_eq!(s.next_due(), Duration::from_millis(285));
        assert_eq!(s.next_due(), Duration::from_millis(320));
    }

    #[test]
    fn schedule_jitter_is_bounded_reproducible_and_unbiased() {
        let mk = || {
            Schedule::new(
                9,
                Duration::from_millis(100),
                Duration::from_millis(10),
                0.2,
            )
        };
        let (mut a, mut b) = (mk(), mk());
        let first = a.next_due();
        assert_eq!(first, b.next_due());
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let mut prev = first;
        let mut sum = Duration::ZERO;
        for _ in 0..10_000 {
            let d = a.next_due();
            assert_eq!(d, b.next_due());
            let gap = d - prev;
            assert!(gap >= Duration::from_millis(8) && gap <= Duration::from_millis(12));
            sum += gap;
            prev = d;
        }
        let mean = sum.as_secs_f64() / 10_000.0;
        assert!((mean - 0.010).abs() < 0.0002, "mean gap {mean}");
    }
}
