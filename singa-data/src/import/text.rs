//! `text`: a text file as a sequence of ids, one per character (or byte), for character-level
//! language models such as char-rnn.
//!
//! The vocabulary is every distinct character of the file, sorted by code point (bytes: by
//! value), and a character's id is its place in it; the vocabulary is kept in each shard's
//! metadata, so a model's outputs can be turned back into text. The ids are split where the
//! text is cut, not shuffled: the first `1 − validation` of them go to `train.shard`, the rest
//! to `valid.shard` (as char-rnn splits), so a model is validated on text it has not read.
//!
//! Shards hold records of a fixed shape, so the ids are stored in records of [`CHUNK`] (`u8`
//! when the vocabulary has at most 256 entries, else `i32`); the last record is padded with
//! zeros and the metadata's `length` says how many ids are real. [`read_text`] undoes it.

use crate::format::RecordSpec;
use crate::shard::{Shard, ShardWriter};
use singa_core::{DType, Error, Result};
use std::path::{Path, PathBuf};

/// Ids per record.
pub const CHUNK: usize = 4096;

/// What one id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextUnit {
    /// A Unicode character (the file must be UTF-8).
    Chars,
    /// A byte (any file).
    Bytes,
}

impl TextUnit {
    /// The name in metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TextUnit::Chars => "chars",
            TextUnit::Bytes => "bytes",
        }
    }

    /// The unit called `name` (`chars` or `bytes`).
    pub fn from_name(name: &str) -> Result<TextUnit> {
        match name {
            "chars" => Ok(TextUnit::Chars),
            "bytes" => Ok(TextUnit::Bytes),
            other => Err(Error::invalid(format!(
                "unknown text unit {other:?} (known: chars, bytes)"
            ))),
        }
    }
}

/// How [`import_text`] cuts a text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextOptions {
    /// Characters or bytes.
    pub unit: TextUnit,
    /// The fraction of the ids, at the end of the text, kept for validation (`0 ≤ f < 1`; 0
    /// writes no validation shard).
    pub validation: f64,
}

impl Default for TextOptions {
    /// Characters, 5 % for validation (char-rnn's split).
    fn default() -> Self {
        TextOptions {
            unit: TextUnit::Chars,
            validation: 0.05,
        }
    }
}

/// A text as ids, with its vocabulary: what [`read_text`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextIds {
    /// Characters or bytes.
    pub unit: TextUnit,
    /// Entry `i` is what id `i` stands for (a character, or for bytes the byte as a
    /// one-character string when it is ASCII, else `\xNN`).
    pub vocabulary: Vec<String>,
    /// The ids, in the order of the text.
    pub ids: Vec<u32>,
}

/// Imports the text file `src` into `train.shard` (and `valid.shard` unless
/// `options.validation` is 0) in the directory `dst`; returns the shards and their id counts.
pub fn import_text(src: &Path, dst: &Path, options: TextOptions) -> Result<Vec<(PathBuf, u64)>> {
    let f = options.validation;
    if !(0.0..1.0).contains(&f) {
        return Err(Error::invalid(format!(
            "the validation fraction must be at least 0 and below 1, got {f}"
        )));
    }
    let bytes = crate::file::read_regular(src)?;
    let units = split_units(src, &bytes, options.unit)?;
    if units.is_empty() {
        return Err(Error::data(
            src,
            0,
            "the file is empty: there is no text to import",
        ));
    }
    let mut vocabulary = units.clone();
    vocabulary.sort_unstable();
    vocabulary.dedup();
    let ids: Vec<u32> = units
        .iter()
        .map(|u| {
            vocabulary
                .binary_search(u)
                .expect("every unit is in the vocabulary") as u32
        })
        .collect();
    let names: Vec<String> = vocabulary
        .iter()
        .map(|&u| unit_name(options.unit, u))
        .collect();
    let valid = (ids.len() as f64 * f).round() as usize;
    if f > 0.0 && (valid == 0 || valid == ids.len()) {
        return Err(Error::invalid(format!(
            "{}: {} {} cannot be split {:.0} % / {:.0} % (one part would be empty)",
            src.display(),
            ids.len(),
            options.unit.name(),
            100.0 * (1.0 - f),
            100.0 * f
        )));
    }
    let cut = ids.len() - valid;
    let mut written = Vec::new();
    for (split, part) in [("train", &ids[..cut]), ("valid", &ids[cut..])] {
        if part.is_empty() {
            continue;
        }
        let out = dst.join(format!("{split}.shard"));
        let meta = serde_json::json!({
            "source": src.display().to_string(),
            "kind": "text",
            "split": split,
            "unit": options.unit.name(),
            "validation_fraction": f,
            "length": part.len(),
            "vocabulary": names,
        });
        write_ids(&out, part, names.len(), &meta)?;
        written.push((out, part.len() as u64));
    }
    Ok(written)
}

/// The file's characters (or bytes) as code points.
fn split_units(src: &Path, bytes: &[u8], unit: TextUnit) -> Result<Vec<u32>> {
    match unit {
        TextUnit::Bytes => Ok(bytes.iter().map(|&b| b as u32).collect()),
        TextUnit::Chars => match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.chars().map(|c| c as u32).collect()),
            Err(e) => Err(Error::data(
                src,
                e.valid_up_to() as u64,
                "not UTF-8 text (import it with unit \"bytes\" to use its bytes)",
            )),
        },
    }
}

/// How a vocabulary entry is written in the metadata.
fn unit_name(unit: TextUnit, u: u32) -> String {
    match unit {
        TextUnit::Chars => char::from_u32(u).expect("decoded from UTF-8").to_string(),
        TextUnit::Bytes if u < 0x80 => (u as u8 as char).to_string(),
        TextUnit::Bytes => format!("\\x{u:02x}"),
    }
}

/// Writes `ids` as records of [`CHUNK`], the last padded with zeros.
fn write_ids(out: &Path, ids: &[u32], vocab: usize, meta: &serde_json::Value) -> Result<()> {
    let dtype = if vocab <= 256 { DType::U8 } else { DType::I32 };
    let spec = RecordSpec {
        dtype,
        shape: vec![CHUNK],
        has_label: false,
    };
    let mut w = ShardWriter::create(out, spec)?;
    let mut record = Vec::with_capacity(CHUNK * dtype.size());
    for chunk in ids.chunks(CHUNK) {
        record.clear();
        for i in 0..CHUNK {
            let id = chunk.get(i).copied().unwrap_or(0);
            match dtype {
                DType::U8 => record.push(id as u8),
                _ => record.extend_from_slice(&(id as i32).to_le_bytes()),
            }
        }
        w.append(None, &record)?;
    }
    w.finish(meta)?;
    Ok(())
}

/// Reads a shard written by [`import_text`]: its ids and vocabulary, every record's checksum
/// verified. A shard of another kind, or metadata that disagrees with the records, is an error
/// naming the shard.
pub fn read_text(shard: &Shard) -> Result<TextIds> {
    let path = shard.path();
    let meta = shard.metadata();
    let bad = |what: String| Error::data(path, 0, what);
    if meta.get("kind").and_then(|k| k.as_str()) != Some("text") {
        return Err(bad(
            "not a text shard (its metadata has no \"kind\": \"text\"; make one with \
             `singa data import text`)"
                .into(),
        ));
    }
    let unit = TextUnit::from_name(meta.get("unit").and_then(|u| u.as_str()).unwrap_or(""))
        .map_err(|e| bad(format!("metadata: {e}")))?;
    let vocabulary: Vec<String> = meta
        .get("vocabulary")
        .and_then(|v| v.as_array())
        .and_then(|v| v.iter().map(|s| s.as_str().map(String::from)).collect())
        .ok_or_else(|| bad("metadata: no \"vocabulary\" list of strings".into()))?;
    let length = meta
        .get("length")
        .and_then(|l| l.as_u64())
        .ok_or_else(|| bad("metadata: no \"length\"".into()))? as usize;
    let spec = shard.spec();
    let dtype_ok = matches!(spec.dtype, DType::U8 | DType::I32);
    if !dtype_ok || spec.shape != [CHUNK] || length > shard.len() * CHUNK {
        return Err(bad(format!(
            "records of {} {:?} cannot hold {length} ids of a text shard",
            spec.dtype, spec.shape
        )));
    }
    let mut ids = Vec::with_capacity(length);
    for r in 0..shard.len() {
        let values = shard.record(r)?.values;
        match spec.dtype {
            DType::U8 => ids.extend(values.iter().map(|&b| b as u32)),
            _ => ids.extend(
                values
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as u32),
            ),
        }
    }
    ids.truncate(length);
    if let Some(pos) = ids.iter().position(|&id| id as usize >= vocabulary.len()) {
        return Err(Error::data(
            path,
            0,
            format!(
                "id {} at position {pos} is outside the vocabulary of {}",
                ids[pos],
                vocabulary.len()
            ),
        ));
    }
    Ok(TextIds {
        unit,
        vocabulary,
        ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("singa-text-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Splits, vocabulary and ids survive the round trip, across several records.
    #[test]
    fn a_text_round_trips_through_its_shards() {
        let d = dir("round");
        let text: String = (0..10_000).map(|i| ["ab", "c\n", "é"][i % 3]).collect();
        std::fs::write(d.join("in.txt"), &text).unwrap();
        let written = import_text(&d.join("in.txt"), &d, TextOptions::default()).unwrap();
        let chars: Vec<char> = text.chars().collect();
        let valid = (chars.len() as f64 * 0.05).round() as usize;
        assert_eq!(
            written,
            vec![
                (d.join("train.shard"), (chars.len() - valid) as u64),
                (d.join("valid.shard"), valid as u64)
            ]
        );
        let train = read_text(&Shard::open(d.join("train.shard")).unwrap()).unwrap();
        let valid_ids = read_text(&Shard::open(d.join("valid.shard")).unwrap()).unwrap();
        assert_eq!(train.vocabulary, ["\n", "a", "b", "c", "é"]);
        assert_eq!(valid_ids.vocabulary, train.vocabulary);
        let back: String = train
            .ids
            .iter()
            .chain(&valid_ids.ids)
            .map(|&i| train.vocabulary[i as usize].as_str())
            .collect();
        assert_eq!(back, text);
    }

    /// A vocabulary larger than a byte is stored as i32.
    #[test]
    fn a_large_vocabulary_is_stored_as_i32() {
        let d = dir("wide");
        let text: String = (0..600u32)
            .filter_map(|i| char::from_u32(0x4e00 + i))
            .collect();
        std::fs::write(d.join("in.txt"), &text).unwrap();
        let options = TextOptions {
            validation: 0.0,
            ..TextOptions::default()
        };
        import_text(&d.join("in.txt"), &d, options).unwrap();
        assert!(!d.join("valid.shard").exists());
        let shard = Shard::open(d.join("train.shard")).unwrap();
        assert_eq!(shard.spec().dtype, DType::I32);
        let ids = read_text(&shard).unwrap();
        assert_eq!(ids.ids, (0..600).collect::<Vec<u32>>());
    }

    /// Bytes import anything; characters refuse invalid UTF-8, naming the offset.
    #[test]
    fn invalid_utf8_is_refused_as_chars_and_kept_as_bytes() {
        let d = dir("bytes");
        std::fs::write(d.join("in.bin"), b"ab\xffcd").unwrap();
        let err = import_text(&d.join("in.bin"), &d, TextOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("in.bin") && msg.contains("offset 2"), "{msg}");
        assert!(msg.contains("not UTF-8"), "{msg}");
        let options = TextOptions {
            unit: TextUnit::Bytes,
            validation: 0.4,
        };
        import_text(&d.join("in.bin"), &d, options).unwrap();
        let train = read_text(&Shard::open(d.join("train.shard")).unwrap()).unwrap();
        assert_eq!(train.unit, TextUnit::Bytes);
        assert_eq!(train.vocabulary, ["a", "b", "c", "d", "\\xff"]);
        assert_eq!(train.ids, [0, 1, 4]);
    }

    /// Empty files, impossible splits and bad fractions get clear errors.
    #[test]
    fn bad_inputs_are_refused() {
        let d = dir("bad");
        std::fs::write(d.join("empty.txt"), "").unwrap();
        let msg = import_text(&d.join("empty.txt"), &d, TextOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("empty.txt") && msg.contains("empty"), "{msg}");
        std::fs::write(d.join("short.txt"), "abc").unwrap();
        let msg = import_text(&d.join("short.txt"), &d, TextOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot be split"), "{msg}");
        for f in [-0.1, 1.0, f64::NAN] {
            let options = TextOptions {
                validation: f,
                ..TextOptions::default()
            };
            let msg = import_text(&d.join("short.txt"), &d, options)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("validation fraction"), "{msg}");
        }
        // A shard of another kind is not read as text.
        let spec = RecordSpec {
            dtype: DType::U8,
            shape: vec![2],
            has_label: true,
        };
        let mut w = ShardWriter::create(d.join("other.shard"), spec).unwrap();
        w.append(Some(1), &[0, 1]).unwrap();
        w.finish(&serde_json::json!({"source": "test"})).unwrap();
        let msg = read_text(&Shard::open(d.join("other.shard")).unwrap())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a text shard"), "{msg}");
    }
}
