//! `singa train` under `mpirun`: each rank a process of its own, talking over MPI. Jobs train
//! exactly as in one process, checkpoints resume on another number of ranks, and failures stop
//! every rank with a message that names the rank at fault.
//!
//! Needs the binary built with the `mpi` feature and OpenMPI's `mpirun`:
//! `cargo test -p singa-cli --features mpi --test mpi`. Without them every test says it
//! skipped. `SINGA_MPI_ARGS` adds arguments to every `mpirun` (say `--mca btl tcp,self` to
//! force TCP between the ranks, as between machines).

#![cfg(feature = "mpi")]

#[path = "../../tests/common/lib.rs"]
#[allow(dead_code)]
mod common;

use common::{char_job, mlp_job, rbm_job_text, synthetic_mnist, tmpdir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SINGA: &str = env!("CARGO_BIN_EXE_singa");

/// Whether `mpirun` is here; says why a test skips otherwise.
fn have_mpirun(test: &str) -> bool {
    let ok = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("{test}: skipped: no mpirun on this machine (apt-get install openmpi-bin)");
    }
    ok
}

/// `mpirun` with what every run here needs: root allowed (CI runs as root), more ranks than
/// cores, and `SINGA_MPI_ARGS`.
fn mpirun() -> Command {
    let mut c = Command::new("timeout");
    c.args(["300", "mpirun", "--allow-run-as-root", "--oversubscribe"]);
    if let Ok(extra) = std::env::var("SINGA_MPI_ARGS") {
        c.args(extra.split_whitespace());
    }
    c
}

/// `mpirun -np <np> singa <args>`, in `cwd`.
fn singa_mpi(np: usize, args: &[&str], cwd: &Path) -> Output {
    singa_mpi_through(np, &[], args, cwd)
}

/// [`singa_mpi`], each rank started through the command `through` (its last word receives
/// singa and its arguments).
fn singa_mpi_through(np: usize, through: &[&str], args: &[&str], cwd: &Path) -> Output {
    let mut c = mpirun();
    c.args(["-np", &np.to_string()])
        .args(through)
        .arg(SINGA)
        .args(args);
    c.current_dir(cwd).output().expect("mpirun runs")
}

/// Starts each rank naming a node of its own (`SINGA_MPI_NODE`), as on as many machines.
const NODE_PER_RANK: [&str; 3] = [
    "sh",
    "-c",
    "SINGA_MPI_NODE=node${OMPI_COMM_WORLD_RANK:-$PMI_RANK} exec \"$0\" \"$@\"",
];

/// `singa <args>` in one process, in `cwd`.
fn singa(args: &[&str], cwd: &Path) -> Output {
    Command::new(SINGA)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("singa runs")
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every tensor of a checkpoint, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Asserts two checkpoints hold the same tensors, bit for bit.
fn same_checkpoints(a: &Path, b: &Path, what: &str) {
    let (ta, tb) = (tensors(a), tensors(b));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ta), names(&tb), "{what}");
    for ((name, x), (_, y)) in ta.iter().zip(&tb) {
        assert!(x == y, "{what}: {name} differs");
    }
}

fn checkpoint(ws: &Path, step: u64) -> PathBuf {
    ws.join(format!("checkpoints/step-{step:08}.safetensors"))
}

/// The MLP of the end-to-end tests on synthetic data in `data`, with `steps` steps, a
/// checkpoint every `ckpt` steps, updater `updater` and `cluster` as its `[cluster]` section.
/// Its hidden layer of 96 makes the first weight (6,144 values) large enough to be cut into
/// slices, so that slices at an offset cross between the ranks too.
fn job(data: &Path, steps: u64, ckpt: u64, updater: &str, cluster: &str) -> String {
    let top = format!("train_steps = {steps}\ndisplay_freq = 10\ncheckpoint_freq = {ckpt}");
    let mut text = mlp_job(data, &top, 96, 0.0);
    if updater == "adam" {
        let start = text.find("[updater]").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        text.replace_range(
            start..end,
            "[updater]\ntype = \"adam\"\nlearning_rate = 0.003",
        );
    }
    format!("{text}\n[cluster]\n{cluster}\n")
}

/// `text` with loss scaling that starts far too high (2^127, with the loss weighted by 64 and
/// the learning rate cut as much: the first steps overflow even f32 and are skipped) and
/// doubles after `growth` steps. (On the CPU device, in f32: the reference device's f16 does
/// not compute a gradient's parts in the same order in one process and over ranks.)
fn loss_scaled(text: &str, growth: u64) -> String {
    text.replace(
        "type = \"cpu\"\nthreads = 2",
        &format!(
            "type = \"cpu\"\nthreads = 2\nloss_scale = {{ init = 1.7014118346046923e38, growth_interval = {growth} }}"
        ),
    )
    .replace("type = \"softmax_loss\"", "type = \"softmax_loss\"\nscale = 64.0")
    .replace("base = 0.05", "base = 0.00078125")
}

/// `text` with the layers named in `split` split along the features.
fn split(text: &str, split: &[&str]) -> String {
    let mut out = text.to_string();
    for name in split {
        let at = format!("name = \"{name}\"\n");
        out = out.replace(&at, &format!("{at}partition_dim = 1\n"));
    }
    out
}

/// `text` with data-parallel convolutions before `fc1` (hybrid partitioning, with `split`).
fn hybrid(text: &str) -> String {
    let convs = "[[layer]]\nname = \"conv\"\ntype = \"convolution\"\nsrclayers = \"data\"\nnum_filters = 6\nkernel = 3\npad = 1\n\n\
                 [[layer]]\nname = \"crelu\"\ntype = \"relu\"\nsrclayers = \"conv\"\n\n\
                 [[layer]]\nname = \"pool\"\ntype = \"pooling\"\nsrclayers = \"crelu\"\nkernel = 2\nstride = 2\n\n\
                 [[layer]]\nname = \"fc1\"\ntype = \"inner_product\"\nsrclayers = \"pool\"";
    text.replace(
        "[[layer]]\nname = \"fc1\"\ntype = \"inner_product\"\nsrclayers = \"data\"",
        convs,
    )
}

/// Trains `text` in one process and under `mpirun -np <np>`, with `threads` threads in each
/// rank's process (one per worker: the parts of the weight gradients then add up in the same
/// order in both), and compares the last checkpoints bit for bit.
fn equal_to_one_process(dir: &Path, name: &str, text: &str, np: usize, steps: u64) {
    equal_to_one_process_through(dir, name, text, np, steps, &[]);
}

/// [`equal_to_one_process`], each rank started through `through` (see [`singa_mpi_through`]).
fn equal_to_one_process_through(
    dir: &Path,
    name: &str,
    text: &str,
    np: usize,
    steps: u64,
    through: &[&str],
) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let workers = text_workers(text);
    let one = dir.join(format!("{name}-one"));
    let many = dir.join(format!("{name}-mpi"));
    let f = file.to_str().unwrap();
    let threads = workers.to_string();
    let o = singa(
        &[
            "train",
            f,
            "--workspace",
            one.to_str().unwrap(),
            "--threads",
            &threads,
        ],
        dir,
    );
    ok(&o, &format!("{name} in one process"));
    let per_rank = (workers / np).max(1).to_string();
    let o = singa_mpi_through(
        np,
        through,
        &[
            "train",
            f,
            "--workspace",
            many.to_str().unwrap(),
            "--threads",
            &per_rank,
        ],
        dir,
    );
    ok(&o, &format!("{name} over {np} ranks"));
    same_checkpoints(
        &checkpoint(&one, steps),
        &checkpoint(&many, steps),
        &format!("{name}: {np} ranks against one process"),
    );
}

/// The workers of a job text (from its `[cluster]` section, via the binary's dry run).
fn text_workers(text: &str) -> usize {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    get("nworkers_per_group").unwrap_or(1) * get("nworker_groups").unwrap_or(1)
}

#[test]
fn synchronous_frameworks_over_mpi_train_exactly_as_in_one_process() {
    if !have_mpirun("synchronous frameworks") {
        return;
    }
    let dir = tmpdir("mpi-equal");
    synthetic_mnist(&dir, 600, 100, 8);
    let d = &dir;
    let cases = [
        (
            "allreduce-2",
            job(
                d,
                30,
                30,
                "sgd",
                "framework = \"allreduce\"\nnworkers_per_group = 2",
            ),
            2,
        ),
        (
            "allreduce-4-adam",
            job(
                d,
                30,
                30,
                "adam",
                "framework = \"allreduce\"\nnworkers_per_group = 4",
            ),
            4,
        ),
        (
            "allreduce-4-on-2",
            job(
                d,
                30,
                30,
                "sgd",
                "framework = \"allreduce\"\nnworkers_per_group = 4",
            ),
            2,
        ),
        (
            "sandblaster-2-adam",
            job(
                d,
                30,
                30,
                "adam",
                "framework = \"sandblaster\"\nnworkers_per_group = 2",
            ),
            2,
        ),
        (
            "sandblaster-2-servers-clipped",
            job(
                d,
                30,
                30,
                "sgd",
                "framework = \"sandblaster\"\nnworkers_per_group = 2\nnservers_per_group = 2",
            )
            .replace(
                "[updater]\n",
                "[updater]\nclip_norm = 0.05\nclip_value = 0.01\n",
            ),
            2,
        ),
        (
            "sandblaster-2-servers-loss-scaled-clipped",
            loss_scaled(
                &job(
                    d,
                    30,
                    30,
                    "sgd",
                    "framework = \"sandblaster\"\nnworkers_per_group = 2\nnservers_per_group = 2",
                )
                .replace("[updater]\n", "[updater]\nclip_norm = 0.05\n"),
                4,
            ),
            2,
        ),
        (
            "hogwild-2",
            job(
                d,
                30,
                30,
                "sgd",
                "framework = \"hogwild\"\nnworker_groups = 2\nsync_freq = 5",
            ),
            2,
        ),
        (
            "hogwild-2-clipped",
            job(
                d,
                30,
                30,
                "sgd",
                "framework = \"hogwild\"\nnworker_groups = 2\nnservers_per_group = 2\nsync_freq = 5",
            )
            .replace("[updater]\n", "[updater]\nclip_norm = 0.05\n"),
            2,
        ),
        (
            "hogwild-4-adam",
            job(
                d,
                30,
                30,
                "adam",
                "framework = \"hogwild\"\nnworker_groups = 4\nsync_freq = 5",
            ),
            4,
        ),
        (
            "model-parallel-2",
            split(
                &job(
                    d,
                    30,
                    30,
                    "sgd",
                    "framework = \"allreduce\"\nnworkers_per_group = 2",
                ),
                &["fc1", "act", "fc2"],
            ),
            2,
        ),
        (
            "hybrid-2-adam",
            split(
                &hybrid(&job(
                    d,
                    30,
                    30,
                    "adam",
                    "framework = \"allreduce\"\nnworkers_per_group = 2",
                )),
                &["fc1", "act", "fc2"],
            ),
            2,
        ),
    ];
    for (name, text, np) in cases {
        equal_to_one_process(&dir, name, &text, np, 30);
    }
}

/// Payloads between nodes go in pieces; with two ranks of this machine named as two nodes,
/// the training is still the one process's.
#[test]
fn ranks_on_different_nodes_send_payloads_in_pieces_and_train_exactly_as_in_one_process() {
    if !have_mpirun("ranks on different nodes") {
        return;
    }
    let dir = tmpdir("mpi-nodes");
    // 24 × 24 images: the first weight (576 × 96) is cut into two slices of 108 KiB, each sent
    // as a whole piece of 60 KiB and a part of one.
    synthetic_mnist(&dir, 600, 100, 24);
    let text = job(
        &dir,
        30,
        30,
        "adam",
        "framework = \"allreduce\"\nnworkers_per_group = 2",
    );
    equal_to_one_process_through(&dir, "nodes", &text, 2, 30, &NODE_PER_RANK);
}

/// BPTT (an LSTM character model, its state carried between batches on each worker, its
/// gradients clipped by their global norm) and CD
/// (an RBM, its hidden units' draws per row) on two AllReduce workers over MPI end with the
/// parameters one process gives, bit for bit.
#[test]
fn recurrent_and_energy_models_over_mpi_train_exactly_as_in_one_process() {
    if !have_mpirun("BPTT and CD") {
        return;
    }
    let top = "train_steps = 20\ndisplay_freq = 10\ncheckpoint_freq = 20";
    let cluster = "\n[cluster]\nframework = \"allreduce\"\nnworkers_per_group = 2\n";
    let dir = tmpdir("mpi-bptt");
    // Clipped by the global norm, as char-rnn trains: the two servers exchange their parts.
    let bptt =
        char_job(&dir, "lstm", top).replace("type = \"adam\"", "type = \"adam\"\nclip_norm = 0.5");
    assert!(bptt.contains("clip_norm"));
    let bptt = bptt + cluster;
    equal_to_one_process(&dir, "bptt-lstm-2", &bptt, 2, 20);
    let dir = tmpdir("mpi-cd");
    synthetic_mnist(&dir, 200, 50, 8);
    let cd = rbm_job_text(&dir, top, "", "data") + cluster;
    equal_to_one_process(&dir, "cd-rbm-2", &cd, 2, 20);
}

#[test]
fn checkpoints_resume_on_the_same_and_on_another_number_of_ranks() {
    if !have_mpirun("resume") {
        return;
    }
    let dir = tmpdir("mpi-resume");
    synthetic_mnist(&dir, 600, 100, 8);
    // Momentum state lives with the servers, spread over the ranks.
    for (name, cluster) in [
        (
            "allreduce",
            "framework = \"allreduce\"\nnworkers_per_group = 4",
        ),
        (
            "hogwild",
            "framework = \"hogwild\"\nnworker_groups = 2\nsync_freq = 5",
        ),
        // The servers' copies of the loss scaler are restored too.
        (
            "allreduce-loss-scaled",
            "framework = \"allreduce\"\nnworkers_per_group = 4",
        ),
    ] {
        let whole = job(&dir, 40, 20, "sgd", cluster);
        let whole = match name {
            // 2^120: the scale grows and overflows by turns, and is not at its start at the cut.
            "allreduce-loss-scaled" => {
                loss_scaled(&whole, 3).replace("1.7014118346046923e38", "1.329227995784916e36")
            }
            _ => whole,
        };
        let cut = whole.replace("train_steps = 40", "train_steps = 20");
        let (fw, fc) = (
            dir.join(format!("{name}.toml")),
            dir.join(format!("{name}-cut.toml")),
        );
        std::fs::write(&fw, &whole).unwrap();
        std::fs::write(&fc, &cut).unwrap();
        let (fw, fc) = (fw.to_str().unwrap(), fc.to_str().unwrap());
        let workers = text_workers(&whole).to_string();
        let straight = dir.join(format!("{name}-straight"));
        ok(
            &singa(
                &[
                    "train",
                    fw,
                    "--workspace",
                    straight.to_str().unwrap(),
                    "--threads",
                    &workers,
                ],
                &dir,
            ),
            "straight",
        );
        // (ranks before the cut, ranks after it)
        for (before, after) in [(2, 2), (2, 1), (1, 2)] {
            let ws = dir.join(format!("{name}-{before}-{after}"));
            let w = ws.to_str().unwrap();
            let run = |np: usize, file: &str, extra: &[&str]| {
                let per_rank = (text_workers(&whole) / np).to_string();
                let mut args = vec!["train", file, "--workspace", w, "--threads", &per_rank];
                args.extend_from_slice(extra);
                match np {
                    1 => singa(&args, &dir),
                    n => singa_mpi(n, &args, &dir),
                }
            };
            ok(
                &run(before, fc, &[]),
                &format!("{name}: the first 20 steps on {before} ranks"),
            );
            ok(
                &run(after, fw, &["--resume"]),
                &format!("{name}: resumed on {after} ranks"),
            );
            same_checkpoints(
                &checkpoint(&straight, 40),
                &checkpoint(&ws, 40),
                &format!("{name}: cut on {before} ranks, resumed on {after}"),
            );
        }
    }
}

#[test]
fn ranks_started_with_different_jobs_are_refused_naming_the_difference() {
    if !have_mpirun("different jobs") {
        return;
    }
    let dir = tmpdir("mpi-jobs");
    synthetic_mnist(&dir, 60, 20, 8);
    let cluster = "framework = \"allreduce\"\nnworkers_per_group = 2";
    let (a, b) = (dir.join("a.toml"), dir.join("b.toml"));
    std::fs::write(&a, job(&dir, 30, 30, "sgd", cluster)).unwrap();
    std::fs::write(&b, job(&dir, 40, 30, "sgd", cluster)).unwrap();
    let mut c = mpirun();
    c.args([
        "-np",
        "1",
        SINGA,
        "train",
        a.to_str().unwrap(),
        "--workspace",
        "ws",
    ]);
    c.args([
        ":",
        "-np",
        "1",
        SINGA,
        "train",
        b.to_str().unwrap(),
        "--workspace",
        "ws",
    ]);
    let o = c.current_dir(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("different jobs")
            && err.contains("train_steps: 30")
            && err.contains("train_steps: 40"),
        "{err}"
    );
    assert!(!dir.join("ws").exists(), "nothing was started");
}

/// Collectives between real processes come from the devices (NCCL between GPUs): a CPU job
/// that asks for them under mpirun stops at the start, saying so, on every rank.
#[test]
fn collectives_between_cpu_processes_are_refused_at_the_start() {
    if !have_mpirun("collectives on cpus") {
        return;
    }
    let dir = tmpdir("mpi-collective");
    synthetic_mnist(&dir, 60, 20, 8);
    let cluster =
        "framework = \"allreduce\"\nnworkers_per_group = 2\nnprocs = 2\ncollective = true";
    std::fs::write(dir.join("job.toml"), job(&dir, 10, 10, "sgd", cluster)).unwrap();
    let o = singa_mpi(2, &["train", "job.toml", "--workspace", "ws"], &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("carries no collectives between its ranks")
            && err.contains("NCCL between CUDA GPUs")
            && err.contains("collective = false"),
        "{err}"
    );
    // The dry run says so too, though it plans over emulated processes.
    let o = singa_mpi(2, &["train", "job.toml", "--dry-run"], &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("cluster.collective: over MPI collectives come from the devices"),
        "{err}"
    );
}

#[test]
fn dry_run_under_mpirun_prints_each_rank_once_from_rank_0() {
    if !have_mpirun("dry run") {
        return;
    }
    let dir = tmpdir("mpi-dry");
    synthetic_mnist(&dir, 60, 20, 8);
    let cluster = "framework = \"allreduce\"\nnworkers_per_group = 4";
    std::fs::write(dir.join("job.toml"), job(&dir, 30, 30, "sgd", cluster)).unwrap();
    // The nets take their shapes from the data (a dry run imports nothing itself).
    ok(
        &singa(&["data", "import", "mnist", ".", "."], &dir),
        "import",
    );
    let o = singa_mpi(2, &["train", "job.toml", "--dry-run"], &dir);
    ok(&o, "dry run");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.matches("2 ranks (processes), each with memory of its own, over MPI:")
            .count(),
        1,
        "{out}"
    );
    assert!(
        out.contains("  rank 0: worker 0.0; worker 0.1; server 0.0 ("),
        "{out}"
    );
    assert!(
        out.contains("  rank 1: worker 0.2; worker 0.3; server 0.2 ("),
        "{out}"
    );
    assert_eq!(out.matches("train net of worker 0.0").count(), 1, "{out}");
    assert!(!dir.join("runs").exists(), "a dry run trains nothing");
}

#[test]
fn a_rank_that_cannot_allocate_stops_every_rank_naming_it() {
    if !have_mpirun("allocation") {
        return;
    }
    let dir = tmpdir("mpi-alloc");
    synthetic_mnist(&dir, 60, 20, 8);
    // fc1's weight takes 256 MB (and as much again for its gradient): more than rank 1 may map
    // beside what a process of singa maps anyway.
    let text = job(
        &dir,
        5,
        5,
        "sgd",
        "framework = \"allreduce\"\nnworkers_per_group = 2",
    )
    .replace("num_output = 96", "num_output = 1000000");
    let f = dir.join("big.toml");
    std::fs::write(&f, text).unwrap();
    let f = f.to_str().unwrap();
    let mut c = mpirun();
    c.args([
        "-np",
        "1",
        SINGA,
        "train",
        f,
        "--workspace",
        "ws",
        "--threads",
        "1",
    ]);
    let limited = format!("ulimit -v 900000; exec {SINGA} train {f} --workspace ws --threads 1");
    c.args([":", "-np", "1", "sh", "-c", &limited]);
    let o = c.current_dir(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("rank 1 could not start") && err.contains("out of memory"),
        "{err}"
    );
}

/// The process of `rank` of the mpirun job whose command line mentions `marker`.
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.starts_with(SINGA) || !cmdline.contains(marker) {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let env = String::from_utf8_lossy(&env);
        if env
            .split('\0')
            .any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}"))
        {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_rank_killed_mid_run_stops_every_rank_and_leaves_the_last_checkpoint() {
    if !have_mpirun("kill") {
        return;
    }
    let dir = tmpdir("mpi-kill");
    synthetic_mnist(&dir, 600, 100, 8);
    let text = job(
        &dir,
        1_000_000,
        50,
        "sgd",
        "framework = \"allreduce\"\nnworkers_per_group = 2\ntimeout = 20",
    )
    .replace("display_freq = 10", "display_freq = 10\ntest_steps = 2");
    let f = dir.join("long.toml");
    std::fs::write(&f, text).unwrap();
    let ws = dir.join("ws-kill");
    let mut c = mpirun();
    c.args([
        "-np",
        "2",
        SINGA,
        "train",
        f.to_str().unwrap(),
        "--workspace",
        ws.to_str().unwrap(),
    ]);
    let child = c
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = checkpoint(&ws, 50);
    let started = Instant::now();
    while !first.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint came"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = rank_pid("ws-kill", 1).expect("rank 1 runs");
    let killed_at = Instant::now();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "every rank stopped within the job's timeout (took {:?})",
        killed_at.elapsed()
    );
    assert!(err.contains("rank 1"), "{err}");
    assert!(rank_pid("ws-kill", 0).is_none(), "rank 0 is gone too");
    // The checkpoints written are whole: the newest evaluates.
    let newest = std::fs::read_dir(ws.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .max()
        .unwrap();
    let o = singa(
        &[
            "test",
            f.to_str().unwrap(),
            "--checkpoint",
            newest.to_str().unwrap(),
        ],
        &dir,
    );
    ok(&o, "the last checkpoint evaluates");
}

#[test]
fn downpour_over_mpi_reaches_the_one_process_accuracy_on_mnist() {
    if !have_mpirun("downpour") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ws = tmpdir("mpi-downpour");
    let o = singa_mpi(
        2,
        &[
            "train",
            "examples/mnist-mlp/downpour.toml",
            "--workspace",
            ws.to_str().unwrap(),
            "--threads",
            "1",
        ],
        &repo,
    );
    ok(&o, "downpour over 2 ranks");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("summary.json")).unwrap()).unwrap();
    let acc = summary["test_accuracy"].as_f64().unwrap();
    eprintln!("Downpour over 2 ranks: test accuracy {acc:.4}");
    assert!(acc >= 0.98, "test accuracy {acc}");
}

/// A warm step allocates nothing on either rank while the servers agree on every step's
/// global norm (`clip_norm`) and the loss is scaled (the numbers those messages carry once
/// made a new send buffer every step).
#[test]
fn warm_steps_allocate_nothing_on_either_rank_with_norms_and_loss_scaling() {
    if !have_mpirun("allocations") {
        return;
    }
    let dir = tmpdir("mpi-alloc");
    synthetic_mnist(&dir, 2000, 100, 28);
    let data = dir.to_str().unwrap();
    let o = singa_mpi(
        2,
        &[
            "bench",
            "mlp",
            "--threads",
            "1",
            "--workers",
            "2",
            "--batch",
            "128",
            "--clip-norm",
            "5",
            "--loss-scale",
            "dynamic",
            "--warmup",
            "40",
            "--windows",
            "2",
            "--steps",
            "20",
            "--data",
            data,
        ],
        &dir,
    );
    ok(&o, "singa bench over 2 ranks");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("rank 1: 0 allocations in"), "{out}");
    // Rank 0's windows: `| window | steps | seconds | samples/s | allocations/step |`.
    let per_step: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.trim_end_matches(" |").rsplit("| ").next())
        .collect();
    assert_eq!(per_step, ["0.00", "0.00"], "{out}");
}
