//! Training and tile prediction. In: a dataset split into train and validation, a
//! pipeline and options. Out: a model folder (`model.safetensors` + `card.json` of the
//! best epoch), `training.csv`, and a checkpoint that `--resume` continues from.
//!
//! The loader has the stream's shape: rayon workers decode, augment and preprocess a
//! batch while the trainer runs the previous one, through a bounded channel. Data order
//! and augmentation are seeded per (epoch, sample), weights are initialised from the
//! seed, and the checkpoint holds weights, BatchNorm statistics and AdamW moments, so a
//! resumed run gives the same result as an uninterrupted one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, ModuleT, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::dataset::{Dataset, Sample, Tile};
use crate::error::{one_line, Error, Result};
use crate::metrics::{self, Metrics};
use crate::model::{Architecture, ModelCard, Network, CARD_FILE, WEIGHTS_FILE};
use crate::output::write_atomic;
use crate::pipeline::{Normalization, Pipeline};
use crate::preprocess::Normalizer;

const STATE: &str = "checkpoint.json";
const HISTORY: &str = "training.csv";

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

/// Train and validation samples.
pub struct Split {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    /// Validation tiles left out because the same bytes are on the training side or
    /// earlier in validation (so validation scores what `evaluate` scores).
    pub val_duplicates_dropped: usize,
    /// Where validation comes from, in words, for the model card ("fold 0 of split.csv").
    pub validation: String,
}

/// Resumable state, written after every epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    options: TrainOptions,
    normalization: Normalization,
    epochs_done: usize,
    step: usize,
    best: Option<(usize, f64)>,
    history: Vec<EpochRow>,
    train_files: usize,
    val_files: usize,
    split_sha256: String,
    /// [`Split::tiles_sha256`]; absent in checkpoints of earlier versions.
    #[serde(default)]
    tiles_sha256: Option<String>,
    /// The weights and optimiser file this state belongs to.
    checkpoint: String,
    /// What the pipeline asked for; absent in checkpoints of earlier versions.
    #[serde(default)]
    task: Option<Task>,
}

/// What a pipeline fixes about a network's input and output: a resumed run must keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Task {
    input_size: u32,
    mpp: f64,
    classes: Vec<String>,
}

impl Task {
    fn of(pipeline: &Pipeline) -> Self {
        Self {
            input_size: pipeline.patch_size,
            mpp: pipeline.mpp,
            classes: pipeline.class_names(),
        }
    }
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

/// Holds `out` for this run: two runs writing one folder would mix their checkpoints
/// and cards. An flock, so a killed run leaves nothing to clean up before --resume.
fn lock_out(out: &Path) -> Result<std::fs::File> {
    crate::output::try_flock(&out.join(".train.lock"))?
        .ok_or_else(|| Error::output(out, "another `histomap train` is writing to this folder"))
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
    let Resume {
        resume,
        replace,
        epochs_this_run,
    } = run;
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
    let state_path = out.join(STATE);
    if replace && state_path.is_file() {
        std::fs::remove_file(&state_path).map_err(|e| Error::io(&state_path, e))?;
    }
    let mut opt;
    let mut state = if state_path.is_file() {
        if !resume {
            return Err(Error::Usage(format!(
                "{} holds a checkpoint: pass --resume to continue it or --force to start \
                 afresh, or choose another --out",
                out.display()
            )));
        }
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: State = serde_json::from_str(&text).map_err(|e| Error::model(&state_path, e))?;
        // A resumed run must end as the uninterrupted one would: same settings, same tiles.
        // Loader threads do not change the result, nor does how a path is spelled.
        let canonical = |o: &TrainOptions| TrainOptions {
            data: o.data.iter().map(|p| crate::canonical(p)).collect(),
            init: o.init.as_deref().map(crate::canonical),
            ..o.clone()
        };
        if let Some((field, old, new)) =
            crate::first_difference(&canonical(&state.options), &canonical(opts), &["threads"])
        {
            return Err(Error::Usage(format!(
                "--resume: {field} is {new} here but {old} in {}; a resumed run keeps its \
                 checkpoint's settings (to change them, train into another --out)",
                state_path.display()
            )));
        }
        let task = Task::of(pipeline);
        if let Some((field, old, new)) = state
            .task
            .as_ref()
            .and_then(|t| crate::first_difference(t, &task, &[]))
        {
            return Err(Error::Usage(format!(
                "--resume: the pipeline's {field} is {new} here but {old} in {}; resume with \
                 the pipeline the run started with",
                state_path.display()
            )));
        }
        let same_tiles = match &state.tiles_sha256 {
            Some(tiles) => *tiles == split.tiles_sha256(),
            None => state.split_sha256 == split.sha256(),
        };
        if !same_tiles {
            return Err(Error::Usage(format!(
                "--resume: the tiles differ from those of {} ({} training and {} validation \
                 tiles then, {} and {} now); resume with the same --data and split",
                state_path.display(),
                state.train_files,
                state.val_files,
                split.train.len(),
                split.val.len()
            )));
        }
        opt = AdamW::new(&varmap, state.options.weight_decay)?;
        load_checkpoint(
            &out.join(&state.checkpoint),
            &varmap,
            &mut opt,
            ema.as_ref(),
            device,
        )?;
        opt.t = state.step;
        state
    } else {
        let weights = out.join(WEIGHTS_FILE);
        if weights.exists() && !replace {
            return Err(Error::output(
                &weights,
                "a model is already here; pass --force to replace it, or choose another --out",
            ));
        }
        init_weights(&varmap, opts.seed)?;
        if let Some(init) = &opts.init {
            init_from(&varmap, init, device)?;
        }
        opt = AdamW::new(&varmap, opts.weight_decay)?;
        if let Some(ema) = &ema {
            ema.reset()?;
        }
        // A network started from another model keeps seeing pixels on the scale it
        // learnt them at.
        let normalization = match (&pipeline.normalization, &opts.init) {
            (Some(n), _) => n.clone(),
            (None, Some(init)) => crate::model::load_card(init)?.normalization,
            (None, None) => measure_normalization(&split.train, pipeline.patch_size, opts.seed)?,
        };
        State {
            options: opts.clone(),
            normalization,
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
        }
    };
    let opts = state.options.clone();
    progress.started(split.train.len(), split.val.len());
    let normalizer = Normalizer::new(&state.normalization);
    let size = pipeline.patch_size;
    let counts = crate::dataset::class_counts(&split.train, k);
    // Class-balanced loss: each class weighs as much in total.
    let class_w: Vec<f32> = counts
        .iter()
        .map(|&c| split.train.len() as f32 / (k as f32 * c.max(1) as f32))
        .collect();
    let class_w = Tensor::new(class_w, device)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .map_err(|e| Error::Usage(format!("cannot start loader threads: {e}")))?;
    let batches_per_epoch = split.train.len() / opts.batch_size.max(2);
    let batches_per_epoch = batches_per_epoch.max(1);
    let total_steps = batches_per_epoch * opts.epochs;
    let warmup = batches_per_epoch;
    let class_names: Vec<String> = pipeline.class_names();

    // Checked before each epoch too, so that resuming a run that stopped early ends it.
    let stopped_early = |s: &State| {
        s.best
            .is_some_and(|(b, _)| s.epochs_done - b >= opts.patience.max(1))
    };
    let mut ran = 0;
    while state.epochs_done < opts.epochs
        && !stopped_early(&state)
        && epochs_this_run.is_none_or(|n| ran < n)
    {
        let epoch = state.epochs_done;
        let t = Instant::now();
        let mut order: Vec<usize> = (0..split.train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            opts.seed,
            epoch as u64,
            u64::MAX,
        )));
        let batch = opts.batch_size.max(2).min(order.len());
        let batches: Vec<&[usize]> = order.chunks_exact(batch).take(batches_per_epoch).collect();
        progress.epoch_started(epoch + 1, batches.len());
        let mut loss_sum = 0f64;
        let mut lr = 0f64;
        stream_batches(
            &pool,
            batches.len(),
            |b| {
                let samples: Vec<&Sample> = batches[b].iter().map(|&i| &split.train[i]).collect();
                let aug = |i: usize, img: image::RgbImage| {
                    opts.augment
                        .apply(&img, mix(opts.seed, epoch as u64, batches[b][i] as u64))
                };
                load_batch(&samples, size, &normalizer, &aug)
            },
            |(pixels, labels)| {
                let n = labels.len();
                let x = Tensor::from_vec(pixels, (n, 3, size as usize, size as usize), device)?;
                let y = Tensor::new(labels, device)?;
                let logits = net.forward_t(&x, true)?;
                let loss = weighted_cross_entropy(&logits, &y, &class_w)?;
                lr = schedule(opts.lr, state.step, warmup, total_steps);
                let grads = loss.backward()?;
                opt.step(&grads, lr)?;
                state.step += 1;
                if let Some(ema) = &ema {
                    ema.update(state.step)?;
                }
                let l = loss.to_scalar::<f32>()?;
                loss_sum += f64::from(l);
                progress.batch_done(l);
                Ok(())
            },
        )?;

        // Without validation tiles every epoch is the best so far: the last one is kept.
        let m = if split.val.is_empty() {
            None
        } else {
            let probs = predict_tiles(
                &pool,
                &split.val,
                size,
                &normalizer,
                64,
                &|x| {
                    let x = x.to_device(device)?;
                    Ok(ema.as_ref().map_or(&net, |e| &e.net).forward_t(&x, false)?)
                },
                false,
            )?;
            let labels: Vec<usize> = split.val.iter().map(|s| s.label).collect();
            Some((
                metrics::compute(&labels, &probs, &class_names),
                mean_nll(&labels, &probs, k),
            ))
        };
        let row = EpochRow {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / batches.len().max(1) as f64,
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

/// Mixes a seed with an epoch and a sample index into a per-sample seed.
fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Linear warm-up, then cosine decay to zero.
fn schedule(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

fn weighted_cross_entropy(logits: &Tensor, y: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    let wy = w.index_select(y, 0)?;
    (picked * &wy)?
        .sum_all()?
        .neg()?
        .broadcast_div(&wy.sum_all()?)
}

fn mean_nll(labels: &[usize], probs: &[f32], k: usize) -> f64 {
    let total: f64 = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| -f64::from(probs[i * k + y].max(1e-7)).ln())
        .sum();
    total / labels.len().max(1) as f64
}

/// Decodes, transforms and preprocesses tiles into one batch (pixels, labels).
fn load_batch(
    samples: &[&Sample],
    size: u32,
    normalizer: &Normalizer,
    transform: &(dyn Fn(usize, image::RgbImage) -> image::RgbImage + Sync),
) -> Result<(Vec<f32>, Vec<u32>)> {
    let plane = 3 * (size * size) as usize;
    let mut pixels = vec![0f32; samples.len() * plane];
    pixels
        .par_chunks_mut(plane)
        .zip(samples.par_iter())
        .enumerate()
        .try_for_each(|(i, (out, s))| {
            let img = transform(i, s.tile.read()?);
            normalizer.write_chw(&img, size, out);
            Ok::<_, Error>(())
        })?;
    Ok((pixels, samples.iter().map(|s| s.label as u32).collect()))
}

/// Builds batches on `pool` while `consume` runs the previous one; a bounded channel
/// keeps at most two batches waiting.
fn stream_batches<T: Send>(
    pool: &rayon::ThreadPool,
    n: usize,
    make: impl Fn(usize) -> Result<T> + Sync,
    mut consume: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let (tx, rx) = crossbeam_channel::bounded::<Result<T>>(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for b in 0..n {
                let batch = pool.install(|| make(b));
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
            drop(tx);
        });
        let result = rx.iter().try_for_each(|batch| consume(batch?));
        // Unblock and drain the producer if we stopped early.
        drop(rx);
        result
    })
}

/// Class probabilities (row-major) for tiles, through `logits`. With `tta`, each tile's
/// probabilities average its 8 dihedral orientations.
pub fn predict_tiles(
    pool: &rayon::ThreadPool,
    samples: &[Sample],
    size: u32,
    normalizer: &Normalizer,
    batch: usize,
    logits: &(dyn Fn(&Tensor) -> Result<Tensor> + Sync),
    tta: bool,
) -> Result<Vec<f32>> {
    let chunks: Vec<&[Sample]> = samples.chunks(batch.max(1)).collect();
    let side = size as usize;
    let mut probs = Vec::with_capacity(samples.len());
    stream_batches(
        pool,
        chunks.len(),
        |b| {
            let refs: Vec<&Sample> = chunks[b].iter().collect();
            load_batch(&refs, size, normalizer, &|_, img| img)
        },
        |(pixels, labels)| {
            let n = labels.len();
            let probs_of = |pixels: Vec<f32>| -> Result<Vec<f32>> {
                let x = Tensor::from_vec(pixels, (n, 3, side, side), &Device::Cpu)?;
                let p = candle_nn::ops::softmax_last_dim(&logits(&x)?)?;
                Ok(p.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
            };
            probs.extend(if tta {
                crate::augment::d4_mean(&pixels, side, probs_of)?
            } else {
                probs_of(pixels)?
            });
            Ok(())
        },
    )?;
    Ok(probs)
}

/// Per-channel mean and standard deviation of up to 1000 training tiles, at model size.
fn measure_normalization(train: &[Sample], size: u32, seed: u64) -> Result<Normalization> {
    let mut idx: Vec<usize> = (0..train.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    idx.truncate(1000);
    let identity = Normalizer::new(&Normalization {
        mean: [0.0; 3],
        std: [1.0; 3],
    });
    let sums = idx
        .par_iter()
        .map(|&i| {
            let img = train[i].tile.read()?;
            let mut px = vec![0f32; 3 * (size * size) as usize];
            identity.write_chw(&img, size, &mut px);
            let plane = (size * size) as usize;
            let mut s = [0f64; 6];
            for c in 0..3 {
                for &v in &px[c * plane..(c + 1) * plane] {
                    s[c] += f64::from(v);
                    s[3 + c] += f64::from(v) * f64::from(v);
                }
            }
            Ok((s, plane as f64))
        })
        .collect::<Result<Vec<_>>>()?;
    let n: f64 = sums.iter().map(|x| x.1).sum();
    let mut mean = [0f32; 3];
    let mut std = [0f32; 3];
    for c in 0..3 {
        let m = sums.iter().map(|x| x.0[c]).sum::<f64>() / n;
        let sq = sums.iter().map(|x| x.0[3 + c]).sum::<f64>() / n;
        mean[c] = m as f32;
        std[c] = ((sq - m * m).max(1e-6)).sqrt() as f32;
    }
    Ok(Normalization { mean, std })
}

/// PyTorch-like initialisation from a seed (candle cannot seed its CPU generator):
/// convolutions Kaiming-normal (fan-out, ReLU), linear layers and biases uniform in
/// ±1/√fan-in, BatchNorm weight 1, bias 0, running mean 0, variance 1.
/// Copies every tensor of the model folder `dir` whose name and shape match a variable.
fn init_from(varmap: &VarMap, dir: &Path, device: &Device) -> Result<()> {
    let file = dir.join(crate::model::WEIGHTS_FILE);
    if !file.is_file() {
        return Err(Error::not_found(if dir.is_dir() { &file } else { dir }));
    }
    let tensors = candle_core::safetensors::load(&file, device)
        .map_err(|e| Error::model(&file, one_line(&e)))?;
    let data = varmap.data().lock().expect("varmap lock");
    // Every tensor but the classifier head must fit: a partial match would train a
    // mostly random network while the card names the init.
    let mut names: Vec<&String> = data.keys().filter(|n| !n.starts_with("fc.")).collect();
    names.sort();
    let fits = |name: &str| {
        tensors
            .get(name)
            .is_some_and(|t| t.dims() == data[name].dims())
    };
    let misfits: Vec<&&String> = names.iter().filter(|n| !fits(n)).collect();
    if let Some(first) = misfits.first() {
        return Err(Error::model(
            &file,
            format!(
                "does not fit the architecture being trained: {} of its {} backbone tensors \
                 are missing or of another shape (first: {first}); is it the same --arch?",
                misfits.len(),
                names.len()
            ),
        ));
    }
    for (name, var) in data.iter() {
        if let Some(t) = tensors.get(name).filter(|t| t.dims() == var.dims()) {
            var.set(&t.to_dtype(DType::F32)?)?;
        }
    }
    Ok(())
}

fn init_weights(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fan_in_of = |name: &str| -> Option<usize> {
        let w = data.get(&name.replace(".bias", ".weight"))?;
        let dims = w.dims();
        (dims.len() >= 2).then(|| dims[1..].iter().product())
    };
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with("running_var") {
            vec![1.0; n]
        } else if name.ends_with("running_mean") {
            vec![0.0; n]
        } else if dims.len() == 4 {
            let fan_out = dims[0] * dims[2] * dims[3];
            let std = (2.0 / fan_out as f64).sqrt();
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        } else if dims.len() == 2 {
            let bound = 1.0 / (dims[1] as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        } else if let Some(fan_in) = name.ends_with(".bias").then(|| fan_in_of(name)).flatten() {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        } else if name.ends_with(".weight") {
            vec![1.0; n]
        } else {
            vec![0.0; n]
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// AdamW whose moments are named tensors, so they go into the checkpoint.
struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
    weight_decay: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl AdamW {
    fn new(varmap: &VarMap, weight_decay: f64) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<(String, Var)> = data
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |v: &Var| v.zeros_like();
        let m = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        let v = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            m,
            v,
            t: 0,
            weight_decay,
        })
    }

    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let (c1, c2) = (
            1.0 - BETA1.powi(self.t as i32),
            1.0 - BETA2.powi(self.t as i32),
        );
        for (i, (_, var)) in self.params.iter().enumerate() {
            // Detached: the moments must not keep this step's autograd graph alive.
            let Some(g) = grads.get(var).map(Tensor::detach) else {
                continue;
            };
            self.m[i] = ((&self.m[i] * BETA1)? + (&g * (1.0 - BETA1))?)?.detach();
            self.v[i] = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?.detach();
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + EPS)?)?;
            // Decay only weight matrices and kernels, not biases or BatchNorm.
            let decay = if var.rank() >= 2 {
                1.0 - lr * self.weight_decay
            } else {
                1.0
            };
            var.set(&((var.as_tensor().detach() * decay)? - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// An exponential moving average of every weight and BatchNorm statistic. Its
/// epoch-to-epoch validation scores are far steadier than the raw weights' (on the
/// Kather folds the raw accuracy swings by ±0.2 between neighbouring epochs), and
/// averaging along the trajectory lands in flatter minima, which transfer better to
/// unseen slides (Izmailov et al. 2018; Cha et al. 2021, SWAD).
struct Ema {
    decay: f64,
    map: VarMap,
    net: Network,
    /// (averaged, trained) pairs.
    pairs: Vec<(Var, Var)>,
}

impl Ema {
    /// A second network of the trained one's shape, holding the average; validation and
    /// the saved model use it.
    fn new(
        decay: f64,
        trained: &VarMap,
        arch: Architecture,
        classes: usize,
        device: &Device,
    ) -> Result<Self> {
        let map = VarMap::new();
        let net = Network::new(
            arch,
            VarBuilder::from_varmap(&map, DType::F32, device),
            classes,
        )?;
        let trained = trained.data().lock().expect("varmap lock");
        let pairs = map
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(name, avg)| (avg.clone(), trained[name].clone()))
            .collect();
        Ok(Self {
            decay,
            map,
            net,
            pairs,
        })
    }

    /// Starts the average at the trained weights.
    fn reset(&self) -> Result<()> {
        for (avg, w) in &self.pairs {
            avg.set(w.as_tensor())?;
        }
        Ok(())
    }

    /// Folds in the weights after `step` optimiser steps. The decay ramps up as
    /// (1 + step) / (10 + step) so that the random start is soon forgotten.
    fn update(&self, step: usize) -> Result<()> {
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        for (avg, w) in &self.pairs {
            let next = ((avg.as_tensor() * d)? + (w.as_tensor().detach() * (1.0 - d))?)?;
            avg.set(&next)?;
        }
        Ok(())
    }
}

/// Writes `checkpoint-<epoch>.safetensors`, then the state naming it, then removes the
/// previous checkpoint: a kill at any moment leaves a state and the weights it names.
fn save_checkpoint(
    out: &Path,
    varmap: &VarMap,
    opt: &AdamW,
    ema: Option<&Ema>,
    state: &mut State,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (key, var) in checkpointed_vars(varmap, ema) {
        tensors.insert(key, var.as_tensor().clone());
    }
    for (i, (name, _)) in opt.params.iter().enumerate() {
        tensors.insert(format!("adam.m.{name}"), opt.m[i].clone());
        tensors.insert(format!("adam.v.{name}"), opt.v[i].clone());
    }
    let name = format!("checkpoint-{}.safetensors", state.epochs_done);
    let path = out.join(&name);
    let tmp = out.join(format!(".{name}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| Error::output(&tmp, one_line(&e)))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    write_history(out, &state.history)?;
    let previous = std::mem::replace(&mut state.checkpoint, name);
    let json = serde_json::to_vec_pretty(&*state).expect("state serialises");
    write_atomic(&out.join(STATE), &json)?;
    if !previous.is_empty() && previous != state.checkpoint {
        let old = out.join(previous);
        std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The weights a checkpoint holds, under their keys: `model.*` the trained ones and,
/// with `--ema`, `ema.*` their average.
fn checkpointed_vars(varmap: &VarMap, ema: Option<&Ema>) -> Vec<(String, Var)> {
    let maps = std::iter::once(("model", varmap)).chain(ema.map(|e| ("ema", &e.map)));
    maps.flat_map(|(prefix, map)| {
        let vars = map.data().lock().expect("varmap lock");
        vars.iter()
            .map(|(name, var)| (format!("{prefix}.{name}"), var.clone()))
            .collect::<Vec<_>>()
    })
    .collect()
}

fn load_checkpoint(
    path: &Path,
    varmap: &VarMap,
    opt: &mut AdamW,
    ema: Option<&Ema>,
    device: &Device,
) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::model(path, one_line(&e)))?;
    let get = |key: &str| {
        tensors
            .get(key)
            .ok_or_else(|| Error::model(path, format!("checkpoint lacks {key}")))
    };
    for (key, var) in checkpointed_vars(varmap, ema) {
        var.set(get(&key)?)
            .map_err(|e| Error::model(path, format!("{key}: {}", one_line(&e))))?;
    }
    for (i, (name, _)) in opt.params.iter().enumerate() {
        opt.m[i] = get(&format!("adam.m.{name}"))?.clone();
        opt.v[i] = get(&format!("adam.v.{name}"))?.clone();
    }
    Ok(())
}

fn write_history(out: &Path, rows: &[EpochRow]) -> Result<()> {
    let mut csv = String::from(
        "epoch,lr,train_loss,val_loss,val_accuracy,val_balanced_accuracy,val_roc_auc,seconds\n",
    );
    for r in rows {
        csv.push_str(&format!(
            "{},{:.6e},{:.5},{:.5},{:.5},{:.5},{},{:.1}\n",
            r.epoch,
            r.lr,
            r.train_loss,
            r.val_loss,
            r.val_accuracy,
            r.val_balanced_accuracy,
            r.val_roc_auc.map_or(String::new(), |a| format!("{a:.5}")),
            r.seconds
        ));
    }
    write_atomic(&out.join(HISTORY), csv.as_bytes())?;
    let col = |f: fn(&EpochRow) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    let series = vec![
        ("train loss", col(|r| r.train_loss)),
        ("val loss", col(|r| r.val_loss)),
    ];
    let metric = if rows.iter().any(|r| r.val_roc_auc.is_some()) {
        ("val ROC AUC", col(|r| r.val_roc_auc.unwrap_or(f64::NAN)))
    } else {
        ("val accuracy", col(|r| r.val_accuracy))
    };
    let losses = crate::draw::chart("loss", &series);
    let metric_chart = crate::draw::chart(metric.0, &[metric]);
    let mut both = image::RgbImage::from_pixel(
        losses.width(),
        losses.height() * 2,
        image::Rgb([255, 255, 255]),
    );
    image::imageops::replace(&mut both, &losses, 0, 0);
    image::imageops::replace(&mut both, &metric_chart, 0, i64::from(losses.height()));
    crate::draw::save(both, &out.join("curves.png"))
}

/// The training record a trained model's card carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// The datasets the tiles came from (`--data`, then `--extra-train`).
    pub data: Vec<PathBuf>,
    pub train_files: usize,
    pub val_files: usize,
    /// SHA-256 of the sorted list of training and validation file paths with their side.
    pub split_sha256: String,
    pub epochs: usize,
    pub best_epoch: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub augment: Augment,
    /// The model whose weights started the training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// The decay per step of the weight average the model holds (`--ema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// AdamW weight decay; absent in cards of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Early-stopping patience in epochs; absent in cards of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// Which tiles validated ([`Split::validation`]); absent in cards of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
}

fn save_model(
    out: &Path,
    varmap: &VarMap,
    pipeline: &Pipeline,
    state: &State,
    validation: &str,
    m: Option<&Metrics>,
) -> Result<()> {
    let weights = out.join(WEIGHTS_FILE);
    let tmp = out.join(format!(".{WEIGHTS_FILE}.tmp"));
    varmap
        .save(&tmp)
        .map_err(|e| Error::output(&tmp, one_line(&e)))?;
    std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))?;
    let opts = &state.options;
    let mut card = ModelCard::for_pipeline(
        pipeline,
        opts.arch,
        true,
        match m {
            Some(_) => format!(
                "trained by histomap {} on {} training tiles; best validation epoch {}",
                env!("CARGO_PKG_VERSION"),
                state.train_files,
                state.epochs_done + 1
            ),
            None => format!(
                "trained by histomap {} on {} tiles, no validation split; last epoch {}",
                env!("CARGO_PKG_VERSION"),
                state.train_files,
                state.epochs_done + 1
            ),
        },
    );
    card.normalization = state.normalization.clone();
    if let Some(m) = m {
        card.metrics.insert("val_accuracy".into(), m.accuracy);
        card.metrics
            .insert("val_balanced_accuracy".into(), m.balanced_accuracy);
        card.metrics.insert("val_macro_f1".into(), m.macro_f1);
        if let Some(auc) = m.roc_auc {
            card.metrics.insert("val_roc_auc".into(), auc);
        }
    }
    card.training = Some(TrainingRecord {
        data: opts.data.clone(),
        train_files: state.train_files,
        val_files: state.val_files,
        split_sha256: state.split_sha256.clone(),
        epochs: opts.epochs,
        best_epoch: state.epochs_done + 1,
        seed: opts.seed,
        batch_size: opts.batch_size,
        lr: opts.lr,
        augment: opts.augment,
        init: opts.init.clone(),
        ema: opts.ema,
        weight_decay: Some(opts.weight_decay),
        patience: Some(opts.patience),
        validation: Some(validation.to_string()),
    });
    write_atomic(
        &out.join(CARD_FILE),
        &serde_json::to_vec_pretty(&card).expect("card serialises"),
    )
}

/// Splits a dataset: by a split file's `fold` column (fold `val_fold` validates), else
/// by the data's own `split` column (`train` trains, `valid` validates, `test` is left
/// out), else by grouped folds of the data, which keep
/// byte-identical tiles on one side. `hashes` (from [`Dataset::check`]) also serve to
/// drop from validation any tile whose bytes a given split put on the training side
/// too, or that are among `extra_train` (hashes of tiles the caller adds to training):
/// it would score as seen.
pub fn split_dataset(
    data: &Dataset,
    hashes: &[[u8; 32]],
    extra_train: &[[u8; 32]],
    split_file: Option<&Path>,
    val_fold: usize,
    folds: usize,
    seed: u64,
) -> Result<Split> {
    let given_valid = |s: &Sample| s.split.as_deref() == Some("valid");
    // Per sample: Some(true) validates, Some(false) trains, None is left out. The data's
    // own split serves when every tile has one and some tiles validate.
    let own_split = split_file.is_none()
        && data.samples.iter().all(|s| s.split.is_some())
        && data.samples.iter().any(given_valid);
    let mut fold_count = None;
    let validates: Vec<Option<bool>> = if own_split {
        data.samples
            .iter()
            .map(|s| match s.split.as_deref() {
                Some("train") => Some(false),
                _ if given_valid(s) => Some(true),
                _ => None,
            })
            .collect()
    } else {
        let fold_of = match split_file {
            Some(file) => crate::split::read_csv(file, data)?,
            None => {
                crate::split::grouped_folds(&data.samples, hashes, data.classes.len(), folds, seed)
            }
        };
        fold_count = fold_of.iter().max().map(|&f| f + 1);
        fold_of.iter().map(|&f| Some(f == val_fold)).collect()
    };
    let trained: HashSet<&[u8; 32]> = hashes
        .iter()
        .zip(&validates)
        .filter(|(_, v)| **v == Some(false))
        .map(|(h, _)| h)
        .chain(extra_train)
        .collect();
    let source = || match split_file {
        Some(file) => format!("fold {val_fold} of {}", file.display()),
        None if own_split => "the data's own valid split".to_string(),
        None => format!("fold {val_fold} of {folds} grouped folds"),
    };
    let mut split = Split {
        train: Vec::new(),
        val: Vec::new(),
        val_duplicates_dropped: 0,
        validation: source(),
    };
    let mut validated = HashSet::new();
    for ((s, h), v) in data.samples.iter().zip(hashes).zip(validates) {
        match v {
            Some(false) => split.train.push(s.clone()),
            Some(true) if trained.contains(h) || !validated.insert(h) => {
                split.val_duplicates_dropped += 1
            }
            Some(true) => split.val.push(s.clone()),
            None => {}
        }
    }
    if split.val.is_empty() {
        let why = match fold_count {
            _ if split.val_duplicates_dropped > 0 => {
                "every tile in it is a duplicate of a training tile".to_string()
            }
            Some(n) if val_fold >= n => format!("the folds with tiles are 0 to {}", n - 1),
            _ => "it holds no tiles".to_string(),
        };
        return Err(Error::dataset(
            &data.source,
            format!(
                "no validation tiles in {}: {why}; --no-val trains on every tile",
                split.validation
            ),
        ));
    }
    if split.train.is_empty() {
        return Err(Error::dataset(
            &data.source,
            format!("no training tiles outside {}", split.validation),
        ));
    }
    Ok(split)
}

impl Split {
    /// Groups with tiles on both sides, sorted: none for a split that `histomap split`
    /// or grouped folds made, but a hand-made split file or a data-given split column
    /// may put a patient on both sides, and its validation figures then flatter.
    pub fn straddling_groups(&self) -> Vec<&str> {
        let trained: HashSet<&str> = self.train.iter().map(|s| s.group.as_str()).collect();
        let both: std::collections::BTreeSet<&str> = self
            .val
            .iter()
            .map(|s| s.group.as_str())
            .filter(|g| trained.contains(g))
            .collect();
        both.into_iter().collect()
    }

    /// SHA-256 over the sorted `side<TAB>path` lines, paths as given: names the exact
    /// split a model saw (the model card's `split_sha256`).
    pub fn sha256(&self) -> String {
        self.digest(&|t| t.name())
    }

    /// The same over absolute paths, so that `./tiles` and `tiles` are one split: what
    /// `--resume` checks.
    pub fn tiles_sha256(&self) -> String {
        self.digest(&|t| t.name_by(crate::canonical))
    }

    fn digest(&self, name: &dyn Fn(&Tile) -> String) -> String {
        use sha2::{Digest, Sha256};
        let mut lines: Vec<String> = self
            .train
            .iter()
            .map(|s| format!("train\t{}", name(&s.tile)))
            .chain(self.val.iter().map(|s| format!("val\t{}", name(&s.tile))))
            .collect();
        lines.sort();
        let digest = Sha256::digest(lines.join("\n").as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straddling_groups_are_named_once() {
        let sample = |group: &str| Sample {
            tile: crate::dataset::Tile::File(format!("{group}.png").into()),
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
