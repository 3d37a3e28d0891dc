//! The CUDA-built binary on a machine without a GPU, as in CI: `--device auto` runs
//! the CPU path (same predictions as the CPU build) and says so once per batch;
//! `--device cuda` fails in one line. scripts/test.sh builds that binary with
//! `scripts/setup.sh --cuda` and names it in HISTOMAP_CUDA_BIN; without it this test
//! has nothing to run and says so.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{pipeline, svs};

fn cuda_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("HISTOMAP_CUDA_BIN").map(PathBuf::from);
    if bin.is_none() {
        eprintln!(
            "HISTOMAP_CUDA_BIN unset: build with scripts/setup.sh --cuda (scripts/test.sh does)"
        );
    }
    bin
}

fn heatmap(
    bin: &std::path::Path,
    slides: &std::path::Path,
    out: &std::path::Path,
    device: &str,
) -> std::process::Output {
    Command::new(bin)
        .args(["heatmap", "-q", "--device", device, "-p"])
        .arg(pipeline("kather8"))
        .arg("-o")
        .arg(out)
        .arg(slides)
        .output()
        .unwrap()
}

#[test]
fn cuda_build_without_a_gpu_runs_on_the_cpu_and_says_so_once() {
    let Some(bin) = cuda_bin() else { return };
    if std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!("a GPU is present: this test is for machines without one (CI)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slides = dir.path().join("slides");
    std::fs::create_dir(&slides).unwrap();
    for name in ["a.svs", "b.svs"] {
        std::fs::copy(svs(), slides.join(name)).unwrap();
    }

    let out = dir.path().join("auto");
    let run = heatmap(&bin, &slides, &out, "auto");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let warnings = stderr.matches("--device auto: no usable CUDA GPU").count();
    assert_eq!(warnings, 1, "said once for the batch of two:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("--device auto"))
        .unwrap();
    assert!(
        line.ends_with("running on the CPU"),
        "one line: {line}\n{stderr}"
    );

    // The CPU path of the CUDA build is the CPU build's.
    let cpu_out = dir.path().join("cpu");
    let cpu = heatmap(
        &assert_cmd::cargo::cargo_bin("histomap"),
        &slides,
        &cpu_out,
        "cpu",
    );
    assert!(cpu.status.success());
    for name in ["a", "b"] {
        let read =
            |o: &std::path::Path| std::fs::read(o.join(name).join("predictions.csv")).unwrap();
        assert_eq!(
            read(&out),
            read(&cpu_out),
            "{name}: predictions differ between builds"
        );
    }

    let run = heatmap(&bin, &svs(), &dir.path().join("cuda"), "cuda");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    assert!(
        stderr.starts_with("histomap: --device cuda: no usable CUDA GPU")
            && stderr.contains("--device cpu"),
        "{stderr}"
    );
    assert!(!dir.path().join("cuda").join("cmu_small_region").exists());
}
