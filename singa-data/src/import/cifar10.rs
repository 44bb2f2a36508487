//! `cifar10`: the CIFAR-10 binary batches (`data_batch_1.bin` … `data_batch_5.bin`,
//! `test_batch.bin`), from a directory (searched one level down, e.g. `cifar-10-batches-bin/`)
//! or the `cifar-10-binary.tar.gz` archive.
//!
//! A record of the binary format is 3073 bytes: the label, then the red, green and blue planes
//! of a 32×32 image, row-major; exactly the shard record `u8 [3, 32, 32]` with its label.

use crate::format::RecordSpec;
use crate::shard::ShardWriter;
use singa_core::{DType, Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The bytes of one image.
const IMAGE_BYTES: usize = 3 * 32 * 32;
/// The bytes of one record: a label byte and the image.
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// The class names, in label order.
const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// The batch files of each split.
const SPLITS: [(&str, &[&str]); 2] = [
    (
        "train",
        &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ],
    ),
    ("test", &["test_batch.bin"]),
];

/// The contents of every batch file, by name, with the path to blame for errors.
fn read_batches(src: &Path) -> Result<Vec<(String, PathBuf, Vec<u8>)>> {
    let wanted = |name: &str| SPLITS.iter().any(|(_, files)| files.contains(&name));
    let mut found = Vec::new();
    let name_lower = src.to_string_lossy().to_lowercase();
    if src.is_file() && (name_lower.ends_with(".tar.gz") || name_lower.ends_with(".tgz")) {
        let file = std::fs::File::open(src).map_err(|e| Error::io(src, e))?;
        let mut archive =
            tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
        for entry in archive.entries().map_err(|e| Error::io(src, e))? {
            let mut entry =
                entry.map_err(|e| Error::io(src, format!("reading the archive: {e}")))?;
            let path = entry.path().map_err(|e| Error::io(src, e))?.into_owned();
            let base = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if wanted(&base) {
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::io(src, format!("{}: {e}", path.display())))?;
                found.push((base, src.join(&path), bytes));
            }
        }
    } else {
        let dirs = [src.to_path_buf(), src.join("cifar-10-batches-bin")];
        for (_, files) in SPLITS {
            for f in files {
                if let Some(p) = dirs.iter().map(|d| d.join(f)).find(|p| p.is_file()) {
                    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                    found.push((f.to_string(), p, bytes));
                }
            }
        }
    }
    Ok(found)
}

/// Imports the CIFAR-10 binary batches under `src` into `dst/train.shard` and `dst/test.shard`.
pub fn import_cifar10(src: &Path, dst: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let batches = read_batches(src)?;
    let mut written = Vec::new();
    for (split, files) in SPLITS {
        let out = dst.join(format!("{split}.shard"));
        let spec = RecordSpec {
            dtype: DType::U8,
            shape: vec![3, 32, 32],
            has_label: true,
        };
        let mut w = ShardWriter::create(&out, spec)?;
        for f in files {
            let Some((_, path, bytes)) = batches.iter().find(|(name, _, _)| name == f) else {
                return Err(Error::io(src.join(f), "not found (expected the CIFAR-10 binary batches, e.g. from cifar-10-binary.tar.gz)"));
            };
            if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
                return Err(Error::data(
                    path,
                    (bytes.len() - bytes.len() % RECORD_BYTES) as u64,
                    format!(
                        "{} bytes is not a whole number of {RECORD_BYTES}-byte records",
                        bytes.len()
                    ),
                ));
            }
            for (i, r) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
                if r[0] as usize >= CLASSES.len() {
                    return Err(Error::data(
                        path,
                        (i * RECORD_BYTES) as u64,
                        format!("label {} is not a class 0-9", r[0]),
                    ));
                }
                w.append(Some(r[0] as i32), &r[1..])?;
            }
        }
        let meta = serde_json::json!({
            "source": "cifar10",
            "split": split,
            "files": files,
            "classes": CLASSES,
            "layout": "RGB planes [3, 32, 32], u8",
        });
        let count = w.finish(&meta)?;
        written.push((out, count));
    }
    Ok(written)
}
