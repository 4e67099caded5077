//! Prompts: the reference benchmark's ten, or a file of one prompt per line.

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

/// Loads a prompts file, refusing an empty one.
pub fn load(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read prompts file {}", path.display()))?;
    let prompts = parse(&text);
    if prompts.is_empty() {
        bail!(
            "prompts file {} has no prompts: write one prompt per line (lines starting with # are comments)",
            path.display()
        );
    }
    Ok(prompts)
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
