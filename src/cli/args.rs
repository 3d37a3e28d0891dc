//! Argument parsers and small helpers the subcommands share.

use std::path::PathBuf;

use candle_core::Device;
use histomap::model::DeviceChoice;

/// Test-time augmentation (`--tta`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tta {
    None,
    D4,
}

/// clap parser: a whole number of at least `MIN`.
pub fn at_least<const MIN: usize>(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        Ok(n) => Err(format!("{n} is below the least allowed, {MIN}")),
        Err(e) => Err(e.to_string()),
    }
}

/// clap parser: tiles in a batch, 1 to [`histomap::pipeline::MAX_BATCH`].
pub fn batch_size(s: &str) -> Result<usize, String> {
    at_most(s, histomap::pipeline::MAX_BATCH)
}

/// clap parser: threads, 1 to 1024 (thousands of threads only stall a machine).
pub fn threads(s: &str) -> Result<usize, String> {
    at_most(s, 1024)
}

pub fn at_most(s: &str, most: usize) -> Result<usize, String> {
    let n = at_least::<1>(s)?;
    if n > most {
        return Err(format!("{n} is above the most allowed, {most}"));
    }
    Ok(n)
}

/// clap parser: microns per pixel ([`histomap::pipeline::plausible_mpp`]).
pub fn mpp(s: &str) -> Result<f64, String> {
    finite(s, histomap::pipeline::plausible_mpp, "between 0.01 and 100")
}

/// clap parser: a data-given split's name, as manifests may spell it (`val`, `Valid`).
pub fn split_name(s: &str) -> Result<String, String> {
    histomap::learn::dataset::split_name(s)?.ok_or_else(|| "a split name cannot be blank".into())
}

/// clap parser: a share, from 0 to 1.
pub fn share(s: &str) -> Result<f64, String> {
    finite(s, |x| (0.0..=1.0).contains(&x), "from 0 to 1")
}

/// clap parser: a finite number of at least 0.
pub fn non_negative(s: &str) -> Result<f64, String> {
    finite(s, |x| x >= 0.0, "of at least 0")
}

pub fn finite(s: &str, ok: impl Fn(f64) -> bool, want: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && ok(x) => Ok(x),
        Ok(x) => Err(format!("{x} is not a finite number {want}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Paths as a user typed them, comma-separated.
pub fn shown(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// The device `--device` names; where `auto` falls back to the CPU in a CUDA build,
/// says so once.
pub fn device(choice: DeviceChoice) -> anyhow::Result<Device> {
    let (device, fallback) = choice.device()?;
    if let Some(line) = fallback {
        eprintln!("histomap: warning: {line}");
    }
    Ok(device)
}

pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Stain normalisation options, shared by `heatmap`, `evaluate` and `train`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StainArgs {
    /// Stain normalisation: map each slide's (or tile's) colours, from its own stains
    /// estimated once, to a target's. macenko maps H&E stain vectors and amounts;
    /// reinhard matches LAB colour statistics. Default: what the model was trained
    /// with (its card's stain_norm; none for a card that records none).
    #[arg(long, value_enum, value_name = "METHOD")]
    pub stain_norm: Option<histomap::stain::Method>,
    /// An image (PNG, JPEG, TIFF: a tile or region stained as the model's training
    /// data) whose stains are the target. Default: the model card's target (`histomap
    /// stain-fit` records one).
    #[arg(long, value_name = "IMAGE")]
    pub stain_ref: Option<PathBuf>,
}

impl StainArgs {
    /// The run's normalisation for a model with this card.
    pub fn resolve(
        &self,
        card: &histomap::model::card::ModelCard,
        model_dir: &std::path::Path,
    ) -> anyhow::Result<Option<histomap::stain::Normalize>> {
        // An image's target is named after the image (its `fitted_on`).
        let reference = match &self.stain_ref {
            Some(p) => Some(histomap::stain::Target::from_image(p)?),
            None => None,
        };
        card.stain(self.stain_norm, reference)
            .map_err(|e| anyhow::anyhow!("{}: {e}", model_dir.display()))
    }

    /// These options as arguments, with absolute paths (for the workers of a batch).
    pub fn argv(&self) -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        if let Some(m) = self.stain_norm {
            v.extend(["--stain-norm".into(), m.name().into()]);
        }
        if let Some(p) = &self.stain_ref {
            v.extend(["--stain-ref".into(), absolute(p)?]);
        }
        Ok(v)
    }
}

/// `p` as an absolute path, for the command lines of child processes and workers.
pub fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::path::absolute(p)
        .map_err(|e| anyhow::anyhow!("{}: cannot make absolute: {e}", p.display()))?
        .display()
        .to_string())
}
