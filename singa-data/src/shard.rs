//! Writing and reading shards (see [`crate::format`] for the layout).

use crate::format::{Header, IndexEntry, RecordSpec, HEADER_SIZE, INDEX_ENTRY_SIZE, VERSION};
use memmap2::Mmap;
use singa_core::{DType, Error, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes a shard: records are appended to a temporary file, which [`ShardWriter::finish`]
/// completes (index, metadata, header), flushes to disk and renames into place. A shard that
/// is never finished leaves nothing behind, and a reader never sees a half-written one.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    spec: RecordSpec,
    index: Vec<IndexEntry>,
    pos: u64,
    record: Vec<u8>,
}

/// Unique suffixes for temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ShardWriter {
    /// Starts a shard at `path` whose records follow `spec`.
    pub fn create(path: impl AsRef<Path>, spec: RecordSpec) -> Result<ShardWriter> {
        let path = path.as_ref().to_path_buf();
        if let Some(problem) = spec.problem() {
            return Err(Error::invalid(format!("{}: {problem}", path.display())));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = path.with_extension(format!(
            "shard.tmp.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file =
            BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        // The header is written last; reserve its place.
        file.write_all(&[0u8; HEADER_SIZE])
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(ShardWriter {
            path,
            tmp,
            file: Some(file),
            record: Vec::with_capacity(spec.record_bytes()),
            spec,
            index: Vec::new(),
            pos: HEADER_SIZE as u64,
        })
    }

    /// Appends a record: its label (required iff the spec has labels) and its values as bytes
    /// (little-endian, exactly one record's worth).
    pub fn append(&mut self, label: Option<i32>, values: &[u8]) -> Result<()> {
        let want = self.spec.numel() * self.spec.dtype.size();
        if values.len() != want {
            return Err(Error::invalid(format!(
                "record {} has {} bytes of values; the shard's records have {want}",
                self.index.len(),
                values.len()
            )));
        }
        self.record.clear();
        match (label, self.spec.has_label) {
            (Some(l), true) => self.record.extend_from_slice(&l.to_le_bytes()),
            (None, false) => {}
            (Some(_), false) => return Err(Error::invalid("this shard's records have no label")),
            (None, true) => return Err(Error::invalid("this shard's records need a label")),
        }
        self.record.extend_from_slice(values);
        let file = self.file.as_mut().expect("writer used after finish");
        file.write_all(&self.record)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.index.push(IndexEntry {
            offset: self.pos,
            len: self.record.len() as u32,
            crc: crc32fast::hash(&self.record),
        });
        self.pos += self.record.len() as u64;
        Ok(())
    }

    /// The number of records appended so far.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no record was appended.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Writes the index, the metadata (a JSON object) and the header, syncs, and renames the
    /// file into place. Returns the number of records.
    pub fn finish(mut self, metadata: &serde_json::Value) -> Result<u64> {
        let mut file = self.file.take().expect("finish called twice");
        let tmp = self.tmp.clone();
        let io = |e: std::io::Error| Error::io(&tmp, e);
        let index: Vec<u8> = self.index.iter().flat_map(|e| e.encode()).collect();
        let meta = serde_json::to_vec(metadata)
            .map_err(|e| Error::invalid(format!("shard metadata: {e}")))?;
        let index_offset = self.pos;
        let meta_offset = index_offset + index.len() as u64;
        file.write_all(&index).map_err(io)?;
        file.write_all(&meta).map_err(io)?;
        let header = Header {
            version: VERSION,
            count: self.index.len() as u64,
            spec: self.spec.clone(),
            index_offset,
            meta_offset,
            meta_len: meta.len() as u64,
            index_crc: crc32fast::hash(&index),
            meta_crc: crc32fast::hash(&meta),
        };
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header.encode()).map_err(io)?;
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        sync_parent(&self.path);
        Ok(header.count)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Not finished: leave nothing half-written behind.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Flushes a directory entry (after a rename) to disk; best effort, as not every file system
/// supports syncing directories.
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// One record as stored.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The label, if the shard has labels.
    pub label: Option<i32>,
    /// The values' bytes (little-endian, the shard's dtype).
    pub values: &'a [u8],
}

/// A shard opened for reading through a memory map.
///
/// Each record's checksum is verified the first time it is read (a bit per record remembers
/// which ones were), so corruption is caught before its data is used, and later epochs cost no
/// checksum work.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    header: Header,
    metadata: serde_json::Value,
    verified: Vec<AtomicU64>,
}

impl Shard {
    /// Opens and validates a shard: header, index and metadata checksums, and that every
    /// record lies inside the file. Records' own checksums are checked when they are read.
    pub fn open(path: impl AsRef<Path>) -> Result<Shard> {
        let path = path.as_ref().to_path_buf();
        let file = crate::file::open_regular(&path)?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < HEADER_SIZE as u64 {
            // Too short to map usefully; decode what is there for the message.
            let bytes = crate::file::read_regular(&path)?;
            return Err(Header::decode(&path, &bytes).unwrap_err());
        }
        // SAFETY: shards are written once and renamed into place, never modified afterwards;
        // a file truncated or changed under us would be a misuse outside the format's contract.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let header = Header::decode(&path, &map)?;
        let count = header.count;
        let index_len = count
            .checked_mul(INDEX_ENTRY_SIZE as u64)
            .ok_or_else(|| Error::data(&path, 16, format!("impossible record count {count}")))?;
        let index_end = header.index_offset.checked_add(index_len);
        if header.index_offset < HEADER_SIZE as u64 || index_end.is_none_or(|e| e > len) {
            return Err(Error::data(
                &path,
                header.index_offset,
                format!("truncated: the index of {count} records should start here, but the file has {len} bytes"),
            ));
        }
        let index = &map[header.index_offset as usize..(header.index_offset + index_len) as usize];
        if crc32fast::hash(index) != header.index_crc {
            return Err(Error::data(
                &path,
                header.index_offset,
                "index checksum mismatch: the index is corrupted",
            ));
        }
        let meta_end = header.meta_offset.checked_add(header.meta_len);
        if meta_end.is_none_or(|e| e > len) {
            return Err(Error::data(
                &path,
                header.meta_offset,
                format!(
                    "truncated: {} bytes of metadata should start here, the file has {len} bytes",
                    header.meta_len
                ),
            ));
        }
        let meta =
            &map[header.meta_offset as usize..(header.meta_offset + header.meta_len) as usize];
        if crc32fast::hash(meta) != header.meta_crc {
            return Err(Error::data(
                &path,
                header.meta_offset,
                "metadata checksum mismatch: the metadata is corrupted",
            ));
        }
        let metadata = serde_json::from_slice(meta).map_err(|e| {
            Error::data(
                &path,
                header.meta_offset,
                format!("metadata is not JSON: {e}"),
            )
        })?;
        let record_len = header.spec.record_bytes() as u64;
        for (i, chunk) in index.chunks_exact(INDEX_ENTRY_SIZE).enumerate() {
            let e = IndexEntry::decode(chunk);
            if e.len as u64 != record_len
                || e.offset < HEADER_SIZE as u64
                || e.offset
                    .checked_add(record_len)
                    .is_none_or(|end| end > header.index_offset)
            {
                return Err(Error::data(
                    &path,
                    header.index_offset + (i * INDEX_ENTRY_SIZE) as u64,
                    format!(
                        "index entry of record {i} points at {} bytes at offset {}, outside the records or of the wrong size ({record_len} expected)",
                        e.len, e.offset
                    ),
                ));
            }
        }
        let verified = (0..(count as usize).div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(Shard {
            path,
            map,
            header,
            metadata,
            verified,
        })
    }

    /// The file the shard was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// What every record looks like.
    pub fn spec(&self) -> &RecordSpec {
        &self.header.spec
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    /// Whether the shard has no records.
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// The metadata object written with the shard.
    pub fn metadata(&self) -> &serde_json::Value {
        &self.metadata
    }

    fn entry(&self, i: usize) -> IndexEntry {
        let o = self.header.index_offset as usize + i * INDEX_ENTRY_SIZE;
        IndexEntry::decode(&self.map[o..o + INDEX_ENTRY_SIZE])
    }

    /// Record `i`, after checking its checksum.
    pub fn record(&self, i: usize) -> Result<Record<'_>> {
        if i >= self.len() {
            return Err(Error::invalid(format!(
                "{}: record {i} requested, the shard has {}",
                self.path.display(),
                self.len()
            )));
        }
        let e = self.entry(i);
        let bytes = &self.map[e.offset as usize..e.offset as usize + e.len as usize];
        let (word, bit) = (&self.verified[i / 64], 1u64 << (i % 64));
        if word.load(Ordering::Relaxed) & bit == 0 {
            if crc32fast::hash(bytes) != e.crc {
                return Err(Error::data(
                    &self.path,
                    e.offset,
                    format!("record {i} checksum mismatch: the record is corrupted"),
                ));
            }
            word.fetch_or(bit, Ordering::Relaxed);
        }
        Ok(if self.header.spec.has_label {
            Record {
                label: Some(i32::from_le_bytes(bytes[..4].try_into().unwrap())),
                values: &bytes[4..],
            }
        } else {
            Record {
                label: None,
                values: bytes,
            }
        })
    }

    /// Decodes record values into `f32`s as `value · scale + shift`.
    pub fn decode_values(&self, values: &[u8], out: &mut [f32], scale: f32, shift: f32) {
        decode_f32(self.header.spec.dtype, values, out, scale, shift)
    }
}

/// Decodes little-endian values of `dtype` into `f32`s as `value · scale + shift`.
pub fn decode_f32(dtype: DType, values: &[u8], out: &mut [f32], scale: f32, shift: f32) {
    match dtype {
        DType::U8 => {
            for (o, &v) in out.iter_mut().zip(values) {
                *o = v as f32 * scale + shift;
            }
        }
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(values.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().unwrap()) * scale + shift;
            }
        }
        DType::I32 => {
            for (o, c) in out.iter_mut().zip(values.chunks_exact(4)) {
                *o = i32::from_le_bytes(c.try_into().unwrap()) as f32 * scale + shift;
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(values.chunks_exact(2)) {
                *o = half::f16::from_le_bytes(c.try_into().unwrap()).to_f32() * scale + shift;
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(values.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32() * scale + shift;
            }
        }
    }
}
