//! Tissue mask. In: a slide thumbnail. Out: a [`TissueMask`] that answers "what
//! fraction of this level-0 rectangle is tissue" in constant time.
//!
//! Tissue is told from glass by colour saturation: stained tissue is coloured, glass
//! is white or grey. The threshold is Otsu's on the saturation histogram, never below
//! a floor, so a slide that is all glass does not turn its faint noise into "tissue".
//! Very dark pixels (pen, slide edges, fluorescence background) are not tissue.
//! Pixels of the thumbnail that could not be read are *unknown*: they count as neither
//! tissue nor glass, take no part in the threshold, and are counted on their own.

use image::{Rgb, RgbImage};

/// Longer side of the thumbnail behind the tissue mask and the overlay.
pub const THUMBNAIL_SIDE: u32 = 2048;

use crate::map::geom::{L0Rect, Size};
use crate::map::slide::Thumbnail;

/// Brightness (max of R, G, B) below which a pixel is never tissue.
const MIN_BRIGHTNESS: u8 = 25;

pub struct TissueMask {
    size: Size,
    /// Level-0 pixels per mask pixel.
    downsample: f64,
    /// Summed-area table of tissue pixels, (w + 1) × (h + 1).
    integral: Vec<u32>,
    /// The same of unknown pixels.
    unknown: Vec<u32>,
    /// Saturation threshold that was applied.
    pub threshold: u8,
}

impl TissueMask {
    pub fn from_thumbnail(thumb: &Thumbnail, min_saturation: u8) -> Self {
        let img = &thumb.image;
        let known = |i: usize| !thumb.unknown.get(i).copied().unwrap_or(false);
        let saturation: Vec<u8> = img.pixels().map(saturation).collect();
        let mut hist = [0u64; 256];
        for (i, &s) in saturation.iter().enumerate() {
            if known(i) {
                hist[s as usize] += 1;
            }
        }
        let threshold = otsu(&hist).max(min_saturation);
        let (w, h) = (img.width() as usize, img.height() as usize);
        let summed = |counts: &dyn Fn(usize) -> bool| {
            let mut integral = vec![0u32; (w + 1) * (h + 1)];
            for y in 0..h {
                let mut row = 0u32;
                for x in 0..w {
                    row += u32::from(counts(y * w + x));
                    integral[(y + 1) * (w + 1) + x + 1] = integral[y * (w + 1) + x + 1] + row;
                }
            }
            integral
        };
        Self {
            size: Size::new(w as u32, h as u32),
            downsample: thumb.downsample,
            integral: summed(&|i| known(i) && saturation[i] >= threshold),
            unknown: summed(&|i| !known(i)),
            threshold,
        }
    }

    pub fn size(&self) -> Size {
        self.size
    }

    /// Fraction of mask pixels whose centre lies in `rect` that are tissue. A rectangle
    /// smaller than a mask pixel takes the pixel under its centre.
    pub fn fraction(&self, rect: L0Rect) -> f32 {
        self.share(&self.integral, rect)
    }

    /// Fraction of mask pixels whose centre lies in `rect` that could not be read.
    pub fn unknown_fraction(&self, rect: L0Rect) -> f32 {
        self.share(&self.unknown, rect)
    }

    /// Fraction of the pixels of `patch`, read from the slide, that are tissue by this
    /// mask's threshold: for a patch under an unknown part of the mask.
    pub fn fraction_of(&self, patch: &RgbImage) -> f32 {
        let n = patch
            .pixels()
            .filter(|p| saturation(p) >= self.threshold)
            .count();
        n as f32 / (patch.width() * patch.height()).max(1) as f32
    }

    fn share(&self, integral: &[u32], rect: L0Rect) -> f32 {
        let span = |start: u32, len: u32, limit: u32| {
            let a = (f64::from(start) / self.downsample - 0.5).ceil().max(0.0) as u32;
            let b = (f64::from(start + len) / self.downsample - 0.5)
                .ceil()
                .max(0.0) as u32;
            let (a, b) = (a.min(limit), b.min(limit));
            if a < b {
                (a, b)
            } else {
                let c = ((f64::from(start) + f64::from(len) / 2.0) / self.downsample) as u32;
                let c = c.min(limit.saturating_sub(1));
                (c, c + 1)
            }
        };
        let (x0, x1) = span(rect.origin.x, rect.size.w, self.size.w);
        let (y0, y1) = span(rect.origin.y, rect.size.h, self.size.h);
        if x0 >= x1 || y0 >= y1 {
            return 0.0;
        }
        let stride = self.size.w as usize + 1;
        let at = |x: u32, y: u32| i64::from(integral[y as usize * stride + x as usize]);
        let count = at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0);
        count as f32 / ((x1 - x0) * (y1 - y0)) as f32
    }

    /// Fraction of the whole slide that is tissue.
    pub fn total_fraction(&self) -> f32 {
        let n = self.size.area().max(1) as f32;
        *self.integral.last().unwrap_or(&0) as f32 / n
    }

    /// Fraction of the whole slide that could not be read.
    pub fn unknown_total(&self) -> f32 {
        let n = self.size.area().max(1) as f32;
        *self.unknown.last().unwrap_or(&0) as f32 / n
    }
}

/// Colour saturation, 0 for pixels too dark to be tissue.
fn saturation(p: &Rgb<u8>) -> u8 {
    let max = p.0.iter().copied().max().unwrap_or(0);
    let min = p.0.iter().copied().min().unwrap_or(0);
    if max < MIN_BRIGHTNESS {
        0
    } else {
        ((u32::from(max - min) * 255) / u32::from(max)) as u8
    }
}

/// Otsu's threshold: the level that maximises the between-class variance.
pub fn otsu(hist: &[u64; 256]) -> u8 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &n)| i as f64 * n as f64)
        .sum();
    let (mut w0, mut sum0) = (0.0f64, 0.0f64);
    let (mut best, mut best_var) = (0u8, -1.0f64);
    for (t, &n) in hist.iter().enumerate() {
        w0 += n as f64;
        sum0 += t as f64 * n as f64;
        let w1 = total as f64 - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let var = w0 * w1 * (m0 - m1) * (m0 - m1);
        if var > best_var {
            best_var = var;
            // Pixels above t are foreground.
            best = (t + 1).min(255) as u8;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::geom::L0Point;

    fn rect(x: u32, y: u32, w: u32, h: u32) -> L0Rect {
        L0Rect {
            origin: L0Point { x, y },
            size: Size::new(w, h),
        }
    }

    #[test]
    fn otsu_splits_two_modes() {
        let mut hist = [0u64; 256];
        hist[10] = 100;
        hist[200] = 50;
        let t = otsu(&hist);
        assert!(t > 10 && t <= 200, "threshold {t}");
    }

    #[test]
    fn left_half_tissue_gives_half_fraction() {
        // 20×10 thumbnail at 4× : left half pink (tissue), right half white.
        let img = RgbImage::from_fn(20, 10, |x, _| {
            if x < 10 {
                Rgb([200, 100, 170])
            } else {
                Rgb([245, 245, 245])
            }
        });
        let mask = TissueMask::from_thumbnail(
            &Thumbnail {
                image: img,
                downsample: 4.0,
                unknown: Vec::new(),
            },
            20,
        );
        assert_eq!(mask.fraction(rect(0, 0, 40, 40)), 1.0);
        assert_eq!(mask.fraction(rect(40, 0, 40, 40)), 0.0);
        assert_eq!(mask.fraction(rect(20, 0, 40, 40)), 0.5);
        assert!((mask.total_fraction() - 0.5).abs() < 1e-6);
        // Smaller than one mask pixel: the pixel under the centre decides.
        assert_eq!(mask.fraction(rect(1, 1, 2, 2)), 1.0);
        // Off the slide entirely.
        assert_eq!(mask.fraction(rect(1000, 1000, 40, 40)), 0.0);
    }

    #[test]
    fn all_glass_has_no_tissue() {
        let img = RgbImage::from_fn(16, 16, |x, y| {
            Rgb([240 + (x % 3) as u8, 241, 239 + (y % 2) as u8])
        });
        let mask = TissueMask::from_thumbnail(
            &Thumbnail {
                image: img,
                downsample: 1.0,
                unknown: Vec::new(),
            },
            20,
        );
        assert_eq!(mask.total_fraction(), 0.0);
    }

    #[test]
    fn unknown_pixels_are_neither_tissue_nor_glass() {
        // Left half tissue, right half unreadable: the threshold comes from the readable
        // half alone, and the unreadable half is counted on its own.
        let img = RgbImage::from_fn(20, 10, |x, _| {
            if x < 10 {
                Rgb([200, 100, 170])
            } else {
                Rgb([128, 128, 128])
            }
        });
        let unknown = (0..200).map(|i| i % 20 >= 10).collect();
        let thumb = Thumbnail {
            image: img,
            downsample: 4.0,
            unknown,
        };
        let mask = TissueMask::from_thumbnail(&thumb, 20);
        assert_eq!(mask.fraction(rect(0, 0, 40, 40)), 1.0);
        assert_eq!(mask.fraction(rect(40, 0, 40, 40)), 0.0);
        assert_eq!(mask.unknown_fraction(rect(20, 0, 40, 40)), 0.5);
        assert!((mask.unknown_total() - 0.5).abs() < 1e-6);
        let pink = RgbImage::from_pixel(4, 4, Rgb([200, 100, 170]));
        assert_eq!(mask.fraction_of(&pink), 1.0);
    }
}
