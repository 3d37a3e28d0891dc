//! The depthwise layers of an int8 network, run in f32. In: one image's activations,
//! channels last. Out: the layer's output (BatchNorm folded, activation applied),
//! channels last.
//!
//! Why f32: a depthwise layer does 9 multiply-adds per output value (together 7 % of
//! MobileNetV2's at 96 px), and reads each input value 9 times from cache; quantising
//! its input would cost as much as the products and add an error where MobileNet is
//! known to be most sensitive (one filter per channel, no sum over channels to average
//! it out).
//! Channels last, each tap is one multiply-add along a pixel's channels, so the loop
//! vectorises over channels.
//!
//! Not [`crate::model::depthwise`], the training kernel: it works on planes (n, c, h,
//! w), and the int8 network keeps its activations channels last between layers.
//!
//! The portable, AVX2 and AVX-512 paths are the same loop compiled for three targets;
//! Rust never fuses a multiply and an add, so they give the same bits.

use std::mem::MaybeUninit;

use super::gemm::Clip;
use super::{Act, Fused, Isa};
use crate::error::Result;
use crate::model::layers::ConvBn;

/// A depthwise convolution with its folded BatchNorm and activation.
pub struct Depthwise {
    /// (ky, kx, c): each tap's weights over the channels.
    w: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    pad: usize,
    clip: Clip,
}

impl Depthwise {
    pub fn new(layer: &ConvBn) -> Result<Self> {
        let Fused {
            w,
            bias,
            stride,
            pad,
            act,
        } = Fused::of(layer)?;
        let k = w.dim(2)?;
        let w = w.permute((2, 3, 1, 0))?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            w,
            bias,
            kernel: k,
            stride,
            pad,
            clip: Clip::of(act),
        })
    }

    pub fn forward(&self, isa: Isa, x: &Act) -> Act {
        assert_eq!(x.c, self.bias.len(), "one filter per channel");
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512 (checked in the guard).
            Isa::Avx512Vnni if isa.available() => unsafe { avx512(self, x) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (checked in the guard).
            _ if isa.avx2() => unsafe { avx2(self, x) },
            _ => self.run(x),
        }
    }

    /// Each output pixel's channels in blocks of [`WIDE`], then [`LANES`], then one, a
    /// block's sums held in registers across the taps and stored once (summing in
    /// memory tap by tap cost a load and a store per multiply-add). Every channel still
    /// sums its taps in the same order from its bias, so the blocking changes no bit.
    #[inline(always)]
    fn run(&self, x: &Act) -> Act {
        let (k, s, p, c) = (self.kernel, self.stride, self.pad, x.c);
        let oh = (x.h + 2 * p - k) / s + 1;
        let ow = (x.w + 2 * p - k) / s + 1;
        let mut data = Vec::with_capacity(oh * ow * c);
        let mut taps = Vec::with_capacity(k * k);
        for (o, out) in data.spare_capacity_mut()[..oh * ow * c]
            .chunks_exact_mut(c)
            .enumerate()
        {
            let (oy, ox) = (o / ow, o % ow);
            // (input offset, weight offset) of the taps inside the image, in order.
            taps.clear();
            for ky in 0..k {
                let iy = (oy * s + ky).wrapping_sub(p);
                for kx in 0..k {
                    let ix = (ox * s + kx).wrapping_sub(p);
                    if iy < x.h && ix < x.w {
                        taps.push(((iy * x.w + ix) * c, (ky * k + kx) * c));
                    }
                }
            }
            let mut c0 = 0;
            while c0 + WIDE <= c {
                self.block::<WIDE>(x, &taps, c0, out);
                c0 += WIDE;
            }
            while c0 + LANES <= c {
                self.block::<LANES>(x, &taps, c0, out);
                c0 += LANES;
            }
            for c0 in c0..c {
                self.block::<1>(x, &taps, c0, out);
            }
        }
        // SAFETY: the loop wrote every pixel's every channel.
        unsafe { data.set_len(oh * ow * c) };
        Act {
            h: oh,
            w: ow,
            c,
            data,
        }
    }

    /// Channels `c0..c0 + N` of one output pixel from its `taps`.
    #[inline(always)]
    fn block<const N: usize>(
        &self,
        x: &Act,
        taps: &[(usize, usize)],
        c0: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        let mut acc: [f32; N] = self.bias[c0..c0 + N].try_into().unwrap();
        for &(xi, wi) in taps {
            // SAFETY: a tap's offsets start a pixel of `c` values in the image and in
            // the weights, and c0 + N <= c.
            let (v, w) = unsafe {
                (
                    x.data.get_unchecked(xi + c0..xi + c0 + N),
                    self.w.get_unchecked(wi + c0..wi + c0 + N),
                )
            };
            for l in 0..N {
                acc[l] += v[l] * w[l];
            }
        }
        for (o, a) in out[c0..c0 + N].iter_mut().zip(acc) {
            o.write(self.clip.apply(a));
        }
    }
}

/// Channels summed together in registers: four AVX-512 vectors, whose independent
/// sums hide the adds' latency (one vector's chain of 9 dependent adds left the
/// kernel waiting on them), then one vector for what is left.
const WIDE: usize = 64;
const LANES: usize = 16;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(layer: &Depthwise, x: &Act) -> Act {
    layer.run(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn avx512(layer: &Depthwise, x: &Act) -> Act {
    layer.run(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::Activation;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The layer's definition, one channel and tap at a time.
    fn reference(l: &Depthwise, x: &Act) -> Vec<f32> {
        let (k, s, p, c) = (l.kernel, l.stride, l.pad, x.c);
        let oh = (x.h + 2 * p - k) / s + 1;
        let ow = (x.w + 2 * p - k) / s + 1;
        let mut out = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                for ci in 0..c {
                    let mut a = l.bias[ci];
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) =
                                ((oy * s + ky).wrapping_sub(p), (ox * s + kx).wrapping_sub(p));
                            if iy < x.h && ix < x.w {
                                a += x.data[(iy * x.w + ix) * c + ci] * l.w[(ky * k + kx) * c + ci];
                            }
                        }
                    }
                    out.push(l.clip.apply(a));
                }
            }
        }
        out
    }

    #[test]
    fn every_path_gives_the_reference_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Channels in wide blocks, single blocks and single channels; 3 × 3 and 5 × 5;
        // strides 1 and 2; odd sides.
        for (c, k, s, h, w) in [
            (97, 3, 1, 7, 5),
            (20, 5, 2, 9, 6),
            (3, 3, 2, 4, 4),
            (144, 5, 1, 3, 8),
        ] {
            let layer = Depthwise {
                w: (0..k * k * c)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect(),
                bias: (0..c).map(|_| rng.random_range(-1.0..1.0)).collect(),
                kernel: k,
                stride: s,
                pad: k / 2,
                clip: Clip::of(Activation::Relu6),
            };
            let x = Act {
                h,
                w,
                c,
                data: (0..h * w * c)
                    .map(|_| rng.random_range(-3.0..3.0))
                    .collect(),
            };
            let want = reference(&layer, &x);
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                assert_eq!(
                    layer.forward(isa, &x).data,
                    want,
                    "c={c} k={k} s={s} {isa:?}"
                );
            }
        }
    }
}
