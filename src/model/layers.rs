//! Building blocks shared by the architectures.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{batch_norm, conv2d, conv2d_no_bias, BatchNorm, Conv2d, Conv2dConfig, VarBuilder};

pub use super::cpu_ops::Activation;
use super::{cpu_ops, depthwise, pointwise};

/// A convolution followed by BatchNorm and an activation. For inference the
/// BatchNorm can be folded into the convolution's weights ([`ConvBn::fuse`]): the same function, one op fewer.
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: Conv2d,
    bn: Option<BatchNorm>,
    act: Activation,
}

pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    /// One filter per channel (`groups = c_in`, and `c_out == c_in`).
    pub depthwise: bool,
    pub act: Activation,
    /// The BatchNorm's epsilon.
    pub bn_eps: f64,
}

impl ConvSpec {
    /// No bias, padding k / 2, one group, PyTorch's BatchNorm epsilon (1e-5): what
    /// torchvision's blocks use.
    pub fn plain(c_in: usize, c_out: usize, kernel: usize, stride: usize, act: Activation) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride,
            padding: kernel / 2,
            bias: false,
            depthwise: false,
            act,
            bn_eps: 1e-5,
        }
    }

    /// The same with BatchNorm epsilon `eps`.
    pub fn bn_eps(self, eps: f64) -> Self {
        Self {
            bn_eps: eps,
            ..self
        }
    }
}

impl ConvBn {
    /// `conv` and `bn` are the PyTorch names of the two layers under `vb`.
    pub fn new(spec: ConvSpec, vb: &VarBuilder, conv: &str, bn: &str) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: spec.padding,
            stride: spec.stride,
            groups: if spec.depthwise { spec.c_in } else { 1 },
            ..Default::default()
        };
        let layer = if spec.bias {
            conv2d(spec.c_in, spec.c_out, spec.kernel, cfg, vb.pp(conv))?
        } else {
            conv2d_no_bias(spec.c_in, spec.c_out, spec.kernel, cfg, vb.pp(conv))?
        };
        let norm = batch_norm(spec.c_out, spec.bn_eps, vb.pp(bn))?;
        Ok(Self {
            conv: layer,
            bn: Some(norm),
            act: spec.act,
        })
    }

    pub fn fuse(&mut self) -> Result<()> {
        if let Some(bn) = self.bn.take() {
            self.conv = self.conv.absorb_bn(&bn)?;
        }
        Ok(())
    }

    /// What the int8 path rebuilds the layer from: weights (c_out, c_in, k, k), bias,
    /// stride, padding and activation. `None` until the BatchNorm is fused.
    pub(super) fn fused_parts(
        &self,
    ) -> Option<(&Tensor, Option<&Tensor>, usize, usize, Activation)> {
        let cfg = self.conv.config();
        self.bn.is_none().then(|| {
            (
                self.conv.weight(),
                self.conv.bias(),
                cfg.stride,
                cfg.padding,
                self.act,
            )
        })
    }

    pub(super) fn depthwise(&self) -> bool {
        self.conv.config().groups > 1
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !x.device().is_cpu() {
            let y = self.conv.forward(x)?;
            let y = match &self.bn {
                Some(bn) => bn.forward_t(&y, train)?,
                None => y,
            };
            return self.act.apply(&y);
        }
        // On the CPU, hand-written kernels (see `cpu_ops`, `depthwise`): candle's
        // convolution backward is a direct loop (one per group), and its composed
        // BatchNorm costs a gradient buffer per op.
        let cfg = self.conv.config();
        let w = self.conv.weight();
        let y = if self.depthwise() {
            depthwise::depthwise_conv2d(x, w, cfg.stride, cfg.padding)?
        } else if w.dims()[2..] == [1, 1] && (cfg.stride, cfg.padding) == (1, 0) {
            pointwise::pointwise_conv2d(x, w)?
        } else {
            cpu_ops::conv2d(x, w, cfg.stride, cfg.padding)?
        };
        if let (true, Some(bn)) = (train, &self.bn) {
            return cpu_ops::batch_norm_train(&y, bn, self.conv.bias(), self.act);
        }
        let y = match self.conv.bias() {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        let y = match &self.bn {
            Some(bn) => bn.forward_t(&y, false)?,
            None => y,
        };
        self.act.apply(&y)
    }
}

/// Global average pooling over height and width: (N, C, H, W) → (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

/// Max pooling, floor mode, implicit -inf padding. On the CPU a custom op with a
/// backward pass for any window; elsewhere `fallback` (candle's pooling has no backward
/// pass for windows larger than their stride).
pub fn max_pool(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
    fallback: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if x.device().is_cpu() {
        cpu_ops::max_pool(x, kernel, stride, pad)
    } else {
        fallback(x)
    }
}
