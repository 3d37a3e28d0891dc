//! `histomap info`: what a slide file holds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use histomap::map::slide;

#[derive(Args)]
pub struct InfoArgs {
    /// Slide files (anything OpenSlide opens, plain TIFF, PNG, JPEG).
    #[arg(required = true)]
    slides: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
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
                println!("  dimensions  {} × {}", i.size.w, i.size.h);
                let mpp = i.mpp.map_or("unknown".into(), |m| format!("{m:.4} µm/px"));
                println!("  mpp         {mpp}");
                let power = i
                    .objective_power
                    .map_or("unknown".into(), |p| format!("{p}×"));
                println!("  objective   {power}");
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
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
