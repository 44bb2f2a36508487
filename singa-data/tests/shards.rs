//! Shards: round trips, corruption and truncation anywhere, loader order and resumption, and
//! the MNIST importer on synthetic IDX files.

use proptest::prelude::*;
use singa_core::{DType, Error};
use singa_data::import::{import, read_idx};
use singa_data::inspect::inspect;
use singa_data::{BatchLoader, LoaderConfig, RecordSpec, Shard, ShardWriter, Transform};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("singa-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A shard of `n` records of `u8 [2, 3]` whose values encode the record number.
fn write_shard(path: &Path, n: usize) {
    let spec = RecordSpec {
        dtype: DType::U8,
        shape: vec![2, 3],
        has_label: true,
    };
    let mut w = ShardWriter::create(path, spec).unwrap();
    for i in 0..n {
        let v: Vec<u8> = (0..6).map(|j| (i * 7 + j) as u8).collect();
        w.append(Some(i as i32 % 10), &v).unwrap();
    }
    w.finish(&serde_json::json!({ "test": true })).unwrap();
}

#[test]
fn round_trip() {
    let dir = tmpdir("roundtrip");
    let p = dir.join("a.shard");
    write_shard(&p, 50);
    let s = Shard::open(&p).unwrap();
    assert_eq!(s.len(), 50);
    assert_eq!(s.metadata()["test"], true);
    for i in 0..50 {
        let r = s.record(i).unwrap();
        assert_eq!(r.label, Some(i as i32 % 10));
        assert_eq!(
            r.values,
            (0..6)
                .map(|j| (i * 7 + j) as u8)
                .collect::<Vec<_>>()
                .as_slice()
        );
    }
    assert!(s.record(50).is_err());
    // Nothing but the shard is left in the directory (no temporary files).
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.shard")]);
}

#[test]
fn unfinished_writer_leaves_nothing() {
    let dir = tmpdir("unfinished");
    let p = dir.join("b.shard");
    {
        let mut w = ShardWriter::create(
            &p,
            RecordSpec {
                dtype: DType::F32,
                shape: vec![2],
                has_label: false,
            },
        )
        .unwrap();
        w.append(None, &[0u8; 8]).unwrap();
        assert!(w.append(None, &[0u8; 4]).is_err(), "wrong record size");
        assert!(
            w.append(Some(1), &[0u8; 8]).is_err(),
            "label on an unlabelled shard"
        );
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// Reads every record; returns the first error.
fn read_all(p: &Path) -> Result<(), Error> {
    let s = Shard::open(p)?;
    for i in 0..s.len() {
        s.record(i)?;
    }
    Ok(())
}

fn data_error_names_file(e: &Error, p: &Path) {
    match e.root() {
        Error::Data { file, .. } => assert_eq!(file.as_str(), p.display().to_string(), "{e}"),
        other => panic!("expected a data error, got {other}"),
    }
    assert!(e.to_string().contains("at byte offset"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_truncation_is_reported(cut in 0usize..2000) {
        let dir = tmpdir("trunc");
        let p = dir.join("t.shard");
        write_shard(&p, 20);
        let bytes = std::fs::read(&p).unwrap();
        let cut = cut % bytes.len();
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = read_all(&p).unwrap_err();
        data_error_names_file(&e, &p);
    }

    #[test]
    fn any_flipped_bit_is_reported(pos in 0usize..10_000, bit in 0u8..8) {
        let dir = tmpdir("flip");
        let p = dir.join("f.shard");
        write_shard(&p, 20);
        let mut bytes = std::fs::read(&p).unwrap();
        let pos = pos % bytes.len();
        bytes[pos] ^= 1 << bit;
        std::fs::write(&p, &bytes).unwrap();
        let e = read_all(&p).unwrap_err();
        data_error_names_file(&e, &p);
    }
}

#[test]
fn corrupted_record_names_its_offset() {
    let dir = tmpdir("corrupt");
    let p = dir.join("c.shard");
    write_shard(&p, 10);
    let mut bytes = std::fs::read(&p).unwrap();
    // Record 3 starts at 128 + 3 * (4 + 6); flip a value byte.
    let offset = 128 + 3 * 10;
    bytes[offset + 5] ^= 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let s = Shard::open(&p).unwrap();
    let e = s.record(3).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: at byte offset {offset}: record 3 checksum mismatch: the record is corrupted",
            p.display()
        )
    );
}

#[test]
fn impossible_record_shapes_are_refused() {
    let dir = tmpdir("shapes");
    for shape in [
        vec![1, 0, 5],
        vec![1 << 20, 1 << 20],
        vec![1, 2, 3, 4, 5, 6],
    ] {
        let spec = RecordSpec {
            dtype: DType::U8,
            shape: shape.clone(),
            has_label: true,
        };
        let e = ShardWriter::create(dir.join("x.shard"), spec)
            .err()
            .unwrap();
        assert!(e.to_string().contains("x.shard"), "{shape:?}: {e}");
    }
    // A header claiming a zero dimension (with a valid checksum) is refused when opened.
    let p = dir.join("zero.shard");
    write_shard(&p, 3);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[28..32].copy_from_slice(&0u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..124]);
    bytes[124..128].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = Shard::open(&p).err().unwrap();
    assert!(
        e.to_string()
            .contains("at byte offset 28: record dimensions must be at least 1"),
        "{e}"
    );
}

#[test]
fn idx_dimensions_that_overflow_are_refused() {
    let dir = tmpdir("idxhuge");
    let p = dir.join("huge-idx3-ubyte");
    write_idx(&p, &[1 << 22, 1 << 21, 1 << 21], &[0; 16], false);
    let e = read_idx(&p, 3).unwrap_err();
    assert!(
        e.to_string().contains("describe more data than can exist"),
        "{e}"
    );
}

#[test]
fn not_a_shard() {
    let dir = tmpdir("notashard");
    let p = dir.join("x.shard");
    std::fs::write(&p, vec![7u8; 500]).unwrap();
    let e = Shard::open(&p).err().unwrap();
    assert!(e.to_string().contains("not a singa shard"), "{e}");
    let e = Shard::open(dir.join("missing.shard")).err().unwrap();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

fn collect(loader: &mut BatchLoader, batches: usize) -> Vec<(Vec<i32>, Vec<f32>, u64)> {
    (0..batches)
        .map(|_| {
            let b = loader.next_batch().unwrap();
            (b.labels.clone(), b.data.clone(), b.cursor)
        })
        .collect()
}

#[test]
fn loader_shuffles_each_epoch_and_resumes_exactly() {
    let dir = tmpdir("loader");
    let p = dir.join("l.shard");
    write_shard(&p, 30);
    let shard = Arc::new(Shard::open(&p).unwrap());
    let cfg = LoaderConfig {
        batch_size: 7,
        shuffle: true,
        seed: 42,
        transform: Transform {
            scale: 0.5,
            shift: 1.0,
        },
        image: None,
        cursor: 0,
        prefetch: 2,
        part: (0, 1),
    };
    let mut l = BatchLoader::new(shard.clone(), cfg.clone()).unwrap();
    let all = collect(&mut l, 12); // 84 records: almost three epochs
                                   // Each record's first value is (i * 7) as u8, so the record number is recoverable.
    let ids: Vec<usize> = all
        .iter()
        .flat_map(|(_, d, _)| {
            d.chunks(6)
                .map(|r| (((r[0] - 1.0) / 0.5) as usize) / 7)
                .collect::<Vec<_>>()
        })
        .collect();
    for epoch in 0..2 {
        let set: HashSet<usize> = ids[epoch * 30..(epoch + 1) * 30].iter().copied().collect();
        assert_eq!(set.len(), 30, "epoch {epoch} is a permutation");
    }
    assert_ne!(ids[..30], ids[30..60], "a new order every epoch");
    assert_ne!(ids[..30].to_vec(), (0..30).collect::<Vec<_>>(), "shuffled");
    assert_eq!(all[4].2, 35);
    // Resuming from the cursor after batch 4 gives the same batches 5.. as the first run.
    let mut resumed = BatchLoader::new(
        shard,
        LoaderConfig {
            cursor: all[4].2,
            ..cfg
        },
    )
    .unwrap();
    assert_eq!(collect(&mut resumed, 7), all[5..12].to_vec());
}

#[test]
fn the_parts_of_a_batch_together_are_the_whole_batch() {
    let dir = tmpdir("loaderparts");
    let p = dir.join("l.shard");
    write_shard(&p, 25);
    let shard = Arc::new(Shard::open(&p).unwrap());
    let whole = LoaderConfig {
        shuffle: true,
        seed: 9,
        cursor: 6,
        ..LoaderConfig::new(6)
    };
    let expected = collect(
        &mut BatchLoader::new(shard.clone(), whole.clone()).unwrap(),
        9,
    );
    let parts: Vec<_> = (0..3)
        .map(|part| {
            let config = LoaderConfig {
                batch_size: 2,
                part: (part, 3),
                ..whole.clone()
            };
            collect(&mut BatchLoader::new(shard.clone(), config).unwrap(), 9)
        })
        .collect();
    for (b, (labels, data, cursor)) in expected.iter().enumerate() {
        let joined_labels: Vec<i32> = parts.iter().flat_map(|p| p[b].0.clone()).collect();
        let joined_data: Vec<f32> = parts.iter().flat_map(|p| p[b].1.clone()).collect();
        assert_eq!(&joined_labels, labels, "batch {b}");
        assert_eq!(&joined_data, data, "batch {b}");
        assert!(
            parts.iter().all(|p| p[b].2 == *cursor),
            "the cursor counts whole batches"
        );
    }
    let e = BatchLoader::new(
        shard,
        LoaderConfig {
            part: (3, 3),
            ..whole
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("part 3"), "{e}");
}

#[test]
fn loader_reports_corruption() {
    let dir = tmpdir("loadercorrupt");
    let p = dir.join("l.shard");
    write_shard(&p, 10);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[128 + 5 * 10 + 6] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let mut l = BatchLoader::new(Arc::new(Shard::open(&p).unwrap()), LoaderConfig::new(4)).unwrap();
    l.next_batch().unwrap();
    let e = l.next_batch().unwrap_err();
    assert!(e.to_string().contains("record 5 checksum mismatch"), "{e}");
    assert!(l.next_batch().is_err(), "stays failed");
}

/// Writes an IDX file of `u8` data.
fn write_idx(path: &Path, dims: &[u32], data: &[u8], gz: bool) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if gz {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        bytes = e.finish().unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn synthetic_mnist(dir: &Path, gz: bool) {
    let sfx = if gz { ".gz" } else { "" };
    for (prefix, n) in [("train", 12u32), ("t10k", 5)] {
        let images: Vec<u8> = (0..n * 16).map(|i| (i * 3) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte{sfx}")),
            &[n, 4, 4],
            &images,
            gz,
        );
        write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte{sfx}")),
            &[n],
            &labels,
            gz,
        );
    }
}

#[test]
fn mnist_import_raw_and_gz() {
    for gz in [false, true] {
        let dir = tmpdir(&format!("mnist-{gz}"));
        synthetic_mnist(&dir, gz);
        let out = dir.join("shards");
        let written = import("mnist", &dir, &out).unwrap();
        assert_eq!(written.iter().map(|w| w.1).collect::<Vec<_>>(), vec![12, 5]);
        let s = Shard::open(out.join("train.shard")).unwrap();
        assert_eq!(s.spec().shape, vec![1, 4, 4]);
        let r = s.record(2).unwrap();
        assert_eq!(r.label, Some(2));
        assert_eq!(r.values[0], 96);
        let report = inspect(&out.join("test.shard"), 1).unwrap();
        assert!(report.contains("5 records"), "{report}");
        assert!(report.contains("labels    0:1 1:1 2:1 3:1 4:1"), "{report}");
    }
}

#[test]
fn mnist_import_errors() {
    let dir = tmpdir("mnist-bad");
    synthetic_mnist(&dir, false);
    // Truncate the training images.
    let p = dir.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let e = import("mnist", &dir, &dir.join("out")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: at byte offset {}: truncated: dimensions [12, 4, 4] need 192 bytes of data after the header, the file has 182",
            p.display(),
            bytes.len() - 10
        )
    );
    std::fs::remove_file(&p).unwrap();
    let e = import("mnist", &dir, &dir.join("out")).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    let e = import("mnsit", &dir, &dir.join("out")).unwrap_err();
    assert!(e.to_string().contains("did you mean \"mnist\""), "{e}");
    std::fs::write(&p, b"garbage!").unwrap();
    assert!(read_idx(&p, 3).is_err());
}

/// The real MNIST, when `SINGA_DATA_DIR` points at the shared data sets.
#[test]
fn real_mnist_when_available() {
    let Some(root) = std::env::var_os("SINGA_DATA_DIR") else {
        eprintln!("skipped: SINGA_DATA_DIR is not set");
        return;
    };
    let dir = tmpdir("real-mnist");
    let written = import("mnist", &Path::new(&root).join("mnist"), &dir).unwrap();
    assert_eq!(
        written.iter().map(|w| w.1).collect::<Vec<_>>(),
        vec![60000, 10000]
    );
    let report = inspect(&dir.join("test.shard"), 0).unwrap();
    // Label counts of the MNIST test set (from the data set's README).
    assert!(
        report
            .contains("labels    0:980 1:1135 2:1032 3:1010 4:982 5:892 6:958 7:1028 8:974 9:1009"),
        "{report}"
    );
}
