//! A model's stain target, fitted. In: a model folder, and tiles or slides stained as
//! its training data was. Out: a [`Target`] written into the model's `card.json`, which
//! `--stain-norm` then maps every slide to when no `--stain-ref` is given.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::learn::dataset::{pooled_pixels, STAIN_FIT_TILES};
use crate::learn::evaluate::{unique_tiles, EvalProgress};
use crate::map::select::{tissue_patches, TissuePatches};
use crate::map::stains;
use crate::model::{write_card, CardFormat, ModelCard};
use crate::stain::Target;

pub struct StainFitOptions {
    /// Tiles (any layout [`crate::learn::dataset::Dataset`] reads), if any.
    pub data: Option<PathBuf>,
    /// Only tiles whose data-given split is this.
    pub split: Option<String>,
    /// Slides whose tissue patches are pooled too, cut as the model's card says.
    pub slides: Vec<PathBuf>,
    /// Leave out unreadable tiles instead of failing.
    pub skip_bad: bool,
}

/// Fits the target on the pooled pixels of up to [`STAIN_FIT_TILES`] tiles of `opts.data`
/// (spread evenly) and [`stains::SAMPLE_PATCHES`] tissue patches of each slide, and
/// records it in the card of `model_dir`; returns the card as written.
pub fn stain_fit(
    model_dir: &Path,
    opts: &StainFitOptions,
    progress: &dyn EvalProgress,
) -> Result<ModelCard> {
    if opts.data.is_none() && opts.slides.is_empty() {
        return Err(Error::Usage(
            "stain-fit: give --data TILES, slides, or both".into(),
        ));
    }
    // A WSInfer folder gets a card.json made from its config.json, as calibrate's.
    let card = CardFormat::of(model_dir)?.read(model_dir)?;
    let mut pixels = Vec::new();
    let mut what = Vec::new();
    if let Some(data) = &opts.data {
        let split = opts.split.as_deref();
        let unique = unique_tiles(data, &card, split, opts.skip_bad, progress)?;
        progress.started(unique.samples.len().min(STAIN_FIT_TILES));
        let n;
        (pixels, n) = pooled_pixels(&unique.samples, card.input_size, STAIN_FIT_TILES)?;
        progress.tiles_done(n);
        what.push(format!("{n} tiles of {}", data.display()));
    }
    let pipeline = card.pipeline(model_dir);
    for path in &opts.slides {
        let TissuePatches { slide, plan, rects } = tissue_patches(path, &pipeline)?;
        let (px, n) = stains::sample(slide.as_ref(), &plan, &rects);
        pixels.extend(px);
        what.push(format!("{n} tissue patches of {}", path.display()));
    }
    let fitted_on = what.join(" + ");
    let target = Target::fit(&pixels, fitted_on.clone())
        .map_err(|e| Error::Usage(format!("stain-fit: no target from {fitted_on}: {e}")))?;
    let card = ModelCard {
        stain_target: Some(target),
        ..card
    };
    write_card(model_dir, &card)?;
    Ok(card)
}
