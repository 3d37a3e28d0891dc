//! `card.json`, what a model folder says about its weights. In: a model folder. Out: a
//! checked [`ModelCard`]: architecture, classes and colours, input size and MPP,
//! normalisation, whether the weights were trained, and how. A card that disagrees
//! with the pipeline is refused before any slide is read; with no pipeline file, the
//! card makes the pipeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Architecture;
use crate::error::{Error, Result};
use crate::learn::augment::Augment;
use crate::pipeline::{
    check_classes, plausible_mpp, Class, Normalization, Pipeline, TissueSection, DEFAULT_BATCH,
};
use crate::stain;

pub const CARD_FILE: &str = "card.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub(super) const CARD_FORMAT: &str = "histomap-model/1";

/// `card.json`: everything needed to use the weights correctly, and where they came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Always `histomap-model/1`.
    pub format: String,
    pub architecture: Architecture,
    /// Side of the square input, in pixels.
    pub input_size: u32,
    /// Microns per pixel of the training patches.
    pub mpp: f64,
    /// Output classes in logit order.
    pub classes: Vec<Class>,
    pub normalization: Normalization,
    /// False for randomly initialised weights: their outputs mean nothing.
    pub trained: bool,
    /// Where the weights came from, in words.
    pub provenance: String,
    /// Validation metrics of a trained model.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// How a trained model was trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingRecord>,
    /// int8 measured against f32 (`histomap calibrate`, or the end of `train`):
    /// `--precision auto` runs int8 only where this says it keeps the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Check>,
    /// The stain normalisation the model was trained with: `heatmap` and `evaluate`
    /// apply it unless told otherwise.
    #[serde(default, skip_serializing_if = "is_no_stain_norm")]
    pub stain_norm: stain::Method,
    /// What normalised pixels should look like: fitted on the training tiles by
    /// `train --stain-norm`, or recorded by `histomap stain-fit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stain_target: Option<stain::Target>,
    pub histomap_version: String,
}

fn is_no_stain_norm(m: &stain::Method) -> bool {
    *m == stain::Method::None
}

/// Least share of tiles whose class int8 must keep for `--precision auto` to run it.
pub const INT8_MIN_AGREEMENT: f64 = 0.995;

/// What int8 did against f32 on tiles the model was not trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Check {
    /// The quantisation measured ([`crate::model::int8::SCHEME`]): a check of another
    /// scheme says nothing about this one.
    pub scheme: u32,
    /// Share of tiles whose predicted class `--precision auto` (int8, with close calls
    /// run again in f32) and f32 agree on. With a recheck, the margin applied to each
    /// half of the tiles is the one chosen on the other half: measured on tiles the
    /// margin was not chosen on.
    pub agreement: f64,
    pub tiles: usize,
    /// Close calls that `auto` runs again in f32; `None`: int8 kept every class, or
    /// a check older than rechecking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck: Option<Recheck>,
    /// Largest change of any class probability int8 alone made.
    pub max_prob_diff: f64,
    /// The tiles, in words (path and split).
    pub data: String,
    pub histomap_version: String,
}

/// Which patches `--precision auto` runs again in f32, as calibration chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recheck {
    /// int8 logit margin (top class minus the next) below which a patch is run again
    /// in f32: int8 changed the class only of patches this close to a tie.
    pub margin: f64,
    /// Share of the measured tiles below the margin: what `auto` runs twice.
    pub share: f64,
    /// Share of the measured tiles whose class int8 alone keeps.
    pub int8_agreement: f64,
}

impl std::fmt::Display for Int8Check {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let int8 = self
            .recheck
            .as_ref()
            .map_or(self.agreement, |r| r.int8_agreement);
        write!(
            f,
            "int8 kept f32's class on {:.2}% of {} patches of {}",
            100.0 * int8,
            self.tiles,
            self.data
        )?;
        if let Some(r) = &self.recheck {
            write!(
                f,
                "; running the {:.1}% whose top two logits are within {:.3} again in f32 \
                 keeps it on {:.2}%, each half judged with the margin the other chose",
                100.0 * r.share,
                r.margin,
                100.0 * self.agreement
            )?;
        }
        write!(
            f,
            " (int8 moved probabilities by at most {:.3}; scheme {})",
            self.max_prob_diff, self.scheme
        )
    }
}

impl ModelCard {
    /// What `--precision auto` runs this model in, and why, in words.
    pub fn auto_precision(&self) -> String {
        match (
            self.int8_refusal(),
            self.int8.as_ref().and_then(|c| c.recheck.as_ref()),
        ) {
            (None, None) => "int8 where the CPU has AVX2".into(),
            (None, Some(r)) => format!(
                "int8 where the CPU has AVX2, and f32 again for patches whose top two int8 \
                 logits are within {:.3} (measured: {:.1}% of patches)",
                r.margin,
                100.0 * r.share
            ),
            (Some(why), _) => format!("f32: {why}"),
        }
    }

    /// Why `--precision auto` must not run this model in int8, or `None` when its
    /// recorded check allows it.
    pub fn int8_refusal(&self) -> Option<String> {
        let Some(c) = &self.int8 else {
            return Some(
                "no int8 check in its card (`histomap calibrate --model DIR --data TILES` \
                 measures one)"
                    .into(),
            );
        };
        let scheme = crate::model::int8::SCHEME;
        if c.scheme != scheme {
            return Some(format!(
                "its int8 check measured quantisation scheme {}, not this version's {scheme} \
                 (run `histomap calibrate` again)",
                c.scheme
            ));
        }
        (c.agreement < INT8_MIN_AGREEMENT).then(|| {
            format!(
                "int8 kept the class of {:.2}% of {} patches of {} (auto needs {}%)",
                100.0 * c.agreement,
                c.tiles,
                c.data,
                100.0 * INT8_MIN_AGREEMENT
            )
        })
    }
}

impl ModelCard {
    /// The stain normalisation a run of this model applies: `requested`, else the one
    /// it was trained with; mapping to `reference` (an image's target), else to the
    /// card's own target. Fails for a method without a target.
    pub fn stain(
        &self,
        requested: Option<stain::Method>,
        reference: Option<stain::Target>,
    ) -> std::result::Result<Option<stain::Normalize>, String> {
        let method = requested.unwrap_or(self.stain_norm);
        if method == stain::Method::None {
            return Ok(None);
        }
        let (target, from) = match (reference, &self.stain_target) {
            (Some(r), _) => {
                let from = r.fitted_on.clone();
                (r, from)
            }
            (None, Some(t)) => (
                t.clone(),
                format!("the model card's target ({})", t.fitted_on),
            ),
            (None, None) => {
                return Err(format!(
                    "--stain-norm {method} needs a target and the model card records none: \
                     give --stain-ref IMAGE, or record one with `histomap stain-fit --model DIR`"
                ));
            }
        };
        Ok(stain::Normalize::new(method, target, from))
    }

    /// The card of a model built for `pipeline`.
    pub fn for_pipeline(
        pipeline: &Pipeline,
        architecture: Architecture,
        trained: bool,
        provenance: String,
    ) -> Self {
        Self {
            format: CARD_FORMAT.into(),
            architecture,
            input_size: pipeline.patch_size,
            mpp: pipeline.mpp,
            classes: pipeline.classes.clone(),
            normalization: pipeline
                .normalization
                .clone()
                .unwrap_or(Normalization::IMAGENET),
            trained,
            provenance,
            metrics: BTreeMap::new(),
            training: None,
            int8: None,
            stain_norm: stain::Method::None,
            stain_target: None,
            histomap_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Refuses a card no pipeline could use; `path` names the file it came from. Its
    /// values are checked as a pipeline file's are, since without a pipeline file they
    /// are the pipeline ([`ModelCard::pipeline`]).
    pub fn check(&self, path: &Path) -> Result<()> {
        check_classes(&self.classes).map_err(|msg| Error::model(path, msg))?;
        self.architecture.check_input_size(self.input_size, path)?;
        if !plausible_mpp(self.mpp) {
            return Err(Error::model(
                path,
                format!("mpp {} (expected microns per pixel, 0.01..100)", self.mpp),
            ));
        }
        self.normalization
            .check()
            .map_err(|msg| Error::model(path, msg))
    }

    /// The pipeline the model in `dir` runs with when no pipeline file is given: the
    /// card's patch size, MPP, classes and normalisation, and what a pipeline file may
    /// leave out at its defaults (tissue thresholds, batch size), with patches side by
    /// side (stride = patch size). The folder names it in reports and `summary.json`.
    pub fn pipeline(&self, dir: &Path) -> Pipeline {
        let tissue = TissueSection::default();
        let name = crate::canonical(dir)
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        Pipeline {
            name,
            source: dir.to_path_buf(),
            patch_size: self.input_size,
            stride: self.input_size,
            mpp: self.mpp,
            min_tissue: tissue.min_fraction,
            min_saturation: tissue.min_saturation,
            model_path: dir.to_path_buf(),
            batch_size: DEFAULT_BATCH,
            normalization: Some(self.normalization.clone()),
            classes: self.classes.clone(),
        }
    }

    /// Refuses a model that would silently give wrong answers with this pipeline.
    pub fn check_against(&self, pipeline: &Pipeline, model_dir: &Path) -> Result<()> {
        let names = |c: &[Class]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        let (ours, theirs) = (names(&self.classes), names(&pipeline.classes));
        let fail = |msg: String| Err(Error::model(model_dir, msg));
        if ours != theirs {
            return fail(format!(
                "model classes {ours:?} do not match pipeline {} classes {theirs:?}",
                pipeline.source.display()
            ));
        }
        if self.input_size != pipeline.patch_size {
            return fail(format!(
                "model input is {} px but pipeline patch.size is {}",
                self.input_size, pipeline.patch_size
            ));
        }
        if (self.mpp / pipeline.mpp - 1.0).abs() > 0.05 {
            return fail(format!(
                "model was trained at {} µm/px but pipeline patch.mpp is {}",
                self.mpp, pipeline.mpp
            ));
        }
        let close = |a: &[f32; 3], b: &[f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        if let Some(p) = &pipeline.normalization {
            let m = &self.normalization;
            if !close(&m.mean, &p.mean) || !close(&m.std, &p.std) {
                return fail(format!(
                    "model normalisation (mean {:?}, std {:?}) differs from the pipeline's (mean {:?}, std {:?})",
                    m.mean, m.std, p.mean, p.std
                ));
            }
        }
        Ok(())
    }
}

/// The training record a trained model's card carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// The datasets the tiles came from (`--data`, then `--extra-train`).
    pub data: Vec<PathBuf>,
    pub train_files: usize,
    pub val_files: usize,
    /// SHA-256 of the sorted list of training and validation file paths with their side.
    pub split_sha256: String,
    pub epochs: usize,
    pub best_epoch: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub augment: Augment,
    /// The model whose weights started the training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// How a pretrained start was fine-tuned; absent when training started from seeded
    /// weights or in cards of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
    /// The decay per step of the weight average the model holds (`--ema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// The learning-rate warm-up as a fraction of all steps (`--warmup`); absent: one
    /// epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<f64>,
    /// AdamW weight decay; absent in cards of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Early-stopping patience in epochs; absent in cards of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// Which tiles validated ([`Split::validation`]); absent in cards of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
}

/// How training treats a pretrained start (`train --init`): the body (every layer but
/// the classifier head) can learn more slowly than the head, wait while the new head
/// learns, or stay as it is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTune {
    /// The start is an ImageNet backbone (`--init imagenet`): weights without a head,
    /// inputs normalised with ImageNet's mean and deviation.
    #[serde(default)]
    pub imagenet: bool,
    /// The body's learning rate as a fraction of the head's.
    pub body_lr: f64,
    /// Epochs at the start that train the head alone.
    pub head_epochs: usize,
    /// The body never trains.
    pub freeze_body: bool,
    /// BatchNorm keeps its running statistics (inference mode) while training: for
    /// batches too small for batch statistics.
    pub freeze_bn: bool,
}

impl Default for FineTune {
    fn default() -> Self {
        Self {
            imagenet: false,
            body_lr: 1.0,
            head_epochs: 0,
            freeze_body: false,
            freeze_bn: false,
        }
    }
}

/// Writes `card` as the `card.json` of `dir`, atomically.
pub fn write_card(dir: &Path, card: &ModelCard) -> Result<()> {
    crate::output::write_atomic(
        &dir.join(CARD_FILE),
        &serde_json::to_vec_pretty(card).expect("card serialises"),
    )
}

pub fn read_card(dir: &Path) -> Result<ModelCard> {
    let path = dir.join(CARD_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let card: ModelCard = serde_json::from_str(&text)
        .map_err(|e| Error::model(&path, format!("invalid model card: {e}")))?;
    if card.format != CARD_FORMAT {
        return Err(Error::model(
            &path,
            format!("card format {:?}, expected {CARD_FORMAT:?}", card.format),
        ));
    }
    card.check(&path)?;
    Ok(card)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;
    use crate::pipeline::PipelineFile;

    fn class(name: &str) -> Class {
        Class {
            name: name.into(),
            color: [0, 0, 0],
        }
    }

    fn good() -> ModelCard {
        ModelCard {
            format: CARD_FORMAT.into(),
            architecture: Architecture::Smallcnn,
            input_size: 16,
            mpp: 0.5,
            classes: vec![class("a"), class("b")],
            normalization: Normalization::IMAGENET,
            trained: false,
            provenance: String::new(),
            metrics: BTreeMap::new(),
            training: None,
            int8: None,
            stain_norm: stain::Method::None,
            stain_target: None,
            histomap_version: String::new(),
        }
    }

    #[test]
    fn auto_runs_int8_only_on_a_recorded_check_of_this_scheme_that_keeps_the_class() {
        let check = |scheme, agreement| Int8Check {
            scheme,
            agreement,
            tiles: 1000,
            recheck: None,
            max_prob_diff: 0.01,
            data: "valid".into(),
            histomap_version: String::new(),
        };
        let with = |c| ModelCard { int8: c, ..good() };
        let now = crate::model::int8::SCHEME;
        assert!(with(None)
            .int8_refusal()
            .unwrap()
            .contains("histomap calibrate"));
        assert_eq!(with(Some(check(now, 0.996))).int8_refusal(), None);
        assert_eq!(
            with(Some(check(now, INT8_MIN_AGREEMENT))).int8_refusal(),
            None
        );
        let low = with(Some(check(now, 0.9897))).int8_refusal().unwrap();
        assert!(low.contains("98.97% of 1000 patches of valid"), "{low}");
        let stale = with(Some(check(now + 1, 1.0))).int8_refusal().unwrap();
        assert!(stale.contains("calibrate` again"), "{stale}");
    }

    #[test]
    fn cards_no_pipeline_could_use_are_refused() {
        let good = good();
        let path = Path::new("m/card.json");
        assert!(good.check(path).is_ok());
        let refused = |card: ModelCard, want: &str| {
            let err = card.check(path).unwrap_err().to_string();
            assert!(err.contains("m/card.json") && err.contains(want), "{err}");
        };
        refused(
            ModelCard {
                input_size: 15,
                ..good.clone()
            },
            "a smallcnn needs an input of at least 16 px, not 15",
        );
        refused(
            ModelCard {
                input_size: 5000,
                ..good.clone()
            },
            "input of 5000 px: patches are at most 4096 px",
        );
        for mpp in [0.0, f64::NAN] {
            refused(
                ModelCard {
                    mpp,
                    ..good.clone()
                },
                &format!("mpp {mpp} "),
            );
        }
        let mut flat = good.clone();
        flat.normalization.std[1] = 0.0;
        refused(flat, "positive std");
        refused(
            ModelCard {
                classes: vec![class("a/b"), class("a_b")],
                ..good.clone()
            },
            "both make the file name prob_a_b.png",
        );
        refused(
            ModelCard {
                classes: vec![class("a")],
                ..good
            },
            "a classifier needs at least 2",
        );
        assert_eq!(Architecture::Resnet18.min_input_size(), 8);
    }

    #[test]
    fn a_card_alone_makes_the_pipeline_a_file_of_its_values_would() {
        let card = ModelCard {
            input_size: 96,
            mpp: 0.97,
            ..good()
        };
        let dir = Path::new("models/x");
        let p = card.pipeline(dir);
        // The file a user would write for this model, leaving out what has a default.
        let text = r##"
name = "x"
[patch]
size = 96
stride = 96
mpp = 0.97
[model]
path = "x"
[[classes]]
name = "a"
color = "#000000"
[[classes]]
name = "b"
color = "#000000"
"##;
        let file: PipelineFile = toml::from_str(text).unwrap();
        let f = file.validate(Path::new("models/x.toml")).unwrap();
        assert_eq!((p.name.as_str(), p.source.as_path()), ("x", dir));
        assert_eq!(p.model_path, f.model_path);
        assert_eq!(
            (p.patch_size, p.stride, p.mpp),
            (f.patch_size, f.stride, f.mpp)
        );
        assert_eq!(
            (p.min_tissue, p.min_saturation),
            (f.min_tissue, f.min_saturation)
        );
        assert_eq!(p.batch_size, f.batch_size);
        assert_eq!(p.classes, f.classes);
        // A file may leave normalisation to the card; the card's own is the card's.
        assert_eq!(p.normalization, Some(Normalization::IMAGENET));
        assert!(card.check_against(&p, dir).is_ok());
    }
}
