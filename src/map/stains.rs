//! A slide's stains, estimated once. In: a slide, its read plan, its tissue patches and
//! the run's [`Normalize`]. Out: the per-slide [`Transform`] the stream applies to every
//! patch, and what was estimated, for `summary.json`.
//!
//! The estimate pools up to [`SAMPLE_PATCHES`] tissue patches spread evenly over the
//! slide in grid order, read as the stream reads them and at the model's input size:
//! the stains of the pixels the model sees, not of a thumbnail whose averaging of
//! neighbouring pixels lowers the concentrations' high percentiles. A slide whose
//! estimate fails is mapped without normalisation and says so.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::map::geom::{L0Rect, Size};
use crate::map::grid::ReadPlan;
use crate::map::preprocess::fit_to;
use crate::map::slide::SlideSource;
use crate::progress::Progress;
use crate::stain::{Estimate, Method, Normalize, Transform};

/// Most patches a slide's estimate reads.
pub const SAMPLE_PATCHES: usize = 64;

/// A slide's normalisation, as `summary.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StainRecord {
    pub method: Method,
    pub target_from: String,
    /// Tissue patches whose pixels were pooled for the estimate.
    pub patches_sampled: usize,
    /// The slide's stains (Macenko) or colour statistics (Reinhard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    /// Why the slide was mapped without normalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The pixels of up to [`SAMPLE_PATCHES`] of `patches` (level-0 rectangles of the
/// plan's grid, in grid order), spread evenly, at the model's input size; and how many
/// patches were read (unreadable ones are left out).
pub fn sample(
    slide: &dyn SlideSource,
    plan: &ReadPlan,
    patches: &[L0Rect],
) -> (Vec<[u8; 3]>, usize) {
    let n = patches.len().min(SAMPLE_PATCHES);
    let read = Size::new(plan.read_size, plan.read_size);
    let sampled: Vec<_> = (0..n)
        .into_par_iter()
        .filter_map(|i| {
            let at = patches[i * patches.len() / n].origin;
            let patch = slide.read_region(at, plan.level, read).ok()?;
            Some(fit_to(patch, plan.input_size))
        })
        .collect();
    let pixels = sampled
        .iter()
        .flat_map(|p| crate::stain::pixels(p).iter().copied())
        .collect();
    (pixels, sampled.len())
}

/// Estimates the slide's stains from its tissue patches `patches` (as for [`sample`]).
pub fn estimate(
    slide: &dyn SlideSource,
    plan: &ReadPlan,
    patches: &[L0Rect],
    norm: &Normalize,
) -> (Option<Transform>, StainRecord) {
    let (pixels, sampled) = sample(slide, plan, patches);
    let mut record = StainRecord {
        method: norm.method,
        target_from: norm.target_from.clone(),
        patches_sampled: sampled,
        estimate: None,
        warning: None,
    };
    match norm.transform(&pixels) {
        Ok((transform, estimate)) => {
            record.estimate = Some(estimate);
            (Some(transform), record)
        }
        Err(e) => {
            record.warning = Some(format!(
                "{} stain normalisation skipped: {e} (from {} tissue patches); mapped as read",
                norm.method, sampled
            ));
            (None, record)
        }
    }
}

/// The slide's transform under `norm` and what `summary.json` records of it, with a
/// warning naming the slide through `progress` where it falls back to none; nothing
/// without normalisation.
pub fn for_slide(
    slide: &dyn SlideSource,
    plan: &ReadPlan,
    patches: &[L0Rect],
    norm: Option<&Normalize>,
    progress: &dyn Progress,
) -> (Option<Transform>, Option<StainRecord>) {
    let Some(norm) = norm else {
        return (None, None);
    };
    let (transform, record) = estimate(slide, plan, patches, norm);
    if let Some(w) = &record.warning {
        progress.warning(&format!("{}: {w}", slide.info().path.display()));
    }
    (transform, Some(record))
}
