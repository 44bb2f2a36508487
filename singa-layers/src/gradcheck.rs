//! Checking a layer's backward pass against finite differences.
//!
//! The objective is `J = Σ wₖ·yₖ` over the layer's outputs for fixed random weights `w` (for a
//! loss layer, its reported loss). The analytic gradients come from one `backward` with `w` as
//! the output gradient; the numerical ones from central differences `(J(x+ε) − J(x−ε)) / 2ε`
//! on every input and parameter coordinate (or a random sample of them). Layer state (a dropout
//! mask's stream position) is restored before every forward, so each evaluation sees the same
//! randomness. Used by the test suite for every built-in layer and by `singa plugin check`.

use singa_core::abi::{ROption, RResult};
use singa_core::rng::{derive_seed, SplitMix64};
use singa_core::{
    DType, DeviceRef, Error, Fields, LayerBox, LayerType, Param, ParamFactory, ParamSpec, Phase,
    Result, SetupContext, Tensor, TensorSpec,
};

/// A [`ParamFactory`] that allocates every parameter and applies the layer's default init.
pub struct SimpleParams {
    dev: DeviceRef,
    prefix: String,
    seed: u64,
    /// The parameters created so far.
    pub params: Vec<Param>,
    /// Whether each of them is trained (running statistics are not: no gradient).
    pub trainable: Vec<bool>,
}

impl SimpleParams {
    /// A factory on `dev` naming parameters `<prefix>/<name>`.
    pub fn new(dev: &DeviceRef, prefix: &str, seed: u64) -> SimpleParams {
        SimpleParams {
            dev: dev.clone(),
            prefix: prefix.to_string(),
            seed,
            params: Vec::new(),
            trainable: Vec::new(),
        }
    }

    fn create(&mut self, spec: ParamSpec) -> Result<Param> {
        let name = format!("{}/{}", self.prefix, spec.name);
        let mut value = Tensor::zeros(&self.dev, spec.shape, DType::F32)?;
        spec.init.apply(
            &self.dev,
            &mut value,
            spec.fan_in,
            spec.fan_out,
            derive_seed(self.seed, &name),
        )?;
        let grad = Tensor::zeros(&self.dev, spec.shape, DType::F32)?;
        let p = Param {
            name: name.into(),
            value,
            grad,
        };
        self.params.push(p.clone());
        self.trainable.push(spec.trainable);
        Ok(p)
    }
}

impl ParamFactory for SimpleParams {
    fn param(&mut self, spec: ParamSpec) -> RResult<Param, Error> {
        // Called from layers, which may live in a plugin: a panic must not unwind into them.
        singa_core::catch_panic("the parameter factory", || self.create(spec)).into()
    }
}

/// A layer built and set up for checking.
pub struct Built {
    /// The layer.
    pub layer: LayerBox,
    /// Its output specs.
    pub outputs: Vec<TensorSpec>,
    /// Its parameters.
    pub params: Vec<Param>,
    /// Whether each parameter is trained.
    pub trainable: Vec<bool>,
}

/// Builds a layer of type `ty` from `fields` (validated against its schema) and sets it up on
/// `dev` for inputs `inputs`.
pub fn build(
    ty: &LayerType,
    fields: &Fields,
    dev: &DeviceRef,
    inputs: &[TensorSpec],
    seed: u64,
) -> Result<Built> {
    let fields = singa_core::validate_fields(&ty.fields, fields)
        .map_err(|e| Error::invalid(format!("field {}: {}", e.field, e.message)))?;
    let mut layer = (ty.create)(&fields).into_result()?;
    let mut factory = SimpleParams::new(dev, "layer", seed);
    let ctx = SetupContext {
        layer: "layer".into(),
        device: dev,
        inputs: inputs.into(),
        phase: Phase::TRAIN,
        base_dir: "".into(),
        seed,
        partition_id: 0,
        num_partitions: 1,
    };
    let outputs = layer
        .setup(&ctx, singa_core::param_factory(&mut factory))
        .into_result()?;
    Ok(Built {
        layer,
        outputs: outputs.into_vec(),
        params: factory.params,
        trainable: factory.trainable,
    })
}

/// Tolerances and sampling of a gradient check.
#[derive(Clone, Debug)]
pub struct GradCheckOptions {
    /// The finite-difference step.
    pub eps: f32,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// At most this many coordinates per tensor (a random sample beyond).
    pub max_coords: usize,
    /// Seed of the objective's weights and the sampling.
    pub seed: u64,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        GradCheckOptions {
            eps: 5e-3,
            atol: 1e-3,
            rtol: 2e-2,
            max_coords: 48,
            seed: 1,
        }
    }
}

/// The outcome of a gradient check.
#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// Coordinates compared.
    pub checked: usize,
    /// The largest error, in units of the tolerance (≤ 1 passes).
    pub worst_ratio: f64,
    /// Where the largest error was, with both values.
    pub worst: String,
}

impl GradCheckReport {
    /// Whether every coordinate was within tolerance.
    pub fn passed(&self) -> bool {
        self.worst_ratio <= 1.0
    }
}

/// Compares `built`'s analytic gradients with central differences, for the given input values
/// (`f32` inputs get gradients; others, like labels, are held fixed).
pub fn check_gradients(
    dev: &DeviceRef,
    built: &mut Built,
    inputs: &[Tensor],
    opts: &GradCheckOptions,
) -> Result<GradCheckReport> {
    let mut rng = SplitMix64::new(opts.seed);
    let mut outputs: Vec<Tensor> = built
        .outputs
        .iter()
        .map(|s| Tensor::zeros(dev, s.shape, s.dtype))
        .collect::<Result<_>>()?;
    let weights: Vec<Vec<f32>> = built
        .outputs
        .iter()
        .map(|s| {
            (0..s.shape.numel())
                .map(|_| (rng.next_u64() >> 40) as f32 / (1 << 24) as f32 * 2.0 - 1.0)
                .collect()
        })
        .collect();
    let metric_count = built.layer.metric_names().into_result()?.len();
    let state0 = built.layer.state().into_result()?;

    let objective = |layer: &mut LayerBox, outputs: &mut Vec<Tensor>| -> Result<f64> {
        layer.restore_state(state0.as_rslice()).into_result()?;
        layer
            .forward(Phase::TRAIN, inputs.into(), outputs.as_mut_slice().into())
            .into_result()?;
        if outputs.is_empty() {
            if metric_count == 0 {
                return Err(Error::invalid(
                    "the layer has neither outputs nor metrics to differentiate",
                ));
            }
            let mut m = vec![0.0; metric_count];
            layer.read_metrics(m.as_mut_slice().into()).into_result()?;
            return Ok(m[0]);
        }
        let mut j = 0.0;
        for (o, w) in outputs.iter().zip(&weights) {
            let y = o.to_vec::<f32>()?;
            j += y
                .iter()
                .zip(w)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>();
        }
        Ok(j)
    };

    // Analytic gradients.
    objective(&mut built.layer, &mut outputs)?;
    let grad_outputs: Vec<Tensor> = built
        .outputs
        .iter()
        .zip(&weights)
        .map(|(s, w)| Tensor::from_slice(dev, w, s.shape))
        .collect::<Result<_>>()?;
    let grad_inputs = backward_once(built, dev, inputs, &outputs, &grad_outputs)?;

    // (what, value tensor, analytic gradient) for every differentiable tensor.
    let mut targets: Vec<(String, Tensor, Vec<f32>)> = Vec::new();
    for (i, (x, g)) in inputs.iter().zip(&grad_inputs).enumerate() {
        if let ROption::RSome(g) = g {
            targets.push((format!("input {i}"), x.clone(), g.to_vec::<f32>()?));
        }
    }
    for p in &built.params {
        targets.push((
            format!("param {}", p.name),
            p.value.clone(),
            p.grad.to_vec::<f32>()?,
        ));
    }

    let mut report = GradCheckReport {
        checked: 0,
        worst_ratio: 0.0,
        worst: String::from("nothing checked"),
    };
    for (what, mut t, analytic) in targets {
        let mut vals = t.to_vec::<f32>()?;
        let n = vals.len();
        let coords: Vec<usize> = if n <= opts.max_coords {
            (0..n).collect()
        } else {
            (0..opts.max_coords)
                .map(|_| rng.below(n as u64) as usize)
                .collect()
        };
        for i in coords {
            let orig = vals[i];
            vals[i] = orig + opts.eps;
            t.write_from(&vals)?;
            let plus = objective(&mut built.layer, &mut outputs)?;
            vals[i] = orig - opts.eps;
            t.write_from(&vals)?;
            let minus = objective(&mut built.layer, &mut outputs)?;
            vals[i] = orig;
            t.write_from(&vals)?;
            // The perturbation actually applied, after rounding to f32.
            let step = ((orig + opts.eps) as f64) - ((orig - opts.eps) as f64);
            let numeric = (plus - minus) / step;
            let a = analytic[i] as f64;
            let ratio = (numeric - a).abs() / (opts.atol + opts.rtol * numeric.abs().max(a.abs()));
            report.checked += 1;
            if ratio > report.worst_ratio || report.checked == 1 {
                report.worst_ratio = ratio;
                report.worst = format!("{what}[{i}]: analytic {a:.6}, numeric {numeric:.6}");
            }
        }
    }
    Ok(report)
}

/// Runs `built` backward once (after a forward that produced `outputs`) and returns the
/// gradients of its `f32` inputs (`RNone` for the others, like labels).
fn backward_once(
    built: &mut Built,
    dev: &DeviceRef,
    inputs: &[Tensor],
    outputs: &[Tensor],
    grad_outputs: &[Tensor],
) -> Result<Vec<ROption<Tensor>>> {
    backward_over(built, dev, inputs, outputs, grad_outputs, 0.0)
}

/// [`backward_once`] with the input-gradient buffers holding `stale` before the pass.
fn backward_over(
    built: &mut Built,
    dev: &DeviceRef,
    inputs: &[Tensor],
    outputs: &[Tensor],
    grad_outputs: &[Tensor],
    stale: f64,
) -> Result<Vec<ROption<Tensor>>> {
    let mut grad_inputs: Vec<ROption<Tensor>> = inputs
        .iter()
        .map(|x| {
            if x.dtype() == DType::F32 {
                let mut g = Tensor::zeros(dev, x.shape(), DType::F32)?;
                dev.fill(&mut g, stale)?;
                Ok(ROption::RSome(g))
            } else {
                Ok(ROption::RNone)
            }
        })
        .collect::<Result<_>>()?;
    built
        .layer
        .backward(
            Phase::TRAIN,
            inputs.into(),
            outputs.into(),
            grad_outputs.into(),
            grad_inputs.as_mut_slice().into(),
        )
        .into_result()?;
    Ok(grad_inputs)
}

/// One training forward and backward pass of `built` on `inputs`, with random output
/// gradients drawn from `seed`: its outputs, input gradients, parameter gradients and metrics,
/// in that order, as `f32` (to compare the same layer across devices).
pub fn forward_backward(
    built: &mut Built,
    dev: &DeviceRef,
    inputs: &[Tensor],
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    forward_backward_over(built, dev, inputs, seed, 0.0)
}

/// [`forward_backward`] with every gradient buffer (the parameters' and the inputs') holding
/// `stale` before the backward pass, as they hold the last step's gradients in training. A
/// layer overwrites them, as the runtime expects (it never zeroes them), and gives the same
/// result as from zeroed buffers; one that adds to them does not.
pub fn forward_backward_over(
    built: &mut Built,
    dev: &DeviceRef,
    inputs: &[Tensor],
    seed: u64,
    stale: f64,
) -> Result<Vec<Vec<f32>>> {
    for (p, _) in built
        .params
        .iter_mut()
        .zip(&built.trainable)
        .filter(|(_, t)| **t)
    {
        dev.fill(&mut p.grad, stale)?;
    }
    let mut outs: Vec<Tensor> = built
        .outputs
        .iter()
        .map(|s| Tensor::zeros(dev, s.shape, s.dtype))
        .collect::<Result<_>>()?;
    built
        .layer
        .forward(Phase::TRAIN, inputs.into(), outs.as_mut_slice().into())
        .into_result()?;
    let douts: Vec<Tensor> = built
        .outputs
        .iter()
        .map(|s| {
            let g = random_away_from_zero(seed, s.shape.numel(), 0.0);
            Tensor::from_slice(dev, &g, s.shape)
        })
        .collect::<Result<_>>()?;
    let dins = backward_over(built, dev, inputs, &outs, &douts, stale)?;
    let mut result = Vec::new();
    for o in outs.iter().filter(|o| o.dtype() == DType::F32) {
        result.push(o.to_vec::<f32>()?);
    }
    for o in outs.iter().filter(|o| o.dtype() == DType::I32) {
        result.push(o.to_vec::<i32>()?.into_iter().map(|v| v as f32).collect());
    }
    for d in dins.iter().filter_map(|d| d.as_ref().into_option()) {
        result.push(d.to_vec::<f32>()?);
    }
    for p in &built.params {
        result.push(p.grad.to_vec::<f32>()?);
    }
    let n = built.layer.metric_names().into_result()?.len();
    let mut m = vec![0.0f64; n];
    built
        .layer
        .read_metrics(m.as_mut_slice().into())
        .into_result()?;
    result.push(m.iter().map(|v| *v as f32).collect());
    Ok(result)
}

/// Inputs for `specs`: `f32` values from [`random_away_from_zero`], integer ones (labels)
/// spread over `0..classes`.
pub fn example_inputs(
    dev: &DeviceRef,
    specs: &[TensorSpec],
    classes: usize,
    seed: u64,
) -> Result<Vec<Tensor>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| match s.dtype {
            DType::F32 => {
                let v = random_away_from_zero(seed + i as u64, s.shape.numel(), 0.05);
                Tensor::from_slice(dev, &v, s.shape)
            }
            DType::I32 => {
                let labels: Vec<i32> = (0..s.shape.numel())
                    .map(|j| ((seed as usize + j * 7) % classes.max(1)) as i32)
                    .collect();
                Tensor::from_slice(dev, &labels, s.shape)
            }
            other => Err(Error::invalid(format!(
                "no example values for {other} inputs"
            ))),
        })
        .collect()
}

/// The largest difference between `got` and `want`, relative to the largest magnitude of
/// each tensor (at least 1), with where it was: `(difference, tensor, index)`.
pub fn largest_difference(got: &[Vec<f32>], want: &[Vec<f32>]) -> Result<(f32, usize, usize)> {
    if got.len() != want.len() || got.iter().zip(want).any(|(a, b)| a.len() != b.len()) {
        return Err(Error::invalid(
            "the two runs produced tensors of different counts or sizes",
        ));
    }
    let mut worst = (0.0f32, 0, 0);
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = w.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let d = (a - b).abs() / scale;
            // A NaN on either side is the worst difference there is.
            let d = if d.is_nan() { f32::INFINITY } else { d };
            if d > worst.0 {
                worst = (d, k, i);
            }
        }
    }
    Ok(worst)
}

/// Random `f32` values in `[-1, 1]` kept at least `gap` away from 0 (away from the kinks of
/// ReLU-like functions, where finite differences are meaningless).
pub fn random_away_from_zero(seed: u64, n: usize, gap: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let u = (r.next_u64() >> 40) as f32 / (1 << 24) as f32 * 2.0 - 1.0;
            u.signum() * (gap + u.abs() * (1.0 - gap))
        })
        .collect()
}
