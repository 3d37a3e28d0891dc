//! histomap: streamed whole-slide tissue maps.
//!
//! Seven subsystems, each a folder with a module table of its own, and a few shared
//! files. `ARCHITECTURE.md` at the repository root is the map.
//!
//! | module | what it owns |
//! |---|---|
//! | [`map`] | one slide to per-class maps: readers, tissue mask, grid, preprocessing, the patch stream, heatmap assembly, regions |
//! | [`model`] | model folders to a [`model::Classifier`]: architectures, layers, CPU kernels, cards, WSInfer folders |
//! | [`sink`] | a finished slide to files: overlay and class PNGs, GeoJSON, CSV; the figures of reports |
//! | [`learn`] | tiles to a model folder: datasets, splits, augmentation, training, evaluation, metrics |
//! | [`cohort`] | many slides to an OUT folder: the batch runner, ledger, shards, Slurm, the report |
//! | [`stain`] | stain normalisation: a source's H&E stains or colour statistics estimated once, mapped to a model's target |
//! | [`view`] | a finished OUT folder in a browser: the zoomable slide viewer and its local server |
//!
//! Shared: [`pipeline`] loads the declarative pipeline files; [`progress`] is the only
//! way the library talks to a user; [`error`] names the file and value behind every
//! failure; [`output`] writes files atomically.

pub mod cohort;
pub mod error;
pub mod learn;
pub mod map;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod sink;
pub mod stain;
pub mod view;

pub use error::{Error, Result};

/// Whether the file's name starts with a dot: hidden, as macOS's `._x.svs` beside
/// `x.svs`, and never a slide or a tile.
pub(crate) fn is_hidden(path: &std::path::Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// `path` with symlinks and `.`/`..` resolved, so that two spellings of one file
/// compare equal; as given when it cannot be resolved (it does not exist).
pub(crate) fn canonical(path: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The first field, in alphabetical order, where two records of the same type differ,
/// leaving out `ignore`d fields: (field, old value, new value) as JSON. For messages
/// that name the setting that stops a rerun or a resume. A record that does not
/// serialise (a path that is not UTF-8) differs as a whole.
pub(crate) fn first_difference<T: serde::Serialize>(
    old: &T,
    new: &T,
    ignore: &[&str],
) -> Option<(String, serde_json::Value, serde_json::Value)> {
    let fields = |t: &T| match serde_json::to_value(t) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    };
    let (Some(old), Some(mut new)) = (fields(old), fields(new)) else {
        let unreadable = serde_json::Value::String("a path that is not UTF-8".into());
        return Some(("record".into(), unreadable.clone(), unreadable));
    };
    old.into_iter()
        .filter(|(k, _)| !ignore.contains(&k.as_str()))
        .find_map(|(k, v)| {
            let now = new.remove(&k).unwrap_or_default();
            (now != v).then_some((k, v, now))
        })
}

/// Keeps freed inference buffers in the process instead of returning them to the
/// kernel after every layer. glibc hands blocks over 32 MiB to mmap and unmaps them
/// on free, so each forward pass page-faults its activations in again: SmallCnn ran at
/// 130 patches/s with glibc's defaults and 147 with these settings (`cargo bench
/// --bench stream`). Peak memory is unchanged: the same buffers are reused. Call once
/// at start, before other threads.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc's allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // Grow and keep the heap in large steps; without this the top of the heap is
        // still returned and faulted back in between layers.
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
    }
}
