//! `histomap split`: grouped, stratified folds of a tile dataset.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use histomap::learn::split;

use super::args::at_least;
use super::tiles::TileArgs;

#[derive(Args)]
pub struct SplitArgs {
    #[command(flatten)]
    tiles: TileArgs,
    /// CSV file to write.
    #[arg(long, short)]
    out: PathBuf,
    /// Number of folds (at least 2; at most the number of groups can hold tiles).
    #[arg(long, default_value_t = 5, value_parser = at_least::<2>)]
    folds: usize,
    /// Seed of the shuffle that assigns groups to folds.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: SplitArgs) -> anyhow::Result<ExitCode> {
    let SplitArgs {
        tiles,
        out,
        folds,
        seed,
    } = a;
    let same = |a: &Path, b: &Path| {
        std::fs::canonicalize(a).is_ok_and(|a| std::fs::canonicalize(b).is_ok_and(|b| a == b))
    };
    if same(&out, &tiles.data) {
        bail!(
            "{}: --out names the --data file; the split goes to a file of its own",
            out.display()
        );
    }
    let (_, dataset, hashes) = tiles.load()?;
    let fold = split::grouped_folds(
        &dataset.samples,
        &hashes,
        dataset.classes.len(),
        folds,
        seed,
    );
    let used = fold.iter().collect::<std::collections::HashSet<_>>().len();
    if used < 2 {
        bail!(
            "{}: all {} tiles are one group (patient or slide, with the tiles that \
                 share its bytes): no split can keep validation apart from training",
            tiles.data.display(),
            dataset.samples.len()
        );
    }
    if used < folds {
        eprintln!(
            "histomap: warning: only {used} of {folds} folds hold tiles: the data has \
                 too few groups (patients or slides) for more"
        );
    }
    split::write_csv(&out, &dataset, &fold)?;
    eprintln!(
        "wrote {} tiles in {folds} folds to {}",
        dataset.samples.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
