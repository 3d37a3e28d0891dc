//! The `histomap` command on real slides (the shared Aperio SVS and Hamamatsu NDPI),
//! on generated ones (a 5000×5000 strip TIFF and a 100,000×80,000 pyramid) and on bad
//! input.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use histomap::model::Architecture;
use predicates::prelude::*;
use serde_json::Value;

/// Parses a GeoJSON written by `heatmap` and checks QuPath's conventions and that every
/// vertex lies inside the slide. Returns (tiles, regions).
fn check_geojson(path: &Path, w: f64, h: f64, classes: &[&str]) -> (usize, usize) {
    let v: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    assert_eq!(v["type"], "FeatureCollection");
    let (mut tiles, mut regions) = (0, 0);
    for f in v["features"].as_array().unwrap() {
        assert_eq!(f["type"], "Feature");
        let props = &f["properties"];
        let class = &props["classification"];
        assert!(
            classes.contains(&class["name"].as_str().unwrap()),
            "{class}"
        );
        let color = class["color"].as_array().unwrap();
        assert_eq!(color.len(), 3);
        assert!(color.iter().all(|c| c.as_u64().unwrap() <= 255));
        let geom = &f["geometry"];
        let polygons: Vec<&Value> = match geom["type"].as_str().unwrap() {
            "Polygon" => vec![&geom["coordinates"]],
            "MultiPolygon" => geom["coordinates"].as_array().unwrap().iter().collect(),
            other => panic!("unexpected geometry {other}"),
        };
        for poly in polygons {
            for ring in poly.as_array().unwrap() {
                let ring = ring.as_array().unwrap();
                assert!(ring.len() >= 4);
                assert_eq!(ring.first(), ring.last(), "rings are closed");
                for pt in ring {
                    let (x, y) = (pt[0].as_f64().unwrap(), pt[1].as_f64().unwrap());
                    assert!(
                        (0.0..=w).contains(&x) && (0.0..=h).contains(&y),
                        "({x}, {y}) outside {w}×{h}"
                    );
                }
            }
        }
        match props["objectType"].as_str().unwrap() {
            "tile" => {
                tiles += 1;
                for c in classes {
                    assert!(props["measurements"][format!("prob {c}")].is_number());
                }
            }
            "annotation" => regions += 1,
            other => panic!("unexpected objectType {other}"),
        }
    }
    (tiles, regions)
}

/// Checks the class regions of a slide folder, in `regions.geojson` and at the end of
/// `tiles.geojson`, by OGC rules and their areas against their cell counts, and every
/// tile square. Returns the number of region polygons.
fn check_regions(dir: &Path) -> usize {
    let s = summary(dir);
    let grid = &s["plan"]["grid"];
    let (patch, stride) = (
        grid["patch"].as_i64().unwrap(),
        grid["stride"].as_i64().unwrap(),
    );
    // Only cores wider than their patch reach past the slide, where they are clipped.
    assert!(stride <= patch, "the areas below assume unclipped cores");
    let features = |name: &str| {
        let v: Value = serde_json::from_slice(&fs::read(dir.join(name)).unwrap()).unwrap();
        v["features"].as_array().unwrap().clone()
    };
    let (regions, tiles) = (features("regions.geojson"), features("tiles.geojson"));
    let (squares, annotations): (Vec<&Value>, Vec<&Value>) = tiles
        .iter()
        .partition(|f| f["properties"]["objectType"] == "tile");
    assert_eq!(annotations, regions.iter().collect::<Vec<_>>());
    let mut polygons = 0;
    for f in &regions {
        let name = &f["properties"]["name"];
        let region = doubled(&f["geometry"]["coordinates"]);
        let area = ogc::check(&region).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let cells = f["properties"]["measurements"]["cells"].as_i64().unwrap();
        assert_eq!(area, cells * (2 * stride).pow(2), "{name}: area");
        polygons += region.len();
    }
    for t in squares {
        let square = doubled(&Value::Array(vec![t["geometry"]["coordinates"].clone()]));
        assert_eq!(ogc::check(&square), Ok((2 * patch).pow(2)), "{t}");
    }
    polygons
}

/// Multipolygon coordinates in level-0 pixels, whole or half, as integers at twice the
/// scale.
fn doubled(coordinates: &Value) -> Vec<Vec<Vec<ogc::Point>>> {
    fn list(v: &Value) -> &[Value] {
        v.as_array().unwrap()
    }
    let twice = |v: &Value| {
        let v = v.as_f64().unwrap() * 2.0;
        assert_eq!(v.fract(), 0.0, "{v}");
        v as i64
    };
    list(coordinates)
        .iter()
        .map(|polygon| {
            list(polygon)
                .iter()
                .map(|ring| {
                    list(ring)
                        .iter()
                        .map(|p| [twice(&p[0]), twice(&p[1])])
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn summary(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

fn heatmap(pipeline_name: &str, model: &Path, out: &Path, input: &Path) -> assert_cmd::Command {
    assert_cmd::Command::from_std(heatmap_command(pipeline_name, model, out, input))
}

const KATHER: [&str; 8] = [
    "TUMOR", "STROMA", "COMPLEX", "LYMPHO", "DEBRIS", "MUCOSA", "ADIPOSE", "EMPTY",
];

#[test]
fn heatmap_with_d4_test_time_augmentation() {
    let out = tempfile::tempdir().unwrap();
    let model = model("pcam", Architecture::Smallcnn);
    heatmap("pcam", &model, out.path(), &svs())
        .args(["--tta", "d4"])
        .assert()
        .success();
    let s = summary(&out.path().join("cmu_small_region"));
    assert_eq!(s["model"]["tta_d4"], true);
    assert!(s["patches"]["classified"].as_u64().unwrap() > 0);
}

#[test]
fn info_reads_real_svs_and_ndpi() {
    histomap()
        .args(["info"])
        .arg(svs())
        .arg(ndpi())
        .assert()
        .success()
        .stdout(predicate::str::contains("aperio"))
        .stdout(predicate::str::contains("2220 × 2967"))
        .stdout(predicate::str::contains("0.4990 µm/px"))
        .stdout(predicate::str::contains("hamamatsu"))
        .stdout(predicate::str::contains("3968 × 4864"));
}

/// `histomap info … | head -1`: a reader that goes away ends histomap quietly.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("histomap"))
        .arg("info")
        .arg(svs())
        .arg(ndpi())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE));
}

#[test]
fn heatmap_on_real_svs_writes_every_output() {
    let out = tempfile::tempdir().unwrap();
    let model = model("kather8", Architecture::Smallcnn);
    heatmap("kather8", &model, out.path(), &svs())
        .assert()
        .success()
        .stderr(predicate::str::contains("UNTRAINED"));
    let dir = out.path().join("cmu_small_region");
    for f in [
        "overlay.png",
        "tiles.geojson",
        "regions.geojson",
        "predictions.csv",
        "summary.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    for c in KATHER {
        assert!(dir.join(format!("prob_{c}.png")).is_file());
    }
    let s = summary(&dir);
    let classified = s["patches"]["classified"].as_u64().unwrap() as usize;
    assert!(classified > 50, "the real SVS is about a third tissue");
    assert_eq!(
        s["plan"]["grid"]["patch"], 149,
        "150 px at 0.495 µm/px on a 0.499 µm/px slide"
    );
    assert_eq!(s["model"]["trained"], false);
    let (tiles, regions) = check_geojson(&dir.join("tiles.geojson"), 2220.0, 2967.0, &KATHER);
    assert_eq!(tiles, classified);
    assert!(regions >= 1);
    assert!(check_regions(&dir) >= regions);
    let csv = fs::read_to_string(dir.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), classified + 1);
    assert!(csv.starts_with("x,y,w,h,tissue_fraction,prob_TUMOR,"));
    let overlay = image::open(dir.join("overlay.png")).unwrap();
    assert!(overlay.width() > 2048 / 2, "thumbnail plus legend");
    let staging = out.path().join(".histomap/staging");
    assert_eq!(
        fs::read_dir(staging).unwrap().count(),
        0,
        "nothing left staged"
    );
}

/// A model folder alone is a pipeline: a WSInfer folder's config.json gives the patch
/// size, MPP, classes and normalisation, and each slide's child process gets the same.
#[test]
fn heatmap_runs_a_wsinfer_folder_without_a_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("wsinfer-smallcnn");
    wsinfer_model(&model);
    let out = tmp.path().join("out");
    let run = || {
        histomap()
            .args(["heatmap", "-q", "--model"])
            .arg(&model)
            .arg("-o")
            .arg(&out)
            .arg(svs())
            .assert()
            .success()
    };
    run();
    let dir = out.join("cmu_small_region");
    for f in [
        "overlay.png",
        "tiles.geojson",
        "regions.geojson",
        "predictions.csv",
        "summary.json",
        "prob_other.png",
        "prob_tumor.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let s = summary(&dir);
    // Without a pipeline file the model folder names the pipeline.
    let folder = fs::canonicalize(&model).unwrap();
    assert_eq!(s["pipeline"]["name"], "wsinfer-smallcnn");
    assert_eq!(s["job"]["pipeline"], folder.to_str().unwrap());
    assert_eq!(s["job"]["model"], folder.to_str().unwrap());
    assert_eq!(
        (&s["job"]["patch_size"], &s["job"]["stride"]),
        (&96.into(), &96.into())
    );
    assert_eq!(s["job"]["mpp"], 0.97);
    assert_eq!(s["job"]["min_tissue"], 0.5);
    let classified = s["patches"]["classified"].as_u64().unwrap() as usize;
    assert!(classified > 20, "the real SVS is about a third tissue");
    let (tiles, _) = check_geojson(
        &dir.join("tiles.geojson"),
        2220.0,
        2967.0,
        &["other", "tumor"],
    );
    assert_eq!(tiles, classified);
    // A rerun finds the same job and skips the slide.
    let marker = dir.join("summary.json");
    let before = fs::metadata(&marker).unwrap().modified().unwrap();
    run();
    assert_eq!(fs::metadata(&marker).unwrap().modified().unwrap(), before);
}

#[test]
fn info_shows_what_a_model_folder_expects() {
    let tmp = tempfile::tempdir().unwrap();
    wsinfer_model(tmp.path());
    histomap()
        .args(["info", "--model"])
        .arg(tmp.path())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "format          WSInfer config (config.json)",
        ))
        .stdout(predicate::str::contains("architecture    smallcnn"))
        .stdout(predicate::str::contains("patch size      96 px"))
        .stdout(predicate::str::contains("mpp             0.9700 µm/px"))
        .stdout(predicate::str::contains(
            "normalisation   mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]",
        ))
        .stdout(predicate::str::contains("0: other  #3cb44b"))
        .stdout(predicate::str::contains("1: tumor  #e6194b"))
        .stdout(predicate::str::contains("stride          96 px"))
        .stdout(predicate::str::contains("batch size      32"));
    // A histomap folder, with the colours of its card.
    histomap()
        .args(["info", "--model"])
        .arg(root().join("models/kather8"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "format          histomap card (card.json)",
        ))
        .stdout(predicate::str::contains("trained         yes"))
        .stdout(predicate::str::contains("patch size      150 px"))
        .stdout(predicate::str::contains("mpp             0.4950 µm/px"))
        .stdout(predicate::str::contains("0: TUMOR  #e6194b"))
        .stdout(predicate::str::contains(
            "heatmap runs it as pipeline \"kather8\"",
        ));
}

/// `heatmap` needs a pipeline file or a model folder; `info` a slide or a model folder.
#[test]
fn neither_pipeline_nor_model_is_one_clear_line() {
    let out = tempfile::tempdir().unwrap();
    let assert = histomap()
        .args(["heatmap", "-o"])
        .arg(out.path())
        .arg(svs())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "histomap: give --pipeline FILE or --model DIR",
        ));
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.path().join("cmu_small_region").exists());
    histomap()
        .arg("info")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("<SLIDES|--model <MODEL>>"));
}

#[test]
fn outputs_do_not_depend_on_thread_count() {
    let model = model("kather8", Architecture::Smallcnn);
    let run = |threads: &str| {
        let out = tempfile::tempdir().unwrap();
        heatmap("kather8", &model, out.path(), &svs())
            .args(["--threads", threads, "--batch-size", "8", "--stride", "100"])
            .assert()
            .success();
        let dir = out.path().join("cmu_small_region");
        let read = |f: &str| fs::read(dir.join(f)).unwrap();
        (
            read("predictions.csv"),
            read("tiles.geojson"),
            read("prob_TUMOR.png"),
        )
    };
    let one = run("1");
    let two = run("2");
    assert!(
        one.0 == two.0,
        "predictions.csv differs between --threads 1 and 2"
    );
    assert!(one.1 == two.1, "tiles.geojson differs");
    assert!(one.2 == two.2, "class map differs");
}

#[test]
fn batch_goes_on_past_a_bad_slide_and_reruns_skip_finished_ones() {
    let slides = tempfile::tempdir().unwrap();
    fs::copy(svs(), slides.path().join("good.svs")).unwrap();
    fs::write(
        slides.path().join("notes.svs"),
        "this is a text file, not a slide\n",
    )
    .unwrap();
    let bytes = fs::read(svs()).unwrap();
    fs::write(
        slides.path().join("truncated.svs"),
        &bytes[..bytes.len() / 3],
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let model = model("kather8", Architecture::Smallcnn);
    let run = || heatmap("kather8", &model, out.path(), slides.path()).assert();
    let first = run().failure().code(1);
    let err = String::from_utf8_lossy(&first.get_output().stderr).to_string();
    assert!(err.contains("done    good"), "{err}");
    assert!(
        err.contains("FAILED  notes") && err.contains("notes.svs"),
        "{err}"
    );
    assert!(
        err.contains("FAILED  truncated") && err.contains("truncated.svs"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.path().join("notes").exists() && !out.path().join("truncated").exists());

    let marker = out.path().join("good/summary.json");
    let before = fs::metadata(&marker).unwrap().modified().unwrap();
    let second = run().failure();
    let err = String::from_utf8_lossy(&second.get_output().stderr).to_string();
    assert!(err.contains("skipped good"), "{err}");
    assert_eq!(fs::metadata(&marker).unwrap().modified().unwrap(), before);
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("fake.svs");
    fs::write(&text, "not a slide").unwrap();
    histomap()
        .arg("info")
        .arg(&text)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "fake.svs: not a slide histomap can read",
        ));
    // Cut where the label and macro images are lost but level 0 still reads as a TIFF:
    // OpenSlide's refusal is the error, not the missing MPP of a plain-TIFF reading.
    let bytes = fs::read(svs()).unwrap();
    let cut = dir.path().join("cut.svs");
    fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).unwrap();
    histomap()
        .arg("info")
        .arg(&cut)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cut.svs: not a slide histomap can read: OpenSlide does not recognise this .svs file",
        ));

    // Augmentation or averaging out of range is refused before any tile is read.
    for (flag, value, said) in [
        ("--hed", "1.5", "--hed 1.5"),
        ("--ema", "1", "--ema 1: expected a decay in [0, 1)"),
    ] {
        histomap()
            .args(["train", flag, value, "--data", "nowhere", "-o"])
            .arg(dir.path().join("m"))
            .arg("-p")
            .arg(pipeline("kather8"))
            .assert()
            .code(1)
            .stderr(predicate::str::contains(said));
    }

    // A model for other classes is refused before any slide is read.
    let pcam = model("pcam", Architecture::Smallcnn);
    heatmap("kather8", &pcam, &dir.path().join("out"), &svs())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("do not match pipeline"));

    // Corrupt weights name the file.
    let broken = dir.path().join("broken");
    fs::create_dir(&broken).unwrap();
    fs::copy(
        model("kather8", Architecture::Smallcnn).join("card.json"),
        broken.join("card.json"),
    )
    .unwrap();
    fs::write(
        broken.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00garbage",
    )
    .unwrap();
    heatmap("kather8", &broken, &dir.path().join("out"), &svs())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("model.safetensors"))
        .stderr(predicate::str::contains("panicked").not());

    // A truncated plain TIFF (OpenSlide refuses it; the raster reader finds the damage).
    let bytes = fs::read(generated().join("kather5000.tif")).unwrap();
    let cut = dir.path().join("cut.tif");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("cut-out");
    heatmap(
        "kather8",
        &model("kather8", Architecture::Smallcnn),
        &out,
        &cut,
    )
    .assert()
    .code(1)
    .stderr(predicate::str::contains("cut.tif"))
    .stderr(predicate::str::contains("panicked").not());
    assert!(
        !out.join("cut").exists(),
        "no partial output under the final name"
    );

    // Absurd overrides are refused, not a panic.
    for (flag, value, code, said) in [
        ("--stride", "0", 2, "invalid value '0' for '--stride"),
        ("--stride", "385", 1, "--stride 385: expected 1..=384"),
        (
            "--batch-size",
            "5000",
            2,
            "5000 is above the most allowed, 4096",
        ),
        (
            "--threads",
            "5000",
            2,
            "5000 is above the most allowed, 1024",
        ),
    ] {
        histomap()
            .args(["heatmap", flag, value, "--pipeline"])
            .arg(pipeline("pcam"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .arg(svs())
            .assert()
            .code(code)
            .stderr(predicate::str::contains(said));
    }

    // status and report read only a run's folder.
    for cmd in ["status", "report"] {
        histomap()
            .arg(cmd)
            .arg(dir.path())
            .assert()
            .code(1)
            .stderr(predicate::str::contains("not a histomap output folder"));
    }

    // A pipeline typo is named.
    let typo = dir.path().join("typo.toml");
    let text = fs::read_to_string(pipeline("pcam"))
        .unwrap()
        .replace("stride = 96", "strde = 96");
    fs::write(&typo, text).unwrap();
    histomap()
        .args(["heatmap", "--pipeline"])
        .arg(&typo)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg(svs())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("typo.toml"))
        .stderr(predicate::str::contains("strde"));
}

#[test]
fn fluorescence_ndpi_does_not_break_the_mask() {
    let out = tempfile::tempdir().unwrap();
    heatmap(
        "pcam",
        &model("pcam", Architecture::Smallcnn),
        out.path(),
        &ndpi(),
    )
    .assert()
    .success();
    let s = summary(&out.path().join("stritt_dapi_fluorescence"));
    // 96 px at 0.97 µm/px on a 0.228 µm/px scan: read from the 4× level.
    assert_eq!(s["plan"]["level"], 2);
}

#[test]
fn plain_5000px_tiff_like_kathers_larger_images() {
    let slide = generated().join("kather5000.tif");
    histomap()
        .arg("info")
        .arg(&slide)
        .assert()
        .success()
        .stdout(predicate::str::contains("5000 × 5000"))
        .stdout(predicate::str::contains("0.4950 µm/px"));
    let out = tempfile::tempdir().unwrap();
    heatmap(
        "kather8",
        &model("kather8", Architecture::Smallcnn),
        out.path(),
        &slide,
    )
    .assert()
    .success();
    let dir = out.path().join("kather5000");
    let s = summary(&dir);
    assert_eq!(s["patches"]["grid"], 33 * 33);
    assert!(
        s["patches"]["classified"].as_u64().unwrap() > 500,
        "the mosaic is mostly tissue"
    );
    check_geojson(&dir.join("tiles.geojson"), 5000.0, 5000.0, &KATHER);
    assert!(check_regions(&dir) > 0);
}

#[test]
fn gigapixel_pyramid_with_sparse_tissue() {
    let slide = generated().join("gigapixel.tif");
    histomap()
        .arg("info")
        .arg(&slide)
        .assert()
        .success()
        .stdout(predicate::str::contains("generic-tiff"))
        .stdout(predicate::str::contains("100000 × 80000"));
    let out = tempfile::tempdir().unwrap();
    heatmap(
        "pcam",
        &model("pcam", Architecture::Smallcnn),
        out.path(),
        &slide,
    )
    .assert()
    .success();
    let dir = out.path().join("gigapixel");
    let s = summary(&dir);
    let classified = s["patches"]["classified"].as_u64().unwrap() as usize;
    // Two islands: the CMU region (≈ 2220×2967) and a 3000×3000 mosaic, at ≈ 2× per patch pixel.
    assert!(classified > 100 && classified < 2000, "{classified}");
    // 0.97 / 0.499 = 1.94: the 2× level is too coarse, so 187 level-0 px are read and shrunk to 96.
    assert_eq!(
        (s["plan"]["level"].as_u64(), s["plan"]["read_size"].as_u64()),
        (Some(0), Some(187))
    );
    let (tiles, _) = check_geojson(
        &dir.join("tiles.geojson"),
        100_000.0,
        80_000.0,
        &["normal", "tumor"],
    );
    assert_eq!(tiles, classified);
    assert!(check_regions(&dir) > 0);
}

/// The shipped models: trained, well under 50 MB, classes as their pipelines say, and
/// used by `heatmap` when no `--model` is given.
#[test]
fn shipped_models_are_the_pipelines_defaults() {
    for name in ["kather8", "pcam"] {
        let pipeline_file = pipeline(name);
        let p = histomap::pipeline::Pipeline::load(&pipeline_file).unwrap();
        let card = histomap::model::read_card(&p.model_path).unwrap();
        assert!(card.trained, "{name}: card says untrained");
        assert!(card.training.is_some(), "{name}: no training record");
        let names: Vec<&str> = card.classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, p.class_names(), "{name}: classes");
        let bytes = fs::metadata(p.model_path.join("model.safetensors"))
            .unwrap()
            .len();
        assert!(bytes < 50 << 20, "{name}: {bytes} bytes");

        let out = tempfile::tempdir().unwrap();
        histomap()
            .args(["heatmap", "-q", "--pipeline"])
            .arg(&pipeline_file)
            .arg("--out")
            .arg(out.path())
            .arg(svs())
            .assert()
            .success()
            .stderr(predicate::str::contains("UNTRAINED").not());
        let summary: Value = serde_json::from_slice(
            &fs::read(out.path().join("cmu_small_region/summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(summary["model"]["trained"], true);
    }
}

/// Two workers with `--shard 0/2` and `--shard 1/2` over the same folder run every slide
/// exactly once between them.
#[test]
fn shards_cover_a_folder_once() {
    let dir = tempfile::tempdir().unwrap();
    let slides = dir.path().join("slides");
    fs::create_dir(&slides).unwrap();
    for name in ["a.svs", "b.svs", "c.svs"] {
        fs::copy(svs(), slides.join(name)).unwrap();
    }
    let out = dir.path().join("out");
    let model = model("kather8", Architecture::Smallcnn);
    let mut ran = Vec::new();
    for shard in ["0/2", "1/2"] {
        let result = heatmap("kather8", &model, &out, &slides)
            .args(["--shard", shard])
            .assert()
            .success();
        let stderr = String::from_utf8_lossy(&result.get_output().stderr).into_owned();
        ran.extend(
            stderr
                .lines()
                .filter(|l| l.starts_with("done"))
                .map(|l| l.split_whitespace().nth(1).unwrap().to_string()),
        );
    }
    ran.sort();
    assert_eq!(ran, ["a", "b", "c"]);
    histomap()
        .args(["heatmap", "--shard", "2/2", "-p"])
        .arg(pipeline("kather8"))
        .arg("-o")
        .arg(&out)
        .arg(&slides)
        .assert()
        .failure()
        .stderr(predicate::str::contains("0 <= K < N"));
}

/// Odd inputs and names never cost the user a file or the rest of the batch: a folder of
/// the user's where a slide's results would go is left alone, slides named like the
/// report's files or `..` get folders of their own, hidden files in a folder are not
/// slides, a truncated JPEG and an image smaller than one patch fail on their own, and a
/// damaged summary fails its slide in `status` and `report` alone.
#[test]
fn odd_inputs_and_names_never_cost_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let slides = dir.path().join("slides");
    fs::create_dir(&slides).unwrap();
    for name in ["good.svs", "index.html.svs"] {
        fs::copy(svs(), slides.join(name)).unwrap();
    }
    // Hidden, so named on the command line rather than found in the folder.
    let dots = dir.path().join("..svs");
    fs::copy(svs(), &dots).unwrap();
    fs::write(slides.join("._good.svs"), b"macOS resource fork").unwrap();
    let first_tile = fs::read_dir(data().join("kather2016/01_TUMOR"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let tile = image::open(first_tile).unwrap().to_rgb8();
    image::imageops::resize(&tile, 50, 50, image::imageops::FilterType::Triangle)
        .save(slides.join("tiny.png"))
        .unwrap();
    let jpeg = dir.path().join("whole.jpg");
    image::imageops::resize(&tile, 600, 600, image::imageops::FilterType::Triangle)
        .save(&jpeg)
        .unwrap();
    // A PNG records no MPP: the cohort shows the --slide-mpp its run assumed.
    image::imageops::resize(&tile, 600, 600, image::imageops::FilterType::Triangle)
        .save(slides.join("whole.png"))
        .unwrap();
    let bytes = fs::read(&jpeg).unwrap();
    fs::write(slides.join("cut.jpg"), &bytes[..bytes.len() * 3 / 5]).unwrap();

    let out = dir.path().join("out");
    fs::create_dir_all(out.join("good")).unwrap();
    fs::write(out.join("good/notes.txt"), "mine").unwrap();
    let model = model("kather8", Architecture::Smallcnn);
    let run = || {
        let mut cmd = heatmap("kather8", &model, &out, &slides);
        cmd.arg(&dots).args(["--slide-mpp", "0.5"]);
        let a = cmd.assert().failure();
        String::from_utf8_lossy(&a.get_output().stderr).into_owned()
    };
    let err = run();
    assert!(!err.contains("panicked") && !err.contains("_good"), "{err}");
    assert!(
        err.contains("exists and was not written by histomap"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(out.join("good/notes.txt")).unwrap(),
        "mine"
    );
    for done in ["slide_index_html", "slide__"] {
        assert!(
            out.join(done).join("summary.json").is_file(),
            "{done}: {err}"
        );
    }
    assert!(
        err.contains("tiny.png: the slide (50×50 px at 0.5 µm/px) is smaller than one patch"),
        "{err}"
    );
    assert!(err.contains("cut.jpg: truncated JPEG"), "{err}");

    histomap().arg("report").arg(&out).assert().success();
    fs::write(out.join("slide__/summary.json"), "{\"trunc").unwrap();
    for cmd in ["status", "report"] {
        let a = histomap().arg(cmd).arg(&out).assert();
        let text = String::from_utf8_lossy(&a.get_output().stdout).into_owned()
            + &String::from_utf8_lossy(&a.get_output().stderr);
        assert!(!text.contains("panicked"), "{cmd}: {text}");
        if cmd == "status" {
            assert!(text.contains("unreadable"), "{text}");
        }
    }
    assert!(out.join("cohort.csv").is_file() && out.join("slide_index_html").is_dir());
    let cohort = fs::read_to_string(out.join("cohort.csv")).unwrap();
    assert!(
        cohort.contains("slide__") && cohort.contains("failed"),
        "{cohort}"
    );
    let mut rows = cohort.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = rows.next().unwrap();
    let mpp = header.iter().position(|h| *h == "mpp").unwrap();
    let whole = rows.find(|r| r[0] == "whole").expect("whole.png's row");
    assert_eq!(whole[mpp], "0.5", "{cohort}");

    // Contents over names: an SVS saved as .jpg keeps its MPP, a PNG saved as .tif reads.
    let misnamed = [("scan.jpg", svs()), ("png.tif", slides.join("whole.png"))];
    for (name, source) in misnamed {
        fs::copy(source, dir.path().join(name)).unwrap();
    }
    let info = histomap()
        .arg("info")
        .arg(dir.path().join("scan.jpg"))
        .arg(dir.path().join("png.tif"))
        .assert()
        .success();
    let text = String::from_utf8_lossy(&info.get_output().stdout).into_owned();
    assert!(
        text.contains("aperio") && text.contains("0.4990 µm/px"),
        "{text}"
    );
    assert!(text.contains("600 × 600"), "{text}");

    // Scales no scan has are refused before any slide is read.
    histomap()
        .args(["heatmap", "--slide-mpp", "1e9", "-p"])
        .arg(pipeline("kather8"))
        .arg("-o")
        .arg(&out)
        .arg(&slides)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("between 0.01 and 100"));
}

/// `--stain-norm`: a target recorded by `stain-fit`, each slide's stains estimated once
/// and recorded in its summary, a slide that is not H&E mapped as read with a warning,
/// a changed normalisation never mistaken for a finished job, and a model without a
/// target refused in one line.
#[test]
fn stain_norm_is_fitted_estimated_per_slide_recorded_and_falls_back_where_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("kather8");
    fs::create_dir(&model).unwrap();
    fs::copy(
        root().join("models/kather8/model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    // The shipped card with its stain target taken out.
    let card = fs::read_to_string(root().join("models/kather8/card.json")).unwrap();
    let mut card: Value = serde_json::from_str(&card).unwrap();
    card.as_object_mut().unwrap().remove("stain_target");
    fs::write(model.join("card.json"), card.to_string()).unwrap();
    let out = dir.path().join("out");
    let heatmap = |norm: &str| {
        let mut cmd = histomap();
        cmd.args(["heatmap", "-q", "--stain-norm", norm, "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .arg(svs())
            .arg(ndpi());
        cmd
    };

    // No target yet: one line naming the model and the way out.
    let refused = heatmap("macenko").assert().code(1);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("kather8: --stain-norm macenko needs a target")
            && stderr.contains("stain-fit")
    );

    histomap()
        .args(["stain-fit", "-q", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(data().join("kather2016"))
        .assert()
        .success()
        .stdout(predicate::str::contains("stain target fitted on 228 tiles"));
    histomap()
        .args(["info", "--model"])
        .arg(&model)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "stain target    fitted on 228 tiles",
        ));

    heatmap("macenko").assert().success();
    let summary = |name: &str| -> Value {
        let path = out.join(name).join("summary.json");
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    };
    let svs_summary = summary("cmu_small_region");
    let stain = &svs_summary["stain"];
    assert_eq!(stain["method"], "macenko");
    assert_eq!(stain["patches_sampled"], 64);
    let h = stain["estimate"]["stain_matrix"][0].as_array().unwrap();
    assert_eq!(h.len(), 3, "{stain}");
    assert!(svs_summary["job"]["stain"]
        .as_str()
        .unwrap()
        .starts_with("macenko to"));
    // The DAPI fluorescence scan has no H&E to find.
    let ndpi_stain = &summary("stritt_dapi_fluorescence")["stain"];
    assert!(ndpi_stain["estimate"].is_null(), "{ndpi_stain}");
    assert!(ndpi_stain["warning"]
        .as_str()
        .unwrap()
        .contains("not those of H&E"));

    // Results made with normalisation are not those of a run without it.
    heatmap("none")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("stain was \"macenko to"));
}

/// `extract` over the real SVS with QuPath-style annotations (a polygon with a hole, a
/// MultiPolygon of a square and a triangle): every kept tile lies in its class's
/// region by its own geometry, a rerun skips the finished slide, the manifest trains a
/// model that maps the slide, and a broken ring is one line naming file and feature.
#[test]
fn extract_cuts_tiles_inside_qupath_regions_and_trains_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let geojson = dir.path().join("cmu_small_region.geojson");
    let ring = |pts: &[(u32, u32)]| {
        let mut v: Vec<[u32; 2]> = pts.iter().map(|&(x, y)| [x, y]).collect();
        v.push(v[0]);
        v
    };
    let tumour_outer = ring(&[(200, 300), (1400, 300), (1400, 1500), (200, 1500)]);
    let tumour_hole = ring(&[(600, 700), (1000, 700), (1000, 1100), (600, 1100)]);
    let stroma_square = ring(&[(300, 1700), (1200, 1700), (1200, 2600), (300, 2600)]);
    let stroma_triangle = ring(&[(1500, 1700), (2100, 1700), (1800, 2800)]);
    let collection = serde_json::json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"objectType": "annotation",
          "classification": {"name": "Tumor", "color": [200, 0, 0]}},
         "geometry": {"type": "Polygon", "coordinates": [tumour_outer, tumour_hole]}},
        {"type": "Feature", "properties": {"objectType": "annotation",
          "classification": {"name": "Stroma", "color": [150, 200, 150]}},
         "geometry": {"type": "MultiPolygon",
          "coordinates": [[stroma_square], [stroma_triangle.clone()]]}}
    ]});
    fs::write(&geojson, collection.to_string()).unwrap();
    let out = dir.path().join("tiles");
    let extract = |annotations: &Path| {
        let mut cmd = histomap();
        cmd.args(["extract", "-q", "--stride", "75", "--pipeline"])
            .arg(pipeline("kather8"))
            .arg("--annotations")
            .arg(annotations)
            .arg("--out")
            .arg(&out)
            .arg(svs());
        cmd
    };
    extract(&geojson).assert().success();

    let manifest = fs::read_to_string(out.join("manifest.csv")).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for line in manifest.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let [x, y, w, h] = [f[3], f[4], f[5], f[6]].map(|v| v.parse::<f64>().unwrap());
        let (cx, cy) = (x + w / 2.0, y + h / 2.0);
        let inside = |x0: f64, y0: f64, x1: f64, y1: f64| cx > x0 && cx < x1 && cy > y0 && cy < y1;
        // The triangle (1500,1700)-(2100,1700)-(1800,2800): within its edges' x at cy.
        let half = 300.0 * (2800.0 - cy) / 1100.0;
        let in_triangle = cy > 1700.0 && cy < 2800.0 && (cx - 1800.0).abs() < half;
        let ok = match f[1] {
            "TUMOR" => {
                inside(200.0, 300.0, 1400.0, 1500.0) && !inside(600.0, 700.0, 1000.0, 1100.0)
            }
            "STROMA" => inside(300.0, 1700.0, 1200.0, 2600.0) || in_triangle,
            other => panic!("class {other}"),
        };
        assert!(ok, "tile {line} lies outside its class's region");
        assert_eq!(f[2], "cmu_small_region");
        let tile = image::open(out.join(f[0])).unwrap();
        assert_eq!((tile.width(), tile.height()), (150, 150));
        *seen.entry(f[1].to_string()).or_insert(0) += 1;
    }
    assert!(seen["TUMOR"] > 20 && seen["STROMA"] > 20, "{seen:?}");
    let report = fs::read_to_string(out.join("extract.csv")).unwrap();
    assert!(report.starts_with("slide,class,kept,overlap,glass,over_max,unreadable\n"));

    // A rerun skips the finished slide and writes the same manifest; from a folder of
    // annotations, a file named after no slide is named.
    let folder = dir.path().join("annotations");
    fs::create_dir(&folder).unwrap();
    fs::copy(&geojson, folder.join("cmu_small_region.geojson")).unwrap();
    fs::copy(&geojson, folder.join("cmu_smal_region.geojson")).unwrap();
    extract(&folder)
        .assert()
        .success()
        .stderr(predicate::str::contains("skipped"))
        .stderr(predicate::str::contains(
            "cmu_smal_region.geojson: no slide given is named after it",
        ));
    assert_eq!(
        fs::read_to_string(out.join("manifest.csv")).unwrap(),
        manifest
    );

    let model = dir.path().join("model");
    histomap()
        .args([
            "train",
            "-q",
            "--no-val",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--pipeline",
        ])
        .arg(pipeline("kather8"))
        .arg("--data")
        .arg(out.join("manifest.csv"))
        .arg("--out")
        .arg(&model)
        .assert()
        .success();
    histomap()
        .args(["heatmap", "-q", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(dir.path().join("maps"))
        .arg(svs())
        .assert()
        .success();

    // Slide labels: every tissue tile of a labelled slide; a bad slide fails alone.
    let labels = dir.path().join("labels.csv");
    fs::write(&labels, "slide,label\ncmu_small_region,stroma\nbad,TUMOR\n").unwrap();
    let bad = dir.path().join("bad.svs");
    fs::write(&bad, "not a slide").unwrap();
    let by_labels = |out: &Path| {
        let mut cmd = histomap();
        cmd.args(["extract", "-q", "--pipeline"])
            .arg(pipeline("kather8"))
            .arg("--labels")
            .arg(&labels)
            .arg("--out")
            .arg(out)
            .arg(svs());
        cmd
    };
    let by_slide = dir.path().join("by-slide");
    let failed = by_labels(&by_slide).arg(&bad).assert().code(1);
    let stderr = String::from_utf8_lossy(&failed.get_output().stderr).to_string();
    assert!(
        stderr.contains("FAILED  bad  ") && stderr.contains("bad.svs"),
        "{stderr}"
    );
    let rows = fs::read_to_string(by_slide.join("manifest.csv")).unwrap();
    assert!(rows.lines().count() > 50);
    assert!(rows
        .lines()
        .skip(1)
        .all(|l| l.contains(",STROMA,cmu_small_region,")));

    // --stain-norm: the same tiles, normalised to the kather8 card's target from the
    // slide's own stains, estimated once and recorded in the slide's stain.json.
    let normalised = dir.path().join("by-slide-macenko");
    by_labels(&normalised)
        .args(["--stain-norm", "macenko"])
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(normalised.join("manifest.csv")).unwrap(),
        rows
    );
    let record: Value =
        serde_json::from_slice(&fs::read(normalised.join("cmu_small_region/stain.json")).unwrap())
            .unwrap();
    assert_eq!(record["method"], "macenko", "{record}");
    assert!(record["estimate"].is_object(), "{record}");
    assert!(!by_slide.join("cmu_small_region/stain.json").exists());
    let first = rows.lines().nth(1).unwrap().split(',').next().unwrap();
    let (a, b) = (
        image::open(by_slide.join(first)).unwrap().to_rgb8(),
        image::open(normalised.join(first)).unwrap().to_rgb8(),
    );
    assert_eq!(a.dimensions(), b.dimensions());
    assert_ne!(a, b, "{first}: normalised as scanned");

    // A ring that does not close.
    let broken = dir.path().join("broken.geojson");
    let open = &stroma_triangle[..3];
    fs::write(
        &broken,
        serde_json::json!([{"type": "Feature",
        "properties": {"classification": {"name": "Tumor"}},
        "geometry": {"type": "Polygon", "coordinates": [open]}}])
        .to_string(),
    )
    .unwrap();
    let failed = extract(&broken).arg("--force").assert().code(1);
    let stderr = String::from_utf8_lossy(&failed.get_output().stderr).to_string();
    assert!(
        stderr.contains("broken.geojson: feature 0: a ring that does not close"),
        "{stderr}"
    );
}

/// Each patch's most probable class, by its position, from a slide folder's CSV.
fn classes_by_patch(dir: &Path) -> std::collections::HashMap<(u32, u32), usize> {
    let mut csv = csv::Reader::from_path(dir.join("predictions.csv")).unwrap();
    let h = csv.headers().unwrap().clone();
    let probs: Vec<usize> = (0..h.len())
        .filter(|&i| h[i].starts_with("prob_"))
        .collect();
    csv.records()
        .map(Result::unwrap)
        .filter(|r| &r[h.iter().position(|c| c == "status").unwrap()] == "ok")
        .map(|r| {
            let p = |i: usize| r[i].parse::<f64>().unwrap();
            let best = (0..probs.len())
                .max_by(|&a, &b| p(probs[a]).total_cmp(&p(probs[b])))
                .unwrap();
            ((r[0].parse().unwrap(), r[1].parse().unwrap()), best)
        })
        .collect()
}

#[test]
fn dicom_series_are_slides_named_after_their_folders() {
    let series = dicom();
    let svs_series = series.join("cmu_small_region");
    let mut files: Vec<_> = fs::read_dir(&svs_series)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // A series is opened by its folder or by any of its files, with OpenSlide 4.
    for input in [&svs_series, files.last().unwrap()] {
        histomap()
            .arg("info")
            .arg(input)
            .assert()
            .success()
            .stdout(predicate::str::contains("dicom"))
            .stdout(predicate::str::contains("OpenSlide 4."))
            .stdout(predicate::str::contains("2220 × 2967"))
            .stdout(predicate::str::contains("0.4990 µm/px"));
    }

    // One batch: the folder of three series, one of them again by a file (run once),
    // and a non-conformant series, which fails alone with one line naming it.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken_series");
    fs::create_dir(&broken).unwrap();
    let mut junk = vec![0u8; 128];
    junk.extend_from_slice(b"DICM");
    junk.extend_from_slice(&[7u8; 400]);
    fs::write(broken.join("1.2.840.1.dcm"), junk).unwrap();
    let out = tmp.path().join("out");
    let model = root().join("models/kather8");
    let run = heatmap("kather8", &model, &out, series)
        .arg(files.first().unwrap())
        .arg(&broken)
        .assert()
        .failure()
        .code(1);
    let err = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    for name in [
        "cmu_small_region",
        "cmu_small_region_transcoded",
        "stritt_dapi_fluorescence",
    ] {
        assert!(err.contains(&format!("done    {name} ")), "{err}");
        let s = summary(&out.join(name));
        assert_eq!(s["slide"]["format"], "dicom", "{name}");
        assert!(
            s["slide"]["path"].as_str().unwrap().ends_with(name),
            "{name}: {s}"
        );
    }
    assert_eq!(err.matches("done    cmu_small_region ").count(), 1, "{err}");
    let failed: Vec<&str> = err.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed.len(), 1, "{err}");
    assert!(
        failed[0].contains("broken_series") && failed[0].contains("1.2.840.1.dcm"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // The series with the SVS's own JPEG tiles maps as the SVS does.
    let direct = tmp.path().join("direct");
    heatmap("kather8", &model, &direct, &svs())
        .assert()
        .success();
    let want = classes_by_patch(&direct.join("cmu_small_region"));
    for (name, at_least) in [
        ("cmu_small_region", 0.99),
        ("cmu_small_region_transcoded", 0.9),
    ] {
        let got = classes_by_patch(&out.join(name));
        assert_eq!(got.len(), want.len(), "{name}");
        let same = want.iter().filter(|(k, c)| got.get(k) == Some(c)).count();
        let share = same as f64 / want.len() as f64;
        eprintln!(
            "dicom: {name} keeps the SVS's class on {same} of {} patches",
            want.len()
        );
        assert!(share >= at_least, "{name}: {same} of {}", want.len());
    }
}
