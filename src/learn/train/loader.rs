//! Tiles to batches. In: samples, a normaliser and augmentation seeds. Out: batches of
//! (pixels, labels) built on rayon workers while the trainer runs the previous batch,
//! through a bounded channel; and class probabilities of tiles for validation and
//! `evaluate`. Seeds are per (seed, epoch, sample), so batches do not depend on the
//! thread count.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::learn::dataset::Sample;
use crate::map::preprocess::{fit_to, Normalizer};
use crate::pipeline::Normalization;
use crate::stain::Normalize;

/// How a tile becomes model input, in training, validation and `evaluate` alike: stain
/// normalisation by the tile's own stains (if any), then (in training) augmentation,
/// then the normaliser.
pub struct TileInput {
    pub normalizer: Normalizer,
    pub stain: Option<Normalize>,
}

impl TileInput {
    pub fn new(normalization: &Normalization, stain: Option<Normalize>) -> Self {
        Self {
            normalizer: Normalizer::new(normalization),
            stain,
        }
    }

    /// The tile, stain-normalised at model size when normalisation is on; a tile with
    /// too little tissue to estimate stains (glass) stays as read.
    fn stained(&self, tile: image::RgbImage, size: u32) -> image::RgbImage {
        match &self.stain {
            Some(n) => {
                let mut tile = fit_to(tile, size);
                n.own(&mut tile);
                tile
            }
            None => tile,
        }
    }
}

/// Mixes a seed with an epoch and a sample index into a per-sample seed.
pub(super) fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Decodes, transforms and preprocesses tiles into one batch (pixels, labels).
pub(super) fn load_batch(
    samples: &[&Sample],
    size: u32,
    input: &TileInput,
    transform: &(dyn Fn(usize, image::RgbImage) -> image::RgbImage + Sync),
) -> Result<(Vec<f32>, Vec<u32>)> {
    let plane = 3 * (size * size) as usize;
    let mut pixels = vec![0f32; samples.len() * plane];
    pixels
        .par_chunks_mut(plane)
        .zip(samples.par_iter())
        .enumerate()
        .try_for_each(|(i, (out, s))| {
            let img = transform(i, input.stained(s.tile.read()?, size));
            input.normalizer.write_chw(&img, size, out);
            Ok::<_, Error>(())
        })?;
    Ok((pixels, samples.iter().map(|s| s.label as u32).collect()))
}

/// Builds batches on `pool` while `consume` runs the previous one; a bounded channel
/// keeps at most two batches waiting.
pub(super) fn stream_batches<T: Send>(
    pool: &rayon::ThreadPool,
    n: usize,
    make: impl Fn(usize) -> Result<T> + Sync,
    mut consume: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let (tx, rx) = crossbeam_channel::bounded::<Result<T>>(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for b in 0..n {
                let batch = pool.install(|| make(b));
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
            drop(tx);
        });
        let result = rx.iter().try_for_each(|batch| consume(batch?));
        // Unblock and drain the producer if we stopped early.
        drop(rx);
        result
    })
}

/// Class probabilities (row-major) for tiles, through `logits`. With `tta`, each tile's
/// probabilities average its 8 dihedral orientations.
pub fn predict_tiles(
    pool: &rayon::ThreadPool,
    samples: &[Sample],
    size: u32,
    input: &TileInput,
    batch: usize,
    logits: &(dyn Fn(&Tensor) -> Result<Tensor> + Sync),
    tta: bool,
) -> Result<Vec<f32>> {
    let chunks: Vec<&[Sample]> = samples.chunks(batch.max(1)).collect();
    let side = size as usize;
    let mut probs = Vec::with_capacity(samples.len());
    stream_batches(
        pool,
        chunks.len(),
        |b| {
            let refs: Vec<&Sample> = chunks[b].iter().collect();
            load_batch(&refs, size, input, &|_, img| img)
        },
        |(pixels, labels)| {
            let n = labels.len();
            let probs_of = |pixels: Vec<f32>| -> Result<Vec<f32>> {
                let x = Tensor::from_vec(pixels, (n, 3, side, side), &Device::Cpu)?;
                let p = candle_nn::ops::softmax_last_dim(&logits(&x)?)?;
                Ok(p.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
            };
            probs.extend(if tta {
                crate::model::tta::d4_mean(&pixels, side, probs_of)?
            } else {
                probs_of(pixels)?
            });
            Ok(())
        },
    )?;
    Ok(probs)
}

/// Per-channel mean and standard deviation of up to 1000 training tiles, at model size.
pub(super) fn measure_normalization(
    train: &[Sample],
    size: u32,
    seed: u64,
) -> Result<Normalization> {
    let mut idx: Vec<usize> = (0..train.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    idx.truncate(1000);
    let identity = Normalizer::new(&Normalization {
        mean: [0.0; 3],
        std: [1.0; 3],
    });
    let sums = idx
        .par_iter()
        .map(|&i| {
            let img = train[i].tile.read()?;
            let mut px = vec![0f32; 3 * (size * size) as usize];
            identity.write_chw(&img, size, &mut px);
            let plane = (size * size) as usize;
            let mut s = [0f64; 6];
            for c in 0..3 {
                for &v in &px[c * plane..(c + 1) * plane] {
                    s[c] += f64::from(v);
                    s[3 + c] += f64::from(v) * f64::from(v);
                }
            }
            Ok((s, plane as f64))
        })
        .collect::<Result<Vec<_>>>()?;
    let n: f64 = sums.iter().map(|x| x.1).sum();
    let mut mean = [0f32; 3];
    let mut std = [0f32; 3];
    for c in 0..3 {
        let m = sums.iter().map(|x| x.0[c]).sum::<f64>() / n;
        let sq = sums.iter().map(|x| x.0[3 + c]).sum::<f64>() / n;
        mean[c] = m as f32;
        std[c] = ((sq - m * m).max(1e-6)).sqrt() as f32;
    }
    Ok(Normalization { mean, std })
}
