//! Tile datasets. In: a folder or a CSV, and the pipeline's class names. Out: a
//! [`Dataset`] of labelled tiles with the group (source slide or patient) each came
//! from, so splits can keep a group on one side.
//!
//! Layouts, detected in this order:
//! - a manifest CSV `path,label[,group][,split]` (paths relative to the CSV; the group
//!   column may be called `patient` or `slide`; extra columns ignored), which covers
//!   `../shared/data/pcam/labels.csv`;
//! - PCam's HDF5 files: `DIR/<stem>_x.h5` + `<stem>_y.h5` (see [`crate::learn::hdf5`]); the
//!   split is the stem's last word (`…_split_train`), the group the `wsi` column of an
//!   optional `<stem>_meta.csv`, else the patch;
//! - Kaggle style: `DIR/train_labels.csv` (`id,label`) with tiles `DIR/train/<id>.tif`;
//! - class folders, Kather style: `DIR/01_TUMOR/*.tif`; a numeric prefix orders the
//!   folders and is dropped from the name. The group is the patient token in Kather
//!   file names (`CRC-Prim-HE-07` in `…_CRC-Prim-HE-07_022.tif_Row_…`), else the file.
//!
//! Labels are matched to the pipeline's classes by name (case-insensitive, numeric
//! prefix dropped) or, when all are integers, by index.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{ImageReader, RgbImage};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::learn::hdf5::{self, PatchArray};

const TILE_EXTENSIONS: &[&str] = &["tif", "tiff", "png", "jpg", "jpeg"];

/// Where a tile's pixels are.
#[derive(Debug, Clone)]
pub enum Tile {
    /// An image file (.tif, .png, .jpg; the format is read from the bytes).
    File(PathBuf),
    /// Patch `index` of an HDF5 patch array.
    Patch {
        array: Arc<PatchArray>,
        index: usize,
    },
}

impl Tile {
    /// How split files, predictions and messages name the tile: its path, or
    /// `path[index]` for a patch of an array.
    pub fn name(&self) -> String {
        self.name_by(Path::to_path_buf)
    }

    /// [`Tile::name`] with each path passed through `path` first (e.g. made absolute).
    pub fn name_by(&self, path: impl Fn(&Path) -> PathBuf) -> String {
        match self {
            Tile::File(p) => path(p).display().to_string(),
            Tile::Patch { array, index } => format!("{}[{index}]", path(array.path()).display()),
        }
    }

    /// Decodes the tile as RGB, naming it when it cannot.
    pub fn read(&self) -> Result<RgbImage> {
        Ok(self.read_stored()?.0)
    }

    /// Reads and decodes the tile; out: the SHA-256 of its stored bytes (a file's
    /// bytes, a patch's pixels), which identifies exact duplicates, and its size.
    fn check(&self) -> Result<([u8; 32], (u32, u32))> {
        let (img, file_bytes) = self.read_stored()?;
        let size = img.dimensions();
        let bytes = file_bytes.unwrap_or_else(|| img.into_raw());
        Ok((Sha256::digest(&bytes).into(), size))
    }

    /// The decoded tile, and a file's bytes as stored (a patch is stored as its pixels).
    fn read_stored(&self) -> Result<(RgbImage, Option<Vec<u8>>)> {
        match self {
            Tile::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
                Ok((decode_tile(path, &bytes)?, Some(bytes)))
            }
            Tile::Patch { array, index } => Ok((array.read(*index)?, None)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub tile: Tile,
    pub label: usize,
    /// Source slide or patient; tiles of one group never straddle a split.
    pub group: String,
    /// Split given by the data (`train`, `valid`, `test`), if any.
    pub split: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub source: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

/// What [`Dataset::check`] found.
#[derive(Debug, Default)]
pub struct Checked {
    /// SHA-256 of each kept tile's stored bytes, in sample order.
    pub hashes: Vec<[u8; 32]>,
    /// Tiles left out as unreadable (`skip_bad`).
    pub skipped: Vec<BadTile>,
    /// How many kept tiles have each size (width, height).
    pub sizes: std::collections::BTreeMap<(u32, u32), usize>,
}

impl Checked {
    /// A warning when tiles are not `side`×`side`, the model's input: they are resized
    /// to it, so the model sees them at another scale than it was trained at.
    pub fn size_warning(&self, side: u32) -> Option<String> {
        let total: usize = self.sizes.values().sum();
        let off = total - self.sizes.get(&(side, side)).copied().unwrap_or(0);
        let (&(w, h), _) = self.sizes.iter().max_by_key(|(_, &n)| n)?;
        (off > 0).then(|| {
            format!(
                "{off} of {total} tiles are not {side}×{side} px, the model's input (most are \
                 {w}×{h}); they are resized, so the model sees them at another scale than \
                 it was trained at"
            )
        })
    }
}

/// A tile skipped by `--skip-bad`, and why it could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct BadTile {
    /// [`Tile::name`].
    pub tile: String,
    pub reason: String,
}

/// The format comes from the bytes, not the name, so a PNG saved as `.tif` still reads.
fn decode_tile(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    let unreadable =
        |e: &dyn std::fmt::Display| Error::dataset(path, format!("unreadable tile: {e}"));
    let img = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| unreadable(&e))?
        .decode()
        .map_err(|e| unreadable(&e))?;
    Ok(img.into_rgb8())
}

/// A class folder's display name: `01_TUMOR` → `TUMOR`.
pub fn display_name(folder: &str) -> &str {
    let digits = folder.chars().take_while(char::is_ascii_digit).count();
    match folder[digits..].strip_prefix(['_', '-', ' ']) {
        Some(rest) if digits > 0 && !rest.is_empty() => rest,
        _ => folder,
    }
}

/// The patient token of a Kather 2016 tile name, e.g. `CRC-Prim-HE-07`.
pub fn kather_patient(file_name: &str) -> Option<String> {
    let start = file_name.find("CRC-Prim-HE-")?;
    let rest = &file_name[start + "CRC-Prim-HE-".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("CRC-Prim-HE-{digits}"))
}

impl Dataset {
    pub fn load(source: &Path, classes: &[String]) -> Result<Self> {
        let samples = if source.is_file() {
            manifest(source, classes)?
        } else if source.is_dir() {
            let stems = hdf5::stems(source)?;
            if !stems.is_empty() {
                hdf5_arrays(source, &stems, classes)?
            } else if source.join("train_labels.csv").is_file() {
                kaggle(source, classes)?
            } else {
                class_folders(source, classes)?
            }
        } else {
            return Err(Error::not_found(source));
        };
        if samples.is_empty() {
            return Err(Error::dataset(source, "no tiles found"));
        }
        let mut label_of: HashMap<String, usize> = HashMap::new();
        for s in &samples {
            let name = s.tile.name();
            match label_of.get(&name) {
                Some(&l) if l != s.label => {
                    return Err(Error::dataset(
                        source,
                        format!(
                            "{name} is labelled both {} and {}",
                            classes[l], classes[s.label]
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    label_of.insert(name, s.label);
                }
            }
        }
        Ok(Self {
            source: source.to_path_buf(),
            classes: classes.to_vec(),
            samples,
        })
    }

    /// Reads and decodes every tile once, before hours of training or evaluation can
    /// depend on it, and hashes its bytes. An unreadable tile is an error naming it (the
    /// first in sample order, and the dataset is left as it was); with `skip_bad` it is
    /// dropped from the dataset and listed in [`Checked::skipped`] instead.
    pub fn check(&mut self, skip_bad: bool) -> Result<Checked> {
        if self.samples.is_empty() {
            return Err(Error::dataset(&self.source, "no tiles to use"));
        }
        let read: Vec<Result<_>> = self.samples.par_iter().map(|s| s.tile.check()).collect();
        let mut checked = Checked::default();
        let mut keep = Vec::with_capacity(read.len());
        for (i, r) in read.into_iter().enumerate() {
            match r {
                Ok((hash, size)) => {
                    checked.hashes.push(hash);
                    *checked.sizes.entry(size).or_default() += 1;
                    keep.push(true);
                }
                Err(e) if !skip_bad => return Err(e),
                Err(e) => {
                    checked.skipped.push(BadTile {
                        tile: self.samples[i].tile.name(),
                        reason: e.to_string(),
                    });
                    keep.push(false);
                }
            }
        }
        if checked.hashes.is_empty() {
            return Err(Error::dataset(
                &self.source,
                format!("none of the {} tiles is readable", checked.skipped.len()),
            ));
        }
        let mut keep = keep.into_iter();
        self.samples.retain(|_| keep.next() == Some(true));
        Ok(checked)
    }

    /// Per class, how many samples.
    pub fn class_counts(&self) -> Vec<usize> {
        class_counts(&self.samples, self.classes.len())
    }
}

/// Most tiles a stain target is fitted on: enough for steady percentiles, few enough
/// to read in seconds.
pub const STAIN_FIT_TILES: usize = 1000;

/// The pixels of up to `most` of `samples`, spread evenly, each at `size` × `size` as
/// the model sees it, pooled: what a stain target is fitted on; and how many tiles.
pub fn pooled_pixels(samples: &[Sample], size: u32, most: usize) -> Result<(Vec<[u8; 3]>, usize)> {
    let n = samples.len().min(most);
    let tiles = (0..n)
        .into_par_iter()
        .map(|i| {
            let tile = samples[i * samples.len() / n].tile.read()?;
            Ok(crate::map::preprocess::fit_to(tile, size))
        })
        .collect::<Result<Vec<_>>>()?;
    let pixels = tiles
        .iter()
        .flat_map(|t| crate::stain::pixels(t).iter().copied())
        .collect();
    Ok((pixels, n))
}

/// Per class (of `classes`), how many of `samples`.
pub fn class_counts(samples: &[Sample], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for s in samples {
        counts[s.label] += 1;
    }
    counts
}

/// Groups of sample indices with identical bytes (only groups of two or more).
pub fn duplicates(hashes: &[[u8; 32]]) -> Vec<Vec<usize>> {
    let mut by_hash: HashMap<&[u8; 32], Vec<usize>> = HashMap::new();
    for (i, h) in hashes.iter().enumerate() {
        by_hash.entry(h).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = by_hash.into_values().filter(|v| v.len() > 1).collect();
    groups.sort();
    groups
}

fn class_index(label: &str, classes: &[String], path: &Path) -> Result<usize> {
    let name = display_name(label.trim());
    if let Some(i) = classes.iter().position(|c| c.eq_ignore_ascii_case(name)) {
        return Ok(i);
    }
    match label.trim().parse::<usize>() {
        Ok(i) if i < classes.len() => Ok(i),
        _ => Err(Error::dataset(
            path,
            format!("label {label:?} is none of the classes {classes:?}"),
        )),
    }
}

fn is_tile(p: &Path) -> bool {
    !crate::is_hidden(p)
        && p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| TILE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn class_folders(dir: &Path, classes: &[String]) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for folder in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = class_index(&name, classes, &folder)?;
        for path in sorted_entries(&folder)?.into_iter().filter(|p| is_tile(p)) {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let group = kather_patient(&file).unwrap_or_else(|| file.clone());
            samples.push(Sample {
                tile: Tile::File(path),
                label,
                group,
                split: None,
            });
        }
    }
    Ok(samples)
}

fn kaggle(dir: &Path, classes: &[String]) -> Result<Vec<Sample>> {
    let csv_path = dir.join("train_labels.csv");
    let rows = read_csv(&csv_path)?;
    let (id, label) = (
        column(&rows, "id", &csv_path)?,
        column(&rows, "label", &csv_path)?,
    );
    rows.records
        .iter()
        .map(|r| {
            let stem = &r[id];
            let path = TILE_EXTENSIONS
                .iter()
                .map(|e| dir.join("train").join(format!("{stem}.{e}")))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    Error::dataset(
                        &csv_path,
                        format!("no tile train/{stem}.tif for id {stem:?}"),
                    )
                })?;
            Ok(Sample {
                tile: Tile::File(path),
                label: class_index(&r[label], classes, &csv_path)?,
                group: stem.clone(),
                split: None,
            })
        })
        .collect()
}

fn manifest(csv_path: &Path, classes: &[String]) -> Result<Vec<Sample>> {
    let rows = read_csv(csv_path)?;
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let path = column(&rows, "path", csv_path)?;
    let label = column(&rows, "label", csv_path)?;
    // `patient` or `slide` name the group as well, where no `group` column does.
    let group = ["group", "patient", "slide"]
        .iter()
        .find_map(|name| rows.headers.iter().position(|h| h == name));
    let split = rows.headers.iter().position(|h| h == "split");
    rows.records
        .iter()
        .zip(&rows.lines)
        .map(|(r, line)| {
            let split = split
                .map(|s| split_name(&r[s]))
                .transpose()
                .map_err(|msg| Error::dataset(csv_path, format!("line {line}: {msg}")))?
                .flatten();
            Ok(Sample {
                tile: Tile::File(base.join(&r[path])),
                label: class_index(&r[label], classes, csv_path)?,
                // A tile without a group is its own group, not one of all the blank ones.
                group: group
                    .map(|g| r[g].clone())
                    .filter(|g| !g.is_empty())
                    .unwrap_or_else(|| r[path].clone()),
                split,
            })
        })
        .collect()
}

/// A manifest's `split` value as the rest of histomap names it (`train`, `valid`,
/// `test`); None when blank. Any other value is refused rather than read as "neither".
pub fn split_name(value: &str) -> std::result::Result<Option<String>, String> {
    let name = match value.trim().to_ascii_lowercase().as_str() {
        "" => return Ok(None),
        "train" | "training" => "train",
        "valid" | "val" | "validation" => "valid",
        "test" | "testing" => "test",
        _ => {
            return Err(format!(
                "split {value:?} is none of train, valid (val, validation), test"
            ))
        }
    };
    Ok(Some(name.to_string()))
}

fn hdf5_arrays(dir: &Path, stems: &[String], classes: &[String]) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for stem in stems {
        let x_name = format!("{stem}_x.h5");
        let array = Arc::new(PatchArray::open(&dir.join(&x_name))?);
        let y_path = dir.join(format!("{stem}_y.h5"));
        if !y_path.is_file() {
            return Err(Error::dataset(
                &y_path,
                format!("missing: the labels of {x_name} are read from it"),
            ));
        }
        let labels = hdf5::labels(&y_path)?;
        let count_mismatch = |what: &str, path: &Path, n: usize| {
            Error::dataset(
                path,
                format!("{n} {what} for the {} patches of {x_name}", array.len()),
            )
        };
        if labels.len() != array.len() {
            return Err(count_mismatch("labels", &y_path, labels.len()));
        }
        let meta_path = dir.join(format!("{stem}_meta.csv"));
        let slides = if meta_path.is_file() {
            let rows = read_csv(&meta_path)?;
            let wsi = column(&rows, "wsi", &meta_path)?;
            if rows.records.len() != array.len() {
                return Err(count_mismatch("rows", &meta_path, rows.records.len()));
            }
            rows.records
                .into_iter()
                .map(|mut r| r.swap_remove(wsi))
                .collect()
        } else {
            Vec::new()
        };
        let split = stem
            .rsplit('_')
            .next()
            .filter(|w| matches!(*w, "train" | "valid" | "test"))
            .map(str::to_string);
        let mut slides = slides.into_iter();
        for (index, y) in labels.iter().enumerate() {
            samples.push(Sample {
                tile: Tile::Patch {
                    array: array.clone(),
                    index,
                },
                label: class_index(&y.to_string(), classes, &y_path)?,
                // Without slide ids each patch is its own group, named as the tile is.
                group: slides
                    .next()
                    .unwrap_or_else(|| format!("{x_name}[{index}]")),
                split: split.clone(),
            });
        }
    }
    Ok(samples)
}

struct Rows {
    headers: Vec<String>,
    records: Vec<Vec<String>>,
    /// The line each record starts on, for messages.
    lines: Vec<u64>,
}

fn read_csv(path: &Path) -> Result<Rows> {
    let bad = |e: csv::Error| Error::dataset(path, format!("invalid CSV: {e}"));
    let mut reader = csv::Reader::from_path(path).map_err(bad)?;
    let headers = reader
        .headers()
        .map_err(bad)?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let (mut records, mut lines) = (Vec::new(), Vec::new());
    for r in reader.records() {
        let r = r.map_err(bad)?;
        lines.push(r.position().map_or(0, |p| p.line()));
        records.push(r.iter().map(str::to_string).collect());
    }
    Ok(Rows {
        headers,
        records,
        lines,
    })
}

fn column(rows: &Rows, name: &str, path: &Path) -> Result<usize> {
    rows.headers.iter().position(|h| h == name).ok_or_else(|| {
        Error::dataset(
            path,
            format!("no `{name}` column (columns: {:?})", rows.headers),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_groups() {
        assert_eq!(display_name("01_TUMOR"), "TUMOR");
        assert_eq!(display_name("TUMOR"), "TUMOR");
        assert_eq!(display_name("2019"), "2019");
        assert_eq!(
            kather_patient("10009_CRC-Prim-HE-07_022.tif_Row_301_Col_151.tif").as_deref(),
            Some("CRC-Prim-HE-07")
        );
        assert_eq!(kather_patient("patch0001.jpg"), None);
    }

    #[test]
    fn duplicates_are_grouped() {
        let h = |b: u8| [b; 32];
        assert_eq!(
            duplicates(&[h(1), h(2), h(1), h(3), h(2), h(1)]),
            vec![vec![0, 2, 5], vec![1, 4]]
        );
    }
}
