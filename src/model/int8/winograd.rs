//! Winograd F(2×2, 3×3) for the int8 path's 3×3, stride-1, pad-1 convolutions. In: the
//! quantised, padded image a direct convolution would read and that layer's quantised
//! weights. Out: the same f32 activations as the direct [`gemm`](super::gemm), bit for
//! bit, from 16 multiplies per 2 × 2 outputs instead of 36.
//!
//! Why it is exact. With `G` scaled by 2, both transforms have integer coefficients:
//! a 4 × 4 input tile (zero point removed, |d| ≤ 127) becomes `V = Bᵀ d B` with
//! |V| ≤ 508, and the weights become `U = (2G) g (2G)ᵀ = 4 G g Gᵀ` with |U| ≤ 9 · 127.
//! Both fit in i16, so `vpmaddwd` multiplies them: 16 multiply-adds per instruction,
//! as many as the direct kernel's `vpmaddubsw` + `vpmaddwd` pair gets per instruction,
//! so the 2.25× fewer multiplies are 2.25× less multiplier time. `Aᵀ M A` is then 4×
//! the direct convolution's integer sum. Sums are taken modulo 2³² (wrapping, as
//! `vpaddd` does): intermediate sums may wrap, but the final value is at most
//! 4 · 9 · 127² · c_in in magnitude, which fits in i32 for `c_in` ≤ [`MAX_C_IN`], so
//! it comes out exact; divided by 4 it is the direct sum, and the same f32 epilogue
//! follows.
//!
//! Layout: tiles are transformed a block at a time (`[ξ][tile][channel]`, i16, so that
//! each product reads its rows contiguously), the 16 products `M_ξ = V_ξ · U_ξ` run
//! over the block (`[tile][ξ][out channel]`, i32, so that the output transform reads
//! a tile's 16 rows together), and the output transform writes the block's pixels with
//! the epilogue. Blocks are sized to stay in L2.

use super::gemm::Dequant;
use super::pack::PackedWeights;
use super::Isa;

/// Fewest input channels for which the transforms pay: measured on SmallCnn at 150 px,
/// its 3- and 32-channel layers ran slower through Winograd than direct (the product
/// is too short for the transforms around it), its 64- and 128-channel layers faster.
pub const MIN_C_IN: usize = 64;
/// Largest input channel count whose sums stay exact in i32 (see the module note).
pub const MAX_C_IN: usize = (i32::MAX as usize) / (4 * 9 * 127 * 127);
/// Output channels in one packed block: one AVX2 register of i32 lanes.
const NB: usize = 8;
/// Tile rows the product processes at once; blocks are padded to a multiple of it.
const MR: usize = 6;
/// Tiles transformed and multiplied together: each weight loaded serves this many
/// tiles, while each product's share of the block stays in L1 and L2.
const BLOCK_TILES: usize = 30;

/// `2G`, row-major: the weight transform with integer coefficients.
const G2: [[i32; 3]; 4] = [[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]];

/// One layer's weights, transformed: `[ξ][np / NB][c / 2][NB][2]` so that one AVX2
/// load holds 8 output channels × 2 input channels of one ξ.
#[derive(Debug, Clone)]
pub struct WinogradWeights {
    /// Input channels (even: products take them in pairs).
    c: usize,
    n: usize,
    np: usize,
    data: Vec<i16>,
}

impl WinogradWeights {
    /// Transforms the direct path's quantised weights, whose reduction runs over the 9
    /// taps (row-major) of `c` channels each; `None` where the sums could overflow.
    pub fn new(w: &PackedWeights, c: usize) -> Option<Self> {
        if w.kp != 9 * c || !c.is_multiple_of(2) || c > MAX_C_IN {
            return None;
        }
        let (n, np) = (w.n, w.n.div_ceil(NB) * NB);
        let mut data = vec![0i16; 16 * np * c];
        for o in 0..n {
            for i in 0..c {
                let g = |y: usize, x: usize| i32::from(w.get(o, (y * 3 + x) * c + i));
                for (a, ga) in G2.iter().enumerate() {
                    for (b, gb) in G2.iter().enumerate() {
                        let mut u = 0;
                        for (y, &gy) in ga.iter().enumerate() {
                            for (x, &gx) in gb.iter().enumerate() {
                                u += gy * g(y, x) * gx;
                            }
                        }
                        let xi = a * 4 + b;
                        let at = ((xi * np / NB + o / NB) * (c / 2) + i / 2) * NB * 2
                            + (o % NB) * 2
                            + i % 2;
                        data[at] = i16::try_from(u).expect("|U| ≤ 9 · 127");
                    }
                }
            }
        }
        Some(Self { c, n, np, data })
    }

    /// The weights of one ξ.
    fn xi(&self, xi: usize) -> &[i16] {
        &self.data[xi * self.np * self.c..][..self.np * self.c]
    }
}

/// The quantised input of one convolution: `(h + 3) × wp` pixels of `c` channels,
/// channels last, the image at offset (1, 1), bordered at the zero point, with at least
/// one extra row and column at the bottom and right so that odd sides fill whole tiles.
pub struct Image<'a> {
    pub data: &'a [u8],
    pub zero: u8,
    /// Output (= input) height and width.
    pub h: usize,
    pub w: usize,
    /// Padded row length in pixels, at least `w + 3`.
    pub wp: usize,
}

/// The convolution of each image of a group by `u`, through its own epilogue (images
/// have their own scales), into its output (`[h][w][u.n]`). Tiles of every image share
/// the products, so that deep layers with few tiles per image still reuse each weight
/// often enough to stay ahead of memory.
pub fn conv(isa: Isa, xs: &[Image], u: &WinogradWeights, dqs: &[Dequant], outs: &mut [Vec<f32>]) {
    assert!(xs.len() == dqs.len() && xs.len() == outs.len());
    for (x, out) in xs.iter().zip(outs.iter()) {
        let (th, tw) = (x.h.div_ceil(2), x.w.div_ceil(2));
        assert!(
            (x.h, x.w, x.wp) == (xs[0].h, xs[0].w, xs[0].wp),
            "images are alike"
        );
        assert!(x.wp >= 2 * tw + 2 && x.data.len() >= (2 * th + 2) * x.wp * u.c);
        assert_eq!(out.len(), x.h * x.w * u.n);
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        _ if isa.avx2() => {
            // SAFETY: the CPU has AVX2 (checked in the guard); the images hold every tile
            // (asserted above) and the products' buffers are sized by `run`.
            unsafe { avx2::conv(xs, u, dqs, outs) }
        }
        _ => run(xs, u, dqs, outs, &Portable),
    }
}

/// The three steps of a block, as one kernel path implements them.
trait Steps {
    /// `V = Bᵀ d B` of the 4 × 4 pixels from `at` of the padded image, zero point
    /// removed, into `v`: `V_ξ` at `ξ · stride`.
    fn input(&self, x: &Image, c: usize, at: (usize, usize), v: &mut [i16], stride: usize);

    /// The product of one ξ, into `m`: row `r` at `r · 16 · p.np` (a block's products
    /// are `[tile][ξ][out channel]`).
    fn product(&self, p: &Xi, m: &mut [i32]);

    /// `Aᵀ M A / 4` of one tile's products (`m`: `[ξ][np]`), through the epilogue, into
    /// the 2 × 2 output pixels from `at` that lie inside the image.
    fn output(
        &self,
        x: &Image,
        u: &WinogradWeights,
        dq: &Dequant,
        m: &[i32],
        at: (usize, usize),
        out: &mut [f32],
    );
}

/// The product of one ξ, `m[r][o] = Σ_i v[r][i] · u[o][i]` over `rows` rows of `k`
/// values each, stored one after another; `u` as [`WinogradWeights`] packs it.
struct Xi<'a> {
    v: &'a [i16],
    rows: usize,
    /// Reduction length (input channels, even).
    k: usize,
    u: &'a [i16],
    /// Output channels, padded to whole blocks.
    np: usize,
}

fn run(xs: &[Image], u: &WinogradWeights, dqs: &[Dequant], outs: &mut [Vec<f32>], k: &impl Steps) {
    let Some(first) = xs.first() else { return };
    let tw = first.w.div_ceil(2);
    let per_image = first.h.div_ceil(2) * tw;
    let tiles = per_image * xs.len();
    // Image, pixel of tile `t`.
    let at = |t: usize| {
        let (g, t) = (t / per_image, t % per_image);
        (g, (2 * (t / tw), 2 * (t % tw)))
    };
    let block = BLOCK_TILES.min(tiles.div_ceil(MR) * MR);
    let mut v = vec![0i16; block * 16 * u.c];
    let mut m = vec![0i32; block * 16 * u.np];
    for t0 in (0..tiles).step_by(block) {
        let count = block.min(tiles - t0);
        for t in 0..count {
            let (g, px) = at(t0 + t);
            k.input(&xs[g], u.c, px, &mut v[t * u.c..], block * u.c);
        }
        let rows = count.div_ceil(MR) * MR;
        for xi in 0..16 {
            let p = Xi {
                v: &v[xi * block * u.c..],
                rows,
                k: u.c,
                u: u.xi(xi),
                np: u.np,
            };
            k.product(&p, &mut m[xi * u.np..]);
        }
        for (t, m) in m.chunks_exact(16 * u.np).take(count).enumerate() {
            let (g, px) = at(t0 + t);
            k.output(&xs[g], u, &dqs[g], m, px, &mut outs[g]);
        }
    }
}

/// The reference path, the one every other must equal.
struct Portable;

impl Steps for Portable {
    fn input(&self, x: &Image, c: usize, at: (usize, usize), v: &mut [i16], stride: usize) {
        input_channels::<4>(x, c, at, 0, v, stride);
    }

    /// In wrapping i32, as the vector path sums.
    fn product(&self, p: &Xi, m: &mut [i32]) {
        for r in 0..p.rows {
            let v = &p.v[r * p.k..][..p.k];
            for o in 0..p.np {
                let acc = v.iter().enumerate().fold(0i32, |acc, (i, &x)| {
                    let w = p.u[((o / NB) * (p.k / 2) + i / 2) * NB * 2 + (o % NB) * 2 + i % 2];
                    acc.wrapping_add(i32::from(x) * i32::from(w))
                });
                m[r * 16 * p.np + o] = acc;
            }
        }
    }

    fn output(
        &self,
        x: &Image,
        u: &WinogradWeights,
        dq: &Dequant,
        m: &[i32],
        (y, x0): (usize, usize),
        out: &mut [f32],
    ) {
        for o0 in (0..u.n).step_by(NB) {
            let mut s = [[[0i32; NB]; 4]; 4];
            for (xi, s) in s.iter_mut().flatten().enumerate() {
                s.copy_from_slice(&m[xi * u.np + o0..][..NB]);
            }
            // Aᵀ on columns, then A on rows: (s0 + s1 + s2, s1 − s2 − s3), wrapping.
            let at = |a: &[i32; NB], b: &[i32; NB], c: &[i32; NB], d: &[i32; NB]| {
                let mut r = [[0i32; NB]; 2];
                for k in 0..NB {
                    r[0][k] = a[k].wrapping_add(b[k]).wrapping_add(c[k]);
                    r[1][k] = b[k].wrapping_sub(c[k]).wrapping_sub(d[k]);
                }
                r
            };
            let mut cols = [[[0i32; NB]; 4]; 2];
            for j in 0..4 {
                let t = at(&s[0][j], &s[1][j], &s[2][j], &s[3][j]);
                cols[0][j] = t[0];
                cols[1][j] = t[1];
            }
            let width = NB.min(u.n - o0);
            for (i, row) in cols.iter().enumerate() {
                for (j, acc) in at(&row[0], &row[1], &row[2], &row[3]).iter().enumerate() {
                    let (py, px) = (y + i, x0 + j);
                    if py < x.h && px < x.w {
                        let dst = &mut out[(py * x.w + px) * u.n + o0..][..width];
                        for (k, d) in dst.iter_mut().enumerate() {
                            *d = dq.apply(acc[k] >> 2, o0 + k);
                        }
                    }
                }
            }
        }
    }
}

/// [`Steps::input`] on the channels from `c0`, `CH` at a time.
#[inline(always)]
fn input_channels<const CH: usize>(
    x: &Image,
    c: usize,
    (y, x0): (usize, usize),
    c0: usize,
    v: &mut [i16],
    stride: usize,
) {
    for c0 in (c0..c).step_by(CH) {
        input_chunk::<CH>(x, c, (y, x0, c0), v, stride);
    }
}

#[inline(always)]
fn input_chunk<const CH: usize>(
    x: &Image,
    c: usize,
    (y, x0, c0): (usize, usize, usize),
    v: &mut [i16],
    stride: usize,
) {
    let z = i16::from(x.zero);
    let mut d = [[[0i16; CH]; 4]; 4];
    for (i, row) in d.iter_mut().enumerate() {
        for (j, px) in row.iter_mut().enumerate() {
            let src = &x.data[((y + i) * x.wp + x0 + j) * c + c0..][..CH];
            for (p, &s) in px.iter_mut().zip(src) {
                *p = i16::from(s) - z;
            }
        }
    }
    // Bᵀ on columns, then B on rows: (d0 − d2, d1 + d2, d2 − d1, d1 − d3).
    let bt = |a: &[i16; CH], b: &[i16; CH], c: &[i16; CH], d: &[i16; CH]| {
        let mut r = [[0i16; CH]; 4];
        for k in 0..CH {
            r[0][k] = a[k] - c[k];
            r[1][k] = b[k] + c[k];
            r[2][k] = c[k] - b[k];
            r[3][k] = b[k] - d[k];
        }
        r
    };
    let mut cols = [[[0i16; CH]; 4]; 4];
    for j in 0..4 {
        let t = bt(&d[0][j], &d[1][j], &d[2][j], &d[3][j]);
        for a in 0..4 {
            cols[a][j] = t[a];
        }
    }
    for (a, row) in cols.iter().enumerate() {
        for (b, t) in bt(&row[0], &row[1], &row[2], &row[3]).iter().enumerate() {
            v[(a * 4 + b) * stride + c0..][..CH].copy_from_slice(t);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{run, Dequant, Image, Steps, WinogradWeights, Xi, MR, NB};
    use crate::model::int8::gemm::avx2::store as epilogue;

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn conv(
        xs: &[Image],
        u: &WinogradWeights,
        dqs: &[Dequant],
        outs: &mut [Vec<f32>],
    ) {
        run(xs, u, dqs, outs, &Avx2(()))
    }

    /// The AVX2 path; made only in [`conv`], on a CPU with AVX2.
    struct Avx2(());

    impl Steps for Avx2 {
        fn input(&self, x: &Image, c: usize, at: (usize, usize), v: &mut [i16], stride: usize) {
            // SAFETY: the CPU has AVX2 (an `Avx2` exists); `super::conv` asserted that
            // the image holds every tile `run` passes.
            unsafe { input_tile(x, c, at, v, stride) }
        }

        fn product(&self, p: &Xi, m: &mut [i32]) {
            // SAFETY: the CPU has AVX2; `run` sizes `m` and `p.v` for every row.
            unsafe { product(p, m) }
        }

        fn output(
            &self,
            x: &Image,
            u: &WinogradWeights,
            dq: &Dequant,
            m: &[i32],
            at: (usize, usize),
            out: &mut [f32],
        ) {
            // SAFETY: the CPU has AVX2; `run` passes a whole tile's products and
            // `super::conv` asserted the output's size.
            unsafe { output_tile(x, u, dq, m, at, out) }
        }
    }

    /// [`Steps::input`] on 16 channels at a time.
    #[target_feature(enable = "avx2")]
    unsafe fn input_tile(
        x: &Image,
        c: usize,
        (y, x0): (usize, usize),
        v: &mut [i16],
        stride: usize,
    ) {
        let z = _mm256_set1_epi16(i16::from(x.zero));
        let mut c0 = 0;
        while c0 + 16 <= c {
            // Bᵀ down each column j of pixels: cols[j][a].
            let cols: [[__m256i; 4]; 4] = std::array::from_fn(|j| {
                bt(std::array::from_fn(|i| {
                    let at = ((y + i) * x.wp + x0 + j) * c + c0;
                    let px = _mm_loadu_si128(x.data.as_ptr().add(at) as *const __m128i);
                    _mm256_sub_epi16(_mm256_cvtepu8_epi16(px), z)
                }))
            });
            let t: [[__m256i; 4]; 4] = std::array::from_fn(|a| std::array::from_fn(|j| cols[j][a]));
            for (a, row) in t.iter().enumerate() {
                for (b, val) in bt(*row).iter().enumerate() {
                    let dst = &mut v[(a * 4 + b) * stride + c0..][..16];
                    _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, *val);
                }
            }
            c0 += 16;
        }
        super::input_channels::<4>(x, c, (y, x0), c0, v, stride);
    }

    /// Bᵀ on four vectors: (d0 − d2, d1 + d2, d2 − d1, d1 − d3).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn bt(d: [__m256i; 4]) -> [__m256i; 4] {
        [
            _mm256_sub_epi16(d[0], d[2]),
            _mm256_add_epi16(d[1], d[2]),
            _mm256_sub_epi16(d[2], d[1]),
            _mm256_sub_epi16(d[1], d[3]),
        ]
    }

    /// Aᵀ on four vectors: (s0 + s1 + s2, s1 − s2 − s3).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn at(s: [__m256i; 4]) -> [__m256i; 2] {
        [
            _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), s[2]),
            _mm256_sub_epi32(_mm256_sub_epi32(s[1], s[2]), s[3]),
        ]
    }

    /// [`Steps::output`] on 8 channels at a time, through the direct path's
    /// epilogue.
    #[target_feature(enable = "avx2")]
    unsafe fn output_tile(
        x: &Image,
        u: &WinogradWeights,
        dq: &Dequant,
        m: &[i32],
        (y, x0): (usize, usize),
        out: &mut [f32],
    ) {
        assert!(m.len() >= 16 * u.np);
        for o0 in (0..u.n).step_by(NB) {
            let s =
                |xi: usize| _mm256_loadu_si256(m.as_ptr().add(xi * u.np + o0) as *const __m256i);
            // Aᵀ down each column j of products, then the rows of the result.
            let down: [[__m256i; 2]; 4] =
                std::array::from_fn(|j| at([s(j), s(4 + j), s(8 + j), s(12 + j)]));
            let cols: [[__m256i; 4]; 2] =
                std::array::from_fn(|i| std::array::from_fn(|j| down[j][i]));
            for (i, row) in cols.iter().enumerate() {
                for (j, acc) in at(*row).iter().enumerate() {
                    let (py, px) = (y + i, x0 + j);
                    if py < x.h && px < x.w {
                        let acc = _mm256_srai_epi32::<2>(*acc);
                        // SAFETY: same layout; the epilogue writes only initialised
                        // values, so `out` stays initialised.
                        let out = &mut *(out as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]);
                        epilogue(dq, acc, o0, u.n, out, (py * x.w + px) * u.n);
                    }
                }
            }
        }
    }

    /// Tiles of MR rows × 16 output channels (two blocks), 8 at the tail.
    #[target_feature(enable = "avx2")]
    unsafe fn product(p: &Xi, m: &mut [i32]) {
        let blocks = p.np / NB;
        let panel = p.k * NB;
        let mut b = 0;
        while b < blocks {
            let w0 = p.u.as_ptr().add(b * panel);
            let width = (blocks - b).min(2);
            for r0 in (0..p.rows).step_by(MR) {
                match width {
                    2 => store(p, m, r0, b, tile::<2>(p, r0, w0, panel)),
                    _ => store(p, m, r0, b, tile::<1>(p, r0, w0, panel)),
                }
            }
            b += width;
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tile<const B: usize>(
        p: &Xi,
        r0: usize,
        w0: *const i16,
        panel: usize,
    ) -> [[__m256i; B]; MR] {
        let mut acc = [[_mm256_setzero_si256(); B]; MR];
        let mut rows = [p.v.as_ptr(); MR];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = row.add((r0 + r) * p.k);
        }
        let mut wp = w0;
        for pair in 0..p.k / 2 {
            let mut wv = [_mm256_setzero_si256(); B];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(wp.add(j * panel) as *const __m256i);
            }
            for r in 0..MR {
                let two = (rows[r].add(2 * pair) as *const i32).read_unaligned();
                let x = _mm256_set1_epi32(two);
                for j in 0..B {
                    acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(x, wv[j]));
                }
            }
            wp = wp.add(NB * 2);
        }
        acc
    }

    #[target_feature(enable = "avx2")]
    unsafe fn store<const B: usize>(
        p: &Xi,
        m: &mut [i32],
        r0: usize,
        b: usize,
        acc: [[__m256i; B]; MR],
    ) {
        for (r, acc) in acc.iter().enumerate() {
            for (j, acc) in acc.iter().enumerate() {
                let at = (r0 + r) * 16 * p.np + (b + j) * NB;
                _mm256_storeu_si256(m.as_mut_ptr().add(at) as *mut __m256i, *acc);
            }
        }
    }
}
