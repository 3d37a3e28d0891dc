//! What a batch run keeps beside its outputs so that many workers, on one machine or
//! on a cluster's shared filesystem, can share one OUT folder with no service of their
//! own. In: an OUT folder. Out: per-slide locks, failure records, the slide list, an
//! event log, and each slide's state read back from them.
//!
//! ```text
//! OUT/<name>/                  a finished slide (summary.json inside marks it done)
//! OUT/.histomap/slides.json    the run's slide list, so `status` can name missing slides
//! OUT/.histomap/locks/<name>   locked (flock) by the worker processing that slide
//! OUT/.histomap/failed/<name>.json   the last error of a slide; removed on success
//! OUT/.histomap/log.jsonl      one line per event: start, done, failed, skipped, busy
//! OUT/.histomap/jobs.jsonl     one line per Slurm array `histomap slurm --submit` sent
//! OUT/.histomap/staging/       slide folders under construction
//! ```
//!
//! Locks are `flock`s, not files whose existence means "taken": the kernel releases
//! one when its process dies, by `kill -9` or a node's crash too, so a killed job never
//! leaves a slide stuck, and no clock or PID has to be trusted. On NFSv4 the lock is a
//! server-side lock held under the client's lease: a vanished node's locks expire with
//! that lease. Lock files are never deleted, since deleting one while another worker
//! has it open would let two workers lock two different files of the same name.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::write_atomic;

/// The folder under OUT that holds the ledger.
pub const DIR: &str = ".histomap";
/// A slide's folder holds this file once it is complete.
pub const SUMMARY: &str = "summary.json";

/// One slide of a run's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideEntry {
    pub path: PathBuf,
    /// Its output folder under OUT.
    pub name: String,
}

/// Where a slide stands.
#[derive(Debug, Clone, PartialEq)]
pub enum SlideState {
    Done,
    /// A worker holds its lock: the one it names, when it has written its name yet.
    Running {
        worker: Option<Worker>,
    },
    Failed(Failure),
    /// Its folder is in place but its summary cannot be read: finished, then damaged.
    Unreadable {
        error: String,
    },
    Missing,
}

impl SlideState {
    pub fn word(&self) -> &'static str {
        match self {
            SlideState::Done => "done",
            SlideState::Failed(_) | SlideState::Unreadable { .. } => "failed",
            SlideState::Running { .. } => "running",
            SlideState::Missing => "missing",
        }
    }
}

/// The record of a slide's last failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub slide: PathBuf,
    pub error: String,
    pub worker: Worker,
}

/// Which process did something, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub host: String,
    pub pid: u32,
    /// `JOBID_TASK` of a Slurm array task, `JOBID` of another Slurm job.
    pub job: Option<String>,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

impl std::fmt::Display for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host {} pid {}", self.host, self.pid)?;
        if let Some(job) = &self.job {
            write!(f, " job {job}")?;
        }
        Ok(())
    }
}

impl Worker {
    pub fn now() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let job = match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
            (Some(j), Some(t)) => Some(format!("{j}_{t}")),
            _ => var("SLURM_JOB_ID"),
        };
        Self {
            host: hostname(),
            pid: std::process::id(),
            job,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// One line of `log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event: EventKind,
    pub slide: String,
    #[serde(flatten)]
    pub worker: Worker,
    /// Tissue patches that could not be read, on `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<usize>,
    /// The process that ran the slide, on `done` and `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessStats>,
}

/// What the child process that ran a slide took.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    pub seconds: f64,
    /// Peak resident memory.
    pub max_rss_mib: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Start,
    Done,
    Failed,
    /// Finished earlier.
    Skipped,
    /// Another worker held the slide's lock.
    Busy,
}

/// A Slurm array submitted for the run: `status` asks Slurm about its tasks, which
/// otherwise leave no trace in OUT until they start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmittedJob {
    pub id: String,
    /// Its array tasks; task K runs part K of the slide list.
    pub tasks: usize,
    pub script: PathBuf,
}

/// A slide's lock, held until dropped (or until the process ends, however it ends).
#[derive(Debug)]
pub struct SlideLock {
    _file: File,
}

/// The ledger of one OUT folder.
#[derive(Debug, Clone)]
pub struct Ledger {
    out: PathBuf,
    dir: PathBuf,
}

impl Ledger {
    /// The ledger of `out`, creating its folders. An output folder that cannot be
    /// written is one error here, before any slide runs.
    pub fn create(out: &Path) -> Result<Self> {
        let ledger = Self::at(out);
        let unwritable =
            |e: Error| Error::output(out, format!("the output folder cannot be written: {e}"));
        for d in ["locks", "failed", "staging"] {
            let d = ledger.dir.join(d);
            fs::create_dir_all(&d).map_err(|e| unwritable(Error::io(&d, e)))?;
        }
        // Folders made by an earlier run exist even on a file system remounted
        // read-only since: only a write tells.
        let probe = ledger
            .staging()
            .join(format!(".probe-{}", std::process::id()));
        write_atomic(&probe, b"").map_err(unwritable)?;
        fs::remove_file(&probe).map_err(|e| unwritable(Error::io(&probe, e)))?;
        Ok(ledger)
    }

    /// The ledger of `out` as it is, for reading.
    pub fn at(out: &Path) -> Self {
        Self {
            out: out.to_path_buf(),
            dir: out.join(DIR),
        }
    }

    /// The ledger of an earlier run's folder, for reading; an error when `out` is not one.
    pub fn of_run(out: &Path) -> Result<Self> {
        if !out.exists() {
            return Err(Error::not_found(out));
        }
        if !out.join(DIR).is_dir() {
            return Err(Error::output(
                out,
                format!("not a histomap output folder (no {DIR} inside)"),
            ));
        }
        Ok(Self::at(out))
    }

    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Where slide folders are built before they are renamed into OUT.
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }

    /// Removes what a child that crashed left of `name` in the staging folder.
    pub fn discard_staged(&self, name: &str) -> Result<()> {
        let staged = self.staging().join(name);
        if staged.exists() {
            fs::remove_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
        }
        Ok(())
    }

    fn slides_file(&self) -> PathBuf {
        self.dir.join("slides.json")
    }

    pub fn write_slides(&self, slides: &[SlideEntry]) -> Result<()> {
        let json = serde_json::to_vec_pretty(slides).expect("slide list serialises");
        write_atomic(&self.slides_file(), &json)
    }

    /// The run's slide list, if a run has written one.
    pub fn read_slides(&self) -> Result<Option<Vec<SlideEntry>>> {
        let path = self.slides_file();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::output(&path, format!("not a slide list: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.dir.join("locks").join(name)
    }

    /// Takes the slide's lock, or `None` when another worker holds it.
    pub fn try_lock(&self, name: &str) -> Result<Option<SlideLock>> {
        let path = self.lock_path(name);
        let Some(mut file) = crate::output::try_flock(&path)? else {
            return Ok(None);
        };
        // Who holds it, for `status`; the lock, not this text, is what counts.
        let holder = serde_json::to_vec(&Worker::now()).expect("worker serialises");
        file.set_len(0)
            .and_then(|()| file.write_all(&holder))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Some(SlideLock { _file: file }))
    }

    /// Whether a worker holds the slide's lock now.
    pub fn is_locked(&self, name: &str) -> bool {
        File::open(self.lock_path(name)).is_ok_and(|f| f.try_lock_shared().is_err())
    }

    /// The worker that last took the slide's lock (it may have let go since).
    pub fn holder(&self, name: &str) -> Option<Worker> {
        serde_json::from_slice(&fs::read(self.lock_path(name)).ok()?).ok()
    }

    fn failure_path(&self, name: &str) -> PathBuf {
        self.dir.join("failed").join(format!("{name}.json"))
    }

    pub fn record_failure(&self, name: &str, failure: &Failure) -> Result<()> {
        let json = serde_json::to_vec_pretty(failure).expect("failure serialises");
        write_atomic(&self.failure_path(name), &json)
    }

    pub fn clear_failure(&self, name: &str) -> Result<()> {
        let path = self.failure_path(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    pub fn failure(&self, name: &str) -> Option<Failure> {
        let bytes = fs::read(self.failure_path(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every failure record, by slide name.
    pub fn failures(&self) -> Vec<(String, Failure)> {
        let Ok(entries) = fs::read_dir(self.dir.join("failed")) else {
            return Vec::new();
        };
        let mut found: Vec<(String, Failure)> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                let name = name.strip_suffix(".json")?.to_string();
                let f = self.failure(&name)?;
                Some((name, f))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Appends one line to `log.jsonl`.
    pub fn log(&self, kind: EventKind, slide: &str) -> Result<()> {
        self.log_run(kind, slide, None, None)
    }

    /// Appends one line to `log.jsonl` for a slide that was run, with what it took.
    pub fn log_run(
        &self,
        kind: EventKind,
        slide: &str,
        unreadable: Option<usize>,
        process: Option<ProcessStats>,
    ) -> Result<()> {
        let event = Event {
            event: kind,
            slide: slide.to_string(),
            worker: Worker::now(),
            unreadable,
            process,
        };
        self.append("log.jsonl", &event)
    }

    /// Every event logged so far (lines that do not parse are left out).
    pub fn events(&self) -> Vec<Event> {
        self.read_lines("log.jsonl")
    }

    pub fn record_job(&self, job: &SubmittedJob) -> Result<()> {
        self.append("jobs.jsonl", job)
    }

    /// The Slurm arrays submitted for the run, oldest first.
    pub fn jobs(&self) -> Vec<SubmittedJob> {
        self.read_lines("jobs.jsonl")
    }

    /// Appends `value` as one JSON line to a file of the ledger. One `write` of a short
    /// line in append mode lands whole even with other workers appending.
    fn append(&self, file: &str, value: &impl Serialize) -> Result<()> {
        let path = self.dir.join(file);
        let mut line = serde_json::to_vec(value).expect("ledger lines serialise");
        line.push(b'\n');
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line))
            .map_err(|e| Error::io(&path, e))
    }

    fn read_lines<T: serde::de::DeserializeOwned>(&self, file: &str) -> Vec<T> {
        fs::read_to_string(self.dir.join(file))
            .map(|s| {
                s.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_done(&self, name: &str) -> bool {
        self.out.join(name).join(SUMMARY).is_file()
    }

    /// Every slide the run listed or finished, by name, with its file (when known) and
    /// state. A failure record counts only for a listed slide, or when no list exists:
    /// a slide dropped from the latest list is no longer the run's failure.
    pub fn survey(&self) -> Result<Vec<(String, Option<PathBuf>, SlideState)>> {
        let mut names: std::collections::BTreeMap<String, Option<PathBuf>> = Default::default();
        let listed = self.read_slides()?;
        for e in listed.iter().flatten() {
            names.insert(e.name.clone(), Some(e.path.clone()));
        }
        let entries = fs::read_dir(&self.out).map_err(|e| Error::io(&self.out, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && e.path().join(SUMMARY).is_file() {
                names.entry(name).or_default();
            }
        }
        if listed.is_none() {
            for (name, f) in self.failures() {
                names.entry(name).or_insert(Some(f.slide));
            }
        }
        Ok(names
            .into_iter()
            .map(|(name, path)| {
                let state = self.state(&name);
                (name, path, state)
            })
            .collect())
    }

    pub fn state(&self, name: &str) -> SlideState {
        if self.is_done(name) {
            match read_summary::<serde::de::IgnoredAny>(&self.out.join(name)) {
                Ok(_) => SlideState::Done,
                Err(error) => SlideState::Unreadable { error },
            }
        } else if self.is_locked(name) {
            SlideState::Running {
                worker: self.holder(name),
            }
        } else if let Some(f) = self.failure(name) {
            SlideState::Failed(f)
        } else {
            SlideState::Missing
        }
    }
}

/// A slide folder's `summary.json` read as `T`; unreadable, it is a message for that
/// slide alone.
pub fn read_summary<T: serde::de::DeserializeOwned>(dir: &Path) -> std::result::Result<T, String> {
    let path = dir.join(SUMMARY);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e).to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{}: unreadable ({e}); pass --force to redo it",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_excludes_others_until_dropped() {
        let out = tempfile::tempdir().unwrap();
        let ledger = Ledger::create(out.path()).unwrap();
        let lock = ledger.try_lock("s").unwrap().expect("free");
        assert!(ledger.try_lock("s").unwrap().is_none(), "held");
        assert!(ledger.is_locked("s"));
        let SlideState::Running { worker: Some(w) } = ledger.state("s") else {
            panic!("running, with its worker named");
        };
        assert_eq!(w.pid, std::process::id());
        drop(lock);
        assert!(!ledger.is_locked("s"));
        assert_eq!(ledger.state("s"), SlideState::Missing);
        assert!(ledger.try_lock("s").unwrap().is_some(), "free again");
    }

    #[test]
    fn failures_are_recorded_and_cleared() {
        let out = tempfile::tempdir().unwrap();
        let ledger = Ledger::create(out.path()).unwrap();
        let f = Failure {
            slide: "a/b.svs".into(),
            error: "b.svs: not a slide".into(),
            // A time serde_json's default float parser read back one ulp off (CI, stop 8).
            worker: Worker {
                time: 1796093674.0092595,
                ..Worker::now()
            },
        };
        ledger.record_failure("b", &f).unwrap();
        assert_eq!(ledger.state("b"), SlideState::Failed(f.clone()));
        assert_eq!(ledger.failures(), vec![("b".to_string(), f)]);
        let names = |l: &Ledger| -> Vec<String> {
            l.survey().unwrap().into_iter().map(|(n, _, _)| n).collect()
        };
        assert_eq!(names(&ledger), ["b"], "no list: the failure is the run's");
        let listed = SlideEntry {
            path: "a/c.svs".into(),
            name: "c".into(),
        };
        ledger.write_slides(&[listed]).unwrap();
        assert_eq!(
            names(&ledger),
            ["c"],
            "b left the list, its failure with it"
        );
        ledger.clear_failure("b").unwrap();
        ledger.clear_failure("b").unwrap();
        assert_eq!(ledger.state("b"), SlideState::Missing);
    }

    #[test]
    fn events_and_slide_list_round_trip() {
        let out = tempfile::tempdir().unwrap();
        let ledger = Ledger::create(out.path()).unwrap();
        assert_eq!(ledger.read_slides().unwrap(), None);
        let slides = vec![SlideEntry {
            path: "x/a.svs".into(),
            name: "a".into(),
        }];
        ledger.write_slides(&slides).unwrap();
        assert_eq!(ledger.read_slides().unwrap(), Some(slides));
        ledger.log(EventKind::Start, "a").unwrap();
        ledger.log(EventKind::Done, "a").unwrap();
        let kinds: Vec<_> = ledger.events().iter().map(|e| e.event).collect();
        assert_eq!(kinds, [EventKind::Start, EventKind::Done]);
        assert!(ledger.jobs().is_empty());
        let job = SubmittedJob {
            id: "12".into(),
            tasks: 3,
            script: "/o/histomap.sbatch".into(),
        };
        ledger.record_job(&job).unwrap();
        assert_eq!(ledger.jobs(), [job]);
    }
}
