//! Activations to the GEMMs' 7-bit input. In: one image's f32 activations, channels
//! last. Out: the image quantised with a scale from its own range (zero point 0 when no
//! value is negative, as after a ReLU, so that every level serves the values there are;
//! else the middle), bordered at the zero point.
//! The AVX2 path computes the same bytes as the portable one (a multiply, then an add,
//! then truncation), 32 values at a time.

use super::gemm::{Quant, AMAX};
use super::Act;
use super::Isa;

/// `x` quantised, with a border of `pad` pixels and `extra` more rows and columns at
/// the bottom and right.
pub fn quantize(isa: Isa, x: &Act, pad: usize, extra: usize) -> (Vec<u8>, Quant) {
    let (lo, hi) = range(isa, &x.data);
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
    for (y, src) in x.data.chunks(x.w * x.c).enumerate() {
        let row = &mut q[((y + pad) * wp + pad) * x.c..][..x.w * x.c];
        convert(isa, src, inv, offset, row);
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

/// `dst[i] = (src[i] · inv + offset) as u8` for every `src` value.
fn convert(isa: Isa, src: &[f32], inv: f32, offset: f32, dst: &mut [u8]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (checked in the guard).
        _ if isa.avx2() => unsafe { avx2::convert(src, inv, offset, dst) },
        _ => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, &v)| *d = (v * inv + offset) as u8),
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
    pub(super) unsafe fn convert(src: &[f32], inv: f32, offset: f32, dst: &mut [u8]) {
        assert!(dst.len() >= src.len());
        let (vinv, voff) = (_mm256_set1_ps(inv), _mm256_set1_ps(offset));
        let q = |p: *const f32| {
            let v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(p), vinv), voff);
            _mm256_cvttps_epi32(v)
        };
        let mut i = 0;
        while i + 32 <= src.len() {
            let p = src.as_ptr().add(i);
            let ab = _mm256_packs_epi32(q(p), q(p.add(8)));
            let cd = _mm256_packs_epi32(q(p.add(16)), q(p.add(24)));
            // The packs interleave 128-bit lanes: 0 2 4 6 1 3 5 7 (groups of 4 values).
            let bytes = _mm256_packus_epi16(ab, cd);
            let ordered =
                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, ordered);
            i += 32;
        }
        for (d, &v) in dst[i..].iter_mut().zip(&src[i..]) {
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
            let (a, qa) = quantize(Isa::Portable, &x, 1, 1);
            let (b, qb) = quantize(Isa::Avx2, &x, 1, 1);
            assert_eq!(a, b, "{h}×{w}×{c}");
            assert_eq!((qa.scale, qa.zero), (qb.scale, qb.zero));
        }
    }
}
