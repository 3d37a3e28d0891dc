//! Which patches to classify. In: the grid, the tissue mask and the slide. Out: the
//! tissue patches with their tissue fractions, and the ones that could not be read.
//!
//! A cell is a tissue patch when the mask says at least `min_tissue` of it is tissue.
//! Where parts of the mask could not be read (unknown), a cell whose tissue and unknown
//! shares together reach `min_tissue` is read and judged by its own pixels: a patch the
//! mask could not see is neither assumed to be tissue nor dropped as glass.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::map::geom::{Cell, L0Rect, Size};
use crate::map::grid::{Grid, ReadPlan};
use crate::map::heatmap::Unreadable;
use crate::map::mask::{TissueMask, THUMBNAIL_SIDE};
use crate::map::slide::{self, SlideSource};
use crate::pipeline::Pipeline;

/// The cells whose patch is at least `min_tissue` tissue (and not empty), with their
/// tissue fractions, in grid order.
pub fn tissue_cells(grid: &Grid, mask: &TissueMask, min_tissue: f32) -> (Vec<Cell>, Vec<f32>) {
    grid.cells()
        .map(|c| (c, mask.fraction(grid.rect(c))))
        .filter(|&(_, f)| is_tissue(f, min_tissue))
        .unzip()
}

/// Whether a patch with tissue fraction `f` is classified: some tissue, and enough.
fn is_tissue(f: f32, min_tissue: f32) -> bool {
    f > 0.0 && f >= min_tissue
}

/// A slide opened, with its read plan and its tissue patches as `heatmap` selects them,
/// for measurements over a slide's tissue (`calibrate`, `stain-fit`).
pub struct TissuePatches {
    pub slide: Box<dyn SlideSource>,
    pub plan: ReadPlan,
    /// Level-0 rectangles of the plan's grid, in grid order; unreadable ones left out.
    pub rects: Vec<L0Rect>,
}

/// Opens the slide at `path` and selects its tissue patches under `p`, as `heatmap`
/// does (the slide's own MPP).
pub fn tissue_patches(path: &Path, p: &Pipeline) -> Result<TissuePatches> {
    let slide = slide::open(path)?;
    let plan = ReadPlan::new(slide.info(), p.patch_size, p.stride, p.mpp, None)?;
    let thumb = slide::thumbnail(slide.as_ref(), THUMBNAIL_SIDE)?;
    let mask = TissueMask::from_thumbnail(&thumb, p.min_saturation);
    let none = Tolerance { max_share: 0.0 };
    let cells = select(slide.as_ref(), &plan, &mask, p.min_tissue, none).cells;
    let rects = cells.iter().map(|&c| plan.grid.rect(c)).collect();
    Ok(TissuePatches { slide, plan, rects })
}

/// The patches to classify.
#[derive(Debug, Default)]
pub struct Selection {
    /// In grid order.
    pub cells: Vec<Cell>,
    pub tissue: Vec<f32>,
    /// Patches under unknown parts of the mask that could not be read either.
    pub unreadable: Vec<Unreadable>,
}

/// How many unreadable patches a slide may have: at most this share of its tissue
/// patches (those classified and those that could not be read).
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub max_share: f64,
}

impl Tolerance {
    /// Unreadable patches allowed among `patches`.
    pub fn allowed(&self, patches: usize) -> usize {
        (self.max_share * patches as f64).floor() as usize
    }

    /// An error when `unreadable` of `patches` tissue patches is too many.
    /// `complete` is false when reading stopped early, so more may be unreadable.
    pub fn check(
        &self,
        slide: &dyn SlideSource,
        grid: &Grid,
        unreadable: &[Unreadable],
        patches: usize,
        complete: bool,
    ) -> Result<()> {
        let Some(first) = unreadable.first() else {
            return Ok(());
        };
        if unreadable.len() <= self.allowed(patches) {
            return Ok(());
        }
        let r = grid.rect(first.cell);
        Err(Error::slide(
            slide.path(),
            format!(
                "{}{} of {patches} tissue patches are unreadable, more than --max-unreadable {} \
                 allows; the first at level-0 x {} y {} ({}×{} px): {}",
                if complete { "" } else { "at least " },
                unreadable.len(),
                self.max_share,
                r.origin.x,
                r.origin.y,
                r.size.w,
                r.size.h,
                first.error
            ),
        ))
    }
}

/// The tissue patches of `plan`'s grid. Patches under unknown parts of the mask are
/// read (in parallel) and kept when their own pixels are tissue enough; judging stops
/// once more than `tolerance` allows of all candidates could not be read.
pub fn select(
    slide: &dyn SlideSource,
    plan: &ReadPlan,
    mask: &TissueMask,
    min_tissue: f32,
    tolerance: Tolerance,
) -> Selection {
    let grid = &plan.grid;
    let mut doubtful = Vec::new();
    let mut chosen = Vec::new();
    for c in grid.cells() {
        let rect = grid.rect(c);
        let t = mask.fraction(rect);
        if is_tissue(t, min_tissue) {
            chosen.push((c, t));
            continue;
        }
        let u = mask.unknown_fraction(rect);
        if u > 0.0 && t + u >= min_tissue {
            doubtful.push((c, t));
        }
    }
    let allowed = tolerance.allowed(chosen.len() + doubtful.len());
    let failures = AtomicUsize::new(0);
    let read = Size::new(plan.read_size, plan.read_size);
    let judged: Vec<(Cell, std::result::Result<f32, Unreadable>)> = doubtful
        .par_iter()
        .filter_map(|&(cell, t)| {
            if failures.load(Ordering::SeqCst) > allowed {
                return None;
            }
            let verdict = match slide.read_region(grid.rect(cell).origin, plan.level, read) {
                Ok(patch) => Ok(mask.fraction_of(&patch)),
                Err(e) => {
                    failures.fetch_add(1, Ordering::SeqCst);
                    Err(Unreadable {
                        cell,
                        tissue: t,
                        error: e.reason(),
                    })
                }
            };
            Some((cell, verdict))
        })
        .collect();
    let mut selection = Selection::default();
    for (cell, verdict) in judged {
        match verdict {
            Ok(f) if is_tissue(f, min_tissue) => chosen.push((cell, f)),
            Ok(_) => {}
            Err(u) => selection.unreadable.push(u),
        }
    }
    chosen.sort_by_key(|&(c, _)| (c.row, c.col));
    (selection.cells, selection.tissue) = chosen.into_iter().unzip();
    selection
}
