//! int8 inference on the CPU. In: a [`Network`] whose BatchNorms are fused, and batches
//! of normalised patches (n, 3, size, size) f32. Out: logits (n × classes) f32, close to
//! the f32 network's (tests bound the difference on the shipped models and real tiles).
//!
//! Each convolution quantises its input per image (7 bits, scale from the image's own
//! range: zero point 0 after a ReLU, 64 where values can be negative; [`quant`]) and
//! runs one [`gemm`] over its receptive fields, read in place (channels last), whose
//! epilogue dequantises with the per-channel weight scale, adds the bias and applies
//! the activation (ReLU or ReLU6). 1 × 1 convolutions also correct for their input's
//! channel means ([`shift`]). 3 × 3, stride-1 convolutions of 64 channels or more run
//! through [`winograd`] instead where the CPU lacks AVX-512 VNNI ([`ConvAlgo`]): 2.25×
//! fewer multiplies, the same results bit for bit.
//! MobileNet's depthwise layers ([`depthwise`]), pooling ([`pool`]), residual additions, the
//! global average and the classifier head stay f32. Scales
//! come from each image alone, so a patch's result depends neither on the thread count
//! nor on the other patches in its batch; groups of images run in parallel on the
//! global rayon pool.

mod depthwise;
mod gemm;
mod inverted;
mod pack;
mod pool;
mod quant;
mod shift;
mod winograd;

use candle_core::Tensor;
use rayon::prelude::*;

use self::gemm::{Epilogue, Quant, Rows, MR};
use self::inverted::InvertedResidual;
use self::pack::{PackedWeights, KG};
use self::shift::{MeanShift, Shifted};
use self::winograd::WinogradWeights;
use super::layers::{Activation, ConvBn};
use super::Network;
use crate::error::{Error, Result};
pub use crate::model::isa::Isa;

/// The quantisation this code computes. A model card's int8 check
/// ([`crate::model::card::Int8Check`]) holds for this scheme only: raise it whenever a
/// change moves int8's results (the bits, weights or scales), so that recorded checks
/// are measured again.
pub const SCHEME: u32 = 2;

/// How the 3×3, stride-1 convolutions run. Both give the same results bit for bit;
/// `HISTOMAP_INT8_CONV=direct|winograd` forces one, for tests and measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvAlgo {
    /// One [`gemm`] over the receptive fields.
    Direct,
    /// [`winograd`] F(2×2, 3×3) where it applies, else direct.
    Winograd,
}

impl ConvAlgo {
    /// The faster for `isa`. Winograd's i16 products do half the multiply-adds per
    /// instruction of the direct product's u8 × i8 ones; with AVX2 the 2.25× fewer
    /// multiplies still win, but AVX-512 VNNI's 512-bit `vpdpbusd` makes the direct
    /// product faster (ResNet-18 150 px: 301–336 images/s direct, 227–245 Winograd).
    pub fn detect(isa: Isa) -> ConvAlgo {
        match std::env::var("HISTOMAP_INT8_CONV").as_deref() {
            Ok("direct") => ConvAlgo::Direct,
            Ok("winograd") => ConvAlgo::Winograd,
            _ if isa == Isa::Avx512Vnni => ConvAlgo::Direct,
            _ => ConvAlgo::Winograd,
        }
    }
}

/// Most images one thread takes through the network together.
const GROUP: usize = 8;

/// One image's activations, channels last.
#[derive(Clone)]
struct Act {
    h: usize,
    w: usize,
    c: usize,
    data: Vec<f32>,
}

impl Act {
    /// The mean of each channel over the image, its pixels summed in order (in blocks
    /// of channels held in registers: summing into memory cost a load and a store per
    /// add).
    #[inline(always)]
    fn channel_means(&self) -> Vec<f32> {
        const N: usize = 32;
        let c = self.c;
        let mut mean = vec![0f32; c];
        let mut c0 = 0;
        while c0 + N <= c {
            let mut acc = [0f32; N];
            for px in self.data.chunks_exact(c) {
                let v: &[f32; N] = px[c0..c0 + N].try_into().unwrap();
                acc.iter_mut().zip(v).for_each(|(a, v)| *a += v);
            }
            mean[c0..c0 + N].copy_from_slice(&acc);
            c0 += N;
        }
        for px in self.data.chunks_exact(c) {
            mean[c0..]
                .iter_mut()
                .zip(&px[c0..])
                .for_each(|(m, v)| *m += v);
        }
        let pixels = (self.h * self.w) as f32;
        mean.iter_mut().for_each(|m| *m /= pixels);
        mean
    }
}

/// A convolution with its BatchNorm folded in, as the int8 layers take it.
struct Fused<'a> {
    /// (c_out, c_in / groups, k, k).
    w: &'a Tensor,
    bias: Vec<f32>,
    stride: usize,
    pad: usize,
    act: Activation,
}

impl<'a> Fused<'a> {
    fn of(layer: &'a ConvBn) -> Result<Self> {
        let unfused = || Error::Usage("int8: the network's BatchNorms are not fused".into());
        let (w, b, stride, pad, act) = layer.fused_parts().ok_or_else(unfused)?;
        let bias = match b {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; w.dim(0)?],
        };
        Ok(Self {
            w,
            bias,
            stride,
            pad,
            act,
        })
    }
}

/// A convolution (BatchNorm folded) with its ReLU, quantised. The GEMM reads receptive
/// fields in place, one run of bytes per kernel row; 3 × 3, stride-1 convolutions with
/// enough channels run through Winograd instead, to the same results.
struct Conv {
    weights: PackedWeights,
    /// The same weights transformed, for a 3×3, stride-1, pad-1 convolution.
    winograd: Option<WinogradWeights>,
    epilogue: Epilogue,
    shift: Option<MeanShift>,
    kernel: usize,
    stride: usize,
    pad: usize,
    c_in: usize,
}

impl Conv {
    /// `centre`: the input is a linear bottleneck, to be quantised centred on its
    /// channel means. Only unpadded 1 × 1 convolutions take a [`shift`]: on the stem of
    /// `models/pcam-mobilenetv2` (3 × 3, padded) it cost 5 of 2,907 PCam patches.
    fn new(layer: &ConvBn, algo: ConvAlgo, centre: bool) -> Result<Self> {
        let Fused {
            w,
            bias,
            stride,
            pad,
            act,
        } = Fused::of(layer)?;
        let (c_out, c_in, kh, kw) = w.dims4()?;
        debug_assert_eq!(kh, kw);
        // (c_out, c_in, ky, kx) to (c_out, ky, kx, c_in): in a channels-last image each
        // kernel row of a receptive field is one run of kx · c_in bytes, padded to whole
        // groups with zero weights (the padding reads the next pixel's first bytes).
        let w = w.flatten_all()?.to_vec1::<f32>()?;
        let run = (kw * c_in).div_ceil(KG) * KG;
        let mut padded = vec![0f32; c_out * kh * run];
        for (dst, src) in padded.chunks_mut(kh * run).zip(w.chunks(c_in * kh * kw)) {
            for ky in 0..kh {
                for kx in 0..kw {
                    let taps = &mut dst[ky * run + kx * c_in..][..c_in];
                    for (ci, t) in taps.iter_mut().enumerate() {
                        *t = src[(ci * kh + ky) * kw + kx];
                    }
                }
            }
        }
        let weights = PackedWeights::new(&padded, c_out, kh * run);
        let shift = (kh == 1 && pad == 0).then(|| MeanShift::new(&padded, &weights, c_in, centre));
        let winograd = (algo == ConvAlgo::Winograd
            && (kh, stride, pad) == (3, 1, 1)
            && c_in >= winograd::MIN_C_IN)
            .then(|| WinogradWeights::new(&weights, c_in))
            .flatten();
        Ok(Self {
            winograd,
            epilogue: Epilogue::new(&weights, &bias, act),
            shift,
            weights,
            kernel: kh,
            stride,
            pad,
            c_in,
        })
    }

    /// Each image of a group with its centring and bias shift ([`shift`]).
    fn shifts<'a>(&self, isa: Isa, xs: &'a [Act]) -> Vec<Shifted<'a>> {
        match &self.shift {
            Some(s) => s.apply(isa, xs),
            None => xs.iter().map(|x| (x, None, Vec::new())).collect(),
        }
    }

    /// The convolution of each image of a group.
    fn forward(&self, isa: Isa, xs: &[Act]) -> Vec<Act> {
        let shifts = self.shifts(isa, xs);
        match &self.winograd {
            Some(u) => self.winograd(isa, u, &shifts),
            None => self.direct(isa, &shifts),
        }
    }

    fn winograd(&self, isa: Isa, u: &WinogradWeights, shifts: &[Shifted]) -> Vec<Act> {
        let xs = || shifts.iter().map(|&(x, _, _)| x);
        // One extra row and column so that odd sides fill whole 2 × 2 tiles.
        let quantised: Vec<_> = shifts
            .iter()
            .map(|(x, centre, _)| quant::quantize(isa, x, centre.as_ref(), 1, 1))
            .collect();
        let images: Vec<_> = xs()
            .zip(&quantised)
            .map(|(x, (data, quant))| winograd::Image {
                data,
                zero: quant.zero,
                h: x.h,
                w: x.w,
                wp: x.w + 3,
            })
            .collect();
        // The transform removes the zero point, so the epilogue has none to remove.
        let dqs: Vec<_> = quantised
            .iter()
            .zip(shifts)
            .map(|((_, q), (_, _, shift))| {
                let centred = Quant {
                    scale: q.scale,
                    zero: 0,
                };
                self.epilogue.dequant(centred, &self.weights, shift)
            })
            .collect();
        let n = self.weights.n;
        let mut outs: Vec<Vec<f32>> = xs().map(|x| vec![0f32; x.h * x.w * n]).collect();
        winograd::conv(isa, &images, u, &dqs, &mut outs);
        xs().zip(outs)
            .map(|(x, data)| Act {
                h: x.h,
                w: x.w,
                c: n,
                data,
            })
            .collect()
    }

    /// The convolution of each image of a group (all of one size), each quantised
    /// centred where the layer centres, with its bias shift.
    fn direct(&self, isa: Isa, shifts: &[Shifted]) -> Vec<Act> {
        let Some((first, _, _)) = shifts.first() else {
            return Vec::new();
        };
        let (k, s, p) = (self.kernel, self.stride, self.pad);
        let (h, w, c) = (first.h, first.w, first.c);
        debug_assert_eq!(c, self.c_in);
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let run = (k * c).div_ceil(KG) * KG;
        // A run padded past the last tap reads into the next pixel: one more column.
        let extra = usize::from(run > k * c);
        let wp = w + 2 * p + extra;
        // Receptive field of output pixel r, padded rows repeating the last one.
        let starts: Vec<usize> = (0..(oh * ow).div_ceil(MR) * MR)
            .map(|r| {
                let r = r.min(oh * ow - 1);
                ((r / ow) * s * wp + (r % ow) * s) * c
            })
            .collect();
        let segments: Vec<usize> = (0..k).map(|ky| ky * wp * c).collect();
        let quantised: Vec<_> = shifts
            .iter()
            .map(|(x, centre, _)| {
                debug_assert_eq!((x.h, x.w, x.c), (h, w, c), "a group is of one size");
                quant::quantize(isa, x, centre.as_ref(), p, extra)
            })
            .collect();
        let rows: Vec<Rows> = quantised
            .iter()
            .map(|(image, _)| Rows {
                src: image,
                starts: &starts,
                segments: &segments,
                run,
            })
            .collect();
        let dqs: Vec<_> = (quantised.iter().zip(shifts))
            .map(|((_, quant), (_, _, shift))| self.epilogue.dequant(*quant, &self.weights, shift))
            .collect();
        let n = self.weights.n;
        gemm::products(isa, &rows, &self.weights, &dqs)
            .into_iter()
            .map(|mut data| {
                data.truncate(oh * ow * n);
                Act {
                    h: oh,
                    w: ow,
                    c: n,
                    data,
                }
            })
            .collect()
    }
}

/// Global average pooling and the linear classifier, in f32.
struct Head {
    /// (classes, channels) row-major.
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Head {
    fn new(fc: &candle_nn::Linear) -> Result<Self> {
        let w = fc.weight().flatten_all()?.to_vec1::<f32>()?;
        let b = match fc.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; fc.weight().dim(0)?],
        };
        Ok(Self { w, b })
    }

    fn forward(&self, x: &Act, logits: &mut [f32]) {
        let mean = x.channel_means();
        for (o, l) in logits.iter_mut().enumerate() {
            let row = &self.w[o * x.c..][..x.c];
            *l = row.iter().zip(&mean).map(|(w, m)| w * m).sum::<f32>() + self.b[o];
        }
    }
}

enum Body {
    SmallCnn(Vec<Conv>),
    ResNet {
        stem: Box<Conv>,
        /// Each block's convolutions and its shortcut's (`None`: identity).
        blocks: Vec<(Vec<Conv>, Option<Conv>)>,
    },
    MobileNet {
        stem: Box<Conv>,
        blocks: Vec<InvertedResidual>,
        last: Box<Conv>,
    },
}

/// A network quantised for int8 inference.
pub struct Int8Net {
    isa: Isa,
    body: Body,
    head: Head,
    classes: usize,
}

impl Int8Net {
    /// Quantises a fused network for the kernel path `isa`, convolutions as
    /// [`ConvAlgo::detect`] says.
    pub fn new(net: &Network, isa: Isa) -> Result<Self> {
        Self::with_algo(net, isa, ConvAlgo::detect(isa))
    }

    /// Quantises a fused network for the kernel path `isa` and convolutions by `algo`.
    pub fn with_algo(net: &Network, isa: Isa, algo: ConvAlgo) -> Result<Self> {
        let conv = |layer| Conv::new(layer, algo, false);
        let (body, fc) = match net {
            Network::SmallCnn(n) => {
                let (features, fc) = n.parts();
                let convs = features.iter().map(conv).collect::<Result<_>>()?;
                (Body::SmallCnn(convs), fc)
            }
            Network::ResNet(n) => {
                let (stem, blocks, fc) = n.parts();
                let blocks = blocks
                    .into_iter()
                    .map(|(convs, down)| {
                        let convs = convs.iter().map(conv).collect::<Result<Vec<_>>>()?;
                        Ok((convs, down.map(conv).transpose()?))
                    })
                    .collect::<Result<_>>()?;
                let stem = Box::new(conv(stem)?);
                (Body::ResNet { stem, blocks }, fc)
            }
            Network::MobileNet(n) => {
                let (stem, blocks, last, fc) = n.parts();
                let blocks = blocks
                    .into_iter()
                    .map(|(convs, residual)| InvertedResidual::new(convs, residual, algo))
                    .collect::<Result<_>>()?;
                let body = Body::MobileNet {
                    stem: Box::new(conv(stem)?),
                    blocks,
                    last: Box::new(conv(last)?),
                };
                (body, fc)
            }
        };
        let head = Head::new(fc)?;
        let classes = head.b.len();
        Ok(Self {
            isa,
            body,
            head,
            classes,
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Logits (n × classes, row-major) of `n` images laid out (n, 3, side, side).
    pub fn logits(&self, pixels: &[f32], n: usize, side: usize) -> Vec<f32> {
        let plane = side * side;
        assert_eq!(pixels.len(), n * 3 * plane, "pixels are (n, 3, side, side)");
        let mut logits = vec![0f32; n * self.classes];
        // Each thread takes a group of images through the network together, so that
        // each layer's weights serve the whole group in one pass.
        let group = n.div_ceil(rayon::current_num_threads()).clamp(1, GROUP);
        logits
            .par_chunks_mut(self.classes * group)
            .zip(pixels.par_chunks(3 * plane * group))
            .for_each(|(out, chw)| {
                let xs = chw
                    .chunks(3 * plane)
                    .map(|chw| {
                        let mut data = Vec::with_capacity(3 * plane);
                        for i in 0..plane {
                            data.extend_from_slice(&[chw[i], chw[plane + i], chw[2 * plane + i]]);
                        }
                        Act {
                            h: side,
                            w: side,
                            c: 3,
                            data,
                        }
                    })
                    .collect();
                for (x, out) in self.body(xs).iter().zip(out.chunks_mut(self.classes)) {
                    self.head.forward(x, out);
                }
            });
        logits
    }

    fn body(&self, xs: Vec<Act>) -> Vec<Act> {
        let isa = self.isa;
        let pool = |xs: Vec<Act>, k, s, p| xs.iter().map(|x| pool::max_pool(x, k, s, p)).collect();
        match &self.body {
            Body::SmallCnn(convs) => convs
                .iter()
                .fold(xs, |xs, conv| pool(conv.forward(isa, &xs), 2, 2, 0)),
            Body::ResNet { stem, blocks } => {
                let xs = pool(stem.forward(isa, &xs), 3, 2, 1);
                blocks.iter().fold(xs, |xs, (convs, down)| {
                    let ys = convs.iter().fold(None::<Vec<Act>>, |ys, conv| {
                        Some(conv.forward(isa, ys.as_deref().unwrap_or(&xs)))
                    });
                    let mut ys = ys.expect("a block has convolutions");
                    let shortcut = down.as_ref().map(|d| d.forward(isa, &xs));
                    let ss = shortcut.as_deref().unwrap_or(&xs);
                    for (y, s) in ys.iter_mut().zip(ss) {
                        y.data
                            .iter_mut()
                            .zip(&s.data)
                            .for_each(|(v, s)| *v = (*v + s).max(0.0));
                    }
                    ys
                })
            }
            Body::MobileNet { stem, blocks, last } => {
                let xs = stem.forward(isa, &xs);
                let xs = blocks.iter().fold(xs, |xs, b| b.forward(isa, xs));
                last.forward(isa, &xs)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// An untrained network with seeded weights: candle's own initialisation cannot be
    /// seeded on the CPU, and its draws put untrained networks on either side of the
    /// fidelity bound below (relative errors of 0.08–0.94 for MobileNetV2).
    fn random_net(arch: Architecture, classes: usize) -> Network {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut net = Network::new(arch, vb, classes).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let vars = varmap.data().lock().unwrap();
        let mut names: Vec<_> = vars.keys().collect();
        names.sort();
        for name in names {
            let var = &vars[name];
            let dims = var.dims().to_vec();
            // He's uniform initialisation for weights, small biases; BatchNorm's scales
            // and running statistics stay as they are.
            let values: Vec<f32> = match dims.as_slice() {
                [_, rest @ ..] if !rest.is_empty() => {
                    let bound = (6.0 / rest.iter().product::<usize>() as f32).sqrt();
                    (0..var.elem_count())
                        .map(|_| rng.random_range(-bound..bound))
                        .collect()
                }
                _ if name.contains("running") || !name.ends_with("bias") => continue,
                _ => (0..var.elem_count())
                    .map(|_| rng.random_range(-0.1..0.1))
                    .collect(),
            };
            var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
                .unwrap();
        }
        drop(vars);
        net.fuse().unwrap();
        net
    }

    fn pixels(n: usize, side: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * 3 * side * side)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect()
    }

    /// Relative error of int8 logits against f32 ones, over the whole batch.
    fn rel_error(a: &[f32], b: &[f32]) -> f32 {
        let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f32 = b.iter().map(|y| y * y).sum();
        (num / den.max(1e-12)).sqrt()
    }

    /// The f32 network's logits for the same input.
    fn f32_logits(net: &Network, pixels: &[f32], n: usize, side: usize) -> Result<Vec<f32>> {
        use candle_core::ModuleT;
        let x = Tensor::from_slice(pixels, (n, 3, side, side), &candle_core::Device::Cpu)?;
        Ok(net.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?)
    }

    #[test]
    fn int8_follows_f32_on_every_architecture_and_odd_sizes() {
        // Batch 1, sides that are not multiples of the pooling, a ResNet-50 bottleneck.
        for (arch, side) in [
            (Architecture::Smallcnn, 37),
            (Architecture::Resnet18, 45),
            (Architecture::Resnet50, 33),
            (Architecture::Mobilenetv2, 41),
            (Architecture::EfficientnetLite0, 43),
        ] {
            let net = random_net(arch, 3);
            let x = pixels(2, side, 1);
            let want = f32_logits(&net, &x, 2, side).unwrap();
            for isa in Isa::ALL {
                if !isa.available() {
                    continue;
                }
                let q = Int8Net::new(&net, isa).unwrap();
                let got = q.logits(&x, 2, side);
                let e = rel_error(&got, &want);
                assert!(e < 0.1, "{arch:?} {isa:?}: relative error {e}");
                // One image alone gives what it gives beside another.
                let one = q.logits(&x[..3 * side * side], 1, side);
                assert_eq!(one, got[..3], "{arch:?} {isa:?}");
            }
        }
    }

    #[test]
    fn paths_agree_bit_for_bit_on_a_network() {
        for arch in [
            Architecture::Resnet18,
            Architecture::Mobilenetv2,
            Architecture::EfficientnetLite0,
        ] {
            let net = random_net(arch, 2);
            let x = pixels(1, 40, 3);
            let a = Int8Net::new(&net, Isa::Portable).unwrap().logits(&x, 1, 40);
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let b = Int8Net::new(&net, isa).unwrap().logits(&x, 1, 40);
                assert_eq!(a, b, "{arch:?} {isa:?}");
            }
        }
    }

    #[test]
    fn winograd_equals_the_direct_product_bit_for_bit() {
        // Odd and even sides, SmallCnn (its 3- and 32-channel layers stay direct beside
        // Winograd ones), a ResNet-50 bottleneck; every kernel path.
        for (arch, side) in [
            (Architecture::Smallcnn, 37),
            (Architecture::Resnet18, 40),
            (Architecture::Resnet18, 45),
            (Architecture::Resnet50, 33),
        ] {
            let net = random_net(arch, 3);
            let x = pixels(2, side, 5);
            let direct = Int8Net::with_algo(&net, Isa::Portable, ConvAlgo::Direct)
                .unwrap()
                .logits(&x, 2, side);
            for isa in Isa::ALL {
                if isa.available() {
                    let q = Int8Net::with_algo(&net, isa, ConvAlgo::Winograd).unwrap();
                    assert_eq!(q.logits(&x, 2, side), direct, "{arch:?} {side} {isa:?}");
                }
            }
        }
    }

    #[test]
    fn winograd_convolution_equals_the_direct_one_on_odd_shapes() {
        // Channel counts under the vector width and between its multiples, output
        // channels that are not whole blocks, odd sides, a 1 × 1 image, images of a group
        // with their own scales and zero points (one has negative values).
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (c, n, h, w) in [(4, 8, 5, 7), (20, 13, 6, 6), (64, 24, 7, 3), (36, 5, 1, 1)] {
            let raw: Vec<f32> = (0..n * 9 * c)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let weights = PackedWeights::new(&raw, n, 9 * c);
            let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let conv = Conv {
                winograd: WinogradWeights::new(&weights, c),
                epilogue: Epilogue::new(&weights, &bias, Activation::Relu),
                shift: None,
                weights,
                kernel: 3,
                stride: 1,
                pad: 1,
                c_in: c,
            };
            let xs: Vec<Act> = [0.0, -1.5, 0.0]
                .iter()
                .map(|&lo| Act {
                    h,
                    w,
                    c,
                    data: (0..h * w * c).map(|_| rng.random_range(lo..2.0)).collect(),
                })
                .collect();
            let u = conv.winograd.as_ref().expect("exact for these channels");
            for isa in Isa::ALL {
                if isa.available() {
                    let shifts = conv.shifts(isa, &xs);
                    let want = conv.direct(Isa::Portable, &shifts);
                    for (got, want) in conv.winograd(isa, u, &shifts).iter().zip(&want) {
                        assert_eq!(got.data, want.data, "c={c} n={n} {h}×{w} {isa:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let net = random_net(Architecture::Smallcnn, 2);
        let x = pixels(5, 24, 7);
        let q = Int8Net::new(&net, Isa::detect()).unwrap();
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| q.logits(&x, 5, 24))
        };
        assert_eq!(on(1), on(3));
    }
}
