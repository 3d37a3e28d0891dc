//! What a run leaves for people and for `heatmap`. In: the weights and state of the
//! best epoch. Out: the model folder (`model.safetensors` and `card.json` with its
//! [`TrainingRecord`]) and `training.csv`, one row per epoch.

use std::path::Path;

use candle_nn::VarMap;

use super::checkpoint::State;
use super::EpochRow;
use crate::error::{one_line, Error, Result};
use crate::learn::metrics::Metrics;
use crate::model::{write_card, ModelCard, TrainingRecord, WEIGHTS_FILE};
use crate::output::write_atomic;
use crate::pipeline::Pipeline;

pub(super) const HISTORY: &str = "training.csv";

pub(super) fn write_history(out: &Path, rows: &[EpochRow]) -> Result<()> {
    let mut csv = String::from(
        "epoch,lr,train_loss,val_loss,val_accuracy,val_balanced_accuracy,val_roc_auc,seconds\n",
    );
    for r in rows {
        csv.push_str(&format!(
            "{},{:.6e},{:.5},{:.5},{:.5},{:.5},{},{:.1}\n",
            r.epoch,
            r.lr,
            r.train_loss,
            r.val_loss,
            r.val_accuracy,
            r.val_balanced_accuracy,
            r.val_roc_auc.map_or(String::new(), |a| format!("{a:.5}")),
            r.seconds
        ));
    }
    write_atomic(&out.join(HISTORY), csv.as_bytes())?;
    let col = |f: fn(&EpochRow) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    let series = vec![
        ("train loss", col(|r| r.train_loss)),
        ("val loss", col(|r| r.val_loss)),
    ];
    let metric = if rows.iter().any(|r| r.val_roc_auc.is_some()) {
        ("val ROC AUC", col(|r| r.val_roc_auc.unwrap_or(f64::NAN)))
    } else {
        ("val accuracy", col(|r| r.val_accuracy))
    };
    let losses = crate::sink::draw::chart("loss", &series);
    let metric_chart = crate::sink::draw::chart(metric.0, &[metric]);
    let mut both = image::RgbImage::from_pixel(
        losses.width(),
        losses.height() * 2,
        image::Rgb([255, 255, 255]),
    );
    image::imageops::replace(&mut both, &losses, 0, 0);
    image::imageops::replace(&mut both, &metric_chart, 0, i64::from(losses.height()));
    crate::sink::draw::save(both, &out.join("curves.png"))
}

pub(super) fn save_model(
    out: &Path,
    varmap: &VarMap,
    pipeline: &Pipeline,
    state: &State,
    validation: &str,
    m: Option<&Metrics>,
) -> Result<()> {
    let weights = out.join(WEIGHTS_FILE);
    let tmp = out.join(format!(".{WEIGHTS_FILE}.tmp"));
    varmap
        .save(&tmp)
        .map_err(|e| Error::output(&tmp, one_line(&e)))?;
    std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))?;
    let opts = &state.options;
    let mut card = ModelCard::for_pipeline(
        pipeline,
        opts.arch,
        true,
        match m {
            Some(_) => format!(
                "trained by histomap {} on {} training tiles; best validation epoch {}",
                env!("CARGO_PKG_VERSION"),
                state.train_files,
                state.epochs_done + 1
            ),
            None => format!(
                "trained by histomap {} on {} tiles, no validation split; last epoch {}",
                env!("CARGO_PKG_VERSION"),
                state.train_files,
                state.epochs_done + 1
            ),
        },
    );
    card.normalization = state.normalization.clone();
    card.stain_norm = state.options.stain_norm;
    card.stain_target = state.stain_target.clone();
    if let Some(m) = m {
        card.metrics.insert("val_accuracy".into(), m.accuracy);
        card.metrics
            .insert("val_balanced_accuracy".into(), m.balanced_accuracy);
        card.metrics.insert("val_macro_f1".into(), m.macro_f1);
        if let Some(auc) = m.roc_auc {
            card.metrics.insert("val_roc_auc".into(), auc);
        }
    }
    card.training = Some(TrainingRecord {
        data: opts.data.clone(),
        train_files: state.train_files,
        val_files: state.val_files,
        split_sha256: state.split_sha256.clone(),
        epochs: opts.epochs,
        best_epoch: state.epochs_done + 1,
        seed: opts.seed,
        batch_size: opts.batch_size,
        lr: opts.lr,
        augment: opts.augment,
        init: opts.init.clone(),
        fine_tune: opts.init.is_some().then_some(opts.fine_tune),
        ema: opts.ema,
        warmup: opts.warmup,
        weight_decay: Some(opts.weight_decay),
        patience: Some(opts.patience),
        validation: Some(validation.to_string()),
    });
    write_card(out, &card)
}
