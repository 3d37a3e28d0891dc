//! `--precision`: the default (`auto`: int8, close calls again in f32) against the f32
//! reference through the CLI, on the shipped models and real data. The accuracy bounds:
//! argmax agreement ≥ 99.5 % over the shared Kather tiles, the PCam valid patches and
//! the real slides, and PCam valid ROC AUC within 0.002. The shipped cards' recheck
//! margins were chosen on PCam valid (PCam models) and on the real SVS and NDPI
//! (Kather models), so the Kather tiles and, for the PCam models, the slides are data
//! the margins never saw. Also: every kernel path gives the same predictions, `auto`
//! records what it ran, and the precision used is written to `summary.json` and
//! `metrics.json`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const MIN_AGREEMENT: f64 = 0.995;
const MAX_AUC_DIFF: f64 = 0.002;

/// Predicted class and class probabilities of each row of a `predictions.csv`, keyed by
/// the row's tile path or patch position.
fn predictions(csv: &Path) -> Vec<(String, String, Vec<f64>)> {
    let mut r = csv::Reader::from_path(csv).unwrap();
    let header = r.headers().unwrap().clone();
    let class = ["predicted", "class"]
        .iter()
        .find_map(|c| header.iter().position(|h| h == *c))
        .expect("a class column");
    let probs: Vec<usize> = (0..header.len())
        .filter(|&i| header[i].starts_with("prob_"))
        .collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            let key = format!("{},{}", &rec[0], &rec[1]);
            let p = probs.iter().map(|&i| rec[i].parse().unwrap()).collect();
            (key, rec[class].to_string(), p)
        })
        .collect()
}

/// Rows compared, rows with the same predicted class, and the largest probability change.
fn compare(reference: &Path, other: &Path) -> (usize, usize, f64) {
    let (a, b) = (predictions(reference), predictions(other));
    assert_eq!(
        a.len(),
        b.len(),
        "{} vs {}",
        reference.display(),
        other.display()
    );
    let mut same = 0;
    let mut max_diff = 0f64;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0, "rows in the same order");
        same += usize::from(x.1 == y.1);
        for (p, q) in x.2.iter().zip(&y.2) {
            max_diff = max_diff.max((p - q).abs());
        }
    }
    (a.len(), same, max_diff)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `evaluate` in one precision; returns its output folder.
fn evaluate(model: &str, data: &Path, split: Option<&str>, precision: &str, out: &Path) -> PathBuf {
    let dir = out.join(precision);
    let mut cmd = histomap();
    cmd.args(["evaluate", "-q", "--precision", precision, "--model"])
        .arg(root().join("models").join(model))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&dir);
    if let Some(s) = split {
        cmd.args(["--split", s]);
    }
    cmd.assert().success();
    assert_eq!(
        json(&dir.join("metrics.json"))["precision"],
        precision_name(precision)
    );
    dir
}

/// What `precision` in the records says for a requested precision on this CPU, for a
/// model whose card lets `auto` run int8.
fn precision_name(requested: &str) -> String {
    let isa = histomap::model::int8::Isa::detect().name();
    match requested {
        "int8" => format!("int8-{isa}"),
        // auto never runs the slow portable kernel
        "auto" if isa == "portable" => "f32".into(),
        "auto" => format!("int8-{isa}"),
        other => other.into(),
    }
}

fn assert_agrees(what: &str, (n, same, max_diff): (usize, usize, f64)) {
    let agreement = same as f64 / n as f64;
    eprintln!("{what}: {same}/{n} agree ({agreement:.4}), max |Δp| {max_diff:.4}");
    assert!(n > 0, "{what}: nothing compared");
    assert!(
        agreement >= MIN_AGREEMENT,
        "{what}: the default precision agrees with f32 on {same} of {n} ({agreement:.4} < {MIN_AGREEMENT})"
    );
}

#[test]
fn the_default_precision_agrees_with_f32_on_the_kather_tiles() {
    for model in ["kather8", "kather8-mobilenetv2"] {
        let out = tempfile::tempdir().unwrap();
        let data = data().join("kather2016");
        let f32 = evaluate(model, &data, None, "f32", out.path());
        let auto = evaluate(model, &data, None, "auto", out.path());
        let c = compare(&f32.join("predictions.csv"), &auto.join("predictions.csv"));
        assert_eq!(c.0, 228);
        assert_agrees(&format!("Kather 228 tiles, {model}"), c);
    }
}

#[test]
fn the_default_precision_agrees_with_f32_on_pcam_valid_and_keeps_its_auc() {
    let data = data().join("pcam/labels.csv");
    for model in ["pcam", "pcam-mobilenetv2"] {
        let out = tempfile::tempdir().unwrap();
        let f32 = evaluate(model, &data, Some("valid"), "f32", out.path());
        let auto = evaluate(model, &data, Some("valid"), "auto", out.path());
        let c = compare(&f32.join("predictions.csv"), &auto.join("predictions.csv"));
        assert!(c.0 > 2800, "{} PCam valid patches", c.0);
        assert_agrees(&format!("PCam valid, {model}"), c);
        let auc = |d: &Path| json(&d.join("metrics.json"))["roc_auc"].as_f64().unwrap();
        let (a, b) = (auc(&f32), auc(&auto));
        eprintln!("PCam valid ROC AUC, {model}: f32 {a:.5}, auto {b:.5}");
        assert!(
            (a - b).abs() <= MAX_AUC_DIFF,
            "{model}: ROC AUC f32 {a} vs auto {b}"
        );
    }
}

/// `heatmap` on one slide in one precision; returns the slide's output folder.
fn heatmap(pipeline_name: &str, slide: &Path, precision: &str, out: &Path) -> PathBuf {
    let dir = out.join(format!("{pipeline_name}-{precision}"));
    histomap()
        .args(["heatmap", "-q", "--precision", precision, "--pipeline"])
        .arg(pipeline(pipeline_name))
        .arg("--out")
        .arg(&dir)
        .arg(slide)
        .assert()
        .success();
    dir.join(slide.file_stem().unwrap())
}

#[test]
fn the_default_precision_agrees_with_f32_on_the_real_slides() {
    // Every patch of the real Aperio and Hamamatsu slides, of the 5000² mosaic of real
    // Kather tiles and of the Aperio region repeated 4 × 4, under the shipped models,
    // pooled.
    let out = tempfile::tempdir().unwrap();
    let mosaic = generated().join("kather5000.tif");
    let dense = generated().join("dense.tif");
    let mut total = (0, 0, 0f64);
    for (pipeline_name, slide) in [
        ("kather8", svs()),
        ("pcam", svs()),
        ("kather8", ndpi()),
        ("pcam", ndpi()),
        ("kather8", mosaic.clone()),
        ("pcam", mosaic),
        ("kather8", dense),
    ] {
        let f32 = heatmap(pipeline_name, &slide, "f32", out.path());
        let auto = heatmap(pipeline_name, &slide, "auto", out.path());
        for (dir, p) in [(&f32, "f32"), (&auto, "auto")] {
            let summary = json(&dir.join("summary.json"));
            assert_eq!(summary["job"]["precision"], p, "{}", dir.display());
            let used = &summary["model"]["precision"];
            assert_eq!(*used, precision_name(p), "{}", dir.display());
        }
        let c = compare(&f32.join("predictions.csv"), &auto.join("predictions.csv"));
        eprintln!("{pipeline_name} on {}: {c:?}", slide.display());
        total = (total.0 + c.0, total.1 + c.1, total.2.max(c.2));
    }
    assert!(total.0 > 2000, "{} patches", total.0);
    assert_agrees("real slides", total);
}

#[test]
fn every_kernel_path_predicts_the_same_and_auto_says_what_it_ran() {
    // The portable kernel, forced, gives byte-identical predictions to every vector
    // path this CPU runs; `auto` runs int8 where the CPU has a fast kernel, else f32.
    let out = tempfile::tempdir().unwrap();
    let run_on = |name: &str, kernel: &str, precision: &str| {
        let dir = out.path().join(format!("{name}-{kernel}-{precision}"));
        histomap()
            .env("HISTOMAP_KERNEL", kernel)
            .args(["heatmap", "-q", "--precision", precision, "--pipeline"])
            .arg(pipeline(name))
            .arg("--out")
            .arg(&dir)
            .arg(svs())
            .assert()
            .success();
        let slide = dir.join("cmu_small_region");
        let used = json(&slide.join("summary.json"))["model"]["precision"].clone();
        (std::fs::read(slide.join("predictions.csv")).unwrap(), used)
    };
    let run = |kernel: &str, precision: &str| run_on("kather8", kernel, precision);
    let (portable, used) = run("portable", "int8");
    assert_eq!(used, "int8-portable");
    let fastest = histomap::model::int8::Isa::detect();
    for isa in histomap::model::int8::Isa::ALL[1..]
        .iter()
        .filter(|i| i.available())
    {
        let (native, used) = run(isa.name(), "int8");
        assert_eq!(used, format!("int8-{}", isa.name()));
        assert!(
            portable == native,
            "portable and {isa:?} predictions differ"
        );
    }
    let (_, used) = run_on("pcam", "portable", "auto");
    assert_eq!(used, "f32", "auto does not pick the slow portable kernel");
    let (_, used) = run_on("pcam", fastest.name(), "auto");
    let expected = if fastest.name() == "portable" {
        "f32".to_string()
    } else {
        format!("int8-{}", fastest.name())
    };
    assert_eq!(used, expected);
}

#[test]
fn auto_falls_back_to_f32_with_a_warning_when_int8_is_off() {
    // A SmallCnn built by hand around an outlier: the first convolution outputs 10⁴ in
    // channel 0 and 1 in channel 1, everywhere; each later convolution sums channel 1
    // (then 0) over its 3 × 3 window; the head reads that channel as class 0's logit.
    // f32 gives class 0 a logit in the hundreds (probability 1); int8, which quantises
    // each activation tensor with one scale, rounds channel 1 to zero next to the
    // outlier, so every logit is 0 (probability 1/8). `auto` must notice on the first
    // patches, say so, and run in f32. Nothing depends on the patches or on chance.
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    let source = common::model("kather8", histomap::model::Architecture::Smallcnn);
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(source.join("card.json"), model.join("card.json")).unwrap();
    // A card whose recorded check passes: only the check on the first patches can stop it.
    record_int8_check(&model, 1.0, None);
    let dev = candle_core::Device::Cpu;
    let mut weights =
        candle_core::safetensors::load(source.join("model.safetensors"), &dev).unwrap();
    for (name, t) in weights.iter_mut() {
        // BatchNorm as the identity; everything else zero until set below.
        let identity = name.ends_with(".1.weight") || name.ends_with("running_var");
        let fill = if identity { 1f32 } else { 0.0 };
        *t = candle_core::Tensor::full(fill, t.shape(), &dev).unwrap();
    }
    let mut set = |name: &str, entries: &[(usize, f32)]| {
        let t = &weights[name];
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for &(i, x) in entries {
            v[i] = x;
        }
        let t = candle_core::Tensor::from_vec(v, t.shape(), &dev).unwrap();
        weights.insert(name.into(), t);
    };
    let window = |first: usize| (first..first + 9).map(|i| (i, 1.0)).collect::<Vec<_>>();
    set("features.0.0.bias", &[(0, 1e4), (1, 1.0)]);
    set("features.1.0.weight", &window(9)); // output 0 from input channel 1
    set("features.2.0.weight", &window(0));
    set("features.3.0.weight", &window(0));
    set("fc.weight", &[(0, 1.0)]);
    candle_core::safetensors::save(&weights, model.join("model.safetensors")).unwrap();

    let (summary, stderr) = heatmap_auto(&model, Some("kather8"), &work.path().join("out"));
    assert_eq!(summary["job"]["precision"], "auto");
    if histomap::model::int8::Isa::detect().name() == "portable" {
        return; // auto never tries the portable kernel
    }
    assert_eq!(summary["model"]["precision"], "f32", "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("running in f32"),
        "{stderr}"
    );
}

/// `heatmap` of the real SVS with `model` (and a pipeline file, if named) at the default
/// precision: its `summary.json` and what it printed on stderr.
fn heatmap_auto(
    model: &Path,
    pipeline_name: Option<&str>,
    out: &Path,
) -> (serde_json::Value, String) {
    let mut cmd = histomap();
    cmd.args(["heatmap", "-q", "--model"]).arg(model);
    if let Some(name) = pipeline_name {
        cmd.arg("--pipeline").arg(pipeline(name));
    }
    let run = cmd.arg("--out").arg(out).arg(svs()).assert().success();
    let stderr = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    (json(&out.join("cmu_small_region/summary.json")), stderr)
}

/// Writes an int8 check of this version's scheme with `agreement` into a model's card,
/// and a recheck margin if given.
fn record_int8_check(model: &Path, agreement: f64, recheck: Option<f64>) {
    let path = model.join("card.json");
    let mut card = json(&path);
    card["int8"] = serde_json::json!({
        "scheme": histomap::model::int8::SCHEME,
        "agreement": agreement,
        "tiles": 1000,
        "max_prob_diff": 0.01,
        "data": "test tiles",
        "histomap_version": "test",
    });
    if let Some(margin) = recheck {
        card["int8"]["recheck"] =
            serde_json::json!({"margin": margin, "share": 0.01, "int8_agreement": 0.99});
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&card).unwrap()).unwrap();
}

/// A copy of a shipped model's folder.
fn copy_model(name: &str, to: &Path) -> PathBuf {
    let dir = to.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["card.json", "model.safetensors"] {
        std::fs::copy(root().join("models").join(name).join(f), dir.join(f)).unwrap();
    }
    dir
}

#[test]
fn auto_runs_f32_where_the_card_records_int8_below_the_bar_and_int8_where_above() {
    let work = tempfile::tempdir().unwrap();
    let model = copy_model("pcam", work.path());
    let run = |agreement: f64| {
        record_int8_check(&model, agreement, None);
        heatmap_auto(&model, None, &work.path().join(format!("out-{agreement}")))
    };
    let (summary, stderr) = run(0.99);
    assert_eq!(summary["model"]["precision"], "f32");
    let note = summary["model"]["precision_note"]
        .as_str()
        .unwrap_or_default();
    assert!(
        note.contains("99.00% of 1000 patches of test tiles"),
        "{note}"
    );
    assert!(
        stderr.contains("warning") && stderr.contains("99.00%"),
        "{stderr}"
    );
    if histomap::model::int8::Isa::detect().name() == "portable" {
        return; // auto never runs the portable kernel
    }
    let (summary, _) = run(0.999);
    assert_ne!(summary["model"]["precision"], "f32");
    assert!(summary["model"].get("precision_note").is_none());
}

#[test]
fn auto_runs_the_close_calls_again_in_f32() {
    if histomap::model::int8::Isa::detect().name() == "portable" {
        return; // auto never runs the portable kernel
    }
    // A recheck margin no logit gap reaches makes every patch a close call: auto gives
    // f32's classes. One no gap is under gives int8's predictions, byte for byte.
    let work = tempfile::tempdir().unwrap();
    let model = copy_model("pcam", work.path());
    let run = |margin: f64| {
        record_int8_check(&model, 0.999, Some(margin));
        let out = work.path().join(format!("auto-{margin}"));
        let (summary, _) = heatmap_auto(&model, None, &out);
        (summary, out.join("cmu_small_region/predictions.csv"))
    };
    let explicit = |precision: &str| {
        let out = work.path().join(precision);
        histomap()
            .args(["heatmap", "-q", "--precision", precision, "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .arg(svs())
            .assert()
            .success();
        out.join("cmu_small_region/predictions.csv")
    };
    let (summary, all) = run(1e6);
    let (n, same, max_diff) = compare(&explicit("f32"), &all);
    assert_eq!(same, n, "every class f32's");
    assert!(max_diff < 1e-5, "{max_diff}");
    assert_eq!(summary["model"]["f32_rechecked"], n as u64);
    let (summary, none) = run(1e-12);
    assert!(summary["model"].get("f32_rechecked").is_none(), "{summary}");
    assert_eq!(
        std::fs::read(explicit("int8")).unwrap(),
        std::fs::read(none).unwrap()
    );
}

#[test]
fn calibrate_records_int8_against_f32_in_the_card_and_info_shows_it() {
    let work = tempfile::tempdir().unwrap();
    let model = copy_model("pcam", work.path());
    // Slides here; tiles are measured the same way at the end of `train` (tests/train.rs).
    let out = histomap()
        .args(["calibrate", "-q", "--stride", "48", "--model"])
        .arg(&model)
        .arg(svs())
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("int8 kept f32's class on"), "{stdout}");
    let card = json(&model.join("card.json"));
    let check = &card["int8"];
    assert_eq!(check["scheme"], histomap::model::int8::SCHEME);
    assert!(check["tiles"].as_u64().unwrap() > 200, "{check}");
    assert!(check["agreement"].as_f64().unwrap() >= 0.99, "{check}");
    let info = histomap()
        .args(["info", "--model"])
        .arg(&model)
        .assert()
        .success();
    let info = String::from_utf8_lossy(&info.get_output().stdout).to_string();
    assert!(info.contains("int8 check      int8 kept"), "{info}");
    // MobileNetV2 is measured too. On the SVS alone int8 changes some of kather8's
    // classes: the card records the close calls that auto runs again in f32.
    let mobile = copy_model("kather8-mobilenetv2", work.path());
    let out = histomap()
        .args(["calibrate", "-q", "--model"])
        .arg(&mobile)
        .arg(svs())
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("again in f32"), "{stdout}");
    let check = &json(&mobile.join("card.json"))["int8"];
    let recheck = &check["recheck"];
    assert!(recheck["int8_agreement"].as_f64().unwrap() < 1.0, "{check}");
    assert!(recheck["margin"].as_f64().unwrap() > 0.0, "{check}");
    assert!(recheck["share"].as_f64().unwrap() > 0.0, "{check}");
}
