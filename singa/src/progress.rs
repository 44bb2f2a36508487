//! What a training run shows while it goes, as plain lines (the `singa` command draws a
//! progress bar around the same lines on a terminal).

use crate::trainer::{Event, Observer, Report, Summary};
use std::io::Write;

/// Formats a report as one line.
pub fn report_line(r: &Report) -> String {
    let mut s = format!("step {:>7}  {:<5}", r.step, r.phase);
    for (k, v) in &r.metrics {
        s += &format!("  {k} {}", metric_value(k, *v));
    }
    if let Some(rate) = r.samples_per_sec {
        s += &format!("  {} samples/s", thousands(rate));
    }
    if let Some(lr) = r.lr {
        s += &format!("  lr {lr:.3e}");
    }
    s
}

/// A metric's value as a line shows it: an accuracy in percent, a count (`skipped_steps`) or
/// a scale (`loss_scale`) as a whole number, or in exponent form once it is very large, the
/// rest (losses) with four decimals.
pub fn metric_value(name: &str, v: f64) -> String {
    if name.ends_with("accuracy") {
        format!("{:.2}%", v * 100.0)
    } else if v.abs() >= 1e7 {
        format!("{v:.3e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
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
        line += &format!(", test {k} {}", metric_value(k, *v));
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

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn metrics_read_as_what_they_are() {
        assert_eq!(metric_value("accuracy", 0.98765), "98.77%");
        assert_eq!(metric_value("loss", 0.12345), "0.1235");
        assert_eq!(metric_value("skipped_steps", 3.0), "3");
        assert_eq!(metric_value("loss_scale", 65536.0), "65536");
        assert_eq!(metric_value("loss_scale", 2f64.powi(100)), "1.268e30");
        assert_eq!(metric_value("loss", f64::NAN), "NaN");
    }
}
