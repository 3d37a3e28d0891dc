//! `histomap heatmap`: slides in, one output folder per slide out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use histomap::cohort::run::{self, Job, Outcome};
use histomap::cohort::shard::Shard;
use histomap::map::stream::StreamOptions;
use histomap::model::{Classifier, DeviceChoice, Precision};
use histomap::progress::Bars;

use super::args::{absolute, all_cores, batch_size, mpp, share, shown, threads, StainArgs, Tta};

#[derive(Args)]
pub struct HeatmapArgs {
    /// Slide files and folders of slides.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Pipeline file (patch size, stride, MPP, tissue thresholds, classes, model); the
    /// model's card must agree with it. Default: the --model folder's own pipeline,
    /// from its card.json or WSInfer config.json (patch size, MPP, classes,
    /// normalisation; stride = patch size, default tissue thresholds and batch size),
    /// as `histomap info --model DIR` shows it.
    #[arg(long, short)]
    pub pipeline: Option<PathBuf>,
    /// Output folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Model folder (card.json + model.safetensors, or a WSInfer folder: config.json +
    /// model.safetensors); default: the pipeline's model. Without --pipeline, it also
    /// gives the pipeline.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Microns per pixel of slides that do not record it (PNG, JPEG, many plain TIFFs);
    /// slides that record their own keep it. From 0.01 to 100.
    #[arg(long, value_parser = mpp)]
    pub slide_mpp: Option<f64>,
    /// Override the pipeline's stride (pixels at the model's MPP, 1 to 4 × the patch
    /// size); below the patch size, patches overlap.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub stride: Option<u32>,
    /// Override the minimum tissue fraction for a patch to be classified (0..=1); a
    /// patch with no tissue at all is never classified, so 0 means "any tissue".
    #[arg(long)]
    pub min_tissue: Option<f32>,
    /// Override the pipeline's batch size.
    #[arg(long, value_parser = batch_size)]
    pub batch_size: Option<usize>,
    /// Worker threads for reading and for inference; default: all cores; at most 1024.
    #[arg(long, value_parser = threads)]
    pub threads: Option<usize>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Test-time augmentation: d4 averages each patch's 8 dihedral orientations
    /// (8× the inference time).
    #[arg(long, value_enum, default_value = "none")]
    pub tta: Tta,
    #[command(flatten)]
    pub stain: StainArgs,
    /// Arithmetic of the classifier; what ran is recorded in summary.json.
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: Precision,
    /// Run only part K/N of the slides (0-based K; sorted by path, balanced by file
    /// size), so N workers with the same arguments cover every slide exactly once;
    /// `slurm` takes K and N from the Slurm array task's environment.
    #[arg(long, value_name = "K/N|slurm")]
    pub shard: Option<Shard>,
    /// Redo slides that are already finished.
    #[arg(long)]
    pub force: bool,
    /// The largest share (0 to 1) of a slide's tissue patches that may be unreadable
    /// (a corrupt tile, a bad sector) before the slide fails. Unreadable patches are
    /// left out of the maps, listed in predictions.csv with status `unreadable`,
    /// flagged in tiles.geojson and counted in summary.json.
    #[arg(long, value_parser = share, default_value_t = 0.05)]
    pub max_unreadable: f64,
    /// Run the one slide given under this output name and report on stdout: each slide
    /// of a batch runs so, in a child process the batch supervises and locks for.
    #[arg(long, hide = true)]
    pub child: Option<String>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

impl HeatmapArgs {
    /// The `heatmap` command line that repeats these arguments with absolute paths,
    /// leaving out --shard, --threads and --quiet, which each worker sets.
    pub fn worker_argv(&self) -> anyhow::Result<Vec<String>> {
        let mut v = vec!["heatmap".to_string()];
        for i in &self.inputs {
            v.push(absolute(i)?);
        }
        v.extend(self.settings_argv(self.device)?);
        if self.force {
            v.push("--force".into());
        }
        Ok(v)
    }

    /// The command that runs `slide` alone under `name` in a child process, with these
    /// settings and `threads` threads.
    /// `device` is where this process found the model runs, so that children neither
    /// look for a GPU again nor repeat `auto`'s fallback warning.
    fn child_command(
        &self,
        threads: usize,
        device: DeviceChoice,
    ) -> anyhow::Result<impl Fn(&Path, &str) -> std::process::Command> {
        let exe = std::env::current_exe().context("finding the histomap executable")?;
        let settings = self.settings_argv(device)?;
        Ok(move |slide: &Path, name: &str| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("heatmap").arg(slide).args(&settings).args([
                "--quiet",
                "--threads",
                &threads.to_string(),
                "--child",
                name,
            ]);
            cmd
        })
    }

    /// Every setting but the inputs, --force, --shard, --threads and --quiet, with
    /// absolute paths, and `device` for --device.
    fn settings_argv(&self, device: DeviceChoice) -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        if let Some(p) = &self.pipeline {
            v.extend(["--pipeline".into(), absolute(p)?]);
        }
        v.extend(["--out".into(), absolute(&self.out)?]);
        if let Some(m) = &self.model {
            v.extend(["--model".into(), absolute(m)?]);
        }
        let mut opt = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.extend([k.to_string(), val]);
            }
        };
        opt("--slide-mpp", self.slide_mpp.map(|x| x.to_string()));
        opt("--stride", self.stride.map(|x| x.to_string()));
        opt("--min-tissue", self.min_tissue.map(|x| x.to_string()));
        opt("--batch-size", self.batch_size.map(|x| x.to_string()));
        let device = device.to_possible_value().expect("not skipped");
        opt("--device", Some(device.get_name().to_string()));
        let precision = self.precision.to_possible_value().expect("not skipped");
        opt("--precision", Some(precision.get_name().to_string()));
        opt("--max-unreadable", Some(self.max_unreadable.to_string()));
        if self.tta == Tta::D4 {
            v.extend(["--tta".into(), "d4".into()]);
        }
        v.extend(self.stain.argv()?);
        Ok(v)
    }
}

pub fn run(a: HeatmapArgs) -> anyhow::Result<ExitCode> {
    let threads = a.threads.unwrap_or_else(all_cores);
    // candle's CPU kernels use the global rayon pool and read this variable for gemm.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the inference thread pool")?;

    let device = super::args::device(a.device)?;
    let ran_on = if device.is_cuda() {
        DeviceChoice::Cuda
    } else {
        DeviceChoice::Cpu
    };
    let (mut classifier, mut pipeline) =
        Classifier::load_with_pipeline(a.pipeline.as_deref(), a.model.as_deref(), &device)?;
    if let Some(stride) = a.stride {
        pipeline.set_stride(stride)?;
    }
    if let Some(v) = a.min_tissue {
        if !(0.0..=1.0).contains(&v) {
            bail!("--min-tissue {v}: expected 0..=1");
        }
        pipeline.min_tissue = v;
    }
    if let Some(v) = a.batch_size {
        pipeline.batch_size = v;
    }
    classifier.tta = a.tta == Tta::D4;
    classifier.set_precision(a.precision)?;
    if !classifier.card.trained {
        eprintln!(
            "histomap: warning: {} holds an UNTRAINED model (random weights); its maps mean nothing",
            classifier.dir.display()
        );
    }
    let stain = a.stain.resolve(&classifier.card, &classifier.dir)?;
    let child = Box::new(a.child_command(threads, ran_on)?);
    let slides = run::collect_slides(&a.inputs)?;
    if slides.is_empty() {
        bail!("no slides found in {}", shown(&a.inputs));
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
        shard: a.shard.unwrap_or(Shard::ALL),
        max_unreadable: a.max_unreadable,
        stain,
        child,
    };
    if let Some(name) = &a.child {
        let [slide] = &slides[..] else {
            bail!("--child runs exactly one slide");
        };
        return Ok(if run::serve_child(slide, name, &job) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let reports = {
        let bars = Bars::new(a.quiet);
        run::run_all(&slides, &job, &bars)?
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
