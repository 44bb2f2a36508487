//! Convolution, pooling, LRN and batch norm: backward against finite differences on random
//! shapes (odd sizes, padding, strides, groups, non-square windows), and the CPU device against
//! the reference device.

mod common;

use common::*;
use proptest::prelude::*;
use singa_core::{DType, Fields, Phase, Tensor};
use singa_layers::gradcheck::{build, GradCheckOptions};

/// Convolution fields and an input shape that fits them.
fn conv_case() -> impl Strategy<Value = (Fields, Vec<usize>)> {
    (
        1usize..3,
        1usize..3,
        1usize..4,
        1usize..4,
        1usize..4,
        1usize..3,
        0usize..2,
        1usize..3,
        any::<bool>(),
    )
        .prop_flat_map(|(b, groups, cg, fg, kh, kw, pad, stride, bias)| {
            let min_h = kh.saturating_sub(2 * pad).max(1);
            let min_w = kw.saturating_sub(2 * pad).max(1);
            (min_h..min_h + 5, min_w..min_w + 5).prop_map(move |(h, w)| {
                let fields = Fields::new()
                    .with("num_filters", fg * groups)
                    .with("kernel_h", kh)
                    .with("kernel_w", kw)
                    .with("pad", pad)
                    .with("stride", stride)
                    .with("groups", groups)
                    .with("bias_term", bias);
                (fields, vec![b, cg * groups, h, w])
            })
        })
}

/// Pooling fields and an input shape that fits them.
fn pool_case() -> impl Strategy<Value = (Fields, Vec<usize>)> {
    (
        1usize..3,
        1usize..4,
        1usize..4,
        1usize..4,
        1usize..3,
        0usize..2,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(b, c, kh, kw, stride, pad, max, ceil)| {
            // Padding must stay below the window (Caffe's rule), so only windows of 2+ get it.
            let pad = if kh > pad && kw > pad { pad } else { 0 };
            (kh.max(1)..kh + 5, kw.max(1)..kw + 5).prop_map(move |(h, w)| {
                let fields = Fields::new()
                    .with("pool", if max { "max" } else { "avg" })
                    .with("kernel_h", kh)
                    .with("kernel_w", kw)
                    .with("stride", stride)
                    .with("pad", pad)
                    .with("ceil", ceil);
                (fields, vec![b, c, h, w])
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn convolution_gradients((fields, shape) in conv_case(), seed in 0u64..1000) {
        Case::new("convolution", fields, vec![f32_spec(&shape)], seed).gradcheck();
    }

    #[test]
    fn pooling_gradients((fields, shape) in pool_case(), seed in 0u64..1000) {
        Case::new("pooling", fields, vec![f32_spec(&shape)], seed).values(Values::Distinct).gradcheck();
    }

    #[test]
    fn lrn_gradients(b in 1usize..3, c in 1usize..8, hw in 1usize..10, size in 0usize..3, alpha in 0.01f64..1.0, beta in 0.5f64..1.0, k in 1.0f64..2.0, seed in 0u64..1000) {
        let fields = Fields::new().with("local_size", 2 * size + 1).with("alpha", alpha).with("beta", beta).with("k", k);
        Case::new("lrn", fields, vec![f32_spec(&[b, c, hw, 1])], seed).gradcheck();
    }

    #[test]
    fn batch_norm_gradients(b in 2usize..5, c in 1usize..5, hw in 3usize..7, seed in 0u64..1000) {
        // Normalising divides by the batch's standard deviation: values spread over [-1, 1]
        // (at least 6 per channel) keep it far from 0, so a finite-difference step stays in
        // the linear range. (A ladder of close values, 4 per channel, once gave a standard
        // deviation of 0.02 and a step of a tenth of it.)
        let opts = GradCheckOptions { seed, eps: 1e-3, ..Default::default() };
        Case::new("batch_norm", Fields::new(), vec![f32_spec(&[b, c, hw])], seed).values(Values::AwayFromZero).gradcheck_with(opts);
    }

    #[test]
    fn convolution_cpu_matches_reference((fields, shape) in conv_case(), threads in 1usize..4, seed in 0u64..1000) {
        Case::new("convolution", fields, vec![f32_spec(&shape)], seed).assert_devices_match_reference(threads, 1e-5);
    }

    #[test]
    fn pooling_cpu_matches_reference((fields, shape) in pool_case(), threads in 1usize..4, seed in 0u64..1000) {
        Case::new("pooling", fields, vec![f32_spec(&shape)], seed).values(Values::Distinct).assert_devices_match_reference(threads, 1e-6);
    }

    #[test]
    fn normalisation_cpu_matches_reference(bn: bool, b in 1usize..5, c in 1usize..9, hw in 1usize..20, threads in 1usize..4, seed in 0u64..1000) {
        let (name, fields) = if bn { ("batch_norm", Fields::new()) } else { ("lrn", Fields::new().with("alpha", 0.5)) };
        Case::new(name, fields, vec![f32_spec(&[b, c, hw])], seed).assert_devices_match_reference(threads, 1e-5);
    }
}

#[test]
fn convolution_on_a_known_image() {
    // A 3×3 image, one 2×2 filter of ones, bias 0.5: every output is the sum of a 2×2 window.
    let dev = cpu(1);
    let spec = f32_spec(&[1, 1, 3, 3]);
    let fields = Fields::new().with("num_filters", 1).with("kernel", 2);
    let mut built = build(
        &ty("convolution"),
        &fields,
        &dev,
        std::slice::from_ref(&spec),
        0,
    )
    .unwrap();
    assert_eq!(built.outputs[0].shape.dims(), &[1, 1, 2, 2]);
    built.params[0].value.write_from(&[1.0f32; 4]).unwrap();
    built.params[1].value.write_from(&[0.5f32]).unwrap();
    let x = Tensor::from_slice(
        &dev,
        &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        spec.shape,
    )
    .unwrap();
    let mut y = vec![Tensor::zeros(&dev, built.outputs[0].shape, DType::F32).unwrap()];
    built
        .layer
        .forward(Phase::TRAIN, [x].as_slice().into(), y.as_mut_slice().into())
        .into_result()
        .unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![12.5, 16.5, 24.5, 28.5]);
}

#[test]
fn pooling_rounds_the_output_up_like_caffe_unless_told_otherwise() {
    let dev = reference();
    let spec = f32_spec(&[1, 1, 6, 6]);
    let shape = |ceil: bool| {
        let fields = Fields::new()
            .with("kernel", 3)
            .with("stride", 2)
            .with("ceil", ceil);
        build(
            &ty("pooling"),
            &fields,
            &dev,
            std::slice::from_ref(&spec),
            0,
        )
        .unwrap()
        .outputs[0]
            .shape
    };
    assert_eq!(shape(true).dims(), &[1, 1, 3, 3]);
    assert_eq!(shape(false).dims(), &[1, 1, 2, 2]);
}

#[test]
fn batch_norm_tracks_running_statistics_and_uses_them_in_test() {
    let dev = cpu(2);
    let spec = f32_spec(&[4, 2, 1]);
    let fields = Fields::new().with("momentum", 1.0);
    let mut built = build(
        &ty("batch_norm"),
        &fields,
        &dev,
        std::slice::from_ref(&spec),
        0,
    )
    .unwrap();
    // Channel 0 holds 1, 2, 3, 4; channel 1 holds 10 four times.
    let x = Tensor::from_slice(
        &dev,
        &[1.0f32, 10.0, 2.0, 10.0, 3.0, 10.0, 4.0, 10.0],
        spec.shape,
    )
    .unwrap();
    let mut y = vec![Tensor::zeros(&dev, spec.shape, DType::F32).unwrap()];
    built
        .layer
        .forward(
            Phase::TRAIN,
            [x.clone()].as_slice().into(),
            y.as_mut_slice().into(),
        )
        .into_result()
        .unwrap();
    let train = y[0].to_vec::<f32>().unwrap();
    let by_name = |n: &str| {
        built
            .params
            .iter()
            .find(|p| p.name.as_str().ends_with(&format!("/{n}")))
            .unwrap()
            .value
            .to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(by_name("mean"), vec![2.5, 10.0]);
    // The running variance is the unbiased one (PyTorch, Caffe): 5/3 for 1..4.
    let var = by_name("var");
    assert!(
        (var[0] - 5.0 / 3.0).abs() < 1e-5 && var[1].abs() < 1e-6,
        "{var:?}"
    );
    assert!((train[0] + 1.341_640_8).abs() < 1e-4, "{train:?}");
    assert_eq!(train[1], 0.0);
    // Testing normalises with the running statistics, so a batch of one gives the same values.
    built
        .layer
        .forward(Phase::TEST, [x].as_slice().into(), y.as_mut_slice().into())
        .into_result()
        .unwrap();
    let test = y[0].to_vec::<f32>().unwrap();
    assert!(
        (test[0] - (1.0 - 2.5) / (5.0f32 / 3.0 + 1e-5).sqrt()).abs() < 1e-4,
        "{test:?}"
    );
}

#[test]
fn vision_layers_refuse_inputs_that_are_not_images() {
    let dev = reference();
    let e = build(
        &ty("convolution"),
        &Fields::new().with("num_filters", 2).with("kernel", 3),
        &dev,
        &[f32_spec(&[4, 10])],
        0,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("[batch, channels, height, width]"),
        "{e}"
    );
    let e = build(
        &ty("convolution"),
        &Fields::new().with("num_filters", 2).with("kernel", 5),
        &dev,
        &[f32_spec(&[1, 1, 3, 3])],
        0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("layer"), "{e}");
    let e = build(
        &ty("convolution"),
        &Fields::new()
            .with("num_filters", 3)
            .with("kernel", 1)
            .with("groups", 2),
        &dev,
        &[f32_spec(&[1, 4, 3, 3])],
        0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("groups"), "{e}");
    let e = build(
        &ty("lrn"),
        &Fields::new().with("local_size", 4),
        &dev,
        &[f32_spec(&[1, 4, 3, 3])],
        0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("odd"), "{e}");
}
