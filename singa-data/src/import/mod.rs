//! Importers: public data sets in their usual formats into shards.

mod cifar10;
mod idx;
mod image_folder;
mod images;
mod mnist;
mod text;

pub use cifar10::import_cifar10;
pub use idx::{read_idx, Idx};
pub use image_folder::import_image_folder;
pub use images::{image_files, import_images, is_image_file};
pub use mnist::{import_idx_images, import_mnist, is_idx_images, MnistKind};
pub use text::{import_text, read_text, TextIds, TextOptions, TextUnit};

use singa_core::{Error, Result};
use std::path::{Path, PathBuf};

/// The importer names `singa data import` accepts.
pub const KINDS: [&str; 5] = ["mnist", "fashion-mnist", "cifar10", "image-folder", "text"];

/// Runs the importer called `kind` from `src` into the directory `dst` (`text` with its
/// default options: characters, 5 % for validation); returns the shards written and their
/// record counts (for `text`, their id counts).
pub fn import(kind: &str, src: &Path, dst: &Path) -> Result<Vec<(PathBuf, u64)>> {
    match kind {
        "mnist" => import_mnist(MnistKind::Digits, src, dst),
        "fashion-mnist" => import_mnist(MnistKind::Fashion, src, dst),
        "cifar10" => import_cifar10(src, dst),
        "image-folder" => import_image_folder(src, dst),
        "text" => import_text(src, dst, TextOptions::default()),
        other => {
            let hint = singa_core::fields::nearest(other, &KINDS)
                .map(|k| format!("; did you mean {k:?}?"))
                .unwrap_or_default();
            Err(Error::invalid(format!(
                "unknown data set kind {other:?} (known: {}){hint}",
                KINDS.join(", ")
            )))
        }
    }
}
