//! Learning: tiles in, a model folder and honest metrics out.
//!
//! | module | in | out |
//! |---|---|---|
//! | [`dataset`] | class folders, Kaggle folders, manifest CSVs, PCam's [`hdf5`] arrays | labelled tiles with their groups |
//! | [`split`] | samples, groups, file hashes | grouped folds, no group or duplicate on two sides |
//! | [`augment`] | a tile and a seed | a randomly oriented, stain-jittered, zoomed tile |
//! | [`train`] | a split dataset and options | a model folder, `training.csv`, a checkpoint |
//! | [`evaluate`] | a model folder and tiles | `metrics.json`, `predictions.csv`, figures |
//! | [`calibrate`] | a model folder and held-out tiles | int8's agreement with f32, in `card.json` |
//! | [`stain_fit`] | a model folder and tiles or slides stained as its training data | the stain target, in `card.json` |
//! | [`metrics`] | labels and probabilities | accuracy, balanced accuracy, F1, ROC AUC, confusion |
//!
//! Training is f32 on candle's autograd; the model it writes is what [`crate::model`]
//! loads for inference.

pub mod augment;
pub mod calibrate;
pub mod dataset;
pub mod evaluate;
pub mod hdf5;
pub mod metrics;
pub mod split;
pub mod stain_fit;
pub mod train;
