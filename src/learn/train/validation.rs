//! Which tiles train and which validate. In: a checked dataset, its file hashes and
//! an optional split file. Out: a [`Split`] that keeps every group (patient or slide)
//! and every byte-identical tile on one side, and the digests a resume compares.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::learn::dataset::{Dataset, Sample, Tile};

/// Train and validation samples.
pub struct Split {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    /// Validation tiles left out because the same bytes are on the training side or
    /// earlier in validation (so validation scores what `evaluate` scores).
    pub val_duplicates_dropped: usize,
    /// Where validation comes from, in words, for the model card ("fold 0 of split.csv").
    pub validation: String,
}

/// Splits a dataset: by a split file's `fold` column (fold `val_fold` validates), else
/// by the data's own `split` column (`train` trains, `valid` validates, `test` is left
/// out), else by grouped folds of the data, which keep
/// byte-identical tiles on one side. `hashes` (from [`Dataset::check`]) also serve to
/// drop from validation any tile whose bytes a given split put on the training side
/// too, or that are among `extra_train` (hashes of tiles the caller adds to training):
/// it would score as seen.
pub fn split_dataset(
    data: &Dataset,
    hashes: &[[u8; 32]],
    extra_train: &[[u8; 32]],
    split_file: Option<&Path>,
    val_fold: usize,
    folds: usize,
    seed: u64,
) -> Result<Split> {
    let given_valid = |s: &Sample| s.split.as_deref() == Some("valid");
    // Per sample: Some(true) validates, Some(false) trains, None is left out. The data's
    // own split serves when every tile has one and some tiles validate.
    let own_split = split_file.is_none()
        && data.samples.iter().all(|s| s.split.is_some())
        && data.samples.iter().any(given_valid);
    let mut fold_count = None;
    let validates: Vec<Option<bool>> = if own_split {
        data.samples
            .iter()
            .map(|s| match s.split.as_deref() {
                Some("train") => Some(false),
                _ if given_valid(s) => Some(true),
                _ => None,
            })
            .collect()
    } else {
        let fold_of = match split_file {
            Some(file) => crate::learn::split::read_csv(file, data)?,
            None => crate::learn::split::grouped_folds(
                &data.samples,
                hashes,
                data.classes.len(),
                folds,
                seed,
            ),
        };
        fold_count = fold_of.iter().max().map(|&f| f + 1);
        fold_of.iter().map(|&f| Some(f == val_fold)).collect()
    };
    let trained: HashSet<&[u8; 32]> = hashes
        .iter()
        .zip(&validates)
        .filter(|(_, v)| **v == Some(false))
        .map(|(h, _)| h)
        .chain(extra_train)
        .collect();
    let source = || match split_file {
        Some(file) => format!("fold {val_fold} of {}", file.display()),
        None if own_split => "the data's own valid split".to_string(),
        None => format!("fold {val_fold} of {folds} grouped folds"),
    };
    let mut split = Split {
        train: Vec::new(),
        val: Vec::new(),
        val_duplicates_dropped: 0,
        validation: source(),
    };
    let mut validated = HashSet::new();
    for ((s, h), v) in data.samples.iter().zip(hashes).zip(validates) {
        match v {
            Some(false) => split.train.push(s.clone()),
            Some(true) if trained.contains(h) || !validated.insert(h) => {
                split.val_duplicates_dropped += 1
            }
            Some(true) => split.val.push(s.clone()),
            None => {}
        }
    }
    if split.val.is_empty() {
        let why = match fold_count {
            _ if split.val_duplicates_dropped > 0 => {
                "every tile in it is a duplicate of a training tile".to_string()
            }
            Some(n) if val_fold >= n => format!("the folds with tiles are 0 to {}", n - 1),
            _ => "it holds no tiles".to_string(),
        };
        return Err(Error::dataset(
            &data.source,
            format!(
                "no validation tiles in {}: {why}; --no-val trains on every tile",
                split.validation
            ),
        ));
    }
    if split.train.is_empty() {
        return Err(Error::dataset(
            &data.source,
            format!("no training tiles outside {}", split.validation),
        ));
    }
    Ok(split)
}

impl Split {
    /// Groups with tiles on both sides, sorted: none for a split that `histomap split`
    /// or grouped folds made, but a hand-made split file or a data-given split column
    /// may put a patient on both sides, and its validation figures then flatter.
    pub fn straddling_groups(&self) -> Vec<&str> {
        let trained: HashSet<&str> = self.train.iter().map(|s| s.group.as_str()).collect();
        let both: std::collections::BTreeSet<&str> = self
            .val
            .iter()
            .map(|s| s.group.as_str())
            .filter(|g| trained.contains(g))
            .collect();
        both.into_iter().collect()
    }

    /// SHA-256 over the sorted `side<TAB>path` lines, paths as given: names the exact
    /// split a model saw (the model card's `split_sha256`).
    pub fn sha256(&self) -> String {
        self.digest(&|t| t.name())
    }

    /// The same over absolute paths, so that `./tiles` and `tiles` are one split: what
    /// `--resume` checks.
    pub fn tiles_sha256(&self) -> String {
        self.digest(&|t| t.name_by(crate::canonical))
    }

    pub(super) fn digest(&self, name: &dyn Fn(&Tile) -> String) -> String {
        use sha2::{Digest, Sha256};
        let mut lines: Vec<String> = self
            .train
            .iter()
            .map(|s| format!("train\t{}", name(&s.tile)))
            .chain(self.val.iter().map(|s| format!("val\t{}", name(&s.tile))))
            .collect();
        lines.sort();
        let digest = Sha256::digest(lines.join("\n").as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}
