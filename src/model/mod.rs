//! Models. In: a model directory (`card.json` + `model.safetensors`). Out: a
//! [`Classifier`] that turns a batch of normalised patches into class probabilities.
//!
//! The card says what the weights are: architecture, classes and colours, input size
//! and MPP, normalisation, whether they were trained, and provenance. A model whose
//! card disagrees with the pipeline is refused before any slide is read; a run given no
//! pipeline file takes its pipeline from the card.

pub mod card;
mod cpu_ops;
pub mod depthwise;
pub mod imagenet;
pub mod int8;
pub mod isa;
mod layers;
mod mobilenet;
mod pointwise;
mod recheck;
mod resnet;
mod smallcnn;
pub mod tta;
pub mod wsinfer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

pub use self::card::{
    read_card, write_card, FineTune, ModelCard, TrainingRecord, CARD_FILE, WEIGHTS_FILE,
};
pub use self::mobilenet::MobileNet;
pub use self::recheck::Rechecks;
pub use self::resnet::{BlockKind, ResNet};
pub use self::smallcnn::SmallCnn;
use crate::error::{one_line, Error, Result};
use crate::pipeline::{Pipeline, MAX_PATCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// 4 conv blocks, 32–256 channels: fast on CPU.
    Smallcnn,
    /// torchvision ResNet-18.
    Resnet18,
    /// torchvision ResNet-34.
    Resnet34,
    /// torchvision ResNet-50 (bottleneck blocks).
    Resnet50,
    /// torchvision MobileNetV2: depthwise convolutions, ≈ 1/4 of SmallCnn's FLOPs;
    /// ImageNet weights for `train --init imagenet`.
    Mobilenetv2,
    /// EfficientNet-Lite0: MobileNetV2's blocks with 5 × 5 depthwise layers in some
    /// stages, ≈ 1.3× its FLOPs; ImageNet weights for `train --init imagenet`.
    #[serde(rename = "efficientnet-lite0")]
    EfficientnetLite0,
}

impl std::fmt::Display for Architecture {
    /// The name `--arch` and `card.json` use (`smallcnn`, `resnet18`, ...).
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        use clap::ValueEnum;
        let v = self.to_possible_value().expect("no variant is skipped");
        f.write_str(v.get_name())
    }
}

impl Architecture {
    /// A ResNet's block kind and blocks per stage; `None` for the others.
    pub fn resnet_layout(self) -> Option<(BlockKind, [usize; 4])> {
        match self {
            Architecture::Smallcnn
            | Architecture::Mobilenetv2
            | Architecture::EfficientnetLite0 => None,
            Architecture::Resnet18 => Some((BlockKind::Basic, [2, 2, 2, 2])),
            Architecture::Resnet34 => Some((BlockKind::Basic, [3, 4, 6, 3])),
            Architecture::Resnet50 => Some((BlockKind::Bottleneck, [3, 4, 6, 3])),
        }
    }

    /// The smallest input side the network maps to at least one pixel: SmallCnn halves
    /// it four times; a ResNet's or MobileNet's padded strides never reach zero.
    pub fn min_input_size(self) -> u32 {
        match self {
            Architecture::Smallcnn => 16,
            _ => 8,
        }
    }

    /// The prefix of the classifier head's parameters: what a model for other classes
    /// does not share.
    pub fn head_prefix(self) -> &'static str {
        match self {
            Architecture::Mobilenetv2 => "classifier.",
            Architecture::EfficientnetLite0 => "_fc.",
            _ => "fc.",
        }
    }

    /// Refuses an input size the network cannot take, or no pipeline could cut;
    /// `source` names where it came from.
    pub fn check_input_size(self, size: u32, source: &Path) -> Result<()> {
        let min = self.min_input_size();
        if size < min {
            return Err(Error::model(
                source,
                format!("a {self} needs an input of at least {min} px, not {size}"),
            ));
        }
        if size > MAX_PATCH {
            return Err(Error::model(
                source,
                format!("input of {size} px: patches are at most {MAX_PATCH} px"),
            ));
        }
        Ok(())
    }
}

/// One of the architectures, as a trainable module.
#[derive(Debug, Clone)]
pub enum Network {
    SmallCnn(SmallCnn),
    ResNet(ResNet),
    /// MobileNetV2 or EfficientNet-Lite0.
    MobileNet(MobileNet),
}

impl Network {
    pub fn new(
        arch: Architecture,
        vb: VarBuilder,
        num_classes: usize,
    ) -> candle_core::Result<Self> {
        Ok(match (arch, arch.resnet_layout()) {
            // torchvision's width: 64 stem channels.
            (_, Some((kind, blocks))) => {
                Network::ResNet(ResNet::new(vb, kind, blocks, 64, num_classes)?)
            }
            (Architecture::Mobilenetv2, _) => {
                Network::MobileNet(MobileNet::v2(vb, 1.0, num_classes)?)
            }
            (Architecture::EfficientnetLite0, _) => {
                Network::MobileNet(MobileNet::efficientnet_lite0(vb, 1.0, num_classes)?)
            }
            _ => Network::SmallCnn(SmallCnn::new(vb, num_classes)?),
        })
    }

    /// Folds every BatchNorm into its convolution; for inference only.
    pub fn fuse(&mut self) -> candle_core::Result<()> {
        match self {
            Network::SmallCnn(n) => n.fuse(),
            Network::ResNet(n) => n.fuse(),
            Network::MobileNet(n) => n.fuse(),
        }
    }
}

impl ModuleT for Network {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Network::SmallCnn(n) => n.forward_t(x, train),
            Network::ResNet(n) => n.forward_t(x, train),
            Network::MobileNet(n) => n.forward_t(x, train),
        }
    }
}

/// Which device runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when built with the `cuda` feature and a GPU is present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    /// The device to run on and, where `auto` in a CUDA build finds no usable GPU, the
    /// one line that says it runs on the CPU instead (for the caller to show once).
    pub fn device(self) -> Result<(Device, Option<String>)> {
        let cuda_built = candle_core::utils::cuda_is_available();
        match self {
            DeviceChoice::Cpu => Ok((Device::Cpu, None)),
            DeviceChoice::Auto if !cuda_built => Ok((Device::Cpu, None)),
            DeviceChoice::Auto => Ok(match Device::new_cuda(0) {
                Ok(gpu) => (gpu, None),
                Err(e) => (
                    Device::Cpu,
                    Some(format!(
                        "--device auto: no usable CUDA GPU ({}); running on the CPU",
                        one_line(&e)
                    )),
                ),
            }),
            DeviceChoice::Cuda if !cuda_built => Err(Error::Usage(
                "--device cuda: this histomap was built without the `cuda` feature \
                 (scripts/setup.sh --cuda builds one); run with --device cpu"
                    .into(),
            )),
            DeviceChoice::Cuda => Device::new_cuda(0).map(|gpu| (gpu, None)).map_err(|e| {
                Error::Usage(format!(
                    "--device cuda: no usable CUDA GPU ({}); run with --device cpu, or \
                     --device auto to use a GPU only where there is one",
                    one_line(&e)
                ))
            }),
        }
    }
}

/// The arithmetic of the forward pass (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// int8 where the model's card records that int8 keeps f32's class on ≥ 99.5% of
    /// held-out tiles (`histomap calibrate`) and the CPU has a fast int8 kernel (AVX2),
    /// after a check against f32 on the first patches, with the close calls the card
    /// names run again in f32; else f32, saying why.
    #[default]
    Auto,
    /// The reference: f32 throughout.
    F32,
    /// int8 on the CPU, unchecked (the portable kernel where there is no fast one).
    Int8,
}

/// Largest difference of any class probability between int8 and f32 on the checked
/// patches that `Precision::Auto` accepts. Quantisation moves the shipped models'
/// probabilities by a few thousandths; a model it moves by this much is not one int8
/// should run.
const AUTO_MAX_PROB_DIFF: f32 = 0.1;

/// Patches at the start of the first batch that `Precision::Auto` runs in both
/// precisions.
const AUTO_CHECK_PATCHES: usize = 8;

/// A loaded model ready for inference.
pub struct Classifier {
    net: Network,
    device: Device,
    pub card: ModelCard,
    pub dir: PathBuf,
    /// Test-time augmentation: [`Classifier::predict`] averages the 8 dihedral views.
    pub tta: bool,
    precision: Precision,
    int8: Option<int8::Int8Net>,
    /// With `Precision::Auto`: whether int8 passed its check on the first patches.
    int8_checked: std::sync::OnceLock<bool>,
    /// A fallback to f32 not yet reported ([`Classifier::take_warning`]).
    warning: std::sync::Mutex<Option<String>>,
    /// Why `Precision::Auto` chose f32 for this model ([`Classifier::precision_note`]).
    note: Option<String>,
    /// Patches `Precision::Auto` ran again in f32 ([`Classifier::take_rechecked`]).
    rechecked: AtomicUsize,
}

impl Classifier {
    /// Loads a histomap model folder (`card.json`) or a WSInfer one (`config.json`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let card = load_card(dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(Error::model(&weights, "weights file is missing"));
        }
        let tensors = candle_core::safetensors::load(&weights, device).map_err(|e| {
            Error::model(
                &weights,
                format!("not a readable safetensors file: {}", one_line(&e)),
            )
        })?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let mut net = Network::new(card.architecture, vb, card.classes.len()).map_err(|e| {
            Error::model(
                &weights,
                format!(
                    "weights do not fit a {} with {} classes: {}",
                    card.architecture,
                    card.classes.len(),
                    one_line(&e)
                ),
            )
        })?;
        net.fuse()?;
        Ok(Self {
            net,
            device: device.clone(),
            card,
            dir: dir.to_path_buf(),
            tta: false,
            precision: Precision::F32,
            int8: None,
            int8_checked: std::sync::OnceLock::new(),
            warning: std::sync::Mutex::new(None),
            note: None,
            rechecked: AtomicUsize::new(0),
        })
    }

    /// The classifier of a run and the pipeline it runs with. A pipeline file brings
    /// its model unless `model` names another, and the model's card must agree with the
    /// file; without a file, the model folder's card is the pipeline
    /// ([`ModelCard::pipeline`]).
    pub fn load_with_pipeline(
        pipeline: Option<&Path>,
        model: Option<&Path>,
        device: &Device,
    ) -> Result<(Self, Pipeline)> {
        let file = pipeline.map(Pipeline::load).transpose()?;
        let dir = match (model, &file) {
            (Some(dir), _) => dir.to_path_buf(),
            (None, Some(p)) => p.model_path.clone(),
            (None, None) => {
                return Err(Error::Usage(
                    "give --pipeline FILE or --model DIR (a model folder's card gives the patch size, MPP and classes)"
                        .into(),
                ))
            }
        };
        let classifier = Self::load(&dir, device)?;
        let pipeline = match file {
            Some(p) => {
                classifier.card.check_against(&p, &dir)?;
                p
            }
            None => classifier.card.pipeline(&dir),
        };
        Ok((classifier, pipeline))
    }

    /// Chooses the arithmetic of later forward passes. int8 runs on the CPU only.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let isa = int8::Isa::detect();
        let cpu = self.device.is_cpu();
        self.note = None;
        self.int8 = match precision {
            Precision::F32 => None,
            Precision::Int8 if !cpu => {
                return Err(Error::Usage(
                    "--precision int8 runs on the CPU: add --device cpu".into(),
                ))
            }
            // The portable kernel is slower than f32: auto takes int8 only where it pays.
            Precision::Auto if !cpu || isa == int8::Isa::Portable => None,
            Precision::Int8 => Some(int8::Int8Net::new(&self.net, isa)?),
            // A model int8 was not shown to keep, or cannot run: f32, said once.
            Precision::Auto => match int8::Int8Net::new(&self.net, isa).and_then(|q| {
                self.card
                    .int8_refusal()
                    .map_or(Ok(q), |why| Err(Error::Usage(why)))
            }) {
                Ok(q) => Some(q),
                Err(e) => {
                    let why = format!("{}: {}; running in f32", self.dir.display(), e);
                    if let Ok(mut w) = self.warning.lock() {
                        *w = Some(why.clone());
                    }
                    self.note = Some(why);
                    None
                }
            },
        };
        self.precision = precision;
        self.int8_checked = std::sync::OnceLock::new();
        Ok(())
    }

    /// Why `Precision::Auto` runs this model in f32, if it chose so: what `summary.json`
    /// and `metrics.json` record as `precision_note`.
    pub fn precision_note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The precision asked for.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The arithmetic forward passes run in: `f32`, or `int8-<kernel>`. With
    /// `Precision::Auto`, as decided on the first patches.
    pub fn precision_used(&self) -> String {
        match &self.int8 {
            Some(q) if self.int8_checked.get() != Some(&false) => {
                format!("int8-{}", q.isa().name())
            }
            _ => "f32".into(),
        }
    }

    /// A fallback from int8 to f32 that happened since the last call, in words.
    pub fn take_warning(&self) -> Option<String> {
        self.warning.lock().map_or(None, |mut w| w.take())
    }

    pub fn num_classes(&self) -> usize {
        self.card.classes.len()
    }

    /// Class probabilities for `n` patches laid out as (n, 3, size, size) f32, row-major
    /// (n × classes); with [`Classifier::tta`], the mean over the 8 dihedral views.
    pub fn predict(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        if !self.tta {
            return self.predict_view(pixels, n);
        }
        let side = self.card.input_size as usize;
        crate::model::tta::d4_mean(&pixels, side, |view| self.predict_view(view, n))
    }

    fn predict_view(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        self.predict_deferring_view(pixels, n, None)
    }

    /// [`Classifier::predict_view`]; with `defer`, `auto`'s close calls keep their int8
    /// probabilities and are set aside (pixels and slot) to be run again in f32 later.
    fn predict_deferring_view(
        &self,
        pixels: Vec<f32>,
        n: usize,
        mut defer: Option<(&[usize], &mut Rechecks)>,
    ) -> Result<Vec<f32>> {
        let s = self.card.input_size as usize;
        let x = Tensor::from_vec(pixels, (n, 3, s, s), &self.device)?;
        let micro = micro_batch(s);
        let mut probs = Vec::with_capacity(n * self.num_classes());
        for start in (0..n).step_by(micro) {
            let part = x.narrow(0, start, micro.min(n - start))?;
            let mut close = Vec::new();
            let deferring = defer.is_some().then_some(&mut close);
            let p = candle_nn::ops::softmax_last_dim(&self.logits_deferring(&part, deferring)?)?;
            probs.extend(p.flatten_all()?.to_vec1::<f32>()?);
            if let Some((slots, pending)) = defer.as_mut() {
                for i in close {
                    pending.push(slots[start + i], &part.get(i)?)?;
                }
            }
        }
        Ok(probs)
    }

    /// Raw logits (N, classes) for an input batch (N, 3, size, size), in the chosen
    /// precision.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.logits_deferring(x, None)
    }

    /// [`Classifier::logits`]; with `defer`, `auto`'s close calls are not run again in
    /// f32 but listed there (rows of `x`), keeping their int8 logits.
    fn logits_deferring(&self, x: &Tensor, defer: Option<&mut Vec<usize>>) -> Result<Tensor> {
        let f32_logits = || Ok(self.net.forward_t(&x.to_device(&self.device)?, false)?);
        let Some(q) = &self.int8 else {
            return f32_logits();
        };
        if self.int8_checked.get() == Some(&false) {
            return f32_logits();
        }
        let (n, _, side, _) = x.dims4()?;
        let k = self.num_classes();
        let pixels = x.flatten_all()?.to_vec1::<f32>()?;
        let mut int8 = q.logits(&pixels, n, side);
        if self.precision != Precision::Auto {
            return Ok(Tensor::from_vec(int8, (n, k), &Device::Cpu)?);
        }
        let keep = *self.int8_checked.get_or_init(|| {
            // A few patches suffice to catch a model int8 does not suit, and keep the
            // f32 activations of the check small (f32's micro-batch is what dominates
            // peak memory otherwise).
            let m = n.min(AUTO_CHECK_PATCHES);
            let diff = x
                .narrow(0, 0, m)
                .and_then(|head| self.net.forward_t(&head.to_device(&self.device)?, false))
                .map_err(Error::from)
                .and_then(|reference| {
                    let head = Tensor::from_slice(&int8[..m * k], (m, k), &Device::Cpu)?;
                    max_prob_diff(&head, &reference)
                })
                .unwrap_or(f32::INFINITY);
            if diff <= AUTO_MAX_PROB_DIFF {
                return true;
            }
            if let Ok(mut w) = self.warning.lock() {
                *w = Some(format!(
                    "{}: int8 moved a probability by {diff:.3} against f32 on the first \
                     {m} patches (at most {AUTO_MAX_PROB_DIFF} passes); running in f32",
                    self.dir.display()
                ));
            }
            false
        });
        if !keep {
            return f32_logits();
        }
        if let Some(r) = self.card.int8.as_ref().and_then(|c| c.recheck.as_ref()) {
            let margin = r.margin as f32;
            match defer {
                Some(close) => close.extend(close_calls(&int8, k, margin)),
                None => self.recheck(x, &mut int8, k, margin)?,
            }
        }
        Ok(Tensor::from_vec(int8, (n, k), &Device::Cpu)?)
    }

    /// Replaces the rows of `logits` (`k` per patch of `x`) whose top two are within
    /// `margin` by f32's: where int8 changes a class, it is on such close calls
    /// (`histomap calibrate` measured how close).
    fn recheck(&self, x: &Tensor, logits: &mut [f32], k: usize, margin: f32) -> Result<()> {
        let close: Vec<u32> = close_calls(logits, k, margin).map(|i| i as u32).collect();
        self.rechecked.fetch_add(close.len(), Ordering::Relaxed);
        if close.is_empty() {
            return Ok(());
        }
        let rows = Tensor::new(close.as_slice(), x.device())?;
        let again = self
            .net
            .forward_t(&x.index_select(&rows, 0)?.to_device(&self.device)?, false)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (&i, row) in close.iter().zip(again.chunks(k)) {
            logits[i as usize * k..][..k].copy_from_slice(row);
        }
        Ok(())
    }

    /// Patches `auto` ran again in f32 since the last call ([`Classifier::recheck`]).
    pub fn take_rechecked(&self) -> usize {
        self.rechecked.swap(0, Ordering::Relaxed)
    }
}

/// The rows of `logits` (`k` per patch) whose top two are within `margin`.
fn close_calls(logits: &[f32], k: usize, margin: f32) -> impl Iterator<Item = usize> + '_ {
    (0..logits.len() / k).filter(move |&i| top_two_gap(&logits[i * k..][..k]) < margin)
}

/// Top logit minus the second: how close a call is.
pub(crate) fn top_two_gap(logits: &[f32]) -> f32 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &l in logits {
        if l > first {
            (first, second) = (l, first);
        } else if l > second {
            second = l;
        }
    }
    first - second
}

/// Largest difference of any class probability between two batches of logits.
fn max_prob_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let p = |t: &Tensor| candle_nn::ops::softmax_last_dim(t);
    Ok((p(a)? - p(b)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

/// Patches per forward pass. Activation memory grows with the batch while speed stops
/// improving well before, so batches run in slices of about `MICRO_BATCH_PIXELS` input
/// pixels. Measured on the 100,000×80,000 test slide (scripts/make-slides.sh), ResNet-18
/// at 150 px: 8 patches a slice 13.3 s / 380 MB peak, 16 → 11.4 s / 521 MB, 32 → 11.0 s / 808 MB.
fn micro_batch(side: usize) -> usize {
    (MICRO_BATCH_PIXELS / (side * side)).max(1)
}

const MICRO_BATCH_PIXELS: usize = 16 * 150 * 150;

/// Largest absolute elementwise difference of two tensors, for tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("same shapes")
}

/// Which file of a model folder says what its weights are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardFormat {
    /// histomap's own `card.json`.
    Histomap,
    /// A WSInfer `config.json`, read as a card ([`wsinfer::card`]).
    Wsinfer,
}

impl CardFormat {
    /// The format of the model folder `dir`; `card.json` wins when it has both.
    pub fn of(dir: &Path) -> Result<Self> {
        if dir.join(CARD_FILE).exists() {
            Ok(CardFormat::Histomap)
        } else if dir.join(wsinfer::CONFIG_FILE).is_file() {
            Ok(CardFormat::Wsinfer)
        } else if dir.exists() {
            Err(Error::model(
                dir,
                format!(
                    "not a model folder: neither {CARD_FILE} (histomap) nor {} (WSInfer)",
                    wsinfer::CONFIG_FILE
                ),
            ))
        } else {
            Err(Error::not_found(dir))
        }
    }

    /// The card of the model folder `dir`, read from this format's file.
    pub fn read(self, dir: &Path) -> Result<ModelCard> {
        match self {
            CardFormat::Histomap => read_card(dir),
            CardFormat::Wsinfer => wsinfer::card(dir),
        }
    }
}

impl std::fmt::Display for CardFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            CardFormat::Histomap => write!(f, "histomap card ({CARD_FILE})"),
            CardFormat::Wsinfer => write!(f, "WSInfer config ({})", wsinfer::CONFIG_FILE),
        }
    }
}

/// The card of a histomap model folder (`card.json`), or one made from a WSInfer
/// folder's `config.json`.
pub fn load_card(dir: &Path) -> Result<ModelCard> {
    CardFormat::of(dir)?.read(dir)
}

/// Writes a model with freshly initialised (random, untrained) weights. Its card says
/// `trained: false`: it exists to test the plumbing, never to look at its output.
/// Refuses to replace a model folder's weights unless `force`: a trained model must not
/// be lost to a random one by a mistyped path.
pub fn write_random(dir: &Path, card: &ModelCard, force: bool) -> Result<()> {
    let weights = dir.join(WEIGHTS_FILE);
    if weights.exists() && !force {
        return Err(Error::output(
            &weights,
            "exists; pass --force to replace it with random weights",
        ));
    }
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Network::new(card.architecture, vb, card.classes.len())?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    varmap
        .save(&weights)
        .map_err(|e| Error::output(&weights, format!("cannot write weights: {}", one_line(&e))))?;
    card::write_card(dir, card)
}
