//! What the viewer knows of OUT. In: a slide folder's `summary.json` (the slide file,
//! its size and MPP, the patch grid, the classes and their colours) and its
//! `predictions.csv`. Out: [`SlideView`] and the map layer's bytes, one record per grid
//! cell, that the viewer's script draws and reads the cursor's probabilities from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cohort::ledger::{read_summary, Ledger};
use crate::error::{Error, Result};
use crate::map::geom::Size;
use crate::map::grid::Grid;

/// A finished slide as the viewer shows it; `info.json` is this, serialised.
#[derive(Debug, Clone, Serialize)]
pub struct SlideView {
    pub name: String,
    /// The slide file: the one file outside OUT the server may open for this name.
    #[serde(skip)]
    pub slide: PathBuf,
    pub size: Size,
    pub mpp: Option<f64>,
    pub grid: Grid,
    /// Level-0 offset of a cell's core from its patch ([`Grid::core_offset`]): the map
    /// layer's cell `(c, r)` covers the stride square at `c·stride + offset`.
    pub core_offset: f64,
    pub classes: Vec<ClassView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassView {
    pub name: String,
    #[serde(with = "crate::pipeline::hex_color")]
    pub color: [u8; 3],
}

#[derive(Deserialize)]
struct SummaryFile {
    slide: SlideFile,
    plan: PlanFile,
    classes: Vec<ClassView>,
}

#[derive(Deserialize)]
struct SlideFile {
    path: PathBuf,
    size: Size,
    mpp: Option<f64>,
}

#[derive(Deserialize)]
struct PlanFile {
    grid: Grid,
}

/// Whether `name` can be a slide folder's name: one plain, visible path component
/// (the names `cohort::run` gives), so it can never reach outside OUT.
pub fn is_folder_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1
}

/// Whether OUT holds a finished slide folder `name`.
fn is_finished(out: &Path, name: &str) -> bool {
    is_folder_name(name) && Ledger::at(out).is_done(name)
}

/// The finished slide `name` in OUT; None when OUT holds no such finished slide.
pub fn slide(out: &Path, name: &str) -> Option<std::result::Result<SlideView, String>> {
    if !is_finished(out, name) {
        return None;
    }
    Some(
        read_summary::<SummaryFile>(&out.join(name)).map(|s| SlideView {
            name: name.to_string(),
            slide: s.slide.path,
            size: s.slide.size,
            mpp: s.slide.mpp,
            core_offset: s.plan.grid.core_offset(),
            grid: s.plan.grid,
            classes: s.classes,
        }),
    )
}

/// The finished slides in OUT, by name.
pub fn slides(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_finished(out, n))
        .collect();
    names.sort();
    names
}

/// Map cell states; 0 is a cell no patch covers (glass, or under the tissue minimum).
pub const CELL_CLASSIFIED: u8 = 1;
pub const CELL_UNREADABLE: u8 = 2;

/// The map layer of a slide: per grid cell, row by row, one state byte
/// (`CELL_*`) and then each class's probability × 255, rounded.
pub fn map_bytes(out: &Path, view: &SlideView) -> Result<Vec<u8>> {
    let path = out.join(&view.name).join("predictions.csv");
    let bad = |msg: String| Error::Output {
        path: path.clone(),
        msg,
    };
    let mut rdr = csv::Reader::from_path(&path).map_err(|e| bad(e.to_string()))?;
    let header = rdr.headers().map_err(|e| bad(e.to_string()))?.clone();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(x), Some(y)) = (column("x"), column("y")) else {
        return Err(bad("no x and y columns".into()));
    };
    let probs: Vec<usize> = view
        .classes
        .iter()
        .map(|c| {
            column(&format!("prob_{}", c.name))
                .ok_or_else(|| bad(format!("no column prob_{}", c.name)))
        })
        .collect::<Result<_>>()?;
    let status = column("status");
    let g = &view.grid;
    let stride = probs.len() + 1;
    let mut cells = vec![0u8; g.len() * stride];
    for (line, record) in rdr.records().enumerate() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        let coord = |i: usize| record.get(i).and_then(|v| v.parse::<u32>().ok());
        let (Some(px), Some(py)) = (coord(x), coord(y)) else {
            return Err(bad(format!("row {}: x and y are not pixels", line + 2)));
        };
        let (col, row) = (px / g.stride, py / g.stride);
        if col >= g.cols || row >= g.rows {
            return Err(bad(format!(
                "row {}: ({px}, {py}) is outside the slide's grid",
                line + 2
            )));
        }
        let at = (row as usize * g.cols as usize + col as usize) * stride;
        let cell = &mut cells[at..at + stride];
        if status.and_then(|s| record.get(s)) == Some("unreadable") {
            cell[0] = CELL_UNREADABLE;
            continue;
        }
        cell[0] = CELL_CLASSIFIED;
        for (k, &i) in probs.iter().enumerate() {
            let p: f32 = record.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            cell[k + 1] = (p.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_stay_inside_out() {
        for ok in ["a", "slide 1", "TCGA-01.A4", "x..y"] {
            assert!(is_folder_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".histomap",
            "a/b",
            "../x",
            "a\\b",
            "/abs",
            "a\0",
        ] {
            assert!(!is_folder_name(bad), "{bad:?}");
        }
    }
}
