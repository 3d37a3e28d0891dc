//! Splits grouped by source. In: samples with labels, groups and file hashes. Out: a
//! fold per sample such that no group (slide or patient), and no pair of byte-identical
//! files, sits in two folds; class proportions are kept as even as the groups allow.
//! Reproducible from a seed.

use std::collections::HashMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::learn::dataset::{duplicates, Dataset, Sample};
use crate::output::write_atomic;

/// A row of the split CSV that `histomap split` writes and `train --split` reads.
#[derive(Debug, Serialize, Deserialize)]
struct SplitRow {
    /// [`crate::learn::dataset::Tile::name`].
    path: String,
    label: String,
    group: String,
    fold: usize,
}

/// Writes the fold of every sample of `dataset` as CSV (path, label, group, fold).
pub fn write_csv(path: &Path, dataset: &Dataset, folds: &[usize]) -> Result<()> {
    let fail = |e: csv::Error| Error::output(path, e);
    let mut w = csv::Writer::from_writer(Vec::new());
    for (s, &fold) in dataset.samples.iter().zip(folds) {
        w.serialize(SplitRow {
            path: s.tile.name(),
            label: dataset.classes[s.label].clone(),
            group: s.group.clone(),
            fold,
        })
        .map_err(fail)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::output(path, e.error()))?;
    // As every other output, into a folder made when missing.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_atomic(path, &bytes)
}

/// Reads a split CSV: the fold of each of `dataset`'s samples, which must all be listed
/// (however their paths are spelled).
pub fn read_csv(path: &Path, dataset: &Dataset) -> Result<Vec<usize>> {
    let bad = |msg: String| Error::dataset(path, msg);
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let mut fold: HashMap<String, usize> = HashMap::new();
    for row in reader.deserialize::<SplitRow>() {
        let row = row.map_err(|e| bad(e.to_string()))?;
        if let Some(other) = fold.insert(resolved(&row.path), row.fold) {
            if other != row.fold {
                return Err(bad(format!(
                    "{} is listed in fold {other} and in fold {}",
                    row.path, row.fold
                )));
            }
        }
    }
    dataset
        .samples
        .iter()
        .map(|s| {
            fold.get(&s.tile.name_by(crate::canonical))
                .copied()
                .ok_or_else(|| bad(format!("{} is not in the split file", s.tile.name())))
        })
        .collect()
}

/// A split file's tile name with the file's path resolved as [`crate::canonical`] does,
/// so that a split written for `--data tiles` serves `--data ./tiles` as well; for an
/// HDF5 patch (`file.h5[7]`) the file's path.
fn resolved(name: &str) -> String {
    let patch = name
        .strip_suffix(']')
        .and_then(|n| n.rsplit_once('['))
        .filter(|(_, index)| index.parse::<usize>().is_ok());
    match patch {
        Some((file, index)) if !Path::new(name).exists() => {
            format!("{}[{index}]", crate::canonical(Path::new(file)).display())
        }
        _ => crate::canonical(Path::new(name)).display().to_string(),
    }
}

/// Assigns each sample to one of `k` folds.
pub fn grouped_folds(
    samples: &[Sample],
    hashes: &[[u8; 32]],
    classes: usize,
    k: usize,
    seed: u64,
) -> Vec<usize> {
    let k = k.max(2);
    // Group ids, with groups that share a file merged (union-find).
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let sample_group: Vec<usize> = samples
        .iter()
        .map(|s| {
            let n = ids.len();
            *ids.entry(s.group.as_str()).or_insert(n)
        })
        .collect();
    let mut parent: Vec<usize> = (0..ids.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for dup in duplicates(hashes) {
        let first = root(&mut parent, sample_group[dup[0]]);
        for &i in &dup[1..] {
            let r = root(&mut parent, sample_group[i]);
            parent[r] = first;
        }
    }
    let merged: Vec<usize> = sample_group.iter().map(|&g| root(&mut parent, g)).collect();

    // Class counts per merged group.
    let mut counts: HashMap<usize, Vec<usize>> = HashMap::new();
    for (s, &g) in samples.iter().zip(&merged) {
        counts.entry(g).or_insert_with(|| vec![0; classes])[s.label] += 1;
    }
    let mut groups: Vec<usize> = counts.keys().copied().collect();
    groups.sort_unstable();
    groups.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    groups.sort_by_key(|g| std::cmp::Reverse(counts[g].iter().sum::<usize>()));

    let total: Vec<f64> = (0..classes)
        .map(|c| samples.iter().filter(|s| s.label == c).count().max(1) as f64)
        .collect();
    let mut fold_counts = vec![vec![0usize; classes]; k];
    let mut fold_of: HashMap<usize, usize> = HashMap::new();
    for g in groups {
        let gc = &counts[&g];
        // The fold where adding this group leaves class shares most even.
        let cost = |f: usize| -> f64 {
            (0..classes)
                .map(|c| ((fold_counts[f][c] + gc[c]) as f64 / total[c]).powi(2))
                .sum()
        };
        let best = (0..k)
            .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
            .expect("k ≥ 2");
        for c in 0..classes {
            fold_counts[best][c] += gc[c];
        }
        fold_of.insert(g, best);
    }
    merged.iter().map(|g| fold_of[g]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::dataset::Tile;

    fn sample(label: usize, group: &str) -> Sample {
        Sample {
            tile: Tile::File(format!("{group}-{label}").into()),
            label,
            group: group.into(),
            split: None,
        }
    }

    #[test]
    fn groups_and_duplicates_never_straddle_folds() {
        let mut samples = Vec::new();
        for p in 0..8 {
            for i in 0..10 {
                samples.push(sample(i % 2, &format!("patient{p}")));
            }
        }
        let mut hashes: Vec<[u8; 32]> = (0..samples.len()).map(|i| [i as u8; 32]).collect();
        // A file of patient 0 is byte-identical to one of patient 5.
        hashes[55] = hashes[3];
        let folds = grouped_folds(&samples, &hashes, 2, 4, 7);
        for p in 0..8 {
            let f: Vec<usize> = (0..samples.len())
                .filter(|&i| samples[i].group == format!("patient{p}"))
                .map(|i| folds[i])
                .collect();
            assert!(
                f.iter().all(|&x| x == f[0]),
                "patient{p} split across folds"
            );
        }
        assert_eq!(folds[3], folds[55], "duplicates on one side");
        // Four folds of two patients each (patients 0 and 5 merged count as one unit).
        let sizes: Vec<usize> = (0..4)
            .map(|f| folds.iter().filter(|&&x| x == f).count())
            .collect();
        assert!(sizes.iter().all(|&s| (10..=30).contains(&s)), "{sizes:?}");
        // Same seed, same split.
        assert_eq!(folds, grouped_folds(&samples, &hashes, 2, 4, 7));
    }
}
