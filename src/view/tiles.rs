//! The Deep Zoom pyramid of an image: the slide, or the map layer. In: the image's
//! full-resolution size. Out: which part of it tile `(level, col, row)` shows, as Deep
//! Zoom (DZI) numbers it, so any Deep Zoom client (OpenSeadragon) can read the tiles:
//! [`TILE`]-pixel tiles without overlap; level `max_level` is full resolution, each
//! level below halves it, level 0 is one pixel. For the slide, a tile is cut from the
//! coarsest slide level that still has its resolution, or from the slide's overview
//! where that would take a large read (a single-level TIFF zoomed out), so no tile ever
//! reads more than [`MAX_READ`] pixels a side.

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

/// Deep Zoom tile geometry over an image of a given full-resolution size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pyramid {
    pub size: Size,
    /// The full-resolution level: ⌈log2 of the longer side⌉.
    pub max_level: u32,
}

/// A rectangle in the full-resolution pixels of the image a [`Pyramid`] tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// A tile as Deep Zoom numbers it: `<level>/<col>_<row>` in a request's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileId {
    pub level: u32,
    pub col: u32,
    pub row: u32,
}

impl TileId {
    /// The tile of the path segments `<level>` and `<col>_<row>.<ext>`.
    pub fn parse(level: &str, name: &str, ext: &str) -> Option<Self> {
        let (col, row) = name.strip_suffix(ext)?.strip_suffix('.')?.split_once('_')?;
        Some(Self {
            level: level.parse().ok()?,
            col: col.parse().ok()?,
            row: row.parse().ok()?,
        })
    }
}

impl std::fmt::Display for TileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}_{}", self.level, self.col, self.row)
    }
}

impl Pyramid {
    pub fn new(size: Size) -> Self {
        let side = u64::from(size.w.max(size.h));
        let max_level = (0..64).find(|&k| side <= 1u64 << k).unwrap_or(63);
        Self { size, max_level }
    }

    /// Full-resolution pixels per pixel of `level`.
    pub fn downsample(&self, level: u32) -> u64 {
        1 << (self.max_level - level.min(self.max_level))
    }

    /// The full-resolution span a tile shows and its size in pixels; None outside the
    /// pyramid.
    pub fn tile(&self, t: TileId) -> Option<(Span, Size)> {
        let TileId { level, col, row } = t;
        if level > self.max_level {
            return None;
        }
        let ds = self.downsample(level);
        let span = u64::from(TILE) * ds;
        let (x, y) = (u64::from(col) * span, u64::from(row) * span);
        if x >= u64::from(self.size.w) || y >= u64::from(self.size.h) {
            return None;
        }
        let w = span.min(u64::from(self.size.w) - x);
        let h = span.min(u64::from(self.size.h) - y);
        let out = Size::new(w.div_ceil(ds) as u32, h.div_ceil(ds) as u32);
        let span = Span {
            x: x as u32,
            y: y as u32,
            w: w as u32,
            h: h as u32,
        };
        Some((span, out))
    }

    /// The `.dzi` descriptor of this pyramid with tiles of `format` (the file suffix).
    pub fn dzi(&self, format: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Image \
             xmlns=\"http://schemas.microsoft.com/deepzoom/2008\" Format=\"{format}\" \
             Overlap=\"0\" TileSize=\"{TILE}\"><Size Width=\"{}\" Height=\"{}\"/></Image>\n",
            self.size.w, self.size.h
        )
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

    /// A tile of the slide, None outside the pyramid.
    pub fn cut(&self, t: TileId) -> Result<Option<RgbImage>> {
        let Some((span, out)) = self.pyramid.tile(t) else {
            return Ok(None);
        };
        let rect = L0Rect {
            origin: L0Point {
                x: span.x,
                y: span.y,
            },
            size: Size::new(span.w, span.h),
        };
        let ds = self.pyramid.downsample(t.level) as f64;
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

    fn id(level: u32, col: u32, row: u32) -> TileId {
        TileId { level, col, row }
    }

    #[test]
    fn pyramid_numbers_levels_as_deep_zoom_and_covers_the_image_once_per_level() {
        let p = Pyramid::new(Size::new(100_000, 80_000));
        // 2^17 = 131,072 ≥ 100,000 > 65,536.
        assert_eq!(p.max_level, 17);
        // Level 8 (downsample 512) holds the whole slide in one tile.
        let (span, out) = p.tile(id(8, 0, 0)).unwrap();
        assert_eq!((span.w, span.h), (100_000, 80_000));
        assert_eq!(out, Size::new(196, 157));
        assert!(p.tile(id(8, 1, 0)).is_none());
        // Level 0 is one pixel, as Deep Zoom has it.
        assert_eq!(p.tile(id(0, 0, 0)).unwrap().1, Size::new(1, 1));
        assert!(p.tile(id(18, 0, 0)).is_none());
        // Full resolution: the last column is the remainder.
        let last = 100_000 / TILE;
        let (span, out) = p.tile(id(17, last, 0)).unwrap();
        assert_eq!((span.x, span.w, out.w), (last * TILE, 160, 160));
        assert!(p.tile(id(17, last + 1, 0)).is_none());
        let mut area = 0u64;
        for col in 0..=last {
            for row in 0..=80_000 / TILE {
                area += p
                    .tile(id(17, col, row))
                    .map_or(0, |(s, _)| u64::from(s.w * s.h));
            }
        }
        assert_eq!(area, 100_000 * 80_000);
        // A level's tiles add up to ⌈size / downsample⌉, the size a client computes.
        let width: u32 = (0..)
            .map_while(|c| p.tile(id(10, c, 0)))
            .map(|(_, o)| o.w)
            .sum();
        assert_eq!(width, 100_000u32.div_ceil(128));
        assert_eq!(Pyramid::new(Size::new(256, 10)).max_level, 8);
        assert_eq!(Pyramid::new(Size::new(257, 10)).max_level, 9);
        assert!(p
            .dzi("jpg")
            .contains("<Size Width=\"100000\" Height=\"80000\"/>"));
    }
}
