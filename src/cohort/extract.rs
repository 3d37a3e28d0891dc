//! Training tiles cut from slides. In: slides, and either their QuPath annotations
//! (class regions) or one label per slide; a pipeline (patch size, MPP, tissue
//! thresholds, classes). Out, under OUT:
//! - `<slide>/<CLASS>/<x>_<y>.png`: tiles at the pipeline's size and MPP (x, y: the
//!   level-0 origin);
//! - `<slide>/tiles.csv` and, over every slide of the run, `manifest.csv`:
//!   `path,label,slide,x,y,w,h` (level-0 pixels; paths relative to OUT), which `train`
//!   reads as it is, grouping splits by `slide`;
//! - `extract.csv`: per slide and class, tiles kept and left out (in two classes'
//!   regions at once, on glass, unreadable, over `--max-per-class`).
//!
//! A tile is kept when at least `min_overlap` of it lies in one class's regions (and in
//! no other's as much) and the tissue mask says it is tissue, as `heatmap` selects
//! patches. Each slide's folder is built in `OUT/.histomap/staging/` and renamed into
//! place when complete, so a rerun skips finished slides and redoes the rest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cohort::child::{self, Finished};
use crate::cohort::ledger::Ledger;
use crate::cohort::run::{output_names, ChildCommand};
use crate::error::{Error, Result};
use crate::map::annotations::{Annotations, ClassMap};
use crate::map::geom::{L0Rect, Size};
use crate::map::grid::ReadPlan;
use crate::map::mask::{TissueMask, THUMBNAIL_SIDE};
use crate::map::preprocess::fit_to;
use crate::map::slide;
use crate::map::stains;
use crate::output::{write_atomic, Staging};
use crate::pipeline::Pipeline;
use crate::progress::Progress;
use crate::stain::Normalize;

/// Where the classes come from.
pub enum Labels {
    /// A QuPath GeoJSON file (one slide) or a folder of `<slide stem>.geojson` files.
    Annotations { path: PathBuf, map: ClassMap },
    /// Slide file stem (or file name) → pipeline class: every tissue tile of the slide
    /// gets the slide's label.
    Slides(HashMap<String, usize>),
}

pub struct ExtractJob {
    pub pipeline: Pipeline,
    pub labels: Labels,
    pub out: PathBuf,
    /// Least share of a tile that one class's regions must cover.
    pub min_overlap: f64,
    /// Keep annotated tiles on glass (a background class drawn on purpose).
    pub keep_glass: bool,
    /// Most tiles of one class per slide, drawn at random (seeded) where there are more.
    pub max_per_class: Option<usize>,
    pub seed: u64,
    /// Microns per pixel for slides that do not record it.
    pub slide_mpp: Option<f64>,
    /// Stain normalisation of the tiles written, each slide by its own stains
    /// estimated once from the tiles it keeps; None writes them as scanned.
    pub stain: Option<Normalize>,
    pub threads: usize,
    /// Redo slides that are already finished.
    pub force: bool,
    /// The command that cuts one slide (path, output name) in a child process the run
    /// supervises, as `heatmap`'s batch does: a crash in a C decoder costs that slide
    /// alone. `None`: in this process (the child itself).
    pub child: Option<Box<ChildCommand>>,
}

/// Per class of one slide: tiles kept, and left out and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCounts {
    pub kept: usize,
    /// In this class's regions and in another's as much.
    pub overlap: usize,
    /// In this class's regions, but glass by the tissue mask.
    pub glass: usize,
    /// Over `--max-per-class`.
    pub over_max: usize,
    pub unreadable: usize,
}

/// How one slide went.
#[derive(Debug)]
pub enum ExtractOutcome {
    Done(BTreeMap<String, ClassCounts>),
    /// Finished by an earlier run.
    Skipped(BTreeMap<String, ClassCounts>),
    /// No annotation file or label for it: listed, and skipped.
    Unlabelled,
    /// Another worker holds its lock.
    Busy,
    Failed(String),
}

const TILES: &str = "tiles.csv";
const MANIFEST_HEADER: [&str; 7] = ["path", "label", "slide", "x", "y", "w", "h"];
const COUNTS: &str = "counts.json";
/// A slide folder's stain normalisation (`--stain-norm`): method, target, the slide's
/// estimate, or why its tiles were written as scanned.
const STAIN: &str = "stain.json";

/// What a run did.
pub struct Extracted {
    /// Each slide's output name and outcome.
    pub slides: Vec<(String, ExtractOutcome)>,
    /// Annotation files of the `--annotations` folder that no slide given is named
    /// after: a misspelt name, or a slide left out.
    pub orphans: Vec<PathBuf>,
}

/// Cuts tiles from every slide; a slide's failure is its own. Writes `manifest.csv` and
/// `extract.csv` over the slides finished (now or before).
pub fn extract(slides: &[PathBuf], job: &ExtractJob, progress: &dyn Progress) -> Result<Extracted> {
    if let Labels::Annotations { path, .. } = &job.labels {
        if path.is_file() && slides.len() > 1 {
            return Err(Error::Usage(format!(
                "--annotations {} is one file, for one slide, and {} slides were given: \
                 give a folder of <slide stem>.geojson files",
                path.display(),
                slides.len()
            )));
        }
    }
    let ledger = Ledger::create(&job.out)?;
    let names = output_names(slides);
    progress.begin(slides.len());
    let mut outcomes = Vec::new();
    for (path, name) in slides.iter().zip(names) {
        let outcome = match supervised(path, &name, job, &ledger, progress) {
            Ok(o) => o,
            Err(e) => ExtractOutcome::Failed(e.to_string()),
        };
        progress.slide_finished(&match &outcome {
            ExtractOutcome::Done(c) => format!("done    {name}  {} tiles", total(c)),
            ExtractOutcome::Skipped(c) => {
                format!("skipped {name}  {} tiles (finished before)", total(c))
            }
            ExtractOutcome::Unlabelled => format!("skipped {name}  no annotation or label for it"),
            ExtractOutcome::Busy => format!("busy    {name}  (another worker has it)"),
            ExtractOutcome::Failed(e) => format!("FAILED  {name}  {e}"),
        });
        outcomes.push((name, outcome));
    }
    write_totals(&job.out, &outcomes)?;
    Ok(Extracted {
        slides: outcomes,
        orphans: orphans(slides, &job.labels)?,
    })
}

fn orphans(slides: &[PathBuf], labels: &Labels) -> Result<Vec<PathBuf>> {
    let Labels::Annotations { path, .. } = labels else {
        return Ok(Vec::new());
    };
    if !path.is_dir() {
        return Ok(Vec::new());
    }
    let stems: std::collections::HashSet<_> = slides.iter().filter_map(|s| s.file_stem()).collect();
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "geojson")
                && !crate::is_hidden(p)
                && p.file_stem().is_none_or(|s| !stems.contains(s))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn total(counts: &BTreeMap<String, ClassCounts>) -> usize {
    counts.values().map(|c| c.kept).sum()
}

/// One slide under its lock, in a child process when the job has a child command.
fn supervised(
    path: &Path,
    name: &str,
    job: &ExtractJob,
    ledger: &Ledger,
    progress: &dyn Progress,
) -> Result<ExtractOutcome> {
    let dir = job.out.join(name);
    let finished = || !job.force && dir.join(COUNTS).is_file();
    if finished() {
        return Ok(ExtractOutcome::Skipped(read_counts(&dir)?));
    }
    if named_labels(path, job).is_none() {
        return Ok(ExtractOutcome::Unlabelled);
    }
    let Some(_lock) = ledger.try_lock(name)? else {
        return Ok(ExtractOutcome::Busy);
    };
    // Another worker may have finished it between the check and the lock.
    if finished() {
        return Ok(ExtractOutcome::Skipped(read_counts(&dir)?));
    }
    let Some(command) = &job.child else {
        return one_slide(path, name, job, progress);
    };
    let (outcome, _) = child::supervise(command(path, name), path, name, progress);
    Ok(match outcome {
        Ok(f) => ExtractOutcome::Done(read_counts(&f.dir)?),
        Err(e) => {
            ledger.discard_staged(name)?;
            ExtractOutcome::Failed(e)
        }
    })
}

/// The child's side of [`child::supervise`]: cuts one slide (the run that started the
/// child holds its lock) and reports how it ended. True when the slide finished.
pub fn serve_child(path: &Path, name: &str, job: &ExtractJob) -> bool {
    let outcome = match one_slide(path, name, job, &child::Reporter) {
        Ok(ExtractOutcome::Done(counts)) => Ok(Finished {
            dir: job.out.join(name),
            patches: total(&counts),
            unreadable: counts.values().map(|c| c.unreadable).sum(),
        }),
        Ok(_) => Err("nothing to cut: no annotation or label for it".to_string()),
        Err(e) => Err(e.to_string()),
    };
    child::report(&outcome);
    outcome.is_ok()
}

/// Where the classes of the slide at `path` come from, found by name alone: its
/// annotation file, or its label; `None` when nothing names it.
fn named_labels<'a>(path: &Path, job: &'a ExtractJob) -> Option<Named<'a>> {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    match &job.labels {
        Labels::Annotations { path: a, map } => {
            let file = if a.is_dir() {
                a.join(format!("{stem}.geojson"))
            } else {
                a.clone()
            };
            file.is_file().then_some(Named::File(file, map))
        }
        Labels::Slides(by_slide) => {
            let file_name = path.file_name().unwrap_or_default().to_string_lossy();
            by_slide
                .get(stem.as_ref())
                .or_else(|| by_slide.get(file_name.as_ref()))
                .map(|&c| Named::Label(c))
        }
    }
}

enum Named<'a> {
    File(PathBuf, &'a ClassMap),
    Label(usize),
}

/// The slide's labels: its annotation file read for a slide of `size` level-0 pixels,
/// or its label.
fn labels_of(named: Named, job: &ExtractJob, size: Size) -> Result<SlideLabels> {
    Ok(match named {
        Named::Label(c) => SlideLabels::Whole(c),
        Named::File(file, map) => {
            let regions = Annotations::read(&file, &job.pipeline.class_names(), map, size)?;
            if regions.is_empty() {
                return Err(Error::dataset(
                    &file,
                    "no class region (Polygon or MultiPolygon with a class)",
                ));
            }
            SlideLabels::Regions(regions)
        }
    })
}

enum SlideLabels {
    Regions(Annotations),
    Whole(usize),
}

fn one_slide(
    path: &Path,
    name: &str,
    job: &ExtractJob,
    progress: &dyn Progress,
) -> Result<ExtractOutcome> {
    let Some(named) = named_labels(path, job) else {
        return Ok(ExtractOutcome::Unlabelled);
    };
    let slide = slide::open(path)?;
    let info = slide.info();
    let labels = labels_of(named, job, info.size)?;
    let p = &job.pipeline;
    let plan = ReadPlan::new(info, p.patch_size, p.stride, p.mpp, job.slide_mpp)?;
    let thumb = slide::thumbnail(slide.as_ref(), THUMBNAIL_SIDE)?;
    let mask = TissueMask::from_thumbnail(&thumb, p.min_saturation);
    let classes = p.class_names();
    let mut counts: BTreeMap<String, ClassCounts> = BTreeMap::new();
    let mut kept: Vec<Vec<L0Rect>> = vec![Vec::new(); classes.len()];
    for cell in plan.grid.cells() {
        let rect = plan.grid.rect(cell);
        let class = match &labels {
            SlideLabels::Whole(c) => *c,
            SlideLabels::Regions(regions) => {
                let cover = regions.coverage(rect, classes.len());
                let mut reaching = (0..classes.len()).filter(|&k| cover[k] >= job.min_overlap);
                let Some(k) = reaching.next() else { continue };
                if reaching.next().is_some() {
                    for k in (0..classes.len()).filter(|&k| cover[k] >= job.min_overlap) {
                        counts.entry(classes[k].clone()).or_default().overlap += 1;
                    }
                    continue;
                }
                k
            }
        };
        let tissue = mask.fraction(rect);
        if job.keep_glass || (tissue > 0.0 && tissue >= p.min_tissue) {
            kept[class].push(rect);
        } else if matches!(labels, SlideLabels::Regions(_)) {
            counts.entry(classes[class].clone()).or_default().glass += 1;
        }
    }
    if let Some(most) = job.max_per_class {
        let mut rng = ChaCha8Rng::seed_from_u64(job.seed ^ fnv(name));
        for (k, rects) in kept.iter_mut().enumerate() {
            if rects.len() > most {
                counts.entry(classes[k].clone()).or_default().over_max += rects.len() - most;
                rects.shuffle(&mut rng);
                rects.truncate(most);
                rects.sort_by_key(|r| (r.origin.y, r.origin.x));
            }
        }
    }
    let todo: Vec<(usize, L0Rect)> = kept
        .iter()
        .enumerate()
        .flat_map(|(k, rects)| rects.iter().map(move |&r| (k, r)))
        .collect();
    let rects: Vec<L0Rect> = todo.iter().map(|&(_, r)| r).collect();
    let (stain, stain_record) =
        stains::for_slide(slide.as_ref(), &plan, &rects, job.stain.as_ref(), progress);
    progress.slide_started(name, todo.len() as u64);

    let staging = Staging::new(&Ledger::at(&job.out).staging(), &job.out, name)?;
    for k in kept
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(k, _)| k)
    {
        let d = staging.dir().join(&classes[k]);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let read = Size::new(plan.read_size, plan.read_size);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(job.threads.max(1))
        .build()
        .map_err(|e| Error::Usage(format!("cannot start reader threads: {e}")))?;
    // Batches in the order patches lie, so neighbouring reads share decoded slide tiles.
    let written: Vec<Result<bool>> = pool.install(|| {
        todo.par_chunks(64)
            .flat_map_iter(|chunk| {
                let out = chunk
                    .iter()
                    .map(|&(k, rect)| {
                        let Ok(tile) = slide.read_region(rect.origin, plan.level, read) else {
                            return Ok(false);
                        };
                        let file = staging.dir().join(&classes[k]).join(tile_name(rect));
                        let mut tile = fit_to(tile, plan.input_size);
                        if let Some(t) = &stain {
                            t.apply(&mut tile);
                        }
                        save_png(&tile, &file)?;
                        Ok(true)
                    })
                    .collect::<Vec<_>>();
                progress.patches_done(chunk.len() as u64);
                out
            })
            .collect()
    });
    // Through a CSV writer: slide and class names may hold commas or quotes.
    let tiles_path = staging.dir().join(TILES);
    let fail = |e: csv::Error| Error::output(&tiles_path, e);
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(MANIFEST_HEADER).map_err(fail)?;
    for ((k, rect), ok) in todo.iter().zip(written) {
        let c = counts.entry(classes[*k].clone()).or_default();
        if !ok? {
            c.unreadable += 1;
            continue;
        }
        c.kept += 1;
        let (o, s) = (rect.origin, rect.size);
        let file = format!("{name}/{}/{}", classes[*k], tile_name(*rect));
        let nums = [o.x, o.y, s.w, s.h].map(|v| v.to_string());
        csv.write_record(
            [file.as_str(), &classes[*k], name]
                .into_iter()
                .chain(nums.iter().map(String::as_str)),
        )
        .map_err(fail)?;
    }
    let bytes = csv
        .into_inner()
        .map_err(|e| Error::output(&tiles_path, e.error()))?;
    write_atomic(&tiles_path, &bytes)?;
    let json = serde_json::to_vec_pretty(&counts).expect("counts serialise");
    write_atomic(&staging.dir().join(COUNTS), &json)?;
    if let Some(record) = &stain_record {
        let json = serde_json::to_vec_pretty(record).expect("a stain record serialises");
        write_atomic(&staging.dir().join(STAIN), &json)?;
    }
    staging.commit()?;
    Ok(ExtractOutcome::Done(counts))
}

/// Lossless, but compressed fast: a tile is read back once per epoch, and the best
/// compression took longer than reading the slide.
fn save_png(tile: &image::RgbImage, path: &Path) -> Result<()> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let encoder = PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        CompressionType::Fast,
        FilterType::Adaptive,
    );
    tile.write_with_encoder(encoder)
        .map_err(|e| Error::output(path, e))
}

fn tile_name(rect: L0Rect) -> String {
    format!("{}_{}.png", rect.origin.x, rect.origin.y)
}

/// A stable hash of a slide's name, so each slide draws its own seeded sample.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn read_counts(dir: &Path) -> Result<BTreeMap<String, ClassCounts>> {
    let path = dir.join(COUNTS);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::output(&path, format!("unreadable: {e}")))
}

/// `manifest.csv` (every finished slide's tiles) and `extract.csv` (per slide and
/// class, what was kept and left out).
fn write_totals(out: &Path, outcomes: &[(String, ExtractOutcome)]) -> Result<()> {
    let (manifest_path, report_path) = (out.join("manifest.csv"), out.join("extract.csv"));
    let mut manifest = format!("{}\n", MANIFEST_HEADER.join(","));
    let fail = |e: csv::Error| Error::output(&report_path, e);
    let mut report = csv::Writer::from_writer(Vec::new());
    report
        .write_record([
            "slide",
            "class",
            "kept",
            "overlap",
            "glass",
            "over_max",
            "unreadable",
        ])
        .map_err(fail)?;
    for (name, outcome) in outcomes {
        let earlier;
        let counts = match outcome {
            ExtractOutcome::Done(c) | ExtractOutcome::Skipped(c) => c,
            // A forced redo that failed left the finished folder of an earlier run.
            ExtractOutcome::Failed(_) if out.join(name).join(COUNTS).is_file() => {
                earlier = read_counts(&out.join(name))?;
                &earlier
            }
            _ => continue,
        };
        // Each slide's rows as its tiles.csv wrote them (already quoted).
        let tiles = out.join(name).join(TILES);
        let text = std::fs::read_to_string(&tiles).map_err(|e| Error::io(&tiles, e))?;
        manifest.extend(text.lines().skip(1).map(|l| format!("{l}\n")));
        for (class, c) in counts {
            let nums =
                [c.kept, c.overlap, c.glass, c.over_max, c.unreadable].map(|v| v.to_string());
            report
                .write_record(
                    [name.as_str(), class]
                        .into_iter()
                        .chain(nums.iter().map(String::as_str)),
                )
                .map_err(fail)?;
        }
    }
    write_atomic(&manifest_path, manifest.as_bytes())?;
    let bytes = report
        .into_inner()
        .map_err(|e| Error::output(&report_path, e.error()))?;
    write_atomic(&report_path, &bytes)
}
