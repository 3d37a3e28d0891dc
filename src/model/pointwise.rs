//! Pointwise convolution (1 × 1, stride 1, no padding), MobileNet's channel mixer, as
//! one candle op with its backward pass. In: x (n, c, h, w) f32, weights (co, c, 1, 1).
//! Out: (n, co, h, w); the backward pass gives dx and dw.
//!
//! Why by hand: in NCHW each image's (c, h·w) plane already is the matrix a pointwise
//! convolution multiplies, so one product per image needs no im2col and no transposes.
//! candle's batched product would do the forward pass, but its weight gradient is a
//! (n, co, c) tensor summed afterwards; here images are multiplied in parallel, each
//! single-threaded, and the weight gradient is summed over fixed groups of images in a
//! fixed order, so it does not depend on the thread count.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_ops::contiguous_f32;

/// Groups of images whose weight gradients are summed separately, then in order.
const GRAD_GROUPS: usize = 8;

/// 1 × 1 convolution, stride 1, no padding, no bias.
pub fn pointwise_conv2d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (co, ci, kh, kw) = w.dims4()?;
    if (ci, kh, kw) != (c, 1, 1) {
        bail!(
            "pointwise_conv2d: weights {:?} do not fit {c} channels",
            w.dims()
        )
    }
    let w = w.reshape((co, c))?;
    let forward = Pointwise {
        weights: Side::AsIs,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, forward)
}

/// Which side of a product is stored transposed.
#[derive(Clone, Copy)]
enum Side {
    AsIs,
    Transposed,
}

/// dst (m × n, row-major) = op(a) (m × k) · op(b) (k × n), or += with `accumulate`,
/// single-threaded: callers run one product per image in parallel.
#[allow(clippy::too_many_arguments)] // the shape of a matrix product
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_side: Side,
    b: &[f32],
    b_side: Side,
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // (column stride, row stride) of each operand as stored.
    let (a_cs, a_rs) = match a_side {
        Side::AsIs => (1, k as isize),
        Side::Transposed => (m as isize, 1),
    };
    let (b_cs, b_rs) = match b_side {
        Side::AsIs => (1, n as isize),
        Side::Transposed => (k as isize, 1),
    };
    // SAFETY: the lengths are checked above and the strides stay within them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// The weights (co, c), or their transpose, times each image's plane: (n, c, h, w) →
/// (n, co, h, w) is the forward pass, and with the weights transposed (n, co, h, w) →
/// (n, c, h, w) is its input gradient. Inputs: the images and the (co, c) weights.
#[derive(Clone, Copy)]
struct Pointwise {
    weights: Side,
}

impl CustomOp2 for Pointwise {
    fn name(&self) -> &'static str {
        match self.weights {
            Side::AsIs => "pointwise-conv2d",
            Side::Transposed => "pointwise-conv2d-input-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c_in, h, w) = l1.shape().dims4()?;
        let (co, c) = l2.shape().dims2()?;
        let c_out = match self.weights {
            Side::AsIs => co,
            Side::Transposed => c,
        };
        let x = contiguous_f32(s1, l1, "pointwise-conv2d")?;
        let wt = contiguous_f32(s2, l2, "pointwise-conv2d")?;
        let hw = h * w;
        let mut y = vec![0f32; n * c_out * hw];
        y.par_chunks_mut(c_out * hw)
            .zip(x.par_chunks(c_in * hw))
            .for_each(|(y, x)| {
                product((c_out, hw, c_in), y, false, wt, self.weights, x, Side::AsIs)
            });
        Ok((CpuStorage::F32(y), Shape::from((n, c_out, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let input_grad = Pointwise {
            weights: Side::Transposed,
        };
        let dx = dy.apply_op2_no_bwd(w, &input_grad)?;
        let dw = x.apply_op2_no_bwd(&dy, &WeightGrad)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// dw of [`Pointwise`]: Σ over images of dy · xᵀ, as (co, c); inputs x and dy.
struct WeightGrad;

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "pointwise-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let co = l2.shape().dims4()?.1;
        let x = contiguous_f32(s1, l1, "pointwise-conv2d")?;
        let dy = contiguous_f32(s2, l2, "pointwise-conv2d")?;
        let hw = h * w;
        let per_group = n.div_ceil(GRAD_GROUPS).max(1);
        let groups: Vec<Vec<f32>> = (0..n.div_ceil(per_group))
            .into_par_iter()
            .map(|g| {
                let mut acc = vec![0f32; co * c];
                for img in g * per_group..((g + 1) * per_group).min(n) {
                    let (x, dy) = (
                        &x[img * c * hw..][..c * hw],
                        &dy[img * co * hw..][..co * hw],
                    );
                    product(
                        (co, c, hw),
                        &mut acc,
                        true,
                        dy,
                        Side::AsIs,
                        x,
                        Side::Transposed,
                    );
                }
                acc
            })
            .collect();
        let mut dw = vec![0f32; co * c];
        for acc in groups {
            dw.iter_mut().zip(&acc).for_each(|(d, a)| *d += a);
        }
        Ok((CpuStorage::F32(dw), Shape::from((co, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn pointwise_matches_candles_convolution_and_its_gradients() {
        let dev = Device::Cpu;
        for (n, c, co, h, w) in [(3, 5, 7, 4, 6), (1, 8, 3, 1, 1), (10, 16, 24, 3, 3)] {
            let x = Var::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let wt = Var::randn(0f32, 1.0, (co, c, 1, 1), &dev).unwrap();
            let gy = Tensor::randn(0f32, 1.0, (n, co, h, w), &dev).unwrap();
            let want = x.conv2d(&wt, 0, 1, 1, 1).unwrap();
            let want_g = (&want * &gy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let got = pointwise_conv2d(&x, &wt).unwrap();
            let got_g = (&got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(crate::model::max_abs_diff(&got, &want) < 1e-5);
            for v in [&x, &wt] {
                let d = crate::model::max_abs_diff(got_g.get(v).unwrap(), want_g.get(v).unwrap());
                assert!(d < 1e-4, "n{n} c{c} co{co} {h}×{w}: gradient off by {d}");
            }
        }
    }
}
