//! Training and tile prediction. In: a dataset split into train and validation, a
//! pipeline and options. Out: a model folder (`model.safetensors` + `card.json` of the
//! best epoch), `training.csv`, and a checkpoint that `--resume` continues from.
//!
//! The loader has the stream's shape: rayon workers decode, augment and preprocess a
//! batch while the trainer runs the previous one, through a bounded channel. Data order
//! and augmentation are seeded per (epoch, sample), weights are initialised from the
//! seed, and the checkpoint holds weights, BatchNorm statistics and AdamW moments, so a
//! resumed run gives the same result as an uninterrupted one.

mod checkpoint;
mod loader;
mod optim;
mod record;
mod validation;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use self::checkpoint::{load_checkpoint, lock_out, save_checkpoint, State, Task, STATE};
use self::loader::{load_batch, measure_normalization, mix, stream_batches};
pub use self::loader::{predict_tiles, TileInput};
use self::optim::{init_from, init_weights, schedule, weighted_cross_entropy, AdamW, Ema};
use self::record::{save_model, write_history};
pub use self::validation::{split_dataset, Split};
use crate::error::{Error, Result};
use crate::learn::augment::Augment;
use crate::learn::dataset::{pooled_pixels, Sample, STAIN_FIT_TILES};
use crate::learn::metrics;
use crate::model::{Architecture, FineTune, Network, WEIGHTS_FILE};
use crate::pipeline::Pipeline;
use crate::stain::{Method, Normalize, Target};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub arch: Architecture,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate, reached after one warm-up epoch, then cosine decay to zero.
    pub lr: f64,
    pub weight_decay: f64,
    /// Stop when the validation metric has not improved for this many epochs.
    pub patience: usize,
    pub seed: u64,
    pub augment: Augment,
    /// Loader threads.
    pub threads: usize,
    /// A model folder whose weights start the training (tensors of the same name and
    /// shape; the classifier head of a model with other classes keeps its seeded init).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Where the tiles came from, for the model card: `--data` and `--extra-train`.
    #[serde(default)]
    pub data: Vec<PathBuf>,
    /// Validate and keep an exponential moving average of the weights with this decay
    /// per step instead of the last step's weights.
    #[serde(default)]
    pub ema: Option<f64>,
    /// How the body of an `init` model trains.
    #[serde(default)]
    pub fine_tune: FineTune,
    /// The learning rate's linear warm-up as a fraction of all steps; `None`: one epoch.
    #[serde(default)]
    pub warmup: Option<f64>,
    /// Stain normalisation of every tile by its own stains, to the target of
    /// `stain_ref` or, without one, of the training tiles; recorded in the card, so
    /// that `heatmap` and `evaluate` apply it too.
    #[serde(default)]
    pub stain_norm: Method,
    #[serde(default)]
    pub stain_ref: Option<PathBuf>,
}

/// What the caller sees while training runs.
pub trait TrainProgress: Sync {
    /// The run is checked and starts (or resumes) on these tiles.
    fn started(&self, _train_tiles: usize, _val_tiles: usize) {}
    fn epoch_started(&self, _epoch: usize, _batches: usize) {}
    fn batch_done(&self, _loss: f32) {}
    fn epoch_done(&self, _row: &EpochRow) {}
}

pub struct Quiet;
impl TrainProgress for Quiet {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_balanced_accuracy: f64,
    pub val_roc_auc: Option<f64>,
    pub seconds: f64,
}

/// How a training run ended.
#[derive(Debug)]
pub struct TrainReport {
    pub epochs_done: usize,
    pub best_epoch: Option<usize>,
    pub best_metric: Option<f64>,
    pub finished: bool,
    pub model_dir: PathBuf,
}

/// How this run relates to earlier ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resume {
    /// Continue from the checkpoint in the output folder.
    pub resume: bool,
    /// Start afresh even where the output folder holds a model or a checkpoint.
    pub replace: bool,
    /// Stop after this many epochs (the checkpoint stays for the next run).
    pub epochs_this_run: Option<usize>,
}

/// Trains into `out`. The best epoch is the one with the highest validation ROC AUC
/// for two classes, or accuracy for more.
pub fn train(
    pipeline: &Pipeline,
    split: &Split,
    out: &Path,
    opts: &TrainOptions,
    run: Resume,
    device: &Device,
    progress: &dyn TrainProgress,
) -> Result<TrainReport> {
    opts.arch
        .check_input_size(pipeline.patch_size, &pipeline.source)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let _lock = lock_out(out)?;
    let k = pipeline.classes.len();
    if split.train.is_empty() {
        return Err(Error::Usage("no training tiles".into()));
    }
    let varmap = VarMap::new();
    let net = Network::new(
        opts.arch,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
        k,
    )?;
    let ema = opts
        .ema
        .map(|decay| Ema::new(decay, &varmap, opts.arch, k, device))
        .transpose()?;
    let (mut state, mut opt) = start_or_resume(
        out,
        pipeline,
        split,
        opts,
        run,
        &varmap,
        ema.as_ref(),
        device,
    )?;
    let opts = state.options.clone();
    progress.started(split.train.len(), split.val.len());
    let stain = state.stain_target.clone().and_then(|t| {
        let from = t.fitted_on.clone();
        Normalize::new(opts.stain_norm, t, from)
    });
    let input = TileInput::new(&state.normalization, stain);
    let batches_per_epoch = (split.train.len() / opts.batch_size.max(2)).max(1);
    let fit = Fit {
        pool: rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.max(1))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start loader threads: {e}")))?,
        split,
        opts: &opts,
        input: &input,
        size: pipeline.patch_size,
        device,
        net: &net,
        class_w: class_weights(&split.train, k, device)?,
        ema: ema.as_ref(),
        batches_per_epoch,
        total_steps: batches_per_epoch * opts.epochs,
    };

    // Checked before each epoch too, so that resuming a run that stopped early ends it.
    let stopped_early = |s: &State| {
        s.best
            .is_some_and(|(b, _)| s.epochs_done - b >= opts.patience.max(1))
    };
    let mut ran = 0;
    while state.epochs_done < opts.epochs
        && !stopped_early(&state)
        && run.epochs_this_run.is_none_or(|n| ran < n)
    {
        let epoch = state.epochs_done;
        let t = Instant::now();
        let (train_loss, lr) = fit.epoch(epoch, &mut state.step, &mut opt, progress)?;

        // Without validation tiles every epoch is the best so far: the last one is kept.
        let m = validate(&fit.pool, split, pipeline, &input, &|x| {
            let x = x.to_device(device)?;
            Ok(ema.as_ref().map_or(&net, |e| &e.net).forward_t(&x, false)?)
        })?;
        let row = EpochRow {
            epoch: epoch + 1,
            lr,
            train_loss,
            val_loss: m.as_ref().map_or(f64::NAN, |m| m.1),
            val_accuracy: m.as_ref().map_or(f64::NAN, |m| m.0.accuracy),
            val_balanced_accuracy: m.as_ref().map_or(f64::NAN, |m| m.0.balanced_accuracy),
            val_roc_auc: m.as_ref().and_then(|m| m.0.roc_auc.filter(|_| k == 2)),
            seconds: t.elapsed().as_secs_f64(),
        };
        let score = match &m {
            Some((m, _)) if k == 2 => m.roc_auc.unwrap_or(0.0),
            Some((m, _)) => m.accuracy,
            None => (epoch + 1) as f64,
        };
        if state.best.is_none_or(|(_, b)| score > b) {
            state.best = Some((epoch + 1, score));
            let m = m.as_ref().map(|m| &m.0);
            let weights = ema.as_ref().map_or(&varmap, |e| &e.map);
            save_model(out, weights, pipeline, &state, &split.validation, m)?;
        }
        state.epochs_done = epoch + 1;
        state.history.push(row.clone());
        write_history(out, &state.history)?;
        save_checkpoint(out, &varmap, &opt, ema.as_ref(), &mut state)?;
        progress.epoch_done(&row);
        ran += 1;
    }
    Ok(TrainReport {
        epochs_done: state.epochs_done,
        best_epoch: state.best.map(|b| b.0),
        best_metric: state.best.map(|b| b.1),
        finished: state.epochs_done >= opts.epochs || stopped_early(&state),
        model_dir: out.to_path_buf(),
    })
}

/// The state and optimiser this run starts from: the checkpoint in `out` with
/// `--resume` (refused without it, or when the run would not end as the interrupted
/// one would), else epoch 0.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn start_or_resume(
    out: &Path,
    pipeline: &Pipeline,
    split: &Split,
    opts: &TrainOptions,
    run: Resume,
    varmap: &VarMap,
    ema: Option<&Ema>,
    device: &Device,
) -> Result<(State, AdamW)> {
    let Resume {
        resume, replace, ..
    } = run;
    let state_path = out.join(STATE);
    if replace && state_path.is_file() {
        std::fs::remove_file(&state_path).map_err(|e| Error::io(&state_path, e))?;
    }
    Ok(if state_path.is_file() {
        if !resume {
            return Err(Error::Usage(format!(
                "{} holds a checkpoint: pass --resume to continue it or --force to start \
                 afresh, or choose another --out",
                out.display()
            )));
        }
        let state = checkpoint::read_resumable(&state_path, opts, pipeline, split)?;
        let mut opt = AdamW::new(varmap, state.options.weight_decay)?;
        load_checkpoint(&out.join(&state.checkpoint), varmap, &mut opt, ema, device)?;
        opt.t = state.step;
        (state, opt)
    } else {
        // A fresh start: seeded weights (or `--init`'s), and the normalisation the
        // pipeline, the init model or the training tiles give.
        let weights = out.join(WEIGHTS_FILE);
        if weights.exists() && !replace {
            return Err(Error::output(
                &weights,
                "a model is already here; pass --force to replace it, or choose another --out",
            ));
        }
        init_weights(varmap, opts.seed)?;
        if let Some(init) = &opts.init {
            init_from(varmap, opts.arch, init, device)?;
        }
        let opt = AdamW::new(varmap, opts.weight_decay)?;
        if let Some(ema) = ema {
            ema.reset()?;
        }
        // A network started from another model keeps seeing pixels on the scale it
        // learnt them at.
        let normalization = match (&pipeline.normalization, &opts.init) {
            (Some(n), _) => n.clone(),
            (None, Some(_)) if opts.fine_tune.imagenet => crate::model::imagenet::normalization(),
            (None, Some(init)) => crate::model::load_card(init)?.normalization,
            (None, None) => measure_normalization(&split.train, pipeline.patch_size, opts.seed)?,
        };
        let stain_target = match (opts.stain_norm, &opts.stain_ref) {
            (Method::None, _) => None,
            (_, Some(image)) => Some(Target::from_image(image)?),
            (_, None) => {
                let (pixels, n) =
                    pooled_pixels(&split.train, pipeline.patch_size, STAIN_FIT_TILES)?;
                let on = format!("{n} of its training tiles");
                Some(Target::fit(&pixels, on).map_err(|e| {
                    Error::Usage(format!(
                        "--stain-norm {}: no target from the training tiles: {e}",
                        opts.stain_norm
                    ))
                })?)
            }
        };
        let state = State {
            options: opts.clone(),
            normalization,
            stain_target,
            epochs_done: 0,
            step: 0,
            best: None,
            history: Vec::new(),
            train_files: split.train.len(),
            val_files: split.val.len(),
            split_sha256: split.sha256(),
            tiles_sha256: Some(split.tiles_sha256()),
            checkpoint: String::new(),
            task: Some(Task::of(pipeline)),
        };
        (state, opt)
    })
}

/// Class-balanced loss weights: each class weighs as much in total.
fn class_weights(train: &[Sample], k: usize, device: &Device) -> Result<Tensor> {
    let counts = crate::learn::dataset::class_counts(train, k);
    let w: Vec<f32> = counts
        .iter()
        .map(|&c| train.len() as f32 / (k as f32 * c.max(1) as f32))
        .collect();
    Ok(Tensor::new(w, device)?)
}

/// What stays fixed while the epochs of a run go by.
struct Fit<'a> {
    pool: rayon::ThreadPool,
    split: &'a Split,
    opts: &'a TrainOptions,
    input: &'a TileInput,
    size: u32,
    device: &'a Device,
    net: &'a Network,
    class_w: Tensor,
    ema: Option<&'a Ema>,
    batches_per_epoch: usize,
    total_steps: usize,
}

impl Fit<'_> {
    /// One epoch of optimiser steps: the training tiles in the epoch's seeded order,
    /// loaded on the pool while the previous batch trains. Returns the mean training
    /// loss and the last learning rate; `step` counts steps across epochs.
    fn epoch(
        &self,
        epoch: usize,
        step: &mut usize,
        opt: &mut AdamW,
        progress: &dyn TrainProgress,
    ) -> Result<(f64, f64)> {
        let (opts, split, size) = (self.opts, self.split, self.size);
        let mut order: Vec<usize> = (0..split.train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            opts.seed,
            epoch as u64,
            u64::MAX,
        )));
        let batch = opts.batch_size.max(2).min(order.len());
        let batches: Vec<&[usize]> = order
            .chunks_exact(batch)
            .take(self.batches_per_epoch)
            .collect();
        progress.epoch_started(epoch + 1, batches.len());
        let mut loss_sum = 0f64;
        let mut lr = 0f64;
        let warmup = match opts.warmup {
            Some(f) => ((self.total_steps as f64 * f).round() as usize).max(1),
            None => self.batches_per_epoch,
        };
        let tune = &opts.fine_tune;
        let body_frozen = tune.freeze_body || epoch < tune.head_epochs;
        let body_lr = if body_frozen { 0.0 } else { tune.body_lr };
        let head = opts.arch.head_prefix();
        let lr_scale = |name: &str| if name.starts_with(head) { 1.0 } else { body_lr };
        // A frozen body's BatchNorms keep their statistics too.
        let batch_stats = !(body_frozen || tune.freeze_bn);
        stream_batches(
            &self.pool,
            batches.len(),
            |b| {
                let samples: Vec<&Sample> = batches[b].iter().map(|&i| &split.train[i]).collect();
                let aug = |i: usize, img: image::RgbImage| {
                    opts.augment
                        .apply(&img, mix(opts.seed, epoch as u64, batches[b][i] as u64))
                };
                load_batch(&samples, size, self.input, &aug)
            },
            |(pixels, labels)| {
                let n = labels.len();
                let side = size as usize;
                let x = Tensor::from_vec(pixels, (n, 3, side, side), self.device)?;
                let y = Tensor::new(labels, self.device)?;
                let logits = self.net.forward_t(&x, batch_stats)?;
                let loss = weighted_cross_entropy(&logits, &y, &self.class_w)?;
                lr = schedule(opts.lr, *step, warmup, self.total_steps);
                let grads = loss.backward()?;
                opt.step(&grads, lr, &lr_scale)?;
                *step += 1;
                if let Some(ema) = self.ema {
                    ema.update(*step)?;
                }
                let l = loss.to_scalar::<f32>()?;
                loss_sum += f64::from(l);
                progress.batch_done(l);
                Ok(())
            },
        )?;
        Ok((loss_sum / batches.len().max(1) as f64, lr))
    }
}

/// Validation metrics and mean loss of `logits` on the validation tiles; `None` when
/// there are none.
fn validate(
    pool: &rayon::ThreadPool,
    split: &Split,
    pipeline: &Pipeline,
    input: &TileInput,
    logits: &(dyn Fn(&Tensor) -> Result<Tensor> + Sync),
) -> Result<Option<(metrics::Metrics, f64)>> {
    if split.val.is_empty() {
        return Ok(None);
    }
    let probs = predict_tiles(
        pool,
        &split.val,
        pipeline.patch_size,
        input,
        64,
        logits,
        false,
    )?;
    let labels: Vec<usize> = split.val.iter().map(|s| s.label).collect();
    let k = pipeline.classes.len();
    Ok(Some((
        metrics::compute(&labels, &probs, &pipeline.class_names()),
        mean_nll(&labels, &probs, k),
    )))
}

fn mean_nll(labels: &[usize], probs: &[f32], k: usize) -> f64 {
    let total: f64 = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| -f64::from(probs[i * k + y].max(1e-7)).ln())
        .sum();
    total / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straddling_groups_are_named_once() {
        let sample = |group: &str| Sample {
            tile: crate::learn::dataset::Tile::File(format!("{group}.png").into()),
            label: 0,
            group: group.into(),
            split: None,
        };
        let split = Split {
            train: vec![sample("p2"), sample("p1"), sample("p3")],
            val: vec![sample("p3"), sample("p4"), sample("p1"), sample("p3")],
            val_duplicates_dropped: 0,
            validation: String::new(),
        };
        assert_eq!(split.straddling_groups(), ["p1", "p3"]);
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((schedule(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((schedule(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((schedule(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((schedule(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(schedule(1.0, 100, 10, 100) < 1e-12);
    }

    #[test]
    fn weighted_loss_is_plain_cross_entropy_with_equal_weights() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 0], &dev).unwrap();
        let ones = Tensor::new(&[1.0f32, 1.0], &dev).unwrap();
        let ours = weighted_cross_entropy(&logits, &y, &ones)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let plain = candle_nn::loss::cross_entropy(&logits, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((ours - plain).abs() < 1e-6);
    }
}
