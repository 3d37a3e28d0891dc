//! How the library reports while it works. It never prints on its own: callers pass
//! a [`Progress`]. [`Bars`] draws indicatif bars for slides and patches on a terminal
//! and plain one-line reports otherwise; [`Silent`] says nothing.

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
