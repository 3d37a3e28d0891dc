//! Cohorts: many slides, many workers, one OUT folder.
//!
//! | module | in | out |
//! |---|---|---|
//! | [`run`] | slides and folders, a pipeline, a model | one complete output folder per slide |
//! | [`extract`] | slides, QuPath annotations or slide labels, a pipeline | training tiles, `manifest.csv`, `extract.csv` |
//! | [`child`] | a command that runs one slide | the slide's outcome, even if the child crashed |
//! | [`ledger`] | an OUT folder | slide locks, failure records, the run's slide list and log |
//! | [`shard`] | the slide list and a worker's index | the slides that worker runs |
//! | [`slurm`] | a worker's command line and resources; Slurm's partitions and queue | an sbatch job array, checked against the partition; its queued tasks |
//! | [`summary`] | a finished slide's results | its `summary.json` |
//! | [`report`] | an OUT folder | `cohort.csv` and a static `index.html` |
//!
//! Workers share nothing but the file system: every coordination (locks, the slide
//! list, failure records) is a file in OUT.

pub mod child;
pub mod extract;
pub mod ledger;
pub mod report;
pub mod run;
pub mod shard;
pub mod slurm;
pub mod summary;
