//! Patches read per second: histomap's JPEG tile reader against OpenSlide, on the same
//! slide and regions, measured in one run. Every patch of a grid over the whole slide
//! is read, row by row, on one thread (the readers' speed per core; the stream runs
//! one reader per core); each round opens both readers afresh (their tile caches start
//! empty) and reads with each in turn. Medians of the rounds.
//!
//! usage: cargo bench --bench read [-- SLIDE [SIDE [LEVEL [ROUNDS]]]]
//! defaults: target/slides/dense.tif (scripts/make-slides.sh), patches of 149 pixels
//! (ResNet-18's 150 px at 0.495 µm/px on that slide), level 0, 3 rounds.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::median;
use histomap::map::geom::{L0Point, Size};
use histomap::map::slide::{OpenSlideSource, SlideSource, TiledTiffSource};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let slide = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/slides/dense.tif"));
    let arg = |i: usize, default: u32| args.get(i).map_or(default, |a| a.parse().unwrap());
    let (side, level, rounds) = (arg(1, 149), arg(2, 0) as usize, arg(3, 3));

    let openslide = || OpenSlideSource::try_open(&slide, &slide).unwrap().unwrap();
    let info = openslide().info().clone();
    let l = info.levels[level];
    let ds = l.downsample;
    let regions: Vec<L0Point> = (0..l.size.h / side)
        .flat_map(|r| (0..l.size.w / side).map(move |c| (c, r)))
        .map(|(c, r)| L0Point {
            x: (f64::from(c * side) * ds).round() as u32,
            y: (f64::from(r * side) * ds).round() as u32,
        })
        .collect();
    let size = Size::new(side, side);
    let time = |reader: &dyn SlideSource| {
        let start = Instant::now();
        for &at in &regions {
            std::hint::black_box(reader.read_region(at, level, size).unwrap());
        }
        regions.len() as f64 / start.elapsed().as_secs_f64()
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        theirs.push(time(&openslide()));
        let direct = TiledTiffSource::over(&slide, openslide())
            .unwrap_or_else(|_| panic!("{}: not a JPEG-tiled TIFF", slide.display()));
        ours.push(time(&direct));
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "{}: {} patches of {side} px at level {level}, {rounds} rounds, one thread",
        slide.display(),
        regions.len()
    );
    println!(
        "OpenSlide {}: {theirs:.0} patches/s",
        histomap::map::slide::openslide_version()
    );
    println!(
        "histomap's JPEG tile reader: {ours:.0} patches/s ({:.2}x)",
        ours / theirs
    );
}
