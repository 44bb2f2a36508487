//! Image preparation in the loader: normalisation (a mean image or per-channel means, scale,
//! per-channel standard deviations), then a crop, with zero padding, and a mirror.
//!
//! Training draws the crop offset and the mirror per record from `(seed, position)`, where
//! the position is the record's place in the data stream, so a resumed run sees the same
//! augmented images as an uninterrupted one. Testing takes the centre crop, unmirrored.
//!
//! Mean files are shards with a single `f32` record: the mean image, in stored units
//! (`singa data mean` writes them).

use crate::format::RecordSpec;
use crate::shard::{Shard, ShardWriter};
use singa_core::rng::{mix64, SplitMix64};
use singa_core::{DType, Error, Result};
use std::path::Path;

/// What is subtracted from each stored value before scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum Mean {
    /// Nothing.
    None,
    /// One value per channel, in scaled units (after `scale`, like PyTorch's
    /// `Normalize(mean, std)` after `ToTensor`).
    PerChannel(Vec<f32>),
    /// A mean image `[channels, height, width]` in stored units (from a mean file).
    Image(Vec<f32>),
}

/// How a stored image `[channels, height, width]` becomes the network's input.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSpec {
    /// Multiplies the stored values (1/255 maps bytes to [0, 1]).
    pub scale: f32,
    /// Subtracted (see [`Mean`]).
    pub mean: Mean,
    /// Divides each channel after the mean is subtracted (one value, or one per channel).
    pub std: Vec<f32>,
    /// The output `(height, width)`; `None` keeps the stored size.
    pub crop: Option<(usize, usize)>,
    /// Zeros added on every side before a training crop (`RandomCrop(padding = pad)`).
    pub pad: usize,
    /// Mirror left-right with probability ½ in training.
    pub mirror: bool,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            scale: 1.0,
            mean: Mean::None,
            std: vec![1.0],
            crop: None,
            pad: 0,
            mirror: false,
        }
    }
}

/// An [`ImageSpec`] checked against a shard's records and compiled into per-value factors.
#[derive(Clone, Debug)]
pub struct ImagePrep {
    channels: usize,
    height: usize,
    width: usize,
    crop: (usize, usize),
    pad: usize,
    mirror: bool,
    /// Random crops and mirrors (training) or the centre (testing).
    random: bool,
    /// Per channel: the factor of a stored value.
    gain: Vec<f32>,
    /// Per stored value: added after the gain.
    offset: Vec<f32>,
}

impl ImagePrep {
    /// Compiles `spec` for records of shape `record` (`[channels, height, width]`); `random`
    /// selects training (random crop and mirror) or testing (centre crop).
    pub fn new(spec: &ImageSpec, record: &[usize], random: bool) -> Result<ImagePrep> {
        let &[channels, height, width] = record else {
            return Err(Error::invalid(format!(
                "image records are [channels, height, width], got {record:?}"
            )));
        };
        let std = match spec.std.len() {
            1 => vec![spec.std[0]; channels],
            n if n == channels => spec.std.clone(),
            n => {
                return Err(Error::invalid(format!(
                    "std has {n} values for {channels} channels (give 1 or {channels})"
                )))
            }
        };
        if let Some(s) = std.iter().find(|s| **s == 0.0 || !s.is_finite()) {
            return Err(Error::invalid(format!(
                "std must be finite and not 0, got {s}"
            )));
        }
        let area = height * width;
        let gain: Vec<f32> = std.iter().map(|s| spec.scale / s).collect();
        let offset: Vec<f32> = match &spec.mean {
            Mean::None => vec![0.0; channels * area],
            Mean::PerChannel(m) => {
                let m = match m.len() {
                    1 => vec![m[0]; channels],
                    n if n == channels => m.clone(),
                    n => {
                        return Err(Error::invalid(format!(
                            "mean has {n} values for {channels} channels (give 1 or {channels})"
                        )))
                    }
                };
                (0..channels * area)
                    .map(|i| -m[i / area] / std[i / area])
                    .collect()
            }
            Mean::Image(img) => {
                if img.len() != channels * area {
                    return Err(Error::invalid(format!(
                        "the mean image has {} values, but the images are [{channels}, {height}, {width}] ({} values)",
                        img.len(),
                        channels * area
                    )));
                }
                img.iter()
                    .enumerate()
                    .map(|(i, m)| -m * gain[i / area])
                    .collect()
            }
        };
        let crop = spec.crop.unwrap_or((height, width));
        if crop.0 == 0 || crop.1 == 0 || crop.0 > height || crop.1 > width {
            return Err(Error::invalid(format!(
                "crop {}×{} does not fit in images of {height}×{width}",
                crop.0, crop.1
            )));
        }
        Ok(ImagePrep {
            channels,
            height,
            width,
            crop,
            pad: spec.pad,
            mirror: spec.mirror,
            random,
            gain,
            offset,
        })
    }

    /// The shape of a prepared image: `[channels, crop height, crop width]`.
    pub fn output_shape(&self) -> [usize; 3] {
        [self.channels, self.crop.0, self.crop.1]
    }

    /// The values in a stored record.
    pub fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Prepares the stored image `raw` (as `f32`) into `out`; `seed` and `position` key the
    /// random crop and mirror.
    pub fn apply(&self, raw: &[f32], out: &mut [f32], seed: u64, position: u64) {
        let (h, w) = (self.height, self.width);
        let (ch, cw) = self.crop;
        let (top, left, flip) = if self.random {
            let mut r = SplitMix64::new(mix64(seed ^ mix64(position.wrapping_add(0x1a6e))));
            let p = self.pad;
            let top = r.below((h + 2 * p - ch + 1) as u64) as isize - p as isize;
            let left = r.below((w + 2 * p - cw + 1) as u64) as isize - p as isize;
            let flip = self.mirror && r.next_u64() & 1 == 1;
            (top, left, flip)
        } else {
            (((h - ch) / 2) as isize, ((w - cw) / 2) as isize, false)
        };
        for c in 0..self.channels {
            let g = self.gain[c];
            let plane = c * h * w;
            for y in 0..ch {
                let row = &mut out[(c * ch + y) * cw..(c * ch + y + 1) * cw];
                let sy = top + y as isize;
                if sy < 0 || sy >= h as isize {
                    row.fill(0.0);
                    continue;
                }
                let src = plane + sy as usize * w;
                for (x, o) in row.iter_mut().enumerate() {
                    let xx = if flip { cw - 1 - x } else { x };
                    let sx = left + xx as isize;
                    *o = if sx < 0 || sx >= w as isize {
                        0.0
                    } else {
                        let i = src + sx as usize;
                        raw[i] * g + self.offset[i]
                    };
                }
            }
        }
    }
}

/// The mean of every value position over all records of `shard`, in stored units.
pub fn compute_mean(shard: &Shard) -> Result<Vec<f32>> {
    let n = shard.spec().numel();
    let mut sum = vec![0.0f64; n];
    let mut values = vec![0.0f32; n];
    for i in 0..shard.len() {
        let r = shard.record(i)?;
        shard.decode_values(r.values, &mut values, 1.0, 0.0);
        for (s, v) in sum.iter_mut().zip(&values) {
            *s += *v as f64;
        }
    }
    let count = shard.len().max(1) as f64;
    Ok(sum.iter().map(|s| (s / count) as f32).collect())
}

/// Writes a mean file: a shard with one unlabelled `f32` record of `shape`.
pub fn write_mean(path: &Path, shape: &[usize], mean: &[f32], source: &Path) -> Result<()> {
    let mut w = ShardWriter::create(
        path,
        RecordSpec {
            dtype: DType::F32,
            shape: shape.to_vec(),
            has_label: false,
        },
    )?;
    let bytes: Vec<u8> = mean.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.append(None, &bytes)?;
    w.finish(&serde_json::json!({ "kind": "mean", "source": source.display().to_string() }))?;
    Ok(())
}

/// Reads a mean file, checking that it holds one image of `shape`.
pub fn read_mean(path: &Path, shape: &[usize]) -> Result<Vec<f32>> {
    let shard = Shard::open(path)?;
    if shard.len() != 1 || shard.spec().shape != shape {
        return Err(Error::data(
            path,
            0,
            format!(
                "a mean file for images {shape:?} holds one record of that shape; this one holds {} record(s) of {:?}",
                shard.len(),
                shard.spec().shape
            ),
        ));
    }
    let r = shard.record(0)?;
    let mut mean = vec![0.0; shard.spec().numel()];
    shard.decode_values(r.values, &mut mean, 1.0, 0.0);
    Ok(mean)
}
