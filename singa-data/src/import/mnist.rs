//! MNIST and Fashion-MNIST: the four IDX files into `train.shard` and `test.shard`.

use super::idx::read_idx;
use crate::format::RecordSpec;
use crate::shard::ShardWriter;
use singa_core::{DType, Error, Result};
use std::path::{Path, PathBuf};

/// Which of the two data sets (same format, different class names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MnistKind {
    /// LeCun's handwritten digits.
    Digits,
    /// Zalando's Fashion-MNIST.
    Fashion,
}

impl MnistKind {
    fn classes(self) -> Vec<&'static str> {
        match self {
            MnistKind::Digits => vec!["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            MnistKind::Fashion => vec![
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        }
    }

    fn name(self) -> &'static str {
        match self {
            MnistKind::Digits => "mnist",
            MnistKind::Fashion => "fashion-mnist",
        }
    }
}

/// Finds `<stem>` or `<stem>.gz` in `dir`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::io(
        dir.join(format!("{stem}.gz")),
        format!(
            "not found (neither {stem} nor {stem}.gz is in {})",
            dir.display()
        ),
    ))
}

/// Reads the MNIST IDX files in `src` (`train-images-idx3-ubyte[.gz]`, ... `t10k-labels-idx1-ubyte[.gz]`)
/// and writes `dst/train.shard` and `dst/test.shard` (records: `u8 [1, rows, cols]`, labelled).
/// Returns the shards written and their record counts.
pub fn import_mnist(kind: MnistKind, src: &Path, dst: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut written = Vec::new();
    for (prefix, split) in [("train", "train"), ("t10k", "test")] {
        let images_path = find(src, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = find(src, &format!("{prefix}-labels-idx1-ubyte"))?;
        let images = read_idx(&images_path, 3)?;
        let labels = read_idx(&labels_path, 1)?;
        let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
        if labels.dims[0] != n {
            return Err(Error::data(
                &labels_path,
                4,
                format!(
                    "{} labels for {n} images in {}",
                    labels.dims[0],
                    images_path.display()
                ),
            ));
        }
        if let Some((i, l)) = labels.data.iter().enumerate().find(|(_, &l)| l > 9) {
            return Err(Error::data(
                &labels_path,
                8 + i as u64,
                format!("label {l} is not a digit class 0-9"),
            ));
        }
        let out = dst.join(format!("{split}.shard"));
        let mut w = ShardWriter::create(
            &out,
            RecordSpec {
                dtype: DType::U8,
                shape: vec![1, rows, cols],
                has_label: true,
            },
        )?;
        let size = rows * cols;
        for i in 0..n {
            w.append(
                Some(labels.data[i] as i32),
                &images.data[i * size..(i + 1) * size],
            )?;
        }
        let meta = serde_json::json!({
            "source": kind.name(),
            "split": split,
            "images": images_path.file_name().map(|f| f.to_string_lossy().into_owned()),
            "labels": labels_path.file_name().map(|f| f.to_string_lossy().into_owned()),
            "classes": kind.classes(),
        });
        let count = w.finish(&meta)?;
        written.push((out, count));
    }
    Ok(written)
}

/// Whether `path` looks like an IDX file of images (`...-images-idx3-ubyte`, or `.gz`).
pub fn is_idx_images(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("-idx3-ubyte"))
}

/// The labels file beside an IDX images file (`t10k-images-idx3-ubyte.gz` →
/// `t10k-labels-idx1-ubyte[.gz]`), if it is there.
fn labels_beside(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let stem = name
        .trim_end_matches(".gz")
        .replace("images-idx3", "labels-idx1");
    find(images.parent()?, &stem).ok()
}

/// Writes the images of one IDX file (`u8 [n, rows, cols]`) into the shard `dst` as
/// `[1, rows, cols]` records, with the labels of the IDX labels file beside it when there is
/// one (the names MNIST uses), else unlabelled. Returns the records written.
pub fn import_idx_images(images_path: &Path, dst: &Path) -> Result<u64> {
    let images = read_idx(images_path, 3)?;
    let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    let labels = match labels_beside(images_path) {
        Some(path) => {
            let labels = read_idx(&path, 1)?;
            if labels.dims[0] != n {
                return Err(Error::data(
                    &path,
                    4,
                    format!(
                        "{} labels for {n} images in {}",
                        labels.dims[0],
                        images_path.display()
                    ),
                ));
            }
            Some(labels.data)
        }
        None => None,
    };
    let spec = RecordSpec {
        dtype: DType::U8,
        shape: vec![1, rows, cols],
        has_label: true,
    };
    let mut w = ShardWriter::create(dst, spec)?;
    let size = rows * cols;
    for i in 0..n {
        let label = labels.as_ref().map_or(0, |l| l[i] as i32);
        w.append(Some(label), &images.data[i * size..(i + 1) * size])?;
    }
    w.finish(&serde_json::json!({
        "source": "idx",
        "images": images_path.display().to_string(),
        "unlabelled": labels.is_none(),
    }))
}
