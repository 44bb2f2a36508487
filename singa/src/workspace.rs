//! The workspace folder of a run: `metrics.jsonl`, `summary.json` and `checkpoints/`.

use crate::checkpoint;
use singa_core::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a run leaves behind, and where.
pub struct Workspace {
    dir: PathBuf,
    metrics: File,
}

/// How to treat a workspace that already holds a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to start (the default: never lose a run's state by accident).
    Refuse,
    /// Continue the run from its latest checkpoint.
    Resume,
    /// Delete the old run's checkpoints and metrics and start over.
    Overwrite,
}

impl Workspace {
    /// Opens (creating) the workspace at `dir`.
    pub fn open(dir: &Path, existing: Existing) -> Result<Workspace> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let ckpt_dir = Workspace::checkpoint_dir_in(dir);
        let found = checkpoint::list(&ckpt_dir)?;
        match existing {
            Existing::Refuse if !found.is_empty() => {
                return Err(Error::invalid(format!(
                    "workspace {} already holds a run (checkpoint at step {}); pass --resume to continue it, --overwrite to start over, or choose another --workspace",
                    dir.display(),
                    found[0].0
                )));
            }
            Existing::Overwrite => {
                for (_, p) in &found {
                    std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
                }
                for f in ["metrics.jsonl", "summary.json"] {
                    let p = dir.join(f);
                    if p.exists() {
                        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                    }
                }
            }
            _ => {}
        }
        remove_stale_temporaries(&ckpt_dir)?;
        let path = dir.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Workspace {
            dir: dir.to_path_buf(),
            metrics,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where checkpoints go.
    pub fn checkpoint_dir(&self) -> PathBuf {
        Workspace::checkpoint_dir_in(&self.dir)
    }

    /// Where the workspace in `dir` keeps its checkpoints.
    pub fn checkpoint_dir_in(dir: &Path) -> PathBuf {
        dir.join("checkpoints")
    }

    /// Cuts `metrics.jsonl` back to the records of steps up to `step` (atomically), so that a
    /// run resumed from the checkpoint of `step` does not log the steps after it twice.
    pub fn rewind_metrics(&mut self, step: u64) -> Result<()> {
        let path = self.dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_none_or(|s| s <= step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if kept.len() == text.len() {
            return Ok(());
        }
        checkpoint::write_atomically(&path, kept.as_bytes())?;
        self.metrics = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(())
    }

    /// Appends one JSON object as a line of `metrics.jsonl`.
    pub fn log(&mut self, record: &serde_json::Value) -> Result<()> {
        let path = self.dir.join("metrics.jsonl");
        writeln!(self.metrics, "{record}").map_err(|e| Error::io(&path, e))
    }

    /// Writes `summary.json` atomically.
    pub fn write_summary(&self, summary: &serde_json::Value) -> Result<()> {
        let text =
            serde_json::to_string_pretty(summary).map_err(|e| Error::invalid(e.to_string()))?;
        checkpoint::write_atomically(
            &self.dir.join("summary.json"),
            format!("{text}\n").as_bytes(),
        )
    }
}

/// Removes the temporary files of checkpoint writes that a crash cut short
/// (`step-N.safetensors.tmp.PID`, up to the size of a checkpoint each) whose writer is gone.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(pid) = name
            .strip_prefix("step-")
            .and_then(|n| n.split_once(".tmp."))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_is_running(pid) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Whether process `pid` still runs (another singa writing a checkpoint there). Where that
/// cannot be told, it is taken to run, and its file is left alone.
fn process_is_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}
