//! Training augmentation. In: an RGB tile and a seeded RNG. Out: a tile of the same
//! class: one of the 8 dihedral (D4) orientations, stain jitter in HED space
//! (haematoxylin, eosin, DAB optical densities; Ruifrok & Johnston's matrix), and a
//! small zoom. The RNG is seeded per (seed, epoch, sample), so augmentation is the same
//! whatever the thread count and after a resume.

use image::{imageops, RgbImage};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random D4 orientation.
    pub d4: bool,
    /// HED jitter strength σ: each stain's density is scaled by U(1-σ, 1+σ) and shifted by U(-σ, σ)·0.1.
    pub hed: f32,
    /// Zoom in by U(1, 1 + scale) (a random crop, resized back by preprocessing).
    pub scale: f32,
}

impl Augment {
    pub const NONE: Augment = Augment {
        d4: false,
        hed: 0.0,
        scale: 0.0,
    };

    pub fn apply(&self, img: &RgbImage, seed: u64) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = if self.d4 {
            dihedral(img, rng.random_range(0..8))
        } else {
            img.clone()
        };
        if self.hed > 0.0 {
            hed_jitter(&mut out, self.hed, &mut rng);
        }
        // A scale below f32's resolution at 1 would leave an empty range to draw from.
        if 1.0 + self.scale > 1.0 {
            let f = rng.random_range(1.0..1.0 + self.scale);
            let (w, h) = out.dimensions();
            let (cw, ch) = (
                ((w as f32) / f).round() as u32,
                ((h as f32) / f).round() as u32,
            );
            let (x, y) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
            out = imageops::crop_imm(&out, x, y, cw, ch).to_image();
        }
        out
    }
}

/// The `k`-th element of D4 (k in 0..8): rotation by 90°·(k mod 4), mirrored when k ≥ 4.
pub fn dihedral(img: &RgbImage, k: u8) -> RgbImage {
    let base = if k >= 4 {
        imageops::flip_horizontal(img)
    } else {
        img.clone()
    };
    match k % 4 {
        0 => base,
        1 => imageops::rotate90(&base),
        2 => imageops::rotate180(&base),
        _ => imageops::rotate270(&base),
    }
}

/// Ruifrok & Johnston's stain vectors (rows: H, E, DAB in optical density RGB).
const RGB_FROM_HED: [[f32; 3]; 3] = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]];

fn invert(m: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            *v = (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / det;
        }
    }
    inv
}

fn hed_jitter(img: &mut RgbImage, sigma: f32, rng: &mut ChaCha8Rng) {
    let hed_from_rgb = invert(&RGB_FROM_HED);
    let alpha: [f32; 3] = std::array::from_fn(|_| rng.random_range(1.0 - sigma..=1.0 + sigma));
    let beta: [f32; 3] = std::array::from_fn(|_| rng.random_range(-sigma..=sigma) * 0.1);
    let od_of: Vec<f32> = (0..256)
        .map(|v| -((v.max(1) as f32) / 255.0).ln())
        .collect();
    for px in img.pixels_mut() {
        let od = [
            od_of[px[0] as usize],
            od_of[px[1] as usize],
            od_of[px[2] as usize],
        ];
        let mut hed = [0.0f32; 3];
        for (s, h) in hed.iter_mut().enumerate() {
            *h = (0..3).map(|c| od[c] * hed_from_rgb[c][s]).sum::<f32>() * alpha[s] + beta[s];
        }
        for c in 0..3 {
            let od_c: f32 = (0..3).map(|s| hed[s] * RGB_FROM_HED[s][c]).sum();
            px[c] = ((-od_c).exp() * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::preprocess::Normalizer;
    use crate::pipeline::Normalization;
    use image::Rgb;

    #[test]
    fn d4_gives_eight_distinct_orientations() {
        let img = RgbImage::from_fn(3, 3, |x, y| Rgb([(x * 3 + y) as u8, 0, 0]));
        let all: Vec<RgbImage> = (0..8).map(|k| dihedral(&img, k)).collect();
        for i in 0..8 {
            for j in i + 1..8 {
                assert!(all[i] != all[j], "orientations {i} and {j} coincide");
            }
        }
        assert!(all[0] == img);
    }

    #[test]
    fn dihedral_of_model_input_matches_dihedral_of_the_image() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let img = RgbImage::from_fn(5, 5, |_, _| Rgb(rng.random::<[u8; 3]>()));
        let identity = Normalizer::new(&Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        });
        let chw = |img: &RgbImage| {
            let mut v = vec![0.0; 75];
            identity.write_chw(img, 5, &mut v);
            v
        };
        let src = chw(&img);
        for k in 0..8 {
            let mut ours = vec![0.0; 75];
            crate::model::tta::dihedral_chw(&src, 5, k, &mut ours);
            assert_eq!(ours, chw(&dihedral(&img, k)), "view {k}");
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // matrix indices read clearer here
    fn hed_round_trip_without_jitter_keeps_colours() {
        let inv = invert(&RGB_FROM_HED);
        let mut img = RgbImage::from_fn(4, 4, |x, y| Rgb([200 - x as u8 * 10, 120 + y as u8, 180]));
        let before = img.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        hed_jitter(&mut img, 0.0, &mut rng);
        for (a, b) in img.pixels().zip(before.pixels()) {
            assert!(
                (0..3).all(|c| (a[c] as i32 - b[c] as i32).abs() <= 1),
                "{a:?} vs {b:?}"
            );
        }
        // The inverse really inverts.
        for r in 0..3 {
            for c in 0..3 {
                let v: f32 = (0..3).map(|k| RGB_FROM_HED[r][k] * inv[k][c]).sum();
                assert!((v - if r == c { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn augmentation_is_seeded() {
        let img = RgbImage::from_fn(20, 20, |x, y| Rgb([x as u8 * 10, y as u8 * 10, 128]));
        let aug = Augment {
            d4: true,
            hed: 0.05,
            scale: 0.2,
        };
        assert!(aug.apply(&img, 42) == aug.apply(&img, 42));
    }

    #[test]
    fn a_zoom_too_small_to_draw_is_no_zoom() {
        let img = RgbImage::from_fn(8, 8, |x, y| Rgb([x as u8, y as u8, 0]));
        let aug = Augment {
            d4: false,
            hed: 0.0,
            scale: 1e-9,
        };
        assert!(aug.apply(&img, 1) == img);
    }
}
