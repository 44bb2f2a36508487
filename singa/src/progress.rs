//! What a training run shows while it goes, as plain lines (the `singa` command draws a
//! progress bar around the same lines on a terminal).

use crate::trainer::{Event, Observer, Report, Summary};
use std::io::Write;

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

/// The line an event prints, if any (the start, reports, checkpoints, warnings, the end).
pub fn event_line(event: &Event<'_>) -> Option<String> {
    match event {
        Event::Start {
            first_step,
            train_steps,
            device,
        } => Some(format!(
            "training on {device}: steps {}..{train_steps}",
            first_step + 1
        )),
        Event::Step(_) => None,
        Event::Report(r) => Some(report_line(r)),
        Event::Checkpoint(p) => Some(format!("checkpoint {}", p.display())),
        Event::Warning(w) => Some(format!("warning: {w}")),
        Event::Note(n) => Some(n.to_string()),
        Event::Done(s) => Some(summary_line(s)),
    }
}

/// Prints every event's line to standard error.
#[derive(Default)]
pub struct Lines;

impl Observer for Lines {
    fn event(&mut self, event: Event<'_>) {
        if let Some(line) = event_line(&event) {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}
