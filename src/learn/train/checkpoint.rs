//! What `--resume` continues from. In: the output folder. Out: the run's [`State`]
//! (settings, progress, history) in `checkpoint.json`, and weights, BatchNorm statistics,
//! AdamW moments and the weight average in a safetensors file beside it; the lock that
//! keeps two runs out of one folder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, Ema};
use super::{EpochRow, Split, TrainOptions};
use crate::error::{one_line, Error, Result};
use crate::output::write_atomic;
use crate::pipeline::{Normalization, Pipeline};
use crate::stain::Target;

pub(super) const STATE: &str = "checkpoint.json";

/// Resumable state, written after every epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) options: TrainOptions,
    pub(super) normalization: Normalization,
    pub(super) epochs_done: usize,
    pub(super) step: usize,
    pub(super) best: Option<(usize, f64)>,
    pub(super) history: Vec<EpochRow>,
    pub(super) train_files: usize,
    pub(super) val_files: usize,
    pub(super) split_sha256: String,
    /// [`Split::tiles_sha256`]; absent in checkpoints of earlier versions.
    #[serde(default)]
    pub(super) tiles_sha256: Option<String>,
    /// The weights and optimiser file this state belongs to.
    pub(super) checkpoint: String,
    /// What the pipeline asked for; absent in checkpoints of earlier versions.
    #[serde(default)]
    pub(super) task: Option<Task>,
    /// The stain target tiles are normalised to, under `options.stain_norm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) stain_target: Option<Target>,
}

/// What a pipeline fixes about a network's input and output: a resumed run must keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Task {
    pub(super) input_size: u32,
    pub(super) mpp: f64,
    pub(super) classes: Vec<String>,
}

impl Task {
    pub(super) fn of(pipeline: &Pipeline) -> Self {
        Self {
            input_size: pipeline.patch_size,
            mpp: pipeline.mpp,
            classes: pipeline.class_names(),
        }
    }
}

/// Holds `out` for this run: two runs writing one folder would mix their checkpoints
/// and cards. An flock, so a killed run leaves nothing to clean up before --resume.
pub(super) fn lock_out(out: &Path) -> Result<std::fs::File> {
    crate::output::try_flock(&out.join(".train.lock"))?
        .ok_or_else(|| Error::output(out, "another `histomap train` is writing to this folder"))
}

/// Writes `checkpoint-<epoch>.safetensors`, then the state naming it, then removes the
/// previous checkpoint: a kill at any moment leaves a state and the weights it names.
pub(super) fn save_checkpoint(
    out: &Path,
    varmap: &VarMap,
    opt: &AdamW,
    ema: Option<&Ema>,
    state: &mut State,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (key, var) in checkpointed_vars(varmap, ema) {
        tensors.insert(key, var.as_tensor().clone());
    }
    for (i, (name, _)) in opt.params.iter().enumerate() {
        tensors.insert(format!("adam.m.{name}"), opt.m[i].clone());
        tensors.insert(format!("adam.v.{name}"), opt.v[i].clone());
    }
    let name = format!("checkpoint-{}.safetensors", state.epochs_done);
    let path = out.join(&name);
    let tmp = out.join(format!(".{name}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| Error::output(&tmp, one_line(&e)))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    let previous = std::mem::replace(&mut state.checkpoint, name);
    let json = serde_json::to_vec_pretty(&*state).expect("state serialises");
    write_atomic(&out.join(STATE), &json)?;
    if !previous.is_empty() && previous != state.checkpoint {
        let old = out.join(previous);
        std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The weights a checkpoint holds, under their keys: `model.*` the trained ones and,
/// with `--ema`, `ema.*` their average.
pub(super) fn checkpointed_vars(varmap: &VarMap, ema: Option<&Ema>) -> Vec<(String, Var)> {
    let maps = std::iter::once(("model", varmap)).chain(ema.map(|e| ("ema", &e.map)));
    maps.flat_map(|(prefix, map)| {
        let vars = map.data().lock().expect("varmap lock");
        vars.iter()
            .map(|(name, var)| (format!("{prefix}.{name}"), var.clone()))
            .collect::<Vec<_>>()
    })
    .collect()
}

pub(super) fn load_checkpoint(
    path: &Path,
    varmap: &VarMap,
    opt: &mut AdamW,
    ema: Option<&Ema>,
    device: &Device,
) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::model(path, one_line(&e)))?;
    let get = |key: &str| {
        tensors
            .get(key)
            .ok_or_else(|| Error::model(path, format!("checkpoint lacks {key}")))
    };
    for (key, var) in checkpointed_vars(varmap, ema) {
        var.set(get(&key)?)
            .map_err(|e| Error::model(path, format!("{key}: {}", one_line(&e))))?;
    }
    for (i, (name, _)) in opt.params.iter().enumerate() {
        opt.m[i] = get(&format!("adam.m.{name}"))?.clone();
        opt.v[i] = get(&format!("adam.v.{name}"))?.clone();
    }
    Ok(())
}

/// The state in `state_path`, if this run may continue it: a resumed run must end as
/// the uninterrupted one would, so the settings, the pipeline's task and the tiles must
/// be the ones it started with. Loader threads do not change the result, nor does how
/// a path is spelled.
pub(super) fn read_resumable(
    state_path: &Path,
    opts: &TrainOptions,
    pipeline: &Pipeline,
    split: &Split,
) -> Result<State> {
    let text = std::fs::read_to_string(state_path).map_err(|e| Error::io(state_path, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| Error::model(state_path, e))?;
    let canonical = |o: &TrainOptions| TrainOptions {
        data: o.data.iter().map(|p| crate::canonical(p)).collect(),
        init: o.init.as_deref().map(crate::canonical),
        ..o.clone()
    };
    if let Some((field, old, new)) =
        crate::first_difference(&canonical(&state.options), &canonical(opts), &["threads"])
    {
        return Err(Error::Usage(format!(
            "--resume: {field} is {new} here but {old} in {}; a resumed run keeps its \
             checkpoint's settings (to change them, train into another --out)",
            state_path.display()
        )));
    }
    let task = Task::of(pipeline);
    if let Some((field, old, new)) = state
        .task
        .as_ref()
        .and_then(|t| crate::first_difference(t, &task, &[]))
    {
        return Err(Error::Usage(format!(
            "--resume: the pipeline's {field} is {new} here but {old} in {}; resume with \
             the pipeline the run started with",
            state_path.display()
        )));
    }
    let same_tiles = match &state.tiles_sha256 {
        Some(tiles) => *tiles == split.tiles_sha256(),
        None => state.split_sha256 == split.sha256(),
    };
    if !same_tiles {
        return Err(Error::Usage(format!(
            "--resume: the tiles differ from those of {} ({} training and {} validation \
             tiles then, {} and {} now); resume with the same --data and split",
            state_path.display(),
            state.train_files,
            state.val_files,
            split.train.len(),
            split.val.len()
        )));
    }
    Ok(state)
}
