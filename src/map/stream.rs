//! The patch stream. In: a slide, a read plan and the patches to classify. Out: class
//! probabilities per patch.
//!
//! Reader threads (a rayon pool of their own, so they never starve candle, which uses
//! the global pool) take batches in grid order, read and preprocess each patch and
//! send whole batches into a **bounded** crossbeam channel. The calling thread runs the
//! classifier on each batch as it arrives. When the classifier is slower, readers
//! block on the full channel, so at most `(capacity + readers + 1) × batch_size`
//! patches are ever in memory, whatever the slide size; reading overlaps inference.
//!
//! A batch always holds the same patches whatever the thread count and results are
//! stored by patch index, so outputs do not depend on `--threads`.
//!
//! A patch that cannot be read is recorded and its place in the batch left zero, so
//! every other patch is classified in the same batch, at the same position, as it
//! would be on an intact slide. Past a given number of such patches the stream stops.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::error::{Error, Result};
use crate::map::geom::{L0Rect, Size};
use crate::map::grid::ReadPlan;
use crate::map::preprocess::{fit_to, Normalizer};
use crate::map::slide::SlideSource;
use crate::model::{Classifier, Rechecks};
use crate::pipeline::Normalization;
use crate::progress::Progress;
use crate::stain::Transform;

#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    pub batch_size: usize,
    /// Reader threads.
    pub readers: usize,
    /// Batches the channel holds before readers wait.
    pub capacity: usize,
}

/// What the stream measured.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StreamStats {
    pub patches: usize,
    pub batches: usize,
    /// Most patches read but not yet classified at any moment.
    pub max_in_flight: usize,
    /// Seconds the classifier spent on batches.
    pub classify_s: f64,
    /// CPU seconds the readers spent reading and preparing patches, summed over
    /// readers; they overlap the classifier's.
    pub read_s: f64,
    pub wall_s: f64,
}

impl StreamStats {
    /// The bound `max_in_flight` never exceeds.
    pub fn in_flight_bound(opts: &StreamOptions) -> usize {
        (opts.capacity + opts.readers + 1) * opts.batch_size
    }
}

struct Batch {
    first: usize,
    len: usize,
    pixels: Vec<f32>,
    /// Patches of the batch that could not be read, by index among all patches.
    unreadable: Vec<(usize, Error)>,
}

/// Rows of slide tiles, in pixels of the level read, that one band of the read order
/// spans: OpenSlide keeps 32 MiB of decoded tiles per slide, so a band's column of
/// tiles (a few 256- or 512-px tiles) stays cached while every patch over it is read.
const BAND: f64 = 2048.0;

/// The order patches are read in: bands of rows, each read column by column, so that
/// patches over the same tile are read together and each tile is decoded about once.
/// Row by row, a gigapixel slide's row of tiles outgrows OpenSlide's tile cache, and
/// each tile was decoded again for every row of patches it held.
fn read_order(patches: &[L0Rect], plan: &ReadPlan) -> Vec<usize> {
    let downsample = f64::from(plan.grid.patch) / f64::from(plan.read_size);
    let band = (BAND * downsample).max(1.0) as i64;
    let mut order: Vec<usize> = (0..patches.len()).collect();
    order.sort_by_key(|&i| {
        let o = patches[i].origin;
        (i64::from(o.y).div_euclid(band), o.x, o.y)
    });
    order
}

/// What a stream that tolerates unreadable patches returns.
pub struct Streamed {
    /// Row-major, `patches.len() × classes`; the rows of unreadable patches are
    /// meaningless.
    pub probs: Vec<f32>,
    /// Patches that could not be read, by index, in order. When there are more than
    /// the stream tolerated it stopped early, and more may be unreadable.
    pub unreadable: Vec<(usize, Error)>,
    pub stats: StreamStats,
}

/// Classifies `patches` (level-0 rectangles of the plan's grid). Returns probabilities
/// row-major, `patches.len() × classes`; empty when `classifier` is `None` (the stream
/// then only reads, which measures the reading side alone). Any unreadable patch is
/// an error.
pub fn run(
    slide: &dyn SlideSource,
    plan: &ReadPlan,
    normalization: &Normalization,
    patches: &[L0Rect],
    classifier: Option<&Classifier>,
    opts: &StreamOptions,
    progress: &dyn Progress,
) -> Result<(Vec<f32>, StreamStats)> {
    let job = Stream {
        slide,
        plan,
        normalization,
        stain: None,
        classifier,
        opts: *opts,
    };
    let out = job.run(patches, 0, progress)?;
    match out.unreadable.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok((out.probs, out.stats)),
    }
}

/// A stream's settings, for [`Stream::run`].
pub struct Stream<'a> {
    pub slide: &'a dyn SlideSource,
    pub plan: &'a ReadPlan,
    pub normalization: &'a Normalization,
    /// The slide's stain normalisation ([`crate::map::stains`]), applied to every
    /// patch at the model's input size.
    pub stain: Option<&'a Transform>,
    pub classifier: Option<&'a Classifier>,
    pub opts: StreamOptions,
}

impl Stream<'_> {
    /// Classifies `patches` as [`run`] does, but an unreadable patch is recorded and
    /// the stream goes on, until more than `tolerate` patches were unreadable.
    pub fn run(
        &self,
        patches: &[L0Rect],
        tolerate: usize,
        progress: &dyn Progress,
    ) -> Result<Streamed> {
        let Stream {
            slide,
            plan,
            normalization,
            stain,
            classifier,
            opts,
        } = *self;
        let start = Instant::now();
        let opts = StreamOptions {
            batch_size: opts.batch_size.max(1),
            readers: opts.readers.max(1),
            capacity: opts.capacity.max(1),
        };
        let n_batches = patches.len().div_ceil(opts.batch_size);
        let classes = classifier.map_or(0, Classifier::num_classes);
        let mut probs = vec![0f32; patches.len() * classes];
        let mut stats = StreamStats {
            patches: patches.len(),
            batches: n_batches,
            ..Default::default()
        };
        let mut unreadable = Vec::new();
        if patches.is_empty() {
            return Ok(Streamed {
                probs,
                unreadable,
                stats,
            });
        }

        let normalizer = Normalizer::new(normalization);
        let side = plan.input_size as usize;
        let patch_len = 3 * side * side;
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let failures = AtomicUsize::new(0);
        let in_flight = AtomicUsize::new(0);
        let max_in_flight = AtomicUsize::new(0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.readers)
            .thread_name(|i| format!("histomap-read-{i}"))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start reader threads: {e}")))?;
        let (tx, rx) = bounded::<Batch>(opts.capacity);

        let read = Size::new(plan.read_size, plan.read_size);
        let order = read_order(patches, plan);
        let read_ns = AtomicU64::new(0);
        let read_batch = |b: usize| -> Batch {
            let started = thread_cpu_ns();
            let first = b * opts.batch_size;
            let len = opts.batch_size.min(patches.len() - first);
            let mut pixels = vec![0f32; len * patch_len];
            let mut unreadable = Vec::new();
            for (i, &at) in order[first..first + len].iter().enumerate() {
                match slide.read_region(patches[at].origin, plan.level, read) {
                    Ok(mut patch) => {
                        if let Some(t) = stain {
                            patch = fit_to(patch, plan.input_size);
                            t.apply(&mut patch);
                        }
                        normalizer.write_chw(
                            &patch,
                            plan.input_size,
                            &mut pixels[i * patch_len..(i + 1) * patch_len],
                        )
                    }
                    Err(e) => {
                        unreadable.push((at, e));
                        if failures.fetch_add(1, Ordering::SeqCst) >= tolerate {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(now, Ordering::SeqCst);
            }
            read_ns.fetch_add(thread_cpu_ns().saturating_sub(started), Ordering::Relaxed);
            Batch {
                first,
                len,
                pixels,
                unreadable,
            }
        };

        std::thread::scope(|scope| -> Result<()> {
            scope.spawn(|| {
                pool.scope(|ps| {
                    for _ in 0..opts.readers {
                        let tx = tx.clone();
                        let (next, stop, read_batch) = (&next, &stop, &read_batch);
                        ps.spawn(move |_| loop {
                            let b = next.fetch_add(1, Ordering::SeqCst);
                            if b >= n_batches || stop.load(Ordering::SeqCst) {
                                break;
                            }
                            if tx.send(read_batch(b)).is_err() {
                                stop.store(true, Ordering::SeqCst);
                                break;
                            }
                        });
                    }
                });
                drop(tx);
            });

            // `auto`'s close calls, run again in f32 a batch at a time.
            let mut rechecks = Rechecks::default();
            // Returns the seconds it took.
            let recheck = |model: &Classifier, rechecks: &mut Rechecks, probs: &mut [f32]| {
                let t = Instant::now();
                for (at, p) in model.run_rechecks(rechecks)? {
                    probs[at * classes..(at + 1) * classes].copy_from_slice(&p);
                }
                Ok::<_, Error>(t.elapsed().as_secs_f64())
            };
            let result = (|| {
                for mut batch in rx.iter() {
                    unreadable.append(&mut batch.unreadable);
                    if unreadable.len() > tolerate {
                        return Ok(());
                    }
                    if let Some(model) = classifier {
                        let t = Instant::now();
                        let batch_order = &order[batch.first..batch.first + batch.len];
                        let p = model.predict_deferring(
                            batch.pixels,
                            batch.len,
                            batch_order,
                            &mut rechecks,
                        )?;
                        stats.classify_s += t.elapsed().as_secs_f64();
                        for (&at, p) in batch_order.iter().zip(p.chunks(classes)) {
                            probs[at * classes..(at + 1) * classes].copy_from_slice(p);
                        }
                        if rechecks.is_full() {
                            stats.classify_s += recheck(model, &mut rechecks, &mut probs)?;
                        }
                    }
                    in_flight.fetch_sub(batch.len, Ordering::SeqCst);
                    progress.patches_done(batch.len as u64);
                }
                if let Some(model) = classifier {
                    stats.classify_s += recheck(model, &mut rechecks, &mut probs)?;
                }
                Ok(())
            })();
            // On failure, tell readers to stop and drain so none stays blocked on send.
            stop.store(true, Ordering::SeqCst);
            for _ in rx.iter() {}
            result
        })?;

        stats.max_in_flight = max_in_flight.load(Ordering::SeqCst);
        stats.read_s = read_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        stats.wall_s = start.elapsed().as_secs_f64();
        unreadable.sort_by_key(|&(i, _)| i);
        Ok(Streamed {
            probs,
            unreadable,
            stats,
        })
    }
}

/// CPU time of the calling thread in nanoseconds: a reader's own work, whatever the
/// other threads on its core do.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::geom::Cell;
    use crate::map::grid::Grid;

    #[test]
    fn patches_are_read_in_bands_column_by_column() {
        // Patches of 1,000 level-0 px read from a level downsampled 2×: a band spans
        // 2,048 level px, 4,096 level-0 px, so it holds the rows starting at y 0–4,000,
        // then 5,000–8,000, then 9,000.
        let grid = Grid::new(Size::new(3000, 10_000), 1000, 1000);
        let plan = ReadPlan {
            grid,
            level: 1,
            read_size: 500,
            input_size: 96,
            slide_mpp: 0.25,
        };
        let cells: Vec<Cell> = (0..10)
            .flat_map(|row| (0..3).map(move |col| Cell { col, row }))
            .collect();
        let patches: Vec<L0Rect> = cells.iter().map(|&c| grid.rect(c)).collect();
        let order = read_order(&patches, &plan);
        let read: Vec<(u32, u32)> = order
            .iter()
            .map(|&i| (cells[i].row, cells[i].col))
            .collect();
        let band = |rows: std::ops::Range<u32>| -> Vec<(u32, u32)> {
            (0..3)
                .flat_map(|col| rows.clone().map(move |row| (row, col)))
                .collect()
        };
        assert_eq!(read, [band(0..5), band(5..9), band(9..10)].concat());
    }
}
