//! Tiling grid: pure coordinate math, no pixels.
//!
//! In: the slide's level-0 size, its pyramid and MPP, and the pipeline's patch size,
//! stride and MPP. Out: a [`Grid`] of patch rectangles in level-0 pixels and a
//! [`ReadPlan`] saying which level to read each patch from and at what size, so the
//! model sees the scale it was trained at.
//!
//! Only whole patches are cut: a strip narrower than one patch at the right and bottom
//! edges is left out (at most `patch - 1` level-0 pixels).
//!
//! Each cell of the grid also owns a *core*: the stride × stride square centred on its
//! patch. Cores tile the plane without gaps or overlaps, so heatmaps and dissolved
//! regions use them; with stride < patch a core is covered by several patches, whose
//! probabilities are averaged with weights equal to the covered area.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::map::geom::{Cell, L0Point, L0Rect, Size};
use crate::map::slide::{best_level, SlideInfo};

/// The patch grid over a slide, in level-0 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub slide: Size,
    pub patch: u32,
    pub stride: u32,
    pub cols: u32,
    pub rows: u32,
}

impl Grid {
    pub fn new(slide: Size, patch: u32, stride: u32) -> Self {
        assert!(
            patch > 0 && stride > 0,
            "patch and stride are validated positive"
        );
        let count = |side: u32| {
            if side < patch {
                0
            } else {
                (side - patch) / stride + 1
            }
        };
        Self {
            slide,
            patch,
            stride,
            cols: count(slide.w),
            rows: count(slide.h),
        }
    }

    pub fn len(&self) -> usize {
        self.cols as usize * self.rows as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All cells, row by row.
    pub fn cells(&self) -> impl Iterator<Item = Cell> + '_ {
        (0..self.rows).flat_map(move |row| (0..self.cols).map(move |col| Cell { col, row }))
    }

    /// Row-major index of a cell.
    pub fn index(&self, c: Cell) -> usize {
        c.row as usize * self.cols as usize + c.col as usize
    }

    /// The patch of a cell.
    pub fn rect(&self, c: Cell) -> L0Rect {
        L0Rect {
            origin: L0Point {
                x: c.col * self.stride,
                y: c.row * self.stride,
            },
            size: Size::new(self.patch, self.patch),
        }
    }

    /// Level-0 offset of a core's top-left corner from its patch's top-left corner
    /// (negative when stride > patch).
    pub fn core_offset(&self) -> f64 {
        (f64::from(self.patch) - f64::from(self.stride)) / 2.0
    }

    /// The core of a cell as `[x0, y0, x1, y1]` in level-0 pixels.
    pub fn core(&self, c: Cell) -> [f64; 4] {
        let s = f64::from(self.stride);
        let x0 = f64::from(c.col) * s + self.core_offset();
        let y0 = f64::from(c.row) * s + self.core_offset();
        [x0, y0, x0 + s, y0 + s]
    }

    /// The cell whose core holds a level-0 point, if any.
    pub fn cell_at(&self, x: f64, y: f64) -> Option<Cell> {
        let s = f64::from(self.stride);
        let col = ((x - self.core_offset()) / s).floor();
        let row = ((y - self.core_offset()) / s).floor();
        (col >= 0.0 && row >= 0.0 && col < f64::from(self.cols) && row < f64::from(self.rows))
            .then_some(Cell {
                col: col as u32,
                row: row as u32,
            })
    }

    /// One-dimensional overlap weights: `(d, w)` means the patch `d` cells away covers
    /// the fraction `w` of a core's side. Two-dimensional weights are products.
    pub fn overlap_weights(&self) -> Vec<(i64, f64)> {
        let (p, s) = (f64::from(self.patch), f64::from(self.stride));
        let (core0, core1) = ((p - s) / 2.0, (p + s) / 2.0);
        let reach = (p / s).ceil() as i64 + 1;
        (-reach..=reach)
            .filter_map(|d| {
                let (a, b) = (d as f64 * s, d as f64 * s + p);
                let overlap = b.min(core1) - a.max(core0);
                (overlap > 1e-9).then_some((d, overlap / s))
            })
            .collect()
    }
}

/// How to read patches so the model sees its training scale.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReadPlan {
    pub grid: Grid,
    /// Pyramid level read from.
    pub level: usize,
    /// Patch side in pixels of that level (before resizing).
    pub read_size: u32,
    /// Side of the square the model takes.
    pub input_size: u32,
    /// Microns per level-0 pixel that the plan assumed.
    pub slide_mpp: f64,
}

impl ReadPlan {
    /// `slide_mpp` serves slides that do not record their MPP; a slide's own MPP wins,
    /// so one value can be given for a folder that mixes both.
    pub fn new(
        info: &SlideInfo,
        size: u32,
        stride: u32,
        model_mpp: f64,
        slide_mpp: Option<f64>,
    ) -> Result<Self> {
        let slide_mpp = info.mpp.or(slide_mpp).ok_or_else(|| {
            Error::slide(
                &info.path,
                "the slide does not record its microns per pixel; pass --slide-mpp (e.g. 0.5 for a 20× scan)",
            )
        })?;
        let scale = model_mpp / slide_mpp;
        let to_l0 = |px: u32| ((f64::from(px) * scale).round() as u32).max(1);
        let grid = Grid::new(info.size, to_l0(size), to_l0(stride));
        if grid.is_empty() {
            return Err(Error::slide(
                &info.path,
                format!(
                    "the slide ({}×{} px at {slide_mpp} µm/px) is smaller than one patch \
                     ({size} px at {model_mpp} µm/px, {} slide pixels)",
                    info.size.w, info.size.h, grid.patch
                ),
            ));
        }
        let level = best_level(&info.levels, scale);
        let read_size =
            ((f64::from(grid.patch) / info.levels[level].downsample).round() as u32).max(1);
        Ok(Self {
            grid,
            level,
            read_size,
            input_size: size,
            slide_mpp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::slide::Level;

    #[test]
    fn whole_patches_only_and_edges() {
        let g = Grid::new(Size::new(1000, 320), 150, 150);
        assert_eq!((g.cols, g.rows), (6, 2));
        let last = g.rect(Cell { col: 5, row: 1 });
        assert!(last.right() <= 1000 && last.bottom() <= 320);
        // Exactly one patch fits; one pixel less, none.
        assert_eq!(Grid::new(Size::new(150, 150), 150, 150).len(), 1);
        assert!(Grid::new(Size::new(149, 1000), 150, 150).is_empty());
        // Overlapping stride: (1000 - 150) / 75 + 1 = 12 columns.
        assert_eq!(Grid::new(Size::new(1000, 150), 150, 75).cols, 12);
    }

    #[test]
    fn cores_tile_the_plane() {
        let g = Grid::new(Size::new(1000, 1000), 100, 50);
        let c = Cell { col: 3, row: 2 };
        assert_eq!(g.core(c), [175.0, 125.0, 225.0, 175.0]);
        assert_eq!(g.cell_at(175.0, 125.0), Some(c));
        assert_eq!(g.cell_at(224.9, 174.9), Some(c));
        assert_eq!(g.cell_at(225.0, 125.0), Some(Cell { col: 4, row: 2 }));
        assert_eq!(g.cell_at(10.0, 10.0), None);
    }

    #[test]
    fn overlap_weights() {
        // No overlap: a core is its own patch.
        assert_eq!(
            Grid::new(Size::new(1000, 1000), 100, 100).overlap_weights(),
            vec![(0, 1.0)]
        );
        // Half overlap: the patch itself covers the core, each neighbour half of it.
        assert_eq!(
            Grid::new(Size::new(1000, 1000), 100, 50).overlap_weights(),
            vec![(-1, 0.5), (0, 1.0), (1, 0.5)]
        );
        // Gaps between patches (stride > patch): only the patch itself.
        assert_eq!(
            Grid::new(Size::new(1000, 1000), 100, 200).overlap_weights(),
            vec![(0, 0.5)]
        );
    }

    #[test]
    fn plan_picks_level_and_read_size() {
        let info = SlideInfo {
            path: "s.svs".into(),
            format: "aperio".into(),
            reader: "OpenSlide".into(),
            size: Size::new(40_000, 30_000),
            levels: vec![
                Level {
                    size: Size::new(40_000, 30_000),
                    downsample: 1.0,
                },
                Level {
                    size: Size::new(10_000, 7_500),
                    downsample: 4.0,
                },
            ],
            mpp: Some(0.25),
            objective_power: Some(40.0),
            icc_profile_bytes: None,
        };
        // 96 px at 1 µm/px on a 0.25 µm/px slide: 384 level-0 px, read 96 px at 4×.
        let plan = ReadPlan::new(&info, 96, 96, 1.0, None).unwrap();
        assert_eq!((plan.grid.patch, plan.level, plan.read_size), (384, 1, 96));
        // At 0.97 µm/px the 4× level is too coarse (3.88 needed): read level 0 and shrink.
        let plan = ReadPlan::new(&info, 96, 96, 0.97, None).unwrap();
        assert_eq!((plan.grid.patch, plan.level, plan.read_size), (372, 0, 372));
        // Same scale as the model: level 0, no resize.
        let plan = ReadPlan::new(&info, 150, 75, 0.25, None).unwrap();
        assert_eq!(
            (
                plan.grid.patch,
                plan.grid.stride,
                plan.level,
                plan.read_size
            ),
            (150, 75, 0, 150)
        );
        // A recorded MPP wins over the fallback; an unknown one needs it.
        let with_fallback = ReadPlan::new(&info, 96, 96, 1.0, Some(0.5)).unwrap();
        assert_eq!(with_fallback.slide_mpp, 0.25);
        let info = SlideInfo { mpp: None, ..info };
        assert!(ReadPlan::new(&info, 96, 96, 0.97, None)
            .unwrap_err()
            .to_string()
            .contains("--slide-mpp"));
        assert!(ReadPlan::new(&info, 96, 96, 0.97, Some(0.5)).is_ok());
    }
}
