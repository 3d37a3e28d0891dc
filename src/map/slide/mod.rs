//! Slide readers. In: a path. Out: a [`SlideSource`] that reports the pyramid and
//! reads RGB regions on demand, so no stage ever holds a whole slide in memory.
//!
//! Three backends: OpenSlide for everything it opens (Aperio, Hamamatsu, tiled TIFF,
//! DICOM series with OpenSlide 4, ...); histomap's own JPEG tile reader, which takes
//! over from OpenSlide the Aperio and generic tiled TIFFs whose levels are all JPEG
//! tiles (`tiled.rs`, faster; `HISTOMAP_READER=openslide` turns it off); and a raster
//! reader for plain strip TIFFs, PNG and JPEG, which OpenSlide refuses. A slide is a
//! file, or a folder holding one DICOM series (`dicom.rs`).

pub mod cache;
pub mod dicom;
mod openslide;
mod raster;
mod tiled;

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::map::geom::{L0Point, Size};

pub use self::openslide::{openslide_version, OpenSlideSource};
pub use self::raster::RasterSource;
pub use self::tiled::TiledTiffSource;

/// One level of the pyramid.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Level {
    pub size: Size,
    /// Level-0 pixels per pixel of this level.
    pub downsample: f64,
}

/// What `histomap info` prints and `summary.json` records about a slide.
#[derive(Debug, Clone, Serialize)]
pub struct SlideInfo {
    pub path: PathBuf,
    pub format: String,
    /// What reads it: "OpenSlide 4.0.1" (the library loaded, which scripts/fetch-openslide.sh
    /// decides), or histomap's own raster reader.
    pub reader: String,
    pub size: Size,
    pub levels: Vec<Level>,
    /// Microns per level-0 pixel, when the file says.
    pub mpp: Option<f64>,
    pub objective_power: Option<f64>,
    /// Bytes of the ICC colour profile the slide embeds (OpenSlide 4 reports it). It is
    /// recorded, not applied: the models were trained on pixels as scanned.
    pub icc_profile_bytes: Option<u64>,
}

/// A readable slide. Implementations are shared between reader threads.
pub trait SlideSource: Send + Sync {
    fn info(&self) -> &SlideInfo;

    /// Reads `size` pixels of `level`, the top-left corner given in level-0 pixels.
    /// Pixels outside the slide come back white.
    fn read_region(&self, origin: L0Point, level: usize, size: Size) -> Result<RgbImage>;

    fn path(&self) -> &Path {
        &self.info().path
    }
}

/// Scanners' own formats, which only OpenSlide reads.
const VENDOR_EXTENSIONS: &[&str] = &["svs", "ndpi", "vms", "vmu", "scn", "mrxs", "svslide", "bif"];
/// Formats the raster reader reads (TIFF also through OpenSlide when it is tiled).
const RASTER_EXTENSIONS: &[&str] = &["tif", "tiff", "png", "jpg", "jpeg"];

/// Whether a file with this lower-case extension is a slide a folder run should open.
pub fn is_slide_extension(ext: &str) -> bool {
    VENDOR_EXTENSIONS.contains(&ext) || RASTER_EXTENSIONS.contains(&ext)
}

/// Bytes and modification time of a slide: its file's, or its series folder's files'
/// together. A job key records the bytes; a slide that changes while read is caught
/// by both.
pub fn stat(path: &Path) -> std::io::Result<(u64, Option<std::time::SystemTime>)> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return dicom::stat(path);
    }
    Ok((meta.len(), meta.modified().ok()))
}

/// Opens `path` with the backend that can read it.
pub fn open(path: &Path) -> Result<Box<dyn SlideSource>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let Some(file) = dicom::series_file(path) else {
            return Err(Error::slide(
                path,
                "a folder with no DICOM file: not a slide (a slide is a file, or a folder \
                 of one DICOM series)",
            ));
        };
        return match OpenSlideSource::try_open(&file, path)? {
            Some(source) => Ok(Box::new(source)),
            None => {
                let v = openslide_version();
                Err(Error::slide(
                    path,
                    if v.starts_with("3.") {
                        format!(
                            "DICOM needs OpenSlide 4, and histomap was built with OpenSlide \
                             {v} (run scripts/fetch-openslide.sh, then build again)"
                        )
                    } else {
                        format!(
                            "OpenSlide {v} does not read {} as a DICOM whole-slide image \
                             (not conformant, or not a slide)",
                            file.display()
                        )
                    },
                ))
            }
        };
    }
    if !meta.is_file() {
        return Err(Error::slide(path, "not a file"));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    // Contents over names: an SVS saved as `.jpg` still goes to OpenSlide.
    let tiff = raster::is_tiff(path)?;
    if !tiff && matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
        return Ok(Box::new(RasterSource::open(path)?));
    }
    if let Some(source) = OpenSlideSource::try_open(path, path)? {
        if std::env::var("HISTOMAP_READER").as_deref() == Ok("openslide") {
            return Ok(Box::new(source));
        }
        return Ok(match TiledTiffSource::over(path, source) {
            Ok(direct) => Box::new(direct),
            Err(source) => source,
        });
    }
    // A scanner's own format that OpenSlide declines is damaged, even when its first
    // image still reads as a TIFF: reading that alone would lose its MPP and pyramid.
    if VENDOR_EXTENSIONS.contains(&ext.as_str()) {
        return Err(Error::slide(
            path,
            format!(
                "not a slide histomap can read: OpenSlide does not recognise this .{ext} file \
                 (damaged, truncated, or not a slide)"
            ),
        ));
    }
    // A TIFF OpenSlide declines, or a PNG or JPEG under another name (`.tif`).
    let image = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .is_ok_and(|r| r.format().is_some());
    if tiff || image {
        return Ok(Box::new(RasterSource::open(path)?));
    }
    Err(Error::slide(
        path,
        "not a slide histomap can read: OpenSlide does not recognise it and it is not a TIFF, PNG or JPEG",
    ))
}

/// A low-resolution RGB view of a whole slide.
pub struct Thumbnail {
    pub image: RgbImage,
    /// Level-0 pixels per thumbnail pixel.
    pub downsample: f64,
    /// Row-major, one per pixel: the part of the slide under it could not be read, so
    /// the pixel is neither tissue nor glass (it is drawn grey).
    pub unknown: Vec<bool>,
}

/// Smallest piece, in level pixels per side, that a failed thumbnail read is split into
/// to find the readable parts around a damaged tile.
const MIN_PIECE: u32 = 128;
/// Failed reads after which a thumbnail stops splitting: a slide damaged throughout is
/// marked unknown in coarser pieces rather than probed for minutes (every failed
/// OpenSlide read reopens the slide).
const MAX_FAILED_READS: usize = 128;

/// Builds a thumbnail whose longer side is at most `max_side`, reading the smallest
/// level that is still large enough in pieces of about 16 MiB, so memory stays bounded
/// even for a single-level gigapixel image (or a header that claims one). A piece that
/// cannot be read is split in four until the readable parts are found; what stays
/// unreadable is marked unknown. Fails only when no piece at all can be read.
pub fn thumbnail(slide: &dyn SlideSource, max_side: u32) -> Result<Thumbnail> {
    let info = slide.info();
    let levels = &info.levels;
    let level = (0..levels.len())
        .rev()
        .find(|&l| levels[l].size.w.max(levels[l].size.h) >= max_side)
        .unwrap_or(0);
    let lsize = levels[level].size;
    let factor = lsize.w.max(lsize.h).div_ceil(max_side).max(1);
    let out = Size::new(lsize.w.div_ceil(factor), lsize.h.div_ceil(factor));
    let pixels = out.area() as usize;
    let mut t = ThumbnailBuilder {
        slide,
        level,
        lsize,
        factor,
        out,
        sums: vec![0; pixels * 3],
        counts: vec![0; pixels],
        unknown: vec![false; pixels],
        first_error: None,
        failed_reads: 0,
    };

    // Pieces of whole output pixels, about 16 MiB of level pixels each: bands of rows,
    // cut across too where a band of a very wide level would be larger.
    const PIECE_BYTES: u64 = 16 << 20;
    let whole = |n: u64| (n / u64::from(factor)).max(1) as u32;
    let band = whole(PIECE_BYTES / (u64::from(lsize.w) * 3));
    let across = whole(PIECE_BYTES / (u64::from(band * factor) * 3)).min(t.out.w);
    for oy in (0..t.out.h).step_by(band as usize) {
        for ox in (0..t.out.w).step_by(across as usize) {
            t.piece(ox, oy, across.min(t.out.w - ox), band.min(t.out.h - oy));
        }
    }
    if let Some(e) = t
        .first_error
        .take()
        .filter(|_| t.unknown.iter().all(|&u| u))
    {
        return Err(e);
    }
    let mut image = RgbImage::new(t.out.w, t.out.h);
    for (i, px) in image.pixels_mut().enumerate() {
        if t.unknown[i] {
            *px = image::Rgb([128, 128, 128]);
            continue;
        }
        let n = t.counts[i].max(1);
        for c in 0..3 {
            px[c] = ((t.sums[i * 3 + c] + n / 2) / n) as u8;
        }
    }
    Ok(Thumbnail {
        image,
        downsample: levels[level].downsample * f64::from(factor),
        unknown: t.unknown,
    })
}

/// The sums a thumbnail is averaged from, filled piece by piece.
struct ThumbnailBuilder<'a> {
    slide: &'a dyn SlideSource,
    level: usize,
    lsize: Size,
    /// Level pixels per thumbnail pixel, per side.
    factor: u32,
    out: Size,
    sums: Vec<u32>,
    counts: Vec<u32>,
    unknown: Vec<bool>,
    first_error: Option<Error>,
    failed_reads: usize,
}

impl ThumbnailBuilder<'_> {
    /// Reads the thumbnail pixels `[ox, ox + ow) × [oy, oy + oh)`, splitting on failure.
    fn piece(&mut self, ox: u32, oy: u32, ow: u32, oh: u32) {
        let f = self.factor;
        let (x0, y0) = (ox * f, oy * f);
        let w = (ow * f).min(self.lsize.w - x0);
        let h = (oh * f).min(self.lsize.h - y0);
        let ds = self.slide.info().levels[self.level].downsample;
        let at = |v: u32| (f64::from(v) * ds).round() as u32;
        let origin = L0Point {
            x: at(x0),
            y: at(y0),
        };
        match self.slide.read_region(origin, self.level, Size::new(w, h)) {
            Ok(piece) => {
                for (py, row) in piece.rows().enumerate() {
                    let base = ((y0 + py as u32) / f) as usize * self.out.w as usize;
                    for (px_x, px) in row.enumerate() {
                        let i = base + (x0 as usize + px_x) / f as usize;
                        self.counts[i] += 1;
                        for c in 0..3 {
                            self.sums[i * 3 + c] += u32::from(px[c]);
                        }
                    }
                }
            }
            Err(e)
                if w.max(h) <= MIN_PIECE
                    || ow.max(oh) == 1
                    || self.failed_reads >= MAX_FAILED_READS =>
            {
                self.failed_reads += 1;
                self.first_error.get_or_insert(e);
                for y in oy..oy + oh {
                    let row = y as usize * self.out.w as usize;
                    self.unknown[row + ox as usize..row + (ox + ow) as usize].fill(true);
                }
            }
            Err(_) => {
                self.failed_reads += 1;
                let (hw, hh) = (ow.div_ceil(2), oh.div_ceil(2));
                for (dx, dy, qw, qh) in [
                    (0, 0, hw, hh),
                    (hw, 0, ow - hw, hh),
                    (0, hh, hw, oh - hh),
                    (hw, hh, ow - hw, oh - hh),
                ] {
                    if qw > 0 && qh > 0 {
                        self.piece(ox + dx, oy + dy, qw, qh);
                    }
                }
            }
        }
    }
}

/// Chooses the level to read a patch from: the most downsampled level that still has
/// at least the resolution asked for (`downsample` level-0 pixels per output pixel).
pub fn best_level(levels: &[Level], downsample: f64) -> usize {
    // A level reported as 4.0003 must still count as 4x.
    let tolerance = 1.0 + 1e-3;
    (0..levels.len())
        .rev()
        .find(|&l| levels[l].downsample <= downsample * tolerance)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_level_picks_coarsest_sufficient() {
        let levels = [1.0, 4.0003, 16.001, 64.02].map(|d| Level {
            size: Size::new(1, 1),
            downsample: d,
        });
        assert_eq!(best_level(&levels, 1.0), 0);
        assert_eq!(best_level(&levels, 3.9), 0);
        assert_eq!(best_level(&levels, 4.0), 1);
        assert_eq!(best_level(&levels, 15.0), 1);
        assert_eq!(best_level(&levels, 1000.0), 3);
        assert_eq!(best_level(&levels, 0.5), 0);
    }
}
