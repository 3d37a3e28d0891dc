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
//! The portable and AVX2 paths are the same loop compiled for two targets; Rust never
//! fuses a multiply and an add, so they give the same bits.

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
            // SAFETY: the CPU has AVX2 (checked in the guard).
            _ if isa.avx2() => unsafe { avx2(self, x) },
            _ => self.run(x),
        }
    }

    #[inline(always)]
    fn run(&self, x: &Act) -> Act {
        let (k, s, p, c) = (self.kernel, self.stride, self.pad, x.c);
        let oh = (x.h + 2 * p - k) / s + 1;
        let ow = (x.w + 2 * p - k) / s + 1;
        let mut data = vec![0f32; oh * ow * c];
        for (o, out) in data.chunks_exact_mut(c).enumerate() {
            let (oy, ox) = (o / ow, o % ow);
            out.copy_from_slice(&self.bias);
            for ky in 0..k {
                let iy = (oy * s + ky).wrapping_sub(p);
                if iy >= x.h {
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * s + kx).wrapping_sub(p);
                    if ix >= x.w {
                        continue;
                    }
                    let src = &x.data[(iy * x.w + ix) * c..][..c];
                    let tap = &self.w[(ky * k + kx) * c..][..c];
                    for ((o, &v), &w) in out.iter_mut().zip(src).zip(tap) {
                        *o += v * w;
                    }
                }
            }
            out.iter_mut().for_each(|o| *o = self.clip.apply(*o));
        }
        Act {
            h: oh,
            w: ow,
            c,
            data,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(layer: &Depthwise, x: &Act) -> Act {
    layer.run(x)
}
