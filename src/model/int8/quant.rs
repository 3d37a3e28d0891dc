//! Activations to the GEMMs' 7-bit input. In: one image's f32 activations, channels
//! last. Out: the image quantised with a scale from its own range (zero point 0 when no
//! value is negative, as after a ReLU, so that every level serves the values there are;
//! else the middle), bordered at the zero point.
//! The AVX2 path computes the same bytes as the portable one (a multiply, then an add,
//! then truncation), 32 values at a time.

use super::gemm::{Quant, AMAX};
use super::Act;
use super::Isa;

/// A linear bottleneck's channel means, which the image is quantised centred on
/// ([`super::shift`]), and the smallest and largest centred values (each with 0).
/// Subtracting as it quantises spares a centred copy of the image and a pass over it;
/// `(v - mean) · inv + offset` gives the bytes the copy gave.
pub struct Centre {
    pub means: Vec<f32>,
    pub lo: f32,
    pub hi: f32,
}

/// `x` quantised (centred on `centre`'s means, if any), with a border of `pad` pixels
/// and `extra` more rows and columns at the bottom and right.
pub fn quantize(
    isa: Isa,
    x: &Act,
    centre: Option<&Centre>,
    pad: usize,
    extra: usize,
) -> (Vec<u8>, Quant) {
    let (lo, hi) = match centre {
        Some(c) => (c.lo, c.hi),
        None => range(isa, &x.data),
    };
    let half = AMAX / 2 + 1;
    let (levels, zero) = if lo < 0.0 {
        (f32::from(AMAX - half), half)
    } else {
        (f32::from(AMAX), 0)
    };
    let range = hi.max(-lo);
    let scale = if range > 0.0 { range / levels } else { 1.0 };
    let inv = 1.0 / scale;
    // `v · inv + offset` lies in [0.5, AMAX + 0.5], so truncation rounds to nearest.
    let offset = f32::from(zero) + 0.5;
    let wp = x.w + 2 * pad + extra;
    let mut q = vec![zero; (x.h + 2 * pad + extra) * wp * x.c];
    // The means for a row's every value.
    let means: Option<Vec<f32>> =
        centre.map(|c| c.means.iter().cycle().take(x.w * x.c).copied().collect());
    for (y, src) in x.data.chunks(x.w * x.c).enumerate() {
        let row = &mut q[((y + pad) * wp + pad) * x.c..][..x.w * x.c];
        convert(isa, src, means.as_deref(), inv, offset, row);
    }
    (q, Quant { scale, zero })
}

/// The smallest value and 0, and the largest value and 0.
fn range(isa: Isa, data: &[f32]) -> (f32, f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (checked in the guard).
        _ if isa.avx2() => unsafe { avx2::range(data) },
        _ => data
            .iter()
            .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v))),
    }
}

/// `dst[i] = ((src[i] - means[i]) · inv + offset) as u8` for every `src` value (no
/// subtraction without `means`).
fn convert(isa: Isa, src: &[f32], means: Option<&[f32]>, inv: f32, offset: f32, dst: &mut [u8]) {
    match (isa, means) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (checked in the guard).
        _ if isa.avx2() => unsafe { avx2::convert(src, means, inv, offset, dst) },
        (_, None) => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, &v)| *d = (v * inv + offset) as u8),
        (_, Some(m)) => dst
            .iter_mut()
            .zip(src.iter().zip(m))
            .for_each(|(d, (&v, &m))| *d = ((v - m) * inv + offset) as u8),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn range(data: &[f32]) -> (f32, f32) {
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
        let chunks = data.chunks_exact(32);
        let tail = chunks.remainder();
        for chunk in chunks {
            for i in 0..4 {
                let v = _mm256_loadu_ps(chunk.as_ptr().add(8 * i));
                lo[i] = _mm256_min_ps(lo[i], v);
                hi[i] = _mm256_max_ps(hi[i], v);
            }
        }
        let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(
            l.as_mut_ptr(),
            _mm256_min_ps(_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3])),
        );
        _mm256_storeu_ps(
            h.as_mut_ptr(),
            _mm256_max_ps(_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3])),
        );
        let lo = l.iter().chain(tail).fold(0f32, |m, &v| m.min(v));
        let hi = h.iter().chain(tail).fold(0f32, |m, &v| m.max(v));
        (lo, hi)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn convert(
        src: &[f32],
        means: Option<&[f32]>,
        inv: f32,
        offset: f32,
        dst: &mut [u8],
    ) {
        assert!(dst.len() >= src.len());
        assert!(means.is_none_or(|m| m.len() >= src.len()));
        let (vinv, voff) = (_mm256_set1_ps(inv), _mm256_set1_ps(offset));
        let q = |i: usize| {
            let mut v = _mm256_loadu_ps(src.as_ptr().add(i));
            if let Some(m) = means {
                v = _mm256_sub_ps(v, _mm256_loadu_ps(m.as_ptr().add(i)));
            }
            _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, vinv), voff))
        };
        let mut i = 0;
        while i + 32 <= src.len() {
            let ab = _mm256_packs_epi32(q(i), q(i + 8));
            let cd = _mm256_packs_epi32(q(i + 16), q(i + 24));
            // The packs interleave 128-bit lanes: 0 2 4 6 1 3 5 7 (groups of 4 values).
            let bytes = _mm256_packus_epi16(ab, cd);
            let ordered =
                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, ordered);
            i += 32;
        }
        for (j, (d, &v)) in dst[i..].iter_mut().zip(&src[i..]).enumerate() {
            let v = means.map_or(v, |m| v - m[i + j]);
            *d = (v * inv + offset) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn avx2_quantises_exactly_as_the_portable_path() {
        if !Isa::Avx2.available() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Channel counts below, at and above one vector; with and without negatives.
        for (h, w, c, lo) in [
            (5, 7, 3, -1.0),
            (4, 4, 64, 0.0),
            (3, 5, 36, -2.0),
            (1, 1, 1, 0.0),
        ] {
            let data = (0..h * w * c).map(|_| rng.random_range(lo..3.0)).collect();
            let x = Act { h, w, c, data };
            let (a, qa) = quantize(Isa::Portable, &x, None, 1, 1);
            let (b, qb) = quantize(Isa::Avx2, &x, None, 1, 1);
            assert_eq!(a, b, "{h}×{w}×{c}");
            assert_eq!((qa.scale, qa.zero), (qb.scale, qb.zero));
            // Centred as it quantises: the bytes of quantising a centred copy.
            let means: Vec<f32> = (0..c).map(|i| i as f32 / c as f32 - 0.3).collect();
            let copy = Act {
                data: (x.data.chunks(c))
                    .flat_map(|px| px.iter().zip(&means).map(|(v, m)| v - m))
                    .collect(),
                ..x.clone()
            };
            let (lo, hi) = range(Isa::Portable, &copy.data);
            let centre = Centre { means, lo, hi };
            let (want, _) = quantize(Isa::Portable, &copy, None, 1, 1);
            for isa in [Isa::Portable, Isa::Avx2] {
                assert_eq!(
                    quantize(isa, &x, Some(&centre), 1, 1).0,
                    want,
                    "{h}×{w}×{c} {isa:?}"
                );
            }
        }
    }
}
