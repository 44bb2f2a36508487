//! `image-folder`: JPEG and PNG files in one folder per class, from a directory or a `.tar.gz`.
//!
//! Two layouts are understood, after stripping folders that wrap everything (a single top folder
//! is a split only if it is called train, test, val, valid or validation):
//!
//! ```text
//! <class>/<image>              one split, written to data.shard
//! <split>/<class>/<image>      one shard per split: train.shard, test.shard, ...
//! ```
//!
//! Labels are the indices of the class names in sorted order, over all splits, so `train` and
//! `test` agree; the names are kept in each shard's metadata. Images are stored as RGB bytes
//! `[3, height, width]` (channel planes, as the convolution layers read them); every image of
//! an import must have the same size. Files that are not images (by extension) are skipped.

use crate::format::RecordSpec;
use crate::shard::ShardWriter;
use singa_core::{DType, Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where one file of the source is, for error messages.
enum Location<'a> {
    File(&'a Path),
    /// An archive and the byte offset of the entry's header in its uncompressed stream.
    Archive(&'a Path, u64),
}

impl Location<'_> {
    fn error(&self, name: &str, message: impl std::fmt::Display) -> Error {
        match self {
            Location::File(p) => Error::data(p, 0, message),
            Location::Archive(p, offset) => Error::data(p, *offset, format!("{name}: {message}")),
        }
    }
}

/// One entry of the source: a directory or a file with its relative `/`-separated name.
enum Entry<'a> {
    Dir(String),
    File(String, &'a mut dyn Read, Location<'a>),
}

fn is_tar_gz(src: &Path) -> bool {
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    src.is_file() && (name.ends_with(".tar.gz") || name.ends_with(".tgz"))
}

/// Calls `f` on every entry of `src` (a directory, walked in sorted order, or a `.tar.gz`, in
/// archive order).
fn for_each_entry(src: &Path, f: &mut dyn FnMut(Entry<'_>) -> Result<()>) -> Result<()> {
    if is_tar_gz(src) {
        let file = File::open(src).map_err(|e| Error::io(src, e))?;
        let mut archive =
            tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
        let entries = archive.entries().map_err(|e| Error::io(src, e))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::io(src, format!("reading the archive: {e}")))?;
            let offset = entry.raw_header_position();
            let name = entry
                .path()
                .map_err(|e| Error::data(src, offset, e))?
                .to_string_lossy()
                .replace('\\', "/");
            let name = name
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            if name.is_empty() {
                continue;
            }
            match entry.header().entry_type() {
                tar::EntryType::Directory => f(Entry::Dir(name))?,
                tar::EntryType::Regular => f(Entry::File(
                    name,
                    &mut entry,
                    Location::Archive(src, offset),
                ))?,
                _ => {}
            }
        }
        Ok(())
    } else if src.is_dir() {
        walk(src, "", f)
    } else {
        Err(Error::io(src, "not a directory or a .tar.gz archive"))
    }
}

fn walk(dir: &Path, prefix: &str, f: &mut dyn FnMut(Entry<'_>) -> Result<()>) -> Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    children.sort();
    for path in children {
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if base.starts_with('.') {
            continue;
        }
        let name = if prefix.is_empty() {
            base
        } else {
            format!("{prefix}/{base}")
        };
        if path.is_dir() {
            f(Entry::Dir(name.clone()))?;
            walk(&path, &name, f)?;
        } else {
            let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            f(Entry::File(name, &mut file, Location::File(&path)))?;
        }
    }
    Ok(())
}

fn is_image(name: &str) -> bool {
    let lower = name.to_lowercase();
    [".jpg", ".jpeg", ".png"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// The split and class folders of a source, learnt from the names of its entries.
struct Layout {
    /// Leading folders that wrap everything.
    strip: usize,
    /// Whether names are `<split>/<class>/<image>` (else `<class>/<image>`).
    splits: bool,
    /// Class names, sorted: the labels.
    classes: Vec<String>,
}

/// The split a single-split import is written to.
const SINGLE_SPLIT: &str = "data";

impl Layout {
    fn learn(src: &Path, dirs: &[String], images: &[String]) -> Result<Layout> {
        let parts: Vec<Vec<&str>> = images.iter().map(|n| n.split('/').collect()).collect();
        let Some(first) = parts.first() else {
            return Err(Error::io(
                src,
                "no JPEG or PNG images found (expected a folder per class)",
            ));
        };
        // Strip folders everything lies in, as long as a class level remains.
        let mut strip = 0;
        while parts
            .iter()
            .all(|p| p.len() > strip + 3 && p[strip] == first[strip])
        {
            strip += 1;
        }
        // A single top folder with a name that is no split name wraps a class layout.
        let split_names = ["train", "test", "val", "valid", "validation"];
        if parts
            .iter()
            .all(|p| p.len() == strip + 3 && p[strip] == first[strip])
            && !split_names.contains(&first[strip].to_lowercase().as_str())
        {
            strip += 1;
        }
        let depth = first.len() - strip;
        if let Some(odd) = parts
            .iter()
            .zip(images)
            .find(|(p, _)| p.len() - strip != depth || p.len() - strip < 2)
        {
            return Err(Error::io(
                src,
                format!(
                    "mixed layout: {:?} and {:?} are at different depths (expected <class>/<image> or <split>/<class>/<image>)",
                    images[0], odd.1
                ),
            ));
        }
        if depth > 3 {
            return Err(Error::io(src, format!("{:?} is nested too deeply (expected <class>/<image> or <split>/<class>/<image>)", images[0])));
        }
        let splits = depth == 3;
        let classes: BTreeSet<&str> = parts.iter().map(|p| p[p.len() - 2]).collect();
        let layout = Layout {
            strip,
            splits,
            classes: classes.iter().map(|c| c.to_string()).collect(),
        };
        // A class folder without images is a mistake worth stopping for.
        let with_images: BTreeSet<(String, &str)> = parts
            .iter()
            .map(|p| (layout.split_of(p), p[p.len() - 2]))
            .collect();
        for d in dirs {
            let p: Vec<&str> = d.split('/').collect();
            if p.len() == strip + depth - 1 && p[..strip] == first[..strip] {
                let class = p[p.len() - 1];
                if !with_images.contains(&(layout.split_of(&p), class)) {
                    return Err(Error::io(
                        src,
                        format!("class folder {d:?} holds no JPEG or PNG images"),
                    ));
                }
            }
        }
        Ok(layout)
    }

    /// The split of an entry's name (already split at `/`).
    fn split_of(&self, parts: &[&str]) -> String {
        if self.splits {
            parts[self.strip].to_string()
        } else {
            SINGLE_SPLIT.to_string()
        }
    }
}

/// An open shard of one split, with the image size its first image set.
struct SplitShard {
    writer: ShardWriter,
    size: (u32, u32),
    first: String,
}

/// Imports the images under `src` (a directory or a `.tar.gz`) into `dst/<split>.shard`.
pub fn import_image_folder(src: &Path, dst: &Path) -> Result<Vec<(PathBuf, u64)>> {
    // Pass 1: the names only, to learn the layout and the classes before any label is written.
    let (mut dirs, mut images) = (Vec::new(), Vec::new());
    for_each_entry(src, &mut |e| {
        match e {
            Entry::Dir(name) => dirs.push(name),
            Entry::File(name, _, _) if is_image(&name) => images.push(name),
            Entry::File(..) => {}
        }
        Ok(())
    })?;
    let layout = Layout::learn(src, &dirs, &images)?;
    drop((dirs, images));

    // Pass 2: decode and write.
    let mut shards: BTreeMap<String, SplitShard> = BTreeMap::new();
    let mut bytes = Vec::new();
    let mut planes = Vec::new();
    for_each_entry(src, &mut |e| {
        let Entry::File(name, reader, location) = e else {
            return Ok(());
        };
        if !is_image(&name) {
            return Ok(());
        }
        let parts: Vec<&str> = name.split('/').collect();
        let split = layout.split_of(&parts);
        let class = parts[parts.len() - 2];
        let label = layout
            .classes
            .iter()
            .position(|c| c == class)
            .expect("every class was seen in pass 1") as i32;
        bytes.clear();
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| location.error(&name, format!("cannot read: {e}")))?;
        let rgb = image::load_from_memory(&bytes)
            .map_err(|e| location.error(&name, format!("cannot decode the image: {e}")))?
            .to_rgb8();
        let size = rgb.dimensions();
        let shard = match shards.get_mut(&split) {
            Some(s) => s,
            None => {
                let spec = RecordSpec {
                    dtype: DType::U8,
                    shape: vec![3, size.1 as usize, size.0 as usize],
                    has_label: true,
                };
                let writer = ShardWriter::create(dst.join(format!("{split}.shard")), spec)?;
                shards.entry(split.clone()).or_insert(SplitShard {
                    writer,
                    size,
                    first: name.clone(),
                })
            }
        };
        if size != shard.size {
            return Err(location.error(
                &name,
                format!(
                    "the image is {}×{} but {:?} is {}×{}; every image of a split must have the same size",
                    size.0, size.1, shard.first, shard.size.0, shard.size.1
                ),
            ));
        }
        // Interleaved RGB to channel planes.
        let area = (size.0 * size.1) as usize;
        planes.resize(3 * area, 0u8);
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                planes[c * area + i] = px.0[c];
            }
        }
        shard.writer.append(Some(label), &planes)
    })?;

    let mut written = Vec::new();
    for (split, s) in shards {
        let meta = serde_json::json!({
            "source": "image-folder",
            "src": src.display().to_string(),
            "split": split,
            "classes": layout.classes,
            "layout": "RGB planes [3, height, width], u8",
        });
        let path = dst.join(format!("{split}.shard"));
        let count = s.writer.finish(&meta)?;
        written.push((path, count));
    }
    Ok(written)
}
