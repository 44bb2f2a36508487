//! Checkpoints in the safetensors format (readable by PyTorch, candle and burn).
//!
//! A checkpoint holds every parameter (`param/<layer>/<name>`), the updater's state
//! (`state/<layer>/<name>/<slot>`), and in its metadata the step, the job's name, the updater,
//! the state of layers that have some (a data layer's position), and which inner products store
//! their weights `[out, in]`, and the job file's text with the folder its paths start from. It
//! is written to a temporary file, flushed to disk and renamed into place, so a crash never
//! leaves a partial checkpoint, and an existing checkpoint is never overwritten by a failed
//! write. docs/checkpoints.md documents the layout of each tensor.

use crate::config::JobConfig;
use crate::params::ParamStore;
use safetensors::tensor::{Dtype, TensorView};
use singa_core::{Error, Result, Shape, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "singa-checkpoint-1";

/// What a checkpoint restores besides the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointMeta {
    /// Steps completed when it was written.
    pub step: u64,
    /// The job's name.
    pub job: String,
    /// The updater type.
    pub updater: String,
    /// Non-parameter state per layer.
    pub layer_states: Vec<(String, Vec<u64>)>,
    /// The inner products whose weights are stored `[out, in]` (`transpose = true`, as when
    /// split along the features): a square weight's shape alone cannot tell. `None` in
    /// checkpoints written before it was recorded.
    pub transposed: Option<Vec<String>>,
    /// The job file's text and the folder its relative paths start from, so that the model
    /// can be used from the checkpoint alone (`singa predict --checkpoint F`). `None` for jobs
    /// built in Rust and checkpoints written before they were recorded.
    pub job_file: Option<(String, String)>,
}

/// The file name of the checkpoint after `step` steps.
pub fn file_name(step: u64) -> String {
    format!("step-{step:08}.safetensors")
}

/// The checkpoints in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.strip_suffix(".safetensors"))
        {
            if let Ok(step) = step.parse::<u64>() {
                found.push((step, path));
            }
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a checkpoint of `store` to `path` atomically, with the tensors of `extra` beside
/// (say, the updater state of Hogwild's other server groups).
pub fn save(
    path: &Path,
    store: &ParamStore,
    state_names: &[String],
    extra: &[(String, Tensor)],
    meta: &CheckpointMeta,
) -> Result<()> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in extra {
        buffers.push((
            name.clone(),
            t.shape().dims().to_vec(),
            f32_bytes(&t.to_vec::<f32>()?),
        ));
    }
    for e in store.entries() {
        let shape = e.shape().dims().to_vec();
        buffers.push((
            format!("param/{}", e.name),
            shape.clone(),
            f32_bytes(&e.value.to_vec::<f32>()?),
        ));
        for (slot, t) in state_names.iter().zip(&e.state) {
            buffers.push((
                format!("state/{}/{slot}", e.name),
                shape.clone(),
                f32_bytes(&t.to_vec::<f32>()?),
            ));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::checkpoint(path, format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let layer_states: serde_json::Map<String, serde_json::Value> = meta
        .layer_states
        .iter()
        .map(|(l, s)| (l.clone(), serde_json::json!(s)))
        .collect();
    let mut metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("step", meta.step.to_string()),
        ("job", meta.job.clone()),
        ("updater", meta.updater.clone()),
        (
            "layer_states",
            serde_json::Value::Object(layer_states).to_string(),
        ),
        ("transposed", serde_json::json!(meta.transposed).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some((text, dir)) = &meta.job_file {
        metadata.insert("job_toml".into(), text.clone());
        metadata.insert("job_dir".into(), dir.clone());
    }
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| Error::checkpoint(path, e))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    singa_data::shard::sync_parent(path);
    Ok(())
}

/// The checkpoints of a job's `checkpoint_path` (SINGA's way of feeding pretrained layers to
/// a deeper net), read once by rank 0, to initialise worker 0's parameters (the other workers
/// get them from it: trainable ones through the servers, fixed ones in a message).
pub struct Pretrained {
    /// The job file, for errors.
    file: String,
    loaded: Vec<Loaded>,
    rename: Vec<(String, String)>,
}

impl Pretrained {
    /// Reads the job's checkpoints (none for a job without `checkpoint_path`) and checks that
    /// every `checkpoint_rename` names a parameter one of them has.
    pub fn load(job: &JobConfig) -> Result<Pretrained> {
        let file = job.origin.file.clone();
        let mut loaded = Vec::new();
        for path in &job.checkpoint_path {
            let checkpoint = newest_in(path)
                .and_then(|p| load(&p))
                .map_err(|e| Error::config(&file, "checkpoint_path", e))?;
            loaded.push(checkpoint);
        }
        for (from, _) in &job.checkpoint_rename {
            if !loaded.iter().any(|l| l.has_param(from)) {
                return Err(Error::config(
                    &file,
                    format!("checkpoint_rename.{from:?}"),
                    "no checkpoint of checkpoint_path has a parameter of that name",
                ));
            }
        }
        Ok(Pretrained {
            file,
            loaded,
            rename: job.checkpoint_rename.clone(),
        })
    }

    /// Initialises the parameters of `store` from the checkpoints, after the renames; returns
    /// a line per checkpoint saying what it set. Where several checkpoints have a parameter,
    /// the first listed sets it. A checkpoint that sets nothing, or a rename to a parameter
    /// the net does not have, is an error: a silent mismatch would train from scratch while
    /// the user believes otherwise.
    pub fn initialise(&self, store: &mut ParamStore) -> Result<Vec<String>> {
        let file = self.file.as_str();
        for (from, to) in &self.rename {
            if store.find(to).is_none() {
                return Err(Error::config(
                    file,
                    format!("checkpoint_rename.{from:?}"),
                    format!("{to:?}: this net has no parameter of that name"),
                ));
            }
        }
        let mut notes = Vec::new();
        let mut taken = Vec::new();
        for l in &self.loaded {
            let set = l.initialise(store, &self.rename, &taken)?;
            if set.is_empty() {
                return Err(Error::config(
                    file,
                    "checkpoint_path",
                    format!(
                        "{}: none of its parameters is one of this net's (by name, after checkpoint_rename) that an earlier checkpoint did not set",
                        l.path.display()
                    ),
                ));
            }
            taken.extend(set.iter().cloned());
            notes.push(format!(
                "initialised {} from {} (step {})",
                set.join(", "),
                l.path.display(),
                l.meta.step
            ));
        }
        Ok(notes)
    }
}

/// `path` itself if it is a file; for a directory (a workspace, or its `checkpoints`), the
/// newest checkpoint in it.
fn newest_in(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let inner = path.join("checkpoints");
    let dir = if inner.is_dir() {
        inner
    } else {
        path.to_path_buf()
    };
    match list(&dir)?.into_iter().next() {
        Some((_, newest)) => Ok(newest),
        None => Err(Error::checkpoint(
            path,
            "a directory without checkpoints (expected a checkpoint file, a workspace, or its checkpoints directory)",
        )),
    }
}

/// A checkpoint read into host memory.
pub struct Loaded {
    /// The file.
    pub path: PathBuf,
    /// Its metadata.
    pub meta: CheckpointMeta,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Reads and decodes a checkpoint (without comparing it to a net yet).
pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = singa_data::file::read_regular(path)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a readable safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a readable safetensors file: {e}")))?;
    let md = header.metadata().clone().unwrap_or_default();
    if md.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::checkpoint(
            path,
            format!(
                "not a singa checkpoint (format {:?}, expected {FORMAT:?})",
                md.get("format")
            ),
        ));
    }
    let get = |k: &str| {
        md.get(k)
            .cloned()
            .ok_or_else(|| Error::checkpoint(path, format!("metadata field {k:?} is missing")))
    };
    let step = get("step")?
        .parse()
        .map_err(|_| Error::checkpoint(path, "metadata field \"step\" is not a number"))?;
    let layer_states: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&get("layer_states")?).map_err(|e| {
            Error::checkpoint(path, format!("metadata field \"layer_states\": {e}"))
        })?;
    let layer_states = layer_states
        .into_iter()
        .map(|(k, v)| {
            let s: Vec<u64> = serde_json::from_value(v)
                .map_err(|e| Error::checkpoint(path, format!("state of layer {k}: {e}")))?;
            Ok((k, s))
        })
        .collect::<Result<_>>()?;
    let transposed: Option<Vec<String>> =
        match md.get("transposed") {
            None => None,
            Some(t) => Some(serde_json::from_str(t).map_err(|e| {
                Error::checkpoint(path, format!("metadata field \"transposed\": {e}"))
            })?),
        };
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::checkpoint(
                path,
                format!("tensor {name} is {:?}, expected F32", view.dtype()),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        tensors.insert(name.to_string(), (view.shape().to_vec(), data));
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        meta: CheckpointMeta {
            step,
            job: get("job")?,
            updater: get("updater")?,
            layer_states,
            transposed,
            job_file: md.get("job_toml").cloned().map(|t| {
                let dir = md.get("job_dir").cloned().unwrap_or_else(|| ".".into());
                (t, dir)
            }),
        },
        tensors,
    })
}

impl Loaded {
    /// The values of tensor `name`, if the checkpoint has it.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(|(_, v)| v.as_slice())
    }

    /// Copies the checkpoint into `store`, after checking that it was written for this net:
    /// the same parameters with the same shapes, and updater state for each of them.
    pub fn restore(&self, store: &mut ParamStore, state_names: &[String]) -> Result<()> {
        let mismatch =
            |msg: String| Error::checkpoint(&self.path, format!("does not match this net: {msg}"));
        let mut expected = 0;
        for e in store.entries() {
            let key = format!("param/{}", e.name);
            let Some((shape, _)) = self.tensors.get(&key) else {
                return Err(mismatch(format!(
                    "it has no parameter {} (was it written for another net?)",
                    e.name
                )));
            };
            if shape.as_slice() != e.shape().dims() {
                return Err(mismatch(format!(
                    "parameter {} has shape {} in the checkpoint but {} in the net",
                    e.name,
                    Shape::new(shape)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|_| format!("{shape:?}")),
                    e.shape()
                )));
            }
            expected += 1;
            for slot in state_names {
                if e.trainable
                    && !self
                        .tensors
                        .contains_key(&format!("state/{}/{slot}", e.name))
                {
                    return Err(mismatch(format!(
                        "it has no {slot} state for {} (was it written with another updater than {}?)",
                        e.name, self.meta.updater
                    )));
                }
            }
        }
        let in_file = self
            .tensors
            .keys()
            .filter(|k| k.starts_with("param/"))
            .count();
        if in_file != expected {
            let extra: Vec<&str> = self
                .tensors
                .keys()
                .filter_map(|k| k.strip_prefix("param/"))
                .filter(|n| store.find(n).is_none())
                .collect();
            return Err(mismatch(format!(
                "it has parameters the net does not: {}",
                extra.join(", ")
            )));
        }
        for e in store.entries_mut() {
            let key = format!("param/{}", e.name);
            let (_, data) = &self.tensors[&key];
            self.check_finite(&key, data)?;
            e.value
                .write_from(data)
                .map_err(|err| Error::checkpoint(&self.path, format!("tensor {key}: {err}")))?;
            for (slot, t) in state_names.iter().zip(e.state.iter_mut()) {
                let key = format!("state/{}/{slot}", e.name);
                if let Some((shape, data)) = self.tensors.get(&key) {
                    if shape.as_slice() != t.shape().dims() {
                        return Err(mismatch(format!(
                            "tensor {key} has shape {shape:?}, the updater's state here {}",
                            t.shape()
                        )));
                    }
                    self.check_finite(&key, data)?;
                    t.write_from(data).map_err(|err| {
                        Error::checkpoint(&self.path, format!("tensor {key}: {err}"))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Copies the parameters of this checkpoint that `store` has, after `rename` (`(name in
    /// the checkpoint, name in the store)`, a name possibly several times), into it: a job's
    /// `checkpoint_path`. Returns the store's
    /// names of the parameters it set; a shape that differs is an error naming both.
    pub fn initialise(
        &self,
        store: &mut ParamStore,
        rename: &[(String, String)],
        taken: &[String],
    ) -> Result<Vec<String>> {
        let mut set = Vec::new();
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for key in names {
            let Some(name) = key.strip_prefix("param/") else {
                continue;
            };
            let mut targets: Vec<&str> = rename
                .iter()
                .filter(|(from, _)| from == name)
                .map(|(_, to)| to.as_str())
                .collect();
            if targets.is_empty() {
                targets.push(name);
            }
            let (shape, data) = &self.tensors[key];
            self.check_finite(key, data)?;
            for target in targets {
                let Some(id) = store.find(target) else {
                    continue;
                };
                let e = &mut store.entries_mut()[id];
                if taken.contains(&e.name) || set.contains(&e.name) {
                    continue;
                }
                if shape.as_slice() != e.shape().dims() {
                    return Err(Error::checkpoint(
                        &self.path,
                        format!(
                            "parameter {name} has shape {shape:?}, but {target} of this net has shape {}",
                            e.shape()
                        ),
                    ));
                }
                e.value
                    .write_from(data)
                    .map_err(|err| Error::checkpoint(&self.path, format!("tensor {key}: {err}")))?;
                set.push(e.name.clone());
            }
        }
        Ok(set)
    }

    /// Whether the checkpoint has parameter `name`.
    pub fn has_param(&self, name: &str) -> bool {
        self.tensors.contains_key(&format!("param/{name}"))
    }

    /// Refuses values that are not finite: training never writes them (it stops first), so
    /// the file was damaged or made elsewhere.
    fn check_finite(&self, key: &str, data: &[f32]) -> Result<()> {
        match data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Error::checkpoint(
                &self.path,
                format!(
                    "tensor {key} holds {} at element {i}; a checkpoint of a run that diverged, or a damaged file",
                    data[i]
                ),
            )),
        }
    }
}
