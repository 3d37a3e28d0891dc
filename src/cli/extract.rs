//! `histomap extract`: training tiles cut from slides, by QuPath annotations or one
//! label per slide, into a folder `train` reads as it is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use histomap::cohort::extract::{
    extract, serve_child, ExtractJob, ExtractOutcome, Extracted, Labels,
};
use histomap::cohort::run::collect_slides;
use histomap::cohort::run::ChildCommand;
use histomap::map::annotations::ClassMap;
use histomap::model::load_card;
use histomap::pipeline::Pipeline;
use histomap::progress::Bars;

use super::args::{absolute, all_cores, mpp, share, shown, threads, StainArgs};

#[derive(Args)]
pub struct ExtractArgs {
    /// Slide files and folders of slides.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// QuPath GeoJSON export (File › Export objects as GeoJSON; level-0 pixels): a file
    /// for one slide, or a folder of `<slide stem>.geojson` files. Polygons and
    /// MultiPolygons with holes; the class from `classification.name`. A slide without
    /// a file is listed and skipped.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "labels",
        conflicts_with = "labels"
    )]
    annotations: Option<PathBuf>,
    /// CSV `slide,label`: every tissue tile of a slide (named by file stem or file
    /// name) gets its label, e.g. "tumour" and "normal" slides.
    #[arg(long, value_name = "CSV")]
    labels: Option<PathBuf>,
    /// Pipeline file: patch size, MPP, stride, tissue thresholds and classes.
    #[arg(long, short, required_unless_present = "model")]
    pipeline: Option<PathBuf>,
    /// A model folder whose card gives the pipeline (when no --pipeline).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output folder.
    #[arg(long, short)]
    out: PathBuf,
    /// Stride in pixels at the pipeline's MPP (default: the pipeline's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    stride: Option<u32>,
    /// Override the pipeline's minimum tissue fraction (0..=1) for a tile to be kept;
    /// a tile with no tissue at all never is.
    #[arg(long, value_parser = share)]
    min_tissue: Option<f64>,
    /// Keep annotated tiles the tissue mask calls glass too: for a background class
    /// such as Kather's EMPTY, drawn on glass on purpose.
    #[arg(long)]
    keep_glass: bool,
    /// Least share of a tile (0–1) one class's regions must cover for it to be kept.
    #[arg(long, value_parser = share, default_value_t = 0.75)]
    min_overlap: f64,
    /// CSV `annotation,class`: annotation class names (any case) and the pipeline
    /// class each becomes. Other names must be pipeline classes (any case).
    #[arg(long, value_name = "CSV")]
    class_map: Option<PathBuf>,
    /// Leave out regions of classes the pipeline does not have (default: an error
    /// listing the known ones).
    #[arg(long)]
    skip_unknown: bool,
    /// At most this many tiles of one class per slide, drawn at random from --seed.
    #[arg(long)]
    max_per_class: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Microns per pixel of slides that do not record it.
    #[arg(long, value_parser = mpp)]
    slide_mpp: Option<f64>,
    /// Write the tiles stain-normalised (default: as scanned, whatever the model).
    /// Each slide's stains are estimated once, from the tiles it keeps, and recorded
    /// in its folder's stain.json; the target is --stain-ref's, else the card's of
    /// --model (or of the pipeline's model).
    #[command(flatten)]
    stain: StainArgs,
    /// Reader threads; default: all cores.
    #[arg(long, value_parser = threads)]
    threads: Option<usize>,
    /// Redo slides that are already finished.
    #[arg(long)]
    force: bool,
    /// Cut the one slide given under this output name and report on stdout: each slide
    /// of a run is cut so, in a child process the run supervises and locks for.
    #[arg(long, hide = true)]
    child: Option<String>,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

impl ExtractArgs {
    /// The command that cuts `slide` alone under `name` in a child process, with these
    /// settings (absolute paths) and `threads` threads.
    fn child_command(&self, threads: usize) -> anyhow::Result<Box<ChildCommand>> {
        let exe = std::env::current_exe().context("finding the histomap executable")?;
        let mut v: Vec<String> = Vec::new();
        let mut path = |flag: &str, p: &Option<PathBuf>| -> anyhow::Result<()> {
            if let Some(p) = p {
                v.extend([flag.to_string(), absolute(p)?]);
            }
            Ok(())
        };
        path("--annotations", &self.annotations)?;
        path("--labels", &self.labels)?;
        path("--pipeline", &self.pipeline)?;
        path("--model", &self.model)?;
        path("--class-map", &self.class_map)?;
        v.extend(["--out".into(), absolute(&self.out)?]);
        let mut opt = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                v.extend([flag.to_string(), value]);
            }
        };
        opt("--stride", self.stride.map(|x| x.to_string()));
        opt("--min-tissue", self.min_tissue.map(|x| x.to_string()));
        opt("--min-overlap", Some(self.min_overlap.to_string()));
        opt("--max-per-class", self.max_per_class.map(|x| x.to_string()));
        opt("--seed", Some(self.seed.to_string()));
        opt("--slide-mpp", self.slide_mpp.map(|x| x.to_string()));
        opt("--threads", Some(threads.to_string()));
        for (flag, on) in [
            ("--keep-glass", self.keep_glass),
            ("--skip-unknown", self.skip_unknown),
        ] {
            if on {
                v.push(flag.into());
            }
        }
        v.extend(self.stain.argv()?);
        // The run decided the slide is to be cut: the child never skips it.
        v.extend(["--force".into(), "--quiet".into()]);
        Ok(Box::new(move |slide: &Path, name: &str| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("extract")
                .arg(slide)
                .args(&v)
                .args(["--child", name]);
            cmd
        }))
    }
}

/// A two-column CSV with a header, as (first, second) per row.
fn pairs(path: &PathBuf) -> anyhow::Result<Vec<(String, String)>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("{}", path.display()))?;
    r.records()
        .map(|row| {
            let row = row.with_context(|| format!("{}", path.display()))?;
            match (row.get(0), row.get(1)) {
                (Some(a), Some(b)) => Ok((a.trim().to_string(), b.trim().to_string())),
                _ => bail!("{}: a row without two columns: {row:?}", path.display()),
            }
        })
        .collect()
}

pub fn run(a: ExtractArgs) -> anyhow::Result<ExitCode> {
    let mut pipeline = match (&a.pipeline, &a.model) {
        (Some(p), _) => Pipeline::load(p)?,
        (None, Some(m)) => load_card(m)?.pipeline(m),
        (None, None) => unreachable!("clap requires one"),
    };
    // Extracted tiles are training data: normalised only when asked, never by default.
    let stain = match a.stain.stain_norm {
        None => None,
        Some(_) => {
            let model = a
                .model
                .clone()
                .unwrap_or_else(|| pipeline.model_path.clone());
            a.stain.resolve(&load_card(&model)?, &model)?
        }
    };
    if let Some(stride) = a.stride {
        pipeline.set_stride(stride)?;
    }
    if let Some(v) = a.min_tissue {
        pipeline.min_tissue = v as f32;
    }
    let classes = pipeline.class_names();
    let class_of = |name: &str| classes.iter().position(|c| c.eq_ignore_ascii_case(name));
    let labels = match (&a.annotations, &a.labels) {
        (Some(path), _) => {
            let mut map = ClassMap {
                skip_unknown: a.skip_unknown,
                ..Default::default()
            };
            if let Some(file) = &a.class_map {
                for (from, to) in pairs(file)? {
                    if class_of(&to).is_none() {
                        bail!(
                            "{}: {to:?} is none of the pipeline's classes ({})",
                            file.display(),
                            classes.join(", ")
                        );
                    }
                    map.renames.insert(from.to_lowercase(), to);
                }
            }
            Labels::Annotations {
                path: path.clone(),
                map,
            }
        }
        (None, Some(file)) => {
            let mut by_slide = HashMap::new();
            for (slide, label) in pairs(file)? {
                let Some(k) = class_of(&label) else {
                    bail!(
                        "{}: slide {slide}: label {label:?} is none of the pipeline's classes ({})",
                        file.display(),
                        classes.join(", ")
                    );
                };
                by_slide.insert(slide, k);
            }
            Labels::Slides(by_slide)
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let slides = collect_slides(&a.inputs)?;
    if slides.is_empty() {
        bail!("no slides found in {}", shown(&a.inputs));
    }
    let threads = a.threads.unwrap_or_else(all_cores);
    let child = match &a.child {
        Some(_) => None,
        None => Some(a.child_command(threads)?),
    };
    let job = ExtractJob {
        pipeline,
        labels,
        out: a.out.clone(),
        min_overlap: a.min_overlap,
        keep_glass: a.keep_glass,
        max_per_class: a.max_per_class,
        seed: a.seed,
        slide_mpp: a.slide_mpp,
        stain,
        threads,
        force: a.force,
        child,
    };
    if let Some(name) = &a.child {
        let [slide] = &slides[..] else {
            bail!("--child cuts exactly one slide");
        };
        return Ok(if serve_child(slide, name, &job) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let Extracted {
        slides: outcomes,
        orphans,
    } = {
        let bars = Bars::new(a.quiet);
        extract(&slides, &job, &bars)?
    };
    for file in &orphans {
        eprintln!(
            "histomap: {}: no slide given is named after it; not used",
            file.display()
        );
    }
    let unlabelled: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, ExtractOutcome::Unlabelled))
        .map(|(n, _)| n.as_str())
        .collect();
    if !unlabelled.is_empty() {
        eprintln!(
            "histomap: no annotation or label for {} slide(s), skipped: {}",
            unlabelled.len(),
            unlabelled.join(", ")
        );
    }
    println!(
        "wrote {} and {}",
        a.out.join("manifest.csv").display(),
        a.out.join("extract.csv").display()
    );
    let failed = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, ExtractOutcome::Failed(_)))
        .count();
    if failed > 0 {
        eprintln!("histomap: {failed} of {} slide(s) failed", outcomes.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
