//! The deep-zoom pyramid the viewer pans and zooms through. In: a slide. Out: JPEG-ready
//! tiles of [`TILE`] × [`TILE`] pixels. Tile level `k` shows 2^k level-0 pixels per tile
//! pixel: `k = 0` is full resolution and the top level holds the whole slide in one
//! tile. A tile is cut from the coarsest slide level that still has its resolution, or
//! from the slide's overview where that would take a large read (a single-level TIFF
//! zoomed out), so no tile ever reads more than [`MAX_READ`] pixels a side.

use image::RgbImage;

use crate::error::Result;
use crate::map::geom::{L0Point, L0Rect, Size};
use crate::map::preprocess::resize_rgb;
use crate::map::slide::{self, best_level, SlideSource, Thumbnail};

/// Tile side in pixels.
pub const TILE: u32 = 256;
/// Longer side of the overview an open slide keeps (3 MiB of RGB).
const OVERVIEW_SIDE: u32 = 1024;
/// Largest read a tile may take from a slide level, in pixels a side.
const MAX_READ: u32 = 2 * TILE;

/// Tile geometry over a slide of a given level-0 size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pyramid {
    pub size: Size,
    /// The top level: the whole slide fits one tile.
    pub top: u32,
}

impl Pyramid {
    pub fn new(size: Size) -> Self {
        let side = u64::from(size.w.max(size.h));
        let top = (0..32)
            .find(|&k| side <= u64::from(TILE) << k)
            .unwrap_or(31);
        Self { size, top }
    }

    /// The level-0 rectangle tile `(k, col, row)` shows and its size in pixels; None
    /// outside the pyramid.
    pub fn tile(&self, k: u32, col: u32, row: u32) -> Option<(L0Rect, Size)> {
        if k > self.top {
            return None;
        }
        let span = u64::from(TILE) << k;
        let (x, y) = (u64::from(col) * span, u64::from(row) * span);
        if x >= u64::from(self.size.w) || y >= u64::from(self.size.h) {
            return None;
        }
        let w = span.min(u64::from(self.size.w) - x) as u32;
        let h = span.min(u64::from(self.size.h) - y) as u32;
        let rect = L0Rect {
            origin: L0Point {
                x: x as u32,
                y: y as u32,
            },
            size: Size::new(w, h),
        };
        Some((rect, Size::new(w.div_ceil(1 << k), h.div_ceil(1 << k))))
    }
}

/// A slide opened for the viewer: its reader and a small overview of the whole.
pub struct TileSource {
    slide: Box<dyn SlideSource>,
    overview: Thumbnail,
    pub pyramid: Pyramid,
}

impl TileSource {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let slide = slide::open(path)?;
        let overview = slide::thumbnail(slide.as_ref(), OVERVIEW_SIDE)?;
        let pyramid = Pyramid::new(slide.info().size);
        Ok(Self {
            slide,
            overview,
            pyramid,
        })
    }

    /// Tile `(k, col, row)`, None outside the pyramid.
    pub fn cut(&self, k: u32, col: u32, row: u32) -> Result<Option<RgbImage>> {
        let Some((rect, out)) = self.pyramid.tile(k, col, row) else {
            return Ok(None);
        };
        let ds = f64::from(1u32 << k);
        let levels = &self.slide.info().levels;
        let level = best_level(levels, ds);
        let lds = levels[level].downsample;
        let read = Size::new(
            ((f64::from(rect.size.w) / lds).ceil() as u32).max(1),
            ((f64::from(rect.size.h) / lds).ceil() as u32).max(1),
        );
        if ds >= self.overview.downsample || read.w.max(read.h) > MAX_READ {
            return Ok(Some(self.cut_from_overview(rect, out)));
        }
        let image = self.slide.read_region(rect.origin, level, read)?;
        Ok(Some(if read == out {
            image
        } else {
            resize_rgb(&image, out)
        }))
    }

    fn cut_from_overview(&self, rect: L0Rect, out: Size) -> RgbImage {
        let o = &self.overview;
        let (ow, oh) = o.image.dimensions();
        let x0 = ((f64::from(rect.origin.x) / o.downsample) as u32).min(ow - 1);
        let y0 = ((f64::from(rect.origin.y) / o.downsample) as u32).min(oh - 1);
        let x1 = ((f64::from(rect.right()) / o.downsample).ceil() as u32).clamp(x0 + 1, ow);
        let y1 = ((f64::from(rect.bottom()) / o.downsample).ceil() as u32).clamp(y0 + 1, oh);
        let crop = image::imageops::crop_imm(&o.image, x0, y0, x1 - x0, y1 - y0).to_image();
        resize_rgb(&crop, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_covers_the_slide_once_per_level() {
        let p = Pyramid::new(Size::new(100_000, 80_000));
        assert_eq!(p.top, 9); // 256 << 9 = 131,072 ≥ 100,000 > 65,536
        let (rect, out) = p.tile(9, 0, 0).unwrap();
        assert_eq!(rect.size, Size::new(100_000, 80_000));
        assert_eq!(out, Size::new(196, 157));
        assert!(p.tile(10, 0, 0).is_none());
        // Full resolution: the last column is the remainder.
        let last = 100_000 / TILE;
        let (rect, out) = p.tile(0, last, 0).unwrap();
        assert_eq!((rect.origin.x, rect.size.w, out.w), (last * TILE, 160, 160));
        assert!(p.tile(0, last + 1, 0).is_none());
        let mut area = 0;
        for col in 0..=last {
            for row in 0..=80_000 / TILE {
                area += p.tile(0, col, row).map_or(0, |(r, _)| r.size.area());
            }
        }
        assert_eq!(area, 100_000 * 80_000);
        assert_eq!(Pyramid::new(Size::new(256, 10)).top, 0);
        assert_eq!(Pyramid::new(Size::new(257, 10)).top, 1);
    }
}
