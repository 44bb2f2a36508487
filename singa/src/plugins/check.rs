//! `singa plugin check`: the checks every built-in layer gets in the test suite, run on a
//! plugin's types — shape inference, backward against finite differences, and the CPU device
//! against the plain reference device — with one verdict per type.

use super::Plugin;
use singa_core::{
    DType, DeviceRef, Fields, LayerExample, LayerRole, LayerType, Result, Shape, Tensor,
    TensorSpec, UpdateArgs, UpdaterType,
};
use singa_cpu::{CpuDevice, ReferenceDevice};
use singa_layers::gradcheck::{
    build, check_gradients, example_inputs, forward_backward, forward_backward_over,
    largest_difference, random_away_from_zero, GradCheckOptions,
};
use std::fmt;

/// How far the CPU device may stray from the reference device, relative to each tensor's
/// largest magnitude (the reference computes in `f64`; the CPU device sums in other orders).
const DEVICE_TOLERANCE: f32 = 1e-4;

/// The verdict on one type of a plugin.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// `layer` or `updater`.
    pub kind: &'static str,
    /// The type's name.
    pub name: String,
    /// What was checked and how it went, one item per check.
    pub findings: Vec<String>,
    /// The first failure, if any.
    pub failure: Option<String>,
}

impl Verdict {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            None => write!(f, "ok      {} {}", self.kind, self.name)?,
            Some(why) => write!(f, "FAILED  {} {}: {why}", self.kind, self.name)?,
        }
        for finding in &self.findings {
            write!(f, "\n        {finding}")?;
        }
        Ok(())
    }
}

/// Checks every type `plugin` provides.
pub fn check_plugin(plugin: &Plugin) -> Vec<Verdict> {
    let mut verdicts: Vec<Verdict> = plugin.layers.iter().map(check_layer).collect();
    verdicts.extend(plugin.updaters.iter().map(check_updater));
    verdicts
}

/// The layer's own examples, or a 2-d `f32` input with the default fields.
fn examples_of(ty: &LayerType) -> (Vec<LayerExample>, bool) {
    if ty.examples.is_empty() {
        let input = TensorSpec::new("x", [4, 8], DType::F32);
        (vec![LayerExample::new(Fields::new(), vec![input])], true)
    } else {
        (ty.examples.to_vec(), false)
    }
}

fn describe_inputs(inputs: &[TensorSpec]) -> String {
    let shapes: Vec<String> = inputs
        .iter()
        .map(|s| format!("{}{:?}", s.dtype, s.shape.dims()))
        .collect();
    shapes.join(", ")
}

/// Labels go up to the last dimension of the first `f32` input (the class scores of a loss).
fn classes_for(inputs: &[TensorSpec]) -> usize {
    inputs
        .iter()
        .find(|s| s.dtype == DType::F32)
        .and_then(|s| s.shape.dims().last().copied())
        .unwrap_or(2)
}

/// Shape inference, gradients and devices for one layer type.
pub fn check_layer(ty: &LayerType) -> Verdict {
    let mut v = Verdict {
        kind: "layer",
        name: ty.name.to_string(),
        findings: Vec::new(),
        failure: None,
    };
    if ty.role != LayerRole::Plain {
        v.findings.push(format!(
            "is an RBM's {} layer ({:?}): its backward is contrastive divergence's estimate, not \
             the gradient of its forward, so the gradient and device checks do not apply; a job \
             with algorithm = \"cd\" trains it",
            if ty.role == LayerRole::RbmVisible {
                "visible"
            } else {
                "hidden"
            },
            ty.role
        ));
        return v;
    }
    let (examples, fallback) = examples_of(ty);
    if fallback {
        v.findings.push(
            "declares no examples (LayerDef::examples); tried a [4, 8] f32 input with default fields"
                .into(),
        );
    }
    for (i, ex) in examples.iter().enumerate() {
        let label = format!(
            "example {} ({}{})",
            i + 1,
            describe_inputs(&ex.inputs),
            if ex.fields.is_empty() {
                String::new()
            } else {
                format!("; {}", ex.fields)
            }
        );
        match check_example(ty, ex) {
            Ok(findings) => v.findings.push(format!("{label}: {findings}")),
            Err(e) => {
                v.failure = Some(format!("{label}: {e}"));
                break;
            }
        }
    }
    v
}

fn check_example(ty: &LayerType, ex: &LayerExample) -> Result<String> {
    let seed = 7;
    let reference = DeviceRef::new(ReferenceDevice::new());
    let cpu = DeviceRef::new(CpuDevice::new(2)?);
    let classes = classes_for(&ex.inputs);

    // Shape inference: setup declares outputs; a forward fills tensors of exactly those shapes
    // with finite values.
    let mut built =
        build(ty, &ex.fields, &reference, &ex.inputs, seed).map_err(|e| e.context("setup"))?;
    let outputs: Vec<String> = built
        .outputs
        .iter()
        .map(|s| format!("{}{:?}", s.dtype, s.shape.dims()))
        .collect();
    let xs = example_inputs(&reference, &ex.inputs, classes, seed)?;
    let reference_run = forward_backward(&mut built, &reference, &xs, seed ^ 5)
        .map_err(|e| e.context("forward/backward"))?;
    if let Some((k, _)) = reference_run
        .iter()
        .enumerate()
        .find(|(_, t)| t.iter().any(|x| !x.is_finite()))
    {
        return Err(singa_core::Error::invalid(format!(
            "tensor {k} of its outputs/gradients is not finite on random inputs"
        )));
    }

    // Gradients are overwritten, never added to: in training the buffers hold the last
    // step's gradients.
    let mut stale =
        build(ty, &ex.fields, &reference, &ex.inputs, seed).map_err(|e| e.context("setup"))?;
    let stale_run = forward_backward_over(&mut stale, &reference, &xs, seed ^ 5, 7.0)
        .map_err(|e| e.context("forward/backward"))?;
    let (diff, tensor, index) = largest_difference(&stale_run, &reference_run)?;
    if diff > DEVICE_TOLERANCE {
        return Err(singa_core::Error::invalid(format!(
            "backward adds to the gradient buffers it is given instead of overwriting them (tensor {tensor}[{index}] changes by {diff:.2e} when they hold old values): write param.grad and grad_inputs, as the runtime never zeroes them"
        )));
    }

    // Gradients against finite differences, on a freshly set up layer.
    let mut built = build(ty, &ex.fields, &reference, &ex.inputs, seed)?;
    let report = check_gradients(
        &reference,
        &mut built,
        &xs,
        &GradCheckOptions {
            seed,
            ..Default::default()
        },
    )
    .map_err(|e| e.context("gradient check"))?;
    if !report.passed() {
        return Err(singa_core::Error::invalid(format!(
            "backward disagrees with finite differences: {} ({:.1}x the tolerance)",
            report.worst, report.worst_ratio
        )));
    }

    // The CPU device against the reference device.
    let mut on_cpu = build(ty, &ex.fields, &cpu, &ex.inputs, seed)?;
    let xs_cpu = example_inputs(&cpu, &ex.inputs, classes, seed)?;
    let cpu_run = forward_backward(&mut on_cpu, &cpu, &xs_cpu, seed ^ 5)
        .map_err(|e| e.context("on the CPU device"))?;
    let (diff, tensor, index) = largest_difference(&cpu_run, &reference_run)?;
    if diff > DEVICE_TOLERANCE {
        return Err(singa_core::Error::invalid(format!(
            "the CPU device and the reference device differ by {diff:.2e} (relative) at tensor {tensor}[{index}]"
        )));
    }
    Ok(format!(
        "outputs {}; gradients: {} coordinates, worst error {:.2}x the tolerance; cpu = reference within {diff:.1e}",
        outputs.join(", "),
        report.checked,
        report.worst_ratio
    ))
}

/// An updater: its state, and a few steps on the CPU device against the reference device.
pub fn check_updater(ty: &UpdaterType) -> Verdict {
    let mut v = Verdict {
        kind: "updater",
        name: ty.name.to_string(),
        findings: Vec::new(),
        failure: None,
    };
    match updater_steps(ty) {
        Ok(finding) => v.findings.push(finding),
        Err(e) => v.failure = Some(e.to_string()),
    }
    v
}

fn updater_steps(ty: &UpdaterType) -> Result<String> {
    const STEPS: u64 = 5;
    let shape = Shape::from([37]);
    let args = UpdateArgs {
        lr: 0.01,
        weight_decay: 1e-3,
        grad_scale: 0.5,
    };
    let run = |dev: &DeviceRef| -> Result<(Vec<Vec<f32>>, Vec<String>)> {
        let fields = singa_core::validate_fields(&ty.fields, &Fields::new())
            .map_err(|e| singa_core::Error::invalid(format!("field {}: {}", e.field, e.message)))?;
        let mut updater = (ty.create)(&fields).into_result()?;
        let names: Vec<String> = updater
            .state_names()
            .into_result()?
            .iter()
            .map(|n| n.to_string())
            .collect();
        let mut value = Tensor::from_slice(dev, &random_away_from_zero(1, 37, 0.0), shape)?;
        let mut state: Vec<Tensor> = names
            .iter()
            .map(|_| Tensor::zeros(dev, shape, DType::F32))
            .collect::<Result<_>>()?;
        for step in 0..STEPS {
            let g = random_away_from_zero(100 + step, 37, 0.0);
            let grad = Tensor::from_slice(dev, &g, shape)?;
            updater
                .update(step, &args, &mut value, &grad, state.as_mut_slice().into())
                .into_result()
                .map_err(|e| e.context(format!("step {step}")))?;
        }
        let mut out = vec![value.to_vec::<f32>()?];
        for s in &state {
            out.push(s.to_vec::<f32>()?);
        }
        Ok((out, names))
    };
    let (want, names) = run(&DeviceRef::new(ReferenceDevice::new()))?;
    let (got, _) = run(&DeviceRef::new(CpuDevice::new(2)?))?;
    if want.iter().flatten().any(|x| !x.is_finite()) {
        return Err(singa_core::Error::invalid(
            "parameter or state is not finite after a few steps",
        ));
    }
    if want[0] == random_away_from_zero(1, 37, 0.0) {
        return Err(singa_core::Error::invalid(
            "the parameter did not change in 5 steps with non-zero gradients",
        ));
    }
    let (diff, tensor, index) = largest_difference(&got, &want)?;
    if diff > DEVICE_TOLERANCE {
        return Err(singa_core::Error::invalid(format!(
            "the CPU device and the reference device differ by {diff:.2e} (relative) at tensor {tensor}[{index}]"
        )));
    }
    Ok(format!(
        "state [{}]; {STEPS} steps on a [37] parameter: cpu = reference within {diff:.1e}",
        names.join(", ")
    ))
}
