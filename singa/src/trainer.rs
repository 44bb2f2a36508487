//! The training loop of a single worker: TrainOneBatch, updates, display, test, checkpoints.

use crate::algorithm;
use crate::checkpoint::{self, CheckpointMeta};
use crate::cluster::{self, Cluster, Topology};
use crate::config::{JobConfig, Validated};
use crate::device;
use crate::engine::{Engine, Local};
use crate::net::{NeuralNet, Part};
use crate::params::ParamStore;
use crate::partition::Exchanges;
use crate::registry::Registry;
use crate::workspace::{Existing, Workspace};
use singa_comm::{Fabric, LocalFabric};
use singa_core::{DType, DeviceRef, Error, Phase, Result, Tensor};
use singa_layers::schedule::LrSchedule;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to run a job, beyond what the job file says.
#[derive(Clone)]
pub struct TrainOptions {
    /// CPU threads (overrides the job file).
    pub threads: Option<usize>,
    /// Where metrics, the summary and checkpoints go (`None`: nowhere).
    pub workspace: Option<PathBuf>,
    /// What to do when the workspace already holds a run.
    pub existing: Existing,
    /// The engine between the job's ranks, when they live in several OS processes (MPI);
    /// it must connect [`Topology::placement`] with `cluster.nprocs` ranks. `None`: every
    /// rank in this process.
    pub fabric: Option<Arc<dyn Fabric>>,
    /// Builds every net on the reference device in place of the job's (`--dry-run` on a
    /// machine without the job's GPU): the same nets, shapes and placement, slowly.
    pub stand_in: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            threads: None,
            workspace: None,
            existing: Existing::Refuse,
            fabric: None,
            stand_in: false,
        }
    }
}

impl std::fmt::Debug for TrainOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("threads", &self.threads)
            .field("workspace", &self.workspace)
            .field("existing", &self.existing)
            .field("fabric", &self.fabric.as_ref().map(|f| f.engine()))
            .field("stand_in", &self.stand_in)
            .finish()
    }
}

/// Metrics of one display or test event.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Steps completed.
    pub step: u64,
    /// `train` or `test`.
    pub phase: &'static str,
    /// The metrics (loss, accuracy, ...).
    pub metrics: Vec<(String, f64)>,
    /// Training throughput over the display window (train reports only).
    pub samples_per_sec: Option<f64>,
    /// Seconds since the run started.
    pub elapsed: f64,
    /// The learning rate at this step (train reports only).
    pub lr: Option<f32>,
}

impl Report {
    /// The value of metric `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// The line of `metrics.jsonl`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("step".into(), self.step.into());
        m.insert("phase".into(), self.phase.into());
        for (k, v) in &self.metrics {
            m.insert(k.clone(), (*v).into());
        }
        if let Some(r) = self.samples_per_sec {
            m.insert("samples_per_sec".into(), r.into());
        }
        if let Some(lr) = self.lr {
            m.insert("lr".into(), (lr as f64).into());
        }
        m.insert("elapsed".into(), self.elapsed.into());
        serde_json::Value::Object(m)
    }
}

/// The outcome of a run (also written to `summary.json`).
#[derive(Clone, Debug)]
pub struct Summary {
    /// The job's name.
    pub job: String,
    /// Steps completed.
    pub steps: u64,
    /// The last training metrics.
    pub train: Vec<(String, f64)>,
    /// The final test metrics, if the job has a test net.
    pub test: Vec<(String, f64)>,
    /// Training samples per second over the whole run (time in TrainOneBatch and updates).
    pub samples_per_sec: f64,
    /// Seconds from start to end, tests and checkpoints included.
    pub wall_seconds: f64,
    /// The device.
    pub device: String,
    /// The number of trainable values.
    pub params: usize,
}

impl Summary {
    /// `summary.json`.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |m: &[(String, f64)], k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        serde_json::json!({
            "job": self.job,
            "steps": self.steps,
            "train_loss": get(&self.train, "loss"),
            "train_accuracy": get(&self.train, "accuracy"),
            "test_loss": get(&self.test, "loss"),
            "test_accuracy": get(&self.test, "accuracy"),
            "samples_per_sec": self.samples_per_sec,
            "wall_seconds": self.wall_seconds,
            "device": self.device,
            "params": self.params,
            "train_metrics": metrics_object(&self.train),
            "test_metrics": metrics_object(&self.test),
        })
    }
}

fn metrics_object(m: &[(String, f64)]) -> serde_json::Value {
    serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), (*v).into())).collect())
}

/// What happens during a run, for progress displays.
pub enum Event<'a> {
    /// Training starts (or resumes) at `first_step` of `train_steps`.
    Start {
        /// Steps already done (after a resume).
        first_step: u64,
        /// Total steps.
        train_steps: u64,
        /// The device.
        device: &'a str,
    },
    /// A step finished.
    Step(u64),
    /// A display or test report.
    Report(&'a Report),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
    /// Something the user should know that does not stop the run.
    Warning(&'a str),
    /// Something the run did before it started that the user may want to see (parameters
    /// taken from other runs' checkpoints).
    Note(&'a str),
    /// The run is over.
    Done(&'a Summary),
}

/// Receives [`Event`]s.
pub trait Observer: Send {
    /// Handles one event.
    fn event(&mut self, event: Event<'_>);
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {
    fn event(&mut self, _: Event<'_>) {}
}

/// A job ready to train: its device, nets, parameters and updater.
pub struct Trainer {
    job: JobConfig,
    schedule: LrSchedule,
    dev: DeviceRef,
    store: ParamStore,
    train: NeuralNet,
    test: Option<NeuralNet>,
    test_start: Vec<(String, Vec<u64>)>,
    state_names: Vec<String>,
    step: u64,
    workspace: Option<Workspace>,
    pending_warnings: Vec<String>,
    /// Lines for the user at the start of the run ([`Event::Note`]).
    notes: Vec<String>,
    /// The algorithm's way of running the test net (SINGA's `TestOneBatch`).
    tester: Box<dyn algorithm::TrainOneBatch>,
    /// Who trains: this thread alone, or the workers and servers of a cluster (this thread
    /// is worker 0).
    engine: Box<dyn Engine>,
}

/// Training steps since the last train report.
#[derive(Default)]
struct Window {
    time: Duration,
    steps: u64,
}

impl Window {
    fn add(&mut self, dt: Duration) {
        self.time += dt;
        self.steps += 1;
    }
}

impl Trainer {
    /// Validates `job` against `registry`, creates its device and nets, and opens the workspace
    /// (resuming from its latest checkpoint when asked).
    pub fn new(job: &JobConfig, registry: &Registry, options: &TrainOptions) -> Result<Trainer> {
        Trainer::build(job, registry, options).map_err(|e| name_job_file(e, &job.origin.file))
    }

    fn build(job: &JobConfig, registry: &Registry, options: &TrainOptions) -> Result<Trainer> {
        let Validated { mut job, schedule } = job.validate(registry)?;
        if options.stand_in {
            job.device.kind = crate::config::DeviceKind::Reference;
        }
        let timeout = Duration::from_secs(job.cluster.timeout_secs);
        // A distributed job: its ranks, connected, and rank 0's endpoints.
        let ranks = if job.cluster.is_distributed() {
            let topology = Topology::new(&job.cluster, job.cluster.nprocs);
            let fabric: Arc<dyn Fabric> = match &options.fabric {
                Some(f) => Arc::clone(f),
                None => Arc::new(LocalFabric::connect(&topology.placement())?),
            };
            if fabric.ranks() != topology.ranks() {
                return Err(Error::invalid(format!(
                    "the job has {} ranks but its fabric ({}) connects {}",
                    topology.ranks(),
                    fabric.engine(),
                    fabric.ranks()
                )));
            }
            let mut ends = fabric.take_rank(0)?;
            let bridges = job.cluster.nworkers_per_group > 1;
            let exchanges =
                Exchanges::for_rank(timeout, &mut ends, &topology.rank_workers(0), bridges)?;
            Some((topology, fabric, ends, exchanges))
        } else {
            None
        };
        let (dev, part, exchanges) = match &ranks {
            Some((topology, fabric, _, exchanges)) => {
                let c = &job.cluster;
                let worker = cluster::worker_device(&job, topology, &**fabric, options.threads)
                    .for_worker(c, 0);
                (
                    device::create(&worker, None)?,
                    Part::of_worker(0, 0, c.nworker_groups as u32, c.nworkers_per_group as u32),
                    Arc::clone(exchanges),
                )
            }
            None => (
                device::create(&job.device.for_worker(&job.cluster, 0), options.threads)?,
                Part::WHOLE,
                Exchanges::new(timeout),
            ),
        };
        let mut store = ParamStore::new();
        let mut train = NeuralNet::build_part(
            &job,
            registry,
            &dev,
            &mut store,
            Phase::TRAIN,
            part,
            Some(&exchanges),
        )?;
        let test = if job.test_steps > 0 {
            Some(NeuralNet::build(
                &job,
                registry,
                &dev,
                &mut store,
                Phase::TEST,
            )?)
        } else {
            None
        };
        // A run resumed from its own checkpoint takes every value from it: the pretrained
        // checkpoints are not read again (they may have moved since the run began).
        let resuming = match (&options.workspace, options.existing) {
            (Some(dir), Existing::Resume) => {
                !checkpoint::list(&Workspace::checkpoint_dir_in(dir))?.is_empty()
            }
            _ => false,
        };
        let notes = match resuming {
            true => Vec::new(),
            false => checkpoint::Pretrained::load(&job)?.initialise(&mut store)?,
        };
        let test_start = match &test {
            Some(t) => t.layer_states()?,
            None => Vec::new(),
        };
        let ut = registry.updater(&job.updater.type_name).expect("validated");
        let updater = (ut.create)(&job.updater.fields)
            .into_result()
            .map_err(|e| Error::config(&job.origin.file, "updater", e))?;
        let state_names: Vec<String> = updater
            .state_names()
            .into_result()?
            .into_iter()
            .map(|s| s.into_string())
            .collect();
        for e in store.entries_mut() {
            if e.trainable {
                e.state = state_names
                    .iter()
                    .map(|_| Tensor::zeros(&dev, e.value.shape(), DType::F32))
                    .collect::<Result<_>>()?;
            }
        }
        let ready_after = store.ready_after(train.layers().len());
        let engine: Box<dyn Engine> = match ranks {
            Some((topology, fabric, endpoints, exchanges)) => Box::new(Cluster::start(
                cluster::Start {
                    job: &job,
                    registry,
                    schedule: &schedule,
                    topology,
                    fabric,
                    endpoints,
                    exchanges,
                    threads: options.threads,
                    state_names: state_names.clone(),
                },
                &mut train,
                &store,
                ready_after,
            )?),
            None => Box::new(
                Local::new(
                    updater,
                    schedule.clone(),
                    job.updater.weight_decay,
                    algorithm::create(&job),
                    ready_after,
                )
                .with_clipping(job.updater.clip)
                .with_loss_scaling(job.device.loss_scale.expect("settled by validation")),
            ),
        };
        let workspace = match &options.workspace {
            Some(dir) => Some(Workspace::open(dir, options.existing)?),
            None => None,
        };
        let tester = algorithm::create(&job);
        let mut trainer = Trainer {
            job,
            schedule,
            dev,
            store,
            train,
            test,
            test_start,
            state_names,
            step: 0,
            workspace,
            pending_warnings: Vec::new(),
            notes,
            tester,
            engine,
        };
        if options.existing == Existing::Resume {
            trainer.resume_latest()?;
        }
        Ok(trainer)
    }

    /// Loads the newest readable checkpoint of the workspace, if any. A checkpoint that cannot
    /// be read is skipped with a warning; one written for another net is an error.
    fn resume_latest(&mut self) -> Result<()> {
        let Some(ws) = &self.workspace else {
            return Err(Error::invalid("--resume needs a workspace"));
        };
        let found = checkpoint::list(&ws.checkpoint_dir())?;
        let mut unreadable = Vec::new();
        for (_, path) in &found {
            match checkpoint::load(path) {
                Ok(loaded) => {
                    self.restore(&loaded)?;
                    if let Some(ws) = &mut self.workspace {
                        ws.rewind_metrics(loaded.meta.step)?;
                    }
                    for e in &unreadable {
                        self.pending_warnings
                            .push(format!("skipped an unreadable checkpoint: {e}"));
                    }
                    return Ok(());
                }
                Err(e) => unreadable.push(e),
            }
        }
        match unreadable.into_iter().next() {
            // Starting over would overwrite those files: refuse instead.
            Some(newest) => {
                Err(newest.context("--resume: no checkpoint of the workspace can be read"))
            }
            None => Ok(()),
        }
    }

    /// Restores parameters, updater state, step and layer states from a checkpoint.
    pub fn restore(&mut self, loaded: &checkpoint::Loaded) -> Result<()> {
        self.check_layouts(loaded)?;
        if loaded.meta.step > self.job.train_steps {
            return Err(Error::checkpoint(
                &loaded.path,
                format!(
                    "it is of step {}, past this job's train_steps = {}: nothing is left to train (raise train_steps in {} to go on)",
                    loaded.meta.step, self.job.train_steps, self.job.origin.file
                ),
            ));
        }
        self.note_other_job(loaded);
        // A layer with state (a data layer's position) that the checkpoint does not restore
        // starts over: the run goes on, but not exactly as it would have.
        let saved: Vec<&str> = loaded
            .meta
            .layer_states
            .iter()
            .map(|(l, _)| l.as_str())
            .collect();
        for (layer, _) in self.train.layer_states()? {
            if !saved.contains(&layer.as_str()) {
                self.pending_warnings.push(format!(
                    "checkpoint {} has no state for layer {layer}: it starts from the beginning (of its data), so the run does not continue exactly",
                    loaded.path.display()
                ));
            }
        }
        loaded.restore(&mut self.store, &self.state_names)?;
        for (layer, state) in &loaded.meta.layer_states {
            self.train
                .restore_layer_state(layer, state)
                .map_err(|e| Error::checkpoint(&loaded.path, e))?;
        }
        self.engine
            .restore(&self.store, loaded, &loaded.meta.layer_states)
            .map_err(|e| Error::checkpoint(&loaded.path, e))?;
        self.step = loaded.meta.step;
        Ok(())
    }

    /// Loads only the parameters of a checkpoint (for evaluation).
    pub fn load_params(&mut self, path: &Path) -> Result<u64> {
        let loaded = checkpoint::load(path)?;
        self.check_layouts(&loaded)?;
        self.note_other_job(&loaded);
        loaded.restore(&mut self.store, &[])?;
        self.engine.restore(&self.store, &loaded, &[])?;
        Ok(loaded.meta.step)
    }

    /// Warns when `loaded` was written by a job of another name: parameters of the same
    /// names and shapes load, but they may mean something else (MNIST weights under a
    /// Fashion-MNIST job).
    fn note_other_job(&mut self, loaded: &checkpoint::Loaded) {
        if loaded.meta.job != self.job.name {
            self.pending_warnings.push(format!(
                "checkpoint {} was written by job {:?}, not {:?} ({}): its parameters fit this net, but check that they are the ones you meant",
                loaded.path.display(),
                loaded.meta.job,
                self.job.name,
                self.job.origin.file
            ));
        }
    }

    /// The warnings gathered so far (about checkpoints loaded, say), for the caller to show;
    /// [`Trainer::run`] shows them itself.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending_warnings)
    }

    /// Refuses a checkpoint that stores an inner product's weight in the other layout.
    fn check_layouts(&self, loaded: &checkpoint::Loaded) -> Result<()> {
        let Some(recorded) = &loaded.meta.transposed else {
            return Ok(());
        };
        let mine = transposed_layers(&self.job);
        for l in self
            .job
            .layers
            .iter()
            .filter(|l| l.type_name == "inner_product")
        {
            let (theirs, ours) = (recorded.contains(&l.name), mine.contains(&l.name));
            if theirs != ours {
                let layout = |t: bool| if t { "[out, in]" } else { "[in, out]" };
                return Err(Error::checkpoint(
                    &loaded.path,
                    format!(
                        "it stores layer {}'s weight as {}, this job as {} (transpose, or partition_dim = 1, differs)",
                        l.name,
                        layout(theirs),
                        layout(ours)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The validated job.
    pub fn job(&self) -> &JobConfig {
        &self.job
    }

    /// The device.
    pub fn device(&self) -> &DeviceRef {
        &self.dev
    }

    /// The parameters.
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// The train net.
    pub fn train_net(&self) -> &NeuralNet {
        &self.train
    }

    /// The test net, if the job has one.
    pub fn test_net(&self) -> Option<&NeuralNet> {
        self.test.as_ref()
    }

    /// The test net, to run layer by layer (`singa sample`).
    pub fn test_net_mut(&mut self) -> Option<&mut NeuralNet> {
        self.test.as_mut()
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The workers and servers, if the job has them.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.engine.cluster()
    }

    /// Training samples per step: a worker's batch times the workers of its group.
    pub fn samples_per_step(&self) -> usize {
        self.train.batch_size() * self.engine.workers()
    }

    /// One training step (TrainOneBatch and the updates); returns its learning rate.
    pub fn train_step(&mut self) -> Result<f32> {
        let lr = self.schedule.lr(self.step);
        self.engine
            .train_step(&mut self.train, &mut self.store, self.step)
            .map_err(|e| e.context(format!("step {}", self.step + 1)))?;
        self.step += 1;
        Ok(lr)
    }

    /// The training metrics accumulated since they were last read (over every worker).
    pub fn train_metrics(&mut self) -> Result<Vec<(String, f64)>> {
        let own = self.train.read_metrics()?;
        self.engine.train_metrics(own)
    }

    /// Runs the test net forward over `batches` batches of its data from the start, handing
    /// the net to `each` after every batch (to read its layers' outputs): what `singa predict`
    /// runs on.
    pub fn run_test_net(
        &mut self,
        batches: usize,
        mut each: impl FnMut(&NeuralNet) -> Result<()>,
    ) -> Result<()> {
        self.engine.settle(&mut self.store)?;
        let test = self.test.as_mut().ok_or_else(|| {
            Error::config(&self.job.origin.file, "layer", "the job has no test net")
        })?;
        for (name, s) in &self.test_start {
            test.restore_layer_state(name, s)?;
        }
        for _ in 0..batches {
            self.tester.test_one_batch(test, Phase::TEST)?;
            each(test)?;
        }
        test.read_metrics()?;
        Ok(())
    }

    /// Runs `test_steps` batches of the test data (from its start) and returns the metrics.
    pub fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        self.engine.settle(&mut self.store)?;
        let steps = self.job.test_steps;
        let test = self.test.as_mut().ok_or_else(|| {
            Error::config(
                &self.job.origin.file,
                "test_steps",
                "the job has no test net (set test_steps)",
            )
        })?;
        for (name, s) in &self.test_start {
            test.restore_layer_state(name, s)?;
        }
        test.read_metrics()?;
        for _ in 0..steps {
            self.tester.test_one_batch(test, Phase::TEST)?;
        }
        test.read_metrics()
    }

    /// Writes a checkpoint into the workspace; returns its path.
    pub fn save_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let Some(ws) = &self.workspace else {
            return Ok(None);
        };
        let path = ws.checkpoint_dir().join(checkpoint::file_name(self.step));
        self.engine.settle(&mut self.store)?;
        // A checkpoint is only written of values worth resuming from.
        if let Some(p) = crate::finite::nonfinite_param(&self.store)? {
            return Err(Error::diverged(format!(
                "after step {}, {p}; its checkpoint was not written",
                self.step
            )));
        }
        let meta = CheckpointMeta {
            step: self.step,
            job: self.job.name.clone(),
            updater: self.job.updater.type_name.clone(),
            layer_states: self.train.layer_states()?,
            transposed: Some(transposed_layers(&self.job)),
            job_file: self.job.text.clone().map(|text| {
                let dir = std::path::absolute(&self.job.origin.base_dir)
                    .unwrap_or_else(|_| self.job.origin.base_dir.clone());
                (text, dir.display().to_string())
            }),
        };
        let extra = self.engine.checkpoint_state(&mut self.store)?;
        checkpoint::save(&path, &self.store, &self.state_names, &extra, &meta)?;
        Ok(Some(path))
    }

    fn log(&mut self, report: &Report, obs: &mut dyn Observer) -> Result<()> {
        if let Some(ws) = &mut self.workspace {
            ws.log(&report.to_json())?;
        }
        obs.event(Event::Report(report));
        Ok(())
    }

    /// Trains to `train_steps`, reporting, testing and checkpointing as the job says, and
    /// writes `summary.json`.
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<Summary> {
        self.train_to_the_end(obs).map_err(|e| {
            let e = crate::finite::append(e, &self.last_checkpoint());
            name_job_file(e, &self.job.origin.file)
        })
    }

    /// Names the workspace's newest checkpoint, for a run that stops without writing one.
    fn last_checkpoint(&self) -> String {
        let Some(ws) = &self.workspace else {
            return "no workspace, so no checkpoint".into();
        };
        match checkpoint::list(&ws.checkpoint_dir()).map(|l| l.into_iter().next()) {
            Ok(Some((step, path))) => format!(
                "the last checkpoint, {} (step {step}), is kept",
                path.display()
            ),
            _ => "no checkpoint was written".into(),
        }
    }

    fn train_to_the_end(&mut self, obs: &mut dyn Observer) -> Result<Summary> {
        let start = Instant::now();
        for n in std::mem::take(&mut self.notes) {
            obs.event(Event::Note(&n));
        }
        for w in std::mem::take(&mut self.pending_warnings) {
            obs.event(Event::Warning(&w));
        }
        let mut description = self.dev.info().description.into_string();
        match self.job.device.loss_scale {
            None | Some(crate::config::LossScaling::Off) => {}
            Some(scaling) => description += &format!(", loss scale {scaling}"),
        }
        let total = self.job.train_steps;
        obs.event(Event::Start {
            first_step: self.step,
            train_steps: total,
            device: &description,
        });
        let batch = self.samples_per_step() as f64;
        let (display, test_freq, ckpt_freq) = (
            self.job.display_freq,
            self.job.test_freq,
            self.job.checkpoint_freq,
        );
        let mut train_time = Duration::ZERO;
        let mut trained_steps = 0u64;
        let mut window = Window::default();
        let mut last_train = Vec::new();
        let mut lr = self.schedule.lr(self.step);
        while self.step < total {
            let t = Instant::now();
            lr = self.train_step()?;
            let dt = t.elapsed();
            train_time += dt;
            window.add(dt);
            trained_steps += 1;
            obs.event(Event::Step(self.step));
            let s = self.step;
            if display > 0 && s.is_multiple_of(display) {
                last_train = self.train_report(&mut window, batch, lr, start, obs)?;
            }
            if s < total {
                if test_freq > 0 && s.is_multiple_of(test_freq) && self.test.is_some() {
                    self.test_report(start, obs)?;
                }
                if ckpt_freq > 0 && s.is_multiple_of(ckpt_freq) {
                    self.checkpoint(obs)?;
                }
            }
        }
        if window.steps > 0 {
            last_train = self.train_report(&mut window, batch, lr, start, obs)?;
        }
        // The parameters the run leaves are the servers'.
        self.engine.settle(&mut self.store)?;
        let test = if self.test.is_some() {
            self.test_report(start, obs)?.metrics
        } else {
            Vec::new()
        };
        if trained_steps > 0 {
            self.checkpoint(obs)?;
        }
        let summary = Summary {
            job: self.job.name.clone(),
            steps: self.step,
            train: last_train,
            test,
            samples_per_sec: trained_steps as f64 * batch / train_time.as_secs_f64().max(1e-9),
            wall_seconds: start.elapsed().as_secs_f64(),
            device: description,
            params: self.store.numel(),
        };
        if let Some(ws) = &self.workspace {
            ws.write_summary(&summary.to_json())?;
        }
        obs.event(Event::Done(&summary));
        Ok(summary)
    }

    /// Logs the training metrics and throughput of the steps in `window`, and starts a new one.
    fn train_report(
        &mut self,
        window: &mut Window,
        batch: f64,
        lr: f32,
        start: Instant,
        obs: &mut dyn Observer,
    ) -> Result<Vec<(String, f64)>> {
        let report = Report {
            step: self.step,
            phase: "train",
            metrics: self.train_metrics()?,
            samples_per_sec: Some(
                window.steps as f64 * batch / window.time.as_secs_f64().max(1e-9),
            ),
            elapsed: start.elapsed().as_secs_f64(),
            lr: Some(lr),
        };
        self.log(&report, obs)?;
        *window = Window::default();
        Ok(report.metrics)
    }

    fn checkpoint(&mut self, obs: &mut dyn Observer) -> Result<()> {
        if let Some(p) = self.save_checkpoint()? {
            obs.event(Event::Checkpoint(&p));
        }
        Ok(())
    }

    fn test_report(&mut self, start: Instant, obs: &mut dyn Observer) -> Result<Report> {
        let report = Report {
            step: self.step,
            phase: "test",
            metrics: self.evaluate()?,
            samples_per_sec: None,
            elapsed: start.elapsed().as_secs_f64(),
            lr: None,
        };
        self.log(&report, obs)?;
        Ok(report)
    }
}

/// `e` with the job file named, where it names a layer but not the file: errors while
/// building the nets, allocating or reading data. Errors in the job file or a checkpoint name
/// their file already, and a diverged run is about the run.
fn name_job_file(e: Error, file: &str) -> Error {
    match e.root() {
        Error::Config { .. } | Error::Checkpoint { .. } | Error::Diverged { .. } => e,
        _ => e.context(file),
    }
}

/// The inner products of `job` that store their weights `[out, in]`.
fn transposed_layers(job: &JobConfig) -> Vec<String> {
    job.layers
        .iter()
        .filter(|l| l.type_name == "inner_product")
        .filter(|l| {
            crate::partition::splits_features(l)
                || matches!(
                    l.fields.get("transpose"),
                    Some(singa_core::FieldValue::Bool(true))
                )
        })
        .map(|l| l.name.clone())
        .collect()
}
