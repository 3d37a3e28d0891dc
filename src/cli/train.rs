//! `histomap train`: a model folder from tiles.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use histomap::learn::augment::Augment;
use histomap::learn::calibrate;
use histomap::learn::dataset;
use histomap::learn::train::{self, Resume, Split, TrainOptions};
use histomap::model::{Architecture, DeviceChoice, FineTune};
use histomap::progress::TrainBars;

use super::args::{all_cores, at_least, batch_size, non_negative, threads};
use super::tiles::{load_tiles, TileArgs};

#[derive(Args)]
pub struct TrainArgs {
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
    /// Peak learning rate (AdamW; a linear warm-up of one epoch, or --warmup, then cosine
    /// decay).
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
    /// for other classes starts fresh), e.g. a model trained on PCam; or `imagenet`:
    /// the --arch's ImageNet weights installed by scripts/fetch-imagenet.sh (no network
    /// at run time), with ImageNet's normalisation.
    #[arg(long, value_name = "DIR|imagenet")]
    init: Option<PathBuf>,
    /// With --init: the body's learning rate as a fraction of --lr (the head's); below 1
    /// keeps pretrained features from being washed out early.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative, requires = "init")]
    body_lr: f64,
    /// With --init: train only the new head for this many epochs first.
    #[arg(long, default_value_t = 0, requires = "init")]
    head_epochs: usize,
    /// With --init: train only the head, ever (a linear probe of the features).
    #[arg(long, requires = "init")]
    freeze_body: bool,
    /// BatchNorm keeps its running statistics while training (for batches too small to
    /// give batch statistics, below about 16).
    #[arg(long)]
    freeze_bn: bool,
    /// Linear learning-rate warm-up over this fraction of all steps, then cosine decay
    /// (default: one epoch).
    #[arg(long, value_name = "FRACTION")]
    warmup: Option<f64>,
    /// No augmentation (by default: D4, HED stain jitter, zoom).
    #[arg(long)]
    no_augment: bool,
    /// HED stain jitter σ: each stain's density scaled by U(1-σ, 1+σ) and shifted by
    /// U(-σ, σ)·0.1; 0.05 is light, 0.2 strong (the σ of Tellez et al. 2019).
    #[arg(long, default_value_t = 0.05)]
    hed: f32,
    /// Stain normalisation of every tile by its own stains, to the target of
    /// --stain-ref or, without it, of up to 1,000 training tiles. Recorded in the card
    /// (method and target), so that `heatmap` and `evaluate` normalise each slide or
    /// tile to the same target. --hed jitter still applies, after it.
    #[arg(long, value_enum, default_value = "none", value_name = "METHOD")]
    stain_norm: histomap::stain::Method,
    /// An image whose stains are the target (default: the training tiles').
    #[arg(long, value_name = "IMAGE")]
    stain_ref: Option<PathBuf>,
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

pub fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
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
    if let Some(f) = a.warmup.filter(|f| !(0.0..=1.0).contains(f)) {
        bail!("--warmup {f}: expected a fraction of the run in [0, 1]");
    }
    let imagenet = a.init.as_deref() == Some(std::path::Path::new("imagenet"));
    let init = if imagenet {
        Some(histomap::model::imagenet::weights_dir(a.arch)?)
    } else {
        a.init.clone()
    };
    let (pipeline, dataset, hashes) = a.tiles.load()?;
    let extra = match &a.extra_train {
        Some(extra) => Some(load_tiles(extra, &pipeline, a.tiles.skip_bad)?),
        None => None,
    };
    let mut split = if a.no_val {
        Split {
            train: dataset.samples.clone(),
            val: Vec::new(),
            val_duplicates_dropped: 0,
            validation: "none (--no-val: every tile trains)".into(),
        }
    } else {
        train::split_dataset(
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
    let counts = dataset::class_counts(&split.train, dataset.classes.len());
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
        init,
        fine_tune: FineTune {
            imagenet,
            body_lr: a.body_lr,
            head_epochs: a.head_epochs,
            freeze_body: a.freeze_body,
            freeze_bn: a.freeze_bn,
        },
        warmup: a.warmup,
        data: std::iter::once(a.tiles.data.clone())
            .chain(a.extra_train.clone())
            .collect(),
        ema: a.ema,
        stain_norm: a.stain_norm,
        stain_ref: a.stain_ref.clone(),
    };
    let bars = TrainBars::new(a.quiet);
    let report = train::train(
        &pipeline,
        &split,
        &a.out,
        &opts,
        Resume {
            resume: a.resume,
            replace: a.force,
            epochs_this_run: a.epochs_per_run,
        },
        &super::args::device(a.device)?,
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
    if report.finished {
        let threads = opts.threads;
        match calibrate::after_training(&report.model_dir, &split.val, a.batch_size, threads) {
            Ok(card) => eprintln!("{}", super::calibrate::recorded(&card)),
            Err(why) => eprintln!("int8 not checked: {why}; --precision auto runs f32"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
