//! Every built-in layer: backward against finite differences on random shapes, the same layer
//! on the CPU device against the reference device, and the data layer on a real shard.

mod common;

use common::*;
use proptest::prelude::*;
use singa_core::{DType, DeviceRef, FieldValue, Fields, Phase, Shape, Tensor, TensorSpec};
use singa_cpu::CpuDevice;
use singa_layers::capability::row_gradients;
use singa_layers::gradcheck::{build, example_inputs, forward_backward};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn inner_product_rows_over_every_part_make_the_whole_gradient(parts in 1usize..4, per in 1usize..4, f in 1usize..9, out in 1usize..7, transpose: bool, seed in 0u64..1000) {
        for dev in [reference(), cpu(2)] {
            rows_over_parts(&dev, parts, per, f, out, transpose, seed);
        }
    }

    #[test]
    fn inner_product_gradients(b in 1usize..5, c in 1usize..4, h in 1usize..4, out in 1usize..7, bias: bool, transpose: bool, seed in 0u64..1000, axis in 1usize..4) {
        // axis 2: every [b, c] index a row of h features; axis 3: every value a row of one.
        let fields = Fields::new().with("num_output", out).with("bias_term", bias).with("transpose", transpose).with("axis", axis);
        Case::new("inner_product", fields, vec![f32_spec(&[b, c, h])], seed).gradcheck();
    }

    #[test]
    fn activation_gradients(b in 1usize..5, f in 1usize..20, which in 0usize..6, seed in 0u64..1000) {
        let (name, fields) = match which {
            0 => ("relu", Fields::new()),
            1 => ("relu", Fields::new().with("negative_slope", 0.1)),
            2 => ("sigmoid", Fields::new()),
            3 => ("tanh", Fields::new()),
            4 => ("stanh", Fields::new()),
            _ => ("activation", Fields::new().with("function", "tanh")),
        };
        Case::new(name, fields, vec![f32_spec(&[b, f])], seed).gradcheck();
    }

    #[test]
    fn dropout_gradients(b in 1usize..5, f in 1usize..20, ratio in 0.0f64..0.9, seed in 0u64..1000) {
        Case::new("dropout", Fields::new().with("dropout_ratio", ratio), vec![f32_spec(&[b, f])], seed).gradcheck();
    }

    #[test]
    fn softmax_loss_gradients(b in 1usize..6, c in 2usize..9, scale in 0.5f64..2.0, seed in 0u64..1000) {
        let specs = vec![f32_spec(&[b, c]), TensorSpec::new("label", [b], DType::I32)];
        Case::new("softmax_loss", Fields::new().with("scale", scale), specs, seed).classes(c).gradcheck();
    }

    /// Ids drawn with repeats (`(seed + 7j) % vocab`), so rows of the weight gradient sum
    /// several output gradients.
    #[test]
    fn embedding_gradients(b in 1usize..5, t in 1usize..4, vocab in 1usize..9, dim in 1usize..6, seed in 0u64..1000) {
        let fields = Fields::new().with("vocab_size", vocab).with("feature_dim", dim);
        let specs = vec![TensorSpec::new("ids", [b, t], DType::I32)];
        Case::new("embedding", fields, specs, seed).classes(vocab).gradcheck();
    }

    /// A GRU step with and without the previous hidden state as a source, with its own input
    /// weights or a projected input (`[batch, 3·hidden]`).
    #[test]
    fn gru_gradients(b in 1usize..4, f in 1usize..5, h in 1usize..5, with_state: bool, bias: bool, projected: bool, seed in 0u64..1000) {
        let fields = Fields::new().with("hidden_dim", h).with("bias_term", bias).with("projected_input", projected);
        let f = if projected { 3 * h } else { f };
        let mut specs = vec![f32_spec(&[b, f])];
        if with_state {
            specs.push(f32_spec(&[b, h]));
        }
        Case::new("gru", fields, specs, seed).gradcheck();
    }

    /// An LSTM step with and without the previous hidden state and cell as sources, with its
    /// own input weights or a projected input (`[batch, 4·hidden]`); both outputs carry
    /// gradients.
    #[test]
    fn lstm_gradients(b in 1usize..4, f in 1usize..5, h in 1usize..5, with_state: bool, bias: bool, projected: bool, seed in 0u64..1000) {
        let fields = Fields::new().with("hidden_dim", h).with("bias_term", bias).with("projected_input", projected);
        let f = if projected { 4 * h } else { f };
        let mut specs = vec![f32_spec(&[b, f])];
        if with_state {
            specs.push(f32_spec(&[b, h]));
            specs.push(f32_spec(&[b, h]));
        }
        Case::new("lstm", fields, specs, seed).gradcheck();
    }

    #[test]
    fn euclidean_loss_gradients(b in 1usize..6, f in 1usize..9, seed in 0u64..1000) {
        let specs = vec![f32_spec(&[b, f]), f32_spec(&[b, f])];
        Case::new("euclidean_loss", Fields::new(), specs, seed).gradcheck();
    }

    /// The same layer on the CPU device and on the reference device gives the same outputs
    /// and gradients.
    #[test]
    fn cpu_matches_reference(which in 0usize..10, b in 1usize..9, f in 1usize..40, seed in 0u64..1000) {
        let (name, fields, specs, classes) = match which {
            0 => ("inner_product", Fields::new().with("num_output", 13).with("axis", 2), vec![f32_spec(&[b, 3, f])], 0),
            1 => ("relu", Fields::new(), vec![f32_spec(&[b, f])], 0),
            2 => ("stanh", Fields::new(), vec![f32_spec(&[b, f])], 0),
            3 => ("dropout", Fields::new(), vec![f32_spec(&[b, f])], 0),
            4 => ("softmax_loss", Fields::new(), vec![f32_spec(&[b, f]), TensorSpec::new("label", [b], DType::I32)], f),
            5 => ("embedding", Fields::new().with("vocab_size", f).with("feature_dim", 7), vec![TensorSpec::new("ids", [b, 3], DType::I32)], f),
            6 => ("one_hot", Fields::new().with("vocab_size", f), vec![TensorSpec::new("ids", [b, 3], DType::I32)], f),
            7 => ("gru", Fields::new().with("hidden_dim", 9), vec![f32_spec(&[b, f]), f32_spec(&[b, 9])], 0),
            8 => ("lstm", Fields::new().with("hidden_dim", 9), vec![f32_spec(&[b, f]), f32_spec(&[b, 9]), f32_spec(&[b, 9])], 0),
            _ => ("euclidean_loss", Fields::new(), vec![f32_spec(&[b, f]), f32_spec(&[b, f])], 0),
        };
        Case::new(name, fields, specs, seed).classes(classes).assert_devices_match_reference(2, 1e-5);
    }
}

#[test]
fn dropout_keeps_about_the_right_fraction_and_passes_through_in_test() {
    let dev = DeviceRef::new(CpuDevice::new(1).unwrap());
    let spec = f32_spec(&[100, 100]);
    let mut built = build(
        &ty("dropout"),
        &Fields::new().with("dropout_ratio", 0.3),
        &dev,
        std::slice::from_ref(&spec),
        7,
    )
    .unwrap();
    let x = Tensor::from_slice(&dev, &vec![1.0f32; 10_000], spec.shape).unwrap();
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
    let v = y[0].to_vec::<f32>().unwrap();
    let kept = v.iter().filter(|&&a| a != 0.0).count();
    assert!((6700..7300).contains(&kept), "kept {kept} of 10000");
    assert!(v.iter().all(|&a| a == 0.0 || (a - 1.0 / 0.7).abs() < 1e-6));
    built
        .layer
        .forward(Phase::TEST, [x].as_slice().into(), y.as_mut_slice().into())
        .into_result()
        .unwrap();
    assert!(y[0].to_vec::<f32>().unwrap().iter().all(|&a| a == 1.0));
}

#[test]
fn setup_rejects_shapes_that_do_not_fit() {
    let dev = reference();
    let e = build(
        &ty("softmax_loss"),
        &Fields::new(),
        &dev,
        &[f32_spec(&[4, 3]), f32_spec(&[4])],
        0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("expects class scores"), "{e}");
    let e = build(
        &ty("inner_product"),
        &Fields::new().with("num_output", 3),
        &dev,
        &[],
        0,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("expected 1 source layer, got 0"),
        "{e}"
    );
    let e = build(
        &ty("inner_product"),
        &Fields::new().with("num_ouput", 3),
        &dev,
        &[f32_spec(&[1, 2])],
        0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("did you mean `num_output`"), "{e}");
}

#[test]
fn shard_data_reads_batches_and_resumes() {
    let dir = std::env::temp_dir().join(format!("singa-layers-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("d.shard");
    let mut w = singa_data::ShardWriter::create(
        &path,
        singa_data::RecordSpec {
            dtype: DType::U8,
            shape: vec![1, 2, 2],
            has_label: true,
        },
    )
    .unwrap();
    for i in 0..10u8 {
        w.append(Some(i as i32), &[i, i, 2 * i, 255]).unwrap();
    }
    w.finish(&serde_json::json!({})).unwrap();

    let dev = reference();
    let fields = Fields::new()
        .with("path", path.display().to_string())
        .with("batch_size", 4)
        .with("scale", 1.0 / 255.0);
    let mut built = build(&ty("shard_data"), &fields, &dev, &[], 3).unwrap();
    assert_eq!(built.outputs[0].shape, Shape::from([4, 1, 2, 2]));
    assert_eq!(built.outputs[1].shape, Shape::from([4]));
    let mut outs: Vec<Tensor> = built
        .outputs
        .iter()
        .map(|s| Tensor::zeros(&dev, s.shape, s.dtype).unwrap())
        .collect();
    let mut step = |layer: &mut singa_core::LayerBox| {
        layer
            .forward(
                Phase::TRAIN,
                [].as_slice().into(),
                outs.as_mut_slice().into(),
            )
            .into_result()
            .unwrap();
        (
            outs[0].to_vec::<f32>().unwrap(),
            outs[1].to_vec::<i32>().unwrap(),
        )
    };
    let (d0, l0) = step(&mut built.layer);
    assert_eq!(l0, vec![0, 1, 2, 3]);
    assert_eq!(&d0[4..8], &[1.0 / 255.0, 1.0 / 255.0, 2.0 / 255.0, 1.0]);
    let saved = built.layer.state().into_result().unwrap();
    assert_eq!(saved.as_slice(), &[4]);
    let (_, l1) = step(&mut built.layer);
    let (_, l2) = step(&mut built.layer);
    assert_eq!(l1, vec![4, 5, 6, 7]);
    assert_eq!(l2, vec![8, 9, 0, 1], "wraps around into the next epoch");
    built
        .layer
        .restore_state(saved.as_rslice())
        .into_result()
        .unwrap();
    let (_, again) = step(&mut built.layer);
    assert_eq!(again, l1);

    let missing = Fields::new()
        .with("path", dir.join("nope.shard").display().to_string())
        .with("batch_size", 4);
    let e = build(&ty("shard_data"), &missing, &dev, &[], 0)
        .err()
        .unwrap();
    assert!(e.to_string().contains("nope.shard"), "{e}");
}

/// `one_hot` puts a 1 at each id; `embedding` and `one_hot` refuse f32 inputs and ids outside
/// the vocabulary, naming them.
#[test]
fn one_hot_and_embedding_check_their_ids() {
    let dev = reference();
    let ids = TensorSpec::new("ids", [2, 2], DType::I32);
    let mut built = build(
        &ty("one_hot"),
        &Fields::new().with("vocab_size", 3),
        &dev,
        std::slice::from_ref(&ids),
        0,
    )
    .unwrap();
    assert_eq!(built.outputs[0].shape, Shape::from([2, 2, 3]));
    let x = Tensor::from_slice(&dev, &[2i32, 0, 1, 2], [2, 2]).unwrap();
    let mut y = Tensor::zeros(&dev, [2, 2, 3], DType::F32).unwrap();
    built
        .layer
        .forward(
            Phase::TRAIN,
            [x].as_slice().into(),
            std::slice::from_mut(&mut y).into(),
        )
        .into_result()
        .unwrap();
    let want = [0., 0., 1., 1., 0., 0., 0., 1., 0., 0., 0., 1.];
    assert_eq!(y.to_vec::<f32>().unwrap(), want);
    let bad = Tensor::from_slice(&dev, &[0i32, 3, 1, 2], [2, 2]).unwrap();
    let e = built
        .layer
        .forward(
            Phase::TRAIN,
            [bad].as_slice().into(),
            std::slice::from_mut(&mut y).into(),
        )
        .into_result()
        .unwrap_err();
    assert!(e.to_string().contains("id 3 at position 1"), "{e}");
    let fields = Fields::new().with("vocab_size", 3).with("feature_dim", 2);
    let e = build(&ty("embedding"), &fields, &dev, &[f32_spec(&[2, 2])], 0)
        .err()
        .unwrap();
    assert!(e.to_string().contains("takes i32 ids"), "{e}");
    let e = build(
        &ty("one_hot"),
        &Fields::new().with("vocab_size", 5000),
        &dev,
        &[ids],
        0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("embedding"), "{e}");
}

/// The LSTM's forget gate starts open (bias 1, as char-rnn), its other biases at 0; a GRU or
/// LSTM given one state source is refused, naming what it takes.
#[test]
fn recurrent_cells_initialise_and_check_their_sources() {
    let dev = reference();
    let fields = Fields::new().with("hidden_dim", 3);
    let built = build(&ty("lstm"), &fields, &dev, &[f32_spec(&[2, 4])], 0).unwrap();
    for p in &built.params {
        let v = p.value.to_vec::<f32>().unwrap();
        match p.name.as_str() {
            "layer/bias_f" => assert_eq!(v, [1.0; 3]),
            n if n.starts_with("layer/bias_") => assert_eq!(v, [0.0; 3], "{n}"),
            n => assert!(
                v.iter().all(|x| x.abs() <= 0.08) && v.iter().any(|&x| x != 0.0),
                "{n}"
            ),
        }
    }
    // weight_x and weight_h (the four gates side by side), and a bias per gate.
    let names: Vec<_> = built.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "layer/weight_x",
            "layer/weight_h",
            "layer/bias_i",
            "layer/bias_f",
            "layer/bias_o",
            "layer/bias_g"
        ]
    );
    assert_eq!(built.params[0].value.shape().dims(), [4, 12]);
    // A GRU's input weights side by side too; a projected cell has none, and its input must be
    // as wide as the gates.
    let built = build(&ty("gru"), &fields, &dev, &[f32_spec(&[2, 4])], 0).unwrap();
    let names: Vec<_> = built.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names[0], "layer/weight_x");
    assert_eq!(built.params[0].value.shape().dims(), [4, 9]);
    let projected = fields.clone().with("projected_input", true);
    let built = build(&ty("gru"), &projected, &dev, &[f32_spec(&[2, 9])], 0).unwrap();
    assert!(built.params.iter().all(|p| p.name != "layer/weight_x"));
    let e = build(&ty("lstm"), &projected, &dev, &[f32_spec(&[2, 9])], 0)
        .err()
        .unwrap();
    assert!(e.to_string().contains("has 12 features"), "{e}");
    let two = [f32_spec(&[2, 4]), f32_spec(&[2, 3])];
    let e = build(&ty("lstm"), &fields, &dev, &two, 0).err().unwrap();
    assert!(
        e.to_string().contains("the previous cell; got 2 sources"),
        "{e}"
    );
    let e = build(
        &ty("gru"),
        &fields,
        &dev,
        &[f32_spec(&[2, 4]), f32_spec(&[2, 5])],
        0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("expected [2, 3]"), "{e}");
}

/// A cell with input weights of its own, and the same cell on the projection of its input
/// (`projected_input`, as the unrolling runs every step), compute the same step: the same
/// outputs, state and hidden-weight gradients; the input's gradient and the input weights'
/// are the projection's, passed back through it.
#[test]
fn projected_cells_compute_what_cells_with_input_weights_do() {
    let dev = reference();
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{what}: {x} against {y}"
            );
        }
    };
    let product = |a: &Tensor, ta: bool, b: &Tensor, tb: bool, shape: [usize; 2]| {
        let mut c = Tensor::zeros(&dev, shape, DType::F32).unwrap();
        dev.matmul(1.0, a, ta, b, tb, 0.0, &mut c).unwrap();
        c.to_vec::<f32>().unwrap()
    };
    for (cell, gates, states) in [("gru", 3, 1), ("lstm", 4, 2)] {
        let (b, f, h) = (3, 5, 4);
        let fields = Fields::new().with("hidden_dim", h);
        let mut specs = vec![f32_spec(&[b, f])];
        specs.extend((0..states).map(|_| f32_spec(&[b, h])));
        let mut plain = build(&ty(cell), &fields, &dev, &specs, 1).unwrap();
        let mut projected_specs = specs.clone();
        projected_specs[0] = f32_spec(&[b, gates * h]);
        let fields = fields.with("projected_input", true);
        let mut projected = build(&ty(cell), &fields, &dev, &projected_specs, 2).unwrap();
        // The projected cell has the plain one's parameters but weight_x; give it their values.
        assert_eq!(plain.params[0].name.as_str(), "layer/weight_x");
        assert_eq!(projected.params.len(), plain.params.len() - 1);
        for (p, q) in projected.params.iter_mut().zip(&plain.params[1..]) {
            assert_eq!(p.name, q.name);
            dev.copy(&q.value, &mut p.value).unwrap();
        }
        let wx = plain.params[0].value.clone();
        let inputs = example_inputs(&dev, &specs, 0, 3).unwrap();
        let xw = product(&inputs[0], false, &wx, false, [b, gates * h]);
        let mut projected_inputs = inputs.clone();
        projected_inputs[0] = Tensor::from_slice(&dev, &xw, [b, gates * h]).unwrap();
        let a = forward_backward(&mut plain, &dev, &inputs, 4).unwrap();
        let p = forward_backward(&mut projected, &dev, &projected_inputs, 4).unwrap();
        // Outputs, then input gradients, then parameter gradients, then metrics.
        let outs = states;
        for k in 0..outs {
            close(&a[k], &p[k], &format!("{cell}: output {k}"));
        }
        let d_xw = Tensor::from_slice(&dev, &p[outs], [b, gates * h]).unwrap();
        let dx = product(&d_xw, false, &wx, true, [b, f]);
        close(&a[outs], &dx, &format!("{cell}: the input's gradient"));
        for k in 1..=states {
            close(
                &a[outs + k],
                &p[outs + k],
                &format!("{cell}: state gradient {k}"),
            );
        }
        let grads = outs + 1 + states;
        let d_wx = product(&inputs[0], true, &d_xw, false, [f, gates * h]);
        close(&a[grads], &d_wx, &format!("{cell}: weight_x's gradient"));
        for k in 1..plain.params.len() {
            let name = plain.params[k].name.to_string();
            close(
                &a[grads + k],
                &p[grads + k - 1],
                &format!("{cell}: {name}'s gradient"),
            );
        }
    }
}

/// `text_data`: streams of a text shard, continued batch after batch, wrapped at the end of
/// an epoch, resumed from its state; too short a text is refused.
#[test]
fn text_data_reads_streams_and_resumes() {
    let dir = std::env::temp_dir().join(format!("singa-layers-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 26 characters, each its own id (the vocabulary is sorted).
    std::fs::write(dir.join("abc.txt"), "abcdefghijklmnopqrstuvwxyz").unwrap();
    let options = singa_data::import::TextOptions {
        validation: 0.0,
        ..Default::default()
    };
    singa_data::import::import_text(&dir.join("abc.txt"), &dir, options).unwrap();
    let dev = reference();
    let fields = |batch: usize, unroll: usize| {
        Fields::new()
            .with("path", dir.join("train.shard").display().to_string())
            .with("batch_size", batch)
            .with("unroll_len", unroll)
    };
    // Two streams of 13 ids: "a".."m" and "n".."z"; 3 ids a batch, 4 batches an epoch.
    let mut built = build(&ty("text_data"), &fields(2, 3), &dev, &[], 0).unwrap();
    assert_eq!(built.outputs[0].shape, Shape::from([2, 3]));
    assert_eq!(built.outputs[1].dtype, DType::I32);
    let mut outs: Vec<Tensor> = built
        .outputs
        .iter()
        .map(|s| Tensor::zeros(&dev, s.shape, s.dtype).unwrap())
        .collect();
    let mut step = |layer: &mut singa_core::LayerBox| {
        layer
            .forward(
                Phase::TRAIN,
                [].as_slice().into(),
                outs.as_mut_slice().into(),
            )
            .into_result()
            .unwrap();
        (
            outs[0].to_vec::<i32>().unwrap(),
            outs[1].to_vec::<i32>().unwrap(),
        )
    };
    let (d0, l0) = step(&mut built.layer);
    assert_eq!(d0, [0, 1, 2, 13, 14, 15]);
    assert_eq!(l0, [1, 2, 3, 14, 15, 16], "the next characters");
    let (d1, _) = step(&mut built.layer);
    assert_eq!(d1, [3, 4, 5, 16, 17, 18], "each stream continues");
    let saved = built.layer.state().into_result().unwrap();
    assert_eq!(saved.as_slice(), &[2]);
    let (d2, _) = step(&mut built.layer);
    let (d3, l3) = step(&mut built.layer);
    assert_eq!(d3, [9, 10, 11, 22, 23, 24]);
    assert_eq!(l3, [10, 11, 12, 23, 24, 25]);
    let (d4, _) = step(&mut built.layer);
    assert_eq!(d4, d0, "a new epoch starts every stream again");
    built
        .layer
        .restore_state(saved.as_rslice())
        .into_result()
        .unwrap();
    assert_eq!(step(&mut built.layer).0, d2);

    let e = build(&ty("text_data"), &fields(2, 13), &dev, &[], 0)
        .err()
        .unwrap();
    assert!(e.to_string().contains("too few"), "{e}");
    let e = build(&ty("text_data"), &fields(0, 3), &dev, &[], 0)
        .err()
        .unwrap();
    assert!(e.to_string().contains("at least 1"), "{e}");
}

#[test]
fn image_data_augments_reproducibly_and_checks_its_mean_file() {
    let dir = std::env::temp_dir().join(format!("singa-layers-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("img.shard");
    let spec = singa_data::RecordSpec {
        dtype: DType::U8,
        shape: vec![3, 4, 4],
        has_label: true,
    };
    let mut w = singa_data::ShardWriter::create(&path, spec).unwrap();
    for i in 0..6u8 {
        let values: Vec<u8> = (0..48).map(|j| j * 5 + i).collect();
        w.append(Some(i as i32), &values).unwrap();
    }
    w.finish(&serde_json::json!({})).unwrap();

    let dev = reference();
    let fields = Fields::new()
        .with("path", path.display().to_string())
        .with("batch_size", 2)
        .with("shuffle", true)
        .with("scale", 1.0 / 255.0)
        .with(
            "mean",
            FieldValue::List(
                vec![
                    FieldValue::Float(0.5),
                    FieldValue::Float(0.4),
                    FieldValue::Float(0.3),
                ]
                .into(),
            ),
        )
        .with("std", 0.25)
        .with("crop", 3)
        .with("pad", 1)
        .with("mirror", true);
    let mut built = build(&ty("image_data"), &fields, &dev, &[], 5).unwrap();
    assert_eq!(built.outputs[0].shape.dims(), &[2, 3, 3, 3]);
    let mut outs: Vec<Tensor> = built
        .outputs
        .iter()
        .map(|s| Tensor::zeros(&dev, s.shape, s.dtype).unwrap())
        .collect();
    let mut step = |layer: &mut singa_core::LayerBox| {
        layer
            .forward(
                Phase::TRAIN,
                [].as_slice().into(),
                outs.as_mut_slice().into(),
            )
            .into_result()
            .unwrap();
        outs[0].to_vec::<f32>().unwrap()
    };
    step(&mut built.layer);
    let saved = built.layer.state().into_result().unwrap();
    let later: Vec<Vec<f32>> = (0..4).map(|_| step(&mut built.layer)).collect();
    built
        .layer
        .restore_state(saved.as_rslice())
        .into_result()
        .unwrap();
    let again: Vec<Vec<f32>> = (0..4).map(|_| step(&mut built.layer)).collect();
    assert_eq!(later, again, "resuming replays the same crops and mirrors");
    // Padding shows as exact zeros; real pixels are ((v/255) - mean) / 0.25.
    assert!(later
        .iter()
        .flatten()
        .all(|v| *v == 0.0 || (-2.0..=4.0).contains(v)));

    let mean_path = dir.join("mean.shard");
    singa_data::image::write_mean(&mean_path, &[3, 5, 5], &[0.0; 75], &path).unwrap();
    let with_mean = Fields::new()
        .with("path", path.display().to_string())
        .with("batch_size", 2)
        .with("mean_file", mean_path.display().to_string());
    let e = build(&ty("image_data"), &with_mean, &dev, &[], 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mean.shard") && e.contains("[3, 4, 4]"), "{e}");
    let both = with_mean.with("mean", 0.5);
    let e = build(&ty("image_data"), &both, &dev, &[], 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mean or mean_file"), "{e}");
}

#[test]
fn only_inner_product_computes_rows_of_its_gradients() {
    let dev = DeviceRef::new(CpuDevice::new(1).unwrap());
    let spec = [f32_spec(&[4, 6])];
    let mut relu = build(&ty("relu"), &Fields::new(), &dev, &spec, 0).unwrap();
    assert!(row_gradients(&mut relu.layer).is_none());
    let fields = Fields::new().with("num_output", 3usize);
    let mut ip = build(&ty("inner_product"), &fields, &dev, &spec, 0).unwrap();
    assert!(row_gradients(&mut ip.layer).is_some());
}

/// Data parallelism with a shared weight gradient: `parts` workers each hold `per` samples of
/// a batch; each computes a block of rows of the weight gradient over every part (its own
/// first, then the others, added), into one tensor. That must be the gradient of the whole
/// batch, and `backward` must leave the weight gradient alone once it is shared.
fn rows_over_parts(
    dev: &DeviceRef,
    parts: usize,
    per: usize,
    f: usize,
    out: usize,
    transpose: bool,
    seed: u64,
) {
    let fields = Fields::new()
        .with("num_output", out)
        .with("transpose", transpose);
    let ip = ty("inner_product");
    let random = |n: usize, s: u64| singa_layers::gradcheck::random_away_from_zero(s, n, 0.0);
    let (x_all, dy_all) = (
        random(parts * per * f, seed),
        random(parts * per * out, seed + 1),
    );
    let tensor = |v: &[f32], shape: &[usize]| {
        Tensor::from_slice(dev, v, Shape::new(shape).unwrap()).unwrap()
    };
    let pass = |built: &mut singa_layers::gradcheck::Built, x: &Tensor, dy: &Tensor| {
        let mut y = vec![Tensor::zeros(dev, built.outputs[0].shape, DType::F32).unwrap()];
        built
            .layer
            .forward(
                Phase::TRAIN,
                std::slice::from_ref(x).into(),
                y.as_mut_slice().into(),
            )
            .into_result()
            .unwrap();
        let mut dx = vec![singa_core::abi::ROption::RSome(
            Tensor::zeros(dev, x.shape(), DType::F32).unwrap(),
        )];
        built
            .layer
            .backward(
                Phase::TRAIN,
                std::slice::from_ref(x).into(),
                y.as_slice().into(),
                std::slice::from_ref(dy).into(),
                dx.as_mut_slice().into(),
            )
            .into_result()
            .unwrap();
    };
    // The whole batch on one layer.
    let mut whole = build(&ip, &fields, dev, &[f32_spec(&[parts * per, f])], seed).unwrap();
    pass(
        &mut whole,
        &tensor(&x_all, &[parts * per, f]),
        &tensor(&dy_all, &[parts * per, out]),
    );
    let expected: Vec<f32> = whole.params[0].grad.to_vec().unwrap();
    // One layer per part, sharing the weight gradient.
    let xs: Vec<Tensor> = (0..parts)
        .map(|p| tensor(&x_all[p * per * f..(p + 1) * per * f], &[per, f]))
        .collect();
    let dys: Vec<Tensor> = (0..parts)
        .map(|p| tensor(&dy_all[p * per * out..(p + 1) * per * out], &[per, out]))
        .collect();
    let mut layers: Vec<_> = (0..parts)
        .map(|_| build(&ip, &fields, dev, &[f32_spec(&[per, f])], seed).unwrap())
        .collect();
    let wshape = whole.params[0].grad.shape();
    let shared = Tensor::zeros(dev, wshape, DType::F32).unwrap();
    for (p, l) in layers.iter_mut().enumerate() {
        let rows = row_gradients(&mut l.layer).expect("inner_product has the capability");
        assert!(rows.share_param_grad(0).unwrap());
        assert!(
            !rows.share_param_grad(1).unwrap(),
            "only the weight is shared"
        );
        dev.fill(&mut l.params[0].grad, 7.0).unwrap();
        pass(l, &xs[p], &dys[p]);
        assert!(
            l.params[0]
                .grad
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 7.0),
            "backward left the shared gradient alone"
        );
    }
    let rows = wshape.dim(0);
    for (p, l) in layers.iter_mut().enumerate() {
        let (start, end) = (p * rows / parts, (p + 1) * rows / parts);
        let mut block = shared.narrow(start, end - start).unwrap();
        for (i, q) in (p..parts).chain(0..p).enumerate() {
            row_gradients(&mut l.layer)
                .unwrap()
                .param_grad_rows(
                    0,
                    start,
                    std::slice::from_ref(&xs[q]),
                    std::slice::from_ref(&dys[q]),
                    i > 0,
                    &mut block,
                )
                .unwrap();
        }
    }
    let got: Vec<f32> = shared.to_vec().unwrap();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
            "value {i}: {g} against {e} (parts {parts}, transpose {transpose})"
        );
    }
}
