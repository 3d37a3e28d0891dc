//! The one matrix product every int8 layer runs. In: activation rows quantised to u8
//! (an im2col matrix, one row per output pixel) and weights quantised to i8 per output
//! channel and packed. Out: f32 rows, dequantised, with the bias and the activation (none,
//! ReLU or ReLU6) applied in the same pass.
//!
//! Weights are quantised to 8 bits (±127) per output channel, activations to 7 bits
//! (0..=127): AVX2's `vpmaddubsw` adds two u8×i8 products into an i16, which 255·127·2
//! would overflow while 127·127·2 cannot. Where the CPU has AVX-512 VNNI, `vpdpbusd`
//! sums four products straight into i32, 16 channels per instruction where AVX2 takes
//! three for 8; the sums are the same. Measured on the shipped kather8 model over
//! the 228 real Kather tiles, 7-bit weights changed 4 tiles' class against f32 and 8-bit
//! weights none, while 7- and 8-bit activations made no difference. Every path computes the same
//! integers and the same f32 epilogue (a multiply, then an add: never fused), so all
//! paths give bit-identical results, and tests compare them exactly.

use std::mem::MaybeUninit;

use super::pack::{PackedWeights, KG, NB};
use super::Isa;
use crate::model::layers::Activation;

/// i32 lanes of one AVX2 register.
const LANES: usize = 8;
/// Activation rows the kernels process at once; callers pad rows to a multiple of it.
/// Six, not four: each weight vector loaded serves 1.5× the rows, and on the AVX-512
/// path (24 accumulators of 32 registers) ResNet-18 150 px ran 397–444 images/s
/// against 327–407 with four, MobileNetV2 1,082–1,124 against 1,002–1,034 (interleaved
/// runs, `cargo bench --bench models`, 2 cores of an Intel Xeon); AVX2 (12 of 16) was
/// unchanged.
pub const MR: usize = 6;
/// Activation bytes kept hot while every weight block passes over them: a quarter of
/// Zen 3's 512 KiB L2, leaving room for a 16-channel weight panel of the deepest
/// ResNet layers (16 × 4608 bytes).
const CHUNK_BYTES: usize = 128 * 1024;
/// The same for the AVX-512 path, whose CPUs have 1–2 MiB of L2 (Ice Lake and later,
/// Zen 4) and whose 64-channel tiles stream the weights faster: chunks that span several
/// images of a group read a deep layer's weights once for all of them.
const AVX512_CHUNK_BYTES: usize = 512 * 1024;
/// Largest quantised activation (7 bits; see the module note). Callers must keep
/// activations in `0..=AMAX`.
pub const AMAX: u8 = 127;

/// How rows of quantised activations map back to real values: `(q - zero) · scale`.
#[derive(Debug, Clone, Copy)]
pub struct Quant {
    pub scale: f32,
    pub zero: u8,
}

/// The activation matrix of one product, read in place from a quantised image: row `r`
/// is the concatenation of `segments.len()` runs of `run` bytes, the `j`-th at
/// `src[starts[r] + segments[j]..]`. A convolution's rows are its receptive fields
/// (one run per kernel tap, over the input's channels), so no im2col copy is made.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub src: &'a [u8],
    pub starts: &'a [usize],
    pub segments: &'a [usize],
    pub run: usize,
}

/// For each image `g` of a group, `out[r][o] = act((Σ_i (a[r][i] - zero)·w[o][i]) ·
/// scale_a · scale_w[o] + bias[o])` for every row of `a = rows[g]` (their count a
/// multiple of [`MR`]), with the zero point, scales and bias of `dqs[g]`
/// ([`Epilogue::dequant`]); each `out` is `[rows][w.n]`, new. One pass over the
/// weights serves the group: a chunk of rows spans images where they are few, so a
/// deep layer's weights are read from memory once per chunk, not once per image.
pub fn products(isa: Isa, rows: &[Rows], w: &PackedWeights, dqs: &[Dequant]) -> Vec<Vec<f32>> {
    assert_eq!(rows.len(), dqs.len(), "one dequantisation per image");
    // Left unwritten, not zeroed: zeroing every layer's output was 5 % of the CPU time
    // of a ResNet-18 heatmap (perf), for values the product overwrites.
    let lens: Vec<usize> = rows.iter().map(|a| a.starts.len() * w.n).collect();
    let mut outs: Vec<Vec<f32>> = lens.iter().map(|&len| Vec::with_capacity(len)).collect();
    let mut slots: Vec<&mut [MaybeUninit<f32>]> = (outs.iter_mut().zip(&lens))
        .map(|(out, &len)| &mut out.spare_capacity_mut()[..len])
        .collect();
    gemm(isa, rows, w, dqs, &mut slots);
    for (out, len) in outs.iter_mut().zip(lens) {
        // SAFETY: every path writes all `len` values: each tile of MR rows (the rows
        // are a multiple of MR) in each block of channels, every channel below `n`
        // (the test `every_path_equals_the_portable_one_bit_for_bit` fills the output
        // with NaN and finds none left).
        unsafe { out.set_len(len) };
    }
    outs
}

/// [`products`] into `outs`, whose values it all writes.
fn gemm(
    isa: Isa,
    rows: &[Rows],
    w: &PackedWeights,
    dqs: &[Dequant],
    outs: &mut [&mut [MaybeUninit<f32>]],
) {
    for (a, out) in rows.iter().zip(outs.iter()) {
        let m = a.starts.len();
        assert!(m.is_multiple_of(MR) && out.len() >= m * w.n && a.run.is_multiple_of(KG));
        assert_eq!(
            a.segments.len() * a.run,
            w.kp,
            "rows are as long as the weights"
        );
        let last = a.starts.iter().max().unwrap_or(&0) + a.segments.iter().max().unwrap_or(&0);
        assert!(
            m == 0 || last + a.run <= a.src.len(),
            "rows lie inside the image"
        );
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY (both arms): the CPU runs the path (checked in the guard); every row
        // run lies inside its image and every `out` holds every row (asserted above).
        Isa::Avx512Vnni if isa.available() => unsafe {
            avx512::gemm(
                rows,
                w,
                dqs,
                outs,
                &tiles(rows),
                per_chunk(w, AVX512_CHUNK_BYTES),
            )
        },
        #[cfg(target_arch = "x86_64")]
        _ if isa.avx2() => unsafe {
            avx2::gemm(rows, w, dqs, outs, &tiles(rows), per_chunk(w, CHUNK_BYTES))
        },
        _ => {
            for ((a, dq), out) in rows.iter().zip(dqs).zip(outs.iter_mut()) {
                portable(*a, w, dq, out);
            }
        }
    }
}

/// The group's tiles of [`MR`] rows, `(image, first row)`, in order.
fn tiles(rows: &[Rows]) -> Vec<(usize, usize)> {
    (rows.iter().enumerate())
        .flat_map(|(g, a)| (0..a.starts.len()).step_by(MR).map(move |r0| (g, r0)))
        .collect()
}

/// Tiles in a chunk of at most `bytes` of activation rows, which every weight block
/// passes over while they stay in L2.
fn per_chunk(w: &PackedWeights, bytes: usize) -> usize {
    (bytes / w.kp.max(1) / MR).max(1)
}

/// A layer's dequantising epilogue: bias and activation, padded to whole blocks.
#[derive(Debug, Clone)]
pub struct Epilogue {
    bias: Vec<f32>,
    clip: Clip,
}

impl Epilogue {
    pub fn new(w: &PackedWeights, bias: &[f32], act: Activation) -> Self {
        assert_eq!(bias.len(), w.n);
        let mut bias = bias.to_vec();
        bias.resize(w.np, 0.0);
        Self {
            bias,
            clip: Clip::of(act),
        }
    }

    /// The per-channel constants of one call, from the activations' scale and zero
    /// point, computed once so that every path applies exactly the same f32 operations.
    /// `shift` (one value per channel) is added to the bias.
    pub(super) fn dequant(&self, q: Quant, w: &PackedWeights, shift: &[f32]) -> Dequant {
        let mut offset: Vec<i32> = w.colsum.iter().map(|c| i32::from(q.zero) * c).collect();
        let mut mult: Vec<f32> = w.scale.iter().map(|s| q.scale * s).collect();
        offset.resize(w.np, 0);
        mult.resize(w.np, 0.0);
        let mut bias = self.bias.clone();
        bias.iter_mut().zip(shift).for_each(|(b, s)| *b += s);
        Dequant {
            offset,
            mult,
            bias,
            clip: self.clip,
        }
    }
}

/// An activation as the interval it clips to; infinite bounds leave values as they are,
/// so every path applies the same two operations whatever the activation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clip {
    pub lo: f32,
    pub hi: f32,
}

impl Clip {
    pub fn of(act: Activation) -> Self {
        let (lo, hi) = match act {
            Activation::Linear => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
        };
        Self { lo, hi }
    }

    /// By comparisons rather than `f32::max` and `min`, whose NaN rule keeps them from
    /// compiling to one vector instruction each (activations are never NaN).
    pub fn apply(self, y: f32) -> f32 {
        let y = if y > self.lo { y } else { self.lo };
        if y < self.hi {
            y
        } else {
            self.hi
        }
    }
}

pub(super) struct Dequant {
    /// zero point × column sum, subtracted from each accumulator.
    offset: Vec<i32>,
    mult: Vec<f32>,
    bias: Vec<f32>,
    clip: Clip,
}

impl Dequant {
    pub(super) fn apply(&self, acc: i32, o: usize) -> f32 {
        let y = (acc - self.offset[o]) as f32 * self.mult[o] + self.bias[o];
        self.clip.apply(y)
    }
}

/// The reference every other path must equal.
fn portable(a: Rows, w: &PackedWeights, dq: &Dequant, out: &mut [MaybeUninit<f32>]) {
    for (r, &start) in a.starts.iter().enumerate() {
        for o in 0..w.n {
            let mut acc = 0i32;
            for (j, &seg) in a.segments.iter().enumerate() {
                let run = &a.src[start + seg..][..a.run];
                for (i, &v) in run.iter().enumerate() {
                    acc += i32::from(v) * i32::from(w.get(o, j * a.run + i));
                }
            }
            out[r * w.n + o].write(dq.apply(acc, o));
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::{Dequant, MaybeUninit, PackedWeights, Rows, KG, LANES, MR, NB};

    /// Chunk by chunk of row tiles, each weight block over the chunk's tiles of MR rows
    /// (two vectors of channels).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemm(
        rows: &[Rows],
        w: &PackedWeights,
        dqs: &[Dequant],
        outs: &mut [&mut [MaybeUninit<f32>]],
        tiles: &[(usize, usize)],
        per_chunk: usize,
    ) {
        let (blocks, panel) = w.blocks();
        for chunk in tiles.chunks(per_chunk) {
            for b in 0..blocks {
                let w0 = w.data.as_ptr().add(b * panel);
                for &(g, r0) in chunk {
                    let acc = tile(&rows[g], r0, w0);
                    for (r, acc) in acc.iter().enumerate() {
                        for (j, &acc) in acc.iter().enumerate() {
                            let (o0, row) = (b * NB + j * LANES, (r0 + r) * w.n);
                            store(&dqs[g], acc, o0, w.n, outs[g], row);
                        }
                    }
                }
            }
        }
    }

    /// Integer sums of rows `r0..r0 + MR` against the weight block at `w0`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tile(a: &Rows, r0: usize, w0: *const i8) -> [[__m256i; 2]; MR] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let mut wp = w0;
        for &seg in a.segments {
            let mut rows = [a.src.as_ptr(); MR];
            for (r, p) in rows.iter_mut().enumerate() {
                *p = p.add(a.starts[r0 + r] + seg);
            }
            for g in 0..a.run / KG {
                let wv = [0, LANES * KG].map(|at| _mm256_loadu_si256(wp.add(at) as *const __m256i));
                for r in 0..MR {
                    let four = (rows[r].add(g * KG) as *const i32).read_unaligned();
                    let x = _mm256_set1_epi32(four);
                    for (acc, &w) in acc[r].iter_mut().zip(&wv) {
                        // Pairs of u8 × i8 products to i16 (7-bit activations cannot
                        // saturate them), pairs of those to i32.
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones);
                        *acc = _mm256_add_epi32(*acc, p);
                    }
                }
                wp = wp.add(NB * KG);
            }
        }
        acc
    }

    /// The epilogue on 8 channels from `o0`, as [`Dequant::apply`] computes it; only
    /// the channels below `n` are written (none when `o0 ≥ n`: a block's padding).
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(in super::super) unsafe fn store(
        dq: &Dequant,
        acc: __m256i,
        o0: usize,
        n: usize,
        out: &mut [MaybeUninit<f32>],
        row: usize,
    ) {
        if o0 >= n {
            return;
        }
        let off = _mm256_loadu_si256(dq.offset.as_ptr().add(o0) as *const __m256i);
        let mult = _mm256_loadu_ps(dq.mult.as_ptr().add(o0));
        let bias = _mm256_loadu_ps(dq.bias.as_ptr().add(o0));
        let x = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, off));
        let y = _mm256_add_ps(_mm256_mul_ps(x, mult), bias);
        let y = _mm256_min_ps(
            _mm256_max_ps(y, _mm256_set1_ps(dq.clip.lo)),
            _mm256_set1_ps(dq.clip.hi),
        );
        if o0 + LANES <= n {
            _mm256_storeu_ps(out.as_mut_ptr().add(row + o0).cast(), y);
        } else {
            let mut tmp = [0f32; LANES];
            _mm256_storeu_ps(tmp.as_mut_ptr(), y);
            for (o, v) in out[row + o0..row + n].iter_mut().zip(tmp) {
                o.write(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::store;
    use super::{Dequant, MaybeUninit, PackedWeights, Rows, KG, LANES, MR, NB};

    /// Chunk by chunk of row tiles, up to four weight blocks at a time (24 accumulators
    /// of AVX-512's 32 registers), fewer at the tail, over the chunk's tiles of MR rows.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn gemm(
        rows: &[Rows],
        w: &PackedWeights,
        dqs: &[Dequant],
        outs: &mut [&mut [MaybeUninit<f32>]],
        tiles: &[(usize, usize)],
        per_chunk: usize,
    ) {
        let (blocks, panel) = w.blocks();
        for chunk in tiles.chunks(per_chunk) {
            let mut b = 0;
            while b < blocks {
                let width = [4, 2, 1]
                    .into_iter()
                    .find(|&x| x <= blocks - b)
                    .unwrap_or(1);
                let w0 = w.data.as_ptr().add(b * panel);
                for &(g, r0) in chunk {
                    let (a, dq, out) = (&rows[g], &dqs[g], &mut *outs[g]);
                    match width {
                        4 => store_tile(dq, tile::<4>(a, r0, w0, panel), b, w.n, out, r0),
                        2 => store_tile(dq, tile::<2>(a, r0, w0, panel), b, w.n, out, r0),
                        _ => store_tile(dq, tile::<1>(a, r0, w0, panel), b, w.n, out, r0),
                    }
                }
                b += width;
            }
        }
    }

    /// Integer sums of rows `r0..r0 + MR` against `B` consecutive weight blocks.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn tile<const B: usize>(
        a: &Rows,
        r0: usize,
        w0: *const i8,
        panel: usize,
    ) -> [[__m512i; B]; MR] {
        let mut acc = [[_mm512_setzero_si512(); B]; MR];
        let mut wp = w0;
        for &seg in a.segments {
            let mut rows = [a.src.as_ptr(); MR];
            for (r, p) in rows.iter_mut().enumerate() {
                *p = p.add(a.starts[r0 + r] + seg);
            }
            for g in 0..a.run / KG {
                let mut wv = [_mm512_setzero_si512(); B];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(wp.add(j * panel) as *const _);
                }
                for r in 0..MR {
                    let four = (rows[r].add(g * KG) as *const i32).read_unaligned();
                    let x = _mm512_set1_epi32(four);
                    for j in 0..B {
                        acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], x, wv[j]);
                    }
                }
                wp = wp.add(NB * KG);
            }
        }
        acc
    }

    /// The epilogue of a tile from block `b`, rows from `r0`, as the AVX2 path applies
    /// it (8 channels at a time).
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn store_tile<const B: usize>(
        dq: &Dequant,
        acc: [[__m512i; B]; MR],
        b: usize,
        n: usize,
        out: &mut [MaybeUninit<f32>],
        r0: usize,
    ) {
        for (r, acc) in acc.iter().enumerate() {
            for (j, &acc) in acc.iter().enumerate() {
                let (o0, row) = ((b + j) * NB, (r0 + r) * n);
                store(dq, _mm512_castsi512_si256(acc), o0, n, out, row);
                let hi = _mm512_extracti64x4_epi64::<1>(acc);
                store(dq, hi, o0 + LANES, n, out, row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product of one image.
    fn product(isa: Isa, a: Rows, w: &PackedWeights, dq: &Dequant) -> Vec<f32> {
        products(isa, &[a], w, std::slice::from_ref(dq)).remove(0)
    }
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn case(
        m: usize,
        n: usize,
        k: usize,
        zero: u8,
        seed: u64,
    ) -> (Vec<u8>, PackedWeights, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let packed = PackedWeights::new(&w, n, k);
        let mut a = vec![zero; m * packed.kp];
        for r in 0..m {
            for i in 0..k {
                a[r * packed.kp + i] = rng.random_range(0..=AMAX);
            }
        }
        let bias = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        (a, packed, bias)
    }

    #[test]
    fn every_path_equals_the_portable_one_bit_for_bit() {
        // Channel counts that are not multiples of the 16-channel block or the 8-lane
        // vector, reductions that are not multiples of 4, with and without a zero point.
        // Rows in whole tiles of MR.
        for (i, &(m, n, k)) in [
            (MR, 8, 4),
            (2 * MR, 16, 27),
            (3 * MR, 24, 147),
            (MR, 3, 5),
            (4 * MR, 64, 576),
            // Five blocks: a tile of four, then one.
            (2 * MR, 80, 36),
            // Deeper than one L2 chunk of rows holds, so rows come in several chunks.
            (16 * MR, 24, 4608),
        ]
        .iter()
        .enumerate()
        {
            for zero in [0u8, 64] {
                let (a, w, bias) = case(m, n, k, zero, i as u64);
                let q = Quant { scale: 0.02, zero };
                let ep = Epilogue::new(
                    &w,
                    &bias,
                    if zero == 0 {
                        Activation::Relu
                    } else {
                        Activation::Relu6
                    },
                );
                let starts: Vec<usize> = (0..m).map(|r| r * w.kp).collect();
                let rows = Rows {
                    src: &a,
                    starts: &starts,
                    segments: &[0],
                    run: w.kp,
                };
                let run = |isa| {
                    // NaN wherever a path leaves a value unwritten.
                    let mut out = vec![MaybeUninit::new(f32::NAN); m * n];
                    let dq = ep.dequant(q, &w, &[]);
                    gemm(isa, &[rows], &w, &[dq], &mut [&mut out]);
                    // SAFETY: every value was initialised (to NaN, then perhaps over).
                    out.into_iter()
                        .map(|v| unsafe { v.assume_init() })
                        .collect::<Vec<_>>()
                };
                let reference = run(Isa::Portable);
                assert!(reference.iter().all(|v| v.is_finite()));
                for isa in Isa::ALL {
                    if isa.available() {
                        assert_eq!(run(isa), reference, "{isa:?} m={m} n={n} k={k}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_group_gives_what_its_images_give_alone() {
        // Deep rows, so that a chunk holds a few tiles and chunks start and end inside
        // images of 3 tiles each.
        let (images, m, k, n) = (5, 3 * MR, 4608, 40);
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = PackedWeights::new(&w, n, k);
        let ep = Epilogue::new(&w, &vec![0.1; n], Activation::Linear);
        let srcs: Vec<Vec<u8>> = (0..images)
            .map(|_| (0..m * k).map(|_| rng.random_range(0..=AMAX)).collect())
            .collect();
        let starts: Vec<usize> = (0..m).map(|r| r * k).collect();
        let rows: Vec<Rows> = (srcs.iter())
            .map(|src| Rows {
                src,
                starts: &starts,
                segments: &[0],
                run: k,
            })
            .collect();
        let dqs: Vec<Dequant> = (0..images)
            .map(|g| {
                let q = Quant {
                    scale: 0.01 * (g + 1) as f32,
                    zero: g as u8,
                };
                ep.dequant(q, &w, &[])
            })
            .collect();
        let tiles = per_chunk(&w, CHUNK_BYTES);
        assert!(
            tiles > m / MR && !tiles.is_multiple_of(m / MR),
            "{tiles} tiles a chunk"
        );
        let alone: Vec<Vec<f32>> = (rows.iter().zip(&dqs))
            .map(|(a, dq)| product(Isa::Portable, *a, &w, dq))
            .collect();
        for isa in Isa::ALL {
            if isa.available() {
                assert_eq!(products(isa, &rows, &w, &dqs), alone, "{isa:?}");
            }
        }
    }

    #[test]
    fn dequantised_product_is_close_to_the_f32_one() {
        let (m, n, k) = (2 * MR, 16, 72);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.5..0.5)).collect();
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let packed = PackedWeights::new(&w, n, k);
        let q = Quant {
            scale: 1.0 / 63.0,
            zero: 64,
        };
        let mut a = vec![0u8; m * packed.kp];
        for r in 0..m {
            for i in 0..k {
                a[r * packed.kp + i] = ((x[r * k + i] / q.scale).round() + 64.0) as u8;
            }
        }
        let starts: Vec<usize> = (0..m).map(|r| r * packed.kp).collect();
        let rows = Rows {
            src: &a,
            starts: &starts,
            segments: &[0],
            run: packed.kp,
        };
        let ep = Epilogue::new(&packed, &vec![0.0; n], Activation::Linear);
        let out = product(Isa::detect(), rows, &packed, &ep.dequant(q, &packed, &[]));
        for r in 0..m {
            for o in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum();
                let got = out[r * n + o];
                assert!((got - want).abs() < 0.05, "({r}, {o}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn rows_read_in_place_equal_copied_rows() {
        // Rows made of runs scattered over an image, overlapping as a convolution's
        // receptive fields do, give what the same rows copied out contiguously give.
        let (c, taps, m, n) = (8, [0usize, 8, 40, 48], 2 * MR, 10);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let image: Vec<u8> = (0..200).map(|_| rng.random_range(0..=AMAX)).collect();
        let starts: Vec<usize> = (0..m).map(|r| r * 8).collect();
        let mut copied = Vec::new();
        for &s in &starts {
            for &t in &taps {
                copied.extend_from_slice(&image[s + t..][..c]);
            }
        }
        let w: Vec<f32> = (0..n * 32).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = PackedWeights::new(&w, n, 32);
        let ep = Epilogue::new(&w, &vec![0.5; n], Activation::Relu);
        let q = Quant {
            scale: 0.1,
            zero: 0,
        };
        let contiguous: Vec<usize> = (0..m).map(|r| r * 32).collect();
        for isa in Isa::ALL {
            if !isa.available() {
                continue;
            }
            let rows = Rows {
                src: &image,
                starts: &starts,
                segments: &taps,
                run: c,
            };
            let scattered = product(isa, rows, &w, &ep.dequant(q, &w, &[]));
            let rows = Rows {
                src: &copied,
                starts: &contiguous,
                segments: &[0],
                run: 32,
            };
            let copy = product(isa, rows, &w, &ep.dequant(q, &w, &[]));
            assert_eq!(scattered, copy, "{isa:?}");
        }
    }
}
