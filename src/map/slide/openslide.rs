//! OpenSlide backend: every format the system libopenslide opens. OpenSlide handles
//! are thread-safe, so one handle serves all reader threads.
//!
//! After any error OpenSlide 3.4 refuses every later read on that handle, so one
//! corrupt tile would cost the whole slide. A failed read therefore replaces the shared
//! handle with a freshly opened one, and is retried once on a handle of its own (where
//! no other thread's failure can reach it); a region that fails there too is reported
//! unreadable, and the slide goes on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use image::RgbImage;
use openslide_rs::{Address, OpenSlide, Region};

use super::{Level, SlideInfo, SlideSource};
use crate::error::{Error, Result};
use crate::map::geom::{L0Point, Size};

/// The version of the OpenSlide library loaded: 4.x where scripts/fetch-openslide.sh
/// provided it at build time, else the system's (Debian's 3.4.1).
pub fn openslide_version() -> String {
    OpenSlide::version().unwrap_or_else(|_| "(version unknown)".into())
}

pub struct OpenSlideSource {
    /// The handle in use and how many times it has been replaced, so that threads
    /// that saw the same failure reopen it once between them.
    handle: RwLock<(u64, Arc<OpenSlide>)>,
    /// The file OpenSlide opens: the slide's own, or one file of a DICOM series, whose
    /// folder is then `info.path`.
    file: PathBuf,
    info: SlideInfo,
}

impl OpenSlideSource {
    /// Opens `file` if OpenSlide recognises its format; `Ok(None)` if it does not, so
    /// another backend can try. A recognised file that fails to open is an error.
    /// `path` is the slide as the user knows it: `file`, or the folder of the DICOM
    /// series `file` is one of; errors and [`SlideInfo`] name it.
    pub fn try_open(file: &Path, path: &Path) -> Result<Option<Self>> {
        let Ok(vendor) = OpenSlide::detect_vendor(file) else {
            return Ok(None);
        };
        let slide = OpenSlide::new(file)
            .map_err(|e| Error::slide(path, format!("OpenSlide ({vendor}): {e}")))?;
        let levels: Vec<Level> = slide
            .all_level_dimensions()
            .iter()
            .zip(slide.all_level_downsamples())
            .map(|(s, &downsample)| Level {
                size: Size::new(s.w, s.h),
                downsample,
            })
            .collect();
        if levels.is_empty() || levels[0].size.area() == 0 {
            return Err(Error::slide(path, "OpenSlide reports no image data"));
        }
        let number = |name: &str| {
            slide
                .property_value(name)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
        };
        let mpp = match (number("openslide.mpp-x"), number("openslide.mpp-y")) {
            (Some(x), Some(y)) => Some((x + y) / 2.0),
            (x, y) => x.or(y),
        };
        // OpenSlide 3.4 derives no MPP for generic tiled TIFFs; their resolution tags do.
        let mpp = mpp.or_else(|| {
            let per_unit = match slide.property_value("tiff.ResolutionUnit").ok()?.as_str() {
                "centimeter" => 10_000.0,
                "inch" => 25_400.0,
                _ => return None,
            };
            let mpp = per_unit / number("tiff.XResolution")?;
            (mpp > 0.01 && mpp < 100.0).then_some(mpp)
        });
        let info = SlideInfo {
            path: path.to_path_buf(),
            format: vendor,
            reader: format!("OpenSlide {}", openslide_version()),
            size: levels[0].size,
            levels,
            mpp,
            objective_power: number("openslide.objective-power"),
            icc_profile_bytes: number("openslide.icc-size").map(|b| b as u64),
        };
        Ok(Some(Self {
            handle: RwLock::new((0, Arc::new(slide))),
            file: file.to_path_buf(),
            info,
        }))
    }

    fn current(&self) -> (u64, Arc<OpenSlide>) {
        let h = self.handle.read().expect("handle lock");
        (h.0, h.1.clone())
    }

    /// Replaces handle `generation` with a new one, unless another thread already did.
    fn reopen(&self, generation: u64) -> Result<()> {
        let mut h = self.handle.write().expect("handle lock");
        if h.0 == generation {
            *h = (
                generation + 1,
                Arc::new(reopened(&self.file, &self.info.path)?),
            );
        }
        Ok(())
    }
}

impl SlideSource for OpenSlideSource {
    fn info(&self) -> &SlideInfo {
        &self.info
    }

    fn read_region(&self, origin: L0Point, level: usize, size: Size) -> Result<RgbImage> {
        let region = Region {
            address: Address {
                x: origin.x,
                y: origin.y,
            },
            level: level as u32,
            size: openslide_rs::Size {
                w: size.w,
                h: size.h,
            },
        };
        let path = &self.info.path;
        let read = |slide: &OpenSlide| {
            slide.read_region(&region).map_err(|e| {
                Error::slide(
                    path,
                    format!("reading {size} at {origin}, level {level}: {e}"),
                )
            })
        };
        let (generation, shared) = self.current();
        let argb = match read(&shared) {
            Ok(argb) => argb,
            Err(_) => {
                // The error may be another thread's, on the shared handle: retry on a
                // handle of this read's own, so only this region's bytes decide.
                self.reopen(generation)?;
                read(&reopened(&self.file, path)?)?
            }
        };
        Ok(argb_to_rgb(&argb, size))
    }
}

/// A new handle on `file` (of the slide `path`), whose handle a read error spoiled.
fn reopened(file: &Path, path: &Path) -> Result<OpenSlide> {
    OpenSlide::new(file)
        .map_err(|e| Error::slide(path, format!("reopening after a read error: {e}")))
}

/// Converts OpenSlide's premultiplied native-endian ARGB to RGB on white, the colour
/// of empty glass, so transparent areas read as background.
fn argb_to_rgb(argb: &[u8], size: Size) -> RgbImage {
    let mut out = Vec::with_capacity(size.area() as usize * 3);
    for px in argb.chunks_exact(4) {
        let v = u32::from_ne_bytes([px[0], px[1], px[2], px[3]]);
        let a = v >> 24;
        let [r, g, b] = [(v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff];
        // Premultiplied: c = c_straight * a / 255, so on white: c + (255 - a).
        let on_white = |c: u32| (c + 255 - a).min(255) as u8;
        out.extend_from_slice(&[on_white(r), on_white(g), on_white(b)]);
    }
    RgbImage::from_raw(size.w, size.h, out).expect("buffer matches size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argb_transparent_is_white_and_opaque_is_kept() {
        let opaque = 0xff10_2030u32.to_ne_bytes();
        let clear = 0u32.to_ne_bytes();
        let img = argb_to_rgb(&[opaque, clear].concat(), Size::new(2, 1));
        assert_eq!(img.get_pixel(0, 0).0, [0x10, 0x20, 0x30]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
    }
}
