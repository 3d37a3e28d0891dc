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

use serde::Deserialize;

use crate::cohort::child::{self, Finished};
use crate::cohort::ledger::{EventKind, Failure, Ledger, SlideEntry, Worker, SUMMARY};
use crate::cohort::shard::Shard;
use crate::cohort::summary::{summarise, JobKey, Made, ModelRef, PipelineRef, Summary, Timings};
use crate::error::{Error, Result};
use crate::map::grid::ReadPlan;
use crate::map::heatmap::{Heatmap, Predictions, Unreadable};
use crate::map::mask::TissueMask;
use crate::map::select::{select, Tolerance};
use crate::map::stream::{Stream, StreamOptions};
use crate::map::{slide, stains};
use crate::model::Classifier;
use crate::output::{write_atomic, Staging};
use crate::pipeline::Pipeline;
use crate::progress::Progress;
use crate::sink::{self, SlideResult};
use crate::stain::Normalize;

pub use crate::map::mask::THUMBNAIL_SIDE;

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
    /// The largest share of a slide's tissue patches that may be unreadable before
    /// the slide fails.
    pub max_unreadable: f64,
    /// Stain normalisation, each slide by its own stains.
    pub stain: Option<Normalize>,
    /// The command that runs one slide (path, output name) in a child process, which
    /// the batch supervises (see [`child`]).
    pub child: Box<ChildCommand>,
}

/// Makes the command that runs one slide (its path and output name) on its own.
pub type ChildCommand = dyn Fn(&Path, &str) -> std::process::Command;

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
            slide_bytes: slide::stat(slide).ok().map(|(bytes, _)| bytes),
            stain: self.stain.as_ref().map(ToString::to_string),
        }
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
        /// Tissue patches that could not be read.
        unreadable: usize,
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
                unreadable,
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
                    "done    {}  {patches} patches, {unreadable} unreadable, in {seconds:.1} s -> {}{none}",
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

/// Expands folders into the slides they hold (not recursive): their slide files, and
/// their subfolders that hold a DICOM series, sorted by path. A DICOM series is its
/// folder, whether given as the folder or as any of its files. An error only when no
/// input exists.
pub fn collect_slides(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if let Some(first) = inputs
        .first()
        .filter(|_| inputs.iter().all(|i| !i.exists()))
    {
        return Err(Error::not_found(first));
    }
    let mut slides = Vec::new();
    for input in inputs {
        if input.is_dir() && slide::dicom::series_file(input).is_none() {
            let entries = std::fs::read_dir(input).map_err(|e| Error::io(input, e))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let slide_file = || {
                        p.is_file()
                            && p.extension()
                                .and_then(|e| e.to_str())
                                .is_some_and(|e| slide::is_slide_extension(&e.to_ascii_lowercase()))
                    };
                    let series = || p.is_dir() && slide::dicom::series_file(p).is_some();
                    !crate::is_hidden(p) && (slide_file() || series())
                })
                .collect();
            found.sort();
            slides.extend(found);
        } else if input.is_file() && slide::dicom::is_dicom_file(input) {
            let folder = input.parent().filter(|p| !p.as_os_str().is_empty());
            slides.push(folder.unwrap_or(Path::new(".")).to_path_buf());
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
    // A DICOM series' folder is named whole: its name has no suffix to drop.
    let stem = |p: &Path| {
        let stem = if p.is_dir() {
            text(
                std::path::absolute(p)
                    .ok()
                    .as_deref()
                    .and_then(Path::file_name),
            )
        } else {
            text(p.file_stem())
        }
        .unwrap_or_default();
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
    let (outcome, process) = child::supervise((job.child)(path, name), path, name, progress);
    Ok(match outcome {
        Ok(finished) => {
            ledger.clear_failure(name)?;
            ledger.log_run(EventKind::Done, name, Some(finished.unreadable), process)?;
            Outcome::Done {
                dir: finished.dir,
                patches: finished.patches,
                unreadable: finished.unreadable,
                seconds: t.elapsed().as_secs_f64(),
            }
        }
        Err(error) => {
            ledger.discard_staged(name)?;
            ledger.record_failure(
                name,
                &Failure {
                    slide: path.to_path_buf(),
                    error: error.clone(),
                    worker: Worker::now(),
                },
            )?;
            ledger.log_run(EventKind::Failed, name, None, process)?;
            Outcome::Failed { error }
        }
    })
}

/// The child's side of [`child::supervise`]: processes one slide into its folder (the
/// batch that started the child holds the slide's lock) and reports how it ended.
/// True when the slide finished.
pub fn serve_child(path: &Path, name: &str, job: &Job) -> bool {
    let ledger = Ledger::at(&job.out);
    let outcome = process_slide(path, name, job, &ledger, &child::Reporter)
        .map(|(dir, summary)| Finished {
            dir,
            patches: summary.patches.classified,
            unreadable: summary.patches.unreadable,
        })
        .map_err(|e| e.to_string());
    if let Some(w) = job.classifier.take_warning() {
        child::Reporter.warning(&w);
    }
    child::report(&outcome);
    outcome.is_ok()
}

/// A slide file's size and modification time, to tell whether it changed while read.
#[derive(Debug, PartialEq)]
struct FileState {
    bytes: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileState {
    fn of(path: &Path) -> std::io::Result<Self> {
        let (bytes, modified) = slide::stat(path)?;
        Ok(Self { bytes, modified })
    }

    fn unchanged(&self, path: &Path) -> Result<()> {
        match Self::of(path) {
            Ok(now) if now == *self => Ok(()),
            Ok(now) => Err(Error::slide(
                path,
                format!(
                    "the slide file changed while it was being read ({} bytes before, {} now); \
                     results discarded: rerun once the file is complete",
                    self.bytes, now.bytes
                ),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::slide(
                path,
                "the slide file vanished while it was being read; results discarded",
            )),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

// benches/stream.rs selects its patches as a run does.
pub use crate::map::select::tissue_cells;

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
    let before = FileState::of(path).map_err(|e| Error::io(path, e))?;
    let slide = slide::open(path)?;
    let info = slide.info();
    let p = &job.pipeline;
    let plan = ReadPlan::new(info, p.patch_size, p.stride, p.mpp, job.slide_mpp)?;
    timings.open_s = t0.elapsed().as_secs_f64();

    let t = Instant::now();
    let thumb = slide::thumbnail(slide.as_ref(), THUMBNAIL_SIDE)?;
    let mask = TissueMask::from_thumbnail(&thumb, p.min_saturation);
    let tolerance = Tolerance {
        max_share: job.max_unreadable,
    };
    let selection = select(slide.as_ref(), &plan, &mask, p.min_tissue, tolerance);
    let mut unreadable = selection.unreadable;
    let candidates = selection.cells.len() + unreadable.len();
    let check = |unreadable: &[Unreadable], complete| {
        tolerance.check(slide.as_ref(), &plan.grid, unreadable, candidates, complete)
    };
    check(
        &unreadable,
        unreadable.len() <= tolerance.allowed(candidates),
    )?;
    timings.mask_s = t.elapsed().as_secs_f64();

    let rects: Vec<_> = selection.cells.iter().map(|&c| plan.grid.rect(c)).collect();
    let t = Instant::now();
    let (stain, stain_record) =
        stains::for_slide(slide.as_ref(), &plan, &rects, job.stain.as_ref(), progress);
    timings.stain_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    progress.slide_started(name, selection.cells.len() as u64);
    let stream = Stream {
        slide: slide.as_ref(),
        plan: &plan,
        normalization: &job.classifier.card.normalization,
        stain: stain.as_ref(),
        classifier: Some(&job.classifier),
        opts: job.stream,
    };
    let tolerate = tolerance
        .allowed(candidates)
        .saturating_sub(unreadable.len());
    // A slide that failed mid-stream left its count behind.
    job.classifier.take_rechecked();
    let streamed = stream.run(&rects, tolerate, progress)?;
    let rechecked = Some(job.classifier.take_rechecked()).filter(|&n| n > 0);
    let stats = streamed.stats;
    let complete = streamed.unreadable.len() <= tolerate;
    let failed: HashMap<usize, String> = streamed
        .unreadable
        .into_iter()
        .map(|(i, e)| (i, e.reason()))
        .collect();
    let classes = job.classifier.num_classes();
    let mut predictions = Predictions {
        classes,
        cells: Vec::with_capacity(rects.len() - failed.len()),
        tissue: Vec::with_capacity(rects.len() - failed.len()),
        probs: Vec::with_capacity((rects.len() - failed.len()) * classes),
        unreadable: Vec::new(),
    };
    for (i, (&cell, &tissue)) in selection.cells.iter().zip(&selection.tissue).enumerate() {
        match failed.get(&i) {
            Some(error) => unreadable.push(Unreadable {
                cell,
                tissue,
                error: error.clone(),
            }),
            None => {
                predictions.cells.push(cell);
                predictions.tissue.push(tissue);
                predictions
                    .probs
                    .extend_from_slice(&streamed.probs[i * classes..(i + 1) * classes]);
            }
        }
    }
    unreadable.sort_by_key(|u| (u.cell.row, u.cell.col));
    check(&unreadable, complete)?;
    predictions.unreadable = unreadable;
    timings.stream_s = t.elapsed().as_secs_f64();
    timings.classify_s = stats.classify_s;
    timings.read_s = stats.read_s;

    let t = Instant::now();
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

    let made = Made {
        job: job.key(path, info.mpp.is_some()),
        pipeline: PipelineRef {
            name: p.name.clone(),
            file: p.source.clone(),
        },
        model: ModelRef {
            dir: job.classifier.dir.clone(),
            architecture: card.architecture,
            trained: card.trained,
            tta_d4: job.classifier.tta,
            precision: job.classifier.precision_used(),
            precision_note: job.classifier.precision_note().map(String::from),
            f32_rechecked: rechecked,
        },
        stain: stain_record,
    };
    let summary = summarise(&result, &mask, made, stats, timings, outputs);
    // Results of a file that changed under the readers mix two files: never commit them.
    before.unchanged(path)?;
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    write_atomic(&staging.dir().join(SUMMARY), &json)?;
    let dir = staging.commit()?;
    Ok((dir, summary))
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
