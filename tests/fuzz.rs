//! Hostile input, generated: arbitrary bytes and structure-aware mutations of valid files fed
//! to the job-file parser and validator, the checkpoint reader and the plugin loader. None may
//! panic, and every error names the file. (The shard reader's truncations and bit flips are
//! in singa-data's `tests/shards.rs`.) Bounded: a few hundred cases each, seconds in all.
//! docs/RELIABILITY.md says what else is tried and how.

use proptest::prelude::*;
use singa::config::{JobConfig, Origin};
use singa::trainer::{Silent, TrainOptions, Trainer};
use singa::Registry;
use singa_tests::{mlp_job, synthetic_mnist, tmpdir};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const JOB_FILE: &str = "fuzz.toml";

/// The MNIST example's job file, with a loss scale written as a table: the seed of the
/// mutations.
fn example_job() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("examples/mnist-mlp/job.toml")).unwrap();
        assert!(text.contains("[device]\n"));
        text.replace(
            "[device]\n",
            "[device]\nloss_scale = { init = 65536.0, growth_interval = 2000 }\n",
        )
    })
}

/// Parses and validates `text` as a job file: never a panic, and an error names the file.
fn parse_and_validate(text: &str) -> Result<(), TestCaseError> {
    let origin = Origin {
        file: JOB_FILE.into(),
        base_dir: ".".into(),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        JobConfig::from_toml(text, origin).and_then(|job| {
            job.validate(&Registry::builtin())?;
            Ok(())
        })
    }));
    match outcome {
        Err(_) => Err(TestCaseError::fail(format!("panicked on:\n{text}"))),
        Ok(Err(e)) if !e.to_string().starts_with(JOB_FILE) => Err(TestCaseError::fail(format!(
            "the error does not name the file: {e}\non:\n{text}"
        ))),
        Ok(_) => Ok(()),
    }
}

/// Values a hostile user (or a typo) puts where another value belongs.
const NASTY: [&str; 16] = [
    "nan",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e39",
    "-1e39",
    "9999999999999999999",
    "\"\"",
    "\"x\"",
    "[]",
    "[[]]",
    "{}",
    "true",
    "1.5",
    "\"../../../../etc/passwd\"",
];

/// A mutation of a job file's lines.
#[derive(Clone, Debug)]
enum Mutation {
    /// Drops line `n`.
    Delete(usize),
    /// Repeats line `n`.
    Duplicate(usize),
    /// Swaps lines `n` and `m`.
    Swap(usize, usize),
    /// Gives the key of line `n` a nasty value.
    Revalue(usize, usize),
    /// Cuts the file after `n` bytes.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<usize>(), 0..NASTY.len()).prop_map(|(a, b)| Mutation::Revalue(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in mutations {
        let n = lines.len().max(1);
        match *m {
            Mutation::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) if !lines.is_empty() => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Mutation::Swap(i, j) if !lines.is_empty() => lines.swap(i % n, j % n),
            Mutation::Revalue(i, v) if !lines.is_empty() => {
                let line = &mut lines[i % n];
                if let Some((key, _)) = line.split_once('=') {
                    *line = format!("{key}= {}", NASTY[v]);
                }
            }
            Mutation::Truncate(at) => {
                let mut joined = lines.join("\n");
                let mut at = at % (joined.len() + 1);
                while !joined.is_char_boundary(at) {
                    at -= 1;
                }
                joined.truncate(at);
                lines = joined.lines().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

/// A trained checkpoint of a small job, and a trainer of that job to load it into.
struct CheckpointFixture {
    dir: PathBuf,
    good: Vec<u8>,
    trainer: std::sync::Mutex<Trainer>,
}

fn checkpoint_fixture() -> &'static CheckpointFixture {
    static FIXTURE: OnceLock<CheckpointFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tmpdir("fuzz-checkpoint");
        synthetic_mnist(&dir, 64, 32, 8);
        let text = mlp_job(&dir, "train_steps = 2\ntest_steps = 1", 8, 0.0);
        let job = JobConfig::from_toml(&text, Origin::default()).unwrap();
        let options = TrainOptions {
            workspace: Some(dir.join("ws")),
            threads: Some(1),
            ..TrainOptions::default()
        };
        let mut trainer = Trainer::new(&job, &Registry::builtin(), &options).unwrap();
        trainer.run(&mut Silent).unwrap();
        let good = std::fs::read(dir.join("ws/checkpoints/step-00000002.safetensors")).unwrap();
        let trainer = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
        CheckpointFixture {
            dir,
            good,
            trainer: std::sync::Mutex::new(trainer),
        }
    })
}

/// A mutation of a file's bytes.
#[derive(Clone, Debug)]
enum ByteMutation {
    /// Flips bit `bit` of byte `at`.
    Flip(usize, u8),
    /// Writes `value` at `at`.
    Set(usize, u8),
    /// Cuts the file after `at` bytes.
    Truncate(usize),
    /// Writes the little-endian `u64` `value` at `at` (safetensors' header length is one).
    Length(usize, u64),
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(a, b)| ByteMutation::Flip(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, v)| ByteMutation::Set(a, v)),
        any::<usize>().prop_map(ByteMutation::Truncate),
        (0usize..16, any::<u64>()).prop_map(|(a, v)| ByteMutation::Length(a, v)),
    ]
}

fn mutate_bytes(bytes: &[u8], mutations: &[ByteMutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let n = out.len().max(1);
        match *m {
            ByteMutation::Flip(at, bit) if !out.is_empty() => out[at % n] ^= 1 << bit,
            ByteMutation::Set(at, v) if !out.is_empty() => out[at % n] = v,
            ByteMutation::Truncate(at) => out.truncate(at % (out.len() + 1)),
            ByteMutation::Length(at, v) if out.len() >= at + 8 => {
                out[at..at + 8].copy_from_slice(&v.to_le_bytes())
            }
            _ => {}
        }
    }
    out
}

/// Runs `f`; fails the case if it panics or returns an error that does not name `path`.
fn names_the_file<T>(
    path: &Path,
    f: impl FnOnce() -> singa_core::Result<T>,
) -> Result<(), TestCaseError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(_) => Err(TestCaseError::fail(format!(
            "panicked on {}",
            path.display()
        ))),
        Ok(Err(e)) if !e.to_string().contains(&path.display().to_string()) => Err(
            TestCaseError::fail(format!("the error does not name {}: {e}", path.display())),
        ),
        Ok(_) => Ok(()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_is_no_job_file(text in ".{0,400}") {
        parse_and_validate(&text)?;
    }

    #[test]
    fn arbitrary_bytes_are_no_job_file(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        parse_and_validate(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn a_mutated_job_file_is_refused_naming_the_file(mutations in proptest::collection::vec(mutation(), 1..4)) {
        parse_and_validate(&mutate(example_job(), &mutations))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_checkpoint_is_refused_naming_the_file(
        mutations in proptest::collection::vec(byte_mutation(), 1..4),
        case: u64,
    ) {
        let fixture = checkpoint_fixture();
        let path = fixture.dir.join(format!("mutated-{case}.safetensors"));
        std::fs::write(&path, mutate_bytes(&fixture.good, &mutations)).unwrap();
        names_the_file(&path, || singa::checkpoint::load(&path))?;
        let mut trainer = fixture.trainer.lock().unwrap_or_else(|p| p.into_inner());
        names_the_file(&path, || trainer.load_params(&path))?;
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn arbitrary_bytes_are_no_plugin(bytes in proptest::collection::vec(any::<u8>(), 0..2000), case: u64) {
        let dir = checkpoint_fixture().dir.clone();
        let path = dir.join(format!("libfuzz{case}.so"));
        std::fs::write(&path, &bytes).unwrap();
        names_the_file(&path, || {
            singa::plugins::load(&path, singa::plugins::Detail::Brief)
        })?;
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn any_interface_stamp_is_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 64)) {
        let size = std::mem::size_of::<singa_core::plugin::InterfaceStamp>();
        prop_assert!(size <= bytes.len());
        // SAFETY: a stamp is bytes and a `u32`: any bit pattern is one; the read is unaligned.
        let stamp: singa_core::plugin::InterfaceStamp =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let _ = catch_unwind(|| stamp.version().map(str::to_string))
            .map_err(|_| TestCaseError::fail("version() panicked"))?;
    }
}

/// The plugin loader on a real plugin cut short at many points: refused naming the file (the
/// system's loader reads the ELF headers; a cut one must not crash it or singa).
#[test]
fn a_truncated_plugin_is_refused_naming_the_file() {
    let real = singa_tests::plugin("singa-plugin-template");
    let bytes = std::fs::read(&real).unwrap();
    let dir = tmpdir("fuzz-plugin");
    for at in [
        0,
        1,
        4,
        16,
        52,
        64,
        200,
        1000,
        4096,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let path = dir.join(format!("libcut{at}.so"));
        std::fs::write(&path, &bytes[..at]).unwrap();
        let e = singa::plugins::load(&path, singa::plugins::Detail::Brief)
            .err()
            .unwrap_or_else(|| panic!("a plugin cut at {at} bytes was loaded"));
        assert!(
            e.to_string().contains(&path.display().to_string()),
            "cut at {at}: {e}"
        );
    }
}
