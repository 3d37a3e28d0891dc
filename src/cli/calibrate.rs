//! `histomap calibrate`: measure int8 against f32 on held-out tiles and record it in
//! the model's card, which is what `--precision auto` goes by.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use histomap::learn::calibrate::{calibrate, CalibrateOptions};
use histomap::model::{ModelCard, CARD_FILE};
use histomap::progress::EvalBar;

use super::args::{all_cores, batch_size, split_name};

#[derive(Args)]
pub struct CalibrateArgs {
    /// Model folder (card.json + model.safetensors, or a WSInfer model directory, which
    /// gets a card.json made from its config.json).
    #[arg(long)]
    model: PathBuf,
    /// Tiles the model was not trained on, in any layout `evaluate` reads; their labels
    /// are not used. The answer is only as good as these tiles are like the slides the
    /// model will map.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Only --data tiles of this data-given split: train, valid or test.
    #[arg(long, value_parser = split_name, requires = "data")]
    split: Option<String>,
    /// Slides whose tissue patches are measured as well (pooled with --data), cut as
    /// `heatmap` cuts them with the model's own pipeline.
    slides: Vec<PathBuf>,
    /// Stride of the slides' patches (pixels at the model's MPP; default the patch
    /// size): below the patch size, patches overlap and more are measured.
    #[arg(long)]
    stride: Option<u32>,
    /// Tiles per forward pass.
    #[arg(long, default_value_t = 64, value_parser = batch_size)]
    batch_size: usize,
    /// Leave out unreadable tiles, with a warning and a count (default: the first one
    /// is an error naming it).
    #[arg(long)]
    skip_bad: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: CalibrateArgs) -> anyhow::Result<ExitCode> {
    let opts = CalibrateOptions {
        data: a.data,
        split: a.split,
        slides: a.slides,
        stride: a.stride,
        batch_size: a.batch_size,
        threads: all_cores(),
        skip_bad: a.skip_bad,
    };
    let card = calibrate(&a.model, &opts, &EvalBar::new(a.quiet))?;
    println!("{}", recorded(&card));
    println!("wrote {}", a.model.join(CARD_FILE).display());
    Ok(ExitCode::SUCCESS)
}

/// A card's int8 check and what `--precision auto` makes of it.
pub fn recorded(card: &ModelCard) -> String {
    let check = card
        .int8
        .as_ref()
        .map_or("no int8 check".to_string(), |c| c.to_string());
    format!(
        "{check}\n--precision auto runs it in {}",
        card.auto_precision()
    )
}
