//! The `histomap` command: parses arguments, calls the library, maps the result to an
//! exit code (0 success, 1 a slide or the job failed, 2 bad usage).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use histomap::augment::Augment;
use histomap::dataset::Dataset;
use histomap::evaluate::EvalOptions;
use histomap::model::{self, Architecture, Classifier, DeviceChoice, ModelCard};
use histomap::pipeline::Pipeline;
use histomap::progress::{warn_checked, Bars, EvalBar, TrainBars};
use histomap::run::{self, Job, Outcome};
use histomap::shard::Shard;
use histomap::slide;
use histomap::stream::StreamOptions;
use histomap::train::TrainOptions;

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
    /// Write a grouped, class-stratified K-fold split of a tile dataset (CSV with
    /// path, label, group, fold). Tiles of one group (patient or slide) and
    /// byte-identical tiles always share a fold. Reproducible from --seed.
    Split {
        #[command(flatten)]
        tiles: TileArgs,
        /// CSV file to write.
        #[arg(long, short)]
        out: PathBuf,
        /// Number of folds (at least 2; at most the number of groups can hold tiles).
        #[arg(long, default_value_t = 5, value_parser = at_least::<2>)]
        folds: usize,
        /// Seed of the shuffle that assigns groups to folds.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a patch classifier into a model folder (model.safetensors + card.json of
    /// the best validation epoch, training.csv, checkpoint). Validation: fold --fold of
    /// --split, else the data's own train/valid split, else grouped folds of the data.
    Train(TrainArgs),
    /// Evaluate a model on tiles: metrics.json (accuracy, balanced accuracy, macro F1,
    /// ROC AUC, per class, confusion matrix) and predictions.csv. Byte-identical tiles
    /// are counted once.
    Evaluate {
        /// Model folder (card.json + model.safetensors, or a WSInfer model directory).
        #[arg(long)]
        model: PathBuf,
        /// Tiles: class folders, a Kaggle folder (train/ + train_labels.csv), a manifest
        /// CSV (path,label[,group][,split]) or a folder of PCam HDF5 files (*_x.h5 +
        /// *_y.h5).
        #[arg(long)]
        data: PathBuf,
        /// Folder for metrics.json, predictions.csv, confusion.png and roc.png.
        #[arg(long, short)]
        out: PathBuf,
        /// Only tiles of this data-given split: train, valid or test.
        #[arg(long, value_parser = split_name)]
        split: Option<String>,
        /// Test-time augmentation: d4 averages the 8 dihedral orientations.
        #[arg(long, value_enum, default_value = "none")]
        tta: Tta,
        /// Tiles per forward pass.
        #[arg(long, default_value_t = 64, value_parser = batch_size)]
        batch_size: usize,
        /// Where the model runs.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Leave out unreadable tiles, with a warning and a count, and list them in
        /// metrics.json (default: the first one is an error naming it).
        #[arg(long)]
        skip_bad: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write a Slurm job array that runs `heatmap` over the slides, N tasks each taking
    /// a deterministic part of them; with --submit, submit it through sbatch. Takes
    /// `heatmap`'s options but --shard and --threads, which each task sets (its array
    /// index; --cpus). Resubmitting the script redoes only unfinished slides, unless
    /// --force was given: it is written into the script, so every submission redoes all.
    Slurm(SlurmArgs),
    /// Where a run stands: done, failed, running and missing slides, read from OUT's
    /// markers (no Slurm needed).
    Status {
        /// The run's output folder.
        out: PathBuf,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Merge every slide's summary into OUT/cohort.csv and a static OUT/index.html
    /// (thumbnails with overlays, class areas, sortable table, failed slides) that
    /// opens from disk with no server.
    Report {
        /// The run's output folder.
        out: PathBuf,
    },
    /// Write a model with RANDOM, UNTRAINED weights for a pipeline's classes. For
    /// testing the plumbing only: its maps mean nothing, and its card says so.
    InitModel {
        /// Pipeline whose classes, input size, MPP and normalisation the model takes.
        #[arg(long, short)]
        pipeline: PathBuf,
        /// Network architecture.
        #[arg(long, value_enum, default_value = "smallcnn")]
        arch: Architecture,
        /// Model folder to write (card.json + model.safetensors).
        #[arg(long, short)]
        out: PathBuf,
        /// Replace the weights of an existing model folder.
        #[arg(long)]
        force: bool,
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
    /// Microns per pixel of slides that do not record it (PNG, JPEG, many plain TIFFs);
    /// slides that record their own keep it. From 0.01 to 100.
    #[arg(long, value_parser = mpp)]
    slide_mpp: Option<f64>,
    /// Override the pipeline's stride (pixels at the model's MPP, 1 to 4 × the patch
    /// size); below the patch size, patches overlap.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    stride: Option<u32>,
    /// Override the minimum tissue fraction for a patch to be classified (0..=1); a
    /// patch with no tissue at all is never classified, so 0 means "any tissue".
    #[arg(long)]
    min_tissue: Option<f32>,
    /// Override the pipeline's batch size.
    #[arg(long, value_parser = batch_size)]
    batch_size: Option<usize>,
    /// Worker threads for reading and for inference; default: all cores; at most 1024.
    #[arg(long, value_parser = threads)]
    threads: Option<usize>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Test-time augmentation: d4 averages each patch's 8 dihedral orientations
    /// (8× the inference time).
    #[arg(long, value_enum, default_value = "none")]
    tta: Tta,
    /// Run only part K/N of the slides (0-based K; sorted by path, balanced by file
    /// size), so N workers with the same arguments cover every slide exactly once;
    /// `slurm` takes K and N from the Slurm array task's environment.
    #[arg(long, value_name = "K/N|slurm")]
    shard: Option<Shard>,
    /// Redo slides that are already finished.
    #[arg(long)]
    force: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

impl HeatmapArgs {
    /// The `heatmap` command line that repeats these arguments with absolute paths,
    /// leaving out --shard, --threads and --quiet, which each worker sets.
    fn worker_argv(&self) -> anyhow::Result<Vec<String>> {
        let abs = |p: &PathBuf| -> anyhow::Result<String> {
            Ok(std::path::absolute(p)
                .with_context(|| format!("{}: cannot make absolute", p.display()))?
                .display()
                .to_string())
        };
        let mut v = vec!["heatmap".to_string()];
        for i in &self.inputs {
            v.push(abs(i)?);
        }
        v.extend(["--pipeline".into(), abs(&self.pipeline)?]);
        v.extend(["--out".into(), abs(&self.out)?]);
        if let Some(m) = &self.model {
            v.extend(["--model".into(), abs(m)?]);
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
        let device = self.device.to_possible_value().expect("not skipped");
        opt("--device", Some(device.get_name().to_string()));
        if self.tta == Tta::D4 {
            v.extend(["--tta".into(), "d4".into()]);
        }
        if self.force {
            v.push("--force".into());
        }
        Ok(v)
    }
}

#[derive(Args)]
struct SlurmArgs {
    #[command(flatten)]
    heatmap: HeatmapArgs,
    /// Array tasks (workers).
    #[arg(long, value_parser = at_least::<1>)]
    array: usize,
    /// Slurm partition to submit to; default: the cluster's.
    #[arg(long)]
    partition: Option<String>,
    /// CPUs per task.
    #[arg(long, default_value_t = 4)]
    cpus: usize,
    /// Memory per task (sbatch syntax, e.g. 8G).
    #[arg(long)]
    mem: Option<String>,
    /// GPUs per task (the workers then run with --device cuda unless --device is given).
    #[arg(long)]
    gpus: Option<u32>,
    /// Time limit per task (sbatch syntax, e.g. 4:00:00).
    #[arg(long)]
    time: Option<String>,
    /// Slurm job name.
    #[arg(long, default_value = "histomap")]
    job_name: String,
    /// Where to write the script; default OUT/histomap.sbatch.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Submit it with sbatch and print the job id.
    #[arg(long)]
    submit: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Tta {
    None,
    D4,
}

/// A tile dataset and the pipeline whose classes label it.
#[derive(Args)]
struct TileArgs {
    /// Class folders, a Kaggle folder (train/ + train_labels.csv), a manifest CSV
    /// (path,label[,group][,split]; group may be called patient or slide) or a folder
    /// of PCam HDF5 files (*_x.h5 + *_y.h5).
    #[arg(long)]
    data: PathBuf,
    /// Pipeline file: the classes (by name, in order), input size, MPP.
    #[arg(long, short)]
    pipeline: PathBuf,
    /// Leave out tiles that cannot be read or decoded, with a warning and a count
    /// (default: the first one is an error naming it). Every tile is read once before
    /// any work starts.
    #[arg(long)]
    skip_bad: bool,
}

impl TileArgs {
    /// The pipeline, the dataset's readable tiles (but for its `test` split: see
    /// [`load_tiles`]), and their hashes.
    fn load(&self) -> anyhow::Result<(Pipeline, Dataset, Vec<[u8; 32]>)> {
        let pipeline = Pipeline::load(&self.pipeline)?;
        let (dataset, hashes) = load_tiles(&self.data, &pipeline, self.skip_bad)?;
        Ok((pipeline, dataset, hashes))
    }
}

/// Loads and checks a tile dataset for `split` and `train`, warning of the tiles
/// `skip_bad` left out and of tiles not of the pipeline's patch size, and reporting
/// exact duplicates. Tiles of the data's own `test` split (PCam ships one beside train
/// and valid) are left out too: training and its folds never see them.
fn load_tiles(
    data: &Path,
    pipeline: &Pipeline,
    skip_bad: bool,
) -> anyhow::Result<(Dataset, Vec<[u8; 32]>)> {
    let size = pipeline.patch_size;
    let mut dataset = Dataset::load(data, &pipeline.class_names())?;
    let before = dataset.samples.len();
    dataset
        .samples
        .retain(|s| s.split.as_deref() != Some("test"));
    let tests = before - dataset.samples.len();
    if tests > 0 {
        if dataset.samples.is_empty() {
            bail!(
                "{}: all {tests} tiles are in the data's test split, which split and train never use",
                data.display()
            );
        }
        eprintln!("histomap: left out the {tests} tile(s) of the data's test split");
    }
    let checked = dataset.check(skip_bad)?;
    warn_checked(&checked.skipped, checked.size_warning(size).as_deref());
    let hashes = checked.hashes;
    let dups = histomap::dataset::duplicates(&hashes);
    if !dups.is_empty() {
        eprintln!(
            "histomap: {} group(s) of byte-identical tiles ({} extra copies); none straddles training and validation",
            dups.len(),
            dups.iter().map(|g| g.len() - 1).sum::<usize>()
        );
    }
    // The same pixels under two labels: at least one label is wrong, and no split can
    // keep that from training.
    let label = |i: usize| &dataset.classes[dataset.samples[i].label];
    // Per group, its first tile and the first tile labelled otherwise.
    let conflicts: Vec<(usize, usize)> = dups
        .iter()
        .filter_map(|g| {
            g.iter()
                .find(|&&i| label(i) != label(g[0]))
                .map(|&i| (g[0], i))
        })
        .collect();
    if let Some(&(first, other)) = conflicts.first() {
        eprintln!(
            "histomap: warning: {} group(s) of byte-identical tiles carry different labels, \
             e.g. {} ({}) and {} ({})",
            conflicts.len(),
            dataset.samples[first].tile.name(),
            label(first),
            dataset.samples[other].tile.name(),
            label(other)
        );
    }
    Ok((dataset, hashes))
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    tiles: TileArgs,
    /// Model folder to write.
    #[arg(long, short)]
    out: PathBuf,
    /// Network architecture.
    #[arg(long, value_enum, default_value = "smallcnn")]
    arch: Architecture,
    /// Epochs in all (a resumed run counts the ones already done).
    #[arg(long, default_value_t = 30, value_parser = at_least::<1>)]
    epochs: usize,
    /// Tiles per optimiser step.
    #[arg(long, default_value_t = 32, value_parser = batch_size)]
    batch_size: usize,
    /// Peak learning rate (AdamW; one warm-up epoch, then cosine decay).
    #[arg(long, default_value_t = 1e-3, value_parser = non_negative)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4, value_parser = non_negative)]
    weight_decay: f64,
    /// Stop after this many epochs without a better validation metric.
    #[arg(long, default_value_t = 10, value_parser = at_least::<1>)]
    patience: usize,
    /// Seed of initialisation, shuffling and augmentation: one seed, one result.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from the checkpoint in --out (same result as an uninterrupted run);
    /// without one, start afresh, so that a script may always pass it.
    #[arg(long)]
    resume: bool,
    /// Start afresh in an --out that already holds a model or a checkpoint, replacing it.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Stop after this many epochs in this run, leaving the checkpoint for --resume.
    #[arg(long, value_parser = at_least::<1>)]
    epochs_per_run: Option<usize>,
    /// A split CSV from `histomap split`; fold --fold validates.
    #[arg(long)]
    split: Option<PathBuf>,
    /// The fold of --split that validates.
    #[arg(long, default_value_t = 0)]
    fold: usize,
    /// Folds when the split is made here (no --split, no split column in the data).
    #[arg(long, default_value_t = 5, value_parser = at_least::<2>)]
    folds: usize,
    /// Train on every tile of --data: no validation, no early stopping, the last epoch
    /// is kept (for the final model once cross-validation has chosen the settings).
    #[arg(long, conflicts_with_all = ["split", "fold"])]
    no_val: bool,
    /// More training tiles (any --data layout), added to the training side of every
    /// split and never validated on: e.g. background cut from other slides.
    #[arg(long)]
    extra_train: Option<PathBuf>,
    /// Start from this model folder's weights (same names and shapes; a classifier head
    /// for other classes starts fresh), e.g. a model trained on PCam.
    #[arg(long)]
    init: Option<PathBuf>,
    /// No augmentation (by default: D4, HED stain jitter, zoom).
    #[arg(long)]
    no_augment: bool,
    /// HED stain jitter σ: each stain's density scaled by U(1-σ, 1+σ) and shifted by
    /// U(-σ, σ)·0.1; 0.05 is light, 0.2 strong (the σ of Tellez et al. 2019).
    #[arg(long, default_value_t = 0.05)]
    hed: f32,
    /// Zoom in by up to 1 + this (a random crop resized back). The crop may miss a
    /// tile's edges: where a label describes only the centre (PCam's central 32 px),
    /// keep it small enough that the centre stays in every crop (≤ 0.5 for PCam).
    #[arg(long, default_value_t = 0.15)]
    zoom: f32,
    /// Validate and keep an exponential moving average of the weights, with this decay
    /// per step (e.g. 0.99 for a few hundred steps, 0.999 for thousands), instead of
    /// the last step's weights: steadier, and better on unseen slides.
    #[arg(long, value_name = "DECAY")]
    ema: Option<f64>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Loader threads; default: all cores; at most 1024.
    #[arg(long, value_parser = threads)]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `histomap info … | head` would panic on the closed pipe;
    // the default action ends the process quietly, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition at start, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
        Command::Split {
            tiles,
            out,
            folds,
            seed,
        } => {
            let same = |a: &Path, b: &Path| {
                std::fs::canonicalize(a)
                    .is_ok_and(|a| std::fs::canonicalize(b).is_ok_and(|b| a == b))
            };
            if same(&out, &tiles.data) {
                bail!(
                    "{}: --out names the --data file; the split goes to a file of its own",
                    out.display()
                );
            }
            let (_, dataset, hashes) = tiles.load()?;
            let fold = histomap::split::grouped_folds(
                &dataset.samples,
                &hashes,
                dataset.classes.len(),
                folds,
                seed,
            );
            let used = fold.iter().collect::<std::collections::HashSet<_>>().len();
            if used < 2 {
                bail!(
                    "{}: all {} tiles are one group (patient or slide, with the tiles that \
                     share its bytes): no split can keep validation apart from training",
                    tiles.data.display(),
                    dataset.samples.len()
                );
            }
            if used < folds {
                eprintln!(
                    "histomap: warning: only {used} of {folds} folds hold tiles: the data has \
                     too few groups (patients or slides) for more"
                );
            }
            histomap::split::write_csv(&out, &dataset, &fold)?;
            eprintln!(
                "wrote {} tiles in {folds} folds to {}",
                dataset.samples.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) => train(args),
        Command::Evaluate {
            model,
            data,
            out,
            split,
            tta,
            batch_size,
            device,
            skip_bad,
            quiet,
        } => {
            let opts = EvalOptions {
                split,
                tta: tta == Tta::D4,
                batch_size,
                threads: all_cores(),
                skip_bad,
            };
            let e = histomap::evaluate::evaluate(
                &model,
                &data,
                &out,
                &opts,
                &device.device()?,
                &EvalBar::new(quiet),
            )?;
            let m = &e.metrics;
            println!(
                "{} tiles ({} duplicates dropped){}",
                m.n,
                e.duplicates_dropped,
                if e.tta { ", D4 TTA" } else { "" }
            );
            println!("accuracy           {:.4}", m.accuracy);
            println!("balanced accuracy  {:.4}", m.balanced_accuracy);
            println!("macro F1           {:.4}", m.macro_f1);
            println!(
                "ROC AUC            {}",
                m.roc_auc.map_or("n/a".into(), |a| format!("{a:.4}"))
            );
            println!(
                "{:<12} {:>9} {:>9} {:>9} {:>8}",
                "class", "precision", "recall", "f1", "support"
            );
            for c in &m.per_class {
                println!(
                    "{:<12} {:>9.4} {:>9.4} {:>9.4} {:>8}",
                    c.name, c.precision, c.recall, c.f1, c.support
                );
            }
            println!("wrote {}", out.join("metrics.json").display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Slurm(args) => slurm(args),
        Command::Status { out, json } => status(&out, json),
        Command::Report { out } => {
            let r = histomap::report::write(&out)?;
            println!(
                "{} done, {} failed, {} running, {} missing",
                r.done, r.failed, r.running, r.missing
            );
            println!("wrote {} and {}", r.csv.display(), r.html.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::InitModel {
            pipeline,
            arch,
            out,
            force,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            arch.check_input_size(pipeline.patch_size, &pipeline.source)?;
            let card = ModelCard::for_pipeline(
                &pipeline,
                arch,
                false,
                "random initialisation by `histomap init-model`: not trained".into(),
            );
            model::write_random(&out, &card, force)?;
            eprintln!("wrote an UNTRAINED {arch} model to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn train(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let threads = a.threads.unwrap_or_else(all_cores);
    if !(0.0..1.0).contains(&a.hed) || !(0.0..=1.0).contains(&a.zoom) {
        bail!(
            "--hed {} / --zoom {}: expected 0 <= hed < 1 and 0 <= zoom <= 1",
            a.hed,
            a.zoom
        );
    }
    if let Some(d) = a.ema.filter(|d| !(0.0..1.0).contains(d)) {
        bail!("--ema {d}: expected a decay in [0, 1)");
    }
    let (pipeline, dataset, hashes) = a.tiles.load()?;
    let extra = match &a.extra_train {
        Some(extra) => Some(load_tiles(extra, &pipeline, a.tiles.skip_bad)?),
        None => None,
    };
    let mut split = if a.no_val {
        histomap::train::Split {
            train: dataset.samples.clone(),
            val: Vec::new(),
            val_duplicates_dropped: 0,
            validation: "none (--no-val: every tile trains)".into(),
        }
    } else {
        histomap::train::split_dataset(
            &dataset,
            &hashes,
            extra.as_ref().map_or(&[], |(_, h)| h.as_slice()),
            a.split.as_deref(),
            a.fold,
            a.folds,
            a.seed,
        )?
    };
    if split.val_duplicates_dropped > 0 {
        eprintln!(
            "histomap: {} validation tile(s) left out: the same bytes are on the training side \
             or earlier in validation",
            split.val_duplicates_dropped
        );
    }
    let straddling = split.straddling_groups();
    if let Some(first) = straddling.first() {
        eprintln!(
            "histomap: warning: {} group(s) have tiles on both sides of the split (first: \
             {first}), so validation scores partly seen patients or slides",
            straddling.len()
        );
    }
    if let Some((extra, _)) = extra {
        split.train.extend(extra.samples);
    }
    let counts = histomap::dataset::class_counts(&split.train, dataset.classes.len());
    let unseen: Vec<&str> = (dataset.classes.iter().zip(&counts))
        .filter(|(_, &n)| n == 0)
        .map(|(c, _)| c.as_str())
        .collect();
    if !unseen.is_empty() {
        eprintln!(
            "histomap: warning: no training tile of {unseen:?}: the model will output these \
             classes but cannot learn them"
        );
    }
    let opts = TrainOptions {
        arch: a.arch,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        patience: a.patience,
        seed: a.seed,
        augment: if a.no_augment {
            Augment::NONE
        } else {
            Augment {
                d4: true,
                hed: a.hed,
                scale: a.zoom,
            }
        },
        threads,
        init: a.init.clone(),
        data: std::iter::once(a.tiles.data.clone())
            .chain(a.extra_train.clone())
            .collect(),
        ema: a.ema,
    };
    let bars = TrainBars::new(a.quiet);
    let report = histomap::train::train(
        &pipeline,
        &split,
        &a.out,
        &opts,
        histomap::train::Resume {
            resume: a.resume,
            replace: a.force,
            epochs_this_run: a.epochs_per_run,
        },
        &a.device.device()?,
        &bars,
    )?;
    let state = if report.finished {
        "finished"
    } else {
        "paused (resume with --resume)"
    };
    match (report.best_epoch, report.best_metric) {
        (Some(_), Some(_)) if a.no_val => eprintln!(
            "{state} after {} epoch(s), no validation; model in {}",
            report.epochs_done,
            report.model_dir.display()
        ),
        (Some(e), Some(m)) => eprintln!(
            "{state} after {} epoch(s); best validation metric {m:.4} at epoch {e}; model in {}",
            report.epochs_done,
            report.model_dir.display()
        ),
        _ => eprintln!("no epoch completed"),
    }
    Ok(ExitCode::SUCCESS)
}

/// clap parser: a whole number of at least `MIN`.
fn at_least<const MIN: usize>(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        Ok(n) => Err(format!("{n} is below the least allowed, {MIN}")),
        Err(e) => Err(e.to_string()),
    }
}

/// clap parser: tiles in a batch, 1 to [`histomap::pipeline::MAX_BATCH`].
fn batch_size(s: &str) -> Result<usize, String> {
    at_most(s, histomap::pipeline::MAX_BATCH)
}

/// clap parser: threads, 1 to 1024 (thousands of threads only stall a machine).
fn threads(s: &str) -> Result<usize, String> {
    at_most(s, 1024)
}

fn at_most(s: &str, most: usize) -> Result<usize, String> {
    let n = at_least::<1>(s)?;
    if n > most {
        return Err(format!("{n} is above the most allowed, {most}"));
    }
    Ok(n)
}

/// clap parser: microns per pixel ([`histomap::pipeline::plausible_mpp`]).
fn mpp(s: &str) -> Result<f64, String> {
    finite(s, histomap::pipeline::plausible_mpp, "between 0.01 and 100")
}

/// clap parser: a data-given split's name, as manifests may spell it (`val`, `Valid`).
fn split_name(s: &str) -> Result<String, String> {
    histomap::dataset::split_name(s)?.ok_or_else(|| "a split name cannot be blank".into())
}

/// clap parser: a finite number of at least 0.
fn non_negative(s: &str) -> Result<f64, String> {
    finite(s, |x| x >= 0.0, "of at least 0")
}

fn finite(s: &str, ok: impl Fn(f64) -> bool, want: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && ok(x) => Ok(x),
        Ok(x) => Err(format!("{x} is not a finite number {want}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Paths as a user typed them, comma-separated.
fn shown(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
    let threads = a.threads.unwrap_or_else(all_cores);
    // candle's CPU kernels use the global rayon pool and read this variable for gemm.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the inference thread pool")?;

    let mut pipeline = Pipeline::load(&a.pipeline)?;
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
    let model_dir = a
        .model
        .clone()
        .unwrap_or_else(|| pipeline.model_path.clone());
    let device = a.device.device()?;
    let mut classifier = Classifier::load(&model_dir, &device)?;
    classifier.card.check_against(&pipeline, &model_dir)?;
    classifier.tta = a.tta == Tta::D4;
    if !classifier.card.trained {
        eprintln!(
            "histomap: warning: {} holds an UNTRAINED model (random weights); its maps mean nothing",
            model_dir.display()
        );
    }
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
    };
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

fn slurm(a: SlurmArgs) -> anyhow::Result<ExitCode> {
    if a.heatmap.shard.is_some() {
        bail!("--shard is set per task by the script (its array index); leave it out");
    }
    if a.heatmap.threads.is_some() {
        bail!("--threads is set per task by the script (--cpus); leave it out");
    }
    let mut heatmap = a.heatmap;
    if a.gpus.is_some_and(|g| g > 0) && heatmap.device == DeviceChoice::Auto {
        heatmap.device = DeviceChoice::Cuda;
    }
    // Check the job before it reaches a queue: the pipeline and model load, and the
    // slide list is what every task will see.
    let pipeline = Pipeline::load(&heatmap.pipeline)?;
    let model_dir = heatmap.model.clone().unwrap_or(pipeline.model_path.clone());
    Classifier::load(&model_dir, &candle_core::Device::Cpu)?
        .card
        .check_against(&pipeline, &model_dir)?;
    let slides = run::collect_slides(&heatmap.inputs)?;
    if slides.is_empty() {
        bail!("no slides found in {}", shown(&heatmap.inputs));
    }
    let ledger = histomap::ledger::Ledger::create(&heatmap.out)?;
    ledger.write_slides(&run::slide_entries(&slides))?;

    let (default_script, logs) =
        histomap::slurm::default_paths(&std::path::absolute(&heatmap.out)?);
    std::fs::create_dir_all(&logs).with_context(|| format!("{}", logs.display()))?;
    let opts = histomap::slurm::SlurmOptions {
        array: a.array,
        job_name: a.job_name,
        partition: a.partition,
        cpus: a.cpus,
        mem: a.mem,
        gpus: a.gpus,
        time: a.time,
    };
    let exe = std::env::current_exe().context("locating the histomap executable")?;
    let text = histomap::slurm::script(&exe, &heatmap.worker_argv()?, &logs, &opts)?;
    let script = a.script.unwrap_or(default_script);
    histomap::output::write_atomic(&script, text.as_bytes())?;
    eprintln!(
        "wrote {} ({} tasks over {} slides)",
        script.display(),
        opts.array,
        slides.len()
    );
    if a.submit {
        let id = histomap::slurm::submit(&script)?;
        println!("{id}");
        eprintln!(
            "submitted job {id}; follow it with: histomap status {}",
            heatmap.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status(out: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    use histomap::ledger::{Ledger, SlideState};
    let survey = Ledger::of_run(out)?.survey()?;
    for (name, path, state) in &survey {
        let word = state.word();
        let detail = match state {
            SlideState::Done | SlideState::Missing => String::new(),
            SlideState::Failed(f) => f.error.clone(),
            SlideState::Unreadable { error } => error.clone(),
            SlideState::Running { worker } => worker.as_ref().map_or(String::new(), |w| {
                let secs = histomap::ledger::Worker::now().time - w.time;
                format!("{w}, for {secs:.0} s")
            }),
        };
        if json {
            let row = serde_json::json!({
                "slide": name, "path": path, "state": word, "detail": detail,
            });
            println!("{row}");
        } else {
            println!("{word:<8} {name}  {detail}");
        }
    }
    if !json {
        let count = |w: &str| survey.iter().filter(|s| s.2.word() == w).count();
        println!(
            "{} done, {} failed, {} running, {} missing (of {})",
            count("done"),
            count("failed"),
            count("running"),
            count("missing"),
            survey.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
