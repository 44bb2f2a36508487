//! A job whose workers and servers are spread over several processes (`cluster.nprocs`), each
//! with memory of its own and a router: it trains exactly as in one process, what crosses
//! between processes is counted, and it resumes from its checkpoints.

use singa::config::{ClusterConfig, Framework, JobConfig};
use singa::trainer::{Silent, Summary, TrainOptions, Trainer};
use singa::workspace::Existing;
use singa::Registry;
use singa_tests::{max_difference, metric, mlp_job, param_values, synthetic_mnist, tmpdir};
use std::path::Path;

/// The MLP of the training tests, without dropout, with SGD and momentum, and a hidden layer
/// of 96: its first weight (6,144 values) is cut into slices, one per server, so that slices
/// other than a parameter's first cross between processes too.
fn job(data: &Path, steps: u64) -> JobConfig {
    let text = mlp_job(
        data,
        &format!("train_steps = {steps}\ndisplay_freq = 10"),
        96,
        0.0,
    );
    JobConfig::from_toml(&text, Default::default()).unwrap()
}

fn options(workspace: Option<&Path>, existing: Existing) -> TrainOptions {
    TrainOptions {
        threads: Some(2),
        workspace: workspace.map(Path::to_path_buf),
        existing,
        ..Default::default()
    }
}

fn train(job: &JobConfig, options: &TrainOptions) -> (Trainer, Summary) {
    let mut t = Trainer::new(job, &Registry::builtin(), options).unwrap();
    let s = t.run(&mut Silent).unwrap();
    (t, s)
}

fn in_procs(cluster: ClusterConfig, nprocs: usize) -> ClusterConfig {
    ClusterConfig { nprocs, ..cluster }
}

/// The values of every trainable parameter, counted in f32.
fn trainable_values(t: &Trainer) -> u64 {
    let store = t.params();
    let n: usize = store
        .entries()
        .iter()
        .filter(|e| e.trainable)
        .map(|e| e.value.numel())
        .sum();
    n as u64
}

#[test]
fn a_job_in_several_processes_trains_exactly_like_one_process() {
    let dir = tmpdir("procs-equal");
    synthetic_mnist(&dir, 600, 100, 8);
    let hogwild_pairs = ClusterConfig {
        nworkers_per_group: 2,
        nservers_per_group: 2,
        sync_freq: 5,
        ..Framework::Hogwild.preset(2)
    };
    let cases = [
        (Framework::AllReduce.preset(2), 2),
        (Framework::AllReduce.preset(4), 4),
        (Framework::AllReduce.preset(4), 2),
        (Framework::Sandblaster.preset(2), 2),
        // Each group in a process of its own, and each worker in one.
        (
            ClusterConfig {
                sync_freq: 5,
                ..Framework::Hogwild.preset(2)
            },
            2,
        ),
        (hogwild_pairs.clone(), 2),
        (hogwild_pairs, 4),
    ];
    let steps = 30;
    for (cluster, nprocs) in cases {
        let what = format!("{nprocs} processes, {cluster:?}");
        let groups_of_several = cluster.nworkers_per_group > 1;
        let mut one = job(&dir, steps);
        one.cluster = cluster.clone();
        let (reference, _) = train(&one, &options(None, Existing::Refuse));
        assert_eq!(
            reference.cluster().unwrap().traffic_between_processes(),
            (0, 0)
        );
        let mut many = one.clone();
        many.cluster = in_procs(cluster, nprocs);
        let (t, _) = train(&many, &options(None, Existing::Refuse));
        // In one process the workers of a group compute the weight gradients together, a
        // block of rows each; in processes apart each sends a whole gradient and the servers
        // sum them. Both add the workers' parts in the same order, so they agree to the bit
        // (each part is one block of the products' depth: under 256 samples a worker).
        let shares = |t: &Trainer| t.cluster().unwrap().describe().contains("need not sum");
        assert_eq!(shares(&reference), groups_of_several, "{what}");
        assert!(!shares(&t), "{what}");
        assert_eq!(
            max_difference(&param_values(&reference), &param_values(&t)),
            0.0,
            "{what}"
        );
        let (messages, bytes) = t.cluster().unwrap().traffic_between_processes();
        assert!(messages > 0, "{what}: nothing crossed");
        let n = trainable_values(&t) * 4;
        if many.cluster.nworker_groups == 2 && many.cluster.nworkers() == 2 {
            // Hogwild's groups exchange values only when they average (both copies cross),
            // and at the start, when worker 0 puts its values into group 1's server.
            let syncs = steps / many.cluster.sync_freq;
            assert_eq!(bytes, syncs * 2 * n + n, "{what}");
        }
        if many.cluster.nworkers() == 2 && many.cluster.nworker_groups == 1 && nprocs == 2 {
            // Every step, each worker's gradients of the slices served in the other process
            // cross, and their fresh values come back: between them the two workers send
            // every value's gradient once and get every value once. The first round of `Put`s
            // and `Get`s adds less than a step.
            let per_step = 2 * n;
            assert!(
                bytes >= steps * per_step && bytes < (steps + 1) * per_step,
                "{what}: {bytes} bytes in {steps} steps, expected about {per_step} a step"
            );
        }
    }
}

/// Layers split along the features over two workers in two processes: the bridges between
/// them go through the routers too, and the training is the one-process training.
#[test]
fn a_model_parallel_job_in_two_processes_trains_exactly_like_one_process() {
    let dir = tmpdir("procs-model");
    synthetic_mnist(&dir, 600, 100, 8);
    let mut one = job(&dir, 30);
    for l in one.layers.iter_mut() {
        if ["fc1", "act", "fc2"].contains(&l.name.as_str()) {
            l.partition_dim = 1;
        }
    }
    one.cluster = Framework::AllReduce.preset(2);
    let (reference, _) = train(&one, &options(None, Existing::Refuse));
    let mut two = one.clone();
    two.cluster.nprocs = 2;
    let (t, _) = train(&two, &options(None, Existing::Refuse));
    let diff = max_difference(&param_values(&reference), &param_values(&t));
    assert_eq!(diff, 0.0);
    let (_, bytes) = t.cluster().unwrap().traffic_between_processes();
    // Parameter traffic alone is 8 bytes per value and step (see above); bridges add more.
    assert!(bytes > 30 * 8 * trainable_values(&t), "{bytes}");
}

#[test]
fn every_framework_in_several_processes_learns_and_resumes() {
    let dir = tmpdir("procs-resume");
    synthetic_mnist(&dir, 600, 100, 8);
    let hogwild = ClusterConfig {
        sync_freq: 5,
        ..Framework::Hogwild.preset(2)
    };
    for (run, cluster) in [
        in_procs(Framework::Downpour.preset(2), 2),
        in_procs(Framework::AllReduce.preset(2), 2),
        in_procs(Framework::Sandblaster.preset(2), 2),
        in_procs(hogwild, 2),
        ClusterConfig {
            collective: true,
            ..in_procs(Framework::AllReduce.preset(2), 2)
        },
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("{cluster:?}");
        let mut j = job(&dir, 40);
        j.cluster = cluster;
        j.test_steps = 2;
        j.checkpoint_freq = 20;
        let ws = dir.join(format!("ws-{run}"));
        let (t, s) = train(&j, &options(Some(&ws), Existing::Refuse));
        assert!(metric(&s.test, "accuracy") > 0.9, "{what}: {:?}", s.test);
        let finished = param_values(&t);
        drop(t);
        // The last checkpoint holds what the servers held; every process gets it back.
        let mut resumed = Trainer::new(
            &j,
            &Registry::builtin(),
            &options(Some(&ws), Existing::Resume),
        )
        .unwrap();
        assert_eq!(
            max_difference(&finished, &param_values(&resumed)),
            0.0,
            "{what}"
        );
        let acc = metric(&resumed.evaluate().unwrap(), "accuracy");
        assert!((acc - metric(&s.test, "accuracy")).abs() < 1e-9, "{what}");
        // Cut after the first checkpoint and resumed, a run ends where the straight one did
        // (except Downpour's, whose groups update in the order their gradients arrive).
        if j.cluster.nserver_groups == j.cluster.nworker_groups {
            let mut cut = j.clone();
            cut.train_steps = 20;
            let ws2 = dir.join(format!("cut-{run}"));
            train(&cut, &options(Some(&ws2), Existing::Refuse));
            let (again, summary) = train(&j, &options(Some(&ws2), Existing::Resume));
            assert_eq!(summary.steps, 40);
            assert_eq!(
                max_difference(&finished, &param_values(&again)),
                0.0,
                "{what}"
            );
        }
    }
}

#[test]
fn process_counts_that_do_not_fit_are_refused() {
    let dir = tmpdir("procs-refuse");
    synthetic_mnist(&dir, 60, 20, 8);
    let mut j = job(&dir, 5);
    j.cluster = in_procs(Framework::AllReduce.preset(2), 3);
    let e = j.validate(&Registry::builtin()).unwrap_err().to_string();
    assert!(
        e.contains("cluster.nprocs: 3 processes for 2 workers: expected a divisor of 2"),
        "{e}"
    );
    let text = mlp_job(&dir, "train_steps = 5\n[cluster]\nnprocs = 0", 24, 0.0);
    let e = JobConfig::from_toml(&text, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.nprocs: expected at least 1"), "{e}");
}

/// AllReduce's sums as collectives (`[cluster] collective = true`): each slice's gradients
/// summed at the worker beside its server and the fresh values broadcast from there, in
/// place of messages (the collectives of emulated processes meet in memory; NCCL's between
/// GPUs). The same training as one process, value for value, with hardly anything crossing
/// as messages: the first round of values, and the coordinator's.
#[test]
fn allreduce_through_collectives_trains_exactly_like_one_process() {
    let dir = tmpdir("procs-collective");
    synthetic_mnist(&dir, 600, 100, 8);
    let steps = 30;
    let cases = [
        (2, "sgd"),
        (4, "sgd"),
        (2, "adam"),
        (4, "adam"),
        (2, "sgd, clip_value"),
    ];
    for (workers, updater) in cases {
        let mut one = job(&dir, steps);
        if updater.ends_with("clip_value") {
            // Small enough that the servers clamp the averaged gradients.
            one.updater.clip.value = Some(0.01);
        }
        if updater == "adam" {
            one.updater.type_name = "adam".into();
            one.updater.fields = Default::default();
            one.updater.learning_rate = singa::config::LrConfig::fixed(0.003);
        }
        one.cluster = Framework::AllReduce.preset(workers);
        let (reference, _) = train(&one, &options(None, Existing::Refuse));
        let mut messages = one.clone();
        messages.cluster = in_procs(one.cluster.clone(), workers);
        let mut collective = messages.clone();
        collective.cluster.collective = true;
        let (by_messages, _) = train(&messages, &options(None, Existing::Refuse));
        let (t, _) = train(&collective, &options(None, Existing::Refuse));
        let what = format!("{workers} workers, {updater}");
        assert_eq!(
            max_difference(&param_values(&reference), &param_values(&t)),
            0.0,
            "{what}"
        );
        let bytes = |t: &Trainer| t.cluster().unwrap().traffic_between_processes().1;
        let (sent, by_servers) = (bytes(&t), bytes(&by_messages));
        let n = trainable_values(&t) * 4;
        assert!(
            sent < n * workers as u64 && sent * 10 < by_servers,
            "{what}: {sent} bytes crossed as messages, {by_servers} without collectives"
        );
    }
}

#[test]
fn collectives_outside_allreduce_with_a_worker_per_process_are_refused() {
    let dir = tmpdir("procs-collective-refuse");
    synthetic_mnist(&dir, 60, 20, 8);
    let refused = |cluster: ClusterConfig, clip_norm: bool| {
        let mut j = job(&dir, 5);
        j.cluster = ClusterConfig {
            collective: true,
            ..cluster
        };
        if clip_norm {
            j.updater.clip.norm = Some(5.0);
        }
        j.validate(&Registry::builtin()).unwrap_err().to_string()
    };
    let e = refused(in_procs(Framework::Sandblaster.preset(2), 2), false);
    assert!(
        e.contains("cluster.collective: collectives carry AllReduce's sums"),
        "{e}"
    );
    let e = refused(Framework::AllReduce.preset(2), false);
    assert!(
        e.contains("expected nprocs = 2 (or mpirun -np 2), got 1"),
        "{e}"
    );
    let e = refused(in_procs(Framework::AllReduce.preset(2), 2), true);
    assert!(e.contains("clipping by the global norm"), "{e}");
}
