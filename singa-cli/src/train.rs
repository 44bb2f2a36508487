//! `singa train`: in this process (its ranks, if several, emulated here), or as one rank of
//! several started by `mpirun` (feature `mpi`).

use crate::output::{err, errln, out, outln};
use crate::progress::Progress;
use singa::config::{DeviceKind, JobConfig};
use singa::plugins::Detail;
use singa::registry::Registry;
use singa::trainer::{TrainOptions, Trainer};
use singa::workspace::Existing;
use singa_core::{Error, Result};
use std::path::PathBuf;

/// What `singa train` was asked.
pub struct TrainArgs {
    /// The job file.
    pub job: PathBuf,
    /// `--workspace`.
    pub workspace: Option<PathBuf>,
    /// `--resume` / `--overwrite`.
    pub existing: Existing,
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--plot`.
    pub plot: bool,
    /// `--ranks`: the processes the job's workers and servers are spread over.
    pub ranks: Option<usize>,
    /// `--plugin`.
    pub plugins: Vec<PathBuf>,
    /// How much to say about refused plugins.
    pub detail: Detail,
}

/// The size of the MPI job that started this process, and this process's rank in it: from the
/// variables OpenMPI, MPICH and PMIx set for each rank (`None` when no launcher started it).
pub fn launched_by_mpirun() -> Option<(usize, usize)> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok()?.parse::<usize>().ok())
    };
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"])?;
    let rank = var(&["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]).unwrap_or(0);
    Some((size, rank))
}

/// Reads the job and its plugins, with `ranks` processes if given.
fn read_job(args: &TrainArgs, ranks: Option<usize>) -> Result<(JobConfig, Registry)> {
    let mut config = JobConfig::from_file(&args.job)?;
    if let Some(n) = ranks {
        config.cluster.nprocs = n;
    }
    let registry = Registry::with_plugins(&args.plugins, Some(&config), args.detail)?;
    Ok((config, registry))
}

/// Runs `singa train`.
pub fn train(args: TrainArgs) -> Result<()> {
    match launched_by_mpirun() {
        Some((size, rank)) if size > 1 => {
            if args.ranks.is_some_and(|r| r != size) {
                return Err(Error::invalid(format!(
                    "--ranks {} but mpirun started {size} processes",
                    args.ranks.unwrap_or(0)
                )));
            }
            if args.dry_run {
                // Rank 0 shows every rank's part; nothing needs MPI for that.
                return match rank {
                    0 => dry_run(&args, Some(size), singa_comm::engines::MPI),
                    _ => Ok(()),
                };
            }
            let threads = args.threads;
            over_mpi(
                |size| read_job(&args, Some(size)),
                threads,
                None,
                |config, registry, base| train_rank0(&args, config, registry, base),
            )
            .map(|_| ())
        }
        _ if args.dry_run => dry_run(&args, args.ranks, singa_comm::engines::EMULATED_PROCESSES),
        _ => {
            let (config, registry) = read_job(&args, args.ranks)?;
            train_rank0(&args, &config, &registry, TrainOptions::default())
        }
    }
}

/// Trains as rank 0 (the coordinator, which writes the workspace), with `base` options
/// (which say where the other ranks are, if elsewhere).
fn train_rank0(
    args: &TrainArgs,
    config: &JobConfig,
    registry: &Registry,
    base: TrainOptions,
) -> Result<()> {
    let workspace = args
        .workspace
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
    let options = TrainOptions {
        threads: args.threads.or(base.threads),
        workspace: Some(workspace.clone()),
        existing: args.existing,
        ..base
    };
    let mut trainer = Trainer::new(config, registry, &options)?;
    errln!(
        "job {} from {}; workspace {}",
        config.name,
        args.job.display(),
        workspace.display()
    );
    if let Some(c) = trainer.cluster() {
        err!("{}", c.describe().lines().next().unwrap_or_default());
        errln!();
    }
    let plot = args.plot.then(|| workspace.clone());
    trainer.run(&mut Progress::new().plotting(plot))?;
    Ok(())
}

/// Builds the nets (and the workers and servers, with `ranks` processes emulated here) and
/// prints them without training, saying that several ranks run over `engine`.
fn dry_run(args: &TrainArgs, ranks: Option<usize>, engine: &str) -> Result<()> {
    let (config, registry) = read_job(args, ranks)?;
    // The plan is made over emulated processes, which carry collectives in memory; the run
    // over MPI would refuse them on CPUs, so the dry run says so now.
    if engine == singa_comm::engines::MPI
        && config.cluster.collective
        && config.device.kind != DeviceKind::Cuda
    {
        return Err(Error::config(
            &config.origin.file,
            "cluster.collective",
            "over MPI collectives come from the devices (NCCL between CUDA GPUs); a job on \
             CPUs sums through the servers' messages: set collective = false",
        ));
    }
    // The nets take their shapes from the data: without it they cannot be shown, and a dry
    // run changes nothing, so it says what training would import first.
    let imports = pending_imports(&config);
    if !imports.is_empty() {
        for (kind, src, path) in &imports {
            outln!(
                "would import the {kind} data of {} first: {} does not exist yet",
                src.display(),
                path.display()
            );
        }
        outln!(
            "the nets are built from the data's shapes; to see them, import it ({}) and run this again",
            import_command(&imports[0])
        );
        return Ok(());
    }
    // A job for a GPU can be checked on a machine without one: its nets are then built on the
    // reference device, which gives the same shapes.
    let worker = |w| config.device.for_worker(&config.cluster, w);
    let stand_in = match config.device.kind {
        DeviceKind::Cuda => (0..config.cluster.nworkers())
            .find_map(|w| singa::device::create(&worker(w), Some(1)).err()),
        _ => None,
    };
    if let Some(e) = &stand_in {
        outln!("the nets are built on the reference device here, since this machine cannot run the job's: {e}");
    }
    let trainer = Trainer::new(
        &config,
        &registry,
        &TrainOptions {
            threads: args.threads,
            stand_in: stand_in.is_some(),
            ..Default::default()
        },
    )?;
    if let Some(c) = trainer.cluster() {
        out!("{}", c.describe_over(engine));
        outln!(
            "train net of worker 0.0, one of {} that each read {} records of every batch ({} params):",
            c.workers(),
            trainer.train_net().batch_size(),
            trainer.params().numel()
        );
    } else {
        outln!("train net ({} params):", trainer.params().numel());
    }
    out!("{}", trainer.train_net().describe(trainer.params()));
    out!("{}", describe_other_members(&trainer, &registry)?);
    if let Some(t) = trainer.test_net() {
        outln!("test net:");
        out!("{}", t.describe(trainer.params()));
    }
    Ok(())
}

/// The nets of worker group 0's other workers, when layers are split over them (with data
/// parallelism alone every worker's net is worker 0's).
fn describe_other_members(trainer: &Trainer, registry: &Registry) -> Result<String> {
    let job = trainer.job();
    let c = &job.cluster;
    if c.nworkers_per_group < 2 || !job.layers.iter().any(singa::partition::splits_features) {
        return Ok(String::new());
    }
    let exchanges = singa::partition::Exchanges::new(std::time::Duration::from_secs(1));
    let mut out = String::new();
    for member in 1..c.nworkers_per_group as u32 {
        let part = singa::net::Part::of_worker(
            0,
            member,
            c.nworker_groups as u32,
            c.nworkers_per_group as u32,
        );
        let mut store = singa::params::ParamStore::new();
        let net = singa::net::NeuralNet::build_part(
            job,
            registry,
            trainer.device(),
            &mut store,
            singa_core::Phase::TRAIN,
            part,
            Some(&exchanges),
        )?;
        out.push_str(&format!("train net of worker 0.{member}:\n"));
        out.push_str(&net.describe(&store));
    }
    Ok(out)
}

/// This process is one rank of several that `mpirun` started: every rank reads the job
/// (`read`, given the number of ranks), the ranks check that they read the same one, connect
/// over MPI, and rank 0 runs `rank0` (given options that hold the fabric and the threads)
/// while the others run their workers and servers (`on_step` seeing their steps). `threads`
/// (`--threads`) defaults to the job's, but at most this machine's cores shared by the ranks
/// mpirun started on it. Returns this process's rank; an error saying how to build with MPI
/// if this singa was built without it.
pub fn over_mpi(
    read: impl FnOnce(usize) -> Result<(JobConfig, Registry)>,
    threads: Option<usize>,
    on_step: Option<singa::cluster::StepHook>,
    rank0: impl FnOnce(&JobConfig, &Registry, TrainOptions) -> Result<()>,
) -> Result<usize> {
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (read, threads, on_step, rank0);
        Err(Error::invalid(
            "mpirun started several processes, but this singa was built without MPI: build it with `cargo build --release -p singa-cli --features mpi` (needs libopenmpi-dev and libclang-dev)",
        ))
    }
    #[cfg(feature = "mpi")]
    {
        use singa::cluster::Topology;
        use singa_comm::mpi::Mpi;
        use std::sync::Arc;

        let mpi = Mpi::init()?;
        let (rank, size) = (mpi.rank(), mpi.size());
        let read = read(size).and_then(|(config, registry)| {
            config
                .validate(&registry)
                .map_err(|e| e.context(format!("with the {size} processes mpirun started")))?;
            Ok((config, registry))
        });
        let mine = match &read {
            Ok((config, _)) => format!("ok\n{}", fingerprint(config)),
            Err(e) => format!("error\n{e}"),
        };
        let all = mpi.all_gather(mine.as_bytes())?;
        let all: Vec<String> = all
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        check_same_job(&all)?;
        let (config, registry) = read?;
        // Ranks on one machine share its cores (unless --threads says otherwise).
        let threads = threads.or_else(|| {
            let cores = singa::device::default_threads();
            let here = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
                .iter()
                .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
                .unwrap_or(1);
            let share = (cores / here.max(1)).max(1);
            Some(config.device.threads.unwrap_or(cores).min(share))
        });
        let topology = Topology::new(&config.cluster, size);
        let host = singa::device::create(&singa::config::DeviceConfig::cpu(1), None)?;
        let linger = std::time::Duration::from_secs(config.cluster.timeout_secs);
        let fabric = Arc::new(mpi.connect(&topology.placement(), host, linger)?);
        let outcome = match rank {
            0 => rank0(
                &config,
                &registry,
                TrainOptions {
                    threads,
                    fabric: Some(fabric.clone()),
                    ..Default::default()
                },
            ),
            _ => singa::cluster::run_rank(&config, &registry, &*fabric, rank, threads, on_step),
        };
        // Dropping the fabric waits for every rank, then finalises MPI.
        drop(fabric);
        outcome.map(|_| rank)
    }
}

/// What every rank must agree on: the job as read, without where its file was (nor its text:
/// the same job may be written in other words).
#[cfg(feature = "mpi")]
fn fingerprint(config: &JobConfig) -> String {
    let mut c = config.clone();
    c.origin = Default::default();
    c.text = None;
    format!("{c:#?}")
}

/// Refuses ranks that could not read the job, or read different ones, naming the first
/// difference from rank 0's.
#[cfg(feature = "mpi")]
fn check_same_job(all: &[String]) -> Result<()> {
    for (r, text) in all.iter().enumerate() {
        if let Some(e) = text.strip_prefix("error\n") {
            return Err(Error::invalid(format!("rank {r}: {e}")));
        }
    }
    let first = &all[0];
    for (r, text) in all.iter().enumerate().skip(1) {
        if text == first {
            continue;
        }
        let diff = first
            .lines()
            .zip(text.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("rank 0 has `{}`, rank {r} has `{}`", a.trim(), b.trim()))
            .unwrap_or_else(|| format!("rank {r}'s job is longer or shorter than rank 0's"));
        return Err(Error::invalid(format!(
            "the ranks were started with different jobs: {diff}"
        )));
    }
    Ok(())
}

/// The command that makes a shard of [`pending_imports`].
fn import_command((kind, src, path): &(String, PathBuf, PathBuf)) -> String {
    let dst = path.parent().unwrap_or(std::path::Path::new("."));
    format!(
        "singa data import {kind} {} {}",
        src.display(),
        dst.display()
    )
}

/// The shards that training would import before it starts (input layers with an `import`
/// table whose `path` does not exist yet): kind, source and shard, relative to the job file.
fn pending_imports(config: &JobConfig) -> Vec<(String, PathBuf, PathBuf)> {
    use singa_core::FieldValue;
    let at = |p: &str| config.origin.base_dir.join(p);
    let mut pending = Vec::new();
    for l in &config.layers {
        let (Some(FieldValue::Str(path)), Some(FieldValue::Table(import))) =
            (l.fields.get("path"), l.fields.get("import"))
        else {
            continue;
        };
        let (Some(FieldValue::Str(kind)), Some(FieldValue::Str(src))) =
            (import.get("kind"), import.get("src"))
        else {
            continue;
        };
        let shard = at(path.as_str());
        if !shard.exists() && !pending.iter().any(|(_, _, p)| *p == shard) {
            pending.push((kind.to_string(), at(src.as_str()), shard));
        }
    }
    pending
}

/// `singa net`: the cost of each layer of the job's train net (and test net), with totals.
pub fn net(job: &std::path::Path, plugins: &[PathBuf], detail: Detail) -> Result<()> {
    let config = JobConfig::from_file(job)?;
    let registry = Registry::with_plugins(plugins, Some(&config), detail)?;
    if let Some(import) = pending_imports(&config).first() {
        return Err(Error::invalid(format!(
            "the nets take their shapes from the data, and {} does not exist yet: import it first ({})",
            import.2.display(),
            import_command(import)
        )));
    }
    // The whole net on one worker: what each sample costs, whatever the cluster.
    let mut whole = config.clone();
    whole.cluster = Default::default();
    let trainer = Trainer::new(&whole, &registry, &TrainOptions::default())?;
    let train = trainer.train_net();
    outln!(
        "train net of job {} (batch {}):",
        config.name,
        train.batch_size()
    );
    let costs = singa::summary::summarize(train, trainer.params(), trainer.job());
    out!("{}", singa::summary::table(&costs));
    if let Some(test) = trainer.test_net() {
        outln!("\ntest net (batch {}):", test.batch_size());
        let costs = singa::summary::summarize(test, trainer.params(), trainer.job());
        out!("{}", singa::summary::table(&costs));
    }
    Ok(())
}
