//! The `heatmap` job over many slides. In: slide paths and folders, a pipeline and a
//! model. Out: one folder per slide under `OUT/`, each complete or absent.
//!
//! One bad slide never stops the rest: its error is reported, recorded in the
//! [`ledger`](crate::cohort::ledger), and the next slide starts. A slide whose
//! `OUT/<name>/summary.json` records the same [`JobKey`] (slide, pipeline, model and
//! settings) is skipped on reruns; one made by another job is refused, not overwritten,
//! unless forced. A slide another worker has locked is left to it, so reruns and
//! concurrent workers redo nothing finished.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cohort::ledger::{EventKind, Failure, Ledger, SlideEntry, Worker, SUMMARY};
use crate::cohort::shard::Shard;
use crate::error::{Error, Result};
use crate::map::geom::Cell;
use crate::map::grid::{Grid, ReadPlan};
use crate::map::heatmap::{Heatmap, Predictions};
use crate::map::mask::TissueMask;
use crate::map::slide::{self, SlideInfo};
use crate::map::stream::{self, StreamOptions, StreamStats};
use crate::model::{Architecture, Classifier, Precision};
use crate::output::{write_atomic, Staging};
use crate::pipeline::Pipeline;
use crate::progress::Progress;
use crate::sink::{self, SlideResult};

/// Longer side of the thumbnail behind the tissue mask and the overlay.
pub const THUMBNAIL_SIDE: u32 = 2048;

/// Settings shared by every slide of a run.
pub struct Job {
    pub pipeline: Pipeline,
    pub classifier: Classifier,
    pub out: PathBuf,
    /// Microns per pixel for slides that do not record it.
    pub slide_mpp: Option<f64>,
    pub stream: StreamOptions,
    /// Redo slides that are already finished.
    pub force: bool,
    /// The part of the slide list this worker runs.
    pub shard: Shard,
}

impl Job {
    /// What a slide's results under this job are made from. `--slide-mpp` counts only
    /// for a slide that records no MPP of its own: for the others it changes nothing.
    pub fn key(&self, slide: &Path, slide_records_mpp: bool) -> JobKey {
        let p = &self.pipeline;
        JobKey {
            slide: crate::canonical(slide),
            pipeline: crate::canonical(&p.source),
            model: crate::canonical(&self.classifier.dir),
            tta_d4: self.classifier.tta,
            precision: Some(self.classifier.precision()),
            patch_size: p.patch_size,
            stride: p.stride,
            mpp: p.mpp,
            // Rounded so that the f32 reads back, and prints, as written.
            min_tissue: (f64::from(p.min_tissue) * 1e6).round() / 1e6,
            min_saturation: p.min_saturation,
            slide_mpp: self.slide_mpp.filter(|_| !slide_records_mpp),
            slide_bytes: std::fs::metadata(slide).ok().map(|m| m.len()),
        }
    }
}

/// The inputs and settings behind a slide's results, recorded in its `summary.json`: a
/// rerun skips the slide only when they are the same. Paths are absolute; the files'
/// contents are not compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobKey {
    pub slide: PathBuf,
    pub pipeline: PathBuf,
    pub model: PathBuf,
    pub tta_d4: bool,
    /// `--precision` as asked for (what ran is in [`ModelRef::precision`]). Absent in
    /// summaries of earlier versions, which ran f32, and then not compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    pub patch_size: u32,
    pub stride: u32,
    pub mpp: f64,
    pub min_tissue: f64,
    pub min_saturation: u8,
    /// The `--slide-mpp` fallback, when the slide needed it.
    pub slide_mpp: Option<f64>,
    /// The slide file's size: a file replaced under the same name is another slide.
    /// Absent in summaries of earlier versions, and then not compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide_bytes: Option<u64>,
}

impl JobKey {
    /// The first setting that differs, as "model was A, now B"; None when equal.
    fn difference(&self, now: &JobKey) -> Option<String> {
        let mut unrecorded = Vec::new();
        if self.slide_bytes.is_none() {
            unrecorded.push("slide_bytes");
        }
        if self.precision.is_none() {
            unrecorded.push("precision");
        }
        crate::first_difference(self, now, &unrecorded)
            .map(|(field, old, new)| format!("{field} was {old}, now {new}"))
    }
}

/// What a finished slide folder says made it: its key and whether the slide records
/// its own MPP; `None` for folders written before keys were. An unreadable summary is
/// an error message for that slide alone.
fn made_by(dir: &Path) -> std::result::Result<Option<(JobKey, bool)>, String> {
    #[derive(Deserialize)]
    struct Recorded {
        job: Option<JobKey>,
        slide: RecordedSlide,
    }
    #[derive(Deserialize)]
    struct RecordedSlide {
        mpp: Option<f64>,
    }
    let r: Recorded = crate::cohort::ledger::read_summary(dir)?;
    Ok(r.job.map(|key| (key, r.slide.mpp.is_some())))
}

#[derive(Debug)]
pub enum Outcome {
    Done {
        dir: PathBuf,
        patches: usize,
        seconds: f64,
    },
    Skipped {
        dir: PathBuf,
    },
    /// Another worker holds the slide's lock.
    Busy,
    Failed {
        error: String,
    },
}

#[derive(Debug)]
pub struct SlideReport {
    pub path: PathBuf,
    pub name: String,
    pub outcome: Outcome,
}

impl SlideReport {
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::Done {
                dir,
                patches,
                seconds,
            } => {
                // The mask finds tissue by its colour: a grey or fluorescence image may
                // have none, and an empty map should not pass for a result.
                let none = if *patches == 0 {
                    " (no tissue found: the mask looks for stained, coloured tissue)"
                } else {
                    ""
                };
                format!(
                    "done    {}  {patches} patches in {seconds:.1} s -> {}{none}",
                    self.name,
                    dir.display()
                )
            }
            Outcome::Skipped { dir } => format!(
                "skipped {}  (finished earlier: {})",
                self.name,
                dir.display()
            ),
            Outcome::Busy => format!("busy    {}  (another worker has it)", self.name),
            Outcome::Failed { error } => format!("FAILED  {}  {error}", self.name),
        }
    }
}

/// Expands folders into the slide files they hold (not recursive), sorted by path; an
/// error only when no input exists.
pub fn collect_slides(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if let Some(first) = inputs
        .first()
        .filter(|_| inputs.iter().all(|i| !i.exists()))
    {
        return Err(Error::not_found(first));
    }
    let mut slides = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|e| Error::io(input, e))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    !crate::is_hidden(p)
                        && p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| slide::is_slide_extension(&e.to_ascii_lowercase()))
                })
                .collect();
            found.sort();
            slides.extend(found);
        } else {
            // A missing file among others fails on its own, as a bad slide does, and the
            // rest of the batch goes on.
            slides.push(input.clone());
        }
    }
    // The same file named twice (`a.svs` and `dir/` holding it) is run once.
    let mut seen = std::collections::HashSet::new();
    slides.retain(|p| seen.insert(crate::canonical(p)));
    Ok(slides)
}

/// Output folder names, unique within the list: the file stem (prefixed `slide_` where it
/// would be hidden or a report file's name); where stems collide, the
/// file name with `_` for `.` (`s_svs`); where file names collide too, prefixed by the
/// name of the folder holding the file (`p1_s_svs`, however the path was typed); and if
/// that still collides, numbered in list order with the first free suffix (`p1_s_svs_2`).
pub fn output_names(slides: &[PathBuf]) -> Vec<String> {
    let text = |s: Option<&std::ffi::OsStr>| s.map(|s| s.to_string_lossy().into_owned());
    // A stem that is hidden, `.`, `..` or one of the report's files names no folder of
    // ours: it keeps its dots as `_` behind a prefix.
    let stem = |p: &Path| {
        let stem = text(p.file_stem()).unwrap_or_default();
        let reserved = [
            crate::cohort::report::COHORT_CSV,
            crate::cohort::report::INDEX_HTML,
        ];
        if stem.is_empty() || stem.starts_with('.') || reserved.contains(&stem.as_str()) {
            format!("slide_{}", stem.replace('.', "_"))
        } else {
            stem
        }
    };
    let file = |p: &Path| text(p.file_name()).unwrap_or_default().replace('.', "_");
    let parent_file = |p: &Path| {
        let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        match text(absolute.parent().and_then(Path::file_name)) {
            Some(parent) => format!("{}_{}", parent.replace('.', "_"), file(p)),
            None => file(p),
        }
    };
    let counts = |names: &[String]| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for n in names {
            *counts.entry(n.clone()).or_default() += 1;
        }
        counts
    };
    let mut names: Vec<String> = slides.iter().map(|p| stem(p)).collect();
    for longer in [&file as &dyn Fn(&Path) -> String, &parent_file] {
        let c = counts(&names);
        for (name, p) in names.iter_mut().zip(slides) {
            if c[name.as_str()] > 1 {
                *name = longer(p);
            }
        }
    }
    let mut taken: std::collections::HashSet<String> = names.iter().cloned().collect();
    let mut seen = std::collections::HashSet::new();
    for name in &mut names {
        if !seen.insert(name.clone()) {
            let base = name.clone();
            *name = (2..)
                .map(|n| format!("{base}_{n}"))
                .find(|candidate| !taken.contains(candidate))
                .expect("an unbounded range finds a free name");
            taken.insert(name.clone());
        }
    }
    names
}

/// The slides with their output names, as the ledger lists them.
pub fn slide_entries(slides: &[PathBuf]) -> Vec<SlideEntry> {
    slides
        .iter()
        .zip(output_names(slides))
        .map(|(path, name)| SlideEntry {
            path: path.clone(),
            name,
        })
        .collect()
}

/// Runs every slide of the job's shard; returns one report each, in list order. Output
/// names come from the whole list, so every shard names a slide alike.
pub fn run_all(slides: &[PathBuf], job: &Job, progress: &dyn Progress) -> Result<Vec<SlideReport>> {
    let ledger = Ledger::create(&job.out)?;
    let entries = slide_entries(slides);
    ledger.write_slides(&entries)?;
    let mine = job.shard.select(&crate::cohort::shard::sizes(slides));
    progress.begin(mine.len());
    mine.into_iter()
        .map(|i| {
            let (path, name) = (&slides[i], entries[i].name.clone());
            let outcome = run_one(path, &name, job, &ledger, progress)?;
            let report = SlideReport {
                path: path.clone(),
                name,
                outcome,
            };
            if let Some(w) = job.classifier.take_warning() {
                progress.warning(&w);
            }
            progress.slide_finished(&report.line());
            Ok(report)
        })
        .collect()
}

/// One slide under its lock. Errors of the slide become its outcome; errors of the
/// ledger (OUT unwritable) end the run.
fn run_one(
    path: &Path,
    name: &str,
    job: &Job,
    ledger: &Ledger,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let dir = job.out.join(name);
    let finished = || -> Result<Option<Outcome>> {
        if job.force || !ledger.is_done(name) {
            return Ok(None);
        }
        let refused = match made_by(&dir) {
            Ok(None) => None,
            Ok(Some((old, records_mpp))) => {
                old.difference(&job.key(path, records_mpp)).map(|diff| {
                    format!(
                        "{} holds the results of another job ({diff}); pass --force to redo it, \
                     or write to another --out",
                        dir.display()
                    )
                })
            }
            Err(e) => Some(e),
        };
        Ok(Some(match refused {
            None => {
                ledger.log(EventKind::Skipped, name)?;
                Outcome::Skipped { dir: dir.clone() }
            }
            Some(error) => {
                // Logged, not recorded as the slide's failure: its folder is complete.
                ledger.log(EventKind::Failed, name)?;
                Outcome::Failed { error }
            }
        }))
    };
    if let Some(outcome) = finished()? {
        return Ok(outcome);
    }
    let Some(_lock) = ledger.try_lock(name)? else {
        ledger.log(EventKind::Busy, name)?;
        return Ok(Outcome::Busy);
    };
    // Another worker may have finished it between the check and the lock.
    if let Some(outcome) = finished()? {
        return Ok(outcome);
    }
    // Only a folder with a summary is ours to replace (commits are atomic, so a folder
    // of ours always has one): anything else at the slide's name is the user's.
    if dir.exists() && !job.force && !ledger.is_done(name) {
        ledger.log(EventKind::Failed, name)?;
        return Ok(Outcome::Failed {
            error: format!(
                "{} exists and was not written by histomap (no {SUMMARY}); move it away or \
                 pass --force to replace it",
                dir.display()
            ),
        });
    }
    ledger.log(EventKind::Start, name)?;
    let t = Instant::now();
    Ok(match process_slide(path, name, job, ledger, progress) {
        Ok((dir, summary)) => {
            ledger.clear_failure(name)?;
            ledger.log(EventKind::Done, name)?;
            Outcome::Done {
                dir,
                patches: summary.patches.classified,
                seconds: t.elapsed().as_secs_f64(),
            }
        }
        Err(e) => {
            let error = e.to_string();
            ledger.record_failure(
                name,
                &Failure {
                    slide: path.to_path_buf(),
                    error: error.clone(),
                    worker: Worker::now(),
                },
            )?;
            ledger.log(EventKind::Failed, name)?;
            Outcome::Failed { error }
        }
    })
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub histomap_version: String,
    pub job: JobKey,
    pub slide: SlideInfo,
    pub pipeline: PipelineRef,
    pub model: ModelRef,
    pub plan: ReadPlan,
    pub tissue: TissueSummary,
    pub patches: PatchCounts,
    pub classes: Vec<ClassSummary>,
    /// Class maps are this many pixels per grid cell.
    pub map_scale: u32,
    pub stream: StreamStats,
    pub timings: Timings,
    pub outputs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PipelineRef {
    pub name: String,
    pub file: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct ModelRef {
    pub dir: PathBuf,
    pub architecture: Architecture,
    pub trained: bool,
    /// Probabilities are the mean over the 8 dihedral views of each patch.
    pub tta_d4: bool,
    /// The arithmetic the classifier ran in: `f32`, `int8-avx2`, ...
    pub precision: String,
}

#[derive(Debug, Serialize)]
pub struct TissueSummary {
    pub saturation_threshold: u8,
    pub slide_fraction: f32,
    pub area_mm2: f64,
}

#[derive(Debug, Serialize)]
pub struct PatchCounts {
    pub grid: usize,
    pub classified: usize,
    pub background: usize,
}

#[derive(Debug, Serialize)]
pub struct ClassSummary {
    pub name: String,
    #[serde(with = "crate::pipeline::hex_color")]
    pub color: [u8; 3],
    /// Grid cells whose winning class this is.
    pub cells: usize,
    pub area_mm2: f64,
    pub fraction_of_tissue: f64,
    pub mean_probability: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Timings {
    pub open_s: f64,
    pub mask_s: f64,
    pub stream_s: f64,
    pub write_s: f64,
    pub total_s: f64,
    pub patches_per_s: f64,
}

/// The cells whose patch is at least `min_tissue` tissue (and not empty), with their
/// tissue fractions, in grid order.
pub fn tissue_cells(grid: &Grid, mask: &TissueMask, min_tissue: f32) -> (Vec<Cell>, Vec<f32>) {
    grid.cells()
        .map(|c| (c, mask.fraction(grid.rect(c))))
        .filter(|&(_, f)| f > 0.0 && f >= min_tissue)
        .unzip()
}

/// Processes one slide into `OUT/<name>/`; the folder appears only when complete. The
/// caller holds the slide's lock.
pub fn process_slide(
    path: &Path,
    name: &str,
    job: &Job,
    ledger: &Ledger,
    progress: &dyn Progress,
) -> Result<(PathBuf, Summary)> {
    let t0 = Instant::now();
    let mut timings = Timings::default();
    let slide = slide::open(path)?;
    let info = slide.info();
    let p = &job.pipeline;
    let plan = ReadPlan::new(info, p.patch_size, p.stride, p.mpp, job.slide_mpp)?;
    timings.open_s = t0.elapsed().as_secs_f64();

    let t = Instant::now();
    let thumb = slide::thumbnail(slide.as_ref(), THUMBNAIL_SIDE)?;
    let mask = TissueMask::from_thumbnail(&thumb, p.min_saturation);
    let (cells, tissue) = tissue_cells(&plan.grid, &mask, p.min_tissue);
    timings.mask_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    progress.slide_started(name, cells.len() as u64);
    let rects: Vec<_> = cells.iter().map(|&c| plan.grid.rect(c)).collect();
    let (probs, stats) = stream::run(
        slide.as_ref(),
        &plan,
        &job.classifier.card.normalization,
        &rects,
        Some(&job.classifier),
        &job.stream,
        progress,
    )?;
    timings.stream_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let predictions = Predictions {
        classes: job.classifier.num_classes(),
        cells,
        tissue,
        probs,
    };
    let heatmap = Heatmap::assemble(&plan.grid, &predictions);
    let card = &job.classifier.card;
    let caption = format!(
        "histomap {} | pipeline {} | model {}{}",
        env!("CARGO_PKG_VERSION"),
        p.name,
        card.architecture,
        if card.trained {
            ""
        } else {
            "\nUNTRAINED MODEL: random weights, output is meaningless"
        }
    );
    let result = SlideResult {
        info,
        plan: &plan,
        classes: &p.classes,
        predictions: &predictions,
        heatmap: &heatmap,
        thumbnail: &thumb,
        caption: &caption,
    };
    let staging = Staging::new(&ledger.staging(), &job.out, name)?;
    let mut outputs = Vec::new();
    for s in sink::standard() {
        outputs.extend(s.write(&result, staging.dir())?);
    }
    timings.write_s = t.elapsed().as_secs_f64();
    timings.total_s = t0.elapsed().as_secs_f64();
    timings.patches_per_s = predictions.len() as f64 / timings.total_s.max(1e-9);
    outputs.push(SUMMARY.into());

    let summary = summarise(&result, &mask, job, stats, timings, outputs);
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    write_atomic(&staging.dir().join(SUMMARY), &json)?;
    let dir = staging.commit()?;
    Ok((dir, summary))
}

fn summarise(
    r: &SlideResult,
    mask: &TissueMask,
    job: &Job,
    stream: StreamStats,
    timings: Timings,
    outputs: Vec<String>,
) -> Summary {
    let grid = &r.plan.grid;
    let cell_mm2 = f64::from(grid.stride).powi(2) * r.um2_per_px() / 1e6;
    let mut cells_per_class = vec![0usize; r.classes.len()];
    for &k in r.heatmap.labels().iter().flatten() {
        cells_per_class[k] += 1;
    }
    let tissue_count = cells_per_class.iter().sum::<usize>().max(1);
    let mut mean = vec![0f64; r.classes.len()];
    for i in 0..r.predictions.len() {
        for (m, &v) in mean.iter_mut().zip(r.predictions.probs(i)) {
            *m += f64::from(v);
        }
    }
    let classes = r
        .classes
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let cells = cells_per_class[k];
            ClassSummary {
                name: c.name.clone(),
                color: c.color,
                cells,
                area_mm2: cells as f64 * cell_mm2,
                fraction_of_tissue: cells as f64 / tissue_count as f64,
                mean_probability: mean[k] / r.predictions.len().max(1) as f64,
            }
        })
        .collect();
    let slide_mm2 = r.info.size.area() as f64 * r.um2_per_px() / 1e6;
    Summary {
        histomap_version: env!("CARGO_PKG_VERSION").into(),
        job: job.key(&r.info.path, r.info.mpp.is_some()),
        slide: r.info.clone(),
        pipeline: PipelineRef {
            name: job.pipeline.name.clone(),
            file: job.pipeline.source.clone(),
        },
        model: ModelRef {
            dir: job.classifier.dir.clone(),
            architecture: job.classifier.card.architecture,
            trained: job.classifier.card.trained,
            tta_d4: job.classifier.tta,
            precision: job.classifier.precision_used(),
        },
        plan: *r.plan,
        tissue: TissueSummary {
            saturation_threshold: mask.threshold,
            slide_fraction: mask.total_fraction(),
            area_mm2: f64::from(mask.total_fraction()) * slide_mm2,
        },
        patches: PatchCounts {
            grid: grid.len(),
            classified: r.predictions.len(),
            background: grid.len() - r.predictions.len(),
        },
        classes,
        map_scale: sink::map_scale(r.heatmap.cols, r.heatmap.rows),
        stream,
        timings,
        outputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_unique() {
        let paths: Vec<PathBuf> = [
            "x/a.svs",
            "x/b.svs",
            "x/b.ndpi",
            "p1/s.svs",
            "p2/s.svs",
            "q/p1/s.svs",
            "c.tif",
            "x/p1_s_svs_2.tif",
            "x/TCGA-01.A4.svs",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(
            output_names(&paths),
            [
                "a",
                "b_svs",
                "b_ndpi",
                "p1_s_svs",
                "p2_s_svs",
                "p1_s_svs_3",
                "c",
                "p1_s_svs_2",
                "TCGA-01.A4"
            ]
        );
    }
}
