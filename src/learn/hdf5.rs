//! PatchCamelyon's HDF5 files. In: `<stem>_x.h5` (dataset `x`: N × H × W × 3 unsigned
//! bytes, RGB) and `<stem>_y.h5` (dataset `y`: N integer labels in any shape; PCam's is
//! N × 1 × 1 × 1). Out: a [`PatchArray`] that reads one patch at a time, so PCam's
//! 7 GB training array never sits in memory, and the labels. Contiguous and chunked
//! arrays both read; a gzip-chunked one decompresses a patch's whole chunk for each
//! patch (no chunk cache: 23,000 patches in chunks of 32 take 20 s to check against
//! 1.5 s uncompressed), and reads of one file take turns (the crate locks the file for
//! each).

use std::fmt;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rust_hdf5::{H5Dataset, H5File};

use crate::error::{Error, Result};

/// Patches wider or taller than this are taken for a corrupt header.
const MAX_SIDE: usize = 4096;

/// The `x` array of one `<stem>_x.h5`, open for reading patches by index.
pub struct PatchArray {
    path: PathBuf,
    x: H5Dataset,
    len: usize,
    height: usize,
    width: usize,
    // The dataset reads through the file; keep it open as long as the array lives.
    _file: H5File,
}

impl fmt::Debug for PatchArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PatchArray({}: {} × {}×{})",
            self.path.display(),
            self.len,
            self.width,
            self.height
        )
    }
}

impl PatchArray {
    pub fn open(path: &Path) -> Result<Self> {
        let file = H5File::open(path)
            .map_err(|e| Error::dataset(path, format!("not a readable HDF5 file: {e}")))?;
        let x = file
            .dataset("x")
            .map_err(|e| Error::dataset(path, format!("no patch array `x`: {e}")))?;
        let (len, height, width) = match x.shape()[..] {
            [n, h, w, 3] if n > 0 && (1..=MAX_SIDE).contains(&h) && (1..=MAX_SIDE).contains(&w) => {
                (n, h, w)
            }
            ref shape => {
                return Err(Error::dataset(
                    path,
                    format!("`x` has shape {shape:?}; expected N × H × W × 3 RGB patches (1 ≤ H, W ≤ {MAX_SIDE})"),
                ))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            x,
            len,
            height,
            width,
            _file: file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Patch `index` as stored (H × W × 3 bytes, row by row).
    pub fn read(&self, index: usize) -> Result<RgbImage> {
        let (h, w) = (self.height, self.width);
        let pixels = self
            .x
            .read_numeric_slice_as::<u8>(&[index, 0, 0, 0], &[1, h, w, 3])
            .map_err(|e| Error::dataset(&self.path, format!("patch {index}: {e}")))?;
        RgbImage::from_raw(w as u32, h as u32, pixels)
            .ok_or_else(|| Error::dataset(&self.path, format!("patch {index}: short read")))
    }
}

/// The labels in `<stem>_y.h5`'s dataset `y`, one per patch.
pub fn labels(path: &Path) -> Result<Vec<i64>> {
    let file = H5File::open(path)
        .map_err(|e| Error::dataset(path, format!("not a readable HDF5 file: {e}")))?;
    file.dataset("y")
        .and_then(|y| y.read_numeric_as::<i64>())
        .map_err(|e| Error::dataset(path, format!("no integer label array `y`: {e}")))
}

/// The stems of the `<stem>_x.h5` files in `dir`, sorted. PCam is downloaded as
/// `…_x.h5.gz`; finding only those is an error that says to unpack them.
pub fn stems(dir: &Path) -> Result<Vec<String>> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let mut stems: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix("_x.h5").map(str::to_string))
        .collect();
    if stems.is_empty() && names.iter().any(|n| n.ends_with("_x.h5.gz")) {
        return Err(Error::dataset(
            dir,
            "holds gzipped HDF5 files (*_x.h5.gz): gunzip them first",
        ));
    }
    stems.sort();
    Ok(stems)
}
