//! Building blocks shared by the architectures.

use candle_core::{Module, ModuleT, Result, Tensor};

/// Most elements of an im2col matrix built at once (64 MiB of f32); larger batches
/// are convolved in chunks so memory stays flat.
const MAX_COLS: usize = 16 << 20;
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
        // Training on the CPU: candle's convolution backward pass is a direct loop
        // (`vec_dot_f32` dominated the profile); im2col + gemm differentiates through
        // block copies and matrix products instead. Inference keeps candle's
        // convolution, which is as fast there and needs no im2col buffer.
        let y = if train && x.device().is_cpu() {
            let cfg = self.conv.config();
            let y = conv2d_gemm(x, self.conv.weight(), cfg.stride, cfg.padding)?;
            match self.conv.bias() {
                Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
                None => y,
            }
        } else {
            self.conv.forward(x)?
        };
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

/// 2-D convolution (no dilation, one group) as im2col + one matrix product, made of
/// differentiable tensor ops. Each kernel offset is a strided view of the padded input
/// seen as (c, n, rows / s, s, cols / s, s); stacking the views is one block copy into
/// the (kh·kw·c, n·oh·ow) matrix, and the product is one large gemm over the batch.
pub fn conv2d_gemm(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (co, ci, kh, kw) = w.dims4()?;
    if ci != c {
        candle_core::bail!("conv2d: input has {c} channels, weights expect {ci}")
    }
    let s = stride;
    let oh = (h + 2 * pad - kh) / s + 1;
    let ow = (wd + 2 * pad - kw) / s + 1;
    let k = c * kh * kw;
    let chunk = (MAX_COLS / (k * oh * ow).max(1)).clamp(1, n);
    if chunk < n {
        let parts = (0..n)
            .step_by(chunk)
            .map(|i| conv2d_gemm(&x.narrow(0, i, chunk.min(n - i))?, w, stride, pad))
            .collect::<Result<Vec<_>>>()?;
        return Tensor::cat(&parts, 0);
    }
    // Padded size: a multiple of the stride, large enough for every kernel offset.
    let hn = s * (h + 2 * pad).div_ceil(s).max((kh - 1) / s + oh);
    let wn = s * (wd + 2 * pad).div_ceil(s).max((kw - 1) / s + ow);
    let xp = x
        .pad_with_zeros(2, pad, hn - h - pad)?
        .pad_with_zeros(3, pad, wn - wd - pad)?;
    let xp = xp.transpose(0, 1)?.reshape((c, n, hn / s, s, wn / s, s))?;
    let mut parts = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            parts.push(
                xp.narrow(2, i / s, oh)?
                    .narrow(3, i % s, 1)?
                    .narrow(4, j / s, ow)?
                    .narrow(5, j % s, 1)?,
            );
        }
    }
    let cols = Tensor::stack(&parts, 0)?.reshape((k, n * oh * ow))?;
    // Weights in the same (kh, kw, c) order as the matrix rows.
    let w = w.permute((0, 2, 3, 1))?.reshape((co, k))?;
    w.matmul(&cols)?
        .reshape((co, n, oh, ow))?
        .transpose(0, 1)?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::Conv2dConfig;

    #[test]
    fn gemm_conv_matches_candle_conv_and_its_gradients() {
        let dev = Device::Cpu;
        for (c, co, k, stride, pad, size) in [
            (3, 8, 3, 1, 1, 9),
            (4, 6, 7, 2, 3, 15),
            (5, 7, 1, 2, 0, 8),
            (2, 3, 3, 2, 1, 10),
        ] {
            // Square inputs: candle's own conv backward loses a column on stride-2 non-square ones.
            let x = Var::randn(0f32, 1.0, (3, c, size, size), &dev).unwrap();
            let w = Var::randn(0f32, 1.0, (co, c, k, k), &dev).unwrap();
            let cfg = Conv2dConfig {
                padding: pad,
                stride,
                ..Default::default()
            };
            let want = candle_nn::Conv2d::new(w.as_tensor().clone(), None, cfg)
                .forward(&x)
                .unwrap();
            let got = conv2d_gemm(&x, &w, stride, pad).unwrap();
            let max_diff = crate::model::max_abs_diff;
            assert_eq!(got.dims(), want.dims());
            assert!(
                max_diff(&got, &want) < 1e-4,
                "forward k{k} s{stride} p{pad}"
            );
            let (gw, gx) = (
                want.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
                got.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
            );
            assert!(
                max_diff(gw.get(&w).unwrap(), gx.get(&w).unwrap()) < 1e-2,
                "weight grad k{k}"
            );
            assert!(
                max_diff(gw.get(&x).unwrap(), gx.get(&x).unwrap()) < 1e-2,
                "input grad k{k}"
            );
        }
    }
}
