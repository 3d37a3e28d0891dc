//! Inverted-residual networks. In: (n, 3, s, s) normalised patches. Out: (n, classes)
//! logits.
//!
//! - MobileNetV2 (Sandler et al. 2018) with torchvision's parameter names
//!   (`features.0.0`, `features.{i}.conv.{j}`, `features.18.{0,1}`, `classifier.1`), so
//!   torchvision's ImageNet weights load as they are.
//! - EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant for CPUs and accelerators:
//!   no squeeze-and-excitation, ReLU6, stem and head not scaled) with the names of the
//!   ImageNet checkpoint `scripts/fetch-imagenet.sh` fetches (`_conv_stem`, `_bn0`,
//!   `_blocks.{i}._{expand,depthwise,project}_conv`, `_bn{0,1,2}`, `_conv_head`, `_bn1`,
//!   `_fc`) and its BatchNorm epsilon, 1e-3. Its 5 × 5 depthwise layers pad 2 on every
//!   side: the TensorFlow original pads "same", one pixel more at the bottom and right
//!   of a stride-2 layer, which fine-tuning absorbs.
//!
//! Inverted residual blocks: a 1 × 1 expansion (ReLU6), a depthwise convolution
//! carrying the stride (ReLU6), a linear 1 × 1 projection, and the input added where the
//! shape is kept. Both share one structure ([`MobileNet`]), so training, BatchNorm
//! folding and the int8 path treat them alike. The heads' dropout is left out: candle's
//! random generator cannot be seeded, and a training run must give the same weights
//! for the same seed.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::layers::{global_avg_pool, Activation, ConvBn, ConvSpec};

/// (expansion t, channels c, blocks n, first stride s) of each stage, torchvision's table.
const STAGES: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, never 10 % below `v`.
fn divisible(v: f64) -> usize {
    let rounded = ((v + 4.0) as usize / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded + 8
    } else {
        rounded
    }
}

/// EfficientNet-Lite0's stages: (expansion, kernel, first stride, channels, blocks).
const LITE0_STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
];

/// TensorFlow's BatchNorm epsilon, which EfficientNet's weights were trained with.
const LITE0_BN_EPS: f64 = 1e-3;

/// One block's shape and its layers' names.
struct BlockSpec {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    expansion: usize,
    bn_eps: f64,
    /// (convolution, BatchNorm) names of the expansion, depthwise and projection
    /// layers; the expansion's is unused where `expansion` is 1.
    names: [(String, String); 3],
}

#[derive(Debug, Clone)]
struct InvertedResidual {
    convs: Vec<ConvBn>,
    residual: bool,
}

impl InvertedResidual {
    fn new(vb: &VarBuilder, b: BlockSpec) -> Result<Self> {
        let hidden = b.c_in * b.expansion;
        let [expand, depthwise, project] = &b.names;
        let mut convs = Vec::with_capacity(3);
        if b.expansion != 1 {
            let spec = ConvSpec::plain(b.c_in, hidden, 1, 1, Activation::Relu6).bn_eps(b.bn_eps);
            convs.push(ConvBn::new(spec, vb, &expand.0, &expand.1)?);
        }
        let dw = ConvSpec {
            depthwise: true,
            ..ConvSpec::plain(hidden, hidden, b.kernel, b.stride, Activation::Relu6)
                .bn_eps(b.bn_eps)
        };
        convs.push(ConvBn::new(dw, vb, &depthwise.0, &depthwise.1)?);
        let spec = ConvSpec::plain(hidden, b.c_out, 1, 1, Activation::Linear).bn_eps(b.bn_eps);
        convs.push(ConvBn::new(spec, vb, &project.0, &project.1)?);
        Ok(Self {
            convs,
            residual: b.stride == 1 && b.c_in == b.c_out,
        })
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for conv in &self.convs {
            y = conv.forward_t(&y, train)?;
        }
        if self.residual {
            y + x
        } else {
            Ok(y)
        }
    }
}

/// MobileNetV2 or EfficientNet-Lite0: a stem, inverted residual blocks, a last 1 × 1
/// convolution, global average pooling and a linear classifier.
#[derive(Debug, Clone)]
pub struct MobileNet {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    classifier: Linear,
}

impl MobileNet {
    /// MobileNetV2. `width` scales every layer's channels as torchvision's `width_mult`
    /// (1.0 for the ImageNet weights; narrower nets keep the PyTorch parity fixture
    /// small).
    pub fn v2(vb: VarBuilder, width: f64, num_classes: usize) -> Result<Self> {
        let features = vb.pp("features");
        let mut c_in = divisible(32.0 * width);
        let stem_spec = ConvSpec::plain(3, c_in, 3, 2, Activation::Relu6);
        let stem = ConvBn::new(stem_spec, &features, "0.0", "0.1")?;
        let mut blocks = Vec::new();
        for (t, c, n, s) in STAGES {
            let c_out = divisible(c as f64 * width);
            for i in 0..n {
                let vb = features.pp(blocks.len() + 1).pp("conv");
                // Sequential indices: [expand (conv.0)], depthwise (conv.{0|1}),
                // projection conv and BatchNorm as two plain entries.
                let d = usize::from(t != 1);
                let names = [
                    ("0.0".into(), "0.1".into()),
                    (format!("{d}.0"), format!("{d}.1")),
                    (format!("{}", d + 1), format!("{}", d + 2)),
                ];
                let spec = BlockSpec {
                    c_in,
                    c_out,
                    kernel: 3,
                    stride: if i == 0 { s } else { 1 },
                    expansion: t,
                    bn_eps: 1e-5,
                    names,
                };
                blocks.push(InvertedResidual::new(&vb, spec)?);
                c_in = c_out;
            }
        }
        let c_last = divisible(1280.0 * width.max(1.0));
        let last_spec = ConvSpec::plain(c_in, c_last, 1, 1, Activation::Relu6);
        let at = format!("{}", blocks.len() + 1);
        let last = ConvBn::new(last_spec, &features, &format!("{at}.0"), &format!("{at}.1"))?;
        let classifier = linear(c_last, num_classes, vb.pp("classifier.1"))?;
        Ok(Self {
            stem,
            blocks,
            last,
            classifier,
        })
    }

    /// EfficientNet-Lite0. `width` scales the blocks' channels (1.0 for the ImageNet
    /// weights), not the stem's 32 or the head's 1280, as the lite variants do.
    pub fn efficientnet_lite0(vb: VarBuilder, width: f64, num_classes: usize) -> Result<Self> {
        let stem_spec = ConvSpec::plain(3, 32, 3, 2, Activation::Relu6).bn_eps(LITE0_BN_EPS);
        let stem = ConvBn::new(stem_spec, &vb, "_conv_stem", "_bn0")?;
        let mut c_in = 32;
        let mut blocks = Vec::new();
        for (t, k, s, c, n) in LITE0_STAGES {
            let c_out = divisible(c as f64 * width);
            for i in 0..n {
                let vb = vb.pp(format!("_blocks.{}", blocks.len()));
                let layers = ["expand", "depthwise", "project"];
                let spec = BlockSpec {
                    c_in,
                    c_out,
                    kernel: k,
                    stride: if i == 0 { s } else { 1 },
                    expansion: t,
                    bn_eps: LITE0_BN_EPS,
                    names: std::array::from_fn(|j| {
                        (format!("_{}_conv", layers[j]), format!("_bn{j}"))
                    }),
                };
                blocks.push(InvertedResidual::new(&vb, spec)?);
                c_in = c_out;
            }
        }
        let last_spec = ConvSpec::plain(c_in, 1280, 1, 1, Activation::Relu6).bn_eps(LITE0_BN_EPS);
        let last = ConvBn::new(last_spec, &vb, "_conv_head", "_bn1")?;
        let classifier = linear(1280, num_classes, vb.pp("_fc"))?;
        Ok(Self {
            stem,
            blocks,
            last,
            classifier,
        })
    }

    pub fn fuse(&mut self) -> Result<()> {
        self.stem.fuse()?;
        for block in &mut self.blocks {
            block.convs.iter_mut().try_for_each(ConvBn::fuse)?;
        }
        self.last.fuse()
    }

    /// The stem, each block's parts, the last convolution and the classifier, for the
    /// int8 path.
    pub(super) fn parts(&self) -> (&ConvBn, Vec<BlockParts<'_>>, &ConvBn, &Linear) {
        let blocks = self
            .blocks
            .iter()
            .map(|b| (b.convs.as_slice(), b.residual))
            .collect();
        (&self.stem, blocks, &self.last, &self.classifier)
    }
}

/// A block's convolutions (expand if any, depthwise, project) and whether it adds its
/// input.
pub(super) type BlockParts<'a> = (&'a [ConvBn], bool);

impl ModuleT for MobileNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.stem.forward_t(x, train)?;
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        let x = self.last.forward_t(&x, train)?;
        self.classifier.forward(&global_avg_pool(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rounding_follows_torchvision() {
        // torchvision's mobilenet_v2(width_mult=w) first/last channels.
        assert_eq!(divisible(32.0), 32);
        assert_eq!(divisible(32.0 * 0.25), 8);
        assert_eq!(divisible(16.0 * 0.25), 8);
        assert_eq!(divisible(24.0 * 0.25), 8);
        assert_eq!(divisible(96.0 * 0.25), 24);
        assert_eq!(divisible(160.0 * 0.25), 40);
        assert_eq!(divisible(320.0 * 0.25), 80);
        assert_eq!(divisible(24.0 * 0.75), 24);
        assert_eq!(divisible(1280.0), 1280);
    }
}
