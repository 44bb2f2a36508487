//! Loose image files (no classes) into one shard, for predicting: each record an image as RGB
//! planes `[3, height, width]`. They have no labels: each record holds 0, and the metadata says
//! `"unlabelled": true`. Every image must have the same size.

use crate::format::RecordSpec;
use crate::shard::ShardWriter;
use singa_core::{DType, Error, Result};
use std::path::{Path, PathBuf};

/// Whether `path` names an image this importer reads (by extension: JPEG or PNG).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.as_str()))
}

/// The image files of `src`: itself, or those directly in it, sorted by name.
pub fn image_files(src: &Path) -> Result<Vec<PathBuf>> {
    if src.is_file() {
        return Ok(vec![src.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(|e| Error::io(src, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::io(src, "holds no JPEG or PNG files"));
    }
    Ok(files)
}

/// Writes `files` into the shard `dst`, in order; returns the records written.
pub fn import_images(files: &[PathBuf], dst: &Path) -> Result<u64> {
    let mut writer: Option<(ShardWriter, (u32, u32))> = None;
    let mut planes = Vec::new();
    for file in files {
        let bytes = crate::file::read_regular(file)?;
        let rgb = image::load_from_memory(&bytes)
            .map_err(|e| Error::data(file, 0, format!("cannot decode the image: {e}")))?
            .to_rgb8();
        let size = rgb.dimensions();
        let (w, first) = match &mut writer {
            Some((w, first)) => (w, *first),
            None => {
                let spec = RecordSpec {
                    dtype: DType::U8,
                    shape: vec![3, size.1 as usize, size.0 as usize],
                    has_label: true,
                };
                let w = ShardWriter::create(dst, spec)?;
                let (w, _) = writer.insert((w, size));
                (w, size)
            }
        };
        if size != first {
            return Err(Error::data(
                file,
                0,
                format!(
                    "the image is {}×{} but {} is {}×{}; every image must have the same size",
                    size.0,
                    size.1,
                    files[0].display(),
                    first.0,
                    first.1
                ),
            ));
        }
        let area = (size.0 * size.1) as usize;
        planes.resize(3 * area, 0u8);
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                planes[c * area + i] = px.0[c];
            }
        }
        w.append(Some(0), &planes)?;
    }
    let (w, _) = writer.ok_or_else(|| Error::invalid("no images to import"))?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    w.finish(&serde_json::json!({
        "source": "images",
        "files": names,
        "layout": "RGB planes [3, height, width], u8",
        "unlabelled": true,
    }))
}
