//! Checking a [`JobConfig`] against the known layer and updater types.

use super::parse::{unknown_field_message, LAYER_KEYS, UPDATER_KEYS};
use super::{Algorithm, JobConfig, LossScaling};
use crate::registry::Registry;
use singa_core::fields::nearest;
use singa_core::{validate_fields, Error, FieldSpec, FieldValue, Fields, Phase, Precision, Result};
use singa_layers::schedule::LrSchedule;

/// The largest staleness bound: each step a group may lag costs a queued command.
pub const MAX_STALENESS: u64 = 64;

/// A job that passed validation: every layer's and the updater's fields complete (defaults
/// filled in) and well-typed, and the learning-rate schedule built.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The job, with complete fields.
    pub job: JobConfig,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
}

impl JobConfig {
    /// `[cluster] gpus`: a CUDA device, one GPU per worker, and the workers of one process (who
    /// share its memory) on one GPU.
    fn check_gpus(&self) -> Result<()> {
        let c = &self.cluster;
        if c.gpus.is_empty() {
            return Ok(());
        }
        let err = |msg: String| Error::config(&self.origin.file, "cluster.gpus", msg);
        if self.device.kind != super::DeviceKind::Cuda {
            return Err(err(format!(
                "a GPU per worker needs [device] type = \"cuda\", but the device is {:?}",
                self.device.kind.name()
            )));
        }
        if c.gpus.len() != c.nworkers() {
            return Err(err(format!(
                "expected one GPU per worker ({} workers), got {} ({:?})",
                c.nworkers(),
                c.gpus.len(),
                c.gpus
            )));
        }
        // The GPUs of each process's workers (an equal number each, in order), if each
        // process's are one GPU.
        let one_each = |procs: usize| {
            c.gpus
                .chunks(c.nworkers() / procs)
                .find(|gpus| gpus.iter().any(|&g| g != gpus[0]))
                .map(|gpus| (gpus[0], gpus.iter().copied().find(|&g| g != gpus[0])))
        };
        let Some((first, Some(other))) = one_each(c.nprocs.max(1)) else {
            return Ok(());
        };
        let fits = (1..=c.nworkers())
            .find(|&k| c.nworkers().is_multiple_of(k) && one_each(k).is_none())
            .unwrap_or(c.nworkers());
        Err(err(format!(
            "the workers of a process share its memory, so they share a GPU, but {} process{} \
             would give one process GPUs {first} and {other}: run {fits} processes \
             ([cluster] nprocs = {fits}, or mpirun -np {fits})",
            c.nprocs,
            if c.nprocs == 1 { "" } else { "es" },
        )))
    }

    /// `[cluster] collective`: AllReduce (one worker group, a server beside each worker) with
    /// one worker per process, data parallelism only, and no step-wide agreement on the
    /// gradients (the servers agree on clipping by the global norm and on skipping an
    /// overflowed step through messages, which the collectives do not carry yet).
    fn check_collective(&self) -> Result<()> {
        let c = &self.cluster;
        if !c.collective {
            return Ok(());
        }
        let file = self.origin.file.as_str();
        let err = |msg: String| Error::config(file, "cluster.collective", msg);
        if c.nworker_groups != 1 || !c.servers_beside_workers() || c.nworkers() < 2 {
            return Err(err(format!(
                "collectives carry AllReduce's sums (one worker group of at least 2 workers, a \
                 server beside each: framework = \"allreduce\"); [cluster] has {} worker \
                 groups of {}, {} server groups of {}{}",
                c.nworker_groups,
                c.nworkers_per_group,
                c.nserver_groups,
                c.nservers_per_group,
                if c.server_worker_separate {
                    ", separate"
                } else {
                    ""
                }
            )));
        }
        if c.nprocs != c.nworkers() {
            return Err(err(format!(
                "the members of a collective are processes, one worker each: expected nprocs = \
                 {} (or mpirun -np {}), got {}",
                c.nworkers(),
                c.nworkers(),
                c.nprocs
            )));
        }
        if let Some(l) = self
            .layers
            .iter()
            .find(|l| crate::partition::splits_features(l))
        {
            return Err(err(format!(
                "collectives sum whole parameters (data parallelism), but layer {} splits its \
                 features over the workers (partition_dim = 1)",
                l.name
            )));
        }
        if self.updater.clip.norm.is_some() {
            return Err(err(
                "clipping by the global norm (updater.clip_norm) needs the servers' messages \
                 for now; use clip_value, or collective = false"
                    .into(),
            ));
        }
        let scales = !matches!(self.device.loss_scale, None | Some(LossScaling::Off));
        if self.device.precision == Precision::F16 || scales {
            return Err(err(
                "loss scaling (f16 products, device.loss_scale) needs the servers' messages \
                 for now; use precision = \"bf16\" or collective = false"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The loss scaling this job trains with: as written, else dynamic for f16 products (PyTorch's
    /// defaults) and none otherwise. Refused where it has no meaning yet: with CD (whose
    /// gradients come from the phases' statistics, not from a loss) and with several worker
    /// or server groups (the servers of one synchronous group agree to skip a step whose
    /// gradients overflowed; asynchronous groups have no common step to skip).
    fn loss_scaling(&self) -> Result<LossScaling> {
        let file = self.origin.file.as_str();
        let f16 = self.device.precision == Precision::F16;
        let c = &self.cluster;
        let groups = c.nworker_groups > 1 || c.nserver_groups > 1;
        let one_group = |field: &str, start: &str, end: &str| {
            Error::config(
                file,
                field,
                format!(
                    "{start} runs with one worker group (synchronous: AllReduce, Sandblaster) for \
                     now; [cluster] has {} worker groups and {} server groups{end}",
                    c.nworker_groups, c.nserver_groups
                ),
            )
        };
        let Some(written) = self.device.loss_scale else {
            return Ok(match self.algorithm {
                Algorithm::Cd => LossScaling::Off,
                _ if f16 && groups => {
                    return Err(one_group(
                        "device.precision",
                        "f16 products need loss scaling, which",
                        "; use precision = \"bf16\", or set device.loss_scale = \"none\" to \
                         train f16 without it",
                    ))
                }
                _ if f16 => LossScaling::DYNAMIC,
                _ => LossScaling::Off,
            });
        };
        let bad = |what: String| Error::config(file, "device.loss_scale", what);
        match written {
            LossScaling::Off => return Ok(written),
            LossScaling::Fixed(v) | LossScaling::Dynamic { init: v, .. }
                if !(v > 0.0 && v.is_finite()) =>
            {
                return Err(bad(format!("expected a positive scale, got {v}")))
            }
            LossScaling::Dynamic {
                growth_interval: 0, ..
            } => return Err(bad("growth_interval: expected at least 1".into())),
            _ => {}
        }
        if self.algorithm == Algorithm::Cd {
            return Err(Error::config(
                file,
                "device.loss_scale",
                "contrastive divergence has no loss to scale (its gradients are the \
                 differences of the phases' statistics); expected \"none\"",
            ));
        }
        if groups {
            return Err(one_group("device.loss_scale", "loss scaling", ""));
        }
        Ok(written)
    }

    /// Checks the job against `registry`: known types, valid fields, a sensible schedule,
    /// steps and frequencies, and a topology this build can run.
    pub fn validate(&self, registry: &Registry) -> Result<Validated> {
        let file = self.origin.file.as_str();
        let err = |field: &str, msg: String| Error::config(file, field, msg);
        if self.train_steps == 0 {
            return Err(err("train_steps", "expected at least 1".into()));
        }
        if self.test_freq > 0 && self.test_steps == 0 {
            return Err(err(
                "test_steps",
                "missing; test_freq is set, so say how many batches a test runs".into(),
            ));
        }
        let c = &self.cluster;
        for (name, v) in [
            ("nworker_groups", c.nworker_groups),
            ("nworkers_per_group", c.nworkers_per_group),
            ("nserver_groups", c.nserver_groups),
            ("nservers_per_group", c.nservers_per_group),
        ] {
            if v == 0 {
                return Err(err(
                    &format!("cluster.{name}"),
                    "expected at least 1".into(),
                ));
            }
        }
        if c.nserver_groups != 1 && c.nserver_groups != c.nworker_groups {
            return Err(err(
                "cluster.nserver_groups",
                format!(
                    "{} server groups for {} worker groups: expected one server group for all (Sandblaster, AllReduce, Downpour) or one per worker group (Hogwild)",
                    c.nserver_groups, c.nworker_groups
                ),
            ));
        }
        if c.staleness > 0 && c.nworker_groups < 2 {
            return Err(err(
                "cluster.staleness",
                "bounds how far asynchronous worker groups drift apart, and this job has one group (Downpour and Hogwild have several)".into(),
            ));
        }
        if c.staleness > MAX_STALENESS {
            return Err(err(
                "cluster.staleness",
                format!(
                    "expected at most {MAX_STALENESS} steps, got {}",
                    c.staleness
                ),
            ));
        }
        if c.nprocs == 0 {
            return Err(err(
                "cluster.nprocs",
                "expected at least 1 (processes)".into(),
            ));
        }
        if c.nprocs > 1 && !c.nworkers().is_multiple_of(c.nprocs) {
            return Err(err(
                "cluster.nprocs",
                format!(
                    "{} processes for {} worker{}: expected a divisor of {} (each process runs an equal number of workers)",
                    c.nprocs,
                    c.nworkers(),
                    if c.nworkers() == 1 { "" } else { "s" },
                    c.nworkers()
                ),
            ));
        }
        self.check_gpus()?;
        self.check_collective()?;
        // Every worker reads an equal part of each batch of the train net's input layers.
        let workers = c.nworkers();
        for l in self.layers.iter().filter(|l| l.in_phase(Phase::TRAIN)) {
            if let Some(FieldValue::Int(b)) = l.fields.get("batch_size") {
                if workers > 1 && *b > 0 && !(*b as usize).is_multiple_of(workers) {
                    return Err(err(
                        &format!("layer[{}].batch_size", l.name),
                        format!(
                            "{b} records cannot be split evenly over the {workers} workers of [cluster]; expected a multiple of {workers}"
                        ),
                    ));
                }
            }
        }
        // Checked on the fields as written, before defaults fill them in.
        let split: Vec<&str> = self
            .layers
            .iter()
            .filter(|l| crate::partition::splits_features(l))
            .map(|l| l.name.as_str())
            .collect();
        if let Some(l) = self
            .layers
            .iter()
            .find(|l| super::rbm::is_rbm(registry, l) && split.contains(&l.name.as_str()))
        {
            return Err(err(
                &format!("layer[{}].partition_dim", l.name),
                "an RBM layer is not split along its features (its hidden layer computes the whole weight's gradient); expected 0 or -1".into(),
            ));
        }
        for l in self
            .layers
            .iter()
            .filter(|l| split.contains(&l.name.as_str()))
        {
            crate::partition::check_feature_split(&self.origin.file, l, c.nworkers_per_group)?;
        }
        // Each worker holds a block of a split layer's parameters: none can be shared whole.
        if c.nworkers_per_group > 1 {
            for l in &self.layers {
                for p in &l.params {
                    let Some(source) = p.share_from.as_deref() else {
                        continue;
                    };
                    let owner = source.split('/').next().unwrap_or_default();
                    if split.contains(&l.name.as_str()) || split.contains(&owner) {
                        return Err(err(
                            &format!("layer[{}].param[{}].share_from", l.name, p.name),
                            "a parameter of a layer split along the features (partition_dim = 1) cannot be shared".into(),
                        ));
                    }
                }
            }
        }
        let mut job = self.clone();
        job.device.loss_scale = Some(self.loss_scaling()?);

        job.layers = self.algorithm_layers(registry)?;

        // The updater and its schedule.
        let u = &mut job.updater;
        let Some(ut) = registry.updater(&u.type_name) else {
            return Err(err(
                "updater.type",
                unknown_type(&u.type_name, &registry.updater_names(), "updater"),
            ));
        };
        u.fields = check_fields(&ut.fields, &UPDATER_KEYS, &u.fields)
            .map_err(|(f, m)| err(&format!("updater.{f}"), m))?;
        let lr_specs = LrSchedule::fields(&u.learning_rate.kind)
            .map_err(|e| err("updater.learning_rate.type", e.to_string()))?;
        u.learning_rate.fields = check_fields(&lr_specs, &["type"], &u.learning_rate.fields)
            .map_err(|(f, m)| err(&format!("updater.learning_rate.{f}"), m))?;
        let schedule = u
            .learning_rate
            .schedule()
            .map_err(|e| err("updater.learning_rate", e.to_string()))?;
        for (key, v) in [("clip_norm", u.clip.norm), ("clip_value", u.clip.value)] {
            let Some(v) = v else { continue };
            if !(v > 0.0 && v.is_finite()) {
                return Err(err(
                    &format!("updater.{key}"),
                    format!("expected a positive number, got {v}"),
                ));
            }
        }
        if u.weight_decay.is_nan() || u.weight_decay < 0.0 {
            return Err(err(
                "updater.weight_decay",
                format!("expected a non-negative number, got {}", u.weight_decay),
            ));
        }

        // The layers.
        for l in &mut job.layers {
            let at = |field: &str| format!("layer[{}].{field}", l.name);
            let Some(t) = registry.layer(&l.type_name) else {
                return Err(err(
                    &at("type"),
                    unknown_type(&l.type_name, &registry.layer_names(), "layer"),
                ));
            };
            l.fields = check_fields(&t.fields, &LAYER_KEYS, &l.fields)
                .map_err(|(f, m)| err(&at(&f), m))?;
            if !(-1..=1).contains(&l.partition_dim) {
                return Err(err(
                    &at("partition_dim"),
                    format!("expected -1, 0 or 1, got {}", l.partition_dim),
                ));
            }
            for p in &l.params {
                if p.lr_mult.is_nan() || p.wd_mult.is_nan() || p.lr_mult < 0.0 || p.wd_mult < 0.0 {
                    return Err(err(
                        &at(&format!("param[{}]", p.name)),
                        "lr_mult and wd_mult must be non-negative".into(),
                    ));
                }
            }
        }
        Ok(Validated { job, schedule })
    }
}

impl JobConfig {
    /// The layers the algorithm trains, checked against it: BPTT unrolls its cells, CD links
    /// its RBM pairs, BP takes neither; `unroll_len` and `cd_k` belong to their algorithm.
    fn algorithm_layers(&self, registry: &Registry) -> Result<Vec<super::LayerConfig>> {
        let file = self.origin.file.as_str();
        let err = |field: &str, msg: &str| Error::config(file, field, msg.to_string());
        let needs = |l: &super::LayerConfig| match l {
            l if l.unroll => Some(("unroll", Algorithm::Bptt)),
            l if super::rbm::is_rbm(registry, l) => Some(("type", Algorithm::Cd)),
            _ => None,
        };
        let name = |a: Algorithm| Algorithm::NAMES[a as usize];
        if let Some((l, (field, wanted))) = self.layers.iter().find_map(|l| {
            needs(l)
                .filter(|(_, a)| *a != self.algorithm)
                .map(|n| (l, n))
        }) {
            let what = match wanted {
                Algorithm::Bptt => "unrolling over time",
                _ => "an RBM layer",
            };
            return Err(err(
                &format!("layer[{}].{field}", l.name),
                &format!("{what} needs algorithm = \"{}\"", name(wanted)),
            ));
        }
        if self.unroll_len > 0 && self.algorithm != Algorithm::Bptt {
            return Err(err(
                "unroll_len",
                "only for algorithm = \"bptt\" (with layers that have unroll = true)",
            ));
        }
        if self.cd_k > 0 && self.algorithm != Algorithm::Cd {
            return Err(err("cd_k", "only for algorithm = \"cd\" (with RBM layers)"));
        }
        match self.algorithm {
            Algorithm::Bp => Ok(self.layers.clone()),
            Algorithm::Bptt if !self.layers.iter().any(|l| l.unroll) => Err(err(
                "algorithm",
                "\"bptt\" trains recurrent cells unrolled over time, and no layer has unroll = true",
            )),
            Algorithm::Bptt if self.unroll_len == 0 => Err(err(
                "unroll_len",
                "missing; algorithm = \"bptt\" unrolls the cells over this many time steps (expected at least 1)",
            )),
            Algorithm::Bptt => super::unroll::unroll(&self.layers, self.unroll_len, file),
            Algorithm::Cd if self.cd_k == 0 => Err(err(
                "cd_k",
                "missing; algorithm = \"cd\" runs this many Gibbs steps per iteration (expected at least 1; 1 is CD-1)",
            )),
            Algorithm::Cd => super::rbm::link_pairs(&self.layers, registry, file),
        }
    }
}

fn unknown_type(name: &str, known: &[&str], what: &str) -> String {
    let hint = nearest(name, known)
        .map(|n| format!("; did you mean {n:?}?"))
        .unwrap_or_default();
    format!(
        "unknown {what} type {name:?} (known: {}){hint}",
        known.join(", ")
    )
}

/// Validates a type's fields, suggesting among its fields and the common keys for typos.
fn check_fields(
    specs: &[FieldSpec],
    common: &[&str],
    given: &Fields,
) -> std::result::Result<Fields, (String, String)> {
    validate_fields(specs, given).map_err(|e| {
        if e.message.starts_with("unknown field") {
            let mut known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            known.extend(common.iter().filter(|k| **k != "params"));
            (e.field.clone(), unknown_field_message(&e.field, &known))
        } else {
            (e.field, e.message)
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{
        Algorithm, ClusterConfig, DeviceKind, Framework, JobConfig, LayerConfig, LossScaling,
        UpdaterConfig,
    };
    use crate::registry::{Provenance, Registry};
    use singa_core::Precision;

    fn job() -> JobConfig {
        JobConfig::new("t")
            .updater(UpdaterConfig::sgd(0.1))
            .layer(LayerConfig::new("fc", "inner_product").field("num_output", 4))
    }

    #[test]
    fn gpus_are_one_per_worker_of_a_cuda_device_and_one_per_process() {
        let r = Registry::builtin();
        let check = |kind: DeviceKind, gpus: &[usize], nprocs: usize| {
            let mut j = job();
            j.device.kind = kind;
            j.cluster = ClusterConfig {
                nprocs,
                gpus: gpus.to_vec(),
                ..Framework::AllReduce.preset(4)
            };
            j.validate(&r).map(|_| ()).map_err(|e| e.to_string())
        };
        let cuda = DeviceKind::Cuda;
        assert_eq!(check(cuda, &[0, 1, 2, 3], 4), Ok(()));
        assert_eq!(check(cuda, &[0, 0, 1, 1], 2), Ok(()));
        assert_eq!(check(cuda, &[3, 3, 3, 3], 1), Ok(()));
        let e = check(DeviceKind::Cpu, &[0, 1, 2, 3], 4).unwrap_err();
        assert!(
            e.contains("cluster.gpus: a GPU per worker needs [device] type = \"cuda\", but the device is \"cpu\""),
            "{e}"
        );
        let e = check(cuda, &[0, 1], 2).unwrap_err();
        assert!(
            e.contains("cluster.gpus: expected one GPU per worker (4 workers), got 2 ([0, 1])"),
            "{e}"
        );
        let e = check(cuda, &[0, 0, 1, 1], 1).unwrap_err();
        assert!(
            e.contains(
                "cluster.gpus: the workers of a process share its memory, so they share a GPU, \
                 but 1 process would give one process GPUs 0 and 1: run 2 processes \
                 ([cluster] nprocs = 2, or mpirun -np 2)"
            ),
            "{e}"
        );
        let e = check(cuda, &[0, 1, 0, 1], 2).unwrap_err();
        assert!(e.contains("run 4 processes"), "{e}");
    }

    #[test]
    fn loss_scaling_is_settled_and_refused_where_it_has_no_meaning() {
        let r = Registry::builtin();
        let settled = |precision: Precision, written: Option<LossScaling>| {
            let mut j = job();
            j.device.precision = precision;
            j.device.loss_scale = written;
            j.validate(&r).map(|v| v.job.device.loss_scale.unwrap())
        };
        assert_eq!(settled(Precision::F32, None).unwrap(), LossScaling::Off);
        assert_eq!(settled(Precision::BF16, None).unwrap(), LossScaling::Off);
        assert_eq!(settled(Precision::F16, None).unwrap(), LossScaling::DYNAMIC);
        let fixed = LossScaling::Fixed(8.0);
        assert_eq!(settled(Precision::F32, Some(fixed)).unwrap(), fixed);

        let mut vis = LayerConfig::new("v", "rbm_vis");
        vis.srclayers = vec!["fc".into(), "h".into()];
        let hid = LayerConfig::new("h", "rbm_hid").src("v").field("hdim", 4);
        let mut cd = job().cd(1).layer(vis).layer(hid);
        cd.device.precision = Precision::F16;
        // Unwritten, CD trains f16 unscaled; written, it is refused.
        let off = cd.validate(&r).map(|v| v.job.device.loss_scale).ok();
        assert_eq!(off, Some(Some(LossScaling::Off)));
        cd.device.loss_scale = Some(LossScaling::DYNAMIC);
        let e = cd.validate(&r).unwrap_err().to_string();
        assert!(
            e.contains("device.loss_scale: contrastive divergence has no loss to scale"),
            "{e}"
        );

        let mut two = job();
        two.cluster = Framework::AllReduce.preset(2);
        two.device.precision = Precision::F16;
        let settled = two.validate(&r).unwrap().job.device.loss_scale;
        assert_eq!(
            settled,
            Some(LossScaling::DYNAMIC),
            "one synchronous group scales"
        );
        two.cluster = Framework::Downpour.preset(2);
        let e = two.validate(&r).unwrap_err().to_string();
        assert!(
            e.contains(
                "device.precision: f16 products need loss scaling, which runs with one worker \
                 group (synchronous: AllReduce, Sandblaster) for now; [cluster] has 2 worker \
                 groups and 1 server groups; use precision"
            ),
            "{e}"
        );
        two.device.loss_scale = Some(LossScaling::Off);
        assert!(two.validate(&r).is_ok());
        two.device.loss_scale = Some(fixed);
        let e = two.validate(&r).unwrap_err().to_string();
        assert!(
            e.contains("device.loss_scale: loss scaling runs with one worker group"),
            "{e}"
        );
        let mut bad = job();
        bad.device.loss_scale = Some(LossScaling::Fixed(0.0));
        let e = bad.validate(&r).unwrap_err().to_string();
        assert!(
            e.contains("device.loss_scale: expected a positive scale, got 0"),
            "{e}"
        );
        bad.device.loss_scale = Some(LossScaling::Dynamic {
            init: 8.0,
            growth_interval: 0,
        });
        let e = bad.validate(&r).unwrap_err().to_string();
        assert!(
            e.contains("device.loss_scale: growth_interval: expected at least 1"),
            "{e}"
        );
    }

    #[test]
    fn valid_job_gets_defaults() {
        let v = job().validate(&Registry::builtin()).unwrap();
        assert!(v.job.layers[0].fields.bool("bias_term").unwrap());
    }

    #[test]
    fn mistakes_are_named() {
        let r = Registry::builtin();
        let e = job()
            .layer(LayerConfig::new("x", "inner_prodcut"))
            .validate(&r)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("<code>: layer[x].type: unknown layer type \"inner_prodcut\""),
            "{e}"
        );
        assert!(
            e.to_string().ends_with("did you mean \"inner_product\"?"),
            "{e}"
        );
        let mut j = job();
        j.layers[0].fields.set("num_ouput", 3);
        let e = j.validate(&r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "<code>: layer[fc].num_ouput: unknown field; did you mean `num_output`?"
        );
        let e = job()
            .updater(UpdaterConfig::sgd(0.1).field("momentun", 0.9))
            .validate(&r)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "<code>: updater.momentun: unknown field; did you mean `momentum`?"
        );
        let mut j = job();
        j.cluster = ClusterConfig {
            nserver_groups: 2,
            ..Default::default()
        };
        assert!(j
            .validate(&r)
            .unwrap_err()
            .to_string()
            .contains("cluster.nserver_groups"));
    }

    /// BPTT needs cells marked `unroll` and `unroll_len`; BP refuses both; a valid BPTT job
    /// comes back unrolled.
    #[test]
    fn bptt_and_unrolling_go_together() {
        let r = Registry::builtin();
        let cell = || {
            LayerConfig::new("g", "gru")
                .src("x")
                .field("hidden_dim", 2)
                .unrolled()
        };
        let e = |j: JobConfig| j.validate(&r).unwrap_err().to_string();
        let mut bptt = job();
        bptt.algorithm = Algorithm::Bptt;
        assert!(e(bptt.clone()).contains("algorithm: \"bptt\""));
        assert!(e(bptt.layer(cell())).contains("unroll_len: missing"));
        let v = job().bptt(3).layer(cell()).validate(&r).unwrap();
        let names: Vec<&str> = v.job.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["fc", "g@x", "g@in", "g@carry", "g@0", "g@1", "g@2"]);
        assert!(e(job().layer(cell())).contains("layer[g].unroll: unrolling over time needs"));
        let mut len_only = job();
        len_only.unroll_len = 3;
        assert!(e(len_only).contains("unroll_len: only for algorithm"));
    }

    /// CD needs RBM pairs that name each other and `cd_k`; other algorithms refuse RBM
    /// layers; a valid pair comes back linked (sources ordered, `hdim` and the weight shared).
    #[test]
    fn cd_and_rbm_pairs_go_together() {
        let r = Registry::builtin();
        let vis = |srcs: &[&str]| {
            let mut l = LayerConfig::new("v", "rbm_vis");
            l.srclayers = srcs.iter().map(|s| s.to_string()).collect();
            l
        };
        let hid = |src: &str| LayerConfig::new("h", "rbm_hid").src(src).field("hdim", 4);
        let e = |j: JobConfig| j.validate(&r).unwrap_err().to_string();
        let mut cd = job();
        cd.algorithm = Algorithm::Cd;
        assert!(e(cd.clone()).contains("cd_k: missing"), "{}", e(cd.clone()));
        let cd = job().cd(1);
        assert!(e(cd.clone()).contains("algorithm: \"cd\" trains RBMs"));
        let pair = |v, h| cd.clone().layer(v).layer(h);
        let linked = pair(vis(&["h", "fc"]), hid("v")).validate(&r).unwrap().job;
        let v = linked.layers.iter().find(|l| l.name == "v").unwrap();
        assert_eq!(v.srclayers, ["fc", "h"]);
        assert_eq!(v.fields.usize("hdim").unwrap(), 4);
        let h = linked.layers.iter().find(|l| l.name == "h").unwrap();
        assert_eq!(h.params[0].share_from.as_deref(), Some("v/weight"));
        assert!(e(pair(vis(&["fc"]), hid("v")))
            .contains("layer[v].srclayers: an RBM's visible layer (rbm_vis) reads two sources"));
        assert!(e(pair(vis(&["fc", "h"]), hid("fc"))).contains(
            "layer[h].srclayers: the rbm_hid layer of an RBM reads its rbm_vis layer \"v\" only"
        ));
        let e2 = e(pair(vis(&["fc", "h"]), hid("v"))
            .layer(LayerConfig::new("h2", "rbm_hid").src("v").field("hdim", 4)));
        assert!(
            e2.contains(
                "layer[h2].srclayers: no visible layer (rbm_vis) reads this rbm_hid layer back"
            ),
            "{e2}"
        );
        // Pairs are found by their types' roles, which a plugin's types can take too.
        let mut other = Registry::builtin();
        for (from, to) in [("rbm_vis", "my_vis"), ("rbm_hid", "my_hid")] {
            let mut t = other.layer(from).unwrap().clone();
            t.name = to.into();
            other.add_layer(t, Provenance::BuiltIn).unwrap();
        }
        let mut mine = pair(vis(&["h", "fc"]), hid("v"));
        mine.layers[1].type_name = "my_vis".into();
        mine.layers[2].type_name = "my_hid".into();
        let linked = mine.validate(&other).unwrap().job;
        let h = linked.layers.iter().find(|l| l.name == "h").unwrap();
        assert_eq!(h.params[0].share_from.as_deref(), Some("v/weight"));
        mine.layers[2].type_name = "relu".into();
        let e4 = mine.validate(&other).unwrap_err().to_string();
        assert!(
            e4.contains("layer[v].srclayers: an RBM's visible layer (my_vis) reads two sources"),
            "{e4}"
        );
        let e3 = e(job().layer(vis(&["fc", "h"])).layer(hid("v")));
        assert!(
            e3.contains("layer[v].type: an RBM layer needs algorithm = \"cd\""),
            "{e3}"
        );
        // Every layer is checked, not only the first that needs an algorithm.
        let cell = LayerConfig::new("g", "gru")
            .src("fc")
            .field("hidden_dim", 2)
            .unrolled();
        let mixed = job()
            .bptt(2)
            .layer(cell.clone())
            .layer(vis(&["fc", "h"]))
            .layer(hid("v"));
        assert!(e(mixed).contains("layer[v].type: an RBM layer needs algorithm = \"cd\""));
        let mixed = job()
            .cd(1)
            .layer(vis(&["fc", "h"]))
            .layer(hid("v"))
            .layer(cell);
        assert!(
            e(mixed).contains("layer[g].unroll: unrolling over time needs algorithm = \"bptt\"")
        );
        let mut split = pair(vis(&["fc", "h"]), hid("v"));
        split.layers.last_mut().unwrap().partition_dim = 1;
        assert!(e(split).contains("layer[h].partition_dim: an RBM layer is not split"));
        let mut k_only = job();
        k_only.cd_k = 1;
        assert!(e(k_only).contains("cd_k: only for algorithm = \"cd\""));
    }

    /// Clipping thresholds must be positive; both kinds run with any cluster (by norm: the
    /// norm of each group's step).
    #[test]
    fn clipping_is_checked() {
        let r = Registry::builtin();
        let mut j = job();
        j.updater.clip.norm = Some(-1.0);
        let e = j.validate(&r).unwrap_err().to_string();
        assert!(
            e.contains("updater.clip_norm: expected a positive number"),
            "{e}"
        );
        let with = |cluster: ClusterConfig, norm: Option<f32>, value: Option<f32>| {
            let mut j = job();
            j.updater.clip.norm = norm;
            j.updater.clip.value = value;
            j.cluster = cluster;
            j.validate(&r).map(|_| ()).map_err(|e| e.to_string())
        };
        for framework in [
            Framework::Sandblaster,
            Framework::AllReduce,
            Framework::Downpour,
            Framework::Hogwild,
        ] {
            with(framework.preset(2), Some(0.5), Some(0.1)).unwrap();
        }
    }
}
