//! `histomap evaluate`: a model's metrics on tiles.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use histomap::learn::evaluate::{evaluate, EvalOptions};
use histomap::model::{DeviceChoice, Precision};
use histomap::progress::EvalBar;

use super::args::{all_cores, batch_size, split_name, StainArgs, Tta};

#[derive(Args)]
pub struct EvaluateArgs {
    /// Model folder (card.json + model.safetensors, or a WSInfer model directory).
    #[arg(long)]
    model: PathBuf,
    /// Tiles: class folders, a Kaggle folder (train/ + train_labels.csv), a manifest
    /// CSV (path,label[,group][,split]) or a folder of PCam HDF5 files (*_x.h5 +
    /// *_y.h5).
    #[arg(long)]
    data: PathBuf,
    /// Folder for metrics.json, predictions.csv, confusion.png and roc.png.
    #[arg(long, short)]
    out: PathBuf,
    /// Only tiles of this data-given split: train, valid or test.
    #[arg(long, value_parser = split_name)]
    split: Option<String>,
    /// Test-time augmentation: d4 averages the 8 dihedral orientations.
    #[arg(long, value_enum, default_value = "none")]
    tta: Tta,
    /// Arithmetic of the classifier; what ran is recorded in metrics.json.
    #[arg(long, value_enum, default_value = "auto")]
    precision: Precision,
    /// Tiles per forward pass.
    #[arg(long, default_value_t = 64, value_parser = batch_size)]
    batch_size: usize,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Leave out unreadable tiles, with a warning and a count, and list them in
    /// metrics.json (default: the first one is an error naming it).
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    stain: StainArgs,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let EvaluateArgs {
        model,
        data,
        out,
        split,
        tta,
        precision,
        batch_size,
        device,
        skip_bad,
        stain,
        quiet,
    } = a;
    let stain = stain.resolve(&histomap::model::load_card(&model)?, &model)?;
    let opts = EvalOptions {
        split,
        tta: tta == Tta::D4,
        precision,
        batch_size,
        threads: all_cores(),
        skip_bad,
        stain,
    };
    let e = evaluate(
        &model,
        &data,
        &out,
        &opts,
        &super::args::device(device)?,
        &EvalBar::new(quiet),
    )?;
    if let Some(w) = &e.precision_warning {
        eprintln!("histomap: warning: {w}");
    }
    let m = &e.metrics;
    println!(
        "{} tiles ({} duplicates dropped), {}{}",
        m.n,
        e.duplicates_dropped,
        e.precision,
        if e.tta { ", D4 TTA" } else { "" }
    );
    println!("accuracy           {:.4}", m.accuracy);
    println!("balanced accuracy  {:.4}", m.balanced_accuracy);
    println!("macro F1           {:.4}", m.macro_f1);
    println!(
        "ROC AUC            {}",
        m.roc_auc.map_or("n/a".into(), |a| format!("{a:.4}"))
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>8}",
        "class", "precision", "recall", "f1", "support"
    );
    for c in &m.per_class {
        println!(
            "{:<12} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            c.name, c.precision, c.recall, c.f1, c.support
        );
    }
    println!("wrote {}", out.join("metrics.json").display());
    Ok(ExitCode::SUCCESS)
}
