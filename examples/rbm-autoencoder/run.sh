#!/usr/bin/env bash
# Pretrains the four RBMs with CD-1, then fine-tunes the autoencoder they initialise. Each job
# keeps its workspace in runs/ beside this script, where the next job's checkpoint_path looks.
# Usage: examples/rbm-autoencoder/run.sh [path to the singa binary]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
singa="${1:-$here/../../target/release/singa}"
for job in rbm1 rbm2 rbm3 rbm4 autoencoder; do
    "$singa" train "$here/$job.toml" --workspace "$here/runs/$job" --overwrite
done
