//! The `singa` command: train and evaluate job files, prepare data, list layers, benchmark.

mod bench;
mod cost;
mod export;
mod output;
mod plot;
mod predict;
mod progress;
mod train;

use crate::output::{errln, out, outln};
use clap::{Parser, Subcommand};
use singa::config::JobConfig;
use singa::plugins::Detail;
use singa::registry::Registry;
use singa::trainer::{Report, TrainOptions, Trainer};
use singa::workspace::Existing;
use singa_core::{Error, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts heap allocations, so `singa bench` can show that a training step makes none.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; the counter is a relaxed atomic.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        std::alloc::System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        std::alloc::System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        std::alloc::System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Heap allocations so far, and the large blocks the CPU device maps itself.
fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed) + singa_cpu::memory::mapped_blocks()
}

/// singa: a distributed deep learning platform (SINGA, in Rust).
#[derive(Parser)]
#[command(name = "singa", version, about, long_about = None)]
struct Cli {
    /// Say more when something is refused (e.g. abi_stable's full layout report for a plugin).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of its largest variant (bench's options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Train the net a job file describes.
    Train {
        /// The job file (TOML).
        job: PathBuf,
        /// Where metrics.jsonl, summary.json and checkpoints/ go [default: runs/<job name>].
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Continue from the workspace's latest checkpoint.
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
        /// Delete the workspace's previous run (checkpoints and metrics) and start over.
        #[arg(long)]
        overwrite: bool,
        /// CPU threads (overrides the job file).
        #[arg(long)]
        threads: Option<usize>,
        /// Build the nets and print them without training.
        #[arg(long)]
        dry_run: bool,
        /// Redraw the workspace's run.svg (see `singa plot`) at each test and at the end.
        #[arg(long)]
        plot: bool,
        /// Spread the job's workers and servers over this many processes (cluster.nprocs),
        /// emulated in this one; under mpirun each rank is a process of its own.
        #[arg(long)]
        ranks: Option<usize>,
        /// A plugin library with layer or updater types (repeatable; also read from the job
        /// file's `plugins` and from SINGA_PLUGIN_PATH).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Evaluate a checkpoint on the job's test net.
    Test {
        /// The job file (TOML).
        job: PathBuf,
        /// The checkpoint (a .safetensors file written by `singa train`).
        #[arg(long)]
        checkpoint: PathBuf,
        /// CPU threads (overrides the job file).
        #[arg(long)]
        threads: Option<usize>,
        /// A plugin library with layer or updater types (repeatable; also read from the job
        /// file's `plugins` and from SINGA_PLUGIN_PATH).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Build and look into data shards.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Predict with a trained model: the most likely classes of each sample of a shard (the
    /// job's test shard by default), or a layer's outputs (--features).
    Predict {
        /// The job file (TOML) the model was trained with [default: the job the checkpoint
        /// records].
        job: Option<PathBuf>,
        /// The checkpoint with the trained parameters.
        #[arg(long)]
        checkpoint: PathBuf,
        /// What to predict: a shard, an IDX file of images (MNIST's `*-images-idx3-ubyte[.gz]`,
        /// labelled by the labels file beside it), a JPEG or PNG file, or a folder of them
        /// [default: the job's test shard].
        #[arg(long)]
        input: Option<PathBuf>,
        /// Predict the first N samples [default: all].
        #[arg(short = 'n', long)]
        n: Option<usize>,
        /// How many of the most likely classes to show.
        #[arg(long, default_value_t = 1)]
        top: usize,
        /// table, csv or jsonl.
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "jsonl"])]
        format: String,
        /// Write this layer's outputs (features) instead of classes.
        #[arg(long, value_name = "LAYER")]
        features: Option<String>,
        /// A plugin library with layer or updater types (repeatable).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Generate text with a trained character model (a job with algorithm = "bptt" reading a
    /// text shard): the priming text, then characters drawn one by one.
    Sample {
        /// The job file (TOML) the model was trained with [default: the job the checkpoint
        /// records].
        job: Option<PathBuf>,
        /// The checkpoint with the trained parameters.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Characters to generate.
        #[arg(long, default_value_t = 500)]
        length: usize,
        /// Below 1: likelier characters; above 1: more varied ones.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        /// Text the model reads before generating.
        #[arg(long, default_value = "")]
        prime: String,
        /// Seeds the draws: the same seed gives the same text.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A plugin library with layer or updater types (repeatable).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Export a trained model (the job's test net with a checkpoint's parameters) as an ONNX
    /// file, for ONNX Runtime, PyTorch and other frameworks.
    Export {
        /// The job file (TOML) the model was trained with [default: the job the checkpoint
        /// records].
        job: Option<PathBuf>,
        /// The checkpoint with the trained parameters.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The ONNX file to write.
        #[arg(long, value_name = "FILE")]
        onnx: PathBuf,
        /// A plugin library with layer or updater types (repeatable).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Print each layer of a job's nets with its output shape, parameters and forward FLOPs
    /// per sample, and the totals.
    Net {
        /// The job file (TOML).
        job: PathBuf,
        /// A plugin library with layer or updater types (repeatable).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Plot the loss and accuracy of runs (their workspaces) against steps and wall time, as
    /// an SVG file.
    Plot {
        /// Workspaces (or their metrics.jsonl files); several are drawn on one figure.
        #[arg(required = true)]
        workspaces: Vec<PathBuf>,
        /// The SVG file to write [default: run.svg in the first workspace].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show the devices and engines this machine and this build offer: the CPU, the CUDA
    /// driver, GPUs and libraries (NVRTC, cuBLAS, NCCL), and MPI.
    Devices,
    /// List the layer and updater types with their fields and origins.
    Layers {
        /// A job file whose `plugins` to load as well.
        job: Option<PathBuf>,
        /// A plugin library with layer or updater types (repeatable; also read from the job
        /// file's `plugins` and from SINGA_PLUGIN_PATH).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Predict the throughput of a job on k synchronous data-parallel workers (AllReduce's
    /// layout) from this machine's measured compute and a given link (see docs/PERFORMANCE.md).
    Cost {
        /// The job file (TOML).
        job: PathBuf,
        /// Worker counts to predict (each must divide the batch).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        workers: Vec<usize>,
        /// Link bandwidth per worker and direction, in gigabits per second.
        #[arg(long, default_value_t = 10.0)]
        gbits: f64,
        /// Latency per message, in microseconds.
        #[arg(long, default_value_t = 20.0)]
        latency_us: f64,
        /// Timed runs per measurement (the median is used).
        #[arg(long, default_value_t = 15)]
        reps: usize,
        /// The framework: allreduce (a server beside each worker), sandblaster (--servers
        /// servers of their own, synchronous), downpour (asynchronous workers, --servers
        /// servers of their own) or hogwild (workers with servers beside them, averaged every
        /// --sync-freq steps). Several, separated by commas, are predicted from the same
        /// measurements.
        #[arg(long, value_delimiter = ',', default_value = "allreduce", value_parser = ["allreduce", "sandblaster", "downpour", "hogwild"])]
        framework: Vec<String>,
        /// Servers of their own, for sandblaster and downpour.
        #[arg(long, default_value_t = 1)]
        servers: usize,
        /// Steps between hogwild's averages.
        #[arg(long, default_value_t = 10)]
        sync_freq: u64,
        /// Samples per worker, whatever the number of workers (weak scaling); without it,
        /// the job's batch is split over the workers.
        #[arg(long)]
        per_worker: Option<usize>,
        /// A plugin library with layer or updater types (repeatable).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Work with plugin libraries.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Measure training throughput of the peer benchmarks' models (see docs/PERFORMANCE.md).
    Bench {
        /// mlp (784-1000-500-10 on MNIST), cnn (the CIFAR-10 convnet), or gru and lstm (the
        /// char-rnn example's character model on tiny-shakespeare, trained with BPTT).
        #[arg(default_value = "mlp", value_parser = ["mlp", "cnn", "gru", "lstm"])]
        model: String,
        /// CPU threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The device: cpu, or cuda (GPU 0; needs singa built with `--features cuda`).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        device: String,
        /// The precision of the matrix products and convolutions: f32, or bf16 or f16 (inputs
        /// rounded to bf16 or f16, sums in f32, as `[device] precision = "bf16"`; the CPU has
        /// no f16 products and runs f16 at about f32's speed).
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
        precision: String,
        /// Untimed steps first (default: 50 for mlp, 3 for cnn, as the peers; 5 for gru and lstm).
        #[arg(long)]
        warmup: Option<u64>,
        /// Timed windows (the median is reported).
        #[arg(long, default_value_t = 5)]
        windows: usize,
        /// Steps per window (default: 200 for mlp, 20 for cnn, as the peers; 20 for gru and lstm).
        #[arg(long)]
        steps: Option<u64>,
        /// The folder with the MNIST IDX files.
        #[arg(long, default_value = "data/mnist")]
        data: PathBuf,
        /// For cnn: a CIFAR-10 training shard, or an archive or folder to import it from
        /// (image-folder layout); without it, synthetic images.
        #[arg(long)]
        cifar: Option<PathBuf>,
        /// Train with this many workers (worker groups for downpour); they share --threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The framework of the workers: allreduce (a server beside each worker), sandblaster
        /// (one separate server), downpour (asynchronous groups, one separate server) or
        /// hogwild (groups with servers of their own, averaged every 10 steps).
        #[arg(long, default_value = "allreduce", value_parser = ["allreduce", "sandblaster", "downpour", "hogwild"])]
        framework: String,
        /// Samples per step over all workers (default 64; for gru and lstm 32 streams of 50
        /// characters, as examples/char-rnn).
        #[arg(long)]
        batch: Option<usize>,
        /// For gru and lstm: the text (its shards are built beside it on first use).
        #[arg(long, default_value = "data/text/tinyshakespeare.txt")]
        text: PathBuf,
        /// Spread the workers and servers over this many processes, each with memory of its
        /// own and a router (run inside this one; what crosses between them is copied).
        #[arg(long, default_value_t = 1)]
        nprocs: usize,
        /// AllReduce's sums through collectives (`[cluster] collective`; one worker per
        /// process, `--nprocs` equal to `--workers`): NCCL between GPUs, in memory between
        /// emulated processes.
        #[arg(long)]
        collective: bool,
        /// With `--device cuda`: each worker's GPU (`[cluster] gpus`), say `--gpus 0,1`.
        #[arg(long, value_delimiter = ',')]
        gpus: Vec<usize>,
        /// How the workers of a group share the model: 0 splits each batch (data
        /// parallelism), 1 splits every layer but the data and loss layers along its features
        /// (model parallelism: the MLP's neurons, the convnet's filters).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=1))]
        partition_dim: i32,
        /// The layer type to use in place of the model's ReLU layers (say, a plugin's).
        #[arg(long, default_value = "relu")]
        activation: String,
        /// The updater type to use in place of the model's SGD (one with SGD's fields).
        #[arg(long, default_value = "sgd")]
        updater: String,
        /// Clip the gradients by their global norm (`clip_norm`), as the char-rnn example does.
        #[arg(long, value_name = "NORM")]
        clip_norm: Option<f32>,
        /// Scale the loss (`[device] loss_scale`): "dynamic", "none" or a fixed scale
        /// (default: the precision's, dynamic with f16).
        #[arg(long, value_name = "SCALE")]
        loss_scale: Option<singa::config::LossScaling>,
        /// A plugin library with layer types (repeatable; also read from SINGA_PLUGIN_PATH).
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a plugin and run on each of its types the checks built-in ones get: shape
    /// inference, gradients against finite differences, CPU device against the reference.
    Check {
        /// The plugin library (a .so built with `cargo build --release`).
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Turn a public data set into shards: `singa data import mnist SRC DST`.
    Import {
        /// The kind of data set: mnist, fashion-mnist, cifar10 (the binary batches),
        /// image-folder (a folder per class of JPEG/PNG files, in a directory or a .tar.gz;
        /// with train/ and test/ folders above them for one shard per split), or text (a text
        /// file as character ids, for character-level models: train.shard and valid.shard).
        kind: String,
        /// Where its files are.
        src: PathBuf,
        /// The folder to write the shards into.
        dst: PathBuf,
        /// For text: the fraction of the text, at its end, kept for validation [default: 0.05]
        #[arg(long)]
        validation: Option<f64>,
        /// For text: one id per character (the file must be UTF-8) or per byte [default: chars]
        #[arg(long, value_parser = ["chars", "bytes"])]
        unit: Option<String>,
    },
    /// Write the mean image of a shard's records (a mean file for `image_data`'s `mean_file`).
    Mean {
        /// The shard to average.
        shard: PathBuf,
        /// The mean file to write.
        out: PathBuf,
    },
    /// Print a shard's header, label counts and first records (verifying every checksum).
    Inspect {
        /// The shard file.
        shard: PathBuf,
        /// How many records to show.
        #[arg(short = 'n', long, default_value_t = 2)]
        records: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let detail = if cli.verbose {
        Detail::Full
    } else {
        Detail::Brief
    };
    match cli.command {
        Command::Train {
            job,
            workspace,
            resume,
            overwrite,
            threads,
            dry_run,
            plot,
            ranks,
            plugins,
        } => train::train(train::TrainArgs {
            job,
            workspace,
            existing: match (resume, overwrite) {
                (true, _) => Existing::Resume,
                (_, true) => Existing::Overwrite,
                _ => Existing::Refuse,
            },
            threads,
            dry_run,
            plot,
            ranks,
            plugins,
            detail,
        }),
        Command::Test {
            job,
            checkpoint,
            threads,
            plugins,
        } => {
            let config = JobConfig::from_file(&job)?;
            let mut trainer = Trainer::new(
                &config,
                &Registry::with_plugins(&plugins, Some(&config), detail)?,
                &TrainOptions {
                    threads,
                    ..Default::default()
                },
            )?;
            let step = trainer.load_params(&checkpoint)?;
            for w in trainer.take_warnings() {
                errln!("warning: {w}");
            }
            let metrics = trainer.evaluate()?;
            let report = Report {
                step,
                phase: "test",
                metrics,
                samples_per_sec: None,
                elapsed: 0.0,
                lr: None,
            };
            outln!("{}", singa::progress::report_line(&report));
            Ok(())
        }
        Command::Data {
            command:
                DataCommand::Import {
                    kind,
                    src,
                    dst,
                    validation,
                    unit,
                },
        } => {
            if kind == "text" {
                let mut options = singa_data::import::TextOptions::default();
                if let Some(f) = validation {
                    options.validation = f;
                }
                if let Some(u) = unit {
                    options.unit = singa_data::import::TextUnit::from_name(&u)?;
                }
                for (path, count) in singa_data::import::import_text(&src, &dst, options)? {
                    let shard = singa_data::Shard::open(&path)?;
                    let vocab = singa_data::import::read_text(&shard)?.vocabulary.len();
                    let unit = options.unit.name();
                    outln!(
                        "wrote {} ({count} {unit}, vocabulary of {vocab})",
                        path.display()
                    );
                }
                return Ok(());
            }
            if validation.is_some() || unit.is_some() {
                return Err(singa_core::Error::invalid(format!(
                    "--validation and --unit apply to text imports, not to {kind:?}"
                )));
            }
            for (path, count) in singa_data::import::import(&kind, &src, &dst)? {
                outln!("wrote {} ({count} records)", path.display());
            }
            Ok(())
        }
        Command::Data {
            command: DataCommand::Mean { shard, out },
        } => {
            let s = singa_data::Shard::open(&shard)?;
            let mean = singa_data::image::compute_mean(&s)?;
            singa_data::image::write_mean(&out, &s.spec().shape, &mean, &shard)?;
            let avg = mean.iter().map(|v| *v as f64).sum::<f64>() / mean.len().max(1) as f64;
            outln!(
                "wrote {} (mean of {} records of {:?}; overall mean {avg:.3})",
                out.display(),
                s.len(),
                s.spec().shape
            );
            Ok(())
        }
        Command::Data {
            command: DataCommand::Inspect { shard, records },
        } => {
            out!("{}", singa_data::inspect::inspect(&shard, records)?);
            Ok(())
        }
        Command::Net { job, plugins } => train::net(&job, &plugins, detail),
        Command::Predict {
            job,
            checkpoint,
            input,
            n,
            top,
            format,
            features,
            plugins,
        } => {
            let (config, registry) =
                predict::trained_job(job.as_deref(), &checkpoint, &plugins, detail)?;
            let mut p = singa::predict::Predictor::new(
                &config,
                &registry,
                &checkpoint,
                input.as_deref(),
                features.as_deref(),
            )?;
            predict::print(&mut p, n, top.max(1), &format)
        }
        Command::Sample {
            job,
            checkpoint,
            length,
            temperature,
            prime,
            seed,
            plugins,
        } => {
            let (config, registry) =
                predict::trained_job(job.as_deref(), &checkpoint, &plugins, detail)?;
            let options = singa::sample::SampleOptions {
                length,
                temperature,
                prime,
                seed,
            };
            let text = singa::sample::sample(&config, &registry, &checkpoint, &options)?;
            outln!("{text}");
            Ok(())
        }
        Command::Export {
            job,
            checkpoint,
            onnx,
            plugins,
        } => {
            let (config, registry) =
                predict::trained_job(job.as_deref(), &checkpoint, &plugins, detail)?;
            let model = singa_onnx::export_checkpoint(&config, &registry, &checkpoint)?;
            model.save(&onnx)?;
            export::print(&model, &onnx);
            Ok(())
        }
        Command::Plot { workspaces, out } => {
            let runs = workspaces
                .iter()
                .map(|w| plot::Run::read(w))
                .collect::<Result<Vec<_>>>()?;
            let out = out.unwrap_or_else(|| plot::default_out(&workspaces));
            singa::checkpoint::write_atomically(&out, plot::svg(&runs).as_bytes())?;
            outln!(
                "wrote {} ({} run{})",
                out.display(),
                runs.len(),
                if runs.len() == 1 { "" } else { "s" }
            );
            Ok(())
        }
        Command::Devices => {
            print!("{}", devices());
            Ok(())
        }
        Command::Layers { job, plugins } => {
            let config = job.map(JobConfig::from_file).transpose()?;
            list_types(&Registry::with_plugins(&plugins, config.as_ref(), detail)?);
            Ok(())
        }
        Command::Cost {
            job,
            workers,
            gbits,
            latency_us,
            reps,
            framework,
            servers,
            sync_freq,
            per_worker,
            plugins,
        } => {
            let config = JobConfig::from_file(&job)?;
            let registry = Registry::with_plugins(&plugins, Some(&config), detail)?;
            let frameworks = framework
                .iter()
                .map(|f| match f.as_str() {
                    "sandblaster" => cost::Framework::Sandblaster { servers },
                    "downpour" => cost::Framework::Downpour { servers },
                    "hogwild" => cost::Framework::Hogwild { sync_freq },
                    _ => cost::Framework::AllReduce,
                })
                .collect();
            let link = cost::Link {
                bandwidth: gbits * 1e9 / 8.0,
                latency: latency_us * 1e-6,
            };
            let plan = CostPlan {
                workers,
                link,
                frameworks,
                per_worker,
                reps: reps.max(1),
            };
            outln!(
                "singa cost: {}, {} Gbit/s and {latency_us} µs per message; compute measured here with 1 thread per worker",
                config.name,
                gbits
            );
            print_cost(&config, &registry, &plan)
        }
        Command::Plugin {
            command: PluginCommand::Check { path },
        } => {
            let plugin = singa::plugins::load(&path, detail)?;
            // Refuse a plugin whose type names collide with the built-in ones, as training would.
            Registry::builtin().load_plugins(std::slice::from_ref(&path), detail)?;
            outln!(
                "plugin {} {} ({}): {} layer type(s), {} updater type(s)",
                plugin.name,
                plugin.version,
                path.display(),
                plugin.layers.len(),
                plugin.updaters.len()
            );
            let verdicts = singa::plugins::check::check_plugin(&plugin);
            for v in &verdicts {
                outln!("{v}");
            }
            let failed = verdicts.iter().filter(|v| !v.passed()).count();
            if failed > 0 {
                return Err(Error::plugin(
                    path.display(),
                    format!("{failed} of {} type(s) failed the checks", verdicts.len()),
                ));
            }
            outln!("all {} type(s) passed", verdicts.len());
            Ok(())
        }
        Command::Bench {
            model,
            threads,
            device,
            precision,
            warmup,
            windows,
            steps,
            data,
            cifar,
            text,
            workers,
            framework,
            batch,
            nprocs,
            collective,
            gpus,
            partition_dim,
            activation,
            updater,
            clip_norm,
            loss_scale,
            plugins,
        } => {
            let registry = Registry::with_plugins(&plugins, None, detail)?;
            let model = match model.as_str() {
                "cnn" => bench::Model::Cnn,
                "gru" => bench::Model::Gru,
                "lstm" => bench::Model::Lstm,
                _ => bench::Model::Mlp,
            };
            let (default_warmup, default_steps, default_batch) = match model {
                bench::Model::Mlp => (50, 200, 64),
                bench::Model::Cnn => (3, 20, 64),
                bench::Model::Gru | bench::Model::Lstm => (5, 20, 32),
            };
            let recurrent = matches!(model, bench::Model::Gru | bench::Model::Lstm);
            if recurrent && !text.exists() {
                return Err(Error::io(
                    &text,
                    "no such text (run from the repository root, or pass --text FILE)",
                ));
            }
            if model == bench::Model::Mlp
                && !data.join("train-images-idx3-ubyte.gz").exists()
                && !data.join("train.shard").exists()
            {
                return Err(Error::io(
                    &data,
                    "no MNIST data here (run from the repository root, or pass --data DIR)",
                ));
            }
            let cifar = match cifar {
                Some(src) if src.extension().is_some_and(|e| e == "shard") => Some(src),
                Some(src) => {
                    let dst = PathBuf::from("data/cifar10");
                    if !dst.join("train.shard").exists() {
                        errln!("importing {} into {} ...", src.display(), dst.display());
                        singa_data::import::import("image-folder", &src, &dst)?;
                    }
                    Some(dst.join("train.shard"))
                }
                None => None,
            };
            let (warmup, steps) = (
                warmup.unwrap_or(default_warmup),
                steps.unwrap_or(default_steps),
            );
            bench::run(
                &bench::BenchOptions {
                    threads,
                    device: if device == "cuda" {
                        singa::config::DeviceKind::Cuda
                    } else {
                        singa::config::DeviceKind::Cpu
                    },
                    precision: singa_core::Precision::from_name(&precision)
                        .expect("clap checked the name"),
                    warmup,
                    windows,
                    steps,
                    model,
                    data,
                    cifar,
                    text,
                    allocations,
                    batch: batch.unwrap_or(default_batch),
                    partition_dim,
                    activation,
                    updater,
                    clip_norm,
                    loss_scale,
                    cluster: (workers > 1 || framework != "allreduce" || nprocs > 1 || collective)
                        .then(|| singa::config::ClusterConfig {
                            nprocs,
                            collective,
                            gpus,
                            ..singa::config::Framework::from_name(&framework)
                                .expect("clap checked the name")
                                .preset(workers)
                        }),
                },
                &registry,
            )
        }
    }
}

/// What `singa cost` predicts.
struct CostPlan {
    workers: Vec<usize>,
    link: cost::Link,
    /// One table each.
    frameworks: Vec<cost::Framework>,
    /// Samples per worker (`None`: the job's batch split over the workers).
    per_worker: Option<usize>,
    reps: usize,
}

/// Says in words how `framework` trains.
fn describe_framework(framework: cost::Framework) -> String {
    match framework {
        cost::Framework::AllReduce => {
            "k synchronous workers, each with a server beside it owning 1/k of every parameter".into()
        }
        cost::Framework::Sandblaster { servers } => format!(
            "k synchronous workers and {servers} server(s) of their own, each owning a part of every parameter"
        ),
        cost::Framework::Downpour { servers } => {
            format!("k asynchronous workers and {servers} server(s) of their own")
        }
        cost::Framework::Hogwild { sync_freq } => format!(
            "k workers, each with a server beside it holding every parameter, averaged every {sync_freq} steps"
        ),
    }
}

/// Measures the job's compute at each worker count's batch and prints the predictions.
fn print_cost(job: &JobConfig, registry: &Registry, plan: &CostPlan) -> Result<()> {
    let validated = job.validate(registry)?.job;
    let batch = validated
        .layers
        .iter()
        .filter(|l| l.srclayers.is_empty() && l.in_phase(singa_core::Phase::TRAIN))
        .find_map(|l| match l.fields.get("batch_size") {
            Some(singa_core::FieldValue::Int(b)) => Some(*b as usize),
            _ => None,
        })
        .ok_or_else(|| Error::invalid("the train net has no input layer with a batch_size"))?;
    let split = match plan.per_worker {
        Some(b) => format!("{b} samples per worker"),
        None => format!("the batch of {batch} split over the workers"),
    };
    // Every batch is measured once, for all the frameworks.
    let mut measured: Vec<(usize, cost::Measured)> = Vec::new();
    for &framework in &plan.frameworks {
        outln!("\n{}; {split}", describe_framework(framework));
        outln!("\n| workers | batch per worker | compute ms | exposed network ms | step ms | MB sent per worker | samples/s | vs 1 worker | bound by |");
        outln!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        let mut base = None;
        for &k in &plan.workers {
            let each = match plan.per_worker {
                Some(b) => b,
                None if k > 0 && batch % k == 0 => batch / k,
                None => {
                    outln!(
                        "| {k} | (the batch of {batch} does not split into {k}) | | | | | | | |"
                    );
                    continue;
                }
            };
            if k == 0 || each == 0 {
                outln!("| {k} | (no samples) | | | | | | | |");
                continue;
            }
            let m = match measured.iter().find(|(b, _)| *b == each) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = cost::measure(&validated, registry, each, plan.reps)?;
                    measured.push((each, m.clone()));
                    m
                }
            };
            let p = cost::predict(&m, k, plan.link, framework);
            let one = *base.get_or_insert(if k == 1 { p.throughput } else { f64::NAN });
            outln!(
                "| {k} | {each} | {:.3} | {:.3} | {:.3} | {:.2} | {:.0} | {} | {} |",
                p.compute * 1e3,
                p.exposed_comm * 1e3,
                p.step * 1e3,
                p.bytes / 1e6,
                p.throughput,
                if one.is_nan() {
                    "-".to_string()
                } else {
                    format!("{:.2}x", p.throughput / one)
                },
                p.bound
            );
        }
    }
    Ok(())
}

fn list_types(registry: &Registry) {
    let show = |name: &str, doc: &str, origin: &str, fields: &[singa_core::FieldSpec]| {
        outln!("{name}  ({origin})\n    {doc}");
        for f in fields {
            let default = match &f.default {
                singa_core::abi::ROption::RSome(v) => format!(" = {v}"),
                singa_core::abi::ROption::RNone if f.required => " (required)".to_string(),
                singa_core::abi::ROption::RNone => String::new(),
            };
            outln!(
                "    {:<14} {:<8}{default}  {}",
                f.name.as_str(),
                format!("{:?}", f.kind).to_lowercase(),
                f.doc
            );
        }
    };
    outln!("Layer types (every layer also takes name, type, srclayers, include, exclude, partition_dim, [[layer.param]]):\n");
    for (t, origin) in registry.layers() {
        show(&t.name, &t.doc, &origin.to_string(), &t.fields);
        outln!();
    }
    outln!("Updater types (every updater also takes learning_rate and weight_decay):\n");
    for (t, origin) in registry.updaters() {
        show(&t.name, &t.doc, &origin.to_string(), &t.fields);
        outln!();
    }
}

/// What `singa devices` prints: one line per device or engine, with what it offers or why it
/// cannot be used.
fn devices() -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let threads = singa::device::default_threads();
    let cpu = |precision| {
        singa_cpu::CpuDevice::with_precision(threads, precision)
            .map(|d| singa_core::Device::info(&d).description.to_string())
            .unwrap_or_else(|e| e.to_string())
    };
    lines.push((
        "cpu".into(),
        format!("{}: {}", cpu_model(), cpu(singa_core::Precision::F32)),
    ));
    lines.push((
        "".into(),
        format!(
            "with precision = \"bf16\": {}",
            cpu(singa_core::Precision::BF16)
        ),
    ));
    match singa::device::cuda_about() {
        Ok(about) => lines.extend(
            about
                .into_iter()
                .map(|(what, state)| (format!("cuda {what}"), state)),
        ),
        Err(why) => lines.push(("cuda".into(), why.to_string())),
    }
    #[cfg(feature = "mpi")]
    lines.push((
        "mpi".into(),
        format!(
            "{}{}",
            singa_comm::mpi::library_version(),
            if singa_comm::mpi::launched() {
                ", under a launcher"
            } else {
                ""
            }
        ),
    ));
    #[cfg(not(feature = "mpi"))]
    lines.push((
        "mpi".into(),
        "not built in: cargo build --release -p singa-cli --features mpi".into(),
    ));
    let width = lines.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(what, state)| format!("{what:width$}  {state}\n"))
        .collect()
}

/// The CPU's model name, as Linux reports it (or "cpu" elsewhere).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "cpu".into())
}
