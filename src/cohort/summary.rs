//! A finished slide's `summary.json`. In: a slide's results. Out: what the cohort
//! report, reruns and people read back: the job that made it, the slide, the plan, the
//! tissue, the patch counts (unreadable ones too) and per-class areas.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::map::grid::ReadPlan;
use crate::map::mask::TissueMask;
use crate::map::slide::SlideInfo;
use crate::map::stains::StainRecord;
use crate::map::stream::StreamStats;
use crate::model::{Architecture, Precision};
use crate::sink::{self, SlideResult};

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
    /// Stain normalisation, as "macenko to TARGET"; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stain: Option<String>,
}

impl JobKey {
    /// The first setting that differs, as "model was A, now B"; None when equal.
    pub fn difference(&self, now: &JobKey) -> Option<String> {
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

#[derive(Debug, Serialize)]
pub struct Summary {
    pub histomap_version: String,
    pub job: JobKey,
    pub slide: SlideInfo,
    pub pipeline: PipelineRef,
    pub model: ModelRef,
    /// Stain normalisation: the slide's estimate, or why it was mapped as read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stain: Option<StainRecord>,
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

/// What made a slide's results.
pub struct Made {
    pub job: JobKey,
    pub pipeline: PipelineRef,
    pub model: ModelRef,
    pub stain: Option<StainRecord>,
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
    /// Why `--precision auto` ran f32, when it did for a reason of the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_note: Option<String>,
    /// Patches whose int8 call was too close for `auto` to trust, run again in f32.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f32_rechecked: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct TissueSummary {
    pub saturation_threshold: u8,
    pub slide_fraction: f32,
    /// Share of the slide's thumbnail that could not be read: neither tissue nor glass.
    pub unknown_fraction: f32,
    pub area_mm2: f64,
}

#[derive(Debug, Serialize)]
pub struct PatchCounts {
    pub grid: usize,
    pub classified: usize,
    pub background: usize,
    /// Tissue patches that could not be read: in `predictions.csv` and `tiles.geojson`
    /// with their status, in no map.
    pub unreadable: usize,
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
    /// Estimating the slide's stains (0 without stain normalisation).
    pub stain_s: f64,
    /// Reading and classifying the patches, overlapped.
    pub stream_s: f64,
    /// Of `stream_s`, the time the classifier was busy; the rest it waited for reads,
    /// so `stream_s − classify_s` is what reading costs beyond classifying.
    pub classify_s: f64,
    /// The readers' busy time, summed over reader threads (CPU seconds, overlapping
    /// `stream_s`): what reading a patch costs, whether or not the classifier waits.
    pub read_s: f64,
    pub write_s: f64,
    pub total_s: f64,
    pub patches_per_s: f64,
}

pub fn summarise(
    r: &SlideResult,
    mask: &TissueMask,
    made: Made,
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
        job: made.job,
        slide: r.info.clone(),
        pipeline: made.pipeline,
        model: made.model,
        stain: made.stain,
        plan: *r.plan,
        tissue: TissueSummary {
            saturation_threshold: mask.threshold,
            slide_fraction: mask.total_fraction(),
            unknown_fraction: mask.unknown_total(),
            area_mm2: f64::from(mask.total_fraction()) * slide_mm2,
        },
        patches: PatchCounts {
            grid: grid.len(),
            classified: r.predictions.len(),
            background: grid.len() - r.predictions.len() - r.predictions.unreadable.len(),
            unreadable: r.predictions.unreadable.len(),
        },
        classes,
        map_scale: sink::map_scale(r.heatmap.cols, r.heatmap.rows),
        stream,
        timings,
        outputs,
    }
}
