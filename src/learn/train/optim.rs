//! How weights start and move. In: a `VarMap` and gradients. Out: updated weights:
//! seeded initialisation (or weights copied from another model), AdamW with named
//! moments for the checkpoint, the learning-rate schedule, the class-weighted loss, and
//! the exponential moving average of the weights (`--ema`).

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{one_line, Error, Result};
use crate::model::{Architecture, Network};

/// Linear warm-up, then cosine decay to zero.
pub(super) fn schedule(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

pub(super) fn weighted_cross_entropy(
    logits: &Tensor,
    y: &Tensor,
    w: &Tensor,
) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    let wy = w.index_select(y, 0)?;
    (picked * &wy)?
        .sum_all()?
        .neg()?
        .broadcast_div(&wy.sum_all()?)
}

/// Copies every tensor of the model folder `dir` whose name and shape match a variable.
pub(super) fn init_from(
    varmap: &VarMap,
    arch: Architecture,
    dir: &Path,
    device: &Device,
) -> Result<()> {
    let file = dir.join(crate::model::WEIGHTS_FILE);
    if !file.is_file() {
        return Err(Error::not_found(if dir.is_dir() { &file } else { dir }));
    }
    let tensors = candle_core::safetensors::load(&file, device)
        .map_err(|e| Error::model(&file, one_line(&e)))?;
    let data = varmap.data().lock().expect("varmap lock");
    // Every tensor but the classifier head must fit: a partial match would train a
    // mostly random network while the card names the init.
    let head = arch.head_prefix();
    let mut names: Vec<&String> = data.keys().filter(|n| !n.starts_with(head)).collect();
    names.sort();
    let fits = |name: &str| {
        tensors
            .get(name)
            .is_some_and(|t| t.dims() == data[name].dims())
    };
    let misfits: Vec<&&String> = names.iter().filter(|n| !fits(n)).collect();
    if let Some(first) = misfits.first() {
        return Err(Error::model(
            &file,
            format!(
                "does not fit the architecture being trained: {} of its {} backbone tensors \
                 are missing or of another shape (first: {first}); is it the same --arch?",
                misfits.len(),
                names.len()
            ),
        ));
    }
    for (name, var) in data.iter() {
        if let Some(t) = tensors.get(name).filter(|t| t.dims() == var.dims()) {
            var.set(&t.to_dtype(DType::F32)?)?;
        }
    }
    Ok(())
}

/// PyTorch-like initialisation from a seed (candle cannot seed its CPU generator):
/// convolutions Kaiming-normal (fan-out, ReLU), linear layers and biases uniform in
/// ±1/√fan-in, BatchNorm weight 1, bias 0, running mean 0, variance 1.
pub(super) fn init_weights(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fan_in_of = |name: &str| -> Option<usize> {
        let w = data.get(&name.replace(".bias", ".weight"))?;
        let dims = w.dims();
        (dims.len() >= 2).then(|| dims[1..].iter().product())
    };
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with("running_var") {
            vec![1.0; n]
        } else if name.ends_with("running_mean") {
            vec![0.0; n]
        } else if dims.len() == 4 {
            let fan_out = dims[0] * dims[2] * dims[3];
            let std = (2.0 / fan_out as f64).sqrt();
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        } else if dims.len() == 2 {
            let bound = 1.0 / (dims[1] as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        } else if let Some(fan_in) = name.ends_with(".bias").then(|| fan_in_of(name)).flatten() {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        } else if name.ends_with(".weight") {
            vec![1.0; n]
        } else {
            vec![0.0; n]
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// AdamW whose moments are named tensors, so they go into the checkpoint.
pub(super) struct AdamW {
    pub(super) params: Vec<(String, Var)>,
    pub(super) m: Vec<Tensor>,
    pub(super) v: Vec<Tensor>,
    pub(super) t: usize,
    pub(super) weight_decay: f64,
}

const BETA1: f64 = 0.9;

const BETA2: f64 = 0.999;

const EPS: f64 = 1e-8;

impl AdamW {
    pub(super) fn new(varmap: &VarMap, weight_decay: f64) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<(String, Var)> = data
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |v: &Var| v.zeros_like();
        let m = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        let v = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            m,
            v,
            t: 0,
            weight_decay,
        })
    }

    /// One step at learning rate `lr` times `scale(name)` for each parameter; a
    /// parameter scaled by 0 is frozen (neither it nor its moments move).
    pub(super) fn step(
        &mut self,
        grads: &GradStore,
        lr: f64,
        scale: &dyn Fn(&str) -> f64,
    ) -> Result<()> {
        self.t += 1;
        let (c1, c2) = (
            1.0 - BETA1.powi(self.t as i32),
            1.0 - BETA2.powi(self.t as i32),
        );
        for (i, (name, var)) in self.params.iter().enumerate() {
            let scale = scale(name);
            if scale == 0.0 {
                continue;
            }
            let lr = lr * scale;
            // Detached: the moments must not keep this step's autograd graph alive.
            let Some(g) = grads.get(var).map(Tensor::detach) else {
                continue;
            };
            self.m[i] = ((&self.m[i] * BETA1)? + (&g * (1.0 - BETA1))?)?.detach();
            self.v[i] = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?.detach();
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + EPS)?)?;
            // Decay only weight matrices and kernels, not biases or BatchNorm.
            let decay = if var.rank() >= 2 {
                1.0 - lr * self.weight_decay
            } else {
                1.0
            };
            var.set(&((var.as_tensor().detach() * decay)? - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// An exponential moving average of every weight and BatchNorm statistic. Its
/// epoch-to-epoch validation scores are far steadier than the raw weights' (on the
/// Kather folds the raw accuracy swings by ±0.2 between neighbouring epochs), and
/// averaging along the trajectory lands in flatter minima, which transfer better to
/// unseen slides (Izmailov et al. 2018; Cha et al. 2021, SWAD).
pub(super) struct Ema {
    pub(super) decay: f64,
    pub(super) map: VarMap,
    pub(super) net: Network,
    /// (averaged, trained) pairs.
    pub(super) pairs: Vec<(Var, Var)>,
}

impl Ema {
    /// A second network of the trained one's shape, holding the average; validation and
    /// the saved model use it.
    pub(super) fn new(
        decay: f64,
        trained: &VarMap,
        arch: Architecture,
        classes: usize,
        device: &Device,
    ) -> Result<Self> {
        let map = VarMap::new();
        let net = Network::new(
            arch,
            VarBuilder::from_varmap(&map, DType::F32, device),
            classes,
        )?;
        let trained = trained.data().lock().expect("varmap lock");
        let pairs = map
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(name, avg)| (avg.clone(), trained[name].clone()))
            .collect();
        Ok(Self {
            decay,
            map,
            net,
            pairs,
        })
    }

    /// Starts the average at the trained weights.
    pub(super) fn reset(&self) -> Result<()> {
        for (avg, w) in &self.pairs {
            avg.set(w.as_tensor())?;
        }
        Ok(())
    }

    /// Folds in the weights after `step` optimiser steps. The decay ramps up as
    /// (1 + step) / (10 + step) so that the random start is soon forgotten.
    pub(super) fn update(&self, step: usize) -> Result<()> {
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        for (avg, w) in &self.pairs {
            let next = ((avg.as_tensor() * d)? + (w.as_tensor().detach() * (1.0 - d))?)?;
            avg.set(&next)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parameter scaled by 0 (a frozen body) keeps its value and its moments; the
    /// others take AdamW's first step, of size lr·scale per element.
    #[test]
    fn a_frozen_parameter_and_its_moments_stay_put() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let body = vb
            .get_with_hints(3, "features.0.weight", candle_nn::Init::Const(1.0))
            .unwrap();
        let head = vb
            .get_with_hints(3, "classifier.1.bias", candle_nn::Init::Const(1.0))
            .unwrap();
        let mut opt = AdamW::new(&varmap, 0.0).unwrap();
        let loss = (body.sum_all().unwrap() + head.sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let scale = |name: &str| {
            if name.starts_with("classifier.") {
                1.0
            } else {
                0.0
            }
        };
        opt.step(&grads, 0.1, &scale).unwrap();
        let values = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        assert_eq!(values(&body), [1.0; 3]);
        for v in values(&head) {
            assert!((v - 0.9).abs() < 1e-5, "{v}");
        }
        let frozen = opt
            .params
            .iter()
            .position(|(n, _)| n == "features.0.weight")
            .unwrap();
        assert_eq!(values(&opt.m[frozen]), [0.0; 3]);
        assert_eq!(values(&opt.v[frozen]), [0.0; 3]);
    }
}
