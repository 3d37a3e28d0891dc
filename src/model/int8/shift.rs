//! The part of a convolution that an image's channel means explain, computed in f32 and
//! added to the bias. In: a group of images' activations (channels last) and the
//! layer's f32 weights. Out: for each image, the activations the GEMM quantises and a
//! bias shift per output channel.
//!
//! Why: quantising weights moves each output by `Σ (w - ŵ)·x`. Its zero-mean part
//! averages out over the reduction, but `Σ (w - ŵ)·mean(x)` does not: it shifts every
//! pixel of a channel the same way, and through MobileNetV2's linear bottlenecks, whose
//! channels sit far from zero (means of ±5 against spreads of 0.2), such shifts
//! decided the class of 2.3% of PCam patches. Adding `Σ_c (w - ŵ)_c · mean_c` back per
//! image removes them ("bias correction", Nagel et al. 2019, with the image's own means
//! rather than calibration statistics, so results still depend on the image alone).
//!
//! Only 1 × 1 layers take it (a padded kernel's border taps see zeros, not the means).
//! Where the input is a linear bottleneck, the layer also *centres* it: the GEMM
//! quantises `x - mean`, whose range is a fraction of `x`'s, and `Σ w·mean` joins the
//! bias. Measured on `models/pcam-mobilenetv2` (PCam valid, 2,907 patches), int8's class
//! agreement with f32 went from 97.73% (neither) to 99.52% (both).
//!
//! The shift sums its channels in a fixed order (no reduction is reassociated), so it
//! has the same bits on every machine.

use super::pack::PackedWeights;
use super::quant::Centre;
use super::{Act, Isa};

/// A layer's mean correction.
pub struct MeanShift {
    /// Whether the GEMM sees the input centred on its channel means.
    centre: bool,
    /// For each input channel, what a unit mean adds to each output, laid out
    /// `[n / BLOCK][c_in][BLOCK]` (the last block padded with zeros) so that a block of
    /// outputs reads its weights in one run. Read as `(c_in, n)` rows, a block's column
    /// strode kilobytes from channel to channel, and waited on memory for each.
    w: Vec<f32>,
    c_in: usize,
    n: usize,
}

impl MeanShift {
    /// For a 1 × 1 convolution from its f32 weights `w`, laid out `[n][k]` as
    /// [`PackedWeights::new`] took them (`k`: the `c_in` channels, then padding).
    pub fn new(w: &[f32], packed: &PackedWeights, c_in: usize, centre: bool) -> Self {
        let (n, k) = (packed.n, w.len() / packed.n);
        let mut shift = vec![0f32; n.div_ceil(BLOCK) * c_in * BLOCK];
        for o in 0..n {
            for (c, &v) in w[o * k..][..c_in].iter().enumerate() {
                shift[((o / BLOCK) * c_in + c) * BLOCK + o % BLOCK] = if centre {
                    v
                } else {
                    v - packed.dequantised(o, c)
                };
            }
        }
        Self {
            centre,
            w: shift,
            c_in,
            n,
        }
    }

    /// For each image of a group: the input the GEMM quantises, and the shift to add to
    /// each output channel.
    pub fn apply<'a>(&self, isa: Isa, xs: &'a [Act]) -> Vec<Shifted<'a>> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512 (checked in the guard).
            Isa::Avx512Vnni if isa.available() => unsafe { avx512(self, xs) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (checked in the guard).
            _ if isa.avx2() => unsafe { avx2(self, xs) },
            _ => self.run::<4>(xs),
        }
    }

    /// [`Self::apply`] with `N` outputs per vector. Each shift is a product of the
    /// weights with the image's means, summed over the channels in order from zero, so
    /// the bits depend neither on `N` nor on the group.
    #[inline(always)]
    fn run<'a, const N: usize>(&self, xs: &'a [Act]) -> Vec<Shifted<'a>> {
        let means: Vec<Vec<f32>> = xs.iter().map(Act::channel_means).collect();
        let mut shifts = vec![vec![0f32; self.n]; xs.len()];
        // The means of 8, 4, 2 or 1 images at a time: each weight row is read once for
        // them (late layers hold 10⁵–10⁶ weights against a few pixels per image), and
        // their sums stay in registers across the channels.
        let mut done = 0;
        for g in [8, 4, 2, 1] {
            while means.len() - done >= g {
                let (ms, ss) = (&means[done..done + g], &mut shifts[done..done + g]);
                match g {
                    8 => self.images::<N, 8>(ms, ss),
                    4 => self.images::<N, 4>(ms, ss),
                    2 => self.images::<N, 2>(ms, ss),
                    _ => self.images::<N, 1>(ms, ss),
                }
                done += g;
            }
        }
        xs.iter()
            .zip(means)
            .zip(shifts)
            .map(|((x, means), shift)| {
                debug_assert_eq!(x.c, self.c_in);
                let centre = self.centre.then(|| {
                    let (lo, hi) = centred_range(x, &means);
                    Centre { means, lo, hi }
                });
                (x, centre, shift)
            })
            .collect()
    }

    /// The shifts of `G` images.
    #[inline(always)]
    fn images<const N: usize, const G: usize>(&self, means: &[Vec<f32>], shifts: &mut [Vec<f32>]) {
        let ms: [&[f32]; G] = std::array::from_fn(|g| means[g].as_slice());
        for o0 in (0..self.n).step_by(N) {
            self.block::<N, G>(&ms, shifts, o0);
        }
    }

    /// Outputs `o0..o0 + N` of the shifts of `G` images (`N` divides [`BLOCK`], so
    /// they lie in one block; those past `n` read the block's zero padding and are
    /// dropped).
    #[inline(always)]
    fn block<const N: usize, const G: usize>(
        &self,
        ms: &[&[f32]; G],
        shifts: &mut [Vec<f32>],
        o0: usize,
    ) {
        let block = &self.w[(o0 / BLOCK) * self.c_in * BLOCK..][..self.c_in * BLOCK];
        let mut acc = [[0f32; N]; G];
        for (c, row) in block.chunks_exact(BLOCK).enumerate() {
            let row: &[f32; N] = row[o0 % BLOCK..][..N].try_into().unwrap();
            for g in 0..G {
                let m = ms[g][c];
                for l in 0..N {
                    acc[g][l] += row[l] * m;
                }
            }
        }
        let valid = N.min(self.n - o0);
        for (s, a) in shifts.iter_mut().zip(&acc) {
            s[o0..o0 + valid].copy_from_slice(&a[..valid]);
        }
    }
}

/// An image of a group as a layer quantises it: the image, the means to centre it on
/// where the layer centres, and the shift to add to each output channel.
pub type Shifted<'a> = (&'a Act, Option<Centre>, Vec<f32>);

/// The smallest and largest of `x - means` (each with 0): each channel's extremes less
/// its mean, since subtracting one value keeps the order of a channel's values (as
/// rounded, too), so the range is the one a centred copy would have.
#[inline(always)]
fn centred_range(x: &Act, means: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (vec![f32::INFINITY; x.c], vec![f32::NEG_INFINITY; x.c]);
    for px in x.data.chunks_exact(x.c) {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(px) {
            *l = if v < *l { v } else { *l };
            *h = if v > *h { v } else { *h };
        }
    }
    (lo.iter().zip(&hi).zip(means)).fold((0f32, 0f32), |(a, b), ((l, h), m)| {
        (a.min(l - m), b.max(h - m))
    })
}

/// Outputs per block of the weights' layout: the widest vector's.
const BLOCK: usize = 16;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<'a>(shift: &MeanShift, xs: &'a [Act]) -> Vec<Shifted<'a>> {
    shift.run::<8>(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn avx512<'a>(shift: &MeanShift, xs: &'a [Act]) -> Vec<Shifted<'a>> {
    shift.run::<16>(xs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(c: usize, offset: f32) -> Act {
        let data = (0..4 * 4 * c)
            .map(|i| offset + ((i * 7919) % 13) as f32 / 13.0)
            .collect();
        Act {
            h: 4,
            w: 4,
            c,
            data,
        }
    }

    #[test]
    fn centring_moves_the_means_into_the_shift() {
        let (n, c) = (3, 5);
        let w: Vec<f32> = (0..n * c).map(|i| i as f32 / 10.0 - 0.7).collect();
        let packed = PackedWeights::new(&w, n, c);
        let shift = MeanShift::new(&w, &packed, c, true);
        let x = image(c, 4.0);
        let mut applied = shift.apply(Isa::Portable, std::slice::from_ref(&x));
        let (_, centre, s) = applied.remove(0);
        let centre = centre.expect("the layer centres its input");
        let centred: Vec<f32> = (x.data.chunks(c))
            .flat_map(|px| px.iter().zip(&centre.means).map(|(v, m)| v - m))
            .collect();
        let lo = centred.iter().fold(0f32, |a, &v| a.min(v));
        let hi = centred.iter().fold(0f32, |a, &v| a.max(v));
        assert_eq!((centre.lo, centre.hi), (lo, hi));
        // Each output pixel is unchanged: Σ w·(x - mean) + Σ w·mean = Σ w·x.
        for (px, cx) in x.data.chunks(c).zip(centred.chunks(c)) {
            for o in 0..n {
                let row = &w[o * c..][..c];
                let direct: f32 = row.iter().zip(px).map(|(w, v)| w * v).sum();
                let split: f32 = row.iter().zip(cx).map(|(w, v)| w * v).sum::<f32>() + s[o];
                assert!((direct - split).abs() < 1e-4, "{direct} vs {split}");
            }
        }
        assert!(centred.iter().all(|v| v.abs() < 1.0));
    }

    #[test]
    fn correction_is_the_quantisation_error_at_the_mean() {
        let (n, c) = (2, 3);
        let w = [0.5, -0.333, 0.0101, 1.0, 0.2, -0.77];
        let packed = PackedWeights::new(&w, n, c);
        let shift = MeanShift::new(&w, &packed, c, false);
        let x = image(c, 2.0);
        let mut applied = shift.apply(Isa::Portable, std::slice::from_ref(&x));
        let (_, centre, s) = applied.remove(0);
        assert!(centre.is_none());
        let mean: Vec<f32> = (0..c)
            .map(|ch| x.data.iter().skip(ch).step_by(c).sum::<f32>() / 16.0)
            .collect();
        for o in 0..n {
            let want: f32 = (0..c)
                .map(|i| (w[o * c + i] - packed.dequantised(o, i)) * mean[i])
                .sum();
            assert!((s[o] - want).abs() < 1e-6);
        }
    }
}
