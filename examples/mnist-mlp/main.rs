//! The MNIST MLP of `job.toml`, built in Rust instead of TOML: the same layers, updater and
//! schedule through the builder API (see `net.rs`), trained by the same runtime.
//!
//! ```sh
//! cargo run --release -p singa --example mnist-mlp
//! ```

mod net;

use singa::progress::Lines;
use singa::workspace::Existing;
use singa::{Registry, TrainOptions, Trainer};
use std::path::Path;

fn main() -> singa_core::Result<()> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let options = TrainOptions {
        threads: None,
        workspace: Some("runs/mnist-mlp-code".into()),
        existing: Existing::Overwrite,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&net::job(&data), &Registry::builtin(), &options)?;
    let summary = trainer.run(&mut Lines)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&summary.to_json()).unwrap_or_default()
    );
    Ok(())
}
