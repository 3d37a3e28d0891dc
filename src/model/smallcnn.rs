//! A small fast CNN for CPU use: 4 × [conv3×3 (bias) → BatchNorm → ReLU → max-pool 2×2]
//! with 32/64/128/256 channels, global average pooling and one linear layer.
//! Parameter names follow the PyTorch module `features.{i}.{0: conv, 1: bn}`, `fc`,
//! as in the WSInfer peer's `SmallCnn`, so its weights load unchanged.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::layers::{global_avg_pool, max_pool, Activation, ConvBn, ConvSpec};

pub const CHANNELS: [usize; 4] = [32, 64, 128, 256];

#[derive(Debug, Clone)]
pub struct SmallCnn {
    features: Vec<ConvBn>,
    fc: Linear,
}

impl SmallCnn {
    pub fn new(vb: VarBuilder, num_classes: usize) -> Result<Self> {
        let mut features = Vec::with_capacity(CHANNELS.len());
        let mut c_in = 3;
        for (i, &c_out) in CHANNELS.iter().enumerate() {
            let spec = ConvSpec {
                c_in,
                c_out,
                kernel: 3,
                stride: 1,
                padding: 1,
                bias: true,
                depthwise: false,
                act: Activation::Relu,
                bn_eps: 1e-5,
            };
            features.push(ConvBn::new(
                spec,
                &vb.pp(format!("features.{i}")),
                "0",
                "1",
            )?);
            c_in = c_out;
        }
        let fc = linear(c_in, num_classes, vb.pp("fc"))?;
        Ok(Self { features, fc })
    }

    pub fn fuse(&mut self) -> Result<()> {
        self.features.iter_mut().try_for_each(ConvBn::fuse)
    }

    /// The conv blocks and the classifier head, for the int8 path.
    pub(super) fn parts(&self) -> (&[ConvBn], &Linear) {
        (&self.features, &self.fc)
    }
}

impl ModuleT for SmallCnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.features {
            let y = block.forward_t(&x, train)?;
            x = max_pool(&y, 2, 2, 0, |y| y.max_pool2d(2))?;
        }
        self.fc.forward(&global_avg_pool(&x)?)
    }
}
