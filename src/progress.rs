//! How the library reports while it works. It never prints on its own: callers pass
//! a [`Progress`] (heatmaps), a [`crate::learn::train::TrainProgress`] or a
//! [`crate::learn::evaluate::EvalProgress`]. [`Bars`], [`TrainBars`] and [`EvalBar`] draw
//! indicatif bars on a terminal and plain one-line reports otherwise; [`Silent`] says
//! nothing.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub trait Progress: Sync {
    /// A batch of `total` slides begins.
    fn begin(&self, _total: usize) {}
    /// A slide with `patches` tissue patches starts streaming.
    fn slide_started(&self, _name: &str, _patches: u64) {}
    fn patches_done(&self, _n: u64) {}
    /// A slide is over: one line saying how.
    fn slide_finished(&self, _line: &str) {}
    /// Something the user should know that fails nothing.
    fn warning(&self, _line: &str) {}
}

pub struct Silent;
impl Progress for Silent {}

pub struct Bars {
    multi: MultiProgress,
    slides: ProgressBar,
    patches: ProgressBar,
    tty: bool,
}

impl Bars {
    /// Bars on stderr when it is a terminal and `quiet` is off.
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal() && !quiet;
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let slides = multi.add(ProgressBar::new(0));
        slides.set_style(
            ProgressStyle::with_template("slides  [{bar:30}] {pos}/{len} {elapsed_precise}")
                .expect("valid template"),
        );
        let patches = multi.add(ProgressBar::new(0));
        patches.set_style(
            ProgressStyle::with_template("patches [{bar:30}] {pos}/{len} {per_sec} {msg}")
                .expect("valid template"),
        );
        Self {
            multi,
            slides,
            patches,
            tty,
        }
    }
}

impl Progress for Bars {
    fn begin(&self, total: usize) {
        self.slides.set_length(total as u64);
    }

    fn slide_started(&self, name: &str, patches: u64) {
        self.patches.reset();
        self.patches.set_length(patches);
        self.patches.set_message(name.to_string());
    }

    fn patches_done(&self, n: u64) {
        self.patches.inc(n);
    }

    fn warning(&self, line: &str) {
        let line = format!("histomap: warning: {line}");
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    fn slide_finished(&self, line: &str) {
        self.slides.inc(1);
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.patches.finish_and_clear();
        self.slides.finish_and_clear();
    }
}

/// A bar per epoch with the running loss, and one line per finished epoch.
pub struct TrainBars {
    bar: ProgressBar,
    tty: bool,
    loss: std::sync::Mutex<(f64, usize)>,
}

impl TrainBars {
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal() && !quiet;
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if tty {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}")
                .expect("valid template"),
        );
        Self {
            bar,
            tty,
            loss: std::sync::Mutex::new((0.0, 0)),
        }
    }
}

impl crate::learn::train::TrainProgress for TrainBars {
    fn started(&self, train_tiles: usize, val_tiles: usize) {
        eprintln!("training on {train_tiles} tiles, validating on {val_tiles}");
    }

    fn epoch_started(&self, epoch: usize, batches: usize) {
        self.bar.reset();
        self.bar.set_length(batches as u64);
        self.bar.set_prefix(epoch.to_string());
        *self.loss.lock().expect("loss lock") = (0.0, 0);
    }

    fn batch_done(&self, loss: f32) {
        let mut l = self.loss.lock().expect("loss lock");
        l.0 += f64::from(loss);
        l.1 += 1;
        self.bar
            .set_message(format!("loss {:.4}", l.0 / l.1 as f64));
        self.bar.inc(1);
    }

    fn epoch_done(&self, r: &crate::learn::train::EpochRow) {
        let auc = r
            .val_roc_auc
            .map_or(String::new(), |a| format!("  val AUC {a:.4}"));
        // Without validation (--no-val) the validation figures are NaN: left out.
        let val = if r.val_loss.is_nan() {
            String::new()
        } else {
            format!(
                "  val loss {:.4}  val acc {:.4}  val bal-acc {:.4}{auc}",
                r.val_loss, r.val_accuracy, r.val_balanced_accuracy
            )
        };
        let line = format!(
            "epoch {:>3}  loss {:.4}{val}  {:.0} s",
            r.epoch, r.train_loss, r.seconds
        );
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

/// Warns on stderr of what a dataset check found: tiles left out as unreadable (the
/// first few by name, then a count) and tiles not of the model's size.
pub fn warn_checked(bad: &[crate::learn::dataset::BadTile], size_warning: Option<&str>) {
    const SHOWN: usize = 10;
    for b in bad.iter().take(SHOWN) {
        eprintln!("histomap: warning: skipped {}", b.reason);
    }
    if !bad.is_empty() {
        let more = bad.len().saturating_sub(SHOWN);
        let more = if more > 0 {
            format!(" ({more} not shown)")
        } else {
            String::new()
        };
        eprintln!(
            "histomap: warning: skipped {} unreadable tile(s){more}",
            bad.len()
        );
    }
    if let Some(w) = size_warning {
        eprintln!("histomap: warning: {w}");
    }
}

/// One bar over the tiles being evaluated; skipped tiles are warned of before it starts.
pub struct EvalBar {
    bar: ProgressBar,
}

impl EvalBar {
    pub fn new(quiet: bool) -> Self {
        let target = if std::io::stderr().is_terminal() && !quiet {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template("tiles [{bar:30}] {pos}/{len} {per_sec} {eta}")
                .expect("valid template"),
        );
        Self { bar }
    }
}

impl crate::learn::evaluate::EvalProgress for EvalBar {
    fn checked(&self, skipped: &[crate::learn::dataset::BadTile], size_warning: Option<&str>) {
        warn_checked(skipped, size_warning);
    }

    fn started(&self, tiles: usize) {
        self.bar.set_length(tiles as u64);
    }

    fn tiles_done(&self, n: usize) {
        self.bar.inc(n as u64);
    }
}

impl Drop for EvalBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
