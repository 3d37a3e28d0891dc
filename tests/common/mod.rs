//! Shared by the integration tests: where the real data lives, the generated slides
//! (made once by `scripts/make-slides.sh`, cached under `target/slides`) and random
//! test models (never trained; for plumbing only).
#![allow(dead_code)]

pub mod browser;
pub mod ogc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use histomap::model::{write_random, Architecture, ModelCard};
use histomap::pipeline::Pipeline;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn data() -> PathBuf {
    std::env::var_os("HISTOMAP_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"))
}

pub fn svs() -> PathBuf {
    data().join("slides/cmu_small_region.svs")
}

pub fn ndpi() -> PathBuf {
    data().join("slides/stritt_dapi_fluorescence.ndpi")
}

pub fn pipeline(name: &str) -> PathBuf {
    root().join("pipelines").join(format!("{name}.toml"))
}

/// The generated slides folder (`kather5000.tif`, `gigapixel.tif`).
pub fn generated() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| made_by("make-slides.sh", "target/slides"))
}

/// `dir` under the root, after `scripts/<script> <dir>` made what is missing there.
fn made_by(script: &str, dir: &str) -> PathBuf {
    let dir = root().join(dir);
    let status = Command::new("bash")
        .arg(root().join("scripts").join(script))
        .arg(&dir)
        .status()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(status.success(), "scripts/{script} failed");
    dir
}

/// A random (untrained) model for a pipeline, written once per test process.
pub fn model(pipeline_name: &str, arch: Architecture) -> PathBuf {
    static MODELS: OnceLock<std::sync::Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let key = format!("{pipeline_name}-{arch:?}");
    let lock = MODELS.get_or_init(Default::default);
    let mut made = lock.lock().unwrap();
    if let Some((_, p)) = made.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let dir = root()
        .join("target/test-models")
        .join(format!("{key}-{}", std::process::id()));
    let p = Pipeline::load(&pipeline(pipeline_name)).unwrap();
    let card = ModelCard::for_pipeline(&p, arch, false, "test: random weights".into());
    write_random(&dir, &card, true).unwrap();
    made.push((key, dir.clone()));
    dir
}

/// Writes into `dir` a WSInfer model folder as the WSInfer peer lays one out
/// (`config.json` as `wsinfer_model.py` writes it + `model.safetensors`): the seeded
/// SmallCnn of `fixtures/smallcnn96`, classes `other` and `tumor`, 96 px at 0.97 µm/px.
pub fn wsinfer_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        root().join("fixtures/smallcnn96/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let config = serde_json::json!({
        "spec_version": "1.0", "architecture": "smallcnn", "num_classes": 2,
        "class_names": ["other", "tumor"], "patch_size_pixels": 96, "spacing_um_px": 0.97,
        "transform": [
            {"name": "Resize", "arguments": {"size": 96}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
        ]
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Largest absolute elementwise difference of two tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("same shapes")
}

/// `histomap heatmap -q` on one input with a pipeline and a model; add flags after.
pub fn heatmap_command(pipeline_name: &str, model: &Path, out: &Path, input: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("histomap"));
    cmd.args(["heatmap", "-q", "--pipeline"])
        .arg(pipeline(pipeline_name))
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .arg(input);
    cmd
}

pub fn histomap() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("histomap").unwrap()
}

/// DICOM series made from the real slides by scripts/make-dicom.sh (wsidicomizer), once
/// per test process: `cmu_small_region` (the SVS's JPEG tiles kept),
/// `cmu_small_region_transcoded` (re-encoded) and `stritt_dapi_fluorescence` (the NDPI).
pub fn dicom() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| made_by("make-dicom.sh", "target/slides/dicom"))
}
