//! Job files (TOML) into [`JobConfig`]s, with errors that name the file, the field and what
//! was expected.

use super::{
    Algorithm, ClusterConfig, DeviceConfig, DeviceKind, Framework, JobConfig, LayerConfig,
    LossScaling, LrConfig, Origin, ParamConfig, UpdaterConfig,
};
use singa_core::fields::nearest;
use singa_core::{Error, FieldValue, Fields, Init, Phase, Precision, Result};
use std::fmt::Display;
use std::path::Path;
use toml::{Table, Value};

pub(super) fn from_file(path: &Path) -> Result<JobConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    from_str(
        &text,
        Origin {
            file: path.display().to_string(),
            base_dir,
        },
    )
}

pub(super) fn from_str(text: &str, origin: Origin) -> Result<JobConfig> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        Error::config(&origin.file, "syntax", condense_toml_error(&e.to_string()))
    })?;
    let mut job = parse_job(&Section {
        origin: &origin,
        path: String::new(),
        table: &table,
    })?;
    job.text = Some(text.to_string());
    Ok(job)
}

/// The TOML error as one line: its position and its reason, without the source excerpt.
fn condense_toml_error(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let position = lines
        .first()
        .map(|l| l.trim_start_matches("TOML parse error at ").to_string())
        .unwrap_or_default();
    let reason = lines.last().copied().unwrap_or("invalid TOML");
    if lines.len() > 1 {
        format!("{position}: {reason}")
    } else {
        reason.to_string()
    }
}

/// How a TOML value reads in messages.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "a list".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// A table of the job file and where it is.
struct Section<'a> {
    origin: &'a Origin,
    path: String,
    table: &'a Table,
}

impl<'a> Section<'a> {
    fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn err(&self, key: &str, msg: impl Display) -> Error {
        Error::config(&self.origin.file, self.field_path(key), msg)
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> Error {
        self.err(key, format!("expected {want}, got {}", describe(got)))
    }

    fn str(&self, key: &str) -> Result<Option<String>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    fn required_str(&self, key: &str) -> Result<String> {
        self.str(key)?
            .ok_or_else(|| self.err(key, "missing; expected a string"))
    }

    fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(v) => Err(self.wrong(key, "a non-negative integer", v)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    fn f32(&self, key: &str) -> Result<Option<f32>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i as f32)),
            Some(Value::Float(f)) if (*f as f32).is_finite() => Ok(Some(*f as f32)),
            Some(v) => Err(self.wrong(key, "a finite number", v)),
        }
    }

    fn i32(&self, key: &str) -> Result<Option<i32>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) if i32::try_from(*i).is_ok() => Ok(Some(*i as i32)),
            Some(v) => Err(self.wrong(key, "an integer", v)),
        }
    }

    fn table(&self, key: &str) -> Result<Option<Section<'a>>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(Section {
                origin: self.origin,
                path: self.field_path(key),
                table: t,
            })),
            Some(v) => Err(self.wrong(key, "a table", v)),
        }
    }

    /// A list of non-negative integers (empty when absent).
    fn indices(&self, key: &str) -> Result<Vec<usize>> {
        let want = "a list of non-negative integers";
        match self.table.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::Integer(i) => usize::try_from(*i).map_err(|_| self.wrong(key, want, v)),
                    other => Err(self.wrong(key, want, other)),
                })
                .collect(),
            Some(v) => Err(self.wrong(key, want, v)),
        }
    }

    /// A list of strings; a single string is accepted as a list of one.
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.table.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.wrong(key, "a list of strings", other)),
                })
                .collect(),
            Some(v) => Err(self.wrong(key, "a list of strings", v)),
        }
    }

    /// An array of tables (`[[key]]`), each named by `label` in messages.
    fn tables(
        &self,
        key: &str,
        label: impl Fn(usize, &Table) -> String,
    ) -> Result<Vec<Section<'a>>> {
        match self.table.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Table(t) => Ok(Section {
                        origin: self.origin,
                        path: self.field_path(&label(i, t)),
                        table: t,
                    }),
                    other => Err(self.wrong(key, &format!("a list of tables ([[{key}]])"), other)),
                })
                .collect(),
            Some(v) => Err(self.wrong(key, &format!("a list of tables ([[{key}]])"), v)),
        }
    }

    /// Fails on the first key that is not in `known`, suggesting the nearest known one.
    fn only(&self, known: &[&str]) -> Result<()> {
        for key in self.table.keys() {
            if !known.contains(&key.as_str()) {
                return Err(self.err(key, unknown_field_message(key, known)));
            }
        }
        Ok(())
    }

    /// Every key not in `common` as layer/updater fields.
    fn rest(&self, common: &[&str]) -> Result<Fields> {
        let mut f = Fields::new();
        for (k, v) in self.table {
            if !common.contains(&k.as_str()) {
                f.set(k, to_field_value(v).map_err(|m| self.err(k, m))?);
            }
        }
        Ok(f)
    }
}

pub(super) fn unknown_field_message(key: &str, known: &[&str]) -> String {
    match nearest(key, known) {
        Some(n) => format!("unknown field; did you mean `{n}`?"),
        None => format!("unknown field; valid fields are {}", known.join(", ")),
    }
}

fn to_field_value(v: &Value) -> std::result::Result<FieldValue, String> {
    Ok(match v {
        Value::String(s) => FieldValue::Str(s.as_str().into()),
        Value::Integer(i) => FieldValue::Int(*i),
        Value::Float(f) => FieldValue::Float(*f),
        Value::Boolean(b) => FieldValue::Bool(*b),
        Value::Datetime(d) => return Err(format!("dates are not valid field values (got {d})")),
        Value::Array(a) => FieldValue::List(
            a.iter()
                .map(to_field_value)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Table(t) => {
            let mut f = Fields::new();
            for (k, v) in t {
                f.set(k, to_field_value(v)?);
            }
            FieldValue::Table(f)
        }
    })
}

const JOB_KEYS: [&str; 17] = [
    "name",
    "plugins",
    "algorithm",
    "unroll_len",
    "cd_k",
    "checkpoint_path",
    "checkpoint_rename",
    "train_steps",
    "display_freq",
    "test_freq",
    "test_steps",
    "checkpoint_freq",
    "seed",
    "device",
    "updater",
    "cluster",
    "layer",
];

fn parse_job(s: &Section<'_>) -> Result<JobConfig> {
    s.only(&JOB_KEYS)?;
    let name = s.required_str("name")?;
    let mut job = JobConfig::new(&name);
    job.origin = s.origin.clone();
    if let Some(a) = s.str("algorithm")? {
        job.algorithm = match a.as_str() {
            "bp" => Algorithm::Bp,
            "bptt" => Algorithm::Bptt,
            "cd" => Algorithm::Cd,
            other => return Err(s.err("algorithm", choice_message(other, &Algorithm::NAMES))),
        };
    }
    job.unroll_len = s.u64("unroll_len")?.unwrap_or(0) as usize;
    job.cd_k = s.u64("cd_k")?.unwrap_or(0) as usize;
    job.checkpoint_path = s
        .strings("checkpoint_path")?
        .iter()
        .map(|p| job.origin.base_dir.join(p))
        .collect();
    if let Some(t) = s.table("checkpoint_rename")? {
        job.checkpoint_rename = parse_rename(&t)?;
    }
    job.train_steps = s
        .u64("train_steps")?
        .ok_or_else(|| s.err("train_steps", "missing; expected a non-negative integer"))?;
    job.display_freq = s.u64("display_freq")?.unwrap_or(job.display_freq);
    job.test_freq = s.u64("test_freq")?.unwrap_or(0);
    job.test_steps = s.u64("test_steps")?.unwrap_or(0);
    job.checkpoint_freq = s.u64("checkpoint_freq")?.unwrap_or(0);
    job.seed = s.u64("seed")?.unwrap_or(job.seed);
    job.plugins = s
        .strings("plugins")?
        .iter()
        .map(|p| job.origin.base_dir.join(p))
        .collect();
    if let Some(d) = s.table("device")? {
        job.device = parse_device(&d)?;
    }
    job.updater = parse_updater(
        &s.table("updater")?
            .ok_or_else(|| s.err("updater", "missing; expected an [updater] table"))?,
    )?;
    if let Some(c) = s.table("cluster")? {
        job.cluster = parse_cluster(&c)?;
    }
    let layers = s.tables("layer", |i, t| match t.get("name") {
        Some(Value::String(n)) => format!("layer[{n}]"),
        _ => format!("layer[{i}]"),
    })?;
    if layers.is_empty() {
        return Err(s.err("layer", "missing; a net needs [[layer]] entries"));
    }
    job.layers = layers.iter().map(parse_layer).collect::<Result<_>>()?;
    Ok(job)
}

fn choice_message(got: &str, choices: &[&str]) -> String {
    let hint = nearest(got, choices)
        .map(|n| format!("; did you mean {n:?}?"))
        .unwrap_or_default();
    format!("{got:?} is not one of {}{hint}", choices.join(", "))
}

/// The most CPU threads a job may ask for.
pub const MAX_THREADS: u64 = 1024;

/// `checkpoint_rename = { "name in the checkpoint" = "name here" or ["name", ...], ... }`.
fn parse_rename(s: &Section<'_>) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let expected = "a parameter name, or a list of them";
    for (from, value) in s.table {
        let to = match value {
            Value::String(_) | Value::Array(_) => s.strings(from)?,
            other => return Err(s.wrong(from, expected, other)),
        };
        if to.is_empty() {
            return Err(s.err(from, format!("empty; expected {expected}")));
        }
        pairs.extend(to.into_iter().map(|t| (from.clone(), t)));
    }
    Ok(pairs)
}

fn parse_device(s: &Section<'_>) -> Result<DeviceConfig> {
    s.only(&["type", "threads", "id", "precision", "loss_scale"])?;
    let mut d = DeviceConfig::default();
    if let Some(t) = s.str("type")? {
        d.kind = match t.as_str() {
            "cpu" => DeviceKind::Cpu,
            "reference" => DeviceKind::Reference,
            "cuda" => DeviceKind::Cuda,
            other => return Err(s.err("type", choice_message(other, &DeviceKind::NAMES))),
        };
    }
    d.threads = match s.u64("threads")? {
        Some(t @ 1..=MAX_THREADS) => Some(t as usize),
        Some(t) => return Err(s.err("threads", format!("expected 1 to {MAX_THREADS}, got {t}"))),
        None => None,
    };
    if let Some(id) = s.u64("id")? {
        if d.kind != DeviceKind::Cuda {
            return Err(s.err("id", "a GPU number, for type = \"cuda\" only"));
        }
        d.gpu = usize::try_from(id).map_err(|_| s.err("id", "too large"))?;
    }
    if let Some(p) = s.str("precision")? {
        d.precision = Precision::from_name(&p)
            .ok_or_else(|| s.err("precision", choice_message(&p, &Precision::NAMES)))?;
    }
    d.loss_scale = parse_loss_scale(s)?;
    Ok(d)
}

/// `loss_scale = "dynamic" | "none" | 1024 | { init = 65536, growth_interval = 2000 }`.
fn parse_loss_scale(s: &Section<'_>) -> Result<Option<LossScaling>> {
    const EXPECTED: &str =
        "\"dynamic\", \"none\", a fixed scale, or { init = ..., growth_interval = ... }";
    Ok(match s.table.get("loss_scale") {
        None => None,
        Some(Value::String(v)) => match v.as_str() {
            "dynamic" => Some(LossScaling::DYNAMIC),
            "none" => Some(LossScaling::Off),
            other => {
                let hint = nearest(other, &["dynamic", "none"])
                    .map(|n| format!("; did you mean {n:?}?"))
                    .unwrap_or_default();
                return Err(s.err(
                    "loss_scale",
                    format!("{other:?}: expected {EXPECTED}{hint}"),
                ));
            }
        },
        Some(Value::Integer(_) | Value::Float(_)) => {
            positive_in(s, "loss_scale")?.map(LossScaling::Fixed)
        }
        Some(Value::Table(_)) => {
            let t = s.table("loss_scale")?.expect("a table");
            t.only(&["init", "growth_interval"])?;
            Some(LossScaling::Dynamic {
                init: positive_in(&t, "init")?.unwrap_or(LossScaling::INIT),
                growth_interval: match t.u64("growth_interval")? {
                    Some(0) => return Err(t.err("growth_interval", "expected at least 1")),
                    n => n.unwrap_or(LossScaling::GROWTH_INTERVAL),
                },
            })
        }
        Some(other) => return Err(s.wrong("loss_scale", EXPECTED, other)),
    })
}

/// Field `key` of `s` as a positive number, if present.
fn positive_in(s: &Section<'_>, key: &str) -> Result<Option<f32>> {
    match s.f32(key)? {
        Some(v) if v > 0.0 => Ok(Some(v)),
        Some(v) => Err(s.err(key, format!("expected a positive number, got {v}"))),
        None => Ok(None),
    }
}

/// The keys of `[updater]` that every updater has; the rest belong to the updater type.
pub(super) const UPDATER_KEYS: [&str; 5] = [
    "type",
    "learning_rate",
    "weight_decay",
    "clip_norm",
    "clip_value",
];

fn parse_updater(s: &Section<'_>) -> Result<UpdaterConfig> {
    let mut u = UpdaterConfig::sgd(0.01);
    u.type_name = s.required_str("type")?;
    u.learning_rate = match s.table.get("learning_rate") {
        None => return Err(s.err("learning_rate", "missing; expected a number or a table like { type = \"step\", base = 0.1, gamma = 0.1, change_freq = 1000 }")),
        Some(Value::Integer(i)) => LrConfig::fixed(*i as f64),
        Some(Value::Float(f)) => LrConfig::fixed(*f),
        Some(Value::Table(_)) => {
            let t = s.table("learning_rate")?.expect("checked above");
            LrConfig { kind: t.required_str("type")?, fields: t.rest(&["type"])? }
        }
        Some(v) => return Err(s.wrong("learning_rate", "a number or a schedule table", v)),
    };
    u.weight_decay = s.f32("weight_decay")?.unwrap_or(0.0);
    u.clip.norm = s.f32("clip_norm")?;
    u.clip.value = s.f32("clip_value")?;
    u.fields = s.rest(&UPDATER_KEYS)?;
    Ok(u)
}

fn parse_cluster(s: &Section<'_>) -> Result<ClusterConfig> {
    let counts = [
        "nworker_groups",
        "nworkers_per_group",
        "nserver_groups",
        "nservers_per_group",
    ];
    let mut known = counts.to_vec();
    known.extend([
        "framework",
        "server_worker_separate",
        "timeout",
        "sync_freq",
        "staleness",
        "nprocs",
        "gpus",
        "collective",
    ]);
    s.only(&known)?;
    let mut c = match s.str("framework")? {
        None => ClusterConfig::default(),
        Some(f) => match Framework::from_name(&f) {
            Some(f) => {
                // The count the preset scales with: workers per group, or groups.
                let key = match f {
                    Framework::Downpour | Framework::Hogwild => "nworker_groups",
                    _ => "nworkers_per_group",
                };
                f.preset(s.u64(key)?.unwrap_or(1).max(1) as usize)
            }
            None => return Err(s.err("framework", choice_message(&f, &Framework::NAMES))),
        },
    };
    c.server_worker_separate = s
        .bool("server_worker_separate")?
        .unwrap_or(c.server_worker_separate);
    match s.u64("timeout")? {
        Some(0) => return Err(s.err("timeout", "expected at least 1 (seconds)")),
        Some(t) => c.timeout_secs = t,
        None => {}
    }
    match s.u64("sync_freq")? {
        Some(0) => return Err(s.err("sync_freq", "expected at least 1 (steps)")),
        Some(f) => c.sync_freq = f,
        None => {}
    }
    c.staleness = s.u64("staleness")?.unwrap_or(c.staleness);
    match s.u64("nprocs")? {
        Some(0) => return Err(s.err("nprocs", "expected at least 1 (processes)")),
        Some(n) => c.nprocs = n as usize,
        None => {}
    }
    c.gpus = s.indices("gpus")?;
    c.collective = s.bool("collective")?.unwrap_or(c.collective);
    for (key, slot) in counts.iter().zip([
        &mut c.nworker_groups,
        &mut c.nworkers_per_group,
        &mut c.nserver_groups,
        &mut c.nservers_per_group,
    ]) {
        match s.u64(key)? {
            Some(0) => return Err(s.err(key, "expected at least 1")),
            Some(n) => *slot = n as usize,
            None => {}
        }
    }
    Ok(c)
}

/// The keys every `[[layer]]` has; the rest belong to the layer type.
pub(super) const LAYER_KEYS: [&str; 9] = [
    "name",
    "type",
    "srclayers",
    "include",
    "exclude",
    "partition_dim",
    "unroll",
    "param",
    "params",
];

fn parse_phase(s: &Section<'_>, key: &str, name: &str) -> Result<Phase> {
    match name {
        "train" => Ok(Phase::TRAIN),
        "test" => Ok(Phase::TEST),
        // A layer only there would be in no net: say so here, not at its readers' srclayers.
        "val" | "validation" => Err(s.err(
            key,
            format!("{name:?}: singa builds a train net and a test net, no validation net (evaluate with test_freq and test_steps); expected \"train\" or \"test\""),
        )),
        other => Err(s.err(key, choice_message(other, &["train", "test"]))),
    }
}

fn parse_layer(s: &Section<'_>) -> Result<LayerConfig> {
    if s.table.contains_key("params") {
        return Err(s.err(
            "params",
            "unknown field; did you mean `param` ([[layer.param]])?",
        ));
    }
    let mut l = LayerConfig::new(&s.required_str("name")?, &s.required_str("type")?);
    l.srclayers = s.strings("srclayers")?;
    l.include = s
        .strings("include")?
        .iter()
        .map(|p| parse_phase(s, "include", p))
        .collect::<Result<_>>()?;
    l.exclude = s
        .strings("exclude")?
        .iter()
        .map(|p| parse_phase(s, "exclude", p))
        .collect::<Result<_>>()?;
    l.partition_dim = s.i32("partition_dim")?.unwrap_or(-1);
    l.unroll = s.bool("unroll")?.unwrap_or(false);
    l.params = s
        .tables("param", |i, t| match t.get("name") {
            Some(Value::String(n)) => format!("param[{n}]"),
            _ => format!("param[{i}]"),
        })?
        .iter()
        .map(parse_param)
        .collect::<Result<_>>()?;
    l.fields = s.rest(&LAYER_KEYS)?;
    Ok(l)
}

fn parse_param(s: &Section<'_>) -> Result<ParamConfig> {
    s.only(&["name", "init", "lr_mult", "wd_mult", "share_from"])?;
    let mut p = ParamConfig::new(&s.required_str("name")?);
    p.lr_mult = s.f32("lr_mult")?.unwrap_or(1.0);
    p.wd_mult = s.f32("wd_mult")?.unwrap_or(1.0);
    p.share_from = s.str("share_from")?;
    p.init = match s.table.get("init") {
        None => None,
        Some(Value::String(name)) => Some(init_from(
            s,
            "init",
            name,
            &Section {
                origin: s.origin,
                path: s.field_path("init"),
                table: &Table::new(),
            },
        )?),
        Some(Value::Table(_)) => {
            let t = s.table("init")?.expect("checked above");
            let kind = t.required_str("type")?;
            Some(init_from(&t, "type", &kind, &t)?)
        }
        Some(v) => {
            return Err(s.wrong(
                "init",
                "an init name or a table like { type = \"gaussian\", std = 0.01 }",
                v,
            ))
        }
    };
    Ok(p)
}

/// Builds the init `kind` from the keys of `t` (reported under `t`'s path).
fn init_from(s: &Section<'_>, key: &str, kind: &str, t: &Section<'_>) -> Result<Init> {
    let num = |k: &str, default: Option<f32>| -> Result<f32> {
        t.f32(k)?
            .or(default)
            .ok_or_else(|| t.err(k, format!("missing; the {kind} init needs it (a number)")))
    };
    let scale = || num("scale", Some(1.0));
    let (init, keys): (Init, &[&str]) = match kind {
        "constant" => (
            Init::Constant {
                value: num("value", None)?,
            },
            &["type", "value"],
        ),
        "uniform" => (
            Init::Uniform {
                low: num("low", None)?,
                high: num("high", None)?,
            },
            &["type", "low", "high"],
        ),
        "gaussian" => (
            Init::Gaussian {
                mean: num("mean", Some(0.0))?,
                std: num("std", None)?,
            },
            &["type", "mean", "std"],
        ),
        "gaussian_sqrt_fan_in" => (
            Init::GaussianSqrtFanIn {
                mean: num("mean", Some(0.0))?,
                std: num("std", Some(1.0))?,
            },
            &["type", "mean", "std"],
        ),
        "uniform_sqrt_fan_in" => (
            Init::UniformSqrtFanIn { scale: scale()? },
            &["type", "scale"],
        ),
        "xavier_uniform" | "glorot_uniform" | "uniform_sqrt_fan_in_out" => {
            (Init::XavierUniform { scale: scale()? }, &["type", "scale"])
        }
        "xavier_normal" | "glorot_normal" => {
            (Init::XavierNormal { scale: scale()? }, &["type", "scale"])
        }
        "he_uniform" | "kaiming_uniform" => {
            (Init::HeUniform { scale: scale()? }, &["type", "scale"])
        }
        "he_normal" | "kaiming_normal" => (Init::HeNormal { scale: scale()? }, &["type", "scale"]),
        other => {
            let mut names: Vec<&str> = Init::NAMES.to_vec();
            names.extend([
                "glorot_uniform",
                "glorot_normal",
                "kaiming_uniform",
                "kaiming_normal",
                "uniform_sqrt_fan_in_out",
            ]);
            return Err(s.err(key, choice_message(other, &names)));
        }
    };
    t.only(keys)?;
    Ok(init)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobConfig> {
        from_str(
            text,
            Origin {
                file: "job.toml".into(),
                base_dir: ".".into(),
            },
        )
    }

    const MINIMAL: &str = r#"
name = "t"
train_steps = 10
[updater]
type = "sgd"
learning_rate = 0.1
[[layer]]
name = "fc"
type = "inner_product"
num_output = 3
"#;

    #[test]
    fn minimal_job() {
        let j = parse(MINIMAL).unwrap();
        assert_eq!(j.name, "t");
        assert_eq!(j.layers[0].fields.i64("num_output").unwrap(), 3);
        assert_eq!(j.updater.learning_rate, LrConfig::fixed(0.1));
    }

    #[test]
    fn cluster_gpus() {
        let with = |v: &str| {
            parse(&format!("{MINIMAL}[cluster]\ngpus = {v}\n"))
                .map(|j| j.cluster.gpus)
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(MINIMAL).unwrap().cluster.gpus, Vec::<usize>::new());
        assert_eq!(with("[0, 2]"), Ok(vec![0, 2]));
        let wrong = "job.toml: cluster.gpus: expected a list of non-negative integers, got";
        assert_eq!(with("[0, -1]"), Err(format!("{wrong} the integer -1")));
        assert_eq!(with("0"), Err(format!("{wrong} the integer 0")));
        assert_eq!(with("[\"0\"]"), Err(format!("{wrong} the string \"0\"")));
    }

    #[test]
    fn device_precision() {
        assert_eq!(parse(MINIMAL).unwrap().device.precision, Precision::F32);
        let with = |p: &str| parse(&format!("{MINIMAL}[device]\nprecision = \"{p}\"\n"));
        assert_eq!(with("bf16").unwrap().device.precision, Precision::BF16);
        assert_eq!(
            with("bf61").unwrap_err().to_string(),
            "job.toml: device.precision: \"bf61\" is not one of f32, bf16, f16; did you mean \"bf16\"?"
        );
        assert_eq!(with("f16").unwrap().device.precision, Precision::F16);
        let reference = parse(&format!(
            "{MINIMAL}[device]\ntype = \"reference\"\nprecision = \"f16\"\n"
        ));
        assert_eq!(reference.unwrap().device.precision, Precision::F16);
    }

    #[test]
    fn loss_scale() {
        let with = |v: &str| {
            parse(&format!(
                "{MINIMAL}[device]\ntype = \"reference\"\nloss_scale = {v}\n"
            ))
            .map(|j| j.device.loss_scale)
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse(MINIMAL).unwrap().device.loss_scale, None);
        assert_eq!(with("\"dynamic\""), Ok(Some(LossScaling::DYNAMIC)));
        assert_eq!(with("\"none\""), Ok(Some(LossScaling::Off)));
        assert_eq!(with("1024"), Ok(Some(LossScaling::Fixed(1024.0))));
        assert_eq!(
            with("{ init = 8.0, growth_interval = 10 }"),
            Ok(Some(LossScaling::Dynamic {
                init: 8.0,
                growth_interval: 10
            }))
        );
        assert_eq!(
            with("{ growth_interval = 10 }"),
            Ok(Some(LossScaling::Dynamic {
                init: 65536.0,
                growth_interval: 10
            }))
        );
        let expected = r#"expected "dynamic", "none", a fixed scale, or { init = ..., growth_interval = ... }"#;
        assert_eq!(
            with("\"dinamic\"").unwrap_err(),
            format!(
                "job.toml: device.loss_scale: \"dinamic\": {expected}; did you mean \"dynamic\"?"
            )
        );
        assert_eq!(
            with("true").unwrap_err(),
            format!("job.toml: device.loss_scale: {expected}, got the boolean true")
        );
        assert_eq!(
            with("-2").unwrap_err(),
            "job.toml: device.loss_scale: expected a positive number, got -2"
        );
        assert_eq!(
            with("{ growth_interval = 0 }").unwrap_err(),
            "job.toml: device.loss_scale.growth_interval: expected at least 1"
        );
        let e = with("{ init = 1, grow = 2 }").unwrap_err();
        assert!(e.contains("device.loss_scale.grow: unknown field"), "{e}");
    }

    #[test]
    fn errors_name_file_field_and_expectation() {
        let e = parse(&MINIMAL.replace("train_steps = 10", "train_steps = \"ten\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job.toml: train_steps: expected a non-negative integer, got the string \"ten\""
        );
        let e = parse(&MINIMAL.replace("train_steps", "train_stpes")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job.toml: train_stpes: unknown field; did you mean `train_steps`?"
        );
        let e = parse(&format!("{MINIMAL}[[layer.param]]\nname = \"weight\"\ninit = {{ type = \"gausian\", std = 1 }}\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job.toml: layer[fc].param[weight].init.type: \"gausian\" is not one of constant, uniform, gaussian, gaussian_sqrt_fan_in, uniform_sqrt_fan_in, xavier_uniform, xavier_normal, he_uniform, he_normal, glorot_uniform, glorot_normal, kaiming_uniform, kaiming_normal, uniform_sqrt_fan_in_out; did you mean \"gaussian\"?"
        );
        let e = parse(&format!(
            "{MINIMAL}[[layer.param]]\nname = \"weight\"\ninit = {{ type = \"gaussian\" }}\n"
        ))
        .unwrap_err();
        assert_eq!(e.to_string(), "job.toml: layer[fc].param[weight].init.std: missing; the gaussian init needs it (a number)");
        let e = parse("name = \"x\"\ntrain_steps = [").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("job.toml: syntax: line 2, column"),
            "{e}"
        );
        assert_eq!(e.to_string().lines().count(), 1);
        let e =
            parse(&MINIMAL.replace("num_output = 3", "num_output = 3\ninclude = \"validation\""))
                .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("job.toml: layer[fc].include: \"validation\": singa builds a train net and a test net"),
            "{e}"
        );
        let e = parse(&MINIMAL.replace(
            "learning_rate = 0.1",
            "learning_rate = 0.1\nweight_decay = nan",
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "job.toml: updater.weight_decay: expected a finite number, got the number NaN"
        );
    }

    #[test]
    fn param_inits() {
        let j = parse(&format!(
            "{MINIMAL}[[layer.param]]\nname = \"weight\"\ninit = \"he_normal\"\nlr_mult = 2\n"
        ))
        .unwrap();
        let p = &j.layers[0].params[0];
        assert_eq!(p.init, Some(Init::HeNormal { scale: 1.0 }));
        assert_eq!(p.lr_mult, 2.0);
    }
}
