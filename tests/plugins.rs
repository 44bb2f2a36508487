//! Plugins end to end: the example plugins are built, loaded and train a net; every refusal
//! (missing file, not a plugin, another interface version, a type defined twice, wrong fields,
//! a panic during training) is one clear error and leaves the process and the checkpoints
//! intact.

use singa::config::JobConfig;
use singa::plugins::{self, Detail};
use singa::trainer::{Silent, TrainOptions, Trainer};
use singa::workspace::Existing;
use singa::Registry;
use singa_tests::{metric, mlp_job, plugin, profile_dir, singa_binary, synthetic_mnist, tmpdir};
use std::path::Path;
use std::process::Command;

/// An MLP job on synthetic MNIST in `dir`, with `act` as the activation layer's type and
/// `updater` as the `[updater]` table's body.
fn job_text(dir: &Path, top: &str, act: &str, updater: &str) -> String {
    let text = mlp_job(dir, top, 32, 0.0);
    let text = text.replace("type = \"stanh\"", act);
    let start = text.find("[updater]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    format!("{}[updater]\n{updater}{}", &text[..start], &text[end..])
}

fn train(job: &JobConfig, ws: &Path, existing: Existing) -> singa_core::Result<Trainer> {
    let registry = Registry::with_plugins(&[], Some(job), Detail::Brief)?;
    let mut trainer = Trainer::new(
        job,
        &registry,
        &TrainOptions {
            threads: None,
            workspace: Some(ws.to_path_buf()),
            existing,
            ..Default::default()
        },
    )?;
    trainer.run(&mut Silent)?;
    Ok(trainer)
}

#[test]
fn plugin_layer_and_updater_train_a_net_from_the_job_file() {
    let swish = plugin("singa-plugin-swish");
    let lion = plugin("singa-plugin-lion");
    let dir = tmpdir("plugins-train");
    synthetic_mnist(&dir, 800, 200, 8);
    // The job names the plugins relative to its own folder, as a user would.
    std::fs::copy(&swish, dir.join("libswish.so")).unwrap();
    let top = format!(
        "train_steps = 150\ntest_steps = 4\nplugins = [\"libswish.so\", {:?}]",
        lion.display().to_string()
    );
    let text = job_text(
        &dir,
        &top,
        "type = \"swish\"\nbeta = 1.5",
        "type = \"lion\"\nlearning_rate = 0.002\nweight_decay = 0.01\n",
    );
    let job_file = dir.join("job.toml");
    std::fs::write(&job_file, text).unwrap();
    let job = JobConfig::from_file(&job_file).unwrap();
    let mut trainer = train(&job, &dir.join("ws"), Existing::Refuse).unwrap();
    let accuracy = metric(&trainer.evaluate().unwrap(), "accuracy");
    assert!(
        accuracy > 0.9,
        "swish + lion learn the toy problem, got {accuracy}"
    );
    // A plugin's layer has no ONNX form that singa knows: the export says which.
    let net = trainer.test_net().unwrap();
    let refused = singa_onnx::export(net, trainer.params(), &Default::default())
        .err()
        .expect("a plugin layer is refused")
        .to_string();
    assert!(
        refused.contains("layer act (type swish) has no ONNX form"),
        "{refused}"
    );
}

#[test]
fn refusals_are_one_line_and_name_the_plugin() {
    let dir = tmpdir("plugins-refusals");
    let refuse = |path: &Path| -> String {
        let mut r = Registry::builtin();
        let e = r
            .load_plugins(&[path.to_path_buf()], Detail::Brief)
            .unwrap_err()
            .to_string();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        e
    };

    let missing = refuse(&dir.join("libnothing.so"));
    assert!(
        missing.contains("libnothing.so") && missing.contains("no such file"),
        "{missing}"
    );

    let text = dir.join("notes.so");
    std::fs::write(&text, "not a library").unwrap();
    let e = refuse(&text);
    assert!(
        e.contains("notes.so") && e.contains("not a loadable shared library"),
        "{e}"
    );

    // A real shared library that is not a singa plugin: a proc-macro crate cargo built.
    let deps = profile_dir().join("deps");
    let other = std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("libthiserror_impl") && name.ends_with(std::env::consts::DLL_SUFFIX)
        })
        .expect("cargo built thiserror's proc macro as a shared library");
    let e = refuse(&other);
    assert!(e.contains("not a singa plugin"), "{e}");

    let old = plugin("plugin-old-interface");
    let e = refuse(&old);
    assert!(
        e.contains("0.0.3") && e.contains(singa_core::INTERFACE_VERSION) && e.contains("rebuild"),
        "{e}"
    );

    // Same interface version, other layout: abi_stable's report, condensed to one line...
    let wrong = plugin("plugin-wrong-layout");
    let e = refuse(&wrong);
    assert!(
        e.contains("layout differs") && e.contains("rebuild") && e.contains("-v"),
        "{e}"
    );
    // ...and in full on request.
    let mut r = Registry::builtin();
    let full = r
        .load_plugins(&[wrong], Detail::Full)
        .unwrap_err()
        .to_string();
    assert!(full.lines().count() > 5, "{full}");

    let shadows = plugin("plugin-shadows-relu");
    let e = refuse(&shadows);
    assert!(
        e.contains("\"relu\"") && e.contains("plugin-shadows-relu") && e.contains("built in"),
        "{e}"
    );

    // The same layer type from two libraries (a copy of the plugin under another name).
    let swish = plugin("singa-plugin-swish");
    let copy = dir.join("libswish-copy.so");
    std::fs::copy(&swish, &copy).unwrap();
    let mut r = Registry::builtin();
    let e = r
        .load_plugins(&[swish.clone(), copy.clone()], Detail::Brief)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"swish\"") && e.contains("libswish-copy.so") && e.contains("already defined"),
        "{e}"
    );
    // The same library named twice (say in SINGA_PLUGIN_PATH and the job file) loads once.
    let mut r = Registry::builtin();
    let loaded = r
        .load_plugins(&[swish.clone(), swish], Detail::Brief)
        .unwrap();
    assert_eq!(loaded.len(), 1);
}

#[test]
fn wrong_fields_of_a_plugin_layer_name_the_file_and_field() {
    let swish = plugin("singa-plugin-swish");
    let dir = tmpdir("plugins-fields");
    synthetic_mnist(&dir, 100, 50, 8);
    let sgd = "type = \"sgd\"\nlearning_rate = 0.05\n";
    let top = format!(
        "train_steps = 5\nplugins = [{:?}]",
        swish.display().to_string()
    );
    for (act, want) in [
        ("type = \"swish\"\nbetta = 2.0", "did you mean `beta`?"),
        ("type = \"swish\"\nbeta = \"large\"", "beta"),
    ] {
        let file = dir.join("job.toml");
        std::fs::write(&file, job_text(&dir, &top, act, sgd)).unwrap();
        let job = JobConfig::from_file(&file).unwrap();
        let e = train(&job, &dir.join("ws"), Existing::Overwrite)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("job.toml") && e.contains("layer[act]") && e.contains(want),
            "{e}"
        );
    }
}

#[test]
fn a_panicking_plugin_layer_stops_the_job_and_the_checkpoint_resumes() {
    let faulty = plugin("plugin-faulty");
    let dir = tmpdir("plugins-panic");
    synthetic_mnist(&dir, 800, 200, 8);
    let sgd = "type = \"sgd\"\nlearning_rate = 0.05\n";
    let job = |panic_at: u64| {
        let top = format!(
            "train_steps = 150\ncheckpoint_freq = 50\nplugins = [{:?}]",
            faulty.display().to_string()
        );
        // The plugin's layer goes between the activation and the dropout.
        let text = job_text(&dir, &top, "type = \"stanh\"", sgd).replace(
            "type = \"dropout\"\nsrclayers = \"act\"",
            "type = \"dropout\"\nsrclayers = \"faulty\"",
        ) + &format!(
            "\n[[layer]]\nname = \"faulty\"\ntype = \"faulty_identity\"\nsrclayers = \"act\"\npanic_at = {panic_at}\n"
        );
        JobConfig::from_toml(&text, Default::default()).unwrap()
    };
    let ws = dir.join("ws");
    let e = train(&job(120), &ws, Existing::Refuse)
        .err()
        .expect("the panic stops the job")
        .to_string();
    assert!(
        e.contains("layer faulty")
            && e.contains("faulty_identity")
            && e.contains("plugin plugin-faulty")
            && e.contains("deliberate panic"),
        "{e}"
    );
    // The checkpoint of step 100 is intact: a run without the fault resumes from it.
    let trainer = train(&job(0), &ws, Existing::Resume).unwrap();
    assert_eq!(trainer.step(), 150);
}

/// A plugin updater that panics stops the job the same way, naming the plugin and the updater.
#[test]
fn a_panicking_plugin_updater_stops_the_job() {
    let faulty = plugin("plugin-faulty");
    let dir = tmpdir("plugins-updater-panic");
    synthetic_mnist(&dir, 800, 200, 8);
    let top = format!(
        "train_steps = 60\ncheckpoint_freq = 20\nplugins = [{:?}]",
        faulty.display().to_string()
    );
    let updater = "type = \"faulty_sgd\"\nlearning_rate = 0.05\npanic_at = 25\n";
    let text = job_text(&dir, &top, "type = \"stanh\"", updater);
    let job = JobConfig::from_toml(&text, Default::default()).unwrap();
    let ws = dir.join("ws");
    let e = train(&job, &ws, Existing::Refuse)
        .err()
        .expect("the panic stops the job")
        .to_string();
    assert!(
        e.contains("updater type faulty_sgd of plugin plugin-faulty")
            && e.contains("deliberate panic in step 25"),
        "{e}"
    );
    assert!(ws.join("checkpoints/step-00000020.safetensors").exists());
}

#[test]
fn the_cli_loads_plugins_lists_them_and_checks_them() {
    let singa = singa_binary();
    let swish = plugin("singa-plugin-swish");
    let lion = plugin("singa-plugin-lion");

    // SINGA_PLUGIN_PATH and --plugin together; `singa layers` names each type's origin.
    let out = Command::new(&singa)
        .args(["layers", "--plugin"])
        .arg(&lion)
        .env(plugins::PLUGIN_PATH_VAR, &swish)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.contains("relu  (built in)"), "{listing}");
    assert!(
        listing.contains("swish  (plugin singa-plugin-swish 0.1.0 from"),
        "{listing}"
    );
    assert!(
        listing.contains("lion  (plugin singa-plugin-lion"),
        "{listing}"
    );

    // A refusal: one line on stderr, a failing exit status.
    let out = Command::new(&singa)
        .args(["layers", "--plugin"])
        .arg(plugin("plugin-old-interface"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: plugin ") && err.contains("rebuild"),
        "{err}"
    );

    // `singa plugin check`: a verdict per type, success when all pass.
    let template = plugin("singa-plugin-template");
    for (lib, verdict) in [
        (&swish, "ok      layer swish"),
        (&lion, "ok      updater lion"),
        (&template, "ok      layer softsign"),
    ] {
        let out = Command::new(&singa)
            .args(["plugin", "check"])
            .arg(lib)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{text}");
        assert!(text.contains(verdict), "{text}");
    }

    // ... and a failure with a failing exit status when one does not.
    let out = Command::new(&singa)
        .args(["plugin", "check"])
        .arg(plugin("plugin-faulty"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("ok      layer faulty_identity"), "{text}");
    assert!(
        text.contains("FAILED  layer wrong_gradient")
            && text.contains("backward disagrees with finite differences"),
        "{text}"
    );
}

/// A plugin that panics during `singa train`: a failing exit status, the error on stderr's
/// last line naming the plugin, the layer and the panic, and the checkpoint before it intact.
#[test]
fn the_cli_survives_a_panicking_plugin() {
    let singa = singa_binary();
    let faulty = plugin("plugin-faulty");
    let dir = tmpdir("plugins-cli-panic");
    synthetic_mnist(&dir, 800, 200, 8);
    let sgd = "type = \"sgd\"\nlearning_rate = 0.05\n";
    let top = format!(
        "train_steps = 60\ncheckpoint_freq = 20\nplugins = [{:?}]",
        faulty.display().to_string()
    );
    let text = job_text(&dir, &top, "type = \"stanh\"", sgd).replace(
        "type = \"dropout\"\nsrclayers = \"act\"",
        "type = \"dropout\"\nsrclayers = \"faulty\"",
    ) + "\n[[layer]]\nname = \"faulty\"\ntype = \"faulty_identity\"\nsrclayers = \"act\"\npanic_at = 30\n";
    let job = dir.join("job.toml");
    std::fs::write(&job, text).unwrap();
    let ws = dir.join("ws");
    let out = Command::new(&singa)
        .arg("train")
        .arg(&job)
        .arg("--workspace")
        .arg(&ws)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains("job.toml: step 30: layer faulty (faulty_identity) forward")
            && last.contains("plugin plugin-faulty")
            && last.contains("deliberate panic"),
        "{err}"
    );
    assert!(
        !err.contains("thread '"),
        "the panic is reported once, as the error: {err}"
    );
    assert!(ws.join("checkpoints/step-00000020.safetensors").exists());
}

/// The identity as a plugin author might write it from a misreading of the contract: its
/// backward adds to the input gradient instead of writing it.
struct AccumulatingIdentity {
    dev: Option<singa_core::DeviceRef>,
}

impl singa_core::LayerDef for AccumulatingIdentity {
    const TYPE: &'static str = "accumulating_identity";
    const DOC: &'static str = "the identity, with a backward that accumulates";
    fn fields() -> Vec<singa_core::FieldSpec> {
        Vec::new()
    }
    fn new(_: &singa_core::Fields) -> singa_core::Result<Self> {
        Ok(AccumulatingIdentity { dev: None })
    }
}

impl singa_core::Layer for AccumulatingIdentity {
    fn setup(
        &mut self,
        ctx: &singa_core::SetupContext<'_>,
        _: singa_core::ParamFactoryMut<'_>,
    ) -> singa_core::abi::RResult<singa_core::abi::RVec<singa_core::TensorSpec>, singa_core::Error>
    {
        self.dev = Some(ctx.device.clone());
        let input = &ctx.inputs[0];
        singa_core::abi::RResult::ROk(
            vec![singa_core::TensorSpec::new(
                "output",
                input.shape,
                input.dtype,
            )]
            .into(),
        )
    }
    fn forward(
        &mut self,
        _: singa_core::Phase,
        inputs: singa_core::abi::RSlice<'_, singa_core::Tensor>,
        mut outputs: singa_core::abi::RSliceMut<'_, singa_core::Tensor>,
    ) -> singa_core::abi::RResult<(), singa_core::Error> {
        let dev = self.dev.as_ref().unwrap();
        dev.copy(&inputs[0], &mut outputs[0]).into()
    }
    fn backward(
        &mut self,
        _: singa_core::Phase,
        _: singa_core::abi::RSlice<'_, singa_core::Tensor>,
        _: singa_core::abi::RSlice<'_, singa_core::Tensor>,
        grad_outputs: singa_core::abi::RSlice<'_, singa_core::Tensor>,
        mut grad_inputs: singa_core::abi::RSliceMut<
            '_,
            singa_core::abi::ROption<singa_core::Tensor>,
        >,
    ) -> singa_core::abi::RResult<(), singa_core::Error> {
        let dev = self.dev.as_ref().unwrap();
        match &mut grad_inputs[0] {
            singa_core::abi::ROption::RSome(dx) => dev.axpby(1.0, &grad_outputs[0], 1.0, dx).into(),
            singa_core::abi::ROption::RNone => singa_core::abi::RResult::ROk(()),
        }
    }
}

/// One rule for gradients, checked: a backward pass overwrites `param.grad` and the input
/// gradients (the runtime never zeroes them). Every built-in layer passes what `singa plugin
/// check` asks of a plugin's layer, and a layer that accumulates is caught.
#[test]
fn plugin_check_holds_layers_to_overwriting_their_gradients() {
    let registry = Registry::builtin();
    use singa_core::{DType, FieldValue, Fields, LayerExample, TensorSpec};
    let x = |dims: &[usize]| {
        let shape = singa_core::Shape::new(dims).unwrap();
        TensorSpec::new("x", shape, DType::F32)
    };
    let labels = TensorSpec::new("label", [4usize], DType::I32);
    // Built-in layers declare no examples; these are the ones the fallback (a [4, 8] input,
    // default fields) cannot set up.
    let examples = |name: &str| -> Option<Vec<LayerExample>> {
        let (fields, inputs) = match name {
            "inner_product" => (Fields::new().with("num_output", 3i64), vec![x(&[4, 8])]),
            "activation" => (Fields::new().with("function", "sigmoid"), vec![x(&[4, 8])]),
            "convolution" => (
                Fields::new()
                    .with("num_filters", 2i64)
                    .with("kernel", 3i64)
                    .with("pad", 1i64),
                vec![x(&[2, 3, 5, 5])],
            ),
            "pooling" => (
                Fields::new().with("kernel", 2i64).with("stride", 2i64),
                vec![x(&[2, 3, 4, 4])],
            ),
            "slice" => (Fields::new().with("num_slices", 2i64), vec![x(&[4, 8])]),
            "reshape" => (
                Fields::new().with(
                    "shape",
                    FieldValue::List(
                        vec![FieldValue::Int(0), FieldValue::Int(2), FieldValue::Int(4)].into(),
                    ),
                ),
                vec![x(&[4, 8])],
            ),
            "accuracy" | "softmax_loss" => (Fields::new(), vec![x(&[4, 5]), labels.clone()]),
            "euclidean_loss" => (Fields::new(), vec![x(&[4, 3]), x(&[4, 3])]),
            "embedding" => (
                Fields::new()
                    .with("vocab_size", 5i64)
                    .with("feature_dim", 3i64),
                vec![TensorSpec::new("ids", [4usize, 2], DType::I32)],
            ),
            "gru" => (
                Fields::new().with("hidden_dim", 3i64),
                vec![x(&[4, 8]), x(&[4, 3])],
            ),
            "lstm" => (
                Fields::new().with("hidden_dim", 3i64),
                vec![x(&[4, 8]), x(&[4, 3]), x(&[4, 3])],
            ),
            "recurrent_state" => (
                Fields::new().with("hidden_dim", 3i64).with("from", "x"),
                vec![x(&[4, 8])],
            ),
            "one_hot" => (
                Fields::new().with("vocab_size", 5i64),
                vec![TensorSpec::new("ids", [4usize, 2], DType::I32)],
            ),
            _ => return None,
        };
        Some(vec![LayerExample::new(fields, inputs)])
    };
    let mut failures = Vec::new();
    for name in registry.layer_names() {
        let mut ty = registry.layer(name).unwrap().clone();
        // Input layers read shards, and argsort's output is integers: no gradients to check.
        // An RBM's backward is the CD estimate, not its forward's gradient (checked against
        // its formulas in singa-layers/tests/rbm.rs).
        let rbm = ty.role != singa_core::LayerRole::Plain;
        if rbm {
            // The checker says so instead of checking.
            let v = singa::plugins::check::check_layer(&ty);
            assert!(
                v.failure.is_none() && v.findings[0].contains("RBM's"),
                "{name}: {v:?}"
            );
        }
        if ty.fields.iter().any(|f| f.name == "path") || name == "argsort" || rbm {
            continue;
        }
        if let Some(e) = examples(name) {
            ty.examples = e.into();
        }
        if let Some(f) = plugins::check::check_layer(&ty).failure {
            failures.push(format!("{name}: {f}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let bad = singa_core::layer_type::<AccumulatingIdentity>();
    let verdict = plugins::check::check_layer(&bad);
    let failure = verdict.failure.expect("the accumulating layer is caught");
    assert!(
        failure.contains(
            "backward adds to the gradient buffers it is given instead of overwriting them"
        ),
        "{failure}"
    );
}
