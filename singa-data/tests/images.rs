//! Image data: the image-folder importer (directories and .tar.gz, both layouts, and the
//! mistakes it must name), the CIFAR-10 binary importer, mean files, and image preparation
//! (normalisation, crops, padding, mirrors, reproducible randomness). With `SINGA_DATA_DIR`
//! set, the real CIFAR-10 archive is imported too.

use image::{ImageFormat, Rgb, RgbImage};
use singa_data::image::{compute_mean, read_mean, write_mean};
use singa_data::import::import;
use singa_data::{BatchLoader, ImagePrep, ImageSpec, LoaderConfig, Mean, Shard};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("singa-images-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `w`×`h` image whose pixel (x, y) is (tag, x, y).
fn picture(tag: u8, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([tag, x as u8, y as u8]))
}

fn save(img: &RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let format = if path.extension().unwrap() == "png" {
        ImageFormat::Png
    } else {
        ImageFormat::Jpeg
    };
    img.save_with_format(path, format).unwrap();
}

/// `root/<split>/<class>/<n>.png` for splits train and test, classes cat and ant.
fn split_tree(root: &Path) {
    for (split, per_class) in [("train", 3), ("test", 1)] {
        for (c, class) in ["cat", "ant"].iter().enumerate() {
            for i in 0..per_class {
                save(
                    &picture(10 * c as u8 + i, 4, 3),
                    &root.join(split).join(class).join(format!("{i}.png")),
                );
            }
        }
    }
    std::fs::write(root.join("README.txt"), "not an image").unwrap();
}

fn records(path: &Path) -> Vec<(i32, Vec<u8>)> {
    let s = Shard::open(path).unwrap();
    (0..s.len())
        .map(|i| {
            let r = s.record(i).unwrap();
            (r.label.unwrap(), r.values.to_vec())
        })
        .collect()
}

#[test]
fn image_folder_with_splits_from_a_directory() {
    let dir = tmpdir("splits");
    split_tree(&dir.join("src"));
    let written = import("image-folder", &dir.join("src"), &dir.join("out")).unwrap();
    let names: Vec<(String, u64)> = written
        .iter()
        .map(|(p, n)| (p.file_name().unwrap().to_string_lossy().into_owned(), *n))
        .collect();
    assert_eq!(
        names,
        vec![
            ("test.shard".to_string(), 2),
            ("train.shard".to_string(), 6)
        ]
    );
    let shard = Shard::open(dir.join("out/train.shard")).unwrap();
    assert_eq!(shard.spec().shape, vec![3, 3, 4]);
    assert_eq!(
        shard.metadata()["classes"],
        serde_json::json!(["ant", "cat"])
    );
    // Sorted walk: ant (label 0) first; channel planes R, G (= x), B (= y).
    let recs = records(&dir.join("out/train.shard"));
    assert_eq!(recs[0].0, 0);
    assert_eq!(recs[0].1[..12], [10u8; 12]);
    assert_eq!(recs[0].1[12..16], [0, 1, 2, 3]);
    assert_eq!(recs[0].1[24..36], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    assert_eq!(recs[3].0, 1);
    assert_eq!(recs[3].1[0], 0);
}

#[test]
fn image_folder_from_a_wrapped_tar_gz_of_jpegs() {
    let dir = tmpdir("tar");
    // wrap/<class>/<n>.jpg: the single top folder is not a split name, so it is stripped.
    let src = dir.join("src");
    for (class, tag) in [("zebra", 200u8), ("apple", 50)] {
        for i in 0..2 {
            save(
                &picture(tag, 8, 8),
                &src.join("wrap").join(class).join(format!("{i}.jpg")),
            );
        }
    }
    let archive = dir.join("images.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&archive).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", &src).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let written = import("image-folder", &archive, &dir.join("out")).unwrap();
    assert_eq!(written.len(), 1);
    assert!(written[0].0.ends_with("data.shard"), "{:?}", written[0].0);
    let recs = records(&written[0].0);
    assert_eq!(recs.len(), 4);
    for (label, values) in recs {
        // JPEG is lossy: red is close to the tag of the class (apple 50 → 0, zebra 200 → 1).
        let red = values[..64].iter().map(|v| *v as f64).sum::<f64>() / 64.0;
        let want = if label == 0 { 50.0 } else { 200.0 };
        assert!((red - want).abs() < 6.0, "label {label}: mean red {red}");
    }
}

#[test]
fn image_folder_names_the_mistakes() {
    // An image that does not decode.
    let dir = tmpdir("bad");
    split_tree(&dir.join("src"));
    std::fs::write(dir.join("src/train/cat/broken.png"), b"not a png at all").unwrap();
    let e = import("image-folder", &dir.join("src"), &dir.join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("broken.png") && e.contains("cannot decode"),
        "{e}"
    );
    assert!(
        !dir.join("out/train.shard").exists(),
        "nothing half-written is left"
    );

    // An empty class folder.
    let dir = tmpdir("empty");
    split_tree(&dir.join("src"));
    std::fs::create_dir_all(dir.join("src/test/bee")).unwrap();
    let e = import("image-folder", &dir.join("src"), &dir.join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test/bee") && e.contains("no JPEG or PNG images"),
        "{e}"
    );

    // Images of different sizes.
    let dir = tmpdir("sizes");
    split_tree(&dir.join("src"));
    save(&picture(1, 5, 5), &dir.join("src/train/cat/9.png"));
    let e = import("image-folder", &dir.join("src"), &dir.join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("9.png") && e.contains("5×5") && e.contains("4×3"),
        "{e}"
    );

    // Nothing to import.
    let dir = tmpdir("nothing");
    std::fs::write(dir.join("a.txt"), "x").unwrap();
    let e = import("image-folder", &dir, &dir.join("out"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no JPEG or PNG images"), "{e}");
}

#[test]
fn cifar10_binary_batches() {
    let dir = tmpdir("cifar");
    let src = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&src).unwrap();
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| (i % 251) as u8));
        r
    };
    for f in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        let bytes: Vec<u8> = (0..3).flat_map(|i| record(i * 3)).collect();
        std::fs::write(src.join(f), bytes).unwrap();
    }
    let written = import("cifar10", &dir, &dir.join("out")).unwrap();
    assert_eq!(
        written.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![15, 3]
    );
    let recs = records(&dir.join("out/test.shard"));
    assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 3, 6]);
    assert_eq!(recs[1].1, record(3)[1..].to_vec());
    assert_eq!(
        Shard::open(dir.join("out/test.shard")).unwrap().metadata()["classes"][3],
        "cat"
    );

    std::fs::write(src.join("test_batch.bin"), vec![0u8; 3074]).unwrap();
    let e = import("cifar10", &dir, &dir.join("out2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_batch.bin") && e.contains("whole number of 3073-byte records"),
        "{e}"
    );
    std::fs::write(src.join("test_batch.bin"), record(12)).unwrap();
    let e = import("cifar10", &dir, &dir.join("out2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 12"), "{e}");
}

#[test]
fn mean_files_round_trip_and_refuse_other_shapes() {
    let dir = tmpdir("mean");
    split_tree(&dir.join("src"));
    import("image-folder", &dir.join("src"), &dir.join("out")).unwrap();
    let shard = Shard::open(dir.join("out/train.shard")).unwrap();
    let mean = compute_mean(&shard).unwrap();
    // Red is 0, 1, 2 for ant and 10, 11, 12 for cat: mean 6.
    assert!(
        mean[..12].iter().all(|v| (v - 6.0).abs() < 1e-6),
        "{mean:?}"
    );
    let path = dir.join("mean.shard");
    write_mean(&path, &[3, 3, 4], &mean, &dir).unwrap();
    assert_eq!(read_mean(&path, &[3, 3, 4]).unwrap(), mean);
    let e = read_mean(&path, &[3, 4, 4]).unwrap_err().to_string();
    assert!(
        e.contains("mean.shard") && e.contains("[3, 4, 4]") && e.contains("[3, 3, 4]"),
        "{e}"
    );
}

/// A 1-channel 4×4 image holding 1..=16.
fn ramp() -> Vec<f32> {
    (1..=16).map(|v| v as f32).collect()
}

#[test]
fn preparation_normalises_and_centre_crops_in_test() {
    let spec = ImageSpec {
        scale: 0.5,
        mean: Mean::PerChannel(vec![1.0]),
        std: vec![2.0],
        crop: Some((2, 2)),
        ..Default::default()
    };
    let prep = ImagePrep::new(&spec, &[1, 4, 4], false).unwrap();
    assert_eq!(prep.output_shape(), [1, 2, 2]);
    let mut out = [0.0; 4];
    prep.apply(&ramp(), &mut out, 0, 0);
    // The centre 6, 7, 10, 11, each (v · 0.5 − 1) / 2.
    assert_eq!(out, [1.0, 1.25, 2.0, 2.25]);

    let spec = ImageSpec {
        scale: 2.0,
        mean: Mean::Image(vec![1.0; 16]),
        ..Default::default()
    };
    let prep = ImagePrep::new(&spec, &[1, 4, 4], false).unwrap();
    let mut out = [0.0; 16];
    prep.apply(&ramp(), &mut out, 0, 0);
    assert_eq!(out[..3], [0.0, 2.0, 4.0]);

    let bad = ImageSpec {
        mean: Mean::Image(vec![0.0; 15]),
        ..Default::default()
    };
    assert!(ImagePrep::new(&bad, &[1, 4, 4], false)
        .unwrap_err()
        .to_string()
        .contains("mean image has 15 values"));
    let bad = ImageSpec {
        crop: Some((5, 4)),
        ..Default::default()
    };
    assert!(ImagePrep::new(&bad, &[1, 4, 4], false)
        .unwrap_err()
        .to_string()
        .contains("does not fit"));
    let bad = ImageSpec {
        std: vec![1.0, 2.0],
        ..Default::default()
    };
    assert!(ImagePrep::new(&bad, &[3, 4, 4], false)
        .unwrap_err()
        .to_string()
        .contains("std has 2 values for 3 channels"));
}

#[test]
fn training_crops_and_mirrors_are_random_but_reproducible() {
    let spec = ImageSpec {
        crop: Some((4, 4)),
        pad: 1,
        mirror: true,
        ..Default::default()
    };
    let prep = ImagePrep::new(&spec, &[1, 4, 4], true).unwrap();
    let img = ramp();
    let mut seen = std::collections::HashSet::new();
    for position in 0..400u64 {
        let mut a = [0.0; 16];
        let mut b = [0.0; 16];
        prep.apply(&img, &mut a, 7, position);
        prep.apply(&img, &mut b, 7, position);
        assert_eq!(a, b, "the same seed and position give the same image");
        // Every output is a shifted (by at most 1, padded with 0), maybe mirrored, window.
        let shifted = (-1..=1)
            .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
            .any(|(dy, dx)| {
                [false, true].iter().any(|&flip| {
                    (0..16).all(|i| {
                        let (y, x) = (i / 4, i % 4);
                        let x = if flip { 3 - x } else { x };
                        let (sy, sx) = (y as i32 + dy, x as i32 + dx);
                        let want = if (0..4).contains(&sy) && (0..4).contains(&sx) {
                            img[(sy * 4 + sx) as usize]
                        } else {
                            0.0
                        };
                        a[i] == want
                    })
                })
            });
        assert!(shifted, "position {position}: {a:?}");
        seen.insert(a.map(|v| v as i32));
    }
    // 9 offsets × 2 mirrors.
    assert_eq!(seen.len(), 18, "every crop and mirror occurs");
}

#[test]
fn loader_prepares_images_and_resumes_with_the_same_augmentation() {
    let dir = tmpdir("loader");
    split_tree(&dir.join("src"));
    import("image-folder", &dir.join("src"), &dir.join("out")).unwrap();
    let shard = Arc::new(Shard::open(dir.join("out/train.shard")).unwrap());
    let spec = ImageSpec {
        crop: Some((2, 3)),
        pad: 1,
        mirror: true,
        ..Default::default()
    };
    let config = LoaderConfig {
        shuffle: true,
        seed: 3,
        image: Some(ImagePrep::new(&spec, &[3, 3, 4], true).unwrap()),
        ..LoaderConfig::new(4)
    };
    let mut first = BatchLoader::new(shard.clone(), config.clone()).unwrap();
    let batches: Vec<(Vec<f32>, u64)> = (0..5)
        .map(|_| {
            let b = first.next_batch().unwrap();
            (b.data.clone(), b.cursor)
        })
        .collect();
    assert_eq!(batches[0].0.len(), 4 * 3 * 2 * 3);
    let mut resumed = BatchLoader::new(
        shard,
        LoaderConfig {
            cursor: batches[1].1,
            ..config
        },
    )
    .unwrap();
    for b in &batches[2..] {
        assert_eq!(&resumed.next_batch().unwrap().data, &b.0);
    }
}

/// The real CIFAR-10 archive (`SINGA_DATA_DIR/cifar10-jpeg/cifar10_jpeg_q75.tar.gz`).
#[test]
fn cifar10_jpeg_archive_imports_completely() {
    let Some(root) = std::env::var_os("SINGA_DATA_DIR") else {
        eprintln!(
            "skipped: SINGA_DATA_DIR is not set (the CIFAR-10 archive lives in ../shared/data)"
        );
        return;
    };
    let archive = Path::new(&root).join("cifar10-jpeg/cifar10_jpeg_q75.tar.gz");
    let dir = tmpdir("cifar-real");
    let written = import("image-folder", &archive, &dir).unwrap();
    assert_eq!(
        written.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![10_000, 50_000]
    );
    let train = Shard::open(dir.join("train.shard")).unwrap();
    assert_eq!(train.spec().shape, vec![3, 32, 32]);
    let classes =
        std::fs::read_to_string(Path::new(&root).join("cifar10-jpeg/batches.meta.txt")).unwrap();
    let classes: Vec<&str> = classes.split_whitespace().collect();
    assert_eq!(train.metadata()["classes"], serde_json::json!(classes));
    let mut counts = [0usize; 10];
    for i in 0..train.len() {
        counts[train.record(i).unwrap().label.unwrap() as usize] += 1;
    }
    assert_eq!(counts, [5000; 10]);
    let _ = std::fs::remove_dir_all(&dir);
}
