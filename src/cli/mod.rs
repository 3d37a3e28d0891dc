//! The command line: one module per subcommand, each holding its clap arguments and
//! the code that turns them into library calls. Only this side of the crate prints
//! results to stdout and uses `anyhow`; the library returns typed errors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod calibrate;
mod evaluate;
mod extract;
mod heatmap;
mod info;
mod init_model;
mod report;
mod slurm;
mod split;
mod stain_fit;
mod status;
mod tiles;
mod train;
mod view;

/// Streamed whole-slide tissue maps: slide → patches → CNN → per-class heatmaps,
/// overlay PNG, QuPath GeoJSON, CSV.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print format, dimensions, pyramid levels, MPP and objective power of slides;
    /// with --model, what a model folder expects (classes, patch size, MPP,
    /// normalisation) and the pipeline `heatmap` runs it with when given no --pipeline.
    Info(info::InfoArgs),
    /// Classify the tissue of slides and write heatmaps, overlay, GeoJSON and CSV
    /// into OUT/<slide name>/. Finished slides are skipped on reruns; a failed slide
    /// is reported and the others go on (exit code 1 if any failed).
    Heatmap(heatmap::HeatmapArgs),
    /// Cut training tiles from slides, by QuPath GeoJSON annotations (a tile is kept
    /// where one class's regions cover --min-overlap of it, on tissue) or by one label
    /// per slide, into OUT/<slide>/<CLASS>/<x>_<y>.png with OUT/manifest.csv
    /// (path,label,slide,x,y,w,h), which `train --data OUT/manifest.csv` reads, and
    /// OUT/extract.csv (tiles kept and left out per slide and class).
    Extract(extract::ExtractArgs),
    /// Write a grouped, class-stratified K-fold split of a tile dataset (CSV with
    /// path, label, group, fold). Tiles of one group (patient or slide) and
    /// byte-identical tiles always share a fold. Reproducible from --seed.
    Split(split::SplitArgs),
    /// Train a patch classifier into a model folder (model.safetensors + card.json of
    /// the best validation epoch, training.csv, checkpoint). Validation: fold --fold of
    /// --split, else the data's own train/valid split, else grouped folds of the data.
    Train(train::TrainArgs),
    /// Evaluate a model on tiles: metrics.json (accuracy, balanced accuracy, macro F1,
    /// ROC AUC, per class, confusion matrix) and predictions.csv. Byte-identical tiles
    /// are counted once.
    Evaluate(evaluate::EvaluateArgs),
    /// Measure int8 against f32 on tiles the model was not trained on, and record it in
    /// the model's card.json: the recheck margin (patches whose top two int8 logits are
    /// closer than it run again in f32: 1.5 × the widest at which int8 changed a class)
    /// and the share of tiles whose class int8 with that recheck keeps, each half of the
    /// tiles judged with the margin the other half chose. `--precision auto` runs int8
    /// only where that share is at least 99.5%. `train` does this on its validation
    /// tiles.
    Calibrate(calibrate::CalibrateArgs),
    /// Fit the stain target that `--stain-norm` maps slides to, on tiles or slides
    /// stained as the model's training data, and record it in the model's card.json.
    StainFit(stain_fit::StainFitArgs),
    /// Write a Slurm job array that runs `heatmap` over the slides, N tasks each taking
    /// a deterministic part of them; with --submit, submit it through sbatch. Takes
    /// `heatmap`'s options but --shard and --threads, which each task sets (its array
    /// index; --cpus). Resubmitting the script redoes only unfinished slides, unless
    /// --force was given: it is written into the script, so every submission redoes all.
    /// First asks sinfo what the partition's nodes offer, and refuses a job none of them
    /// can run (--no-check overrides).
    Slurm(slurm::SlurmArgs),
    /// Where a run stands: done, failed, running and missing slides, read from OUT's
    /// markers (no Slurm needed). For arrays submitted with `slurm --submit`, also asks
    /// squeue which tasks still wait, and Slurm's reason.
    Status(status::StatusArgs),
    /// Merge every slide's summary into OUT/cohort.csv and a static OUT/index.html
    /// (thumbnails with overlays, class areas, sortable table, failed slides) that
    /// opens from disk with no server.
    Report(report::ReportArgs),
    /// Serve OUT to a browser on this machine: the report, and per finished slide a
    /// zoomable viewer from the whole slide down to full resolution with the class map
    /// over the tissue (toggle, opacity, legend, per-class probability layers, the
    /// probabilities under the cursor). Tiles are cut from the slide files on demand;
    /// nothing is fetched from a network. Prints the address first.
    View(view::ViewArgs),
    /// Write a model with RANDOM, UNTRAINED weights for a pipeline's classes. For
    /// testing the plumbing only: its maps mean nothing, and its card says so.
    InitModel(init_model::InitModelArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Info(a) => info::run(a),
            Command::Heatmap(a) => heatmap::run(a),
            Command::Extract(a) => extract::run(a),
            Command::Split(a) => split::run(a),
            Command::Train(a) => train::run(a),
            Command::Evaluate(a) => evaluate::run(a),
            Command::Calibrate(a) => calibrate::run(a),
            Command::StainFit(a) => stain_fit::run(a),
            Command::Slurm(a) => slurm::run(a),
            Command::Status(a) => status::run(a),
            Command::Report(a) => report::run(a),
            Command::View(a) => view::run(a),
            Command::InitModel(a) => init_model::run(a),
        }
    }
}
