//! DICOM WSI series: one slide stored as several DICOM files (a file per pyramid level,
//! plus label and overview) in one folder, as archives (IDC, PACS) and `wsidicomizer`
//! write them. In: a folder, or one of its files. Out: the file OpenSlide 4 opens the
//! series by (any of them will do: it finds the rest by their series UID), with the
//! folder as the slide's path, so a slide is named after its folder, not after a UID
//! file name. OpenSlide reads the series; histomap only finds it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Whether `path` is a DICOM file: `DICM` after the 128-byte preamble (DICOM files need
/// no `.dcm` suffix, and archives often give them none).
pub fn is_dicom_file(path: &Path) -> bool {
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head[128..] == b"DICM")
}

/// The visible files directly in `dir`, sorted by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !crate::is_hidden(p) && p.is_file())
        .collect();
    files.sort();
    files
}

/// The first DICOM file (by name) in folder `dir`, if it holds one: then `dir` is a
/// series folder.
pub fn series_file(dir: &Path) -> Option<PathBuf> {
    files(dir).into_iter().find(|f| is_dicom_file(f))
}

/// Bytes and latest modification time of a series folder's files: what a changed
/// series changes.
pub fn stat(dir: &Path) -> std::io::Result<(u64, Option<SystemTime>)> {
    let mut bytes = 0;
    let mut modified = None;
    for f in files(dir) {
        let meta = std::fs::metadata(&f)?;
        bytes += meta.len();
        modified = modified.max(meta.modified().ok());
    }
    Ok((bytes, modified))
}
