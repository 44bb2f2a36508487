//! What `singa train` shows while it goes: a progress bar on a terminal, plain lines otherwise.

use crate::output::errln;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use singa::progress::event_line;
use singa::trainer::{Event, Observer};
use std::io::IsTerminal;

/// Shows training progress.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        Progress { bar: None }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => errln!("{line}"),
        }
    }
}

impl Observer for Progress {
    fn event(&mut self, event: Event<'_>) {
        let line = event_line(&event);
        match event {
            Event::Start {
                first_step,
                train_steps,
                ..
            } => {
                self.print(&line.unwrap_or_default());
                if std::io::stderr().is_terminal() {
                    let bar = ProgressBar::with_draw_target(
                        Some(train_steps),
                        ProgressDrawTarget::stderr(),
                    );
                    bar.set_style(
                        ProgressStyle::with_template("{bar:32.cyan/blue} {pos:>6}/{len} steps  {per_sec:>12}  eta {eta:>4}  {msg}")
                            .expect("a valid template")
                            .progress_chars("█▉▊▋▌▍▎▏ "),
                    );
                    bar.set_position(first_step);
                    self.bar = Some(bar);
                }
            }
            Event::Step(step) => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step);
                }
            }
            Event::Report(r) => {
                if let (Some(bar), "train") = (&self.bar, r.phase) {
                    let msg: Vec<String> = r
                        .metrics
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect();
                    bar.set_message(msg.join("  "));
                }
                self.print(&line.unwrap_or_default());
            }
            Event::Checkpoint(_) | Event::Warning(_) => self.print(&line.unwrap_or_default()),
            Event::Done(_) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                errln!("{}", line.unwrap_or_default());
            }
        }
    }
}
