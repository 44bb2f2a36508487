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
