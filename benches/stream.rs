//! Reading vs streaming vs classifying, measured in one run on one slide.
//!
//! 1. raw: openslide-rs `read_region` on the tissue patches, as bare as it gets, on
//!    the same number of threads as the stream (a rayon loop);
//! 2. stream, classifier off: histomap's readers (read, convert, resize, normalise,
//!    batch, channel);
//! 3. stream, classifier on: the whole thing.
//!
//! Reading is within bounds when (2) is at least 1/1.5 of (1). Overlap shows when (3)
//! takes about as long as the slower of reading and classifying, not their sum.
//!
//! usage: cargo bench --bench stream [-- SLIDE [PIPELINE [MODEL_DIR]]]
//! defaults: target/slides/gigapixel.tif (made by scripts/make-slides.sh),
//! pipelines/pcam.toml, fixtures/smallcnn96. Each figure is the median of 3 runs,
//! every run on a freshly opened slide (OpenSlide caches tiles per handle).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use common::median;
use histomap::map::grid::ReadPlan;
use histomap::map::mask::TissueMask;
use histomap::map::mask::THUMBNAIL_SIDE;
use histomap::map::select::tissue_cells;
use histomap::map::slide;
use histomap::map::stream::{self, StreamOptions};
use histomap::model::Classifier;
use histomap::pipeline::Pipeline;
use histomap::progress::Silent;
use rayon::prelude::*;

const RUNS: usize = 3;

fn main() {
    histomap::tune_allocator();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let slide_path = args.first().map(PathBuf::from).unwrap_or_else(|| {
        let dir = root.join("target/slides");
        let ok = std::process::Command::new("bash")
            .arg(root.join("scripts/make-slides.sh"))
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "scripts/make-slides.sh failed");
        dir.join("gigapixel.tif")
    });
    let pipeline_path = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("pipelines/pcam.toml"));
    let model_dir = args
        .get(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("fixtures/smallcnn96"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();

    let pipeline = Pipeline::load(&pipeline_path).unwrap();
    let slide0 = slide::open(&slide_path).unwrap();
    let plan = ReadPlan::new(
        slide0.info(),
        pipeline.patch_size,
        pipeline.stride,
        pipeline.mpp,
        None,
    )
    .unwrap();
    let thumb = slide::thumbnail(slide0.as_ref(), THUMBNAIL_SIDE).unwrap();
    let mask = TissueMask::from_thumbnail(&thumb, pipeline.min_saturation);
    let (cells, _) = tissue_cells(&plan.grid, &mask, pipeline.min_tissue);
    let rects: Vec<_> = cells.iter().map(|&c| plan.grid.rect(c)).collect();
    let n = rects.len() as f64;
    let classifier = Classifier::load(&model_dir, &Device::Cpu).unwrap();
    let opts = StreamOptions {
        batch_size: pipeline.batch_size,
        readers: threads,
        capacity: 2,
    };
    println!(
        "slide {} ({}×{}), {} tissue patches of {} px read at level {} as {} px, model {} ({:?}), {} threads, batch {}",
        slide_path.display(),
        plan.grid.slide.w,
        plan.grid.slide.h,
        rects.len(),
        plan.grid.patch,
        plan.level,
        plan.read_size,
        model_dir.display(),
        classifier.card.architecture,
        threads,
        opts.batch_size
    );

    let raw = median(
        (0..RUNS)
            .map(|_| {
                let os = openslide_rs::OpenSlide::new(&slide_path).unwrap();
                let t = Instant::now();
                let bytes: usize = rects
                    .par_iter()
                    .map(|r| {
                        let region = openslide_rs::Region {
                            address: openslide_rs::Address {
                                x: r.origin.x,
                                y: r.origin.y,
                            },
                            level: plan.level as u32,
                            size: openslide_rs::Size {
                                w: plan.read_size,
                                h: plan.read_size,
                            },
                        };
                        os.read_region(&region).unwrap().len()
                    })
                    .sum();
                assert!(bytes > 0);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let stream_time = |model: Option<&Classifier>| {
        let mut classify = Vec::new();
        let wall = median(
            (0..RUNS)
                .map(|_| {
                    let s = slide::open(&slide_path).unwrap();
                    let (_, stats) = stream::run(
                        s.as_ref(),
                        &plan,
                        &classifier.card.normalization,
                        &rects,
                        model,
                        &opts,
                        &Silent,
                    )
                    .unwrap();
                    classify.push(stats.classify_s);
                    stats.wall_s
                })
                .collect(),
        );
        (wall, median(classify))
    };
    let (read_only, _) = stream_time(None);
    let (full, classify) = stream_time(Some(&classifier));

    let rate = |s: f64| n / s;
    println!("{:<44} {:>9} {:>12}", "stage", "seconds", "patches/s");
    println!(
        "{:<44} {:>9.3} {:>12.1}",
        "raw OpenSlide read_region",
        raw,
        rate(raw)
    );
    println!(
        "{:<44} {:>9.3} {:>12.1}",
        "stream, classifier off",
        read_only,
        rate(read_only)
    );
    println!(
        "{:<44} {:>9.3} {:>12.1}",
        "stream, classifier on",
        full,
        rate(full)
    );
    println!(
        "{:<44} {:>9.3} {:>12.1}",
        "  of which in the classifier",
        classify,
        rate(classify)
    );
    println!(
        "reading overhead: stream/raw = {:.2}x (bar: <= 1.5x)",
        read_only / raw
    );
    println!(
        "overlap: full / max(read, classify) = {:.2}; full / (read + classify) = {:.2}",
        full / read_only.max(classify),
        full / (read_only + classify)
    );
}
