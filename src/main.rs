//! The `histomap` command: parses arguments, calls the library, maps the result to an
//! exit code (0 success, 1 a slide or the job failed, 2 bad usage).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use histomap::model::{self, Architecture, Classifier, DeviceChoice, ModelCard};
use histomap::pipeline::Pipeline;
use histomap::progress::Bars;
use histomap::run::{self, Job, Outcome};
use histomap::slide;
use histomap::stream::StreamOptions;

/// Streamed whole-slide tissue maps: slide → patches → CNN → per-class heatmaps,
/// overlay PNG, QuPath GeoJSON, CSV.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print format, dimensions, pyramid levels, MPP and objective power of slides.
    Info {
        /// Slide files (anything OpenSlide opens, plain TIFF, PNG, JPEG).
        #[arg(required = true)]
        slides: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Classify the tissue of slides and write heatmaps, overlay, GeoJSON and CSV
    /// into OUT/<slide name>/. Finished slides are skipped on reruns; a failed slide
    /// is reported and the others go on (exit code 1 if any failed).
    Heatmap(HeatmapArgs),
    /// Write a model with RANDOM, UNTRAINED weights for a pipeline's classes. For
    /// testing the plumbing only: its maps mean nothing, and its card says so.
    InitModel {
        /// Pipeline whose classes, input size, MPP and normalisation the model takes.
        #[arg(long)]
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value = "smallcnn")]
        arch: Architecture,
        /// Model folder to write (card.json + model.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct HeatmapArgs {
    /// Slide files and folders of slides.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Pipeline file (patch size, stride, MPP, classes, model).
    #[arg(long, short)]
    pipeline: PathBuf,
    /// Output folder.
    #[arg(long, short)]
    out: PathBuf,
    /// Model folder; default: the pipeline's model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Microns per pixel of slides that do not record it (PNG, JPEG, many plain TIFFs).
    #[arg(long)]
    slide_mpp: Option<f64>,
    /// Override the pipeline's patch side (pixels at the model's MPP).
    #[arg(long)]
    patch_size: Option<u32>,
    /// Override the pipeline's stride (pixels at the model's MPP); below the patch size, patches overlap.
    #[arg(long)]
    stride: Option<u32>,
    /// Override the minimum tissue fraction for a patch to be classified (0..=1).
    #[arg(long)]
    min_tissue: Option<f32>,
    /// Override the pipeline's batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Worker threads for reading and for inference; default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Redo slides that are already finished.
    #[arg(long)]
    force: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    histomap::tune_allocator();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("histomap: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Info { slides, json } => info(&slides, json),
        Command::Heatmap(args) => heatmap(args),
        Command::InitModel {
            pipeline,
            arch,
            out,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let card = ModelCard::for_pipeline(
                &pipeline,
                arch,
                false,
                "random initialisation by `histomap init-model`: not trained".into(),
            );
            model::write_random(&out, &card)?;
            eprintln!("wrote an UNTRAINED {arch:?} model to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn info(paths: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for path in paths {
        match slide::open(path) {
            Ok(s) => {
                let i = s.info();
                if json {
                    println!("{}", serde_json::to_string(i)?);
                    continue;
                }
                println!("{}", i.path.display());
                println!("  format      {}", i.format);
                println!("  dimensions  {} × {}", i.size.w, i.size.h);
                let mpp = i.mpp.map_or("unknown".into(), |m| format!("{m:.4} µm/px"));
                println!("  mpp         {mpp}");
                let power = i
                    .objective_power
                    .map_or("unknown".into(), |p| format!("{p}×"));
                println!("  objective   {power}");
                println!("  levels      {}", i.levels.len());
                for (n, l) in i.levels.iter().enumerate() {
                    println!(
                        "    {n}: {} × {}  downsample {:.4}",
                        l.size.w, l.size.h, l.downsample
                    );
                }
            }
            Err(e) => {
                eprintln!("histomap: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn heatmap(a: HeatmapArgs) -> anyhow::Result<ExitCode> {
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // candle's CPU kernels use the global rayon pool and read this variable for gemm.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the inference thread pool")?;

    let mut pipeline = Pipeline::load(&a.pipeline)?;
    pipeline.set_patch(a.patch_size, a.stride)?;
    if let Some(v) = a.min_tissue {
        if !(0.0..=1.0).contains(&v) {
            bail!("--min-tissue {v}: expected 0..=1");
        }
        pipeline.min_tissue = v;
    }
    if let Some(v) = a.batch_size {
        pipeline.batch_size = v.max(1);
    }
    if let Some(m) = a.slide_mpp {
        if !(m.is_finite() && m > 0.0) {
            bail!("--slide-mpp {m}: expected a positive number of microns per pixel");
        }
    }
    let model_dir = a
        .model
        .clone()
        .unwrap_or_else(|| pipeline.model_path.clone());
    let device = a.device.device()?;
    let classifier = Classifier::load(&model_dir, &device)?;
    classifier.card.check_against(&pipeline, &model_dir)?;
    if !classifier.card.trained {
        eprintln!(
            "histomap: warning: {} holds an UNTRAINED model (random weights); its maps mean nothing",
            model_dir.display()
        );
    }
    let slides = run::collect_slides(&a.inputs)?;
    if slides.is_empty() {
        bail!("no slides found in {:?}", a.inputs);
    }
    let job = Job {
        stream: StreamOptions {
            batch_size: pipeline.batch_size,
            readers: threads,
            capacity: 2,
        },
        pipeline,
        classifier,
        out: a.out,
        slide_mpp: a.slide_mpp,
        force: a.force,
    };
    let reports = {
        let bars = Bars::new(a.quiet);
        run::run_all(&slides, &job, &bars)
    };
    let failed = reports
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
        .count();
    if failed > 0 {
        eprintln!("histomap: {failed} of {} slide(s) failed", reports.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
