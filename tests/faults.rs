//! Damaged input and hostile surroundings: corrupt tiles in the real SVS cost only their
//! patches; a fuzz corpus of damaged slides (scripts/fuzz-slides.sh) fails each slide
//! cleanly or maps it, never a crash; a full output disk, a read-only output folder and
//! a slide file that changes or vanishes while it is read each get one named error.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use histomap::cohort::ledger::{EventKind, Ledger};
use histomap::model::Architecture;
use serde_json::Value;

fn stderr_of(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `predictions.csv` by patch origin: (status, the probability columns as written).
fn predictions(dir: &Path) -> BTreeMap<(u32, u32), (String, Vec<String>)> {
    let mut reader = csv::Reader::from_path(dir.join("predictions.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    let probs: Vec<usize> = (0..header.len())
        .filter(|&i| header[i].starts_with("prob_"))
        .collect();
    let status = header.iter().position(|h| h == "status").unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let at = (r[0].parse().unwrap(), r[1].parse().unwrap());
            let p = probs.iter().map(|&i| r[i].to_string()).collect();
            (at, (r[status].to_string(), p))
        })
        .collect()
}

/// A copy of the real SVS with the level-0 JPEG tiles under `points` (level-0 pixels)
/// cut short by an end-of-image marker a third of the way in, as a bad sector or an
/// interrupted copy leaves them. Returns the tiles' level-0 rectangles.
fn corrupt_tiles(dest: &Path, points: &[(u32, u32)]) -> Vec<[u32; 4]> {
    use tiff::decoder::Decoder;
    use tiff::tags::Tag;
    let mut bytes = fs::read(svs()).unwrap();
    let mut dec = Decoder::new(std::io::Cursor::new(&bytes)).unwrap();
    let offsets = dec.get_tag_u64_vec(Tag::TileOffsets).unwrap();
    let counts = dec.get_tag_u64_vec(Tag::TileByteCounts).unwrap();
    let tile = dec.get_tag_u32(Tag::TileWidth).unwrap();
    let across = dec.dimensions().unwrap().0.div_ceil(tile);
    let tiles: BTreeSet<(u32, u32)> = points.iter().map(|&(x, y)| (x / tile, y / tile)).collect();
    for &(col, row) in &tiles {
        let i = (row * across + col) as usize;
        let at = (offsets[i] + counts[i] / 3) as usize;
        bytes[at..at + 2].copy_from_slice(&[0xFF, 0xD9]);
    }
    fs::write(dest, bytes).unwrap();
    tiles
        .iter()
        .map(|&(c, r)| [c * tile, r * tile, tile, tile])
        .collect()
}

/// Bar 1 of #19: three corrupt JPEG tiles in the middle of the tissue cost the patches
/// on them and nothing else.
#[test]
fn corrupt_tiles_cost_only_their_patches() {
    let dir = tempfile::tempdir().unwrap();
    let model = model("kather8", Architecture::Smallcnn);
    let intact_out = dir.path().join("intact");
    let status = heatmap_command("kather8", &model, &intact_out, &svs())
        .status()
        .unwrap();
    assert!(status.success());
    let intact = predictions(&intact_out.join("cmu_small_region"));
    let origins: Vec<(u32, u32)> = intact.keys().copied().collect();
    // Tiles under patches a quarter, half and three quarters through the tissue.
    let points: Vec<(u32, u32)> = [1, 2, 3]
        .map(|q| origins[origins.len() * q / 4])
        .map(|(x, y)| (x + 74, y + 74))
        .to_vec();
    let bad = dir.path().join("bad.svs");
    let tiles = corrupt_tiles(&bad, &points);
    assert_eq!(tiles.len(), 3);

    // More than 5 % unreadable: the slide fails, naming the count and the first region.
    let out = dir.path().join("out");
    let (code, err) = stderr_of(&mut heatmap_command("kather8", &model, &out, &bad));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("FAILED  bad")
            && err.contains("bad.svs: ")
            && err.contains("tissue patches are unreadable, more than --max-unreadable 0.05")
            && err.contains("the first at level-0 x ")
            && err.contains("Corrupt JPEG data"),
        "{err}"
    );
    assert!(!out.join("bad").exists());

    let (code, err) =
        stderr_of(heatmap_command("kather8", &model, &out, &bad).args(["--max-unreadable", "0.5"]));
    assert_eq!(code, Some(0), "{err}");
    let slide = out.join("bad");
    let damaged = predictions(&slide);
    let unreadable: Vec<(u32, u32)> = damaged
        .iter()
        .filter(|(_, (s, _))| s == "unreadable")
        .map(|(&at, _)| at)
        .collect();
    let n = unreadable.len();
    assert!(n > 0, "{err}");
    assert!(err.contains(&format!(", {n} unreadable, in ")), "{err}");
    // Every readable patch has the probabilities of the intact slide, to the digit.
    let mut same = 0;
    for (at, (status, probs)) in &damaged {
        if status == "ok" {
            assert_eq!(Some(probs), intact.get(at).map(|p| &p.1), "patch {at:?}");
            same += 1;
        } else {
            assert!(probs.iter().all(String::is_empty), "{at:?}: {probs:?}");
        }
    }
    // Every intact patch is there, read or not; an unreadable one lies on a bad tile.
    assert!(intact.keys().all(|at| damaged.contains_key(at)));
    let on_bad_tile = |&(x, y): &(u32, u32)| {
        tiles
            .iter()
            .any(|t| x < t[0] + t[2] && t[0] < x + 149 && y < t[1] + t[3] && t[1] < y + 149)
    };
    assert!(unreadable.iter().all(on_bad_tile), "{unreadable:?}");
    eprintln!(
        "bar 1: {} intact patches; damaged slide: {same} read with identical probabilities, \
         {n} unreadable ({} of them intact tissue patches)",
        intact.len(),
        unreadable
            .iter()
            .filter(|at| intact.contains_key(at))
            .count()
    );

    // Counted in summary.json, flagged in the GeoJSON, logged, and in the cohort report.
    let summary: Value =
        serde_json::from_slice(&fs::read(slide.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["patches"]["unreadable"], n);
    assert!(summary["tissue"]["unknown_fraction"].as_f64().unwrap() > 0.0);
    let tiles_json: Value =
        serde_json::from_slice(&fs::read(slide.join("tiles.geojson")).unwrap()).unwrap();
    let flagged = tiles_json["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["properties"]["status"] == "unreadable")
        .inspect(|f| assert_eq!(f["properties"]["classification"]["name"], "Unreadable"))
        .count();
    assert_eq!(flagged, n);
    let done = Ledger::at(&out)
        .events()
        .into_iter()
        .rfind(|e| e.event == EventKind::Done)
        .unwrap();
    assert_eq!(done.unreadable, Some(n));
    histomap().arg("report").arg(&out).assert().success();
    let cohort = fs::read_to_string(out.join("cohort.csv")).unwrap();
    let mut lines = cohort.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let column = lines
        .next()
        .unwrap()
        .iter()
        .position(|h| *h == "patches_unreadable")
        .unwrap();
    assert_eq!(lines.next().unwrap()[column], n.to_string());
}

/// What happened to the mutants of a fuzz corpus, in one of the two commands.
#[derive(Debug, Default)]
struct Tally {
    worked: usize,
    failed_cleanly: usize,
    panics: Vec<String>,
    signals: Vec<String>,
    timeouts: Vec<String>,
    over_memory: Vec<String>,
    unclear: Vec<String>,
    /// Mutants whose stderr also held a C library's own warnings (libtiff prints them
    /// before histomap's line; `heatmap` keeps them in the slide's child).
    library_lines: usize,
}

impl Tally {
    fn is_clean(&self) -> bool {
        [
            &self.panics,
            &self.signals,
            &self.timeouts,
            &self.over_memory,
            &self.unclear,
        ]
        .iter()
        .all(|v| v.is_empty())
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what}: worked {}, failed cleanly {}, panics {}, signals {}, timeouts {}, \
             over memory {}, unclear errors {} (C library lines beside histomap's: {})",
            self.worked,
            self.failed_cleanly,
            self.panics.len(),
            self.signals.len(),
            self.timeouts.len(),
            self.over_memory.len(),
            self.unclear.len(),
            self.library_lines
        )
    }
}

const LIMIT_S: f64 = 60.0;
const LIMIT_MIB: f64 = 1024.0;

/// Makes a corpus with scripts/fuzz-slides.sh (`--ci`: the small fixed set), runs
/// every mutant through `info` one by one and through one `heatmap` batch beside the
/// unmutated sources, and tallies what happened.
fn fuzz(ci: bool) -> (Tally, Tally) {
    let dir = root().join(if ci { "target/fuzz-ci" } else { "target/fuzz" });
    let mut make = Command::new("bash");
    make.arg(root().join("scripts/fuzz-slides.sh")).arg("make");
    if ci {
        make.arg("--ci");
    }
    assert!(make.arg(&dir).status().unwrap().success());
    let corpus = dir.join("corpus");
    let mut mutants: Vec<PathBuf> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    mutants.sort();
    let exe = assert_cmd::cargo::cargo_bin("histomap");

    let mut info = Tally::default();
    let rss_file = dir.join("rss");
    for m in &mutants {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        let t = Instant::now();
        let out = Command::new("/usr/bin/time")
            .arg("-o")
            .arg(&rss_file)
            .args(["-f", "%M", "timeout", "-s", "KILL", "60"])
            .arg(&exe)
            .arg("info")
            .arg(m)
            .output()
            .unwrap();
        let seconds = t.elapsed().as_secs_f64();
        let rss_kib: f64 = fs::read_to_string(&rss_file)
            .unwrap()
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0.0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (err, others): (Vec<&str>, Vec<&str>) = stderr
            .lines()
            .filter(|l| !l.starts_with("Command "))
            .partition(|l| l.starts_with("histomap: "));
        if others.iter().any(|l| !l.contains("panicked")) {
            info.library_lines += 1;
        }
        match out.status.code() {
            _ if seconds > LIMIT_S => info.timeouts.push(name),
            _ if rss_kib / 1024.0 > LIMIT_MIB => info.over_memory.push(name),
            _ if stderr.contains("panicked") => info.panics.push(name),
            Some(0) => info.worked += 1,
            Some(1) if err.len() == 1 && err[0].contains(&name) => info.failed_cleanly += 1,
            Some(1) => info.unclear.push(format!("{name}: {err:?}")),
            _ => info.signals.push(format!("{name}: {}", out.status)),
        }
    }

    let model = model("kather8", Architecture::Smallcnn);
    let out = dir.join("out");
    let _ = fs::remove_dir_all(&out);
    let output = heatmap_command("kather8", &model, &out, &corpus)
        .arg(dir.join("good"))
        .args(["--slide-mpp", "0.5", "--threads", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.signal_or_code(), Some(1), "{stderr}");
    let lines: BTreeMap<&str, &str> = stderr
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().nth(1)?;
            (l.starts_with("done") || l.starts_with("FAILED")).then_some((name, l))
        })
        .collect();
    let mut process: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for e in Ledger::at(&out).events() {
        if let Some(p) = e.process {
            process.insert(e.slide, (p.seconds, p.max_rss_mib));
        }
    }
    let mut heatmap = Tally::default();
    for m in &mutants {
        let file = m.file_name().unwrap().to_string_lossy().into_owned();
        let name = m.file_stem().unwrap().to_string_lossy().into_owned();
        let line = lines.get(name.as_str()).copied().unwrap_or("");
        let (seconds, rss) = process.get(&name).copied().unwrap_or_default();
        if seconds > LIMIT_S {
            heatmap.timeouts.push(name);
        } else if rss > LIMIT_MIB {
            heatmap.over_memory.push(format!("{name}: {rss:.0} MiB"));
        } else if line.contains("panicked") {
            heatmap.panics.push(line.to_string());
        } else if line.contains("killed by signal") {
            heatmap.signals.push(line.to_string());
        } else if line.starts_with("done") {
            heatmap.worked += 1;
        } else if line.starts_with("FAILED") && line.contains(&file) {
            heatmap.failed_cleanly += 1;
        } else {
            heatmap.unclear.push(format!("{name}: {line:?}"));
        }
    }
    for good in fs::read_dir(dir.join("good")).unwrap() {
        let name = good.unwrap().path();
        let name = name.file_stem().unwrap().to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let line = lines.get(name.as_ref()).copied().unwrap_or("");
        assert!(line.starts_with("done"), "good slide {name}: {line:?}");
    }
    let slowest = process.values().map(|p| p.0).fold(0.0, f64::max);
    let largest = process.values().map(|p| p.1).fold(0.0, f64::max);
    eprintln!(
        "fuzz corpus {}: {} mutants\n{}\n{}\nslowest slide {slowest:.1} s, largest {largest:.0} MiB",
        corpus.display(),
        mutants.len(),
        info.line("info"),
        heatmap.line("heatmap")
    );
    (info, heatmap)
}

trait SignalOrCode {
    fn signal_or_code(&self) -> Option<i32>;
}

impl SignalOrCode for std::process::ExitStatus {
    /// The exit code; a signal as its negative number.
    fn signal_or_code(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.code().or(self.signal().map(|s| -s))
    }
}

/// The small fixed corpus CI runs: every mutant works or fails in one line naming it.
#[test]
fn fuzz_corpus_ci_set_fails_cleanly_or_works() {
    let (info, heatmap) = fuzz(true);
    assert!(info.is_clean(), "{info:#?}");
    assert!(heatmap.is_clean(), "{heatmap:#?}");
}

/// The full corpus (`scripts/fuzz-slides.sh` runs it; minutes).
#[test]
#[ignore]
fn fuzz_corpus_full() {
    let (info, heatmap) = fuzz(false);
    assert!(info.is_clean(), "{info:#?}");
    assert!(heatmap.is_clean(), "{heatmap:#?}");
}

/// Runs `script` with `$HISTOMAP`, `$PIPELINE`, `$MODEL` and `$SLIDE` set, in a mount
/// namespace of its own where it may mount a small tmpfs at `$MNT`; `$LOG` is a
/// folder outside it for what the script wants to show.
fn in_own_mounts(script: &str, log: &Path) -> std::process::Output {
    let mnt = tempfile::tempdir().unwrap();
    Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-euc", script])
        .env("HISTOMAP", assert_cmd::cargo::cargo_bin("histomap"))
        .env("PIPELINE", pipeline("kather8"))
        .env("MODEL", model("kather8", Architecture::Smallcnn))
        .env("SLIDE", svs())
        .env("MNT", mnt.path())
        .env("LOG", log)
        .output()
        .expect("unshare (util-linux) runs the disk tests in a mount namespace")
}

/// The output disk fills in the middle of a slide (a 16 MiB tmpfs, filled but for
/// 200 KiB; the overlay alone is 1.8 MB): the slide fails with the file and the
/// reason, nothing of it is visible, and a rerun after space is freed completes.
#[test]
fn full_disk_fails_the_slide_and_a_rerun_completes() {
    let log = tempfile::tempdir().unwrap();
    let run =
        "\"$HISTOMAP\" heatmap -q -p \"$PIPELINE\" --model \"$MODEL\" -o \"$MNT/out\" \"$SLIDE\"";
    let script = format!(
        "mount -t tmpfs -o size=16m tmpfs \"$MNT\"
         dd if=/dev/zero of=\"$MNT/fill\" bs=64k 2>/dev/null || true
         truncate -s -200K \"$MNT/fill\"
         {run} 2>\"$LOG/first\" && echo 0 >\"$LOG/first.code\" || echo $? >\"$LOG/first.code\"
         ls -A \"$MNT/out\" \"$MNT/out/.histomap/staging\" >\"$LOG/listing\"
         rm \"$MNT/fill\"
         {run} 2>\"$LOG/second\" && echo 0 >\"$LOG/second.code\" || echo $? >\"$LOG/second.code\"
         ls \"$MNT/out/cmu_small_region\" >\"$LOG/done\""
    );
    let out = in_own_mounts(&script, log.path());
    let read = |f: &str| fs::read_to_string(log.path().join(f)).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = read("first");
    assert_eq!(read("first.code").trim(), "1", "{first}");
    assert!(
        first.contains("FAILED  cmu_small_region")
            && first.contains("No space left on device")
            && first.contains(".histomap/staging/cmu_small_region/"),
        "{first}"
    );
    let listing = read("listing");
    assert!(
        !listing.contains("cmu_small_region"),
        "nothing partial: {listing}"
    );
    let second = read("second");
    assert_eq!(read("second.code").trim(), "0", "{second}");
    assert!(second.contains("done    cmu_small_region"), "{second}");
    assert!(read("done").contains("summary.json"));
}

/// A read-only output folder: one error naming it, before any slide is read.
#[test]
fn read_only_output_is_one_error_before_any_slide() {
    let log = tempfile::tempdir().unwrap();
    let run = "\"$HISTOMAP\" heatmap -q -p \"$PIPELINE\" --model \"$MODEL\"";
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs \"$MNT\"
         mkdir -p \"$MNT/ran/.histomap/locks\" \"$MNT/ran/.histomap/failed\" \"$MNT/ran/.histomap/staging\"
         mount -o remount,ro \"$MNT\"
         for out in fresh ran; do
           {run} -o \"$MNT/$out\" \"$SLIDE\" 2>\"$LOG/$out\" && echo 0 >\"$LOG/$out.code\" || echo $? >\"$LOG/$out.code\"
         done"
    );
    let out = in_own_mounts(&script, log.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["fresh", "ran"] {
        let err = fs::read_to_string(log.path().join(name)).unwrap();
        let code = fs::read_to_string(log.path().join(format!("{name}.code"))).unwrap();
        assert_eq!(code.trim(), "1", "{err}");
        let errors = err.lines().filter(|l| !l.contains("UNTRAINED")).count();
        assert_eq!(errors, 1, "{err}");
        assert!(
            err.contains(&format!("/{name}: the output folder cannot be written: "))
                && err.contains("Read-only file system"),
            "{err}"
        );
    }
}

/// A slide file rewritten or deleted while it is being read: the slide fails with a
/// line that says so, and no results of it appear.
#[test]
fn a_slide_that_changes_or_vanishes_mid_read_fails() {
    let model = model("kather8", Architecture::Smallcnn);
    for (how, said) in [
        ("append", "changed while it was being read"),
        ("delete", "vanished while it was being read"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // The 5000×5000 strip TIFF takes seconds on one thread.
        let slide = dir.path().join("k.tif");
        fs::copy(generated().join("kather5000.tif"), &slide).unwrap();
        let out = dir.path().join("out");
        let child = heatmap_command("kather8", &model, &out, &slide)
            .args(["--threads", "1"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ledger = Ledger::at(&out);
        let start = Instant::now();
        while !ledger.is_locked("k") {
            assert!(start.elapsed() < Duration::from_secs(60), "never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        if how == "append" {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&slide).unwrap();
            f.write_all(&[0; 4096]).unwrap();
        } else {
            fs::remove_file(&slide).unwrap();
        }
        let result = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{how}: {err}");
        assert!(
            err.contains("FAILED  k") && err.contains("k.tif: ") && err.contains(said),
            "{how}: {err}"
        );
        assert!(!out.join("k").exists(), "{how}: no results");
    }
}
