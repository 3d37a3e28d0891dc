//! MobileNetV2 (Sandler et al. 2018) with torchvision's parameter names
//! (`features.0.0`, `features.{i}.conv.{j}`, `features.18.{0,1}`, `classifier.1`), so
//! torchvision's ImageNet weights load as they are. In: (n, 3, s, s) normalised
//! patches. Out: (n, classes) logits.
//!
//! Inverted residual blocks: a 1 × 1 expansion (ReLU6), a 3 × 3 depthwise convolution
//! carrying the stride (ReLU6), a linear 1 × 1 projection, and the input added where the
//! shape is kept. The head's dropout is left out: candle's random generator cannot be
//! seeded, and a training run must give the same weights for the same seed.

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

#[derive(Debug, Clone)]
struct InvertedResidual {
    convs: Vec<ConvBn>,
    residual: bool,
}

impl InvertedResidual {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize, t: usize) -> Result<Self> {
        let hidden = c_in * t;
        let vb = vb.pp("conv");
        let mut convs = Vec::with_capacity(3);
        // Sequential indices: [expand (conv.0)], depthwise (conv.{0|1}), projection
        // conv and BatchNorm as two plain entries.
        if t != 1 {
            let spec = ConvSpec::plain(c_in, hidden, 1, 1, Activation::Relu6);
            convs.push(ConvBn::new(spec, &vb, "0.0", "0.1")?);
        }
        let i = convs.len();
        let dw = ConvSpec {
            depthwise: true,
            ..ConvSpec::plain(hidden, hidden, 3, stride, Activation::Relu6)
        };
        convs.push(ConvBn::new(dw, &vb, &format!("{i}.0"), &format!("{i}.1"))?);
        let project = ConvSpec::plain(hidden, c_out, 1, 1, Activation::Linear);
        let (conv, bn) = (format!("{}", i + 1), format!("{}", i + 2));
        convs.push(ConvBn::new(project, &vb, &conv, &bn)?);
        Ok(Self {
            convs,
            residual: stride == 1 && c_in == c_out,
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

#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    classifier: Linear,
}

impl MobileNetV2 {
    /// `width` scales every layer's channels as torchvision's `width_mult` (1.0 for
    /// the ImageNet weights; narrower nets keep the PyTorch parity fixture small).
    pub fn new(vb: VarBuilder, width: f64, num_classes: usize) -> Result<Self> {
        let features = vb.pp("features");
        let mut c_in = divisible(32.0 * width);
        let stem_spec = ConvSpec::plain(3, c_in, 3, 2, Activation::Relu6);
        let stem = ConvBn::new(stem_spec, &features, "0.0", "0.1")?;
        let mut blocks = Vec::new();
        for (t, c, n, s) in STAGES {
            let c_out = divisible(c as f64 * width);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let vb = features.pp(blocks.len() + 1);
                blocks.push(InvertedResidual::new(vb, c_in, c_out, stride, t)?);
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

impl ModuleT for MobileNetV2 {
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
