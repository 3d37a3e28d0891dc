//! `--precision auto`'s close calls, run again in f32 together. In: a slide's batches,
//! each patch with its caller's slot. Out: int8 probabilities at once, and later f32's
//! for the close calls, by slot.
//!
//! Why deferred: about 3 % of a MobileNetV2's patches are close calls, one or two per
//! batch. Run at once, each took the f32 network for a batch of one or two, on a core
//! and a half at best: 14 % of a heatmap's time on `pcam-gigapixel.tif`. Gathered into
//! batches of their own, they run at f32's full speed.

use candle_core::{Device, Tensor};

use super::Classifier;
use crate::error::Result;

/// Close calls gathered before they run in f32. Each f32 batch costs peak memory (its
/// activations: 32 MobileNetV2 patches at 96 px took a heatmap's peak RSS from 370 to
/// 830 MiB); 8 keep most of the speed of a full batch.
const BATCH: usize = 8;

/// Close calls set aside by [`Classifier::predict_deferring`]: each patch's normalised
/// pixels (3 × side × side) and its caller's slot.
#[derive(Default)]
pub struct Rechecks {
    pixels: Vec<f32>,
    slots: Vec<usize>,
}

impl Rechecks {
    /// Whether enough close calls wait to run them ([`Classifier::run_rechecks`]).
    pub fn is_full(&self) -> bool {
        self.slots.len() >= BATCH
    }

    pub(super) fn push(&mut self, slot: usize, patch: &Tensor) -> Result<()> {
        self.pixels.extend(patch.flatten_all()?.to_vec1::<f32>()?);
        self.slots.push(slot);
        Ok(())
    }
}

impl Classifier {
    /// [`Classifier::predict`] for `n` patches whose slots are `slots`, with `auto`'s
    /// close calls set aside in `pending` (they keep int8's probabilities until
    /// [`Classifier::run_rechecks`] gives f32's). Without a recheck to defer (another
    /// precision, no recorded margin, test-time augmentation) it is `predict`.
    pub fn predict_deferring(
        &self,
        pixels: Vec<f32>,
        n: usize,
        slots: &[usize],
        pending: &mut Rechecks,
    ) -> Result<Vec<f32>> {
        if self.tta {
            return self.predict(pixels, n);
        }
        self.predict_deferring_view(pixels, n, Some((slots, pending)))
    }

    /// f32's class probabilities for the patches `pending` holds, by slot; empties it.
    pub fn run_rechecks(&self, pending: &mut Rechecks) -> Result<Vec<(usize, Vec<f32>)>> {
        let n = pending.slots.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        self.rechecked
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let s = self.card.input_size as usize;
        let x = Tensor::from_vec(
            std::mem::take(&mut pending.pixels),
            (n, 3, s, s),
            &Device::Cpu,
        )?;
        let k = self.num_classes();
        let micro = super::micro_batch(s);
        let mut probs = Vec::with_capacity(n * k);
        for start in (0..n).step_by(micro) {
            let part = x.narrow(0, start, micro.min(n - start))?;
            let logits =
                candle_core::ModuleT::forward_t(&self.net, &part.to_device(&self.device)?, false)?;
            let p = candle_nn::ops::softmax_last_dim(&logits)?.to_device(&Device::Cpu)?;
            probs.extend(p.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(std::mem::take(&mut pending.slots)
            .into_iter()
            .zip(probs.chunks(k).map(<[f32]>::to_vec))
            .collect())
    }
}
