//! Connection layers (concat, slice, split, flatten, reshape) and output layers (softmax,
//! argsort, accuracy): gradients against finite differences, the CPU device against the
//! reference device, known values and refusals.

mod common;

use common::*;
use proptest::prelude::*;
use singa_core::{DType, FieldValue, Fields, Phase, Tensor, TensorSpec};
use singa_layers::gradcheck::build;

/// Shapes of rank 2 to 4 with small odd and even sizes.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, 2..5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn concat_gradients_and_cpu(base in shape(), extents in prop::collection::vec(1usize..4, 1..4), axis_pick in 0usize..4, seed in 0u64..1000) {
        let axis = axis_pick % base.len();
        let specs: Vec<TensorSpec> = extents.iter().map(|&e| { let mut d = base.clone(); d[axis] = e; f32_spec(&d) }).collect();
        let fields = Fields::new().with("axis", axis);
        Case::new("concat", fields.clone(), specs.clone(), seed).gradcheck();
        Case::new("concat", fields, specs, seed).assert_devices_match_reference(2, 0.0);
    }

    #[test]
    fn slice_gradients_and_cpu(base in shape(), parts in 1usize..4, axis_pick in 0usize..4, points: bool, seed in 0u64..1000) {
        let axis = axis_pick % base.len();
        let mut dims = base.clone();
        dims[axis] = base[axis] * parts;
        let fields = if points && dims[axis] > 1 {
            // Uneven parts: cut after the first element and in the middle.
            let mut p = vec![1];
            if dims[axis] / 2 > 1 { p.push(dims[axis] / 2); }
            Fields::new().with("axis", axis).with("slice_points", FieldValue::List(p.into_iter().map(|v| FieldValue::Int(v as i64)).collect::<Vec<_>>().into()))
        } else {
            Fields::new().with("axis", axis).with("num_slices", parts)
        };
        Case::new("slice", fields.clone(), vec![f32_spec(&dims)], seed).gradcheck();
        Case::new("slice", fields, vec![f32_spec(&dims)], seed).assert_devices_match_reference(2, 0.0);
    }

    #[test]
    fn split_flatten_reshape_gradients_and_cpu(dims in shape(), which in 0usize..4, n in 1usize..4, seed in 0u64..1000) {
        let fields = match which {
            0 => ("split", Fields::new().with("num_splits", n)),
            1 => ("flatten", Fields::new().with("axis", n % dims.len())),
            2 => ("reshape", Fields::new().with("shape", FieldValue::List(vec![FieldValue::Int(0), FieldValue::Int(-1)].into()))),
            _ => ("reshape", Fields::new().with("shape", FieldValue::List(vec![FieldValue::Int(-1)].into()))),
        };
        Case::new(fields.0, fields.1.clone(), vec![f32_spec(&dims)], seed).gradcheck();
        Case::new(fields.0, fields.1, vec![f32_spec(&dims)], seed).assert_devices_match_reference(2, 0.0);
    }

    #[test]
    fn softmax_gradients_and_cpu(b in 1usize..6, c in 1usize..12, seed in 0u64..1000) {
        Case::new("softmax", Fields::new(), vec![f32_spec(&[b, c])], seed).gradcheck();
        Case::new("softmax", Fields::new(), vec![f32_spec(&[b, c])], seed).assert_devices_match_reference(2, 1e-6);
    }

    /// Argsort and accuracy agree across devices (values distinct, so the order is unique).
    #[test]
    fn argsort_and_accuracy_cpu_matches_reference(b in 1usize..20, c in 1usize..30, k_pick in 0usize..30, seed in 0u64..1000) {
        let k = 1 + k_pick % c;
        let fields = Fields::new().with("top_k", k);
        Case::new("argsort", fields.clone(), vec![f32_spec(&[b, c])], seed).values(Values::Distinct).assert_devices_match_reference(2, 0.0);
        let specs = vec![f32_spec(&[b, c]), TensorSpec::new("label", [b], DType::I32)];
        Case::new("accuracy", fields, specs, seed).classes(c).values(Values::Distinct).assert_devices_match_reference(2, 0.0);
    }
}

#[test]
fn argsort_and_accuracy_on_known_scores() {
    let dev = cpu(1);
    let scores = f32_spec(&[3, 4]);
    let x = Tensor::from_slice(
        &dev,
        &[
            0.1f32, 0.9, 0.3, 0.2, 5.0, 1.0, 2.0, 3.0, -1.0, -3.0, -2.0, 0.0,
        ],
        scores.shape,
    )
    .unwrap();
    let mut argsort = build(
        &ty("argsort"),
        &Fields::new().with("top_k", 2),
        &dev,
        std::slice::from_ref(&scores),
        0,
    )
    .unwrap();
    let mut idx = vec![Tensor::zeros(&dev, [3, 2], DType::I32).unwrap()];
    argsort
        .layer
        .forward(
            Phase::TEST,
            [x.clone()].as_slice().into(),
            idx.as_mut_slice().into(),
        )
        .into_result()
        .unwrap();
    assert_eq!(idx[0].to_vec::<i32>().unwrap(), vec![1, 2, 0, 3, 3, 0]);

    let labels = Tensor::from_slice(&dev, &[2i32, 0, 0], [3]).unwrap();
    let specs = [scores, TensorSpec::new("label", [3], DType::I32)];
    for (k, name, want) in [(1, "accuracy", 1.0 / 3.0), (2, "top2_accuracy", 1.0)] {
        let mut acc = build(
            &ty("accuracy"),
            &Fields::new().with("top_k", k),
            &dev,
            &specs,
            0,
        )
        .unwrap();
        assert_eq!(
            acc.layer.metric_names().into_result().unwrap()[0].as_str(),
            name
        );
        for _ in 0..2 {
            acc.layer
                .forward(
                    Phase::TEST,
                    [x.clone(), labels.clone()].as_slice().into(),
                    Vec::<Tensor>::new().as_mut_slice().into(),
                )
                .into_result()
                .unwrap();
        }
        let mut m = [0.0f64];
        acc.layer
            .read_metrics(m.as_mut_slice().into())
            .into_result()
            .unwrap();
        assert!((m[0] - want).abs() < 1e-12, "{name}: {}", m[0]);
    }
}

#[test]
fn concat_on_the_channels_of_images() {
    // [1, 1, 2, 2] and [1, 2, 2, 2] joined on the channels: the first image's 4 values, then the
    // second's 8.
    let dev = cpu(1);
    let specs = [f32_spec(&[1, 1, 2, 2]), f32_spec(&[1, 2, 2, 2])];
    let mut built = build(&ty("concat"), &Fields::new(), &dev, &specs, 0).unwrap();
    assert_eq!(built.outputs[0].shape.dims(), &[1, 3, 2, 2]);
    let a = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0], specs[0].shape).unwrap();
    let b = Tensor::from_slice(
        &dev,
        &(5..13).map(|v| v as f32).collect::<Vec<_>>(),
        specs[1].shape,
    )
    .unwrap();
    let mut y = vec![Tensor::zeros(&dev, [1, 3, 2, 2], DType::F32).unwrap()];
    built
        .layer
        .forward(
            Phase::TRAIN,
            [a, b].as_slice().into(),
            y.as_mut_slice().into(),
        )
        .into_result()
        .unwrap();
    assert_eq!(
        y[0].to_vec::<f32>().unwrap(),
        (1..13).map(|v| v as f32).collect::<Vec<_>>()
    );
}

#[test]
fn connection_layers_refuse_shapes_that_do_not_fit() {
    let dev = reference();
    let err = |name: &str, fields: Fields, specs: &[TensorSpec]| {
        build(&ty(name), &fields, &dev, specs, 0)
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(
        "concat",
        Fields::new(),
        &[f32_spec(&[2, 3]), f32_spec(&[3, 3])],
    );
    assert!(
        e.contains("layer") && e.contains("[2, 3]") && e.contains("[3, 3]"),
        "{e}"
    );
    let e = err(
        "concat",
        Fields::new().with("axis", 2),
        &[f32_spec(&[2, 3])],
    );
    assert!(e.contains("axis 2"), "{e}");
    let e = err(
        "slice",
        Fields::new().with("num_slices", 2),
        &[f32_spec(&[2, 3])],
    );
    assert!(e.contains("does not split into 2 equal parts"), "{e}");
    let e = err("slice", Fields::new(), &[f32_spec(&[2, 3])]);
    assert!(e.contains("num_slices or slice_points"), "{e}");
    let e = err(
        "reshape",
        Fields::new().with(
            "shape",
            FieldValue::List(vec![FieldValue::Int(4), FieldValue::Int(-1)].into()),
        ),
        &[f32_spec(&[2, 3])],
    );
    assert!(e.contains("cannot reshape [2, 3]"), "{e}");
    let e = err(
        "accuracy",
        Fields::new().with("top_k", 5),
        &[f32_spec(&[2, 3]), TensorSpec::new("label", [2], DType::I32)],
    );
    assert!(e.contains("top_k = 5 is more than the 3 classes"), "{e}");
}
