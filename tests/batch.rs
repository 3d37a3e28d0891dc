//! Batches as a cohort runs them: a worker killed with SIGKILL in the middle of a
//! slide, workers sharing one OUT folder, `status`, the sbatch script, and `report`
//! rendered in a real headless Chromium. The Slurm cluster test itself is
//! scripts/slurm-test.sh (it needs daemons started as root).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use histomap::cohort::ledger::{EventKind, Ledger};
use histomap::model::Architecture;

fn heatmap_cmd(model: &Path, out: &Path, input: &Path) -> Command {
    heatmap_command("kather8", model, out, input)
}

/// Runs `heatmap` to the end with extra flags, its report lines discarded.
fn heatmap_quiet(model: &Path, out: &Path, input: &Path, flags: &[&str]) -> ExitStatus {
    heatmap_cmd(model, out, input)
        .args(flags)
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

/// DIR/slides holding copies of `files` under new names.
fn slide_folder(dir: &Path, files: &[(&str, PathBuf)]) -> PathBuf {
    let slides = dir.join("slides");
    fs::create_dir(&slides).unwrap();
    for (name, source) in files {
        fs::copy(source, slides.join(name)).unwrap();
    }
    slides
}

/// Every file of a folder with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let m = fs::metadata(&p).unwrap().modified().unwrap();
            (p.clone(), (fs::read(&p).unwrap(), m))
        })
        .collect()
}

/// How many times each slide reached `kind` in the run's log.
fn count(ledger: &Ledger, kind: EventKind) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in ledger.events().into_iter().filter(|e| e.event == kind) {
        *n.entry(e.slide).or_default() += 1;
    }
    n
}

#[test]
fn kill_9_mid_slide_then_rerun_redoes_only_that_slide() {
    let dir = tempfile::tempdir().unwrap();
    // The 5000×5000 mosaic takes seconds on one thread: time to kill it mid-slide.
    let b = generated().join("kather5000.tif");
    let slides = slide_folder(
        dir.path(),
        &[("a.svs", svs()), ("b.tif", b), ("c.svs", svs())],
    );
    let out = dir.path().join("out");
    let model = model("kather8", Architecture::Smallcnn);
    let ledger = Ledger::at(&out);

    let mut child = heatmap_cmd(&model, &out, &slides)
        .args(["--threads", "1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut b_locked_at = None;
    loop {
        // No partial folder is ever visible under a final name.
        for name in ["a", "b", "c"] {
            let d = out.join(name);
            assert!(
                !d.exists() || d.join("summary.json").is_file(),
                "{name} partial"
            );
        }
        if b_locked_at.is_none() && ledger.is_locked("b") {
            b_locked_at = Some(Instant::now());
        }
        // Kill while b is being written if we see it, else well inside its stream.
        if let Some(t) = b_locked_at {
            let staged = out.join(".histomap/staging/b").exists();
            if staged || t.elapsed() > Duration::from_millis(1500) {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "b never started"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(out.join("a/summary.json").is_file(), "a finished before b");
    assert!(!out.join("b").exists(), "killed mid-slide: no b yet");
    assert!(!out.join("c").exists());
    assert!(
        !ledger.is_locked("b"),
        "the kernel dropped the dead worker's lock"
    );
    let a_before = snapshot(&out.join("a"));

    let status = heatmap_quiet(&model, &out, &slides, &[]);
    assert!(status.success());
    assert_eq!(
        snapshot(&out.join("a")),
        a_before,
        "a untouched: same bytes and mtimes"
    );
    for name in ["b", "c"] {
        assert!(out.join(name).join("summary.json").is_file(), "{name} done");
    }
    let starts = count(&ledger, EventKind::Start);
    assert_eq!(starts["a"], 1);
    assert_eq!(starts["b"], 2, "b redone");
    assert_eq!(starts["c"], 1);
    assert_eq!(
        fs::read_dir(ledger.staging())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != ".replaced")
            .count(),
        0
    );
}

/// Two workers given the same folder at once, with no shard: the locks keep them off
/// each other's slides, so each slide is done exactly once.
#[test]
fn concurrent_workers_on_one_list_do_each_slide_once() {
    let dir = tempfile::tempdir().unwrap();
    let copies = ["a.svs", "b.svs", "c.svs", "d.svs"].map(|n| (n, svs()));
    let slides = slide_folder(dir.path(), &copies);
    let out = dir.path().join("out");
    let model = model("kather8", Architecture::Smallcnn);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            heatmap_cmd(&model, &out, &slides)
                .args(["--threads", "1"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    let ledger = Ledger::at(&out);
    let done = count(&ledger, EventKind::Done);
    assert_eq!(done.len(), 4);
    assert!(done.values().all(|&n| n == 1), "{done:?}");
    let pids: std::collections::BTreeSet<u32> =
        ledger.events().iter().map(|e| e.worker.pid).collect();
    assert_eq!(pids.len(), 2, "both workers ran");
}

#[test]
fn a_rerun_skips_only_what_the_same_job_made() {
    let dir = tempfile::tempdir().unwrap();
    // Two patients' folders, each with a slide of the same file name.
    for patient in ["p1", "p2"] {
        fs::create_dir(dir.path().join(patient)).unwrap();
        fs::copy(svs(), dir.path().join(patient).join("slide.svs")).unwrap();
    }
    let (p1, p2) = (dir.path().join("p1"), dir.path().join("p2"));
    let out = dir.path().join("out");
    let model = model("kather8", Architecture::Smallcnn);
    let both = heatmap_cmd(&model, &out, &p1)
        .arg(&p2)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(both.success());
    for name in ["p1_slide_svs", "p2_slide_svs"] {
        assert!(out.join(name).join("summary.json").is_file(), "{name}");
    }

    // The same job again: skipped (--slide-mpp changes nothing for slides that record
    // their MPP). Another setting: refused, and the results stay.
    let before = snapshot(&out.join("p1_slide_svs"));
    let again = heatmap_cmd(&model, &out, &p1)
        .arg(&p2)
        .args(["--slide-mpp", "0.25"])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stderr)
            .matches("skipped")
            .count(),
        2
    );
    let tta = heatmap_cmd(&model, &out, &p1)
        .arg(&p2)
        .args(["--tta", "d4"])
        .output()
        .unwrap();
    assert!(!tta.status.success());
    let err = String::from_utf8_lossy(&tta.stderr);
    assert!(
        err.contains("another job (tta_d4 was false, now true)"),
        "{err}"
    );
    assert_eq!(snapshot(&out.join("p1_slide_svs")), before);
    // --force redoes it with the new setting.
    let forced = heatmap_cmd(&model, &out, &p1)
        .arg(&p2)
        .args(["--tta", "d4", "--force"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(forced.success());
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("p1_slide_svs/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["job"]["tta_d4"], true);

    // A file replaced under the same name (here: grown by 16 bytes) is another slide.
    let file = p1.join("slide.svs");
    let bytes = fs::metadata(&file).unwrap().len();
    let mut grown = fs::read(&file).unwrap();
    grown.extend([0u8; 16]);
    fs::write(&file, grown).unwrap();
    let replaced = heatmap_cmd(&model, &out, &p1)
        .arg(&p2)
        .args(["--tta", "d4"])
        .output()
        .unwrap();
    assert!(!replaced.status.success());
    let err = String::from_utf8_lossy(&replaced.stderr);
    let want = format!("another job (slide_bytes was {bytes}, now {})", bytes + 16);
    assert!(err.contains(&want) && err.contains("skipped"), "{err}");
}

#[test]
fn status_names_done_failed_and_missing_slides() {
    let dir = tempfile::tempdir().unwrap();
    let slides = slide_folder(dir.path(), &[("good.svs", svs()), ("other.svs", svs())]);
    fs::write(slides.join("notes.svs"), "not a slide\n").unwrap();
    let out = dir.path().join("out");
    let model = model("kather8", Architecture::Smallcnn);
    // Both small slides weigh the same, so shard 0 of 2 leaves one of them missing.
    let shard = heatmap_quiet(&model, &out, &slides, &["--shard", "0/2"]);
    let ran_notes = out.join(".histomap/failed/notes.json").is_file();
    assert_eq!(
        shard.success(),
        !ran_notes,
        "exit code says whether a slide failed"
    );

    let status = histomap().arg("status").arg(&out).assert().success();
    let text = String::from_utf8_lossy(&status.get_output().stdout).into_owned();
    let state = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"))
    };
    let states: Vec<String> = ["good", "other", "notes"].map(state).to_vec();
    assert_eq!(states.iter().filter(|s| *s == "done").count(), 1, "{text}");
    assert_eq!(state("notes"), if ran_notes { "failed" } else { "missing" });
    assert!(text.contains("of 3)"), "{text}");

    // The rest of the run: only the missing and the failed slides run.
    heatmap_quiet(&model, &out, &slides, &["--shard", "1/2"]);
    let done_before = count(&Ledger::at(&out), EventKind::Done);
    heatmap_quiet(&model, &out, &slides, &[]);
    let ledger = Ledger::at(&out);
    assert_eq!(
        count(&ledger, EventKind::Done),
        done_before,
        "nothing redone"
    );
    assert_eq!(
        count(&ledger, EventKind::Failed)["notes"],
        2,
        "the failed one retried"
    );
}

#[test]
fn slurm_writes_a_script_that_shards_the_same_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("my out");
    let model = model("kather8", Architecture::Smallcnn);
    // No Slurm here (scripts/slurm-test.sh checks against a cluster): said in one line,
    // and the script is written all the same.
    histomap()
        .env("PATH", dir.path())
        .args([
            "slurm", "--array", "3", "--cpus", "2", "--mem", "4G", "--time", "10:00",
        ])
        .args(["--stride", "100", "-p"])
        .arg(pipeline("kather8"))
        .arg("--model")
        .arg(&model)
        .arg("-o")
        .arg(&out)
        .arg(svs())
        .assert()
        .success()
        .stderr(predicates::str::contains(
            "histomap: Slurm not reachable: sinfo not on PATH; the job is not checked \
             against the cluster\n",
        ));
    let script = fs::read_to_string(out.join("histomap.sbatch")).unwrap();
    for needle in [
        "#SBATCH --array=0-2",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=4G",
        "#SBATCH --time=10:00",
        "--stride \\",
        "--shard slurm --threads \"${SLURM_CPUS_PER_TASK:-2}\"",
    ] {
        assert!(script.contains(needle), "{needle:?} not in\n{script}");
    }
    assert!(
        script.contains(&format!("'{}'", out.display())),
        "quoted OUT"
    );
    assert!(
        !script.contains("the default"),
        "--cpus was given:\n{script}"
    );
    let listed = Ledger::at(&out).read_slides().unwrap().unwrap();
    assert_eq!(listed.len(), 1);

    // The script runs as written when the environment looks like array task 1 of 3.
    let run = Command::new("bash")
        .arg(out.join("histomap.sbatch"))
        .envs([
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_CPUS_PER_TASK", "1"),
        ])
        .status()
        .unwrap();
    assert!(run.success());
    assert!(out.join("cmu_small_region/summary.json").is_file());

    // Unasked, Slurm's silence leaves the default at 4, and the script says so.
    let other = dir.path().join("default");
    histomap()
        .env("PATH", dir.path())
        .args(["slurm", "--array", "1", "-p"])
        .arg(pipeline("kather8"))
        .arg("--model")
        .arg(&model)
        .arg("-o")
        .arg(&other)
        .arg(svs())
        .assert()
        .success();
    let script = fs::read_to_string(other.join("histomap.sbatch")).unwrap();
    for line in [
        "# --cpus-per-task=4: the default (Slurm could not say what the partition offers); \
         pass --cpus to choose.",
        "#SBATCH --cpus-per-task=4",
    ] {
        assert!(
            script.lines().any(|l| l == line),
            "{line:?} not in\n{script}"
        );
    }

    for (flag, value) in [("--shard", "0/2"), ("--threads", "1")] {
        histomap()
            .args(["slurm", "--array", "2", flag, value, "-p"])
            .arg(pipeline("kather8"))
            .arg("-o")
            .arg(&out)
            .arg(svs())
            .assert()
            .failure()
            .stderr(predicates::str::contains(format!(
                "histomap: {flag} is set per task"
            )));
    }
}

/// Opens OUT/index.html in headless Chromium, keeps the screenshot under
/// target/test-artifacts/, and checks that every image loads with no console error.
fn render(out: &Path, screenshot: &str, script: Option<&str>) -> browser::PageCheck {
    let url = format!("file://{}", out.join("index.html").display());
    let page = browser::check_page(&url, script);
    let artefacts = root().join("target/test-artifacts");
    fs::create_dir_all(&artefacts).unwrap();
    fs::write(artefacts.join(screenshot), &page.screenshot).unwrap();
    assert!(page.broken.is_empty(), "broken images: {:?}", page.broken);
    assert!(page.errors.is_empty(), "console errors: {:?}", page.errors);
    let shot = image::load_from_memory(&page.screenshot).unwrap();
    assert!(shot.width() >= 1000 && shot.height() >= 600);
    page
}

/// The report of scripts/slurm-test.sh's cluster run, in headless Chromium. That
/// script runs first in scripts/test.sh and names its output in HISTOMAP_SLURM_OUT;
/// without it this test has nothing to look at and says so.
#[test]
fn slurm_run_report_renders_in_headless_chromium() {
    let Some(out) = std::env::var_os("HISTOMAP_SLURM_OUT").map(PathBuf::from) else {
        eprintln!(
            "HISTOMAP_SLURM_OUT unset: run scripts/slurm-test.sh first (scripts/test.sh does)"
        );
        return;
    };
    let page = render(&out, "slurm-report.png", None);
    assert_eq!(page.images, 6, "a thumbnail per good slide");
    let csv = fs::read_to_string(out.join("cohort.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 7);
    assert_eq!(csv.lines().filter(|l| l.contains(",failed,")).count(), 1);
}

/// `report` on a run with a good SVS, the fluorescence NDPI and a bad file, opened from
/// disk in headless Chromium: every image loads, no console errors, sorting works.
#[test]
fn report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let slides = slide_folder(
        dir.path(),
        &[("cmu small #1.svs", svs()), ("dapi.ndpi", ndpi())],
    );
    fs::write(slides.join("broken.svs"), "<b>not a slide</b>\n").unwrap();
    let out = dir.path().join("out");
    let model = model("kather8", Architecture::Smallcnn);
    heatmap_quiet(&model, &out, &slides, &[]);
    histomap()
        .arg("report")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "2 done, 1 failed, 0 running, 0 missing",
        ));

    let mut csv = csv::Reader::from_path(out.join("cohort.csv")).unwrap();
    let header = csv.headers().unwrap().clone();
    assert!(header.iter().any(|h| h == "area_mm2_TUMOR"));
    assert!(header.iter().any(|h| h == "mean_prob_EMPTY"));
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let by_name = |n: &str| rows.iter().find(|r| &r[0] == n).unwrap().clone();
    assert_eq!(rows.len(), 3);
    assert_eq!(&by_name("broken")[col("status")], "failed");
    assert!(by_name("broken")[col("error")].contains("broken.svs"));
    let cmu = by_name("cmu small #1");
    assert_eq!(&cmu[col("status")], "done");
    assert_eq!(&cmu[col("width_px")], "2220");
    let areas: f64 = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.starts_with("area_mm2_"))
        .map(|(i, _)| cmu[i].parse::<f64>().unwrap())
        .sum();
    assert!(areas > 0.0);

    let html = fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        html.contains("&lt;b&gt;") || !html.contains("<b>not"),
        "errors are escaped"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no network"
    );

    // Sort by tissue area, descending on the second click.
    let sort = "(() => { const th = [...document.querySelectorAll('th')]\
        .find(t => t.textContent.startsWith('tissue')); th.click(); th.click(); \
        return [...document.querySelector('table tbody').rows].map(r => r.cells[0].textContent); })()";
    let page = render(&out, "report.png", Some(sort));
    assert_eq!(page.images, 2, "a thumbnail per finished slide");
    let order: Vec<String> = serde_json::from_value(page.script_value).unwrap();
    let tissue = |n: &str| {
        let r = rows.iter().find(|r| &r[0] == n).unwrap();
        r[col("tissue_mm2")]
            .parse::<f64>()
            .unwrap_or(f64::NEG_INFINITY)
    };
    let mut expected = order.clone();
    expected.sort_by(|a, b| tissue(b).total_cmp(&tissue(a)));
    assert_eq!(order, expected, "sorted by tissue, descending");
}
