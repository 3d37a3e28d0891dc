//! Library-level tests of the readers, the tissue mask and the stream.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use histomap::map::geom::{L0Point, L0Rect, Size};
use histomap::map::grid::ReadPlan;
use histomap::map::mask::TissueMask;
use histomap::map::slide::{self, OpenSlideSource, RasterSource, SlideInfo, SlideSource};
use histomap::map::stream::{self, StreamOptions, StreamStats};
use histomap::pipeline::Normalization;
use histomap::progress::{Progress, Silent};
use image::RgbImage;

fn imagenet() -> Normalization {
    Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    }
}

#[test]
fn raster_reader_matches_openslide_on_a_tiled_tiff() {
    // A lossless tiled (not pyramidal) TIFF of the real SVS: both backends can read it.
    let dir = tempfile::tempdir().unwrap();
    let flat = dir.path().join("flat.v");
    let tif = dir.path().join("tiled.tif");
    let vips = |args: &[&std::ffi::OsStr]| {
        assert!(Command::new("vips").args(args).status().unwrap().success())
    };
    vips(&[
        "flatten".as_ref(),
        svs().as_os_str(),
        flat.as_os_str(),
        "--background".as_ref(),
        "255".as_ref(),
    ]);
    let target = format!(
        "{}[tile,tile-width=128,tile-height=128,compression=deflate]",
        tif.display()
    );
    vips(&["copy".as_ref(), flat.as_os_str(), target.as_ref()]);

    let raster = RasterSource::open(&tif).unwrap();
    let os = OpenSlideSource::try_open(&tif, &tif)
        .unwrap()
        .expect("OpenSlide opens tiled TIFF");
    assert_eq!(raster.info().size, os.info().size);
    // Inside, across tile edges, and running off the right/bottom edge (white there).
    for (x, y, w, h) in [(0, 0, 64, 64), (100, 250, 150, 150), (2150, 2900, 150, 150)] {
        let at = L0Point { x, y };
        let a = raster.read_region(at, 0, Size::new(w, h)).unwrap();
        let b = os.read_region(at, 0, Size::new(w, h)).unwrap();
        assert!(a == b, "regions differ at {x},{y}");
    }
    let corner = raster
        .read_region(L0Point { x: 2200, y: 2950 }, 0, Size::new(40, 40))
        .unwrap();
    assert_eq!(corner.get_pixel(39, 39).0, [255, 255, 255]);
}

#[test]
fn raster_reader_matches_full_decode_on_a_real_kather_tile() {
    let tile = data().join("kather2016/01_TUMOR");
    let path = std::fs::read_dir(tile)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let s = slide::open(&path).unwrap();
    assert_eq!(s.info().format, "tiff");
    let whole = image::open(&path).unwrap().into_rgb8();
    let read = s
        .read_region(L0Point { x: 10, y: 20 }, 0, Size::new(100, 100))
        .unwrap();
    let expected = RgbImage::from_fn(100, 100, |x, y| *whole.get_pixel(x + 10, y + 20));
    assert!(read == expected);
}

#[test]
fn strip_tiff_regions_match_full_decode() {
    let path = generated().join("kather5000.tif");
    let s = slide::open(&path).unwrap();
    let whole = image::open(&path).unwrap().into_rgb8();
    for (x, y) in [(0, 0), (1234, 4321), (4900, 4900)] {
        let read = s
            .read_region(L0Point { x, y }, 0, Size::new(100, 100))
            .unwrap();
        let expected = RgbImage::from_fn(100, 100, |dx, dy| *whole.get_pixel(x + dx, y + dy));
        assert!(read == expected, "strip read at {x},{y}");
    }
}

#[test]
fn tissue_mask_on_the_real_svs() {
    let s = slide::open(&svs()).unwrap();
    let thumb = slide::thumbnail(s.as_ref(), 2048).unwrap();
    assert_eq!(
        thumb.image.width().max(thumb.image.height()),
        1484,
        "2967 / 2, the smallest whole factor"
    );
    let mask = TissueMask::from_thumbnail(&thumb, 20);
    let f = mask.total_fraction();
    assert!((0.15..0.6).contains(&f), "tissue fraction {f}");
    // The bottom-left corner of this slide is glass; (1192, 894) lies in the tissue band.
    let rect = |x, y| L0Rect {
        origin: L0Point { x, y },
        size: Size::new(150, 150),
    };
    assert!(mask.fraction(rect(0, 2800)) < 0.1);
    assert!(mask.fraction(rect(1192, 894)) > 0.9);

    // A dark fluorescence scan must not break it.
    let nd = slide::open(&ndpi()).unwrap();
    let thumb = slide::thumbnail(nd.as_ref(), 512).unwrap();
    let f = TissueMask::from_thumbnail(&thumb, 20).total_fraction();
    assert!((0.0..=1.0).contains(&f));
}

/// A consumer that takes its time, so readers must wait on the bounded channel.
struct SlowConsumer {
    done: AtomicUsize,
}

impl Progress for SlowConsumer {
    fn patches_done(&self, n: u64) {
        std::thread::sleep(Duration::from_millis(40));
        self.done.fetch_add(n as usize, Ordering::SeqCst);
    }
}

fn patches(info: &SlideInfo, n: u32) -> (ReadPlan, Vec<L0Rect>) {
    let plan = ReadPlan::new(info, 96, 96, 0.97, None).unwrap();
    let rects = plan
        .grid
        .cells()
        .take(n as usize)
        .map(|c| plan.grid.rect(c))
        .collect();
    (plan, rects)
}

#[test]
fn backpressure_bounds_patches_in_flight() {
    let s = slide::open(&svs()).unwrap();
    let (plan, rects) = patches(s.info(), 120);
    let opts = StreamOptions {
        batch_size: 4,
        readers: 2,
        capacity: 2,
    };
    let consumer = SlowConsumer {
        done: AtomicUsize::new(0),
    };
    let (probs, stats) = stream::run(
        s.as_ref(),
        &plan,
        &imagenet(),
        &rects,
        None,
        &opts,
        &consumer,
    )
    .unwrap();
    assert!(probs.is_empty(), "no classifier, no probabilities");
    assert_eq!(consumer.done.load(Ordering::SeqCst), 120);
    let bound = StreamStats::in_flight_bound(&opts);
    assert!(
        stats.max_in_flight <= bound,
        "{} in flight > bound {bound}",
        stats.max_in_flight
    );
    // Readers ran ahead of the slow consumer (reading overlapped consuming) ...
    assert!(
        stats.max_in_flight > 2 * opts.batch_size,
        "{} in flight",
        stats.max_in_flight
    );
    // ... but never read the whole slide ahead.
    assert!(stats.max_in_flight < 120);
}

/// A slide whose reads start failing after a while.
struct Failing {
    inner: Box<dyn SlideSource>,
    reads: AtomicUsize,
}

impl SlideSource for Failing {
    fn info(&self) -> &SlideInfo {
        self.inner.info()
    }

    fn read_region(&self, origin: L0Point, level: usize, size: Size) -> histomap::Result<RgbImage> {
        if self.reads.fetch_add(1, Ordering::SeqCst) >= 30 {
            return Err(histomap::Error::slide(
                self.path(),
                "simulated corrupt tile",
            ));
        }
        self.inner.read_region(origin, level, size)
    }
}

#[test]
fn a_read_error_stops_the_stream_without_hanging() {
    let s = Failing {
        inner: slide::open(&svs()).unwrap(),
        reads: AtomicUsize::new(0),
    };
    let (plan, rects) = patches(s.info(), 200);
    let opts = StreamOptions {
        batch_size: 4,
        readers: 2,
        capacity: 1,
    };
    let err = stream::run(&s, &plan, &imagenet(), &rects, None, &opts, &Silent).unwrap_err();
    assert!(err.to_string().contains("simulated corrupt tile"), "{err}");
    assert!(err.to_string().contains("cmu_small_region.svs"), "{err}");
}

#[test]
fn png_and_jpeg_are_read_whole() {
    let tile = data().join("kather2016/02_STROMA");
    let src = std::fs::read_dir(tile)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let img = image::open(&src).unwrap().into_rgb8();
    let dir = tempfile::tempdir().unwrap();
    for ext in ["png", "jpg"] {
        let path = dir.path().join(format!("tile.{ext}"));
        img.save(&path).unwrap();
        let s = slide::open(&path).unwrap();
        assert_eq!(s.info().size, Size::new(150, 150));
        assert_eq!(s.info().mpp, None, "PNG and JPEG carry no scale");
        let expected = image::open(&path).unwrap().into_rgb8();
        let read = s
            .read_region(L0Point { x: 0, y: 0 }, 0, Size::new(150, 150))
            .unwrap();
        assert!(read == expected, "{ext}");
    }
}
