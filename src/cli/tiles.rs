//! The tile dataset arguments `split` and `train` share, and the checks and warnings
//! of loading one.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use histomap::learn::dataset::{self, Dataset};
use histomap::pipeline::Pipeline;
use histomap::progress::warn_checked;

/// A tile dataset and the pipeline whose classes label it.
#[derive(Args)]
pub struct TileArgs {
    /// Class folders, a Kaggle folder (train/ + train_labels.csv), a manifest CSV
    /// (path,label[,group][,split]; group may be called patient or slide) or a folder
    /// of PCam HDF5 files (*_x.h5 + *_y.h5).
    #[arg(long)]
    pub data: PathBuf,
    /// Pipeline file: the classes (by name, in order), input size, MPP.
    #[arg(long, short)]
    pub pipeline: PathBuf,
    /// Leave out tiles that cannot be read or decoded, with a warning and a count
    /// (default: the first one is an error naming it). Every tile is read once before
    /// any work starts.
    #[arg(long)]
    pub skip_bad: bool,
}

impl TileArgs {
    /// The pipeline, the dataset's readable tiles (but for its `test` split: see
    /// [`load_tiles`]), and their hashes.
    pub fn load(&self) -> anyhow::Result<(Pipeline, Dataset, Vec<[u8; 32]>)> {
        let pipeline = Pipeline::load(&self.pipeline)?;
        let (dataset, hashes) = load_tiles(&self.data, &pipeline, self.skip_bad)?;
        Ok((pipeline, dataset, hashes))
    }
}

/// Loads and checks a tile dataset for `split` and `train`, warning of the tiles
/// `skip_bad` left out and of tiles not of the pipeline's patch size, and reporting
/// exact duplicates. Tiles of the data's own `test` split (PCam ships one beside train
/// and valid) are left out too: training and its folds never see them.
pub fn load_tiles(
    data: &Path,
    pipeline: &Pipeline,
    skip_bad: bool,
) -> anyhow::Result<(Dataset, Vec<[u8; 32]>)> {
    let size = pipeline.patch_size;
    let mut dataset = Dataset::load(data, &pipeline.class_names())?;
    let before = dataset.samples.len();
    dataset
        .samples
        .retain(|s| s.split.as_deref() != Some("test"));
    let tests = before - dataset.samples.len();
    if tests > 0 {
        if dataset.samples.is_empty() {
            bail!(
                "{}: all {tests} tiles are in the data's test split, which split and train never use",
                data.display()
            );
        }
        eprintln!("histomap: left out the {tests} tile(s) of the data's test split");
    }
    let checked = dataset.check(skip_bad)?;
    warn_checked(&checked.skipped, checked.size_warning(size).as_deref());
    let hashes = checked.hashes;
    let dups = dataset::duplicates(&hashes);
    if !dups.is_empty() {
        eprintln!(
            "histomap: {} group(s) of byte-identical tiles ({} extra copies); none straddles training and validation",
            dups.len(),
            dups.iter().map(|g| g.len() - 1).sum::<usize>()
        );
    }
    // The same pixels under two labels: at least one label is wrong, and no split can
    // keep that from training.
    let label = |i: usize| &dataset.classes[dataset.samples[i].label];
    // Per group, its first tile and the first tile labelled otherwise.
    let conflicts: Vec<(usize, usize)> = dups
        .iter()
        .filter_map(|g| {
            g.iter()
                .find(|&&i| label(i) != label(g[0]))
                .map(|&i| (g[0], i))
        })
        .collect();
    if let Some(&(first, other)) = conflicts.first() {
        eprintln!(
            "histomap: warning: {} group(s) of byte-identical tiles carry different labels, \
             e.g. {} ({}) and {} ({})",
            conflicts.len(),
            dataset.samples[first].tile.name(),
            label(first),
            dataset.samples[other].tile.name(),
            label(other)
        );
    }
    Ok((dataset, hashes))
}
