//! What a job is: the net, the algorithm, the updater, the device and the cluster.
//!
//! These types are what a job file is parsed into ([`JobConfig::from_file`]) and what the
//! builder methods create in code; both go through the same validation
//! ([`JobConfig::validate`]) before anything runs.
//!
//! ```
//! use singa::config::{JobConfig, LayerConfig, UpdaterConfig};
//! let job = JobConfig::new("tiny")
//!     .train_steps(100)
//!     .updater(UpdaterConfig::sgd(0.1).momentum(0.9))
//!     .layer(LayerConfig::new("fc", "inner_product").src("data").field("num_output", 10));
//! assert_eq!(job.layers[0].srclayers, vec!["data".to_string()]);
//! ```

mod parse;
pub mod rbm;
pub mod unroll;
mod validate;

use singa_core::{FieldValue, Fields, Init, Phase, Precision};
use singa_layers::schedule::LrSchedule;
use std::path::{Path, PathBuf};

pub use parse::MAX_THREADS;
pub use validate::Validated;

/// A source as `srclayers` names it, `"layer"` or `"layer:output"`, split into the layer and
/// the output (`None`: its first).
pub(crate) fn split_source(src: &str) -> (&str, Option<&str>) {
    match src.split_once(':') {
        Some((layer, output)) => (layer, Some(output)),
        None => (src, None),
    }
}

/// Where a job came from, for error messages and for resolving relative paths.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    /// The job file, or `<code>` for a job built in Rust.
    pub file: String,
    /// The directory relative paths are resolved against.
    pub base_dir: PathBuf,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            file: "<code>".to_string(),
            base_dir: PathBuf::from("."),
        }
    }
}

/// The TrainOneBatch algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Back-propagation, for feed-forward nets.
    Bp,
    /// Back-propagation through time, for recurrent nets: the layers marked `unroll` are
    /// unrolled over `unroll_len` steps ([`unroll`]) and the unrolled net is trained with BP.
    Bptt,
    /// Contrastive divergence, for energy models: the RBM pairs ([`rbm`]) run a positive
    /// phase and `cd_k` Gibbs steps, and learn from the difference.
    Cd,
}

impl Algorithm {
    /// Names accepted in job files.
    pub const NAMES: [&'static str; 3] = ["bp", "bptt", "cd"];
}

/// One whole training job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobConfig {
    /// Where the job came from.
    pub origin: Origin,
    /// The job file's text as read (`None` for a job built in Rust): checkpoints keep it, so
    /// that a trained model can be used without the file.
    pub text: Option<String>,
    /// The job's name.
    pub name: String,
    /// How one iteration is computed.
    pub algorithm: Algorithm,
    /// Time steps a recurrent net is unrolled for (`algorithm = "bptt"`; 0 otherwise).
    pub unroll_len: usize,
    /// Gibbs steps of the negative phase (`algorithm = "cd"`; 0 otherwise).
    pub cd_k: usize,
    /// Checkpoints (of other jobs) whose parameters initialise this job's, matched by name
    /// after `checkpoint_rename` (SINGA's `checkpoint_path`: RBMs pretrained into a deeper
    /// net). Each is a checkpoint file or a workspace (its newest checkpoint), resolved
    /// against the job file's directory; where several have a parameter, the first sets it.
    pub checkpoint_path: Vec<PathBuf>,
    /// `(name in the checkpoints, name here)`: parameters that change name on the way in.
    pub checkpoint_rename: Vec<(String, String)>,
    /// Training iterations.
    pub train_steps: u64,
    /// Report training metrics every this many steps (0: never).
    pub display_freq: u64,
    /// Evaluate on the test net every this many steps (0: only at the end).
    pub test_freq: u64,
    /// Batches per evaluation.
    pub test_steps: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_freq: u64,
    /// Seed of every random choice (initialisation, data order, dropout).
    pub seed: u64,
    /// Where the net runs.
    pub device: DeviceConfig,
    /// How parameters are updated.
    pub updater: UpdaterConfig,
    /// Workers and servers.
    pub cluster: ClusterConfig,
    /// The layers of the net, in any order (the net is sorted by its edges).
    pub layers: Vec<LayerConfig>,
    /// Plugin libraries providing layer or updater types the job uses, resolved against the
    /// job file's directory.
    pub plugins: Vec<PathBuf>,
}

impl JobConfig {
    /// A job with defaults: BP, 1000 steps, display every 100, no test net (`test_steps = 0`),
    /// a checkpoint at the end (when there is a workspace), CPU device, SGD with learning
    /// rate 0.01, a single worker.
    pub fn new(name: &str) -> JobConfig {
        JobConfig {
            origin: Origin::default(),
            text: None,
            name: name.to_string(),
            algorithm: Algorithm::Bp,
            unroll_len: 0,
            cd_k: 0,
            checkpoint_path: Vec::new(),
            checkpoint_rename: Vec::new(),
            train_steps: 1000,
            display_freq: 100,
            test_freq: 0,
            test_steps: 0,
            checkpoint_freq: 0,
            seed: 1,
            device: DeviceConfig::default(),
            updater: UpdaterConfig::sgd(0.01),
            cluster: ClusterConfig::default(),
            layers: Vec::new(),
            plugins: Vec::new(),
        }
    }

    /// Reads and parses a job file (checks syntax and field types; see [`JobConfig::validate`]).
    pub fn from_file(path: impl AsRef<Path>) -> singa_core::Result<JobConfig> {
        parse::from_file(path.as_ref())
    }

    /// Parses job-file text; `origin` names the file in errors and anchors relative paths.
    pub fn from_toml(text: &str, origin: Origin) -> singa_core::Result<JobConfig> {
        parse::from_str(text, origin)
    }

    /// Sets the number of training steps.
    pub fn train_steps(mut self, n: u64) -> Self {
        self.train_steps = n;
        self
    }

    /// Trains with back-propagation through time, the `unroll` layers unrolled over `steps`.
    pub fn bptt(mut self, steps: usize) -> Self {
        self.algorithm = Algorithm::Bptt;
        self.unroll_len = steps;
        self
    }

    /// Trains the RBM pairs with contrastive divergence, `k` Gibbs steps per iteration.
    pub fn cd(mut self, k: usize) -> Self {
        self.algorithm = Algorithm::Cd;
        self.cd_k = k;
        self
    }

    /// Sets how often training metrics are reported.
    pub fn display_freq(mut self, n: u64) -> Self {
        self.display_freq = n;
        self
    }

    /// Evaluates every `freq` steps on `steps` test batches.
    pub fn test(mut self, freq: u64, steps: u64) -> Self {
        self.test_freq = freq;
        self.test_steps = steps;
        self
    }

    /// Sets how often checkpoints are written.
    pub fn checkpoint_freq(mut self, n: u64) -> Self {
        self.checkpoint_freq = n;
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the device.
    pub fn device(mut self, d: DeviceConfig) -> Self {
        self.device = d;
        self
    }

    /// Sets the workers and servers.
    pub fn cluster(mut self, c: ClusterConfig) -> Self {
        self.cluster = c;
        self
    }

    /// Sets the updater.
    pub fn updater(mut self, u: UpdaterConfig) -> Self {
        self.updater = u;
        self
    }

    /// Adds a layer.
    pub fn layer(mut self, l: LayerConfig) -> Self {
        self.layers.push(l);
        self
    }

    /// Anchors relative paths (data files) at `dir`.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.origin.base_dir = dir.into();
        self
    }
}

/// The kind of device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU device.
    Cpu,
    /// The plain-loop reference device (slow; for checking).
    Reference,
    /// An NVIDIA GPU (needs singa built with the `cuda` feature).
    Cuda,
}

impl DeviceKind {
    /// Names accepted in job files.
    pub const NAMES: [&'static str; 3] = ["cpu", "reference", "cuda"];

    /// Its name in job files.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Where the net runs.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceConfig {
    /// The kind of device.
    pub kind: DeviceKind,
    /// Threads of a CPU device (`None`: every available core).
    pub threads: Option<usize>,
    /// The GPU of a CUDA device (`id`, from 0).
    pub gpu: usize,
    /// The precision of matrix products and convolutions (`precision = "bf16"`: inputs
    /// rounded to bf16, sums in f32; parameters, updater state and losses stay f32).
    pub precision: Precision,
    /// `loss_scale`: how the loss gradient is scaled so that small gradients survive f16
    /// products (`None`: not written; validation settles it, dynamic with `"f16"`).
    pub loss_scale: Option<LossScaling>,
}

/// Loss scaling, as PyTorch's `GradScaler`: the loss's gradient is multiplied by a scale
/// before the backward pass, so that gradients too small for f16 do not flush to zero, and
/// the parameters' gradients are divided by it before the update. A step whose gradients
/// overflowed (a value that is not finite) is skipped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossScaling {
    /// No scaling (`loss_scale = "none"`).
    Off,
    /// A fixed scale (`loss_scale = 1024`); steps that overflow are still skipped.
    Fixed(f32),
    /// A scale that starts at `init`, halves on each overflow, and doubles after
    /// `growth_interval` steps in a row without one (`loss_scale = "dynamic"`, or
    /// `{ init = 65536, growth_interval = 2000 }`).
    Dynamic {
        /// The first scale.
        init: f32,
        /// Steps without overflow after which the scale doubles.
        growth_interval: u64,
    },
}

impl LossScaling {
    /// PyTorch's first scale: 2^16.
    pub const INIT: f32 = 65536.0;
    /// PyTorch's growth interval: the scale doubles after 2,000 good steps.
    pub const GROWTH_INTERVAL: u64 = 2000;
    /// PyTorch's defaults.
    pub const DYNAMIC: LossScaling = LossScaling::Dynamic {
        init: LossScaling::INIT,
        growth_interval: LossScaling::GROWTH_INTERVAL,
    };
}

impl std::fmt::Display for LossScaling {
    /// As a run's start line names it: `none`, the fixed scale, or `dynamic (...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossScaling::Off => write!(f, "none"),
            LossScaling::Fixed(s) => write!(f, "{s}"),
            LossScaling::Dynamic {
                init,
                growth_interval,
            } => write!(
                f,
                "dynamic (from {init}, doubled after {growth_interval} steps without overflow)"
            ),
        }
    }
}

impl std::str::FromStr for LossScaling {
    type Err = String;

    /// `"dynamic"` (PyTorch's defaults), `"none"`, or a fixed scale (a command line's short
    /// form of `[device] loss_scale`).
    fn from_str(s: &str) -> std::result::Result<LossScaling, String> {
        match s {
            "dynamic" => Ok(LossScaling::DYNAMIC),
            "none" => Ok(LossScaling::Off),
            _ => match s.parse::<f32>() {
                Ok(v) if v > 0.0 && v.is_finite() => Ok(LossScaling::Fixed(v)),
                _ => Err(format!(
                    "{s:?}: expected \"dynamic\", \"none\" or a positive scale"
                )),
            },
        }
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            kind: DeviceKind::Cpu,
            threads: None,
            gpu: 0,
            precision: Precision::F32,
            loss_scale: None,
        }
    }
}

impl DeviceConfig {
    /// The CPU device with `threads` threads.
    pub fn cpu(threads: usize) -> DeviceConfig {
        DeviceConfig {
            threads: Some(threads),
            ..DeviceConfig::default()
        }
    }

    /// The device of worker `index` of `cluster` (group after group): this one, on the GPU
    /// `[cluster] gpus` gives that worker, if it gives one.
    pub fn for_worker(&self, cluster: &ClusterConfig, index: usize) -> DeviceConfig {
        DeviceConfig {
            gpu: cluster.gpu_of(index).unwrap_or(self.gpu),
            ..self.clone()
        }
    }
}

/// How parameters are updated: an updater type, a learning-rate schedule, weight decay.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdaterConfig {
    /// The updater type (`sgd`, or one a plugin provides).
    pub type_name: String,
    /// The learning-rate schedule.
    pub learning_rate: LrConfig,
    /// L2 weight decay (multiplied by each parameter's `wd_mult`).
    pub weight_decay: f32,
    /// Gradient clipping before each update.
    pub clip: Clipping,
    /// The updater's own fields.
    pub fields: Fields,
}

/// Gradient clipping before the update, as PyTorch's `clip_grad_norm_` and
/// `clip_grad_value_` (recurrent nets need it: a step through many time steps can multiply a
/// gradient many times over).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Clipping {
    /// `clip_norm`: every gradient is scaled by `min(1, clip_norm / ‖g‖)`, where `‖g‖` is the
    /// L2 norm of all the step's gradients together (in a cluster, of a worker group's step:
    /// the servers exchange their parts of the norm).
    pub norm: Option<f32>,
    /// `clip_value`: every gradient value is clamped to `[−clip_value, clip_value]` (SINGA's
    /// per-value clipping), before the norm is taken; in a cluster, the servers clamp the
    /// average of a group's gradients.
    pub value: Option<f32>,
}

impl UpdaterConfig {
    /// SGD with a fixed learning rate.
    pub fn sgd(lr: f64) -> UpdaterConfig {
        UpdaterConfig {
            type_name: "sgd".to_string(),
            learning_rate: LrConfig::fixed(lr),
            weight_decay: 0.0,
            clip: Clipping::default(),
            fields: Fields::new(),
        }
    }

    /// Sets the momentum.
    pub fn momentum(self, m: f64) -> Self {
        self.field("momentum", m)
    }

    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: f32) -> Self {
        self.weight_decay = wd;
        self
    }

    /// Sets the learning-rate schedule.
    pub fn learning_rate(mut self, lr: LrConfig) -> Self {
        self.learning_rate = lr;
        self
    }

    /// Sets one of the updater's own fields.
    pub fn field(mut self, name: &str, value: impl Into<FieldValue>) -> Self {
        self.fields.set(name, value);
        self
    }
}

/// A learning-rate schedule: its kind and fields (see [`LrSchedule`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LrConfig {
    /// `fixed`, `step`, `exponential` or `inverse`.
    pub kind: String,
    /// The schedule's fields (`base`, `gamma`, ...).
    pub fields: Fields,
}

impl LrConfig {
    /// A fixed learning rate.
    pub fn fixed(lr: f64) -> LrConfig {
        LrConfig {
            kind: "fixed".to_string(),
            fields: Fields::new().with("base", lr),
        }
    }

    /// `base · gamma^⌊step / change_freq⌋`.
    pub fn step(base: f64, gamma: f64, change_freq: u64) -> LrConfig {
        LrConfig {
            kind: "step".to_string(),
            fields: Fields::new()
                .with("base", base)
                .with("gamma", gamma)
                .with("change_freq", change_freq as i64),
        }
    }

    /// The schedule, once validated.
    pub fn schedule(&self) -> singa_core::Result<LrSchedule> {
        LrSchedule::new(&self.kind, &self.fields)
    }
}

/// Workers and servers (SINGA's `ClusterProto`). A worker group holds one replica of the net,
/// split over its workers; a server group holds one copy of the parameters, sliced over its
/// servers. The default is one worker that updates its own parameters (no servers).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// Worker groups (model replicas).
    pub nworker_groups: usize,
    /// Workers per group (partitions of one replica; with data parallelism each reads
    /// `batch_size / nworkers_per_group` records of every batch).
    pub nworkers_per_group: usize,
    /// Server groups (copies of the parameters).
    pub nserver_groups: usize,
    /// Servers per group (slices of the parameters).
    pub nservers_per_group: usize,
    /// Servers run apart from the workers (Sandblaster) rather than beside them, one per
    /// worker (AllReduce).
    pub server_worker_separate: bool,
    /// Seconds any worker or server waits for a message before the job stops with an error
    /// that names who it waited for.
    pub timeout_secs: u64,
    /// With one server group per worker group (Distributed Hogwild): the groups' values are
    /// averaged every this many steps.
    pub sync_freq: u64,
    /// Asynchronous worker groups: how many steps another group may still have to finish when
    /// group 0 starts a step (a staleness bound, as in stale synchronous parallel). 0: every
    /// group finishes each step before the next starts.
    pub staleness: u64,
    /// Processes the workers and servers are spread over (SINGA's `nworkers_per_procs`, as a
    /// count): each holds its own copy of the values, and their parameter and bridge messages
    /// cross between processes through the processes' routers. Workers go to processes in
    /// order, an equal number each; a server beside a worker goes with it, separate servers
    /// are spread in order too. `singa train` runs the processes inside one OS process (what
    /// crosses between them is copied, as a network would), which checks a topology before it
    /// runs on several machines; the coordinator's commands and the updater state do not cross
    /// the routers yet (see `cluster`).
    pub nprocs: usize,
    /// SINGA's per-worker GPU list (`gpus = [0, 1]`): worker `i` (group after group) runs on
    /// GPU `gpus[i]` of a CUDA device, in place of `[device] id`; empty: every worker on that
    /// one. Workers of one process share its memory, so they must share a GPU: one process
    /// per GPU (`nprocs`, or `mpirun -np`).
    pub gpus: Vec<usize>,
    /// AllReduce's sums as collectives (`collective = true`): each worker's gradient of a
    /// slice is summed straight into the worker beside the slice's server, which updates it
    /// and broadcasts the fresh values, with no messages to the servers. Between GPUs the
    /// collectives are NCCL's; in the emulated processes of one OS process they meet in
    /// memory (the stand-in the tests check them with). Data parallelism with one worker per
    /// process only.
    pub collective: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nworker_groups: 1,
            nworkers_per_group: 1,
            nserver_groups: 1,
            nservers_per_group: 1,
            server_worker_separate: false,
            timeout_secs: 60,
            sync_freq: 10,
            staleness: 0,
            nprocs: 1,
            gpus: Vec::new(),
            collective: false,
        }
    }
}

impl ClusterConfig {
    /// Whether the job runs workers and servers rather than a single worker updating its own
    /// parameters.
    pub fn is_distributed(&self) -> bool {
        self.nworker_groups * self.nworkers_per_group > 1
            || self.nserver_groups * self.nservers_per_group > 1
            || self.server_worker_separate
    }

    /// The total number of workers.
    pub fn nworkers(&self) -> usize {
        self.nworker_groups * self.nworkers_per_group
    }

    /// Whether each server sits beside a worker and runs on its thread (AllReduce, and
    /// Hogwild's groups): when every worker group has a server group of its own with one
    /// server per worker, and servers are not asked to be separate.
    pub fn servers_beside_workers(&self) -> bool {
        self.nserver_groups == self.nworker_groups
            && self.nservers_per_group == self.nworkers_per_group
            && !self.server_worker_separate
    }

    /// The GPU of worker `index` (group after group), when `gpus` names one.
    pub fn gpu_of(&self, index: usize) -> Option<usize> {
        self.gpus.get(index).copied()
    }

    /// Hogwild's averaging period: `Some(sync_freq)` when every worker group has a server
    /// group of its own (and there are several).
    pub fn hogwild_sync_freq(&self) -> Option<u64> {
        (self.nserver_groups > 1).then_some(self.sync_freq.max(1))
    }
}

/// The well-known training frameworks, as presets of [`ClusterConfig`] (the `framework` key of
/// `[cluster]`; the other keys there override the preset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framework {
    /// One worker group, synchronous, one server group of separate servers (Google's
    /// Sandblaster).
    Sandblaster,
    /// One worker group, synchronous, one server beside each worker owning a slice of every
    /// parameter (Baidu's Deep Image, Horovod).
    AllReduce,
    /// Several worker groups of one worker, asynchronous, one server group of separate
    /// servers (Google's Downpour).
    Downpour,
    /// Several worker groups of one worker, each with a server group of its own beside it;
    /// the server groups average their values every `sync_freq` steps (Caffe's Hogwild,
    /// distributed).
    Hogwild,
}

impl Framework {
    /// Names accepted in job files.
    pub const NAMES: [&'static str; 4] = ["sandblaster", "allreduce", "downpour", "hogwild"];

    /// The framework called `name`.
    pub fn from_name(name: &str) -> Option<Framework> {
        match name {
            "sandblaster" => Some(Framework::Sandblaster),
            "allreduce" => Some(Framework::AllReduce),
            "downpour" => Some(Framework::Downpour),
            "hogwild" => Some(Framework::Hogwild),
            _ => None,
        }
    }

    /// The topology with `workers` workers: per group for the synchronous frameworks, one per
    /// group (that many groups) for Downpour and Hogwild.
    pub fn preset(self, workers: usize) -> ClusterConfig {
        let base = ClusterConfig {
            nworkers_per_group: workers,
            ..ClusterConfig::default()
        };
        match self {
            Framework::Sandblaster => ClusterConfig {
                server_worker_separate: true,
                ..base
            },
            Framework::AllReduce => ClusterConfig {
                nservers_per_group: workers,
                ..base
            },
            Framework::Downpour => ClusterConfig {
                nworker_groups: workers,
                nworkers_per_group: 1,
                server_worker_separate: true,
                ..base
            },
            Framework::Hogwild => ClusterConfig {
                nworker_groups: workers,
                nworkers_per_group: 1,
                nserver_groups: workers,
                ..base
            },
        }
    }
}

/// One layer of the net.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerConfig {
    /// Unique name within a phase.
    pub name: String,
    /// The layer type (`inner_product`, ...).
    pub type_name: String,
    /// Sources: `"layer"` (its first output) or `"layer:output"`.
    pub srclayers: Vec<String>,
    /// Phases the layer is part of (empty: all).
    pub include: Vec<Phase>,
    /// Phases the layer is left out of.
    pub exclude: Vec<Phase>,
    /// `-1` no partitioning, `0` split the batch, `1` split the features.
    pub partition_dim: i32,
    /// Whether the layer is a recurrent cell that runs once per time step (`algorithm =
    /// "bptt"`; see [`unroll`]).
    pub unroll: bool,
    /// Every parameter of the layer is the same-named parameter of this layer (set by
    /// [`unroll`] for the copies of an unrolled cell).
    pub share_params_from: Option<String>,
    /// The type's own fields.
    pub fields: Fields,
    /// Settings of the layer's parameters.
    pub params: Vec<ParamConfig>,
}

impl LayerConfig {
    /// A layer of `type_name` called `name`.
    pub fn new(name: &str, type_name: &str) -> LayerConfig {
        LayerConfig {
            name: name.to_string(),
            type_name: type_name.to_string(),
            srclayers: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            partition_dim: -1,
            unroll: false,
            share_params_from: None,
            fields: Fields::new(),
            params: Vec::new(),
        }
    }

    /// Adds a source.
    pub fn src(mut self, source: &str) -> Self {
        self.srclayers.push(source.to_string());
        self
    }

    /// Sets one of the type's fields.
    pub fn field(mut self, name: &str, value: impl Into<FieldValue>) -> Self {
        self.fields.set(name, value);
        self
    }

    /// Marks the layer as a recurrent cell to unroll over time (with [`JobConfig::bptt`]).
    pub fn unrolled(mut self) -> Self {
        self.unroll = true;
        self
    }

    /// Restricts the layer to `phase`.
    pub fn include(mut self, phase: Phase) -> Self {
        self.include.push(phase);
        self
    }

    /// Configures one of the layer's parameters.
    pub fn param(mut self, p: ParamConfig) -> Self {
        self.params.push(p);
        self
    }

    /// Whether the layer belongs to the net of `phase`.
    pub fn in_phase(&self, phase: Phase) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| phase.contains(*p)))
            && !self.exclude.iter().any(|p| phase.contains(*p))
    }
}

/// Settings of one parameter of a layer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamConfig {
    /// The parameter's name within the layer (`weight`, `bias`).
    pub name: String,
    /// Overrides the layer's default init.
    pub init: Option<Init>,
    /// Multiplies the learning rate.
    pub lr_mult: f32,
    /// Multiplies the weight decay.
    pub wd_mult: f32,
    /// Shares the values of another parameter, named `<layer>/<param>`.
    pub share_from: Option<String>,
}

impl ParamConfig {
    /// Default settings for parameter `name`.
    pub fn new(name: &str) -> ParamConfig {
        ParamConfig {
            name: name.to_string(),
            init: None,
            lr_mult: 1.0,
            wd_mult: 1.0,
            share_from: None,
        }
    }

    /// Sets the init.
    pub fn init(mut self, init: Init) -> Self {
        self.init = Some(init);
        self
    }

    /// Sets the learning-rate multiplier.
    pub fn lr_mult(mut self, m: f32) -> Self {
        self.lr_mult = m;
        self
    }

    /// Sets the weight-decay multiplier.
    pub fn wd_mult(mut self, m: f32) -> Self {
        self.wd_mult = m;
        self
    }

    /// Shares another parameter's values.
    pub fn share_from(mut self, name: &str) -> Self {
        self.share_from = Some(name.to_string());
        self
    }
}
