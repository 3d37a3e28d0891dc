//! A layer's weights quantised to 8 bits per output channel and packed for the int8
//! matrix product ([`super::gemm`]). In: f32 weights `[n][k]`. Out: [`PackedWeights`],
//! blocks of [`NB`] channels × groups of [`KG`] inputs, with each channel's scale and
//! the sum its zero-point correction needs.

use rayon::prelude::*;

/// Reduction depth of one packed group: the four u8×i8 products one i32 lane sums.
pub const KG: usize = 4;
/// Output channels in one packed block: one AVX-512 register of i32 lanes, two AVX2
/// ones.
pub const NB: usize = 16;
/// Largest weight magnitude after quantisation (8 bits; see `gemm`'s module note).
const WMAX: f32 = 127.0;

/// One layer's weights: `n` output channels of `k` inputs, quantised per channel.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Reduction length padded to a multiple of [`KG`].
    pub kp: usize,
    /// Output channels as given, and padded to a multiple of [`NB`].
    pub n: usize,
    pub(super) np: usize,
    /// `[np / NB][kp / KG][NB][KG]`: one AVX-512 load holds 16 channels × 4 inputs, an
    /// AVX2 load half of them.
    pub(super) data: Vec<i8>,
    /// Dequantisation factor of each channel.
    pub(super) scale: Vec<f32>,
    /// Sum of each channel's quantised weights, to remove an activation zero point.
    pub(super) colsum: Vec<i32>,
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
        // A block of NB channels per task: quantising ResNet-18's 11 M weights was a
        // third of its start-up.
        let channels = scale.par_chunks_mut(NB).zip(colsum.par_chunks_mut(NB));
        data.par_chunks_mut(kp * NB)
            .zip(channels)
            .enumerate()
            .for_each(|(b, (block, (scale, colsum)))| {
                for (j, (scale, colsum)) in scale.iter_mut().zip(colsum).enumerate() {
                    let row = &w[(b * NB + j) * k..][..k];
                    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    if max > 0.0 {
                        *scale = max / WMAX;
                    }
                    for (i, &v) in row.iter().enumerate() {
                        let q =
                            round_half_away(v / *scale).clamp(-(WMAX as i32), WMAX as i32) as i8;
                        block[Self::index(kp, j, i)] = q;
                        *colsum += i32::from(q);
                    }
                }
            });
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

    /// The quantised weight of channel `o`, input `i`.
    pub(super) fn get(&self, o: usize, i: usize) -> i8 {
        self.data[Self::index(self.kp, o, i)]
    }

    /// Packed blocks of [`NB`] channels, and the bytes of one block's panel.
    pub(super) fn blocks(&self) -> (usize, usize) {
        (self.np / NB, self.kp * NB)
    }

    /// The value the quantised weight of channel `o`, input `i` stands for.
    pub(super) fn dequantised(&self, o: usize, i: usize) -> f32 {
        f32::from(self.get(o, i)) * self.scale[o]
    }
}

/// `x.round()` as an integer, for |x| < 2²³, without the call to libm's `roundf` that
/// `f32::round` makes on x86-64's baseline target (it was a fifth of quantising
/// ResNet-18's weights): truncation, then the exact remainder decides.
fn round_half_away(x: f32) -> i32 {
    let t = x as i32;
    let frac = x - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn rounding_matches_f32_round() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let ties = (-260..260).map(|i| i as f32 * 0.5);
        let edges = [
            0.49999997f32,
            -0.49999997,
            126.49999,
            126.5,
            -126.5,
            1e-30,
            -0.0,
        ];
        let random = (0..100_000).map(|_| rng.random_range(-200f32..200.0));
        for x in ties.chain(edges).chain(random) {
            assert_eq!(round_half_away(x), x.round() as i32, "{x}");
        }
    }
}
