//! `histomap info`: what a slide file holds, and what a model folder expects.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Args};
use histomap::map::slide;
use histomap::model::CardFormat;
use histomap::pipeline::hex_color;

#[derive(Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["slides", "model"])))]
pub struct InfoArgs {
    /// Slide files (anything OpenSlide opens, plain TIFF, PNG, JPEG).
    slides: Vec<PathBuf>,
    /// Model folder (card.json, or a WSInfer config.json): its architecture, classes,
    /// patch size, MPP and normalisation, and the pipeline `heatmap` runs it with when
    /// given no --pipeline.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print JSON instead of text (slides only).
    #[arg(long, conflicts_with = "model")]
    json: bool,
}

pub fn run(a: InfoArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for path in &a.slides {
        match slide::open(path) {
            Ok(s) => {
                let i = s.info();
                if a.json {
                    println!("{}", serde_json::to_string(i)?);
                    continue;
                }
                println!("{}", i.path.display());
                println!("  format      {}", i.format);
                println!("  reader      {}", i.reader);
                println!("  dimensions  {} × {}", i.size.w, i.size.h);
                let mpp = i.mpp.map_or("unknown".into(), |m| format!("{m:.4} µm/px"));
                println!("  mpp         {mpp}");
                let power = i
                    .objective_power
                    .map_or("unknown".into(), |p| format!("{p}×"));
                println!("  objective   {power}");
                let icc = i.icc_profile_bytes.map_or("none".into(), |b| {
                    format!("{b} bytes (recorded; pixels are used as scanned)")
                });
                println!("  ICC profile {icc}");
                println!("  levels      {}", i.levels.len());
                for (n, l) in i.levels.iter().enumerate() {
                    println!(
                        "    {n}: {} × {}  downsample {:.4}",
                        l.size.w, l.size.h, l.downsample
                    );
                }
            }
            Err(e) => {
                eprintln!("histomap: {e}");
                failed = true;
            }
        }
    }
    if let Some(dir) = &a.model {
        if let Err(e) = print_model(dir) {
            eprintln!("histomap: {e}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_model(dir: &Path) -> histomap::Result<()> {
    let format = CardFormat::of(dir)?;
    let card = format.read(dir)?;
    let p = card.pipeline(dir);
    println!("{}", dir.display());
    println!("  format          {format}");
    println!("  architecture    {}", card.architecture);
    let trained = if card.trained {
        "yes"
    } else {
        "NO: random weights, its maps mean nothing"
    };
    println!("  trained         {trained}");
    println!("  patch size      {} px", card.input_size);
    println!("  mpp             {:.4} µm/px", card.mpp);
    let n = &card.normalization;
    println!("  normalisation   mean {:?}, std {:?}", n.mean, n.std);
    println!("  classes         {}", card.classes.len());
    for (i, c) in card.classes.iter().enumerate() {
        println!("    {i}: {}  {}", c.name, hex_color::format(c.color));
    }
    println!("  provenance      {}", card.provenance);
    match &card.int8 {
        Some(check) => println!("  int8 check      {check}"),
        None => println!("  int8 check      none"),
    }
    println!("  auto precision  {}", card.auto_precision());
    println!(
        "  stain norm      {} (what heatmap and evaluate apply by default)",
        card.stain_norm
    );
    match &card.stain_target {
        Some(t) => println!("  stain target    fitted on {}", t.fitted_on),
        None => println!("  stain target    none (`histomap stain-fit` records one)"),
    }
    println!(
        "  no --pipeline   heatmap runs it as pipeline {:?}:",
        p.name
    );
    println!("    stride          {} px", p.stride);
    println!("    min tissue      {}", p.min_tissue);
    println!("    min saturation  {}", p.min_saturation);
    println!("    batch size      {}", p.batch_size);
    Ok(())
}
