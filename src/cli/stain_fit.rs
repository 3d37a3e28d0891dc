//! `histomap stain-fit`: fit a model's stain target on tiles or slides stained as its
//! training data, and record it in the model's card, which `--stain-norm` maps to.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use histomap::learn::stain_fit::{stain_fit, StainFitOptions};
use histomap::model::CARD_FILE;
use histomap::progress::EvalBar;

use super::args::split_name;

#[derive(Args)]
pub struct StainFitArgs {
    /// Model folder (card.json + model.safetensors, or a WSInfer model directory, which
    /// gets a card.json made from its config.json).
    #[arg(long)]
    model: PathBuf,
    /// Tiles stained as the model's training data (its training tiles are best), in
    /// any layout `train` reads; up to 1,000 of them, spread evenly, are pooled.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Only --data tiles of this data-given split: train, valid or test.
    #[arg(long, value_parser = split_name, requires = "data")]
    split: Option<String>,
    /// Slides stained as the model's training data: 64 tissue patches of each, spread
    /// over the slide and cut as `heatmap` cuts them, are pooled with --data.
    slides: Vec<PathBuf>,
    /// Leave out unreadable tiles, with a warning and a count (default: the first one
    /// is an error naming it).
    #[arg(long)]
    skip_bad: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: StainFitArgs) -> anyhow::Result<ExitCode> {
    let opts = StainFitOptions {
        data: a.data,
        split: a.split,
        slides: a.slides,
        skip_bad: a.skip_bad,
    };
    let card = stain_fit(&a.model, &opts, &EvalBar::new(a.quiet))?;
    let t = card
        .stain_target
        .as_ref()
        .expect("stain_fit records a target");
    let [h, e] = t.macenko.stain_matrix;
    println!("stain target fitted on {}", t.fitted_on);
    println!(
        "  macenko: H {h:.3?}, E {e:.3?}, max concentrations {:.3?}",
        t.macenko.max_concentrations
    );
    println!(
        "  reinhard: LAB means {:.2?}, deviations {:.2?}",
        t.reinhard.means, t.reinhard.stds
    );
    println!("wrote {}", a.model.join(CARD_FILE).display());
    Ok(ExitCode::SUCCESS)
}
