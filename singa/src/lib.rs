//! # singa
//!
//! The runtime of singa and its `singa` command: job files ([`config`]), nets built from them
//! as DAGs of layers ([`net`]), the TrainOneBatch algorithms ([`algorithm`]), the training loop
//! with its metrics and checkpoints ([`trainer`], [`checkpoint`], [`workspace`]), and the
//! loading and checking of plugin libraries ([`plugins`]).
//!
//! A separate crate from the layers and devices because it is the one part that knows them
//! all: it picks the device a job asks for, looks layer types up in a [`registry`], and
//! orchestrates training. Embedding singa in a program means depending on this crate:
//!
//! ```no_run
//! use singa::config::JobConfig;
//! use singa::registry::Registry;
//! use singa::trainer::{Silent, TrainOptions, Trainer};
//! let job = JobConfig::from_file("examples/mnist-mlp/job.toml")?;
//! let mut trainer = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default())?;
//! let summary = trainer.run(&mut Silent)?;
//! println!("test accuracy {:?}", summary.test);
//! # Ok::<(), singa_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod algorithm;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod device;
pub mod engine;
mod finite;
pub mod loss_scale;
pub mod net;
pub mod params;
pub mod partition;
pub mod plugins;
pub mod predict;
pub mod progress;
pub mod registry;
pub mod sample;
pub mod summary;
pub mod trainer;
pub mod workspace;

pub use config::JobConfig;
pub use registry::Registry;
pub use trainer::{TrainOptions, Trainer};
