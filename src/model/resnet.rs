//! ResNet-18 and ResNet-34 (basic blocks) with torchvision's parameter names
//! (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.{0,1}`, `fc`, ...), so a
//! torchvision or timm ResNet exported to safetensors loads as is.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::layers::{global_avg_pool, max_pool, ConvBn, ConvSpec};

#[derive(Debug, Clone)]
struct BasicBlock {
    a: ConvBn,
    b: ConvBn,
    downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        let conv3 = |c_in, stride, relu| ConvSpec {
            c_in,
            c_out,
            kernel: 3,
            stride,
            padding: 1,
            bias: false,
            relu,
        };
        let a = ConvBn::new(conv3(c_in, stride, true), &vb, "conv1", "bn1")?;
        // The second ReLU comes after the shortcut is added.
        let b = ConvBn::new(conv3(c_out, 1, false), &vb, "conv2", "bn2")?;
        let downsample = if stride != 1 || c_in != c_out {
            let spec = ConvSpec {
                c_in,
                c_out,
                kernel: 1,
                stride,
                padding: 0,
                bias: false,
                relu: false,
            };
            Some(ConvBn::new(spec, &vb.pp("downsample"), "0", "1")?)
        } else {
            None
        };
        Ok(Self { a, b, downsample })
    }

    fn fuse(&mut self) -> Result<()> {
        self.a.fuse()?;
        self.b.fuse()?;
        self.downsample.as_mut().map_or(Ok(()), ConvBn::fuse)
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.a.forward_t(x, train)?;
        let y = self.b.forward_t(&y, train)?;
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
    layers: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet {
    /// `blocks`: basic blocks per stage, `[2, 2, 2, 2]` for ResNet-18, `[3, 4, 6, 3]` for 34.
    pub fn new(vb: VarBuilder, blocks: [usize; 4], num_classes: usize) -> Result<Self> {
        let stem_spec = ConvSpec {
            c_in: 3,
            c_out: 64,
            kernel: 7,
            stride: 2,
            padding: 3,
            bias: false,
            relu: true,
        };
        let stem = ConvBn::new(stem_spec, &vb, "conv1", "bn1")?;
        let mut layers = Vec::new();
        let mut c_in = 64;
        for (stage, &n) in blocks.iter().enumerate() {
            let c_out = 64 << stage;
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                layers.push(BasicBlock::new(
                    vb.pp(format!("layer{}.{i}", stage + 1)),
                    c_in,
                    c_out,
                    stride,
                )?);
                c_in = c_out;
            }
        }
        let fc = linear(c_in, num_classes, vb.pp("fc"))?;
        Ok(Self { stem, layers, fc })
    }

    pub fn fuse(&mut self) -> Result<()> {
        self.stem.fuse()?;
        self.layers.iter_mut().try_for_each(BasicBlock::fuse)
    }
}

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
