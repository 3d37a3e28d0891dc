//! Splitting one batch among N workers. In: the full slide list (sorted by path) with
//! file sizes, and which shard this worker is. Out: the slides this worker runs.
//!
//! Every worker computes the same assignment from the same list, with no coordination:
//! slides go, largest first (ties by path), to the shard with the least total size so
//! far (ties to the lower index). N workers given the same inputs cover every slide
//! exactly once, and file size stands in for work so the shards finish together.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Shard `index` of `count` (0-based, as Slurm array task ids are by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole list: one worker.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::Usage(format!(
                "shard {index}/{count}: need 0 <= K < N (K/N, 0-based)"
            )));
        }
        Ok(Self { index, count })
    }

    /// This Slurm array task's shard: `SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`
    /// (0 when unset) of `SLURM_ARRAY_TASK_COUNT`.
    pub fn from_slurm(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::Usage(format!("--shard slurm: {name}={v:?} is not a number"))
                    })
                })
                .transpose()
        };
        let (Some(id), Some(count)) = (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?)
        else {
            return Err(Error::Usage(
                "--shard slurm outside a Slurm array job (SLURM_ARRAY_TASK_ID or \
                 SLURM_ARRAY_TASK_COUNT is not set)"
                    .into(),
            ));
        };
        let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        Shard::new(id.checked_sub(min).unwrap_or(usize::MAX), count)
    }

    /// Indices into `sizes` (one per slide, in list order) that this shard runs, in
    /// list order.
    pub fn select(&self, sizes: &[u64]) -> Vec<usize> {
        let owner = assign(sizes, self.count);
        (0..sizes.len())
            .filter(|&i| owner[i] == self.index)
            .collect()
    }
}

impl FromStr for Shard {
    type Err = Error;

    /// `K/N`, or `slurm` for the environment of a Slurm array task.
    fn from_str(s: &str) -> Result<Self> {
        if s == "slurm" {
            return Shard::from_slurm(|k| std::env::var(k).ok());
        }
        let parsed = s
            .split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((k, n)) => Shard::new(k, n),
            None => Err(Error::Usage(format!(
                "--shard {s:?}: expected K/N (e.g. 0/4) or slurm"
            ))),
        }
    }
}

/// The shard of each slide: largest first to the lightest shard so far.
fn assign(sizes: &[u64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    // List order breaks ties, and the list is sorted by path.
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let mut load = vec![0u128; count.max(1)];
    let mut owner = vec![0; sizes.len()];
    for i in order {
        let lightest = (0..load.len())
            .min_by_key(|&s| (load[s], s))
            .expect("at least one shard");
        owner[i] = lightest;
        // Empty files still count, so many tiny slides spread out too.
        load[lightest] += u128::from(sizes[i]) + 1;
    }
    owner
}

/// Sizes of the slides (0 for any that cannot be read: they fail later, in order).
pub fn sizes(slides: &[PathBuf]) -> Vec<u64> {
    slides
        .iter()
        .map(|p| crate::map::slide::stat(p).map_or(0, |(bytes, _)| bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Property: for any list and N = 1..=8, the shards are disjoint and cover the list.
    #[test]
    fn shards_partition_any_list_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for case in 0..500 {
            let len = rng.random_range(0..40);
            let sizes: Vec<u64> = (0..len)
                .map(|_| match case % 3 {
                    0 => rng.random_range(0..4),
                    1 => rng.random_range(0..1 << 40),
                    _ => 1000,
                })
                .collect();
            for count in 1..=8 {
                let mut seen = vec![0; len];
                for index in 0..count {
                    for i in Shard::new(index, count).unwrap().select(&sizes) {
                        seen[i] += 1;
                    }
                }
                assert!(seen.iter().all(|&n| n == 1), "case {case}, N={count}");
            }
        }
    }

    #[test]
    fn shards_balance_by_size() {
        // One huge slide and six small ones over 2 workers: the huge one alone.
        let sizes = [10, 10, 1000, 10, 10, 10, 10];
        assert_eq!(Shard::new(0, 2).unwrap().select(&sizes), [2]);
        assert_eq!(Shard::new(1, 2).unwrap().select(&sizes), [0, 1, 3, 4, 5, 6]);
    }

    #[test]
    fn parses_k_of_n_and_slurm() {
        assert_eq!(
            "2/3".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 3 }
        );
        for bad in ["3/3", "1/0", "x/2", "1", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let env = |pairs: &'static [(&str, &str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        };
        let s = Shard::from_slurm(env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]))
        .unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert!(Shard::from_slurm(env(&[("SLURM_ARRAY_TASK_ID", "0")])).is_err());
    }
}
