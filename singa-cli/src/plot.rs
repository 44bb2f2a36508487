//! `singa plot`: the loss and accuracy of one or more runs, against steps and against wall
//! time, as an SVG file.
//!
//! Written by hand rather than with a plotting crate: an SVG is text, the figure is four
//! panels of lines, and this way it needs no fonts, no system libraries and nothing to
//! configure on a headless machine (the text is left to the viewer's fonts).

use singa_core::{Error, Result};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One record of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    step: f64,
    elapsed: f64,
    test: bool,
    loss: Option<f64>,
    accuracy: Option<f64>,
}

/// A run: its name (the workspace's folder) and its records.
#[derive(Clone, Debug)]
pub struct Run {
    name: String,
    records: Vec<Record>,
}

impl Run {
    /// Reads the `metrics.jsonl` of `workspace` (or the file itself, if given one).
    pub fn read(workspace: &Path) -> Result<Run> {
        let file = if workspace.is_dir() {
            workspace.join("metrics.jsonl")
        } else {
            workspace.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let mut records = Vec::new();
        let mut offset = 0u64;
        for line in text.lines() {
            if !line.trim().is_empty() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::data(&file, offset, format!("not a JSON record: {e}")))?;
                let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
                // With several loss layers the names carry the layer (`loss/loss`): take the
                // first of each kind.
                let first = |suffix: &str| {
                    num(suffix).or_else(|| {
                        v.as_object()?
                            .iter()
                            .find(|(k, _)| k.ends_with(&format!("/{suffix}")))
                            .and_then(|(_, x)| x.as_f64())
                    })
                };
                let (Some(step), Some(elapsed)) = (num("step"), num("elapsed")) else {
                    return Err(Error::data(
                        &file,
                        offset,
                        "a record without \"step\" and \"elapsed\"",
                    ));
                };
                records.push(Record {
                    step,
                    elapsed,
                    test: v.get("phase").and_then(|p| p.as_str()) == Some("test"),
                    loss: first("loss").filter(|x| x.is_finite()),
                    accuracy: first("accuracy").filter(|x| x.is_finite()),
                });
            }
            offset += line.len() as u64 + 1;
        }
        if records.is_empty() {
            return Err(Error::data(&file, 0, "no records to plot"));
        }
        let name = workspace
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| workspace.display().to_string());
        Ok(Run { name, records })
    }
}

/// Where the figure goes when `--out` is not given: `run.svg` in the first workspace.
pub fn default_out(workspaces: &[PathBuf]) -> PathBuf {
    match workspaces.first() {
        Some(w) if w.is_dir() => w.join("run.svg"),
        _ => PathBuf::from("run.svg"),
    }
}

/// Colours of the runs, in order (then again).
const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
/// Room for the axis labels: left, top, right, bottom.
const MARGIN: (f64, f64, f64, f64) = (64.0, 34.0, 28.0, 44.0);
const LEGEND_H: f64 = 28.0;

/// What a panel shows.
struct Panel {
    title: &'static str,
    x_label: &'static str,
    x: fn(&Record) -> f64,
    y: fn(&Record) -> Option<f64>,
    /// Accuracy is a fraction shown as per cent.
    percent: bool,
}

const PANELS: [Panel; 4] = [
    Panel {
        title: "loss",
        x_label: "step",
        x: |r| r.step,
        y: |r| r.loss,
        percent: false,
    },
    Panel {
        title: "accuracy",
        x_label: "step",
        x: |r| r.step,
        y: |r| r.accuracy,
        percent: true,
    },
    Panel {
        title: "loss",
        x_label: "seconds",
        x: |r| r.elapsed,
        y: |r| r.loss,
        percent: false,
    },
    Panel {
        title: "accuracy",
        x_label: "seconds",
        x: |r| r.elapsed,
        y: |r| r.accuracy,
        percent: true,
    },
];

/// The figure of `runs` as an SVG document: loss and accuracy, training (solid) and test
/// (dashed, with dots), against steps (top) and wall time (bottom).
pub fn svg(runs: &[Run]) -> String {
    let width = 2.0 * PANEL_W;
    let height = LEGEND_H + 2.0 * PANEL_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    legend(&mut out, runs);
    for (i, panel) in PANELS.iter().enumerate() {
        let (col, row) = ((i % 2) as f64, (i / 2) as f64);
        draw_panel(
            &mut out,
            runs,
            panel,
            col * PANEL_W,
            LEGEND_H + row * PANEL_H,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn legend(out: &mut String, runs: &[Run]) {
    let mut x = MARGIN.0;
    for (k, run) in runs.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="16" x2="{}" y2="16" stroke="{colour}" stroke-width="2"/><text x="{}" y="20">{}</text>"#,
            x + 20.0,
            x + 26.0,
            escape(&run.name)
        );
        x += 40.0 + 7.0 * run.name.chars().count() as f64;
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="20" fill="#555">solid: training · dashed: test</text>"##,
        x + 10.0
    );
}

fn draw_panel(out: &mut String, runs: &[Run], p: &Panel, left: f64, top: f64) {
    let (x0, y0) = (left + MARGIN.0, top + MARGIN.1);
    let (w, h) = (PANEL_W - MARGIN.0 - MARGIN.2, PANEL_H - MARGIN.1 - MARGIN.3);
    let points: Vec<(f64, f64)> = runs
        .iter()
        .flat_map(|r| r.records.iter())
        .filter_map(|r| Some(((p.x)(r), (p.y)(r)?)))
        .collect();
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{} against {}</text>"#,
        x0 + w / 2.0,
        top + 20.0,
        p.title,
        if p.x_label == "step" {
            "steps"
        } else {
            "wall time"
        }
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##
    );
    if points.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#999">no {} recorded</text>"##,
            x0 + w / 2.0,
            y0 + h / 2.0,
            p.title
        );
        return;
    }
    let (xs, ys): (Vec<f64>, Vec<f64>) = points.into_iter().unzip();
    let x_range = nice_range(0.0f64.min(min(&xs)), max(&xs));
    let y_range = nice_range(
        if p.percent {
            min(&ys).min(1.0)
        } else {
            0.0f64.min(min(&ys))
        },
        max(&ys),
    );
    let sx = |v: f64| x0 + (v - x_range.0) / (x_range.1 - x_range.0) * w;
    let sy = |v: f64| y0 + h - (v - y_range.0) / (y_range.1 - y_range.0) * h;
    for t in ticks(x_range) {
        let _ = writeln!(
            out,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#eee"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
            sx(t),
            y0,
            y0 + h,
            y0 + h + 16.0,
            label(t, false)
        );
    }
    for t in ticks(y_range) {
        let _ = writeln!(
            out,
            r##"<line x1="{0}" y1="{2}" x2="{1}" y2="{2}" stroke="#eee"/><text x="{3}" y="{4}" text-anchor="end">{5}</text>"##,
            x0,
            x0 + w,
            sy(t),
            x0 - 6.0,
            sy(t) + 4.0,
            label(t, p.percent)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        x0 + w / 2.0,
        y0 + h + 34.0,
        p.x_label
    );
    for (k, run) in runs.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        for test in [false, true] {
            let line: Vec<(f64, f64)> = run
                .records
                .iter()
                .filter(|r| r.test == test)
                .filter_map(|r| Some((sx((p.x)(r)), sy((p.y)(r)?))))
                .collect();
            if line.is_empty() {
                continue;
            }
            let coords: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let dash = if test {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            };
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>"#,
                coords.join(" ")
            );
            if test {
                for (x, y) in &line {
                    let _ = writeln!(
                        out,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{colour}"/>"#
                    );
                }
            }
        }
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// A step between ticks of 1, 2 or 5 times a power of ten, about a fifth of `span`.
fn tick_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let power = 10f64.powf(raw.log10().floor());
    let unit = raw / power;
    power
        * if unit < 1.5 {
            1.0
        } else if unit < 3.5 {
            2.0
        } else if unit < 7.5 {
            5.0
        } else {
            10.0
        }
}

/// `lo .. hi` widened to whole ticks (and to a non-empty range).
fn nice_range(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let step = tick_step(hi - lo);
    ((lo / step).floor() * step, (hi / step).ceil() * step)
}

fn ticks((lo, hi): (f64, f64)) -> Vec<f64> {
    let step = tick_step(hi - lo);
    let n = ((hi - lo) / step).round() as usize;
    (0..=n).map(|i| lo + i as f64 * step).collect()
}

fn label(v: f64, percent: bool) -> String {
    if percent {
        return format!("{}%", trim(v * 100.0));
    }
    trim(v)
}

/// A tick value without trailing zeros (ticks are round numbers).
fn trim(v: f64) -> String {
    let s = format!("{:.4}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str) -> Run {
        let records = (1..=10)
            .map(|s| Record {
                step: (s * 100) as f64,
                elapsed: s as f64 * 0.7,
                test: s % 5 == 0,
                loss: Some(2.0 / s as f64),
                accuracy: Some(1.0 - 0.5 / s as f64),
            })
            .collect();
        Run {
            name: name.into(),
            records,
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        assert_eq!(nice_range(0.0, 0.93), (0.0, 1.0));
        assert_eq!(
            ticks((0.0, 1.0)),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(nice_range(0.0, 9400.0), (0.0, 10000.0));
        assert_eq!(trim(0.6000000000000001), "0.6");
        assert_eq!(label(0.98, true), "98%");
    }

    #[test]
    fn a_figure_has_a_line_per_run_phase_and_panel() {
        let doc = svg(&[run("a"), run("b & c")]);
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<polyline").count(), 2 * 2 * 4);
        assert!(doc.contains("b &amp; c"));
        assert!(!doc.contains("NaN") && !doc.contains("inf"));
    }
}
