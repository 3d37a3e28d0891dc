//! Reinhard's colour transfer. In: RGB pixels. Out: [`LabStats`] (per-channel means
//! and standard deviations in CIELAB) and a [`Map`] matching a source's to a target's.
//!
//! As TIAToolbox's `ReinhardNormalizer`: statistics over every pixel, in OpenCV's
//! 8-bit LAB (L as 0–100, a and b centred); each channel is shifted and scaled on its
//! own, so the map is three byte tables between two colour conversions.

use serde::{Deserialize, Serialize};

use super::lab;

/// A source's or a target's colour statistics: (L, a, b) with L in 0–100 and a, b
/// centred on 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabStats {
    pub means: [f32; 3],
    pub stds: [f32; 3],
}

/// An 8-bit LAB channel value as TIAToolbox's `lab_split` reads it.
fn channel_value(c: usize, v: u8) -> f64 {
    if c == 0 {
        f64::from(v) / 2.55
    } else {
        f64::from(v) - 128.0
    }
}

impl LabStats {
    /// The statistics of `pixels` (population standard deviation, as OpenCV's
    /// `meanStdDev`); zeros for no pixels.
    pub fn of(pixels: &[[u8; 3]]) -> Self {
        let mut hist = [[0u64; 256]; 3];
        for &p in pixels {
            let l = lab::rgb_to_lab8(p);
            for c in 0..3 {
                hist[c][l[c] as usize] += 1;
            }
        }
        let n = pixels.len().max(1) as f64;
        let mut means = [0f32; 3];
        let mut stds = [0f32; 3];
        for c in 0..3 {
            let sum = |f: &dyn Fn(f64) -> f64| -> f64 {
                (0..256)
                    .map(|v| hist[c][v] as f64 * f(channel_value(c, v as u8)))
                    .sum()
            };
            let mean = sum(&|x| x) / n;
            let var = sum(&|x| (x - mean) * (x - mean)) / n;
            means[c] = mean as f32;
            stds[c] = var.sqrt() as f32;
        }
        Self { means, stds }
    }
}

/// A source's statistics matched to a target's: one byte table per LAB channel.
#[derive(Debug, Clone)]
pub struct Map {
    tables: [[u8; 256]; 3],
}

impl Map {
    pub fn new(source: &LabStats, target: &LabStats) -> Self {
        let tables = std::array::from_fn(|c| {
            // A flat channel has nothing to scale; keep its spread.
            let gain = if source.stds[c] > 1e-6 {
                target.stds[c] / source.stds[c]
            } else {
                1.0
            };
            std::array::from_fn(|v| {
                let x = channel_value(c, v as u8) as f32;
                let y = (x - source.means[c]) * gain + target.means[c];
                let byte = if c == 0 { y * 2.55 } else { y + 128.0 };
                byte.clamp(0.0, 255.0) as u8
            })
        });
        Self { tables }
    }

    /// Normalises RGB bytes (`r, g, b, r, g, b, ...`) in place.
    pub fn apply(&self, px: &mut [u8]) {
        for p in px.chunks_exact_mut(3) {
            let l = lab::rgb_to_lab8([p[0], p[1], p[2]]);
            let out = lab::lab8_to_rgb(std::array::from_fn(|c| self.tables[c][l[c] as usize]));
            p.copy_from_slice(&out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_those_of_the_lab_channels() {
        let white = LabStats::of(&[[255, 255, 255]; 4]);
        assert_eq!(white.stds, [0.0; 3]);
        assert!((white.means[0] - 100.0).abs() < 1e-4 && white.means[1].abs() < 1e-6);
        let two = LabStats::of(&[[255, 255, 255], [0, 0, 0]]);
        assert!((two.means[0] - 50.0).abs() < 1e-4 && (two.stds[0] - 50.0).abs() < 1e-4);
    }
}
