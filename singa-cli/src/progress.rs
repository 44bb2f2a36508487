//! What `singa train` shows while it goes: a progress bar on a terminal, plain lines otherwise.

use crate::output::errln;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use singa::progress::event_line;
use singa::trainer::{Event, Observer};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Shows training progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The workspace whose run.svg to redraw at each test and at the end (`--plot`).
    plot: Option<PathBuf>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        Progress {
            bar: None,
            plot: None,
        }
    }

    /// Also redraws `workspace`'s run.svg at each test and at the end.
    pub fn plotting(mut self, workspace: Option<PathBuf>) -> Progress {
        self.plot = workspace;
        self
    }

    /// Redraws the plot of the run; a failure is a warning (training goes on), and stops the
    /// plotting.
    fn redraw(&mut self) {
        let Some(ws) = &self.plot else { return };
        let drawn = crate::plot::Run::read(ws).and_then(|run| {
            singa::checkpoint::write_atomically(
                &ws.join("run.svg"),
                crate::plot::svg(&[run]).as_bytes(),
            )
        });
        if let Err(e) = drawn {
            self.print(&format!("warning: --plot: {e}; no more plots"));
            self.plot = None;
        }
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
                        .map(|(k, v)| format!("{k} {}", singa::progress::metric_value(k, *v)))
                        .collect();
                    bar.set_message(msg.join("  "));
                }
                self.print(&line.unwrap_or_default());
                if r.phase == "test" {
                    self.redraw();
                }
            }
            Event::Checkpoint(_) | Event::Warning(_) | Event::Note(_) => {
                self.print(&line.unwrap_or_default())
            }
            Event::Done(_) => {
                self.redraw();
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                errln!("{}", line.unwrap_or_default());
            }
        }
    }
}
