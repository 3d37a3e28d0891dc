//! Test-time augmentation, for `evaluate` and `heatmap` alike. In: a batch of
//! normalised (3, side, side) inputs and a predictor. Out: the mean class
//! probabilities over the 8 dihedral (D4) views of the batch.

/// [`crate::learn::augment::dihedral`] on a normalised model input: `src` and `dst` are (3, side, side)
/// channel-first planes. Test-time augmentation transforms batches that are already
/// preprocessed, so the views come from the same pixels as without it.
pub fn dihedral_chw(src: &[f32], side: usize, k: u8, dst: &mut [f32]) {
    let n = side;
    let plane = n * n;
    debug_assert!(src.len() == 3 * plane && dst.len() == 3 * plane);
    for c in 0..3 {
        let (from, to) = (&src[c * plane..][..plane], &mut dst[c * plane..][..plane]);
        for y in 0..n {
            for x in 0..n {
                // The source pixel of output (x, y), undoing imageops' clockwise
                // rotations, then the mirror applied before them.
                let (bx, by) = match k % 4 {
                    0 => (x, y),
                    1 => (y, n - 1 - x),
                    2 => (n - 1 - x, n - 1 - y),
                    _ => (n - 1 - y, x),
                };
                let sx = if k >= 4 { n - 1 - bx } else { bx };
                to[y * n + x] = from[by * n + sx];
            }
        }
    }
}

/// Test-time augmentation, for `evaluate` and `heatmap` alike: the mean of `predict`
/// (a batch of (3, side, side) inputs to row-major class probabilities) over the 8
/// dihedral views of the batch in `pixels`.
pub fn d4_mean<E>(
    pixels: &[f32],
    side: usize,
    mut predict: impl FnMut(Vec<f32>) -> Result<Vec<f32>, E>,
) -> Result<Vec<f32>, E> {
    let plane = 3 * side * side;
    let mut mean: Vec<f32> = Vec::new();
    for k in 0..8 {
        let mut view = vec![0f32; pixels.len()];
        for (src, dst) in pixels.chunks(plane).zip(view.chunks_mut(plane)) {
            dihedral_chw(src, side, k, dst);
        }
        let p = predict(view)?;
        mean.resize(p.len(), 0.0);
        mean.iter_mut().zip(p).for_each(|(m, p)| *m += p / 8.0);
    }
    Ok(mean)
}
