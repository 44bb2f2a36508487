//! Generating text with a trained character model: `singa sample`.
//!
//! The job's test net is rebuilt for one stream and one character per step (`batch_size = 1`,
//! `unroll_len = 1`) and given a checkpoint's parameters. Each step writes the last character
//! into the text input's output, runs every other layer forward, and draws the next character
//! from the softmax of the scores the loss reads, divided by a temperature (below 1: more
//! likely characters, above: more varied); the cells' state carries from step to step as it
//! does between batches. A priming text is read first. The draws are seeded: the same seed,
//! checkpoint and options give the same text.

use crate::config::{Algorithm, JobConfig};
use crate::registry::Registry;
use crate::trainer::{TrainOptions, Trainer};
use singa_core::rng::SplitMix64;
use singa_core::{Error, Phase, Result};
use std::path::Path;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Characters to generate after the priming text.
    pub length: usize,
    /// Divides the scores before the softmax (> 0).
    pub temperature: f32,
    /// Text the model reads first (empty: a newline, or the first character of the vocabulary
    /// when it has no newline).
    pub prime: String,
    /// Seeds the draws.
    pub seed: u64,
}

/// The priming text followed by `options.length` characters drawn from the model of `job` with
/// the parameters of `checkpoint`.
pub fn sample(
    job: &JobConfig,
    registry: &Registry,
    checkpoint: &Path,
    options: &SampleOptions,
) -> Result<String> {
    let file = job.origin.file.clone();
    if job.algorithm != Algorithm::Bptt {
        return Err(Error::config(
            &file,
            "algorithm",
            "singa sample generates text with a recurrent model trained with algorithm = \"bptt\"",
        ));
    }
    if !(options.temperature > 0.0 && options.temperature.is_finite()) {
        return Err(Error::invalid(format!(
            "--temperature must be a positive number, got {}",
            options.temperature
        )));
    }
    let mut job = job.clone();
    job.cluster = Default::default();
    job.unroll_len = 1;
    job.test_steps = job.test_steps.max(1);
    let mut vocab_shard = None;
    for l in job.layers.iter_mut().filter(|l| l.type_name == "text_data") {
        l.fields.set("batch_size", 1i64);
        l.fields.set("unroll_len", 1i64);
        if l.in_phase(Phase::TEST) {
            if let Ok(p) = l.fields.str("path") {
                vocab_shard = Some(job.origin.base_dir.join(p));
            }
        }
    }
    let Some(vocab_shard) = vocab_shard else {
        return Err(Error::config(
            &file,
            "layer",
            "singa sample reads characters through the test net's text_data layer, and this job has none",
        ));
    };
    let vocabulary =
        singa_data::import::read_text(&singa_data::Shard::open(&vocab_shard)?)?.vocabulary;
    let mut trainer = Trainer::new(&job, registry, &TrainOptions::default())?;
    trainer.load_params(checkpoint)?;
    let net = trainer
        .test_net_mut()
        .ok_or_else(|| Error::config(&file, "layer", "the job has no test net"))?;
    let layers = net.layers();
    let data = layers
        .iter()
        .position(|l| l.type_name == "text_data")
        .expect("a text_data layer in the test net");
    let loss = layers
        .iter()
        .position(|l| l.type_name == "softmax_loss")
        .ok_or_else(|| {
            Error::config(
                &file,
                "layer",
                "the test net has no softmax_loss to read the scores of",
            )
        })?;
    let (scores_layer, scores_output) = net.sources(loss)[0];
    let ids: Vec<usize> = if options.prime.is_empty() {
        vec![vocabulary.iter().position(|c| c == "\n").unwrap_or(0)]
    } else {
        options
            .prime
            .chars()
            .map(|c| {
                vocabulary
                    .iter()
                    .position(|v| *v == c.to_string())
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "--prime: the character {c:?} is not in the model's vocabulary of {}",
                            vocabulary.len()
                        ))
                    })
            })
            .collect::<Result<_>>()?
    };
    let mut out = options.prime.clone();
    let mut rng = SplitMix64::new(options.seed);
    let step = |net: &mut crate::net::NeuralNet, id: usize| -> Result<Vec<f32>> {
        let (mut input, mut label) = (net.outputs(data)[0].clone(), net.outputs(data)[1].clone());
        input.write_from(&[id as i32])?;
        label.write_from(&[0i32])?;
        for i in (0..net.layers().len()).filter(|&i| i != data) {
            net.forward_layer(i, Phase::TEST)?;
        }
        net.carry_state()?;
        net.outputs(scores_layer)[scores_output].to_vec::<f32>()
    };
    let mut scores = Vec::new();
    for &id in &ids {
        scores = step(net, id)?;
    }
    if scores.len() != vocabulary.len() {
        return Err(Error::config(
            &file,
            "layer",
            format!(
                "the scores the loss reads have {} classes but the text has {} characters",
                scores.len(),
                vocabulary.len()
            ),
        ));
    }
    for _ in 0..options.length {
        let next = draw(&scores, options.temperature, &mut rng);
        out.push_str(&vocabulary[next]);
        scores = step(net, next)?;
    }
    Ok(out)
}

/// An index drawn from `softmax(scores / temperature)`.
fn draw(scores: &[f32], temperature: f32, rng: &mut SplitMix64) -> usize {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let weights: Vec<f64> = scores
        .iter()
        .map(|&s| (((s - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // 53 random bits as a uniform number in [0, total).
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Low temperatures pick the largest score; draws follow the softmax.
    #[test]
    fn draws_follow_the_tempered_softmax() {
        let mut rng = SplitMix64::new(1);
        let scores = [0.0, 1.0, 2.0];
        assert!((0..100).all(|_| draw(&scores, 0.01, &mut rng) == 2));
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[draw(&scores, 1.0, &mut rng)] += 1;
        }
        // softmax(0, 1, 2) = 0.090, 0.245, 0.665
        let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / 30_000.0).collect();
        for (f, want) in freq.iter().zip([0.090, 0.245, 0.665]) {
            assert!((f - want).abs() < 0.01, "{freq:?}");
        }
    }
}
