//! # singa-data
//!
//! Where training data comes from: the shard format (a memory-mapped file of fixed-shape
//! records with an index and a checksum per record, see [`mod@format`]), a [`BatchLoader`] that
//! prepares batches in a seeded shuffled order on a background thread, and importers that turn
//! public data sets into shards ([`import`]).
//!
//! A separate crate because data handling needs no device and no layer: tools that only
//! prepare data depend on this alone.

#![warn(missing_docs)]

pub mod file;
pub mod format;
pub mod image;
pub mod import;
pub mod inspect;
pub mod loader;
pub mod shard;

pub use format::RecordSpec;
pub use image::{ImagePrep, ImageSpec, Mean};
pub use loader::{Batch, BatchLoader, LoaderConfig, Transform};
pub use shard::{Record, Shard, ShardWriter};
