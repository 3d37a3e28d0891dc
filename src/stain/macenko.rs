//! Macenko's stain estimate and the per-pixel map it gives. In: RGB pixels. Out:
//! [`Stains`] (the H and E optical-density vectors and their concentrations' 99th
//! percentiles), and a [`Map`] from a source's stains to a target's.
//!
//! As TIAToolbox's `MacenkoExtractor` and `MacenkoNormalizer`: tissue is where a
//! 2–98 %-stretched copy of the pixels has 8-bit LAB lightness below 0.8; the plane of
//! the two main eigenvectors of the tissue's OD covariance holds the stains, found at
//! the 1st and 99th percentiles of the angle; concentrations are least squares over
//! every pixel. Percentiles make the estimate robust to a few pen or fold pixels.

use serde::{Deserialize, Serialize};

use super::{lab, percentile, StainError};

/// Fewer tissue pixels than this, or than 5 % of the pixels, give no estimate.
pub const MIN_TISSUE_PIXELS: usize = 500;
/// A pixel whose optical densities sum to this is stained, not glass (Macenko's 0.15
/// per channel, summed).
const STAINED_OD: f32 = 0.45;
const LUMINOSITY_THRESHOLD: u8 = 204; // 0.8 of 255: L8 / 255 < 0.8
const ANGULAR_PERCENTILE: f64 = 99.0;
const MAX_CONCENTRATION_PERCENTILE: f64 = 99.0;
/// H and E closer than this (cosine of the angle between them) are one colour, not two
/// stains: about 4.4 degrees.
const MAX_STAIN_COSINE: f32 = 0.997;
/// Least green component of an H or E unit OD vector (published H&E vectors have 0.7
/// and 0.99; DAPI's blue fluorescence on black has about 0).
const MIN_GREEN: f32 = 0.3;

/// A source's or a target's stains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stains {
    /// Rows H and E: unit optical-density vectors over (R, G, B).
    pub stain_matrix: [[f32; 3]; 2],
    /// The 99th percentile of each stain's concentration (H, E).
    pub max_concentrations: [f32; 2],
}

/// Optical density of every byte: `-ln(max(v, 1) / 255)`, at least 1e-6.
fn od_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|v| {
            let od = -(f64::from(v.max(1) as u8) / 255.0).ln();
            od.max(1e-6) as f32
        })
    })
}

fn od(px: [u8; 3]) -> [f32; 3] {
    let t = od_table();
    px.map(|v| t[v as usize])
}

impl Stains {
    /// Estimates the stains of `pixels` (every pixel of a source, pooled).
    pub fn estimate(pixels: &[[u8; 3]]) -> Result<Self, StainError> {
        // The stretched mask below finds "tissue" in any image, glass included: count
        // what is tissue as read first.
        let stained = pixels
            .iter()
            .filter(|&&p| od(p).iter().sum::<f32>() >= STAINED_OD)
            .count();
        let needed = MIN_TISSUE_PIXELS.max(pixels.len() / 20);
        if stained < needed {
            return Err(StainError::TooLittleTissue {
                found: stained,
                needed,
            });
        }
        let tissue = tissue_od(pixels);
        if tissue.len() < MIN_TISSUE_PIXELS {
            return Err(StainError::TooLittleTissue {
                found: tissue.len(),
                needed: MIN_TISSUE_PIXELS,
            });
        }
        let plane = principal_plane(&tissue);
        let mut phi: Vec<f32> = tissue
            .iter()
            .map(|o| dot(o, &plane[1]).atan2(dot(o, &plane[0])))
            .collect();
        let min_phi = percentile(&mut phi, 100.0 - ANGULAR_PERCENTILE);
        let max_phi = percentile(&mut phi, ANGULAR_PERCENTILE);
        let at = |a: f32| -> [f32; 3] {
            std::array::from_fn(|c| plane[0][c] * a.cos() + plane[1][c] * a.sin())
        };
        let (v1, v2) = (at(min_phi), at(max_phi));
        // Haematoxylin absorbs more red than eosin does.
        let [h, e] = if v1[0] > v2[0] { [v1, v2] } else { [v2, v1] }.map(unit);
        if !plausible_he(&h, &e) {
            return Err(StainError::NotHe { h, e });
        }
        let stain_matrix = [h, e];
        let unmix = Unmix::new(&stain_matrix);
        let (mut ch, mut ce): (Vec<f32>, Vec<f32>) =
            pixels.iter().map(|&p| unmix.concentrations(od(p))).unzip();
        let max_concentrations = [
            percentile(&mut ch, MAX_CONCENTRATION_PERCENTILE),
            percentile(&mut ce, MAX_CONCENTRATION_PERCENTILE),
        ];
        if max_concentrations.iter().any(|&c| c.is_nan() || c <= 1e-6) {
            return Err(StainError::NotHe { h, e });
        }
        Ok(Self {
            stain_matrix,
            max_concentrations,
        })
    }
}

/// The optical densities of the tissue pixels: those whose lightness, after a 2–98 %
/// contrast stretch of all channel values, is below the threshold.
fn tissue_od(pixels: &[[u8; 3]]) -> Vec<[f32; 3]> {
    let mut hist = [0u64; 256];
    for p in pixels {
        for &v in p {
            hist[v as usize] += 1;
        }
    }
    let (mut lo, mut hi) = (byte_percentile(&hist, 2.0), byte_percentile(&hist, 98.0));
    if lo >= hi {
        lo = hist.iter().position(|&n| n > 0).unwrap_or(0) as f64;
        hi = hist.iter().rposition(|&n| n > 0).unwrap_or(255) as f64;
    }
    let stretch: [u8; 256] = std::array::from_fn(|v| {
        if hi > lo {
            ((v as f64).clamp(lo, hi) - lo) / (hi - lo) * 255.0
        } else {
            v as f64
        }
        .clamp(0.0, 255.0) as u8
    });
    pixels
        .iter()
        .filter(|p| lab::lightness8(p.map(|v| stretch[v as usize])) < LUMINOSITY_THRESHOLD)
        .map(|&p| od(p))
        .collect()
}

/// numpy's linear percentile of the byte values a histogram counts.
fn byte_percentile(hist: &[u64; 256], q: f64) -> f64 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let pos = q / 100.0 * (n - 1) as f64;
    let rank = |r: u64| -> f64 {
        let mut seen = 0;
        for (v, &c) in hist.iter().enumerate() {
            seen += c;
            if seen > r {
                return v as f64;
            }
        }
        255.0
    };
    let lo = pos.floor() as u64;
    let below = rank(lo);
    below + (rank((lo + 1).min(n - 1)) - below) * (pos - lo as f64)
}

/// The two main eigenvectors of the covariance of `od`, largest first, each turned so
/// that its red component is not negative.
fn principal_plane(od: &[[f32; 3]]) -> [[f32; 3]; 2] {
    let n = od.len() as f64;
    let mut mean = [0f64; 3];
    for o in od {
        for c in 0..3 {
            mean[c] += f64::from(o[c]);
        }
    }
    mean = mean.map(|m| m / n);
    let mut cov = [[0f64; 3]; 3];
    for o in od {
        let d: [f64; 3] = std::array::from_fn(|c| f64::from(o[c]) - mean[c]);
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += d[i] * d[j];
            }
        }
    }
    let (values, vectors) = symmetric_eigen(cov);
    let mut order = [0, 1, 2];
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    [order[0], order[1]].map(|k| {
        let sign = if vectors[0][k] < 0.0 { -1.0 } else { 1.0 };
        std::array::from_fn(|c| (sign * vectors[c][k]) as f32)
    })
}

/// Eigenvalues and eigenvectors (as columns) of a symmetric 3 × 3 matrix, by cyclic
/// Jacobi rotations.
fn symmetric_eigen(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..50 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        let scale = a[0][0].powi(2) + a[1][1].powi(2) + a[2][2].powi(2);
        if off <= 1e-30 * scale.max(1e-300) {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            // signum(0) is 1: a rotation by 45 degrees.
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // a = Jᵀ a J, v = v J.
            rotate_columns(&mut a, p, q, c, s);
            let (rp, rq) = (a[p], a[q]);
            a[p] = std::array::from_fn(|k| c * rp[k] - s * rq[k]);
            a[q] = std::array::from_fn(|k| s * rp[k] + c * rq[k]);
            rotate_columns(&mut v, p, q, c, s);
        }
    }
    ([a[0][0], a[1][1], a[2][2]], v)
}

/// Whether two unit OD vectors can be haematoxylin and eosin: two colours, not one;
/// no channel made brighter; both absorbing green strongly (eosin most of all). A
/// fluorescence scan, or a slide of one stain, fails.
fn plausible_he(h: &[f32; 3], e: &[f32; 3]) -> bool {
    dot(h, e) <= MAX_STAIN_COSINE
        && h.iter().chain(e).all(|&v| v >= -0.1)
        && h[1] >= MIN_GREEN
        && e[1] >= MIN_GREEN
}

fn rotate_columns(m: &mut [[f64; 3]; 3], p: usize, q: usize, c: f64, s: f64) {
    for row in m {
        let (x, y) = (row[p], row[q]);
        row[p] = c * x - s * y;
        row[q] = s * x + c * y;
    }
}

fn dot(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn unit(v: [f32; 3]) -> [f32; 3] {
    let n = dot(&v, &v).sqrt();
    v.map(|x| x / n)
}

/// Least-squares concentrations of two stains: `(S Sᵀ)⁻¹ S · od` for the 2 × 3 stain
/// matrix `S`, as `numpy.linalg.lstsq` solves it.
struct Unmix([[f32; 3]; 2]);

impl Unmix {
    fn new(s: &[[f32; 3]; 2]) -> Self {
        let d = |a: &[f32; 3], b: &[f32; 3]| f64::from(dot(a, b));
        let (a, b, c) = (d(&s[0], &s[0]), d(&s[0], &s[1]), d(&s[1], &s[1]));
        let det = a * c - b * b;
        let inv = [[c / det, -b / det], [-b / det, a / det]];
        Self(std::array::from_fn(|i| {
            std::array::from_fn(|k| {
                (inv[i][0] * f64::from(s[0][k]) + inv[i][1] * f64::from(s[1][k])) as f32
            })
        }))
    }

    fn concentrations(&self, od: [f32; 3]) -> (f32, f32) {
        (dot(&self.0[0], &od), dot(&self.0[1], &od))
    }
}

/// Optical-density steps per unit of the exponential's table.
const EXP_STEPS: f32 = 2048.0;
/// Beyond this optical density, `255 · e^(-od)` is below 1.
const EXP_MAX_OD: f32 = 5.6;

/// `⌊255 · e^(-od)⌋` at the middle of each step of [`EXP_STEPS`].
fn exp_table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let n = (EXP_MAX_OD * EXP_STEPS) as usize;
        (0..n)
            .map(|i| (255.0 * (-(i as f64 + 0.5) / f64::from(EXP_STEPS)).exp()) as u8)
            .collect()
    })
}

/// The map from one source's stains to a target's: optical density in, a 3 × 3 matrix
/// (unmix the source, rescale each stain to the target's maximum, mix with the target's
/// vectors), bytes out.
#[derive(Debug, Clone)]
pub struct Map {
    matrix: [[f32; 3]; 3],
}

impl Map {
    pub fn new(source: &Stains, target: &Stains) -> Self {
        let unmix = Unmix::new(&source.stain_matrix);
        let scale: [f32; 2] =
            std::array::from_fn(|s| target.max_concentrations[s] / source.max_concentrations[s]);
        let t = &target.stain_matrix;
        let matrix = std::array::from_fn(|out| {
            std::array::from_fn(|inp| {
                (0..2)
                    .map(|s| t[s][out] * scale[s] * unmix.0[s][inp])
                    .sum::<f32>()
            })
        });
        Self { matrix }
    }

    /// Normalises RGB bytes (`r, g, b, r, g, b, ...`) in place.
    pub fn apply(&self, px: &mut [u8]) {
        let odt = od_table();
        let expt = exp_table();
        let last = expt.len() - 1;
        let m = &self.matrix;
        for p in px.chunks_exact_mut(3) {
            let o = [odt[p[0] as usize], odt[p[1] as usize], odt[p[2] as usize]];
            for c in 0..3 {
                let v = m[c][0] * o[0] + m[c][1] * o[1] + m[c][2] * o[2];
                p[c] = if v <= 0.0 {
                    255
                } else {
                    // The cast saturates, and the table's last entry is 0.
                    expt[((v * EXP_STEPS) as usize).min(last)]
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_the_eigenvectors_of_a_symmetric_matrix() {
        let a = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 1.0]];
        let (values, v) = symmetric_eigen(a);
        for k in 0..3 {
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| a[i][j] * v[j][k]).sum();
                assert!((av - values[k] * v[i][k]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn a_source_mapped_to_its_own_stains_keeps_its_pixels() {
        let s = Stains {
            stain_matrix: [unit([0.65, 0.70, 0.29]), unit([0.07, 0.99, 0.11])],
            max_concentrations: [1.9, 1.0],
        };
        // Pixels of pure H&E: optical densities in the plane of the two stains.
        let before: Vec<u8> = (0..20)
            .flat_map(|h| (0..20).map(move |e| (h as f32 * 0.1, e as f32 * 0.1)))
            .flat_map(|(h, e)| {
                let [sh, se] = s.stain_matrix;
                (0..3).map(move |c| (255.0 * (-(h * sh[c] + e * se[c])).exp()).round() as u8)
            })
            .collect();
        let mut after = before.clone();
        Map::new(&s, &s).apply(&mut after);
        // ⌊255 e^(-od)⌋ truncates, as TIAToolbox's cast does; rounding the pixels above
        // moved them off the plane by up to half a byte.
        for (a, b) in after.iter().zip(&before) {
            assert!(a.abs_diff(*b) <= 2, "{b} -> {a}");
        }
    }

    #[test]
    fn white_glass_gives_no_estimate() {
        let glass = vec![[250u8, 250, 250]; 10_000];
        assert!(matches!(
            Stains::estimate(&glass),
            Err(StainError::TooLittleTissue { .. }) | Err(StainError::NotHe { .. })
        ));
    }
}
