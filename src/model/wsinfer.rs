//! WSInfer model folders (`config.json` + `model.safetensors`), so users of WSInfer's
//! zoo can run their models here. The config becomes a [`ModelCard`]: architecture,
//! classes, patch size, spacing, and the `Normalize` step of its transform.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::card::CARD_FORMAT;
use super::{Architecture, ModelCard};
use crate::error::{Error, Result};
use crate::pipeline::{Class, Normalization, PALETTE};

pub const CONFIG_FILE: &str = "config.json";

#[derive(Deserialize)]
struct Config {
    architecture: String,
    num_classes: usize,
    class_names: Vec<String>,
    patch_size_pixels: u32,
    spacing_um_px: f64,
    #[serde(default)]
    transform: Vec<Transform>,
}

#[derive(Deserialize)]
struct Transform {
    name: String,
    #[serde(default)]
    arguments: Option<serde_json::Value>,
}

/// The card of a WSInfer model folder.
pub fn card(dir: &Path) -> Result<ModelCard> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let cfg: Config = serde_json::from_str(&text)
        .map_err(|e| Error::model(&path, format!("invalid WSInfer config: {e}")))?;
    let architecture = match cfg.architecture.to_ascii_lowercase().as_str() {
        "smallcnn" => Architecture::Smallcnn,
        "resnet18" => Architecture::Resnet18,
        "resnet34" => Architecture::Resnet34,
        "resnet50" => Architecture::Resnet50,
        "mobilenetv2" | "mobilenet_v2" => Architecture::Mobilenetv2,
        other => {
            return Err(Error::model(
                &path,
                format!(
                "architecture {other:?} is not supported (smallcnn, resnet18, resnet34, resnet50, mobilenetv2)"
            ),
            ))
        }
    };
    if cfg.class_names.len() != cfg.num_classes || cfg.num_classes < 2 {
        return Err(Error::model(
            &path,
            format!(
                "num_classes {} but {} class_names",
                cfg.num_classes,
                cfg.class_names.len()
            ),
        ));
    }
    let normalization = cfg
        .transform
        .iter()
        .find(|t| t.name == "Normalize")
        .and_then(|t| t.arguments.clone())
        .map(serde_json::from_value::<Normalization>)
        .transpose()
        .map_err(|e| Error::model(&path, format!("Normalize arguments: {e}")))?
        .unwrap_or(Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        });
    let card = ModelCard {
        format: CARD_FORMAT.into(),
        architecture,
        input_size: cfg.patch_size_pixels,
        mpp: cfg.spacing_um_px,
        classes: cfg
            .class_names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Class {
                name,
                color: PALETTE[i % PALETTE.len()],
            })
            .collect(),
        normalization,
        // WSInfer configs do not say; its zoo publishes trained models.
        trained: true,
        provenance: format!(
            "WSInfer model folder {} (config.json); training not recorded",
            dir.display()
        ),
        metrics: BTreeMap::new(),
        training: None,
        int8: None,
        stain_norm: crate::stain::Method::None,
        stain_target: None,
        histomap_version: env!("CARGO_PKG_VERSION").into(),
    };
    card.check(&path)?;
    Ok(card)
}
