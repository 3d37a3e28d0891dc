//! Pipeline files (`pipelines/*.toml`). In: a TOML file. Out: a validated [`Pipeline`].
//!
//! Two steps: [`PipelineFile`] mirrors the file (unknown keys are errors, so a typo
//! never silently falls back to a default), then [`PipelineFile::validate`] checks
//! values and resolves paths into the runtime [`Pipeline`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A pipeline file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Short name, used in reports.
    pub name: String,
    /// One line on what the pipeline is for.
    #[serde(default)]
    pub description: String,
    /// How patches are cut.
    pub patch: PatchSection,
    /// How background is told from tissue.
    #[serde(default)]
    pub tissue: TissueSection,
    /// Which model classifies the patches.
    pub model: ModelSection,
    /// Per-channel normalisation applied to RGB in [0, 1]. When set, training uses it and
    /// a model must have been trained with it; when absent, training measures it on the
    /// training split and `heatmap` takes it from the model's card.
    #[serde(default)]
    pub normalization: Option<Normalization>,
    /// Classes in the model's output order, with display colours.
    pub classes: Vec<ClassSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchSection {
    /// Side of the square patch the model sees, in pixels at `mpp`.
    pub size: u32,
    /// Distance between neighbouring patches, in pixels at `mpp`; less than `size` overlaps.
    pub stride: u32,
    /// Microns per pixel the model was trained at.
    pub mpp: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TissueSection {
    /// A patch is classified when at least this fraction of it is tissue (0..=1).
    #[serde(default = "default_min_fraction")]
    pub min_fraction: f32,
    /// Saturation (0..=255) below which a pixel is never tissue, whatever Otsu says.
    #[serde(default = "default_min_saturation")]
    pub min_saturation: u8,
}

fn default_min_fraction() -> f32 {
    0.5
}

fn default_min_saturation() -> u8 {
    20
}

impl Default for TissueSection {
    fn default() -> Self {
        Self {
            min_fraction: default_min_fraction(),
            min_saturation: default_min_saturation(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Model directory (`card.json` + `model.safetensors`), relative to the pipeline file.
    pub path: PathBuf,
    /// Patches per forward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

impl Normalization {
    /// ImageNet statistics, for models that start from ImageNet conventions.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

/// Patches per forward pass when a pipeline does not say.
pub const DEFAULT_BATCH: usize = 32;

fn default_batch() -> usize {
    DEFAULT_BATCH
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Mean of R, G, B in [0, 1], subtracted first.
    pub mean: [f32; 3],
    /// Standard deviation of R, G, B, divided by second.
    pub std: [f32; 3],
}

impl Normalization {
    /// Refuses statistics that would turn pixels into NaN or infinity.
    pub fn check(&self) -> std::result::Result<(), String> {
        let finite = self.mean.iter().chain(&self.std).all(|v| v.is_finite());
        if !finite || self.std.iter().any(|s| *s <= 0.0) {
            return Err(format!(
                "normalization mean {:?} / std {:?}: expected finite values and a positive std",
                self.mean, self.std
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSection {
    /// Class name as the model card and QuPath show it.
    pub name: String,
    /// Display colour, `#rrggbb`.
    pub color: String,
}

/// A class with its parsed colour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Class {
    pub name: String,
    #[serde(with = "hex_color")]
    pub color: [u8; 3],
}

/// Display colours of classes whose pipeline or model gives none (a WSInfer config),
/// in class order, repeating after eight.
pub const PALETTE: [[u8; 3]; 8] = [
    [0x3c, 0xb4, 0x4b],
    [0xe6, 0x19, 0x4b],
    [0x43, 0x63, 0xd8],
    [0xf5, 0x82, 0x31],
    [0x91, 0x1e, 0xb4],
    [0x9a, 0x63, 0x24],
    [0xff, 0xe1, 0x19],
    [0xa9, 0xa9, 0xa9],
];

impl Class {
    /// The name made safe for a file name (`prob_<stem>.png`); validation refuses two
    /// classes with the same stem.
    pub fn file_stem(&self) -> String {
        self.name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// The validated pipeline the rest of the library runs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub source: PathBuf,
    pub patch_size: u32,
    pub stride: u32,
    pub mpp: f64,
    pub min_tissue: f32,
    pub min_saturation: u8,
    pub model_path: PathBuf,
    pub batch_size: usize,
    pub normalization: Option<Normalization>,
    pub classes: Vec<Class>,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: PipelineFile = toml::from_str(&text).map_err(|e| {
            // toml's Display draws the line with carets over several lines; one line
            // naming the place reads better in a batch log.
            let place = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = before[line_start..].chars().count() + 1;
                format!("line {line}, column {column}: ")
            });
            Error::pipeline(path, format!("{place}{}", e.message().trim()))
        })?;
        file.validate(path)
    }
}

impl Pipeline {
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    /// Replaces the stride (a command-line override), with the file's checks. The patch
    /// size has no override: it is the model's input size.
    pub fn set_stride(&mut self, stride: u32) -> Result<()> {
        let allowed = strides(self.patch_size);
        if !allowed.contains(&stride) {
            return Err(Error::Usage(format!(
                "--stride {stride}: expected {allowed:?} (at most 4 × the {} px patch of {})",
                self.patch_size,
                self.source.display()
            )));
        }
        self.stride = stride;
        Ok(())
    }
}

/// The most patches in one batch: 4096 patches of 224 px are 2.5 GB of input alone.
pub const MAX_BATCH: usize = 4096;

/// The strides a patch size allows: beyond a few patch sizes a grid samples too little
/// of a slide to map it.
fn strides(patch_size: u32) -> std::ops::RangeInclusive<u32> {
    1..=4 * patch_size
}

/// Microns per pixel a scan or a model can have: from 0.01 to 100, exclusive (a typo
/// beyond would plan patches of a pixel or patches larger than any slide).
pub fn plausible_mpp(mpp: f64) -> bool {
    mpp.is_finite() && mpp > 0.01 && mpp < 100.0
}

/// The largest patch side, of a pipeline or a model: one such patch is 192 MiB of f32
/// input.
pub const MAX_PATCH: u32 = 4096;

fn check_patch(size: u32, stride: u32) -> Result<(), String> {
    if !(8..=MAX_PATCH).contains(&size) {
        return Err(format!("patch.size = {size} (expected 8..={MAX_PATCH})"));
    }
    let allowed = strides(size);
    if !allowed.contains(&stride) {
        return Err(format!("patch.stride = {stride} (expected {allowed:?})"));
    }
    Ok(())
}

/// Refuses classes no set of maps could be made for: fewer than two, a name empty or
/// repeated, two names whose probability maps would overwrite each other.
pub fn check_classes(classes: &[Class]) -> Result<(), String> {
    if classes.len() < 2 {
        return Err(format!(
            "{} class(es) given; a classifier needs at least 2",
            classes.len()
        ));
    }
    for (i, c) in classes.iter().enumerate() {
        let before = &classes[..i];
        if c.name.trim().is_empty() || before.iter().any(|k| k.name == c.name) {
            return Err(format!("class name {:?} is empty or repeated", c.name));
        }
        let stem = c.file_stem();
        if let Some(k) = before.iter().find(|k| k.file_stem() == stem) {
            return Err(format!(
                "class names {:?} and {:?} both make the file name prob_{stem}.png",
                k.name, c.name
            ));
        }
    }
    Ok(())
}

impl PipelineFile {
    pub fn validate(self, path: &Path) -> Result<Pipeline> {
        let err = |msg: String| Err(Error::pipeline(path, msg));
        let p = &self.patch;
        check_patch(p.size, p.stride).map_err(|msg| Error::pipeline(path, msg))?;
        if !plausible_mpp(p.mpp) {
            return err(format!(
                "patch.mpp = {} (expected microns per pixel, 0.01..100)",
                p.mpp
            ));
        }
        if !(0.0..=1.0).contains(&self.tissue.min_fraction) {
            return err(format!(
                "tissue.min_fraction = {} (expected 0..=1)",
                self.tissue.min_fraction
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.model.batch_size) {
            return err(format!(
                "model.batch_size = {} (expected 1..={MAX_BATCH})",
                self.model.batch_size
            ));
        }
        if let Some(n) = &self.normalization {
            n.check().map_err(|msg| Error::pipeline(path, msg))?;
        }
        let mut classes = Vec::with_capacity(self.classes.len());
        for c in self.classes {
            let Some(color) = hex_color::parse(&c.color) else {
                return err(format!(
                    "class {:?}: colour {:?} is not #rrggbb",
                    c.name, c.color
                ));
            };
            classes.push(Class {
                name: c.name,
                color,
            });
        }
        check_classes(&classes).map_err(|msg| Error::pipeline(path, msg))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Pipeline {
            name: self.name,
            source: path.to_path_buf(),
            patch_size: p.size,
            stride: p.stride,
            mpp: p.mpp,
            min_tissue: self.tissue.min_fraction,
            min_saturation: self.tissue.min_saturation,
            model_path: base.join(&self.model.path),
            batch_size: self.model.batch_size,
            normalization: self.normalization,
            classes,
        })
    }
}

/// `#rrggbb` colours, as pipeline files and model cards write them.
pub mod hex_color {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(s: &str) -> Option<[u8; 3]> {
        let hex = s.strip_prefix('#')?;
        if hex.len() != 6 || !hex.is_ascii() {
            return None;
        }
        let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
        Some([c(0)?, c(2)?, c(4)?])
    }

    pub fn format(c: [u8; 3]) -> String {
        format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
    }

    pub fn serialize<S: Serializer>(c: &[u8; 3], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*c))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 3], D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom(format!("colour {s:?} is not #rrggbb")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"
name = "t"
[patch]
size = 96
stride = 96
mpp = 0.97
[model]
path = "../models/x"
[normalization]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[[classes]]
name = "normal"
color = "#00ff00"
[[classes]]
name = "tumour"
color = "#FF0000"
"##;

    fn parse(text: &str) -> Result<Pipeline> {
        let file: PipelineFile = toml::from_str(text).map_err(|e| Error::pipeline("p.toml", e))?;
        file.validate(Path::new("pipelines/p.toml"))
    }

    #[test]
    fn valid_file_resolves_model_path_and_colours() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.model_path, Path::new("pipelines/../models/x"));
        assert_eq!(p.classes[1].color, [255, 0, 0]);
        assert_eq!(p.min_tissue, 0.5);
    }

    #[test]
    fn unknown_key_is_refused() {
        let text = GOOD.replace("stride = 96", "stride = 96\nstrid = 3");
        assert!(parse(&text).unwrap_err().to_string().contains("strid"));
    }

    #[test]
    fn bad_values_are_named() {
        let text = GOOD.replace("mpp = 0.97", "mpp = -1.0");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("patch.mpp = -1"));
        let text = GOOD.replace("#00ff00", "green");
        assert!(parse(&text).unwrap_err().to_string().contains("\"green\""));
        let text = GOOD.replace("[0.25, 0.25, 0.25]", "[0.25, 0.0, 0.25]");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("expected finite values and a positive std"));
        // Two classes whose probability maps would overwrite each other.
        let text = GOOD
            .replace("\"normal\"", "\"tumour/x\"")
            .replace("\"tumour\"", "\"tumour_x\"");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("both make the file name prob_tumour_x.png"));
    }
}
