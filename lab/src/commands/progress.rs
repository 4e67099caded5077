//! What a person sees while a lab is built and a run goes on: on a terminal, a line at
//! the bottom (indicatif) that says what is happening and is redrawn ten times a
//! second, with prompts done of all and the time so far; otherwise, a plain line on
//! stderr at each stage. The prompt lines go to stdout either way.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// The progress of one command.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("terminal", &self.bar.is_some())
            .finish()
    }
}

impl Progress {
    /// A progress line on stderr if stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar: Some(bar) }
    }

    /// Says what is happening now.
    pub fn stage(&self, what: &str) {
        match &self.bar {
            Some(b) => b.set_message(what.to_owned()),
            None => tell!("lab: {what}"),
        }
    }

    /// From here on, counts `total` prompts.
    pub fn prompts(&self, total: usize) {
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} prompts  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
    }

    /// Prints a line on stdout above the progress line, and counts a prompt if `done`.
    pub fn line(&self, text: &str, done: bool) {
        match &self.bar {
            Some(b) => {
                b.suspend(|| say!("{text}"));
                if done {
                    b.inc(1);
                }
            }
            None => say!("{text}"),
        }
    }

    /// Removes the progress line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
