//! `histomap init-model`: a model with random weights, for testing the plumbing.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use histomap::model::{self, Architecture, ModelCard};
use histomap::pipeline::Pipeline;

#[derive(Args)]
pub struct InitModelArgs {
    /// Pipeline whose classes, input size, MPP and normalisation the model takes.
    #[arg(long, short)]
    pipeline: PathBuf,
    /// Network architecture.
    #[arg(long, value_enum, default_value = "smallcnn")]
    arch: Architecture,
    /// Model folder to write (card.json + model.safetensors).
    #[arg(long, short)]
    out: PathBuf,
    /// Replace the weights of an existing model folder.
    #[arg(long)]
    force: bool,
}

pub fn run(a: InitModelArgs) -> anyhow::Result<ExitCode> {
    let pipeline = Pipeline::load(&a.pipeline)?;
    a.arch
        .check_input_size(pipeline.patch_size, &pipeline.source)?;
    let card = ModelCard::for_pipeline(
        &pipeline,
        a.arch,
        false,
        "random initialisation by `histomap init-model`: not trained".into(),
    );
    model::write_random(&a.out, &card, a.force)?;
    eprintln!("wrote an UNTRAINED {} model to {}", a.arch, a.out.display());
    Ok(ExitCode::SUCCESS)
}
