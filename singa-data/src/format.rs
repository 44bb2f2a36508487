//! The shard file format, version 1.
//!
//! A shard holds records of one fixed shape and dtype, each with an optional `i32` label. It is
//! written once (append-only, then finalised) and read through a memory map. All integers are
//! little-endian.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "SINGASHD"
//!      8     4  format version (u32) = 1
//!     12     4  header size (u32) = 128
//!     16     8  record count (u64)
//!     24     1  value dtype (0 f32, 1 f16, 2 bf16, 3 i32, 4 u8)
//!     25     1  rank of the record shape (0..=5)
//!     26     1  has label (0 or 1)
//!     27     1  reserved (0)
//!     28    20  record shape, 5 × u32 (unused dimensions are 0)
//!     48     8  index offset (u64)
//!     56     8  metadata offset (u64)
//!     64     8  metadata length (u64)
//!     72     4  CRC-32 of the index
//!     76     4  CRC-32 of the metadata
//!     80    44  reserved (0)
//!    124     4  CRC-32 of bytes 0..124
//!    128     …  records: [label i32, if has label][values: product of shape × dtype size]
//!  index     …  one entry per record: offset u64, length u32, CRC-32 of the record u32
//!  meta      …  UTF-8 JSON object (source, class names, …)
//! ```
//!
//! Every record carries its own checksum, checked on every read, so a flipped bit is reported
//! with the record's offset rather than trained on. The index allows variable-length records in
//! later versions; version 1 readers require every record to have the length its shape implies.

use singa_core::{DType, Error, Result};
use std::path::Path;

/// The first eight bytes of every shard.
pub const MAGIC: &[u8; 8] = b"SINGASHD";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// The size of the header in bytes.
pub const HEADER_SIZE: usize = 128;
/// The size of one index entry in bytes.
pub const INDEX_ENTRY_SIZE: usize = 16;
/// The largest rank of a record's shape.
pub const MAX_RECORD_RANK: usize = 5;

/// What every record of a shard looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSpec {
    /// The dtype of the values.
    pub dtype: DType,
    /// The shape of one record's values (no batch dimension).
    pub shape: Vec<usize>,
    /// Whether each record starts with an `i32` label.
    pub has_label: bool,
}

/// The largest record this format holds (an index entry stores the length in 32 bits).
pub const MAX_RECORD_BYTES: usize = u32::MAX as usize;

impl RecordSpec {
    /// The number of values in a record.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The size of a record in bytes (label included).
    pub fn record_bytes(&self) -> usize {
        self.numel() * self.dtype.size() + if self.has_label { 4 } else { 0 }
    }

    /// Why this spec cannot describe a shard's records, if it cannot: too many dimensions, a
    /// zero dimension, or records larger than [`MAX_RECORD_BYTES`].
    pub fn problem(&self) -> Option<String> {
        if self.shape.len() > MAX_RECORD_RANK {
            return Some(format!(
                "a record has at most {MAX_RECORD_RANK} dimensions, got {:?}",
                self.shape
            ));
        }
        if self.shape.contains(&0) {
            return Some(format!(
                "record dimensions must be at least 1, got {:?}",
                self.shape
            ));
        }
        let bytes = self
            .shape
            .iter()
            .try_fold(self.dtype.size(), |acc, &d| acc.checked_mul(d))
            .and_then(|b| b.checked_add(4));
        match bytes {
            Some(b) if b <= MAX_RECORD_BYTES => None,
            _ => Some(format!(
                "records of shape {:?} ({}) exceed {MAX_RECORD_BYTES} bytes",
                self.shape, self.dtype
            )),
        }
    }
}

/// The decoded fixed-size header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Number of records.
    pub count: u64,
    /// Shape and dtype of the records.
    pub spec: RecordSpec,
    /// Where the index starts.
    pub index_offset: u64,
    /// Where the metadata starts.
    pub meta_offset: u64,
    /// Metadata length in bytes.
    pub meta_len: u64,
    /// Checksum of the index bytes.
    pub index_crc: u32,
    /// Checksum of the metadata bytes.
    pub meta_crc: u32,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.count.to_le_bytes());
        b[24] = self.spec.dtype.code();
        b[25] = self.spec.shape.len() as u8;
        b[26] = self.spec.has_label as u8;
        for (i, d) in self.spec.shape.iter().enumerate() {
            b[28 + 4 * i..32 + 4 * i].copy_from_slice(&(*d as u32).to_le_bytes());
        }
        b[48..56].copy_from_slice(&self.index_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.meta_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.meta_len.to_le_bytes());
        b[72..76].copy_from_slice(&self.index_crc.to_le_bytes());
        b[76..80].copy_from_slice(&self.meta_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header; errors name `path` and the offending offset.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_SIZE {
            return Err(Error::data(
                path,
                b.len() as u64,
                format!(
                    "truncated: a shard starts with a {HEADER_SIZE}-byte header, the file has {} bytes",
                    b.len()
                ),
            ));
        }
        if &b[0..8] != MAGIC {
            return Err(Error::data(path, 0, "not a singa shard (bad magic number)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(Error::data(
                path,
                8,
                format!("shard format version {version}; this build reads version {VERSION}"),
            ));
        }
        let stored = u32_at(124);
        let actual = crc32fast::hash(&b[..124]);
        if stored != actual {
            return Err(Error::data(
                path,
                124,
                format!("header checksum mismatch (stored {stored:08x}, computed {actual:08x}): the header is corrupted"),
            ));
        }
        if u32_at(12) as usize != HEADER_SIZE {
            return Err(Error::data(
                path,
                12,
                format!("header size {} is not {HEADER_SIZE}", u32_at(12)),
            ));
        }
        let dtype = DType::from_code(b[24])
            .ok_or_else(|| Error::data(path, 24, format!("unknown dtype code {}", b[24])))?;
        let rank = b[25] as usize;
        if rank > MAX_RECORD_RANK {
            return Err(Error::data(
                path,
                25,
                format!("record rank {rank} exceeds {MAX_RECORD_RANK}"),
            ));
        }
        let shape = (0..rank).map(|i| u32_at(28 + 4 * i) as usize).collect();
        let spec = RecordSpec {
            dtype,
            shape,
            has_label: b[26] != 0,
        };
        if let Some(problem) = spec.problem() {
            return Err(Error::data(path, 28, problem));
        }
        Ok(Header {
            version,
            count: u64_at(16),
            spec,
            index_offset: u64_at(48),
            meta_offset: u64_at(56),
            meta_len: u64_at(64),
            index_crc: u32_at(72),
            meta_crc: u32_at(76),
        })
    }
}

/// One index entry: where a record is and its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Byte offset of the record.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// CRC-32 of the record's bytes.
    pub crc: u32,
}

impl IndexEntry {
    /// Encodes the entry.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_SIZE] {
        let mut b = [0u8; INDEX_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Decodes an entry from 16 bytes.
    pub fn decode(b: &[u8]) -> IndexEntry {
        IndexEntry {
            offset: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            crc: u32::from_le_bytes(b[12..16].try_into().unwrap()),
        }
    }
}
