//! Stain normalisation: the same pixels whatever lab stained the slide. In: RGB pixels
//! of a source (a slide's tissue, or one tile) and a [`Target`] (what the model's
//! training data looked like). Out: a [`Transform`], a per-pixel map applied to every
//! patch of that source before preprocessing.
//!
//! The source's stains are estimated once per source from many pixels, never per patch
//! of a slide: a patch holds too few pixels of each stain for a steady estimate, and
//! neighbouring patches normalised differently would tile the map.
//!
//! Two methods, each as TIAToolbox 1.6 computes it (golden values:
//! `scripts/make-stain-golden.py`, `tests/stain.rs`):
//! - [`macenko`]: H&E optical-density vectors from the angular extremes of the tissue's
//!   OD plane, concentrations rescaled to the target's 99th percentiles. Linear in OD,
//!   so it runs as one 3 × 3 matrix per pixel between two lookup tables.
//! - [`reinhard`]: per-channel means and deviations in CIELAB matched to the target's.

pub mod lab;
pub mod macenko;
pub mod reinhard;

use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use macenko::Stains;
pub use reinhard::LabStats;

/// Which normalisation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Pixels as read.
    #[default]
    None,
    /// Macenko et al. 2009: H&E vectors and concentrations (the stain-aware one).
    Macenko,
    /// Reinhard et al. 2001: LAB means and deviations (colour statistics only).
    Reinhard,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Macenko => "macenko",
            Method::Reinhard => "reinhard",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What normalised pixels should look like, for both methods: fitted on the pixels of
/// a reference (a model's training tiles, an image) by [`Target::fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub macenko: Stains,
    pub reinhard: LabStats,
    /// What it was fitted on, in words (files, tiles, slides).
    pub fitted_on: String,
}

impl Target {
    /// The target of an image file's pixels (all of them: glass counts for Reinhard's
    /// statistics, as in TIAToolbox, and Macenko's estimate finds the tissue itself).
    pub fn from_image(path: &std::path::Path) -> crate::Result<Self> {
        let image = image::open(path)
            .map_err(|e| {
                crate::Error::Usage(format!("{}: cannot read as an image: {e}", path.display()))
            })?
            .to_rgb8();
        Self::fit(pixels(&image), path.display().to_string())
            .map_err(|e| crate::Error::Usage(format!("{}: no stain target: {e}", path.display())))
    }

    pub fn fit(pixels: &[[u8; 3]], fitted_on: String) -> Result<Self, StainError> {
        Ok(Self {
            macenko: Stains::estimate(pixels)?,
            reinhard: LabStats::of(pixels),
            fitted_on,
        })
    }
}

/// Why a source's stains could not be estimated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StainError {
    #[error("too little tissue to estimate its stains ({found} tissue pixels, {needed} needed)")]
    TooLittleTissue { found: usize, needed: usize },
    #[error(
        "the stain vectors found are not those of H&E (H {h:.3?}, E {e:.3?}): \
         not an H&E image, or too little of one stain"
    )]
    NotHe { h: [f32; 3], e: [f32; 3] },
}

/// The per-pixel map that normalises one source, as [`Transform::apply`] runs it.
#[derive(Debug, Clone)]
pub enum Transform {
    Macenko(macenko::Map),
    Reinhard(Box<reinhard::Map>),
}

/// A run's normalisation: a method other than [`Method::None`] and the target it maps
/// to. Slides are normalised by their own stains estimated once ([`Transform::new`]),
/// tiles by their own ([`Normalize::own`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub method: Method,
    pub target: Target,
    /// Where the target came from, in words (the model card, an image).
    pub target_from: String,
}

impl Normalize {
    /// `None` for [`Method::None`].
    pub fn new(method: Method, target: Target, target_from: String) -> Option<Self> {
        (method != Method::None).then_some(Self {
            method,
            target,
            target_from,
        })
    }

    /// The map for a source whose pixels (pooled) are `source`.
    pub fn transform(&self, source: &[[u8; 3]]) -> Result<(Transform, Estimate), StainError> {
        Ok(Transform::new(self.method, &self.target, source)?
            .expect("a Normalize never holds Method::None"))
    }

    /// Normalises a tile by its own stains; false when they could not be estimated
    /// (too little tissue: glass, a background tile), and the tile is left as read, as
    /// a slide's map leaves glass about as it is.
    pub fn own(&self, image: &mut RgbImage) -> bool {
        match self.transform(pixels(image)) {
            Ok((t, _)) => {
                t.apply(image);
                true
            }
            Err(_) => false,
        }
    }
}

/// "macenko to TARGET", as job keys and `metrics.json` record it.
impl std::fmt::Display for Normalize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to {}", self.method, self.target_from)
    }
}

/// What was estimated for a source, as recorded in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Estimate {
    Macenko(Stains),
    Reinhard(LabStats),
}

impl Transform {
    /// Estimates the source's stains from `source` (its pixels, pooled) and makes the
    /// map to `target` under `method`; `None` for [`Method::None`].
    pub fn new(
        method: Method,
        target: &Target,
        source: &[[u8; 3]],
    ) -> Result<Option<(Self, Estimate)>, StainError> {
        Ok(match method {
            Method::None => None,
            Method::Macenko => {
                let stains = Stains::estimate(source)?;
                let map = macenko::Map::new(&stains, &target.macenko);
                Some((Transform::Macenko(map), Estimate::Macenko(stains)))
            }
            Method::Reinhard => {
                let stats = LabStats::of(source);
                let map = reinhard::Map::new(&stats, &target.reinhard);
                Some((
                    Transform::Reinhard(Box::new(map)),
                    Estimate::Reinhard(stats),
                ))
            }
        })
    }

    /// Normalises `image` in place.
    pub fn apply(&self, image: &mut RgbImage) {
        let px: &mut [u8] = image.as_mut();
        match self {
            Transform::Macenko(m) => m.apply(px),
            Transform::Reinhard(m) => m.apply(px),
        }
    }
}

/// The pixels of an image, as `[r, g, b]`.
pub fn pixels(image: &RgbImage) -> &[[u8; 3]] {
    let raw: &[u8] = image.as_raw();
    // `[u8; 3]` has alignment 1 and no padding, so this is the same bytes.
    let (chunks, rest) = raw.as_chunks::<3>();
    debug_assert!(rest.is_empty());
    chunks
}

/// The `q`-th percentile (0–100) of `values`, interpolated linearly between the two
/// nearest ranks as numpy's default does; reorders `values`. `values` is not empty.
pub(crate) fn percentile(values: &mut [f32], q: f64) -> f32 {
    let pos = q / 100.0 * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, &mut below, above) = values.select_nth_unstable_by(lo, f32::total_cmp);
    let frac = (pos - lo as f64) as f32;
    if frac == 0.0 || above.is_empty() {
        return below;
    }
    let next = above.iter().copied().fold(f32::INFINITY, f32::min);
    below + (next - below) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_as_numpy() {
        // numpy.percentile([1, 2, 3, 4], [0, 25, 50, 99, 100]) = 1, 1.75, 2.5, 3.97, 4
        for (q, want) in [
            (0.0, 1.0),
            (25.0, 1.75),
            (50.0, 2.5),
            (99.0, 3.97),
            (100.0, 4.0),
        ] {
            let mut v = [4.0, 1.0, 3.0, 2.0];
            assert!((percentile(&mut v, q) - want).abs() < 1e-6, "q {q}");
        }
    }
}
