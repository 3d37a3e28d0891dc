//! Per-slide outputs. In: a finished [`SlideResult`]. Out: files in the slide's
//! (staging) folder. Every format is a [`Sink`]; the runner calls each in turn and
//! writes `summary.json` itself, last, as the mark of a complete slide.

mod csv;
pub mod draw;
mod geojson;
mod png;

use std::path::Path;

use crate::error::Result;
use crate::map::grid::ReadPlan;
use crate::map::heatmap::{Heatmap, Predictions};
use crate::map::slide::{SlideInfo, Thumbnail};
use crate::pipeline::Class;

pub use self::csv::PredictionsCsv;
pub use self::geojson::GeoJson;
pub use self::png::{map_scale, ClassMaps, Overlay};

/// Everything a sink may draw on for one slide.
pub struct SlideResult<'a> {
    pub info: &'a SlideInfo,
    pub plan: &'a ReadPlan,
    pub classes: &'a [Class],
    pub predictions: &'a Predictions,
    pub heatmap: &'a Heatmap,
    pub thumbnail: &'a Thumbnail,
    /// Label under the overlay's legend, e.g. the model and whether it was trained.
    pub caption: &'a str,
}

impl SlideResult<'_> {
    /// Square microns per level-0 pixel.
    pub fn um2_per_px(&self) -> f64 {
        self.plan.slide_mpp * self.plan.slide_mpp
    }
}

pub trait Sink {
    /// Writes this sink's files into `dir`; returns their file names.
    fn write(&self, result: &SlideResult, dir: &Path) -> Result<Vec<String>>;
}

/// The standard set of per-slide outputs.
pub fn standard() -> Vec<Box<dyn Sink>> {
    vec![
        Box::new(Overlay),
        Box::new(ClassMaps),
        Box::new(GeoJson),
        Box::new(PredictionsCsv),
    ]
}
