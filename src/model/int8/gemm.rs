//! The one matrix product every int8 layer runs. In: activation rows quantised to u8
//! (an im2col matrix, one row per output pixel) and weights quantised to i8 per output
//! channel and packed. Out: f32 rows, dequantised, with the bias and an optional ReLU
//! applied in the same pass.
//!
//! Weights are quantised to 8 bits (±127) per output channel, activations to 7 bits
//! (0..=127): AVX2's `vpmaddubsw` adds two u8×i8 products into an i16, which 255·127·2
//! would overflow while 127·127·2 cannot. Measured on the shipped kather8 model over
//! the 228 real Kather tiles, 7-bit weights changed 4 tiles' class against f32 and 8-bit
//! weights none, while 7- and 8-bit activations made no difference. Every path computes the same
//! integers and the same f32 epilogue (a multiply, then an add: never fused), so all
//! paths give bit-identical results, and tests compare them exactly.

/// Reduction depth of one packed group: the four u8×i8 products one i32 lane sums.
pub const KG: usize = 4;
/// Output channels in one packed block: one AVX2 register of i32 lanes.
pub const NB: usize = 8;
/// Activation rows the kernels process at once; callers pad rows to a multiple of it.
pub const MR: usize = 4;
/// Largest weight magnitude after quantisation (8 bits; see the module note).
const WMAX: f32 = 127.0;
/// Largest quantised activation (7 bits; see the module note). Callers must keep
/// activations in `0..=AMAX`.
pub const AMAX: u8 = 127;

/// A kernel implementation. Chosen once per process from the CPU, or forced with the
/// environment variable `HISTOMAP_INT8_KERNEL=portable|avx2` so that tests cover every
/// path on any machine that can run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
}

impl Isa {
    /// The fastest path this CPU runs, unless the environment forces one.
    pub fn detect() -> Isa {
        match std::env::var("HISTOMAP_INT8_KERNEL").as_deref() {
            Ok("portable") => Isa::Portable,
            _ if Isa::Avx2.available() => Isa::Avx2,
            _ => Isa::Portable,
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
        }
    }
}

/// One layer's weights: `n` output channels of `k` inputs, quantised per channel.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Reduction length padded to a multiple of [`KG`].
    pub kp: usize,
    /// Output channels as given, and padded to a multiple of [`NB`].
    pub n: usize,
    np: usize,
    /// `[np / NB][kp / KG][NB][KG]`: one AVX2 load holds 8 channels × 4 inputs.
    data: Vec<i8>,
    /// Dequantisation factor of each channel.
    scale: Vec<f32>,
    /// Sum of each channel's quantised weights, to remove an activation zero point.
    colsum: Vec<i32>,
}

impl PackedWeights {
    /// Quantises and packs `w`, laid out `[n][k]` row-major.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weights are n × k");
        let kp = k.div_ceil(KG) * KG;
        let np = n.div_ceil(NB) * NB;
        let mut data = vec![0i8; np * kp];
        let mut scale = vec![1f32; n];
        let mut colsum = vec![0i32; n];
        for o in 0..n {
            let row = &w[o * k..][..k];
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max > 0.0 {
                scale[o] = max / WMAX;
            }
            for (i, &v) in row.iter().enumerate() {
                let q = (v / scale[o]).round().clamp(-WMAX, WMAX) as i8;
                data[Self::index(kp, o, i)] = q;
                colsum[o] += i32::from(q);
            }
        }
        Self {
            kp,
            n,
            np,
            data,
            scale,
            colsum,
        }
    }

    fn index(kp: usize, o: usize, i: usize) -> usize {
        ((o / NB) * (kp / KG) + i / KG) * NB * KG + (o % NB) * KG + i % KG
    }

    fn get(&self, o: usize, i: usize) -> i8 {
        self.data[Self::index(self.kp, o, i)]
    }
}

/// How rows of quantised activations map back to real values: `(q - zero) · scale`.
#[derive(Debug, Clone, Copy)]
pub struct Quant {
    pub scale: f32,
    pub zero: u8,
}

/// `out[r][o] = relu?((Σ_i (a[r][i] - zero)·w[o][i]) · scale_a · scale_w[o] + bias[o])`
/// for `m` rows; `a` is `[m][w.kp]` with `m` a multiple of [`MR`], `out` is `[m][w.n]`.
pub fn gemm(
    isa: Isa,
    a: &[u8],
    m: usize,
    q: Quant,
    w: &PackedWeights,
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    assert!(m % MR == 0 && a.len() >= m * w.kp && out.len() >= m * w.n);
    assert_eq!(bias.len(), w.n);
    let ep = Epilogue::new(q, w, bias, relu);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.available() => {
            // SAFETY: the CPU has AVX2 (checked above); the slices hold m rows as asserted.
            unsafe { avx2::gemm(a, m, w, &ep, out) }
        }
        _ => portable(a, m, w, &ep, out),
    }
}

/// The per-channel constants of the dequantising epilogue, computed once per call so
/// that every path applies exactly the same f32 operations.
struct Epilogue {
    /// zero point × column sum, subtracted from each accumulator.
    offset: Vec<i32>,
    mult: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
}

impl Epilogue {
    fn new(q: Quant, w: &PackedWeights, bias: &[f32], relu: bool) -> Self {
        let pad = |v: &mut Vec<f32>| v.resize(w.np, 0.0);
        let mut mult: Vec<f32> = w.scale.iter().map(|s| q.scale * s).collect();
        let mut b = bias.to_vec();
        pad(&mut mult);
        pad(&mut b);
        let mut offset: Vec<i32> = w.colsum.iter().map(|c| i32::from(q.zero) * c).collect();
        offset.resize(w.np, 0);
        Self {
            offset,
            mult,
            bias: b,
            relu,
        }
    }

    fn apply(&self, acc: i32, o: usize) -> f32 {
        let y = (acc - self.offset[o]) as f32 * self.mult[o] + self.bias[o];
        if self.relu {
            y.max(0.0)
        } else {
            y
        }
    }
}

/// The reference every other path must equal.
fn portable(a: &[u8], m: usize, w: &PackedWeights, ep: &Epilogue, out: &mut [f32]) {
    for r in 0..m {
        let row = &a[r * w.kp..][..w.kp];
        for o in 0..w.n {
            let acc: i32 = (0..w.kp)
                .map(|i| i32::from(row[i]) * i32::from(w.get(o, i)))
                .sum();
            out[r * w.n + o] = ep.apply(acc, o);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Epilogue, PackedWeights, KG, MR, NB};

    /// Tiles of MR rows × 16 channels (two blocks), 8 channels at the tail.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemm(
        a: &[u8],
        m: usize,
        w: &PackedWeights,
        ep: &Epilogue,
        out: &mut [f32],
    ) {
        let blocks = w.np / NB;
        let groups = w.kp / KG;
        let ones = _mm256_set1_epi16(1);
        for r0 in (0..m).step_by(MR) {
            let rows: [*const u8; MR] = std::array::from_fn(|r| a.as_ptr().add((r0 + r) * w.kp));
            let mut b = 0;
            while b < blocks {
                let pair = b + 1 < blocks;
                let w0 = w.data.as_ptr().add(b * groups * NB * KG);
                let w1 = if pair { w0.add(groups * NB * KG) } else { w0 };
                let mut acc0 = [_mm256_setzero_si256(); MR];
                let mut acc1 = [_mm256_setzero_si256(); MR];
                for g in 0..groups {
                    let b0 = _mm256_loadu_si256(w0.add(g * NB * KG) as *const __m256i);
                    let b1 = _mm256_loadu_si256(w1.add(g * NB * KG) as *const __m256i);
                    for r in 0..MR {
                        let four = (rows[r].add(g * KG) as *const i32).read_unaligned();
                        let x = _mm256_set1_epi32(four);
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(x, b0), ones);
                        acc0[r] = _mm256_add_epi32(acc0[r], p0);
                        if pair {
                            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(x, b1), ones);
                            acc1[r] = _mm256_add_epi32(acc1[r], p1);
                        }
                    }
                }
                for r in 0..MR {
                    store(ep, acc0[r], b * NB, w.n, out, (r0 + r) * w.n);
                    if pair {
                        store(ep, acc1[r], (b + 1) * NB, w.n, out, (r0 + r) * w.n);
                    }
                }
                b += if pair { 2 } else { 1 };
            }
        }
    }

    /// The epilogue on 8 channels from `o0`, as [`Epilogue::apply`] computes it.
    #[target_feature(enable = "avx2")]
    unsafe fn store(ep: &Epilogue, acc: __m256i, o0: usize, n: usize, out: &mut [f32], row: usize) {
        let off = _mm256_loadu_si256(ep.offset.as_ptr().add(o0) as *const __m256i);
        let mult = _mm256_loadu_ps(ep.mult.as_ptr().add(o0));
        let bias = _mm256_loadu_ps(ep.bias.as_ptr().add(o0));
        let x = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, off));
        let mut y = _mm256_add_ps(_mm256_mul_ps(x, mult), bias);
        if ep.relu {
            y = _mm256_max_ps(y, _mm256_setzero_ps());
        }
        if o0 + NB <= n {
            _mm256_storeu_ps(out.as_mut_ptr().add(row + o0), y);
        } else {
            let mut tmp = [0f32; NB];
            _mm256_storeu_ps(tmp.as_mut_ptr(), y);
            out[row + o0..row + n].copy_from_slice(&tmp[..n - o0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        // Channel counts that are not multiples of the 16-channel tile or the 8-lane
        // block, reductions that are not multiples of 4, with and without a zero point.
        for (i, &(m, n, k)) in [
            (4, 8, 4),
            (8, 16, 27),
            (12, 24, 147),
            (4, 3, 5),
            (16, 64, 576),
        ]
        .iter()
        .enumerate()
        {
            for zero in [0u8, 64] {
                let (a, w, bias) = case(m, n, k, zero, i as u64);
                let q = Quant { scale: 0.02, zero };
                let run = |isa| {
                    let mut out = vec![f32::NAN; m * n];
                    gemm(isa, &a, m, q, &w, &bias, zero == 0, &mut out);
                    out
                };
                let reference = run(Isa::Portable);
                assert!(reference.iter().all(|v| v.is_finite()));
                for isa in [Isa::Avx2] {
                    if isa.available() {
                        assert_eq!(run(isa), reference, "{isa:?} m={m} n={n} k={k}");
                    }
                }
            }
        }
    }

    #[test]
    fn dequantised_product_is_close_to_the_f32_one() {
        let (m, n, k) = (8, 16, 72);
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
        let mut out = vec![0f32; m * n];
        gemm(
            Isa::detect(),
            &a,
            m,
            q,
            &packed,
            &vec![0.0; n],
            false,
            &mut out,
        );
        for r in 0..m {
            for o in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum();
                let got = out[r * n + o];
                assert!((got - want).abs() < 0.05, "({r}, {o}): {got} vs {want}");
            }
        }
    }
}
