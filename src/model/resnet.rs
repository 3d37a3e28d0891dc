//! ResNet-18/34 (basic blocks) and ResNet-50 (bottlenecks) with torchvision's parameter
//! names (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.{0,1}`, `fc`, ...), so
//! a torchvision or timm ResNet exported to safetensors loads as is.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::layers::{global_avg_pool, max_pool, Activation, ConvBn, ConvSpec};

/// A residual block: `conv1`/`bn1`, `conv2`/`bn2` (and for a bottleneck `conv3`/`bn3`),
/// ReLU between them, the shortcut (`downsample.{0,1}` where the shape changes) added
/// before the last ReLU.
#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

/// Which block a ResNet stacks.
#[derive(Debug, Clone, Copy)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1 down, 3×3 (carrying the stride, as torchvision's "v1.5"), 1×1 up to 4× the
    /// stage width (ResNet-50).
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

impl Block {
    fn new(
        vb: VarBuilder,
        kind: BlockKind,
        c_in: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let c_out = width * kind.expansion();
        let conv = |c_in, c_out, kernel: usize, stride, relu| {
            let act = if relu {
                Activation::Relu
            } else {
                Activation::Linear
            };
            ConvSpec::plain(c_in, c_out, kernel, stride, act)
        };
        // The last convolution's ReLU comes after the shortcut is added.
        let specs = match kind {
            BlockKind::Basic => vec![
                conv(c_in, width, 3, stride, true),
                conv(width, c_out, 3, 1, false),
            ],
            BlockKind::Bottleneck => vec![
                conv(c_in, width, 1, 1, true),
                conv(width, width, 3, stride, true),
                conv(width, c_out, 1, 1, false),
            ],
        };
        let convs = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                ConvBn::new(
                    spec,
                    &vb,
                    &format!("conv{}", i + 1),
                    &format!("bn{}", i + 1),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if stride != 1 || c_in != c_out {
            let spec = conv(c_in, c_out, 1, stride, false);
            Some(ConvBn::new(spec, &vb.pp("downsample"), "0", "1")?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn fuse(&mut self) -> Result<()> {
        self.convs.iter_mut().try_for_each(ConvBn::fuse)?;
        self.downsample.as_mut().map_or(Ok(()), ConvBn::fuse)
    }
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for conv in &self.convs {
            y = conv.forward_t(&y, train)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvBn,
    layers: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    /// `blocks` per stage: `[2, 2, 2, 2]` basic for ResNet-18, `[3, 4, 6, 3]` basic for
    /// 34, `[3, 4, 6, 3]` bottleneck for 50. `width` is the stem's channel count and the
    /// first stage's width, doubled at each later stage: 64 in torchvision; narrower nets
    /// (same names, same operations) keep the PyTorch parity fixtures small.
    pub fn new(
        vb: VarBuilder,
        kind: BlockKind,
        blocks: [usize; 4],
        width: usize,
        num_classes: usize,
    ) -> Result<Self> {
        let stem_spec = ConvSpec::plain(3, width, 7, 2, Activation::Relu);
        let stem = ConvBn::new(stem_spec, &vb, "conv1", "bn1")?;
        let mut layers = Vec::new();
        let mut c_in = width;
        for (stage, &n) in blocks.iter().enumerate() {
            let width = width << stage;
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let vb = vb.pp(format!("layer{}.{i}", stage + 1));
                layers.push(Block::new(vb, kind, c_in, width, stride)?);
                c_in = width * kind.expansion();
            }
        }
        let fc = linear(c_in, num_classes, vb.pp("fc"))?;
        Ok(Self { stem, layers, fc })
    }

    pub fn fuse(&mut self) -> Result<()> {
        self.stem.fuse()?;
        self.layers.iter_mut().try_for_each(Block::fuse)
    }

    /// The stem, each block's convolutions and shortcut, and the head, for the int8
    /// path.
    pub(super) fn parts(&self) -> (&ConvBn, Vec<BlockParts<'_>>, &Linear) {
        let blocks = self
            .layers
            .iter()
            .map(|b| (b.convs.as_slice(), b.downsample.as_ref()))
            .collect();
        (&self.stem, blocks, &self.fc)
    }
}

/// A block's convolutions in order, and its shortcut's (`None`: identity).
pub(super) type BlockParts<'a> = (&'a [ConvBn], Option<&'a ConvBn>);

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.stem.forward_t(x, train)?;
        let mut x = max_pool(&x, 3, 2, 1, max_pool_3x3_s2)?;
        for block in &self.layers {
            x = block.forward_t(&x, train)?;
        }
        self.fc.forward(&global_avg_pool(&x)?)
    }
}

/// torchvision's stem pooling off the CPU: 3×3 max-pool, stride 2, padding 1, as the
/// running maximum of nine strided views (candle has no backward pass for a pooling window
/// larger than its stride). The input follows a ReLU, so every value is ≥ 0 and zero
/// padding gives the same maxima as torchvision's -inf padding.
fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Padded to (2·oh + 2) × (2·ow + 2): 1 in front, the rest behind; then viewed as
    // (rows / 2, 2, cols / 2, 2) so each window offset is a plain slice.
    let x = x
        .pad_with_zeros(2, 1, 2 * oh + 1 - h)?
        .pad_with_zeros(3, 1, 2 * ow + 1 - w)?;
    let x = x.reshape((n, c, oh + 1, 2, ow + 1, 2))?;
    let mut out: Option<Tensor> = None;
    for i in 0..3 {
        for j in 0..3 {
            let view = x
                .narrow(2, i / 2, oh)?
                .narrow(3, i % 2, 1)?
                .narrow(4, j / 2, ow)?
                .narrow(5, j % 2, 1)?;
            out = Some(match out {
                Some(m) => m.maximum(&view)?,
                None => view,
            });
        }
    }
    out.expect("nine views").reshape((n, c, oh, ow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn stem_pool_matches_candle_and_has_gradients() {
        let dev = Device::Cpu;
        for (h, w) in [(8, 8), (7, 9), (38, 38)] {
            let x = Var::rand(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
            let want = x
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .pad_with_zeros(3, 1, 1)
                .unwrap()
                .max_pool2d_with_stride(3, 2)
                .unwrap();
            let got = max_pool_3x3_s2(&x).unwrap();
            assert_eq!(got.dims(), want.dims(), "{h}×{w}");
            assert_eq!(crate::model::max_abs_diff(&got, &want), 0.0);
            let cpu = max_pool(&x, 3, 2, 1, max_pool_3x3_s2).unwrap();
            assert_eq!(crate::model::max_abs_diff(&cpu, &want), 0.0);
            let grads = got.sum_all().unwrap().backward().unwrap();
            assert_eq!(grads.get(&x).unwrap().dims(), x.dims());
        }
    }
}
