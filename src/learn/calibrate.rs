//! int8 against f32, measured. In: a model folder, and tiles it was not trained on
//! (their labels are not used) or slides. Out: an [`Int8Check`], the share of tiles whose class
//! int8 keeps and the largest probability it moves, written into the model's
//! `card.json`. `--precision auto` runs int8 only where that check says it keeps the
//! answer ([`crate::model::ModelCard::int8_refusal`]): per-image scales suit some
//! models and not others, and only a measurement tells which.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::{Error, Result};
use crate::learn::dataset::Sample;
use crate::learn::evaluate::{unique_tiles, EvalProgress};
use crate::learn::train::{predict_tiles, TileInput};
use crate::map::heatmap::argmax;
use crate::map::select::{tissue_patches, TissuePatches};
use crate::map::stream::{self, StreamOptions};
use crate::model::card::{Int8Check, Recheck};
use crate::model::{top_two_gap, write_card, Classifier, ModelCard, Precision};
use crate::progress::Silent;

pub struct CalibrateOptions {
    /// Tiles (any layout [`crate::learn::dataset::Dataset`] reads), if any.
    pub data: Option<PathBuf>,
    /// Only tiles whose data-given split is this (e.g. `valid`).
    pub split: Option<String>,
    /// Slides whose tissue patches are measured too, cut as the model's card says.
    pub slides: Vec<PathBuf>,
    /// Stride of the slides' patches in pixels at the model's MPP (default: the patch
    /// size); below it, patches overlap, and more of them are measured.
    pub stride: Option<u32>,
    pub batch_size: usize,
    pub threads: usize,
    /// Leave out unreadable tiles instead of failing.
    pub skip_bad: bool,
}

/// The two precisions side by side: the f32 reference and int8 (unchecked).
struct Pair {
    reference: Classifier,
    int8: Classifier,
}

/// Patches compared so far: for each, whether int8 kept its class and int8's margin;
/// the largest change of a probability.
#[derive(Default)]
struct Tally {
    patches: Vec<Compared>,
    max_diff: f64,
}

#[derive(Clone, Copy)]
struct Compared {
    same: bool,
    /// int8's top logit minus its second.
    margin: f64,
}

/// The recheck margin is this many times the widest int8 margin at which int8 changed
/// a class on the calibration patches: the widest one on new patches is a little wider.
const RECHECK_SAFETY: f64 = 1.5;

/// Patches of one fold in a row, for the cross-check of the margin: overlapping slide
/// patches next to each other are near copies, so alternate folds by runs of them, not
/// patch by patch.
const FOLD_RUN: usize = 256;

impl Pair {
    fn load(model_dir: &Path) -> Result<Self> {
        let load = |precision| -> Result<Classifier> {
            let mut c = Classifier::load(model_dir, &Device::Cpu)?;
            c.set_precision(precision)?;
            Ok(c)
        };
        Ok(Self {
            reference: load(Precision::F32)?,
            int8: load(Precision::Int8)?,
        })
    }

    fn tiles(&self, samples: &[Sample], batch: usize, threads: usize, t: &mut Tally) -> Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start loader threads: {e}")))?;
        let card = &self.reference.card;
        // int8 against f32 on the same pixels: stain normalisation changes both alike.
        let input = TileInput::new(&card.normalization, None);
        let probs = |c: &Classifier| {
            let logits = |x: &candle_core::Tensor| c.logits(x);
            predict_tiles(
                &pool,
                samples,
                card.input_size,
                &input,
                batch,
                &logits,
                false,
            )
        };
        t.add(
            &probs(&self.reference)?,
            &probs(&self.int8)?,
            card.classes.len(),
        );
        Ok(())
    }

    /// Every tissue patch of the slide at `path`, as `heatmap` selects them.
    fn slide(
        &self,
        path: &Path,
        stride: Option<u32>,
        opts: &StreamOptions,
        t: &mut Tally,
    ) -> Result<()> {
        let card = &self.reference.card;
        let mut p = card.pipeline(&self.reference.dir);
        if let Some(stride) = stride {
            p.set_stride(stride)?;
        }
        let TissuePatches { slide, plan, rects } = tissue_patches(path, &p)?;
        let probs = |c: &Classifier| {
            let norm = &card.normalization;
            stream::run(slide.as_ref(), &plan, norm, &rects, Some(c), opts, &Silent)
                .map(|(probs, _)| probs)
        };
        t.add(
            &probs(&self.reference)?,
            &probs(&self.int8)?,
            card.classes.len(),
        );
        Ok(())
    }
}

impl Pair {
    /// Writes `check` into the model's card (the one it was loaded with, so a WSInfer
    /// folder gets a `card.json` made from its `config.json`); returns the new card.
    fn record(&self, check: Int8Check) -> Result<ModelCard> {
        let card = ModelCard {
            int8: Some(check),
            ..self.reference.card.clone()
        };
        write_card(&self.reference.dir, &card)?;
        Ok(card)
    }
}

impl Tally {
    fn add(&mut self, reference: &[f32], int8: &[f32], k: usize) {
        for (p, q) in reference.chunks(k).zip(int8.chunks(k)) {
            self.patches.push(Compared {
                same: argmax(p).0 == argmax(q).0,
                // Log-softmax keeps the differences of logits.
                margin: f64::from(top_two_gap(&q.iter().map(|p| p.ln()).collect::<Vec<_>>())),
            });
            for (x, y) in p.iter().zip(q) {
                self.max_diff = self.max_diff.max(f64::from((x - y).abs()));
            }
        }
    }

    fn check(&self, data: String) -> Int8Check {
        let n = self.patches.len().max(1) as f64;
        let int8_agreement = self.patches.iter().filter(|p| p.same).count() as f64 / n;
        let margin = recheck_margin(self.patches.iter());
        let recheck = (margin > 0.0).then(|| Recheck {
            margin,
            share: self.patches.iter().filter(|p| p.margin < margin).count() as f64 / n,
            int8_agreement,
        });
        // Each fold's patches rechecked with the margin the other fold chose.
        let fold = |i: usize| (i / FOLD_RUN) % 2;
        let of_fold = |f| {
            self.patches
                .iter()
                .enumerate()
                .filter(move |(i, _)| fold(*i) == f)
                .map(|(_, p)| p)
        };
        let chosen = [recheck_margin(of_fold(1)), recheck_margin(of_fold(0))];
        let kept = (0..2)
            .flat_map(|f| of_fold(f).map(move |p| p.same || p.margin < chosen[f]))
            .filter(|&k| k)
            .count();
        Int8Check {
            scheme: crate::model::int8::SCHEME,
            agreement: kept as f64 / n,
            tiles: self.patches.len(),
            recheck,
            max_prob_diff: self.max_diff,
            data,
            histomap_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// int8 logit margin below which a patch runs again in f32, chosen on `patches`: 0 when
/// int8 kept every class.
fn recheck_margin<'a>(patches: impl Iterator<Item = &'a Compared>) -> f64 {
    RECHECK_SAFETY
        * patches
            .filter(|p| !p.same)
            .map(|p| p.margin)
            .fold(0.0, f64::max)
}

/// Measures int8 against f32 on the unique tiles of `opts.data` and the tissue patches
/// of `opts.slides`, pooled, and records it in the card of `model_dir`; returns the
/// card as written (its `int8` is the check).
pub fn calibrate(
    model_dir: &Path,
    opts: &CalibrateOptions,
    progress: &dyn EvalProgress,
) -> Result<ModelCard> {
    if opts.data.is_none() && opts.slides.is_empty() {
        return Err(Error::Usage(
            "calibrate: give --data TILES, slides, or both".into(),
        ));
    }
    let pair = Pair::load(model_dir)?;
    let mut tally = Tally::default();
    let mut what = Vec::new();
    if let Some(data) = &opts.data {
        let split = opts.split.as_deref();
        let unique = unique_tiles(data, &pair.reference.card, split, opts.skip_bad, progress)?;
        progress.started(unique.samples.len());
        pair.tiles(&unique.samples, opts.batch_size, opts.threads, &mut tally)?;
        progress.tiles_done(unique.samples.len());
        what.push(match split {
            Some(split) => format!("{}, split {split}", data.display()),
            None => data.display().to_string(),
        });
    }
    let stream = StreamOptions {
        batch_size: opts.batch_size,
        readers: opts.threads.max(1),
        capacity: 2,
    };
    for path in &opts.slides {
        pair.slide(path, opts.stride, &stream, &mut tally)?;
        what.push(path.display().to_string());
    }
    pair.record(tally.check(what.join(" + ")))
}

/// What the end of `train` records: int8 against f32 on the validation tiles of the
/// model trained into `model_dir`; returns the card as written, or why nothing was
/// measured. Only held-out tiles say whether int8 keeps the answer; the training tiles
/// are the ones the model is surest of.
pub fn after_training(
    model_dir: &Path,
    val: &[Sample],
    batch_size: usize,
    threads: usize,
) -> std::result::Result<ModelCard, String> {
    if val.is_empty() {
        return Err(
            "no validation tiles to check int8 on (`histomap calibrate` measures it on others)"
                .into(),
        );
    }
    let measured = || {
        let pair = Pair::load(model_dir)?;
        let mut tally = Tally::default();
        pair.tiles(val, batch_size, threads, &mut tally)?;
        pair.record(tally.check(format!("its {} validation tiles", val.len())))
    };
    measured().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(patches: &[(bool, f64)]) -> Tally {
        Tally {
            patches: patches
                .iter()
                .map(|&(same, margin)| Compared { same, margin })
                .collect(),
            max_diff: 0.1,
        }
    }

    #[test]
    fn the_recheck_margin_covers_every_changed_class_and_is_judged_across_folds() {
        // Fold 0 holds patches 0..256, fold 1 patches 256..512.
        let mut patches = vec![(true, 5.0); 2 * FOLD_RUN];
        patches[3] = (false, 0.2);
        patches[FOLD_RUN + 7] = (false, 0.1);
        patches[FOLD_RUN + 8] = (true, 0.25);
        let check = tally(&patches).check("test".into());
        let r = check.recheck.expect("int8 changed classes");
        assert!((r.margin - 0.2 * RECHECK_SAFETY).abs() < 1e-12);
        assert_eq!(r.share, 3.0 / 512.0);
        assert_eq!(r.int8_agreement, 510.0 / 512.0);
        // Fold 0's change (at 0.2) is above fold 1's margin (0.15): it stays a change.
        // Fold 1's change (at 0.1) is under fold 0's margin (0.3): rechecked, kept.
        assert_eq!(check.agreement, 511.0 / 512.0);
    }

    #[test]
    fn int8_that_kept_every_class_rechecks_nothing() {
        let check = tally(&[(true, 0.01), (true, 3.0)]).check("test".into());
        assert_eq!(check.recheck, None);
        assert_eq!(check.agreement, 1.0);
    }
}
