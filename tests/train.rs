//! Datasets, splits, training with resume, and evaluation, on small pieces of the real
//! Kather and PCam data.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;
use common::*;
use histomap::learn::augment::Augment;
use histomap::learn::dataset::Dataset;
use histomap::learn::evaluate::{evaluate, EvalOptions};
use histomap::learn::train::{split_dataset, train, Quiet, Resume, TrainOptions};
use histomap::model::{read_card, Architecture, ModelCard, Precision};
use histomap::pipeline::Pipeline;

fn kather_classes() -> Vec<String> {
    Pipeline::load(&pipeline("kather8")).unwrap().class_names()
}

#[test]
fn class_folders_give_kather_patients_as_groups() {
    let d = Dataset::load(&data().join("kather2016"), &kather_classes()).unwrap();
    assert_eq!(d.samples.len(), 228);
    assert!(d.class_counts().iter().all(|&c| c > 0));
    let groups: HashSet<&str> = d.samples.iter().map(|s| s.group.as_str()).collect();
    assert_eq!(groups.len(), 8, "{groups:?}");
    assert!(groups.contains("CRC-Prim-HE-07"));
}

/// macOS leaves `._name` files beside copied tiles: they are not tiles.
#[test]
fn hidden_files_in_class_folders_are_not_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let real = Dataset::load(&data().join("kather2016"), &kather_classes()).unwrap();
    for (folder, sample) in [
        ("01_TUMOR", &real.samples[0]),
        ("02_STROMA", &real.samples[40]),
    ] {
        let to = dir.path().join(folder);
        fs::create_dir(&to).unwrap();
        let histomap::learn::dataset::Tile::File(file) = &sample.tile else {
            panic!("class folders hold files")
        };
        fs::copy(file, to.join("tile.tif")).unwrap();
        fs::write(to.join("._tile.tif"), b"AppleDouble").unwrap();
    }
    let mut d = Dataset::load(dir.path(), &kather_classes()).unwrap();
    assert_eq!(d.samples.len(), 2);
    d.check(false).unwrap();
}

#[test]
fn grouped_folds_on_real_patients() {
    let mut d = Dataset::load(&data().join("kather2016"), &kather_classes()).unwrap();
    let checked = d.check(false).unwrap();
    assert!(checked.skipped.is_empty());
    assert_eq!(checked.size_warning(150), None, "Kather tiles are 150 px");
    assert!(checked
        .size_warning(96)
        .unwrap()
        .starts_with("228 of 228 tiles"));
    let hashes = checked.hashes;
    let folds = histomap::learn::split::grouped_folds(&d.samples, &hashes, 8, 4, 0);
    let mut fold_of_group: HashMap<&str, usize> = HashMap::new();
    for (s, &f) in d.samples.iter().zip(&folds) {
        assert_eq!(
            *fold_of_group.entry(&s.group).or_insert(f),
            f,
            "{} in two folds",
            s.group
        );
    }
    for dup in histomap::learn::dataset::duplicates(&hashes) {
        assert!(
            dup.iter().all(|&i| folds[i] == folds[dup[0]]),
            "duplicate straddles folds"
        );
    }
    assert_eq!(folds.iter().collect::<HashSet<_>>().len(), 4);
}

#[test]
fn pcam_manifest_and_kaggle_layout() {
    let classes = vec!["normal".to_string(), "tumor".to_string()];
    let d = Dataset::load(&data().join("pcam/labels.csv"), &classes).unwrap();
    assert_eq!(d.samples.len(), 23_000);
    assert_eq!(
        d.samples
            .iter()
            .filter(|s| s.split.as_deref() == Some("valid"))
            .count(),
        3000
    );

    // The Kaggle layout, made from a few real patches: train/<id>.tif + train_labels.csv.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("train")).unwrap();
    let mut csv = String::from("id,label\n");
    for (i, s) in d.samples.iter().take(6).enumerate() {
        let id = format!("{i:040x}");
        s.tile
            .read()
            .unwrap()
            .save(dir.path().join(format!("train/{id}.tif")))
            .unwrap();
        csv.push_str(&format!("{id},{}\n", s.label));
    }
    fs::write(dir.path().join("train_labels.csv"), csv).unwrap();
    let k = Dataset::load(dir.path(), &classes).unwrap();
    assert_eq!(k.samples.len(), 6);
    assert_eq!(k.samples[0].label, d.samples[0].label);

    // Labels outside the pipeline's classes are named.
    let bad = dir.path().join("bad.csv");
    fs::write(&bad, "path,label\ntrain/x.tif,7\n").unwrap();
    let err = Dataset::load(&bad, &classes).unwrap_err().to_string();
    assert!(err.contains("bad.csv") && err.contains("\"7\""), "{err}");
}

/// A small PCam manifest: `n` train and `n / 2` valid patches, both classes.
fn tiny_pcam(dir: &Path, n: usize) -> PathBuf {
    let labels = fs::read_to_string(data().join("pcam/labels.csv")).unwrap();
    let rows: Vec<Vec<&str>> = labels
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let pick = |split: &str, label: &str, k: usize| -> Vec<String> {
        rows.iter()
            .filter(|r| r[1] == split && r[2] == label)
            .take(k)
            .map(|r| {
                format!(
                    "{},{},{}",
                    data().join("pcam").join(r[0]).display(),
                    r[2],
                    r[1]
                )
            })
            .collect()
    };
    let mut out = String::from("path,label,split\n");
    for line in [
        pick("train", "0", n / 2),
        pick("train", "1", n / 2),
        pick("valid", "0", n / 4),
        pick("valid", "1", n / 4),
    ]
    .concat()
    {
        out.push_str(&line);
        out.push('\n');
    }
    let path = dir.join("tiny.csv");
    fs::write(&path, out).unwrap();
    path
}

#[test]
fn resume_gives_the_same_model_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_pcam(dir.path(), 32);
    let pipeline = Pipeline::load(&pipeline("pcam")).unwrap();
    let mut data = Dataset::load(&manifest, &pipeline.class_names()).unwrap();
    let hashes = data.check(false).unwrap().hashes;
    let split = split_dataset(&data, &hashes, &[], None, 0, 5, 0).unwrap();
    assert_eq!((split.train.len(), split.val.len()), (32, 16));
    let opts = TrainOptions {
        arch: Architecture::Smallcnn,
        epochs: 2,
        batch_size: 8,
        lr: 1e-3,
        weight_decay: 1e-4,
        patience: 10,
        seed: 3,
        augment: Augment {
            d4: true,
            hed: 0.05,
            scale: 0.1,
        },
        threads: 2,
        init: None,
        data: vec![manifest.clone()],
        ema: Some(0.9),
        fine_tune: Default::default(),
        warmup: None,
        stain_norm: histomap::stain::Method::None,
        stain_ref: None,
    };
    let dev = Device::Cpu;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let whole = train(
        &pipeline,
        &split,
        &a,
        &opts,
        Resume::default(),
        &dev,
        &Quiet,
    )
    .unwrap();
    assert!(whole.finished && whole.epochs_done == 2);
    // Interrupted after one epoch (as a kill after the checkpoint would), then resumed.
    let first = train(
        &pipeline,
        &split,
        &b,
        &opts,
        Resume {
            epochs_this_run: Some(1),
            ..Resume::default()
        },
        &dev,
        &Quiet,
    )
    .unwrap();
    assert!(!first.finished && first.epochs_done == 1);
    assert!(
        train(
            &pipeline,
            &split,
            &b,
            &opts,
            Resume::default(),
            &dev,
            &Quiet
        )
        .is_err(),
        "refuses to clobber a checkpoint"
    );
    let resumed = train(
        &pipeline,
        &split,
        &b,
        &opts,
        Resume {
            resume: true,
            ..Resume::default()
        },
        &dev,
        &Quiet,
    )
    .unwrap();
    assert!(resumed.finished && resumed.epochs_done == 2);

    let load = |p: &Path| {
        candle_core::safetensors::load(p.join("checkpoint-2.safetensors"), &dev).unwrap()
    };
    let (ta, tb) = (load(&a), load(&b));
    assert_eq!(ta.len(), tb.len());
    // The weight average is checkpointed, and it is what the model folder holds.
    let model = candle_core::safetensors::load(a.join("model.safetensors"), &dev).unwrap();
    let fc = "fc.weight";
    assert!(max_abs_diff(&model[fc], &ta[&format!("ema.{fc}")]) < 1e-6);
    assert!(max_abs_diff(&model[fc], &ta[&format!("model.{fc}")]) > 1e-4);
    let card: serde_json::Value =
        serde_json::from_slice(&fs::read(a.join("card.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["ema"], 0.9, "the card records the average");
    // What `train` records when a run finishes: int8 against f32 on the validation
    // tiles, in the card.
    let check = histomap::learn::calibrate::after_training(&a, &split.val, 8, 2)
        .unwrap()
        .int8
        .unwrap();
    assert_eq!(check.tiles, 16);
    let card: serde_json::Value =
        serde_json::from_slice(&fs::read(a.join("card.json")).unwrap()).unwrap();
    assert_eq!(card["int8"]["tiles"], 16);
    assert_eq!(card["int8"]["data"], "its 16 validation tiles");
    let none = histomap::learn::calibrate::after_training(&a, &[], 8, 2).unwrap_err();
    assert!(none.contains("no validation tiles"), "{none}");
    for (name, t) in &ta {
        assert!(
            max_abs_diff(t, &tb[name]) < 1e-6,
            "{name} differs after resume"
        );
    }
    let strip = |p: &Path| -> Vec<String> {
        fs::read_to_string(p.join("training.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(strip(&a), strip(&b), "same history apart from timings");

    // The card round-trips and says how the model was made.
    let card = read_card(&a).unwrap();
    assert!(card.trained);
    let rec = card.training.as_ref().unwrap();
    assert_eq!((rec.train_files, rec.val_files, rec.seed), (32, 16, 3));
    assert_eq!(rec.split_sha256.len(), 64);
    assert_eq!(
        rec.validation.as_deref(),
        Some("the data's own valid split")
    );
    assert_eq!(
        (rec.weight_decay, rec.patience),
        (Some(opts.weight_decay), Some(opts.patience))
    );
    let again: histomap::model::ModelCard =
        serde_json::from_str(&serde_json::to_string(&card).unwrap()).unwrap();
    assert_eq!(
        serde_json::to_value(&again).unwrap(),
        serde_json::to_value(&card).unwrap()
    );

    // Evaluate counts a duplicated tile once and writes its files.
    let dup_manifest = dir.path().join("dup.csv");
    let text = fs::read_to_string(&manifest).unwrap();
    let last = text.lines().last().unwrap().to_string();
    fs::write(&dup_manifest, format!("{text}{last}\n")).unwrap();
    let opts = EvalOptions {
        split: Some("valid".into()),
        tta: true,
        precision: Precision::F32,
        batch_size: 16,
        threads: 2,
        skip_bad: false,
        stain: None,
    };
    let e = evaluate(
        &a,
        &dup_manifest,
        &dir.path().join("eval"),
        &opts,
        &dev,
        &Quiet,
    )
    .unwrap();
    assert_eq!((e.metrics.n, e.duplicates_dropped), (16, 1));
    assert!(e.metrics.roc_auc.is_some());
    for f in [
        "eval/metrics.json",
        "eval/confusion.png",
        "eval/roc.png",
        "a/curves.png",
        "a/training.csv",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("eval/predictions.csv"))
            .unwrap()
            .lines()
            .count(),
        17
    );
}

#[test]
fn train_resumes_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_pcam(dir.path(), 32);
    let out = dir.path().join("model");
    let args = |cmd: &mut std::process::Command| {
        cmd.args([
            "train",
            "-q",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--seed",
            "1",
            "--pipeline",
        ])
        .arg(pipeline("pcam"))
        .arg("--data")
        .arg(&manifest)
        .arg("--out")
        .arg(&out);
    };
    let bin = assert_cmd::cargo::cargo_bin("histomap");
    let mut cmd = std::process::Command::new(&bin);
    args(&mut cmd);
    let mut child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
    // Kill as soon as the first epoch's checkpoint is complete (its state file is written last).
    let state = out.join("checkpoint.json");
    let start = std::time::Instant::now();
    while !state.is_file() {
        assert!(start.elapsed().as_secs() < 300, "no checkpoint after 300 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let rows = |p: &Path| {
        fs::read_to_string(p.join("training.csv"))
            .unwrap()
            .lines()
            .count()
            - 1
    };
    let done = rows(&out);
    assert!((1..3).contains(&done), "{done} epochs before the kill");

    let mut cmd = std::process::Command::new(&bin);
    args(&mut cmd);
    let status = cmd
        .arg("--resume")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        rows(&out),
        3,
        "resumed to the end, no epoch repeated or lost"
    );
    assert!(read_card(&out).unwrap().trained);
    let checkpoints = fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .count();
    assert_eq!(checkpoints, 1, "older checkpoints are removed");
}

/// `--init` copies the weights whose names and shapes match (the 2-class head of a PCam
/// model does not fit kather8's 8 classes), `--extra-train` adds training tiles and
/// `--no-val` trains on every tile with no validation metrics in the card; `--stain-norm`
/// fits its target on the training tiles and records both in the card.
#[test]
fn init_extra_train_and_no_val() {
    let dir = tempfile::tempdir().unwrap();
    let kather = data().join("kather2016");
    let (tiles, extra) = (dir.path().join("tiles"), dir.path().join("extra"));
    for folder in fs::read_dir(&kather).unwrap().map(|e| e.unwrap().path()) {
        if !folder.is_dir() {
            continue;
        }
        let name = folder.file_name().unwrap();
        let mut files: Vec<PathBuf> = fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for (to, file) in [
            (&tiles, &files[0]),
            (&tiles, &files[1]),
            (&extra, &files[2]),
        ] {
            fs::create_dir_all(to.join(name)).unwrap();
            fs::copy(file, to.join(name).join(file.file_name().unwrap())).unwrap();
        }
    }
    let init = model("pcam", Architecture::Smallcnn);
    let out = dir.path().join("model");
    histomap()
        .args(["train", "-q", "--no-val", "--epochs", "1", "--lr", "0"])
        .args(["--batch-size", "8", "--stain-norm", "macenko", "--pipeline"])
        .arg(pipeline("kather8"))
        .arg("--data")
        .arg(&tiles)
        .arg("--extra-train")
        .arg(&extra)
        .arg("--init")
        .arg(&init)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let card = read_card(&out).unwrap();
    let record = card.training.as_ref().unwrap();
    assert_eq!((record.train_files, record.val_files), (24, 0));
    assert_eq!(record.init.as_deref(), Some(init.as_path()));
    assert_eq!(
        record.validation.as_deref(),
        Some("none (--no-val: every tile trains)")
    );
    assert_eq!(record.data, [tiles, extra]);
    assert!(card.metrics.is_empty(), "no validation, no metrics");
    // Normalised in training, so heatmap and evaluate normalise by default.
    assert_eq!(card.stain_norm, histomap::stain::Method::Macenko);
    let target = card.stain_target.as_ref().unwrap();
    assert_eq!(target.fitted_on, "24 of its training tiles");
    let json = |n: &histomap::pipeline::Normalization| serde_json::to_value(n).unwrap();
    assert_eq!(
        json(&card.normalization),
        json(&read_card(&init).unwrap().normalization),
        "a network started from another keeps its input scale"
    );
    let load = |p: &Path| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let (ours, theirs) = (
        load(&out.join("model.safetensors")),
        load(&init.join("model.safetensors")),
    );
    // Learning rate 0: copied weights are still the init model's.
    let conv = "features.0.0.weight";
    assert_eq!(common::max_abs_diff(&ours[conv], &theirs[conv]), 0.0);
    assert_eq!(ours["fc.weight"].dims(), [8, 256]);
    assert_eq!(theirs["fc.weight"].dims(), [2, 256]);
}

/// Trains `arch` for one epoch on 16 PCam tiles from the ImageNet weights that setup
/// installs (scripts/fetch-imagenet.sh), body frozen, and checks what that promises:
/// every body tensor stays as ImageNet left it, the new head (`head`, weight) has one
/// row per class, and the card records the start and ImageNet's normalisation.
fn frozen_fine_tune(arch: &str, head: &str) -> (tempfile::TempDir, PathBuf, ModelCard) {
    let imagenet = common::root().join(format!("imagenet/{arch}/model.safetensors"));
    assert!(
        imagenet.is_file(),
        "{} is missing: run scripts/fetch-imagenet.sh (scripts/setup.sh does)",
        imagenet.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_pcam(dir.path(), 16);
    let out = dir.path().join("model");
    histomap()
        .current_dir(common::root())
        .args(["train", "-q", "--arch", arch, "--init", "imagenet"])
        .args([
            "--freeze-body",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--pipeline",
        ])
        .arg(pipeline("pcam"))
        .arg("--data")
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let card = read_card(&out).unwrap();
    assert_eq!(card.architecture.to_string(), arch);
    assert_eq!(card.normalization.mean, [0.485, 0.456, 0.406]);
    let record = card.training.as_ref().unwrap();
    let tune = record.fine_tune.expect("the card records the fine-tuning");
    assert!(tune.imagenet && tune.freeze_body);
    assert!(record
        .init
        .as_ref()
        .unwrap()
        .ends_with(format!("imagenet/{arch}")));
    let load = |p: &Path| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let (ours, theirs) = (load(&out.join("model.safetensors")), load(&imagenet));
    for (name, t) in &theirs {
        assert_eq!(common::max_abs_diff(&ours[name], t), 0.0, "{name} moved");
    }
    assert_eq!(ours[head].dims(), [2, 1280]);
    (dir, out, card)
}

/// EfficientNet-Lite0 fine-tunes from its ImageNet weights (`frozen_fine_tune`).
#[test]
fn efficientnet_lite0_fine_tunes_from_imagenet_weights() {
    frozen_fine_tune("efficientnet-lite0", "_fc.weight");
}

/// MobileNetV2 fine-tunes from its ImageNet weights (`frozen_fine_tune`), then maps a
/// real slide in what its recorded int8 check lets `auto` run, saying so once where
/// that is f32.
#[test]
fn mobilenetv2_fine_tunes_from_imagenet_weights() {
    let (dir, out, card) = frozen_fine_tune("mobilenetv2", "classifier.1.weight");
    let maps = dir.path().join("maps");
    let svs = data().join("slides/cmu_small_region.svs");
    let run = assert_cmd::Command::from_std(common::heatmap_command("pcam", &out, &maps, &svs))
        .assert()
        .success();
    // The end of `train` measured int8 on the validation tiles; `auto` follows that
    // record, and where it runs f32 it says why, once.
    let stderr = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    assert!(card.int8.is_some(), "train records the int8 check");
    let f32_runs = usize::from(card.int8_refusal().is_some());
    assert_eq!(
        stderr.matches("running in f32").count(),
        f32_runs,
        "{stderr}"
    );
}

/// A truncated TIFF and a text file named `.jpg` among real Kather tiles: without
/// `--skip-bad` the first is an error naming it before any work starts; with it both
/// are left out, counted and (by `evaluate`) listed.
#[test]
fn unreadable_tiles_are_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let tiles = dir.path().join("tiles");
    let mut firsts = Vec::new();
    for folder in fs::read_dir(data().join("kather2016")).unwrap() {
        let folder = folder.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let to = tiles.join(folder.file_name().unwrap());
        fs::create_dir_all(&to).unwrap();
        fs::copy(&files[0], to.join(files[0].file_name().unwrap())).unwrap();
        firsts.push(files[0].clone());
    }
    firsts.sort();
    let truncated = tiles.join("01_TUMOR/truncated.tif");
    fs::write(&truncated, &fs::read(&firsts[0]).unwrap()[..600]).unwrap();
    let text = tiles.join("03_COMPLEX/notes.jpg");
    fs::write(&text, "not an image\n").unwrap();

    let mut d = Dataset::load(&tiles, &kather_classes()).unwrap();
    assert_eq!(d.samples.len(), 10);
    let err = d.check(false).unwrap_err().to_string();
    assert_eq!(
        d.samples.len(),
        10,
        "a failed check leaves the dataset as it was"
    );
    assert!(
        err.contains("truncated.tif") && !err.contains('\n'),
        "{err}"
    );
    let checked = d.check(true).unwrap();
    assert_eq!((d.samples.len(), checked.hashes.len()), (8, 8));
    let bad: Vec<&str> = checked.skipped.iter().map(|b| b.tile.as_str()).collect();
    assert_eq!(
        bad,
        [truncated.display().to_string(), text.display().to_string()]
    );

    let split_csv = dir.path().join("split.csv");
    let split = |skip: bool| {
        let mut cmd = histomap();
        cmd.args(["split", "--folds", "2", "-p"])
            .arg(pipeline("kather8"))
            .arg("--data")
            .arg(&tiles)
            .arg("-o")
            .arg(&split_csv);
        if skip {
            cmd.arg("--skip-bad");
        }
        cmd.assert()
    };
    let failed = split(false).failure();
    let stderr = String::from_utf8_lossy(&failed.get_output().stderr).to_string();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("truncated.tif") && !stderr.contains("panicked"));
    assert!(!split_csv.exists());
    let ok = split(true).success();
    let stderr = String::from_utf8_lossy(&ok.get_output().stderr).to_string();
    assert!(stderr.contains("skipped 2 unreadable tile(s)"), "{stderr}");
    assert_eq!(fs::read_to_string(&split_csv).unwrap().lines().count(), 9);

    let eval = dir.path().join("eval");
    histomap()
        .args(["evaluate", "--skip-bad", "--model"])
        .arg(model("kather8", Architecture::Smallcnn))
        .arg("--data")
        .arg(&tiles)
        .arg("-o")
        .arg(&eval)
        .assert()
        .success();
    let metrics: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(eval.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["n"], 8);
    assert_eq!(metrics["skipped"].as_array().unwrap().len(), 2);
}

/// A data-given split can put the same bytes on both sides, and extra training tiles
/// can repeat a validation tile; validation leaves such tiles out, as they would score
/// as seen.
#[test]
fn a_given_split_never_validates_on_training_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_pcam(dir.path(), 8);
    let text = fs::read_to_string(&manifest).unwrap();
    let train_row = text.lines().nth(1).unwrap();
    let as_valid = train_row.replace(",train", ",valid");
    fs::write(&manifest, format!("{text}{as_valid}\n")).unwrap();
    let mut data = Dataset::load(&manifest, &["normal".into(), "tumor".into()]).unwrap();
    let hashes = data.check(false).unwrap().hashes;
    let split = split_dataset(&data, &hashes, &[], None, 0, 5, 0).unwrap();
    assert_eq!(
        (
            split.train.len(),
            split.val.len(),
            split.val_duplicates_dropped
        ),
        (8, 4, 1)
    );
    let first_valid = data
        .samples
        .iter()
        .position(|s| s.split.as_deref() == Some("valid"));
    let extra = [hashes[first_valid.unwrap()]];
    let split = split_dataset(&data, &hashes, &extra, None, 0, 5, 0).unwrap();
    assert_eq!((split.val.len(), split.val_duplicates_dropped), (3, 2));

    // A second copy inside validation counts once, as `evaluate` counts it.
    let valid_row = text.lines().last().unwrap();
    fs::write(&manifest, format!("{text}{as_valid}\n{valid_row}\n")).unwrap();
    let mut data = Dataset::load(&manifest, &["normal".into(), "tumor".into()]).unwrap();
    let hashes = data.check(false).unwrap().hashes;
    let split = split_dataset(&data, &hashes, &[], None, 0, 5, 0).unwrap();
    assert_eq!((split.val.len(), split.val_duplicates_dropped), (4, 2));
}

/// Tile paths with commas and quotes stay one field each in `predictions.csv`.
#[test]
fn predictions_csv_quotes_awkward_paths() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_pcam(dir.path(), 4);
    let text = fs::read_to_string(&manifest).unwrap();
    let mut rows = String::from("path,label\n");
    for (i, line) in text.lines().skip(1).enumerate() {
        let (path, rest) = line.split_once(',').unwrap();
        let label = rest.split(',').next().unwrap();
        let name = format!("tile,{i} \"x\".jpg");
        fs::copy(path, dir.path().join(&name)).unwrap();
        rows.push_str(&format!("\"{}\",{label}\n", name.replace('"', "\"\"")));
    }
    let quoted = dir.path().join("quoted.csv");
    fs::write(&quoted, rows).unwrap();
    let opts = EvalOptions {
        split: None,
        tta: false,
        precision: Precision::F32,
        batch_size: 4,
        threads: 1,
        skip_bad: false,
        stain: None,
    };
    let out = dir.path().join("eval");
    let models = root().join("models/pcam");
    evaluate(&models, &quoted, &out, &opts, &Device::Cpu, &Quiet).unwrap();
    let mut reader = csv::Reader::from_path(out.join("predictions.csv")).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 6);
    for r in &records {
        assert_eq!(r.len(), 5, "{r:?}");
        assert!(
            r[0].contains("/tile,") && r[0].ends_with(" \"x\".jpg"),
            "{r:?}"
        );
    }
}

/// PCam's own HDF5 layout, on `fixtures/pcam-h5` (real patches, written by
/// `scripts/make-pcam-h5.py`): patches read one at a time with their labels, the split
/// from the file names, groups from the meta CSV; `train` and `evaluate` run on it;
/// broken files get one line naming them.
#[test]
fn pcam_hdf5_layout() {
    let h5 = root().join("fixtures/pcam-h5");
    let classes = vec!["normal".to_string(), "tumor".to_string()];
    let mut d = Dataset::load(&h5, &classes).unwrap();
    let of = |split: &str| -> Vec<&histomap::learn::dataset::Sample> {
        d.samples
            .iter()
            .filter(|s| s.split.as_deref() == Some(split))
            .collect()
    };
    let (train, valid) = (of("train"), of("valid"));
    let labels =
        |v: &[&histomap::learn::dataset::Sample]| v.iter().map(|s| s.label).collect::<Vec<_>>();
    assert_eq!(labels(&train), [0, 0, 0, 0, 1, 1, 1, 1]);
    assert_eq!(labels(&valid), [0, 0, 1, 1]);
    assert_eq!(train[2].group, "slide_b");
    assert_eq!(valid[3].group, "camelyonpatch_level_2_split_valid_x.h5[3]");
    let name = train[0].tile.name();
    assert!(
        name.ends_with("camelyonpatch_level_2_split_train_x.h5[0]"),
        "{name}"
    );
    let png = image::open(h5.join("train_0.png")).unwrap().into_rgb8();
    assert_eq!(train[0].tile.read().unwrap(), png, "pixels as stored");
    let checked = d.check(false).unwrap();
    assert!(checked.skipped.is_empty());
    assert!(histomap::learn::dataset::duplicates(&checked.hashes).is_empty());

    let dir = tempfile::tempdir().unwrap();
    let (model_dir, eval) = (dir.path().join("model"), dir.path().join("eval"));
    histomap()
        .args(["train", "-q", "--epochs", "1", "--batch-size", "4", "-p"])
        .arg(pipeline("pcam"))
        .arg("--data")
        .arg(&h5)
        .arg("-o")
        .arg(&model_dir)
        .assert()
        .success();
    let card = read_card(&model_dir).unwrap();
    let record = card.training.as_ref().unwrap();
    assert_eq!((record.train_files, record.val_files), (8, 4));
    histomap()
        .args(["evaluate", "--split", "valid", "--model"])
        .arg(&model_dir)
        .arg("--data")
        .arg(&h5)
        .arg("-o")
        .arg(&eval)
        .assert()
        .success();
    let predictions = fs::read_to_string(eval.join("predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 5);
    assert!(predictions.contains("camelyonpatch_level_2_split_valid_x.h5[3],tumor,"));

    // Broken inputs: each an error naming the file.
    let broken = |files: &[(&str, &[u8])], expect: &str| {
        let b = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            fs::write(b.path().join(name), bytes).unwrap();
        }
        let err = Dataset::load(b.path(), &classes).unwrap_err().to_string();
        assert!(err.contains(expect) && !err.contains('\n'), "{err}");
    };
    let read = |f: &str| fs::read(h5.join(format!("camelyonpatch_level_2_split_{f}.h5"))).unwrap();
    broken(
        &[("a_x.h5", b"not HDF5"), ("a_y.h5", &read("train_y"))],
        "a_x.h5: not a readable HDF5 file",
    );
    broken(
        &[("a_x.h5", &read("train_x")), ("a_y.h5", &read("valid_y"))],
        "a_y.h5: 4 labels for the 8 patches",
    );
    broken(&[("a_x.h5", &read("train_x"))], "a_y.h5: missing");
    broken(&[("a_x.h5.gz", b"")], "gunzip them first");

    // PCam ships a test split beside train and valid: `split` and `train` leave it out.
    let with_test = dir.path().join("with-test");
    fs::create_dir(&with_test).unwrap();
    for f in fs::read_dir(&h5).unwrap().map(|e| e.unwrap().path()) {
        fs::copy(&f, with_test.join(f.file_name().unwrap())).unwrap();
    }
    for xy in ["x", "y"] {
        fs::copy(
            h5.join(format!("camelyonpatch_level_2_split_valid_{xy}.h5")),
            with_test.join(format!("camelyonpatch_level_2_split_test_{xy}.h5")),
        )
        .unwrap();
    }
    let csv = dir.path().join("folds.csv");
    let out = histomap()
        .args(["split", "--folds", "2", "-p"])
        .arg(pipeline("pcam"))
        .arg("--data")
        .arg(&with_test)
        .arg("-o")
        .arg(&csv)
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains("left out the 4 tile(s) of the data's test split"),
        "{stderr}"
    );
    let folds = fs::read_to_string(&csv).unwrap();
    assert_eq!(folds.lines().count(), 13);
    assert!(!folds.contains("split_test_x.h5"));
}

/// What `train` cannot honour is refused on one line, before or instead of training:
/// options a resumed checkpoint would ignore, other tiles on resume, a validation fold
/// with no tiles, an --init model of another architecture, numbers out of range, a patch
/// too small for the network, a model already in --out (without --force), a folder
/// another run holds; and `init-model` does not overwrite a model.
#[test]
fn train_refuses_what_it_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_pcam(dir.path(), 16);
    let out = dir.path().join("model");
    let train_on = |pipeline_file: &Path, extra: &[&str], data: &Path, out: &Path| {
        let mut cmd = histomap();
        cmd.args(["train", "-q", "--epochs", "2", "--epochs-per-run", "1"])
            .args(["--batch-size", "8", "--pipeline"])
            .arg(pipeline_file)
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(out)
            .args(extra);
        cmd.assert()
    };
    let train =
        |extra: &[&str], data: &Path, out: &Path| train_on(&pipeline("pcam"), extra, data, out);
    let refused = |a: assert_cmd::assert::Assert, want: &str| {
        let a = a.failure();
        let err = String::from_utf8_lossy(&a.get_output().stderr);
        assert!(err.contains(want), "{want:?} not in {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    train(&[], &manifest, &out).success();
    refused(
        train(&["--resume", "--lr", "0.01"], &manifest, &out),
        "--resume: lr is 0.01 here but 0.001 in",
    );
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &manifest,
        text.lines().take(12).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    refused(
        train(&["--resume"], &manifest, &out),
        "--resume: the tiles differ",
    );
    fs::write(&manifest, &text).unwrap();
    // The same data spelled another way is the same data.
    let respelled = dir.path().join(".").join(manifest.file_name().unwrap());
    train(&["--resume"], &respelled, &out).success();
    // Another patch size is another task, even with the same options and tiles.
    let pcam64 = dir.path().join("pcam64.toml");
    let toml = fs::read_to_string(pipeline("pcam")).unwrap();
    fs::write(&pcam64, toml.replace("size = 96", "size = 64")).unwrap();
    refused(
        train_on(&pcam64, &["--resume"], &manifest, &out),
        "--resume: the pipeline's input_size is 64 here but 96 in",
    );

    // A run that stopped early stays stopped when resumed (lr 0: little can improve).
    let stopped = dir.path().join("stopped");
    let early = || {
        let mut cmd = histomap();
        cmd.args([
            "train",
            "-q",
            "--epochs",
            "6",
            "--patience",
            "1",
            "--lr",
            "0",
        ])
        .args(["--batch-size", "8", "--no-augment", "--pipeline"])
        .arg(pipeline("pcam"))
        .arg("--data")
        .arg(&manifest)
        .arg("--out")
        .arg(&stopped);
        cmd
    };
    let epochs = || {
        fs::read_to_string(stopped.join("training.csv"))
            .unwrap()
            .lines()
            .count()
            - 1
    };
    early().assert().success();
    let n = epochs();
    assert!(n < 6, "did not stop early");
    early().arg("--resume").assert().success();
    assert_eq!(epochs(), n, "resuming a stopped run trained it further");

    // A model without its checkpoint (as shipped) is replaced only when asked to.
    fs::remove_file(stopped.join("checkpoint.json")).unwrap();
    refused(early().assert(), "a model is already here; pass --force");
    refused(
        early().arg("--resume").assert(),
        "a model is already here; pass --force",
    );
    // Two runs never write one folder: the second finds the first's lock.
    let lock = fs::File::create(stopped.join(".train.lock")).unwrap();
    lock.try_lock().unwrap();
    refused(
        early().arg("--force").assert(),
        "another `histomap train` is writing to this folder",
    );
    drop(lock);
    early().arg("--force").assert().success();

    // Into a folder that does not exist yet, as other outputs may.
    let split = dir.path().join("splits/split.csv");
    histomap()
        .args(["split", "--folds", "3", "--pipeline"])
        .arg(pipeline("pcam"))
        .arg("--data")
        .arg(&manifest)
        .arg("--out")
        .arg(&split)
        .assert()
        .success();
    refused(
        train(
            &["--split", split.to_str().unwrap(), "--fold", "7"],
            &manifest,
            &dir.path().join("m2"),
        ),
        "no validation tiles in fold 7 of",
    );
    // A tile listed in two folds is refused, not read as whichever row came last.
    let rows = fs::read_to_string(&split).unwrap();
    let row = rows.lines().nth(1).unwrap();
    let (rest, fold) = row.rsplit_once(',').unwrap();
    let other = if fold == "0" { "1" } else { "0" };
    let twice = dir.path().join("twice.csv");
    fs::write(&twice, format!("{rows}{rest},{other}\n")).unwrap();
    refused(
        train(
            &["--split", twice.to_str().unwrap()],
            &manifest,
            &dir.path().join("m5"),
        ),
        &format!("is listed in fold {fold} and in fold {other}"),
    );

    // Four 2×2 poolings leave nothing of an 8 px patch.
    let pcam8 = dir.path().join("pcam8.toml");
    fs::write(
        &pcam8,
        toml.replace("size = 96", "size = 8")
            .replace("stride = 96", "stride = 8"),
    )
    .unwrap();
    let too_small = "a smallcnn needs an input of at least 16 px, not 8";
    refused(
        train_on(&pcam8, &[], &manifest, &dir.path().join("m8")),
        too_small,
    );
    let init_small = histomap()
        .args(["init-model", "-p"])
        .arg(&pcam8)
        .arg("-o")
        .arg(dir.path().join("m8"))
        .assert();
    refused(init_small, too_small);

    let resnet = dir.path().join("resnet");
    histomap()
        .args(["init-model", "--arch", "resnet18", "-p"])
        .arg(pipeline("pcam"))
        .arg("-o")
        .arg(&resnet)
        .assert()
        .success();
    let again = histomap()
        .args(["init-model", "-p"])
        .arg(pipeline("pcam"))
        .arg("-o")
        .arg(&resnet)
        .assert();
    refused(again, "exists; pass --force");
    refused(
        train(
            &["--init", resnet.to_str().unwrap()],
            &manifest,
            &dir.path().join("m3"),
        ),
        "does not fit the architecture being trained",
    );
    for bad in [["--lr", "nan"], ["--patience", "0"], ["--folds", "1"]] {
        refused(
            train(&bad, &manifest, &dir.path().join("m4")),
            "invalid value",
        );
    }
}

/// Manifests and split files are read as meant: split values in any case (`Train`,
/// `val`), an unknown value refused with its line, one tile under two labels refused, a
/// group column called `patient`, a split file valid for the data however its path is
/// spelled; and `split` writes neither over its own input nor a split of a single group.
#[test]
fn manifests_and_split_files_are_read_as_meant() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_pcam(dir.path(), 8);
    let text = fs::read_to_string(&manifest).unwrap();
    let classes = ["normal".to_string(), "tumor".to_string()];
    let load = |csv: &str| {
        fs::write(&manifest, csv).unwrap();
        Dataset::load(&manifest, &classes)
    };
    let respelled = text
        .replace(",train\n", ",Train\n")
        .replace(",valid\n", ",val\n");
    let spelled = load(&respelled).unwrap();
    let count = |name: &str| {
        (spelled.samples.iter())
            .filter(|s| s.split.as_deref() == Some(name))
            .count()
    };
    assert_eq!((count("train"), count("valid")), (8, 4));
    let err = load(&text.replacen(",train\n", ",holdout\n", 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2: split \"holdout\" is none of"),
        "{err}"
    );
    let (path, rest) = text.lines().nth(1).unwrap().split_once(',').unwrap();
    let other = if rest.starts_with('0') { 1 } else { 0 };
    let err = load(&format!("{text}{path},{other},train\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is labelled both"), "{err}");
    fs::write(&manifest, &text).unwrap();

    let split = |data: &Path, out: &Path| {
        let mut cmd = histomap();
        cmd.args(["split", "--folds", "2", "-p"])
            .arg(pipeline("pcam"))
            .arg("--data")
            .arg(data)
            .arg("-o")
            .arg(out);
        cmd.assert()
    };
    let refused = |a: assert_cmd::assert::Assert, want: &str| {
        let err = String::from_utf8_lossy(&a.failure().get_output().stderr).into_owned();
        assert!(err.contains(want) && err.lines().count() == 1, "{err}");
    };
    refused(split(&manifest, &manifest), "--out names the --data file");
    assert_eq!(fs::read_to_string(&manifest).unwrap(), text);
    let one_group = dir.path().join("one.csv");
    let grouped: String = (text.lines())
        .enumerate()
        .map(|(i, l)| format!("{l},{}\n", if i == 0 { "group" } else { "g" }))
        .collect();
    fs::write(&one_group, &grouped).unwrap();
    refused(
        split(&one_group, &dir.path().join("s.csv")),
        "are one group",
    );
    // The same column under another of its names.
    fs::write(&one_group, grouped.replacen(",group\n", ",patient\n", 1)).unwrap();
    refused(
        split(&one_group, &dir.path().join("s.csv")),
        "are one group",
    );

    // Written for one spelling of the Kather folder, read for another.
    let kather = data().join("kather2016");
    let written = Dataset::load(&kather, &kather_classes()).unwrap();
    let folds: Vec<usize> = (0..written.samples.len()).map(|i| i % 3).collect();
    let file = dir.path().join("kather-split.csv");
    histomap::learn::split::write_csv(&file, &written, &folds).unwrap();
    let other_spelling = data().join("kather2016/./../kather2016");
    let read = Dataset::load(&other_spelling, &kather_classes()).unwrap();
    assert_eq!(
        histomap::learn::split::read_csv(&file, &read).unwrap(),
        folds
    );
}
