//! What a training run shows while it goes: a progress bar on a terminal, plain lines otherwise.

use crate::trainer::{Event, Observer, Report, Summary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Formats a report as one line.
pub fn report_line(r: &Report) -> String {
    let mut s = format!("step {:>7}  {:<5}", r.step, r.phase);
    for (k, v) in &r.metrics {
        if k.ends_with("accuracy") {
            s += &format!("  {k} {:.2}%", v * 100.0);
        } else {
            s += &format!("  {k} {v:.4}");
        }
    }
    if let Some(rate) = r.samples_per_sec {
        s += &format!("  {} samples/s", thousands(rate));
    }
    if let Some(lr) = r.lr {
        s += &format!("  lr {lr:.3e}");
    }
    s
}

/// `12345.6` as `12,346`.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line summing up a run.
pub fn summary_line(s: &Summary) -> String {
    let mut line = format!("done: {} steps in {:.1} s", s.steps, s.wall_seconds);
    for (k, v) in &s.test {
        if k.ends_with("accuracy") {
            line += &format!(", test {k} {:.2}%", v * 100.0);
        } else {
            line += &format!(", test {k} {v:.4}");
        }
    }
    line += &format!(", {} samples/s", thousands(s.samples_per_sec));
    line
}

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
            None => eprintln!("{line}"),
        }
    }
}

impl Observer for Progress {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start {
                first_step,
                train_steps,
                device,
            } => {
                self.print(&format!(
                    "training on {device}: steps {}..{train_steps}",
                    first_step + 1
                ));
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
                self.print(&report_line(r));
            }
            Event::Checkpoint(p) => self.print(&format!("checkpoint {}", p.display())),
            Event::Warning(w) => self.print(&format!("warning: {w}")),
            Event::Done(s) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                eprintln!("{}", summary_line(s));
            }
        }
    }
}
