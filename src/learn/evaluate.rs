//! Evaluation. In: a model folder and a tile dataset. Out: `metrics.json` and a per-tile
//! `predictions.csv`. Byte-identical tiles are counted once (the first), so duplicates
//! cannot inflate a figure; unreadable tiles fail the run or, with `skip_bad`, are
//! listed; `tta` averages the 8 dihedral orientations.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::learn::dataset::{duplicates, BadTile, Dataset, Sample};
use crate::learn::metrics::{self, Metrics};
use crate::learn::train::{predict_tiles, TileInput};
use crate::model::{Classifier, ModelCard, Precision};
use crate::output::write_atomic;

pub struct EvalOptions {
    /// Only tiles whose data-given split is this (e.g. `valid`).
    pub split: Option<String>,
    pub tta: bool,
    pub precision: Precision,
    pub batch_size: usize,
    pub threads: usize,
    /// Leave out unreadable tiles (listed in [`Evaluation::skipped`]) instead of failing.
    pub skip_bad: bool,
    /// Stain normalisation, each tile by its own stains.
    pub stain: Option<crate::stain::Normalize>,
}

/// What the caller sees while an evaluation runs.
pub trait EvalProgress: Sync {
    /// Every tile has been read once: these were left out as unreadable, and this is
    /// what is wrong with the size of the others, if anything.
    fn checked(&self, _skipped: &[BadTile], _size_warning: Option<&str>) {}
    /// Classification of `tiles` unique tiles begins.
    fn started(&self, _tiles: usize) {}
    fn tiles_done(&self, _n: usize) {}
}

impl EvalProgress for crate::learn::train::Quiet {}

#[derive(Debug, Serialize)]
pub struct Evaluation {
    pub model: PathBuf,
    pub data: PathBuf,
    pub split: Option<String>,
    pub tta: bool,
    /// The arithmetic the classifier ran in (`f32`, `int8-avx2`, ...).
    pub precision: String,
    /// Why `Precision::Auto` fell back to f32, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_warning: Option<String>,
    /// Tiles whose int8 call was too close for `auto` to trust, run again in f32.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f32_rechecked: Option<usize>,
    /// Stain normalisation, as "macenko to TARGET" (each tile by its own stains).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stain_norm: Option<String>,
    pub duplicates_dropped: usize,
    /// Tiles left out as unreadable (`skip_bad`).
    pub skipped: Vec<BadTile>,
    #[serde(flatten)]
    pub metrics: Metrics,
}

pub fn evaluate(
    model_dir: &Path,
    data: &Path,
    out: &Path,
    opts: &EvalOptions,
    device: &Device,
    progress: &dyn EvalProgress,
) -> Result<Evaluation> {
    let mut model = Classifier::load(model_dir, device)?;
    model.set_precision(opts.precision)?;
    let classes: Vec<String> = model.card.classes.iter().map(|c| c.name.clone()).collect();
    let Unique {
        samples,
        dropped,
        skipped,
    } = unique_tiles(
        data,
        &model.card,
        opts.split.as_deref(),
        opts.skip_bad,
        progress,
    )?;

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .map_err(|e| Error::Usage(format!("cannot start loader threads: {e}")))?;
    let input = TileInput::new(&model.card.normalization, opts.stain.clone());
    progress.started(samples.len());
    // Predicted a few batches at a time so that progress can be reported in between.
    let mut probs = Vec::with_capacity(samples.len() * classes.len());
    for part in samples.chunks(8 * opts.batch_size.max(1)) {
        probs.extend(predict_tiles(
            &pool,
            part,
            model.card.input_size,
            &input,
            opts.batch_size,
            &|x| model.logits(x),
            opts.tta,
        )?);
        progress.tiles_done(part.len());
    }
    let labels: Vec<usize> = samples.iter().map(|s| s.label).collect();
    let metrics = metrics::compute(&labels, &probs, &classes);

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let k = classes.len();
    // Through a CSV writer: tile paths and class names may hold commas or quotes.
    let csv_path = out.join("predictions.csv");
    let fail = |e: csv::Error| Error::output(&csv_path, e);
    let mut csv = csv::Writer::from_writer(Vec::new());
    let header = ["path", "label", "predicted"]
        .map(String::from)
        .into_iter()
        .chain(classes.iter().map(|c| format!("prob_{c}")));
    csv.write_record(header).map_err(fail)?;
    for (i, s) in samples.iter().enumerate() {
        let p = &probs[i * k..(i + 1) * k];
        let pred = crate::map::heatmap::argmax(p).0;
        let row = [
            s.tile.name(),
            classes[s.label].clone(),
            classes[pred].clone(),
        ]
        .into_iter()
        .chain(p.iter().map(|v| format!("{v:.6}")));
        csv.write_record(row).map_err(fail)?;
    }
    let bytes = csv
        .into_inner()
        .map_err(|e| Error::output(&csv_path, e.error()))?;
    write_atomic(&csv_path, &bytes)?;
    crate::sink::draw::save(
        crate::sink::draw::confusion(&classes, &metrics.confusion_matrix),
        &out.join("confusion.png"),
    )?;
    if let (2, Some(auc)) = (k, metrics.roc_auc) {
        let scores: Vec<f32> = (0..samples.len()).map(|i| probs[i * 2 + 1]).collect();
        let positive: Vec<bool> = labels.iter().map(|&y| y == 1).collect();
        crate::sink::draw::save(
            crate::sink::draw::roc(&scores, &positive, auc),
            &out.join("roc.png"),
        )?;
    }
    let eval = Evaluation {
        model: model_dir.to_path_buf(),
        data: data.to_path_buf(),
        split: opts.split.clone(),
        tta: opts.tta,
        precision: model.precision_used(),
        precision_warning: model.take_warning(),
        f32_rechecked: Some(model.take_rechecked()).filter(|&n| n > 0),
        stain_norm: opts.stain.as_ref().map(ToString::to_string),
        duplicates_dropped: dropped,
        skipped,
        metrics,
    };
    write_atomic(
        &out.join("metrics.json"),
        &serde_json::to_vec_pretty(&eval).expect("metrics serialise"),
    )?;
    Ok(eval)
}

/// A dataset's readable tiles, each byte-identical group once.
pub(crate) struct Unique {
    pub samples: Vec<Sample>,
    /// Duplicates left out.
    pub dropped: usize,
    /// Unreadable tiles left out (`skip_bad`).
    pub skipped: Vec<BadTile>,
}

/// The tiles of `data` (only those of `split`, if given) labelled with `card`'s
/// classes, read once and deduplicated; `progress` hears what was left out.
pub(crate) fn unique_tiles(
    data: &Path,
    card: &ModelCard,
    split: Option<&str>,
    skip_bad: bool,
    progress: &dyn EvalProgress,
) -> Result<Unique> {
    let classes: Vec<String> = card.classes.iter().map(|c| c.name.clone()).collect();
    let mut dataset = Dataset::load(data, &classes)?;
    if let Some(split) = split {
        dataset
            .samples
            .retain(|s| s.split.as_deref() == Some(split));
        if dataset.samples.is_empty() {
            return Err(Error::dataset(data, format!("no tiles in split {split:?}")));
        }
    }
    let checked = dataset.check(skip_bad)?;
    progress.checked(
        &checked.skipped,
        checked.size_warning(card.input_size).as_deref(),
    );
    let mut drop = vec![false; dataset.samples.len()];
    let mut dropped = 0;
    for group in duplicates(&checked.hashes) {
        for &i in &group[1..] {
            drop[i] = true;
            dropped += 1;
        }
    }
    let samples = dataset
        .samples
        .into_iter()
        .zip(drop)
        .filter(|(_, d)| !d)
        .map(|(s, _)| s)
        .collect();
    Ok(Unique {
        samples,
        dropped,
        skipped: checked.skipped,
    })
}
