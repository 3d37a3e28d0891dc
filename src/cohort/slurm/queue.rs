//! Where a run's submitted array tasks stand, asked of `squeue` for `status`. In: the
//! jobs the ledger recorded at submission. Out: each task still in Slurm's queue, with
//! its state and Slurm's reason, and the slides that wait for it.
//!
//! A task that never starts writes nothing into OUT, so without this its slides read
//! "missing" with no hint that they wait, nor why.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cohort::ledger::{Ledger, SubmittedJob};
use crate::cohort::shard::{self, Shard};
use crate::error::{Error, Result};

/// One array task in Slurm's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTask {
    pub job: String,
    /// Its array index; `None` for a job that is no array.
    pub index: Option<usize>,
    /// Slurm's word: `PENDING`, `RUNNING`, ...
    pub state: String,
    /// Slurm's reason; `None` is Slurm's word for none.
    pub reason: String,
    /// The batch script, as an absolute path.
    pub command: String,
}

impl QueuedTask {
    /// `JOB_INDEX`, as squeue and scancel write it.
    pub fn id(&self) -> String {
        match self.index {
            Some(i) => format!("{}_{i}", self.job),
            None => self.job.clone(),
        }
    }

    /// For a slide that waits for this task.
    pub fn describe(&self) -> String {
        let id = self.id();
        match self.state.as_str() {
            "PENDING" => match gloss(&self.reason) {
                Some(g) => format!("job {id} pending: {} ({g})", self.reason),
                None => format!("job {id} pending: {}", self.reason),
            },
            "RUNNING" => format!("job {id} running, not at this slide yet"),
            other if self.reason == "None" => format!("job {id} {}", other.to_lowercase()),
            other => format!("job {id} {}: {}", other.to_lowercase(), self.reason),
        }
    }
}

/// Slurm's common pending reasons, in words a new user can act on.
fn gloss(reason: &str) -> Option<&'static str> {
    const GLOSSES: [(&str, &str); 10] = [
        (
            "PartitionConfig",
            "asks for more than any node of the partition has",
        ),
        (
            "PartitionTimeLimit",
            "--time is above the partition's limit",
        ),
        ("Resources", "waits for CPUs, memory or GPUs to free up"),
        ("Priority", "other jobs go first"),
        (
            "ReqNodeNotAvail",
            "a node it needs is down, drained or reserved",
        ),
        ("Dependency", "waits for another job"),
        ("JobHeldUser", "held; `scontrol release JOBID` lets it go"),
        ("JobHeldAdmin", "held by an administrator"),
        ("QOS", "a limit of the job's QOS"),
        ("Assoc", "a limit of your account"),
    ];
    GLOSSES
        .iter()
        .find(|(k, _)| reason.starts_with(k))
        .map(|(_, g)| *g)
}

/// The recorded jobs' tasks still in the queue, and the slides each holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Queue {
    pub tasks: Vec<QueuedTask>,
    /// Slide name → the queued task whose part of the slide list holds it (the latest
    /// job's, when resubmissions overlap).
    pub slides: BTreeMap<String, QueuedTask>,
}

impl Queue {
    /// One line per job with tasks in the queue: `Slurm job 12: 3 pending (Resources)`.
    pub fn summary(&self) -> Vec<String> {
        let mut jobs: Vec<(&str, Vec<(String, usize)>)> = Vec::new();
        for t in &self.tasks {
            let what = match t.state.as_str() {
                "PENDING" => format!("pending ({})", t.reason),
                other => other.to_lowercase(),
            };
            let i = match jobs.iter().position(|(j, _)| *j == t.job) {
                Some(i) => i,
                None => {
                    jobs.push((&t.job, Vec::new()));
                    jobs.len() - 1
                }
            };
            match jobs[i].1.iter_mut().find(|(w, _)| *w == what) {
                Some((_, n)) => *n += 1,
                None => jobs[i].1.push((what, 1)),
            }
        }
        jobs.into_iter()
            .map(|(job, counts)| {
                let counts: Vec<String> = counts.iter().map(|(w, n)| format!("{n} {w}")).collect();
                format!("Slurm job {job}: {}", counts.join(", "))
            })
            .collect()
    }
}

/// The queue of the run's recorded jobs: `None` when none was submitted with
/// `histomap slurm --submit`; an [`Error::Slurm`] when Slurm cannot be asked.
pub fn queue(ledger: &Ledger) -> Result<Option<Queue>> {
    let jobs = ledger.jobs();
    if jobs.is_empty() {
        return Ok(None);
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let ids = ids.join(",");
    // `-r`: one line per array task; `-a`: hidden partitions too.
    let args = ["-h", "-a", "-r", "-j", &ids, "-o", "%i|%T|%r|%o"];
    let mut tasks = match super::run_slurm("squeue", &args)? {
        Ok(text) => parse_squeue(&text)?,
        // Jobs that left the queue long ago are no longer known: none is queued.
        Err(e) if e.contains("Invalid job id") => Vec::new(),
        Err(e) => return Err(Error::Slurm(format!("Slurm not reachable: {e}"))),
    };
    tasks.retain(|t| submitted(t, &jobs));
    let slides = waiting_slides(ledger, &jobs, &tasks)?;
    Ok(Some(Queue { tasks, slides }))
}

/// Whether the task belongs to one of the jobs. A cluster whose state was reset
/// numbers jobs from 1 again, so a recorded id may now be another job, with another
/// script.
fn submitted(task: &QueuedTask, jobs: &[SubmittedJob]) -> bool {
    let command = Path::new(&task.command);
    jobs.iter()
        .any(|j| j.id == task.job && crate::canonical(&j.script) == crate::canonical(command))
}

/// Which listed slides each queued task would map: the shards the workers compute.
fn waiting_slides(
    ledger: &Ledger,
    jobs: &[SubmittedJob],
    tasks: &[QueuedTask],
) -> Result<BTreeMap<String, QueuedTask>> {
    let mut slides = BTreeMap::new();
    let Some(list) = ledger.read_slides()?.filter(|_| !tasks.is_empty()) else {
        return Ok(slides);
    };
    let paths: Vec<_> = list.iter().map(|e| e.path.clone()).collect();
    let sizes = shard::sizes(&paths);
    for job in jobs {
        for task in tasks.iter().filter(|t| t.job == job.id) {
            let Some(part) = task.index.and_then(|i| Shard::new(i, job.tasks).ok()) else {
                continue;
            };
            for i in part.select(&sizes) {
                slides.insert(list[i].name.clone(), task.clone());
            }
        }
    }
    Ok(slides)
}

/// squeue's `%i|%T|%r|%o` lines. Array ids read `12_3`, or `12_[0-5,7%2]` for tasks
/// not yet split off; a reason may hold spaces and commas, and the command (last, so
/// whole) any character.
pub fn parse_squeue(text: &str) -> Result<Vec<QueuedTask>> {
    let unreadable = |line: &str| {
        Error::Slurm(format!(
            "squeue printed {line:?}, which histomap cannot read"
        ))
    };
    let mut tasks = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.trim().splitn(4, '|');
        let (Some(id), Some(state), Some(reason), Some(command)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            return Err(unreadable(line));
        };
        let task = |index| QueuedTask {
            job: id.split('_').next().unwrap_or(id).to_string(),
            index,
            state: state.to_string(),
            reason: reason.trim().to_string(),
            command: command.to_string(),
        };
        match id.split_once('_') {
            None => tasks.push(task(None)),
            Some((_, index)) => {
                let indices = match index.parse::<usize>() {
                    Ok(i) => vec![i],
                    Err(_) => array_range(index).ok_or_else(|| unreadable(line))?,
                };
                tasks.extend(indices.into_iter().map(|i| task(Some(i))));
            }
        }
    }
    Ok(tasks)
}

/// An array's index set as Slurm writes it: `[0-5,7,9-11%2]` (`%` limits how many
/// run at once).
fn array_range(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner.split('%').next()?;
    let mut out = Vec::new();
    for part in inner.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().ok()?..=b.parse().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cohort::ledger::SlideEntry;

    #[test]
    fn squeue_lines_become_tasks() {
        let text = "\
12_0|RUNNING|None|/o/histomap.sbatch
12_[1-2,5%2]|PENDING|Resources|/o/histomap.sbatch
13|PENDING|ReqNodeNotAvail, UnavailableNodes:n[1-3]|/a|b/run.sh
14_4|PENDING|PartitionConfig|/o/histomap.sbatch
";
        let tasks = parse_squeue(text).unwrap();
        let ids: Vec<String> = tasks.iter().map(QueuedTask::id).collect();
        assert_eq!(ids, ["12_0", "12_1", "12_2", "12_5", "13", "14_4"]);
        assert_eq!(tasks[4].reason, "ReqNodeNotAvail, UnavailableNodes:n[1-3]");
        assert_eq!(tasks[4].command, "/a|b/run.sh");
        assert_eq!(
            tasks[5].describe(),
            "job 14_4 pending: PartitionConfig (asks for more than any node of the partition has)"
        );
        assert_eq!(
            tasks[0].describe(),
            "job 12_0 running, not at this slide yet"
        );
        let odd = QueuedTask {
            state: "SUSPENDED".into(),
            ..tasks[0].clone()
        };
        assert_eq!(odd.describe(), "job 12_0 suspended");
        assert!(parse_squeue("").unwrap().is_empty());
        for bad in ["12_0|RUNNING|None", "12_[1-x]|PENDING|Resources|/s"] {
            assert!(parse_squeue(bad).is_err(), "{bad}");
        }
        let queue = Queue {
            tasks,
            slides: BTreeMap::new(),
        };
        assert_eq!(
            queue.summary(),
            [
                "Slurm job 12: 1 running, 3 pending (Resources)",
                "Slurm job 13: 1 pending (ReqNodeNotAvail, UnavailableNodes:n[1-3])",
                "Slurm job 14: 1 pending (PartitionConfig)",
            ]
        );
    }

    #[test]
    fn slides_wait_for_the_task_whose_shard_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::create(dir.path()).unwrap();
        let entries: Vec<SlideEntry> = ["a", "b", "c"]
            .iter()
            .zip([300usize, 200, 100])
            .map(|(name, size)| {
                let path = dir.path().join(format!("{name}.svs"));
                std::fs::write(&path, vec![0u8; size]).unwrap();
                SlideEntry {
                    path,
                    name: name.to_string(),
                }
            })
            .collect();
        ledger.write_slides(&entries).unwrap();
        let job = |id: &str| SubmittedJob {
            id: id.into(),
            tasks: 2,
            script: "s".into(),
        };
        let pending = |job: &str, index| QueuedTask {
            job: job.into(),
            index: Some(index),
            state: "PENDING".into(),
            reason: "Priority".into(),
            command: "s".into(),
        };
        // Largest first to the lightest shard: a to 0, b to 1, c to 1.
        let tasks = [pending("7", 1)];
        let slides = waiting_slides(&ledger, &[job("7")], &tasks).unwrap();
        let waiting: Vec<(&str, String)> =
            slides.iter().map(|(s, t)| (s.as_str(), t.id())).collect();
        assert_eq!(waiting, [("b", "7_1".into()), ("c", "7_1".into())]);
        assert!(submitted(&tasks[0], &[job("7")]));
        let reused = QueuedTask {
            command: "other.sh".into(),
            ..tasks[0].clone()
        };
        assert!(!submitted(&reused, &[job("7")]), "same id, another script");
        // A resubmission's task takes over; an index past the array is ignored.
        let tasks = [pending("7", 1), pending("8", 1), pending("8", 9)];
        let slides = waiting_slides(&ledger, &[job("7"), job("8")], &tasks).unwrap();
        assert_eq!(slides["b"].id(), "8_1");
        assert!(!slides.contains_key("a"));
    }
}
