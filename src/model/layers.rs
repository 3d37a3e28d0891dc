//! Building blocks shared by the architectures.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{batch_norm, conv2d, conv2d_no_bias, BatchNorm, Conv2d, Conv2dConfig, VarBuilder};

/// A convolution followed by BatchNorm. For inference the BatchNorm can be folded into
/// the convolution's weights ([`ConvBn::fuse`]): the same function, one op fewer.
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: Conv2d,
    bn: Option<BatchNorm>,
}

pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

impl ConvBn {
    /// `conv` and `bn` are the PyTorch names of the two layers under `vb`.
    pub fn new(spec: ConvSpec, vb: &VarBuilder, conv: &str, bn: &str) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: spec.padding,
            stride: spec.stride,
            ..Default::default()
        };
        let layer = if spec.bias {
            conv2d(spec.c_in, spec.c_out, spec.kernel, cfg, vb.pp(conv))?
        } else {
            conv2d_no_bias(spec.c_in, spec.c_out, spec.kernel, cfg, vb.pp(conv))?
        };
        // PyTorch's BatchNorm2d defaults: eps 1e-5, momentum 0.1.
        let norm = batch_norm(spec.c_out, 1e-5, vb.pp(bn))?;
        Ok(Self {
            conv: layer,
            bn: Some(norm),
        })
    }

    pub fn fuse(&mut self) -> Result<()> {
        if let Some(bn) = self.bn.take() {
            self.conv = self.conv.absorb_bn(&bn)?;
        }
        Ok(())
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv.forward(x)?;
        match &self.bn {
            Some(bn) => bn.forward_t(&y, train),
            None => Ok(y),
        }
    }
}

/// Global average pooling over height and width: (N, C, H, W) → (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}
