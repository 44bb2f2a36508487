//! The IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).

use flate2::read::GzDecoder;
use singa_core::{Error, Result};
use std::io::Read;
use std::path::Path;

/// An IDX file's dimensions and `u8` data.
#[derive(Debug)]
pub struct Idx {
    /// The dimensions, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file of `u8` values with `rank` dimensions; `.gz` files (or any file starting
/// with the gzip magic) are decompressed first. Offsets in errors refer to the decompressed bytes.
pub fn read_idx(path: &Path, rank: usize) -> Result<Idx> {
    let raw = crate::file::read_regular(path)?;
    let (bytes, note) = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, 0, format!("gzip data is corrupted: {e}")))?;
        (out, " (offsets are in the decompressed data)")
    } else {
        (raw, "")
    };
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(Error::data(
            path,
            bytes.len() as u64,
            format!("truncated: an IDX header of rank {rank} has {header} bytes{note}"),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::data(
            path,
            0,
            "not an IDX file (the magic number must start with two zero bytes)",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(Error::data(
            path,
            2,
            format!(
                "IDX element type 0x{:02x}; only unsigned bytes (0x08) are supported",
                bytes[2]
            ),
        ));
    }
    if bytes[3] as usize != rank {
        return Err(Error::data(
            path,
            3,
            format!("IDX file of rank {}, expected rank {rank}", bytes[3]),
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let Some(want) = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) else {
        return Err(Error::data(
            path,
            4,
            format!("IDX dimensions {dims:?} describe more data than can exist"),
        ));
    };
    let have = bytes.len() - header;
    if have != want {
        return Err(Error::data(
            path,
            bytes.len() as u64,
            format!(
                "{}: dimensions {dims:?} need {want} bytes of data after the header, the file has {have}{note}",
                if have < want { "truncated" } else { "trailing bytes" }
            ),
        ));
    }
    let mut data = bytes;
    data.drain(..header);
    Ok(Idx { dims, data })
}
