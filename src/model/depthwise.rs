//! Depthwise convolution, MobileNet's spatial layer: one k × k filter per channel. In:
//! x (n, c, h, w) f32, weights (c, 1, k, k), stride, padding. Out: (n, c, oh, ow); the
//! backward pass gives dx and dw. One candle op on the CPU.
//!
//! Why by hand: candle's grouped `conv2d` runs one convolution per group, c of them per
//! layer, and its backward pass is a direct loop. Here each tap of a filter is one
//! multiply-add along a run of an output row. A strided layer first splits each input
//! row into its stride phases (columns 0, 2, 4, … then 1, 3, 5, …), so every tap reads
//! a contiguous run and all loops vectorise.
//!
//! The portable and AVX2 paths ([`Isa`]) are the same loops compiled for two targets,
//! and Rust never fuses a multiply and an add, so they give the same bits. The weight
//! gradient adds each tap's products element-wise over rows and images before one
//! final sum in a fixed order, so it does not depend on the path or the thread count.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_ops::{contiguous_f32, Im2col};
use super::isa::Isa;

/// Depthwise 2-D convolution, no bias, zero `pad` on every side (PyTorch's
/// `conv2d(x, w, stride=stride, padding=pad, groups=c)`).
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    depthwise_conv2d_with(Isa::detect(), x, w, stride, pad)
}

/// [`depthwise_conv2d`] on a given kernel path, for tests that compare the paths.
pub fn depthwise_conv2d_with(
    isa: Isa,
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (cw, one, kh, kw) = w.dims4()?;
    if cw != c || one != 1 {
        bail!(
            "depthwise_conv2d: weights {:?} do not fit {c} channels",
            w.dims()
        )
    }
    if stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
        bail!("depthwise_conv2d: a {kh}×{kw} filter, stride {stride}, padding {pad} does not fit a {h}×{wd} input")
    }
    if !isa.available() {
        bail!(
            "depthwise_conv2d: this CPU cannot run the {} path",
            isa.name()
        )
    }
    let geom = Im2col {
        kernel: (kh, kw),
        stride,
        pad,
        input: (h, wd),
    };
    let loops = Loops::of(isa);
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Depthwise { geom, loops })
}

#[derive(Clone, Copy)]
struct Depthwise {
    geom: Im2col,
    loops: Loops,
}

/// A row's columns reordered by stride phase: column x moves to `start[x % s] + x / s`,
/// so the columns one strided tap reads are next to each other.
struct Phases {
    stride: usize,
    width: usize,
    start: Vec<usize>,
}

impl Phases {
    fn new(stride: usize, width: usize) -> Self {
        let start = (0..stride)
            .scan(0, |at, p| {
                let here = *at;
                *at += width.saturating_sub(p).div_ceil(stride);
                Some(here)
            })
            .collect();
        Self {
            stride,
            width,
            start,
        }
    }

    /// Where the pixel at plane offset `at` is once the rows are split.
    fn index(&self, at: usize) -> usize {
        let (y, x) = (at / self.width, at % self.width);
        y * self.width + self.start[x % self.stride] + x / self.stride
    }

    fn split(&self, plane: &[f32], out: &mut [f32]) {
        for (src, dst) in plane.chunks(self.width).zip(out.chunks_mut(self.width)) {
            for (x, &v) in src.iter().enumerate() {
                dst[self.start[x % self.stride] + x / self.stride] = v;
            }
        }
    }

    fn merge(&self, split: &[f32], plane: &mut [f32]) {
        for (src, dst) in split.chunks(self.width).zip(plane.chunks_mut(self.width)) {
            for (x, v) in dst.iter_mut().enumerate() {
                *v = src[self.start[x % self.stride] + x / self.stride];
            }
        }
    }
}

/// Where kernel column j reads in a row: output columns `first..first + len` take the
/// input columns that start at `src` once the row is split by phase.
#[derive(Clone, Copy)]
struct TapColumns {
    first: usize,
    len: usize,
    src: usize,
}

/// The plane geometry the loops share: per kernel column, its run of a row.
struct Plan {
    geom: Im2col,
    columns: Vec<TapColumns>,
}

impl Plan {
    fn new(geom: Im2col, phases: &Phases) -> Self {
        let (s, pad, w) = (geom.stride, geom.pad, geom.input.1);
        let ow = geom.output().1;
        let columns = (0..geom.kernel.1)
            .map(|j| {
                // Output columns whose input column ox·s + j − pad lies in [0, w).
                let first = pad.saturating_sub(j).div_ceil(s);
                let end = (w + pad).saturating_sub(j).div_ceil(s).min(ow);
                let len = end.saturating_sub(first);
                let src = if len > 0 {
                    phases.index(first * s + j - pad)
                } else {
                    0
                };
                TapColumns { first, len, src }
            })
            .collect();
        Self { geom, columns }
    }

    /// Calls `f(oy, iy, i)` for each output row and kernel row that reads a real input row.
    #[inline(always)]
    fn rows(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, _) = self.geom.output();
        let (kh, h) = (self.geom.kernel.0, self.geom.input.0);
        for oy in 0..oh {
            for i in 0..kh {
                if let Some(iy) = (oy * self.geom.stride + i).checked_sub(self.geom.pad) {
                    if iy < h {
                        f(oy, iy, i);
                    }
                }
            }
        }
    }
}

/// One output plane: the sum over taps of the tap's weight times the input under it,
/// an output row at a time so that the row stays in L1 across its k·k taps. `src` is
/// the input plane with its rows split by phase.
#[inline(always)]
fn forward_plane(plan: &Plan, src: &[f32], taps: &[f32], out: &mut [f32]) {
    let (ow, w, kw) = (plan.geom.output().1, plan.geom.input.1, plan.geom.kernel.1);
    out.fill(0.0);
    plan.rows(|oy, iy, i| {
        let (row, input) = (&mut out[oy * ow..][..ow], &src[iy * w..][..w]);
        for (t, &wt) in plan.columns.iter().zip(&taps[i * kw..][..kw]) {
            let x = &input[t.src..][..t.len];
            for (y, &x) in row[t.first..][..t.len].iter_mut().zip(x) {
                *y += wt * x;
            }
        }
    });
}

/// The gradient of one input plane, rows split by phase: each output gradient goes back
/// to the pixels its taps read.
#[inline(always)]
fn input_grad_plane(plan: &Plan, dy: &[f32], taps: &[f32], dx: &mut [f32]) {
    let (ow, w, kw) = (plan.geom.output().1, plan.geom.input.1, plan.geom.kernel.1);
    dx.fill(0.0);
    plan.rows(|oy, iy, i| {
        let (grad, row) = (&dy[oy * ow..][..ow], &mut dx[iy * w..][..w]);
        for (t, &wt) in plan.columns.iter().zip(&taps[i * kw..][..kw]) {
            let dx = &mut row[t.src..][..t.len];
            for (d, &g) in dx.iter_mut().zip(&grad[t.first..][..t.len]) {
                *d += wt * g;
            }
        }
    });
}

/// Adds one plane's products (output gradient × input under the tap) into `acc`, one
/// row-long slot per tap, element-wise.
#[inline(always)]
fn weight_grad_plane(plan: &Plan, src: &[f32], dy: &[f32], acc: &mut [f32]) {
    let (ow, w, kw) = (plan.geom.output().1, plan.geom.input.1, plan.geom.kernel.1);
    plan.rows(|oy, iy, i| {
        let (grad, input) = (&dy[oy * ow..][..ow], &src[iy * w..][..w]);
        for (j, t) in plan.columns.iter().enumerate() {
            let acc = &mut acc[(i * kw + j) * ow..][..t.len];
            let x = &input[t.src..][..t.len];
            for ((a, &g), &x) in acc.iter_mut().zip(&grad[t.first..][..t.len]).zip(x) {
                *a += g * x;
            }
        }
    });
}

/// The three loops of one kernel path. The AVX2 ones are the same code compiled with
/// AVX2 enabled: wider vectors, the same bits.
#[derive(Clone, Copy)]
struct Loops {
    forward: unsafe fn(&Plan, &[f32], &[f32], &mut [f32]),
    input_grad: unsafe fn(&Plan, &[f32], &[f32], &mut [f32]),
    weight_grad: unsafe fn(&Plan, &[f32], &[f32], &mut [f32]),
}

impl Loops {
    /// The loops of `isa`, which the caller has checked this CPU runs: only then is
    /// calling them sound.
    fn of(isa: Isa) -> Self {
        match isa {
            #[cfg(target_arch = "x86_64")]
            _ if isa.avx2() => Self {
                forward: avx2::forward_plane,
                input_grad: avx2::input_grad_plane,
                weight_grad: avx2::weight_grad_plane,
            },
            _ => Self {
                forward: forward_plane,
                input_grad: input_grad_plane,
                weight_grad: weight_grad_plane,
            },
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Plan;

    #[target_feature(enable = "avx2")]
    pub unsafe fn forward_plane(plan: &Plan, src: &[f32], taps: &[f32], out: &mut [f32]) {
        super::forward_plane(plan, src, taps, out)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn input_grad_plane(plan: &Plan, dy: &[f32], taps: &[f32], dx: &mut [f32]) {
        super::input_grad_plane(plan, dy, taps, dx)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn weight_grad_plane(plan: &Plan, src: &[f32], dy: &[f32], acc: &mut [f32]) {
        super::weight_grad_plane(plan, src, dy, acc)
    }
}

impl Depthwise {
    fn phases(&self) -> Phases {
        Phases::new(self.geom.stride, self.geom.input.1)
    }

    fn plan(&self, phases: &Phases) -> Plan {
        Plan::new(self.geom, phases)
    }

    fn taps(&self) -> usize {
        self.geom.kernel.0 * self.geom.kernel.1
    }

    /// `plane` with its rows split by phase, in `buf`; the plane itself at stride 1.
    fn split<'a>(&self, phases: &Phases, plane: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
        if self.geom.stride == 1 {
            return plane;
        }
        buf.resize(plane.len(), 0.0);
        phases.split(plane, buf);
        buf
    }
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = contiguous_f32(s1, l1, "depthwise-conv2d")?;
        let wt = contiguous_f32(s2, l2, "depthwise-conv2d")?;
        let (oh, ow) = self.geom.output();
        let phases = self.phases();
        let plan = self.plan(&phases);
        let k = self.taps();
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .enumerate()
            .for_each_init(Vec::new, |buf, (p, (out, plane))| {
                let src = self.split(&phases, plane, buf);
                // SAFETY: `depthwise_conv2d_with` checked that this CPU runs the loops.
                unsafe { (self.loops.forward)(&plan, src, &wt[(p % c) * k..][..k], out) };
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &InputGrad(*self))?;
        let dw = x.apply_op2_no_bwd(&dy, &WeightGrad(*self))?;
        Ok((Some(dx), Some(dw.reshape(w.shape())?)))
    }
}

/// dx of [`Depthwise`]; inputs dy and the weights.
struct InputGrad(Depthwise);

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let (n, c, oh, ow) = l1.shape().dims4()?;
        let dy = contiguous_f32(s1, l1, "depthwise-conv2d")?;
        let wt = contiguous_f32(s2, l2, "depthwise-conv2d")?;
        let (h, w) = op.geom.input;
        let phases = op.phases();
        let plan = op.plan(&phases);
        let k = op.taps();
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(dy.par_chunks(oh * ow))
            .enumerate()
            .for_each_init(Vec::new, |buf, (p, (dx, dy))| {
                let taps = &wt[(p % c) * k..][..k];
                // SAFETY: as in the forward pass.
                if op.geom.stride == 1 {
                    unsafe { (op.loops.input_grad)(&plan, dy, taps, dx) };
                } else {
                    buf.resize(h * w, 0.0);
                    unsafe { (op.loops.input_grad)(&plan, dy, taps, buf) };
                    phases.merge(buf, dx);
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

/// dw of [`Depthwise`] as (c, k·k); inputs x and dy.
struct WeightGrad(Depthwise);

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = contiguous_f32(s1, l1, "depthwise-conv2d")?;
        let dy = contiguous_f32(s2, l2, "depthwise-conv2d")?;
        let (oh, ow) = op.geom.output();
        let phases = op.phases();
        let plan = op.plan(&phases);
        let k = op.taps();
        let mut dw = vec![0f32; c * k];
        dw.par_chunks_mut(k).enumerate().for_each(|(ch, dw)| {
            let (mut buf, mut acc) = (Vec::new(), vec![0f32; k * ow]);
            for img in 0..n {
                let p = img * c + ch;
                let src = op.split(&phases, &x[p * h * w..][..h * w], &mut buf);
                let dy = &dy[p * oh * ow..][..oh * ow];
                // SAFETY: as in the forward pass.
                unsafe { (op.loops.weight_grad)(&plan, src, dy, &mut acc) };
            }
            for (d, slot) in dw.iter_mut().zip(acc.chunks(ow)) {
                *d = slot.iter().sum();
            }
        });
        Ok((CpuStorage::F32(dw), Shape::from((c, k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Direct loops in f64: y, and the gradients dx, dw of Σ y·gy.
    fn reference(x: &Tensor, w: &Tensor, gy: &Tensor, s: usize, p: usize) -> [Tensor; 3] {
        let (n, c, h, wd) = x.dims4().unwrap();
        let k = w.dim(2).unwrap();
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gv = gy.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (mut y, mut dx, mut dw) = (
            vec![0f64; n * c * oh * ow],
            vec![0f64; xv.len()],
            vec![0f64; wv.len()],
        );
        for (img, ch, oy, ox, i, j) in (0..n).flat_map(|img| {
            (0..c).flat_map(move |ch| {
                (0..oh).flat_map(move |oy| {
                    (0..ow).flat_map(move |ox| {
                        (0..k).flat_map(move |i| (0..k).map(move |j| (img, ch, oy, ox, i, j)))
                    })
                })
            })
        }) {
            let (iy, ix) = (
                (oy * s + i) as isize - p as isize,
                (ox * s + j) as isize - p as isize,
            );
            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                continue;
            }
            let xi = ((img * c + ch) * h + iy as usize) * wd + ix as usize;
            let (wi, yi) = (ch * k * k + i * k + j, ((img * c + ch) * oh + oy) * ow + ox);
            y[yi] += f64::from(wv[wi]) * f64::from(xv[xi]);
            dx[xi] += f64::from(wv[wi]) * f64::from(gv[yi]);
            dw[wi] += f64::from(xv[xi]) * f64::from(gv[yi]);
        }
        let t = |v: Vec<f64>, shape: &[usize]| {
            let v: Vec<f32> = v.into_iter().map(|v| v as f32).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        [t(y, &[n, c, oh, ow]), t(dx, x.dims()), t(dw, w.dims())]
    }

    fn cases() -> Vec<(usize, usize, usize, usize, usize)> {
        // (c, k, stride, h, w), odd and even sides, planes narrower than a vector.
        vec![
            (3, 3, 1, 7, 9),
            (5, 3, 2, 9, 10),
            (4, 5, 1, 8, 8),
            (4, 5, 2, 11, 11),
            (16, 3, 2, 12, 12),
            (2, 3, 2, 3, 3),
            (2, 5, 1, 2, 2),
            (8, 3, 1, 33, 19),
        ]
    }

    #[test]
    fn forward_and_gradients_match_direct_loops() {
        let dev = Device::Cpu;
        for (c, k, s, h, w) in cases() {
            let x = Var::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap();
            let wt = Var::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
            let (oh, ow) = ((h + 2 * (k / 2) - k) / s + 1, (w + 2 * (k / 2) - k) / s + 1);
            let gy = Tensor::randn(0f32, 1.0, (2, c, oh, ow), &dev).unwrap();
            let [want, dx, dw] = reference(&x, &wt, &gy, s, k / 2);
            let candle = reference_candle(&x, &wt, s, k / 2);
            assert!(crate::model::max_abs_diff(&candle, &want) < 1e-5);
            for isa in [Isa::Portable, Isa::Avx2]
                .into_iter()
                .filter(|i| i.available())
            {
                let got = depthwise_conv2d_with(isa, &x, &wt, s, k / 2).unwrap();
                let d = crate::model::max_abs_diff(&got, &want);
                assert!(
                    d < 1e-5,
                    "c{c} k{k} s{s} {h}×{w} {isa:?}: forward off by {d}"
                );
                let grads = (&got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, v, want) in [("dx", &x, &dx), ("dw", &wt, &dw)] {
                    let d = crate::model::max_abs_diff(grads.get(v).unwrap(), want);
                    assert!(
                        d < 1e-4,
                        "c{c} k{k} s{s} {h}×{w} {isa:?}: {name} off by {d}"
                    );
                }
            }
        }
    }

    /// candle's grouped convolution (forward only: it has no backward pass for groups).
    fn reference_candle(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Tensor {
        x.conv2d(w, pad, stride, 1, x.dim(1).unwrap()).unwrap()
    }

    #[test]
    fn every_path_gives_the_same_bits() {
        if !Isa::Avx2.available() {
            eprintln!("no AVX2 here: only the portable path runs");
            return;
        }
        let dev = Device::Cpu;
        for (c, k, s, h, w) in cases() {
            let x = Var::randn(0f32, 1.0, (3, c, h, w), &dev).unwrap();
            let wt = Var::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
            let run = |isa| {
                let y = depthwise_conv2d_with(isa, &x, &wt, s, k / 2).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                [y, g.get(&x).unwrap().clone(), g.get(&wt).unwrap().clone()]
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            };
            assert_eq!(run(Isa::Portable), run(Isa::Avx2), "c{c} k{k} s{s} {h}×{w}");
        }
    }

    #[test]
    fn phases_split_and_merge_are_inverse() {
        for (s, w) in [(1, 5), (2, 7), (2, 8), (3, 10)] {
            let p = Phases::new(s, w);
            let plane: Vec<f32> = (0..2 * w).map(|v| v as f32).collect();
            let mut split = vec![0.0; plane.len()];
            p.split(&plane, &mut split);
            for (at, &v) in plane.iter().enumerate() {
                assert_eq!(split[p.index(at)], v);
            }
            let mut back = vec![0.0; plane.len()];
            p.merge(&split, &mut back);
            assert_eq!(back, plane);
        }
    }
}
