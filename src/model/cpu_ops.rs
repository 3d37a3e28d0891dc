//! Hand-written CPU kernels for the layers that dominate training: im2col for the
//! convolution, BatchNorm on batch statistics fused with the ReLU after it, and max
//! pooling. Each is one candle custom op with its own backward pass.
//!
//! Why: candle differentiates a composed op node by node, and every node costs a zeroed
//! gradient buffer plus an add over the whole activation. BatchNorm written with tensor
//! ops is about ten such nodes; here it is one, with the textbook closed-form gradient.
//! Tensors in and out are (n, c, h, w) f32; the ops are used only on the CPU device.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, Var};
use candle_nn::BatchNorm;
use rayon::prelude::*;

/// Most elements of an im2col matrix built at once (64 MiB of f32); larger batches
/// are convolved in chunks so memory stays flat.
const MAX_COLS: usize = 16 << 20;

/// The activation after a convolution's BatchNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None: the block's output is linear (a residual branch's last layer).
    Linear,
    Relu,
    /// min(max(x, 0), 6): MobileNet's.
    Relu6,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Linear => Ok(x.clone()),
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
        }
    }
}

/// 2-D convolution (no dilation, one group, no bias) as im2col + one matrix product over
/// the whole batch: the weights (co, c·kh·kw) times the columns (c·kh·kw, n·oh·ow). One
/// large product keeps gemm efficient in deep layers, where a product per image would be
/// only oh·ow columns wide.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (co, ci, kh, kw) = w.dims4()?;
    if ci != c {
        candle_core::bail!("conv2d: input has {c} channels, weights expect {ci}")
    }
    let geom = Im2col {
        kernel: (kh, kw),
        stride,
        pad,
        input: (h, wd),
    };
    let (oh, ow) = geom.output();
    let k = c * kh * kw;
    let chunk = (MAX_COLS / (k * oh * ow).max(1)).clamp(1, n);
    if chunk < n {
        let parts = (0..n)
            .step_by(chunk)
            .map(|i| conv2d(&x.narrow(0, i, chunk.min(n - i))?, w, stride, pad))
            .collect::<Result<Vec<_>>>()?;
        return Tensor::cat(&parts, 0);
    }
    let cols = x.contiguous()?.apply_op1(geom)?;
    // (co, c, kh, kw) flattens to the column rows' (c, kh, kw) order as is.
    w.reshape((co, k))?
        .matmul(&cols)?
        .reshape((co, n, oh, ow))?
        .transpose(0, 1)?
        .contiguous()
}

/// BatchNorm in training mode (batch statistics; running statistics updated as PyTorch
/// does, with the unbiased variance), followed by the activation `act`. `conv_bias` is the
/// bias of the convolution before it, left out of `x`: the normalisation cancels it, but
/// the running mean, used at inference, must include it.
pub fn batch_norm_train(
    x: &Tensor,
    bn: &BatchNorm,
    conv_bias: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    let Some((gamma, beta)) = bn.weight_and_bias() else {
        candle_core::bail!("batch_norm_train: BatchNorm without weight and bias")
    };
    let x = x.contiguous()?;
    let moments = x.apply_op1_no_bwd(&ChannelMoments)?;
    let (mean, var) = (moments.get(0)?, moments.get(1)?);
    let count = (n * h * w) as f64;
    let momentum = bn.momentum();
    let batch_mean = match conv_bias {
        Some(b) => (&mean + b)?,
        None => mean.clone(),
    };
    let running = |stat: &Tensor, batch: Tensor| -> Result<()> {
        let updated = ((stat * (1.0 - momentum))? + (batch * momentum)?)?;
        Var::from_tensor(stat)?.set(&updated)
    };
    running(bn.running_mean(), batch_mean)?;
    running(bn.running_var(), (&var * (count / (count - 1.0).max(1.0)))?)?;
    let op = BnTrain {
        mean: mean.to_vec1()?,
        inv_std: var
            .to_vec1::<f32>()?
            .iter()
            .map(|v| 1.0 / (v + bn.eps() as f32).sqrt())
            .collect(),
        act,
    };
    x.apply_op3(gamma, beta, op)
}

/// Max pooling with a `kernel` × `kernel` window, `stride` and implicit -inf `pad`
/// (PyTorch's `MaxPool2d`, floor mode). The gradient goes to the first maximum of each
/// window, as in PyTorch.
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let geom = Im2col {
        kernel: (kernel, kernel),
        stride,
        pad,
        input: (h, w),
    };
    x.contiguous()?.apply_op1(MaxPool(geom))
}

/// Window geometry shared by im2col and pooling.
#[derive(Debug, Clone, Copy)]
pub(super) struct Im2col {
    pub(super) kernel: (usize, usize),
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) input: (usize, usize),
}

impl Im2col {
    pub(super) fn output(&self) -> (usize, usize) {
        let out = |size: usize, k: usize| (size + 2 * self.pad - k) / self.stride + 1;
        (
            out(self.input.0, self.kernel.0),
            out(self.input.1, self.kernel.1),
        )
    }

    /// Calls `f(output_offset, input_offset, len)` for each run of `len` consecutive
    /// output positions in a row whose kernel offset (i, j) reads real (not padding)
    /// input pixels; those are `stride` apart from `input_offset`. Offsets are within a
    /// plane.
    fn for_each_run(&self, i: usize, j: usize, mut f: impl FnMut(usize, usize, usize)) {
        let (h, w) = self.input;
        let (oh, ow) = self.output();
        let s = self.stride;
        // Output columns whose input column ox·s + j − pad lies in [0, w).
        let first = self.pad.saturating_sub(j).div_ceil(s);
        let end = (w + self.pad).saturating_sub(j).div_ceil(s).min(ow);
        if first >= end {
            return;
        }
        for oy in 0..oh {
            let Some(iy) = (oy * s + i).checked_sub(self.pad).filter(|&y| y < h) else {
                continue;
            };
            let ix = first * s + j - self.pad;
            f(oy * ow + first, iy * w + ix, end - first);
        }
    }

    fn taps(&self) -> impl Iterator<Item = (usize, usize)> {
        let (kh, kw) = self.kernel;
        (0..kh).flat_map(move |i| (0..kw).map(move |j| (i, j)))
    }
}

pub(super) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Unfolds (n, c, h, w) into the (c·kh·kw, n·oh·ow) matrix: row (c, i, j) holds, image
/// after image, the input pixel under kernel offset (i, j) of channel c at every output
/// position, zero where the offset lands in the padding.
impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = contiguous_f32(storage, layout, "im2col")?;
        let (kh, kw) = self.kernel;
        let (oh, ow) = self.output();
        let (plane, row) = (oh * ow, n * oh * ow);
        let stride = self.stride;
        let mut out = vec![0f32; c * kh * kw * row];
        // One task per channel: its kh·kw rows are contiguous in the output.
        out.par_chunks_mut(kh * kw * row)
            .enumerate()
            .for_each(|(ch, rows)| {
                for ((i, j), row) in self.taps().zip(rows.chunks_mut(row)) {
                    for (img, seg) in row.chunks_mut(plane).enumerate() {
                        let src = &x[(img * c + ch) * h * w..][..h * w];
                        self.for_each_run(i, j, |o, s, len| {
                            let out = &mut seg[o..o + len];
                            if stride == 1 {
                                out.copy_from_slice(&src[s..s + len]);
                            } else {
                                let taps = src[s..].iter().step_by(stride);
                                out.iter_mut().zip(taps).for_each(|(d, &v)| *d = v);
                            }
                        });
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((c * kh * kw, row))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, _, _) = arg.dims4()?;
        let col2im = Col2im { geom: *self, n, c };
        grad.contiguous()?.apply_op1_no_bwd(&col2im).map(Some)
    }
}

/// The adjoint of [`Im2col`]: sums each column entry back onto the input pixel it came from.
struct Col2im {
    geom: Im2col,
    n: usize,
    c: usize,
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(storage, layout, "col2im")?;
        let (n, c) = (self.n, self.c);
        let (kh, kw) = self.geom.kernel;
        let (h, w) = self.geom.input;
        let (oh, ow) = self.geom.output();
        let (plane, row) = (oh * ow, n * oh * ow);
        let stride = self.geom.stride;
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w).enumerate().for_each(|(p, dst)| {
            let (img, ch) = (p / c, p % c);
            let rows = &cols[ch * kh * kw * row..][..kh * kw * row];
            for ((i, j), r) in self.geom.taps().zip(rows.chunks(row)) {
                let seg = &r[img * plane..][..plane];
                self.geom.for_each_run(i, j, |o, s, len| {
                    let taps = dst[s..].iter_mut().step_by(stride);
                    taps.zip(&seg[o..o + len]).for_each(|(d, &v)| *d += v);
                });
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

/// Per-channel mean and biased variance of (n, c, h, w), as a (2, c) tensor. Two passes
/// with f64 totals, so a large mean does not swamp the variance.
struct ChannelMoments;

impl CustomOp1 for ChannelMoments {
    fn name(&self) -> &'static str {
        "channel-moments"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = contiguous_f32(storage, layout, "channel-moments")?;
        let plane = h * w;
        let count = (n * plane) as f64;
        let planes = |ch: usize| (0..n).map(move |i| &x[(i * c + ch) * plane..][..plane]);
        let (mean, var): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let sum: f64 = planes(ch).map(|p| p.iter().sum::<f32>() as f64).sum();
                let mean = (sum / count) as f32;
                let sq: f64 = planes(ch)
                    .map(|p| p.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() as f64)
                    .sum();
                (mean, (sq / count) as f32)
            })
            .unzip();
        Ok((CpuStorage::F32([mean, var].concat()), Shape::from((2, c))))
    }
}

/// y = act(γ·(x − μ)/σ + β) per channel; μ and 1/σ are the batch's.
struct BnTrain {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    act: Activation,
}

impl BnTrain {
    /// For one value of channel `ch` in the backward pass: the gradient dz before the
    /// activation (zero where it clipped the output `y`, as PyTorch's ReLU and ReLU6
    /// do) and the normalised input x̂.
    fn grad_terms(&self, ch: usize, x: f32, y: f32, dy: f32) -> (f32, f32) {
        let clipped = match self.act {
            Activation::Linear => false,
            Activation::Relu => y <= 0.0,
            Activation::Relu6 => y <= 0.0 || y >= 6.0,
        };
        let dz = if clipped { 0.0 } else { dy };
        (dz, (x - self.mean[ch]) * self.inv_std[ch])
    }

    /// Per-channel scale and shift of the affine map, from γ and β.
    fn affine(&self, gamma: &[f32], beta: &[f32]) -> Vec<(f32, f32)> {
        (0..self.mean.len())
            .map(|ch| {
                let scale = gamma[ch] * self.inv_std[ch];
                (scale, beta[ch] - self.mean[ch] * scale)
            })
            .collect()
    }
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let x = contiguous_f32(s1, l1, "batch-norm")?;
        let gamma = contiguous_f32(s2, l2, "batch-norm")?;
        let beta = contiguous_f32(s3, l3, "batch-norm")?;
        let affine = self.affine(gamma, beta);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .enumerate()
            .for_each(|(p, (dst, src))| {
                let (scale, shift) = affine[p % c];
                for (d, &s) in dst.iter_mut().zip(src) {
                    let v = s * scale + shift;
                    *d = match self.act {
                        Activation::Linear => v,
                        Activation::Relu => v.max(0.0),
                        Activation::Relu6 => v.clamp(0.0, 6.0),
                    };
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// With z = γ·x̂ + β (before the ReLU) and dz = dy where z > 0:
    /// dβ = Σ dz, dγ = Σ dz·x̂, dx = γ/σ · (dz − dβ/m − x̂·dγ/m), sums over the m values of
    /// a channel.
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let sums = x.apply_op3_no_bwd(y, &dy, &BnGradSums(self))?;
        let grad_input = BnGradInput {
            bn: self,
            gamma: gamma.to_vec1()?,
            sums: sums.to_vec2()?,
        };
        let dx = x.apply_op3_no_bwd(y, &dy, &grad_input)?;
        Ok((Some(dx), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}

/// x, y and dy of a [`BnTrain`] backward op as slices.
fn backward_inputs<'a>(inputs: [(&'a CpuStorage, &Layout); 3]) -> Result<[&'a [f32]; 3]> {
    let [a, b, c] = inputs.map(|(s, l)| contiguous_f32(s, l, "batch-norm"));
    Ok([a?, b?, c?])
}

/// Σ dz and Σ dz·x̂ per channel, as a (2, c) tensor; inputs x, y, dy.
struct BnGradSums<'a>(&'a BnTrain);

impl CustomOp3 for BnGradSums<'_> {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let [x, y, dy] = backward_inputs([(s1, l1), (s2, l2), (s3, l3)])?;
        let plane = h * w;
        let (d_beta, d_gamma): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sum, mut sum_xhat) = (0f64, 0f64);
                for i in 0..n {
                    let at = (i * c + ch) * plane..(i * c + ch + 1) * plane;
                    let (mut s, mut sx) = (0f32, 0f32);
                    for ((&x, &y), &g) in x[at.clone()].iter().zip(&y[at.clone()]).zip(&dy[at]) {
                        let (dz, xhat) = self.0.grad_terms(ch, x, y, g);
                        s += dz;
                        sx += dz * xhat;
                    }
                    sum += s as f64;
                    sum_xhat += sx as f64;
                }
                (sum as f32, sum_xhat as f32)
            })
            .unzip();
        Ok((
            CpuStorage::F32([d_beta, d_gamma].concat()),
            Shape::from((2, c)),
        ))
    }
}

/// dx for [`BnTrain`]; inputs x, y, dy.
struct BnGradInput<'a> {
    bn: &'a BnTrain,
    gamma: Vec<f32>,
    /// [Σ dz, Σ dz·x̂] per channel.
    sums: Vec<Vec<f32>>,
}

impl CustomOp3 for BnGradInput<'_> {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let [x, y, dy] = backward_inputs([(s1, l1), (s2, l2), (s3, l3)])?;
        let plane = h * w;
        let m = (n * plane) as f32;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(plane).enumerate().for_each(|(p, out)| {
            let ch = p % c;
            let scale = self.gamma[ch] * self.bn.inv_std[ch];
            let (mean_dz, mean_dz_xhat) = (self.sums[0][ch] / m, self.sums[1][ch] / m);
            let at = p * plane..(p + 1) * plane;
            for (((d, &x), &y), &g) in out
                .iter_mut()
                .zip(&x[at.clone()])
                .zip(&y[at.clone()])
                .zip(&dy[at])
            {
                let (dz, xhat) = self.bn.grad_terms(ch, x, y, g);
                *d = scale * (dz - mean_dz - xhat * mean_dz_xhat);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

struct MaxPool(Im2col);

impl MaxPool {
    /// For each output position of a plane, the input offset of the first maximum.
    fn argmax(&self, src: &[f32], mut f: impl FnMut(usize, usize)) {
        let (oh, ow) = self.0.output();
        let mut best = vec![(f32::NEG_INFINITY, usize::MAX); oh * ow];
        for (i, j) in self.0.taps() {
            self.0.for_each_run(i, j, |o, s, len| {
                for t in 0..len {
                    let at = s + t * self.0.stride;
                    if src[at] > best[o + t].0 {
                        best[o + t] = (src[at], at);
                    }
                }
            });
        }
        for (o, &(_, s)) in best.iter().enumerate() {
            f(o, s);
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = contiguous_f32(storage, layout, "max-pool")?;
        let (oh, ow) = self.0.output();
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| self.argmax(src, |o, s| dst[o] = src[s]));
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        x.apply_op2_no_bwd(&grad, &MaxPoolGrad(self)).map(Some)
    }
}

/// Routes each output gradient to its window's first maximum; inputs x and dy.
struct MaxPoolGrad<'a>(&'a MaxPool);

impl candle_core::CustomOp2 for MaxPoolGrad<'_> {
    fn name(&self) -> &'static str {
        "max-pool-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, _, h, w) = l1.shape().dims4()?;
        let x = contiguous_f32(s1, l1, "max-pool")?;
        let dy = contiguous_f32(s2, l2, "max-pool")?;
        let (oh, ow) = self.0 .0.output();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(dy.par_chunks(oh * ow))
            .for_each(|((dst, src), g)| self.0.argmax(src, |o, s| dst[s] += g[o]));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;
    use candle_core::{DType, Device, Module, ModuleT};
    use candle_nn::{Conv2dConfig, VarBuilder, VarMap};

    #[test]
    fn conv_matches_candle_conv_and_its_gradients() {
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
            let got = conv2d(&x, &w, stride, pad).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(
                max_abs_diff(&got, &want) < 1e-4,
                "forward k{k} s{stride} p{pad}"
            );
            let (gw, gx) = (
                want.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
                got.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
            );
            assert!(
                max_abs_diff(gw.get(&w).unwrap(), gx.get(&w).unwrap()) < 1e-2,
                "weight grad k{k}"
            );
            assert!(
                max_abs_diff(gw.get(&x).unwrap(), gx.get(&x).unwrap()) < 1e-2,
                "input grad k{k}"
            );
        }
    }

    /// Values, gradients (input, γ, β) and running statistics against candle-nn's
    /// BatchNorm followed by a ReLU or a ReLU6.
    #[test]
    fn fused_batch_norm_matches_candle_nn() {
        fused_batch_norm_matches(Activation::Relu);
        fused_batch_norm_matches(Activation::Relu6);
    }

    fn fused_batch_norm_matches(act: Activation) {
        let dev = Device::Cpu;
        let (n, c, h, w) = (3, 4, 5, 6);
        let make = || {
            let map = VarMap::new();
            let bn =
                candle_nn::batch_norm(c, 1e-5, VarBuilder::from_varmap(&map, DType::F32, &dev))
                    .unwrap();
            let vars = map.all_vars();
            for v in &vars {
                let shape = v.shape().clone();
                v.set(&Tensor::rand(0.5f32, 1.5, shape, &dev).unwrap())
                    .unwrap();
            }
            (map, bn)
        };
        let (_m1, bn1) = make();
        let (_m2, bn2) = make();
        for (a, b) in [
            (bn1.running_mean(), bn2.running_mean()),
            (bn1.running_var(), bn2.running_var()),
        ] {
            Var::from_tensor(b).unwrap().set(a).unwrap();
        }
        let (g1, b1) = bn1.weight_and_bias().unwrap();
        let (g2, b2) = bn2.weight_and_bias().unwrap();
        Var::from_tensor(g2).unwrap().set(g1).unwrap();
        Var::from_tensor(b2).unwrap().set(b1).unwrap();
        let x = Var::from_tensor(
            &(Tensor::randn(0f32, 2.0, (n, c, h, w), &dev).unwrap() + 3.0).unwrap(),
        )
        .unwrap();
        let weights = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let want = act.apply(&bn1.forward_t(&x, true).unwrap()).unwrap();
        let got = batch_norm_train(&x, &bn2, None, act).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5);
        let gw = (want * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gg = (got * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (a, b) in [(x.as_tensor(), x.as_tensor()), (g1, g2), (b1, b2)] {
            assert!(max_abs_diff(gw.get(a).unwrap(), gg.get(b).unwrap()) < 1e-4);
        }
        assert!(max_abs_diff(bn1.running_mean(), bn2.running_mean()) < 1e-6);
        assert!(max_abs_diff(bn1.running_var(), bn2.running_var()) < 1e-5);
    }

    #[test]
    fn max_pool_matches_candle_and_routes_gradients_to_the_maximum() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 8, 10), &dev).unwrap();
        let want = x.max_pool2d(2).unwrap();
        let got = max_pool(&x, 2, 2, 0).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-7);
        // PyTorch's gradient: 1 at each window's maximum, 0 elsewhere. (candle-nn's own
        // pooling backward divides it by the window area.)
        let at_max = x
            .eq(&want.upsample_nearest2d(8, 10).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let grads = got.sum_all().unwrap().backward().unwrap();
        assert_eq!(max_abs_diff(grads.get(&x).unwrap(), &at_max), 0.0);
        // 3×3, stride 2, padding 1 (ResNet's stem): each window's gradient lands once.
        let pooled = max_pool(&x, 3, 2, 1).unwrap();
        assert_eq!(pooled.dims(), [2, 3, 4, 5]);
        let g = pooled.sum_all().unwrap().backward().unwrap();
        let total = g
            .get(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(total, 20.0 * 6.0);
    }
}
