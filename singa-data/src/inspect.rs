//! A human-readable report on a shard: header, metadata, label counts, a few records.

use crate::shard::Shard;
use singa_core::{DType, Result};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Opens `path`, verifies every record's checksum, and describes the shard and its first
/// `show` records.
pub fn inspect(path: &Path, show: usize) -> Result<String> {
    let shard = Shard::open(path)?;
    let h = shard.header();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut out = String::new();
    let spec = shard.spec();
    let _ = writeln!(out, "shard     {}", path.display());
    let _ = writeln!(
        out,
        "format    version {}, {} records, {:.1} MB",
        h.version,
        h.count,
        size as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "record    {} {:?}{}",
        spec.dtype,
        spec.shape,
        if spec.has_label {
            ", with an i32 label"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "metadata  {}", shard.metadata());
    let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
    for i in 0..shard.len() {
        if let Some(l) = shard.record(i)?.label {
            *counts.entry(l).or_default() += 1;
        }
    }
    let _ = writeln!(out, "checksums all {} records verified", shard.len());
    if spec.has_label {
        let list: Vec<String> = counts.iter().map(|(l, c)| format!("{l}:{c}")).collect();
        let _ = writeln!(out, "labels    {}", list.join(" "));
    }
    for i in 0..show.min(shard.len()) {
        let r = shard.record(i)?;
        let _ = writeln!(
            out,
            "\nrecord {i}{}",
            r.label.map(|l| format!(", label {l}")).unwrap_or_default()
        );
        out.push_str(&render(spec.dtype, &spec.shape, r.values, &shard));
    }
    Ok(out)
}

/// Small single-channel `u8` images as ASCII shades; anything else as its first values.
fn render(dtype: DType, shape: &[usize], values: &[u8], shard: &Shard) -> String {
    let dims: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
    if dtype == DType::U8 && dims.len() == 2 && dims[0] <= 64 && dims[1] <= 64 {
        const SHADES: &[u8] = b" .:-=+*#%@";
        let mut s = String::new();
        for row in values.chunks(dims[1]) {
            s.push_str("  ");
            s.extend(
                row.iter()
                    .map(|&v| SHADES[v as usize * (SHADES.len() - 1) / 255] as char),
            );
            s.push('\n');
        }
        return s;
    }
    let n = shape.iter().product::<usize>().min(16);
    let mut f = vec![0.0f32; shape.iter().product()];
    shard.decode_values(values, &mut f, 1.0, 0.0);
    let shown: Vec<String> = f[..n].iter().map(|v| format!("{v}")).collect();
    format!(
        "  [{}{}]\n",
        shown.join(", "),
        if f.len() > n { ", ..." } else { "" }
    )
}
