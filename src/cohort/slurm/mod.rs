//! Running a batch as a Slurm job array, with no service of our own. In: the
//! `heatmap` command line one worker would run, and the job's resources. Out: a
//! readable sbatch script whose N array tasks each run `histomap heatmap … --shard
//! slurm`, and, on request, its submission through `sbatch`.
//!
//! The tasks need no coordination: each computes its own part of the slide list
//! ([`shard`](crate::cohort::shard)), and the [`ledger`](crate::cohort::ledger) keeps a resubmitted or
//! overlapping task off slides that are finished or taken. Before a job is written,
//! [`cluster`] asks what the partition offers, so a job no node can run is refused
//! rather than left pending; afterwards [`queue`] tells `status` which tasks wait, and why.

pub mod cluster;
pub mod queue;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use cluster::Partition;

/// The job's shape and resources, as sbatch options.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Array tasks, i.e. workers.
    pub array: usize,
    pub job_name: String,
    pub partition: Option<String>,
    /// CPUs per task; the worker uses them all.
    pub cpus: Cpus,
    /// Memory per task, in sbatch's syntax (`8G`).
    pub mem: Option<String>,
    /// GPUs per task.
    pub gpus: Option<u32>,
    /// Time limit per task, in sbatch's syntax (`2:00:00`).
    pub time: Option<String>,
}

/// CPUs per task, and where the number came from (the script says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cpus {
    /// `--cpus`.
    Given(usize),
    /// [`Cpus::DEFAULT`], or fewer on a partition whose largest node has fewer.
    Default {
        cpus: usize,
        /// The partition and its largest node's CPUs; `None` when Slurm could not say.
        largest: Option<(String, u64)>,
    },
}

impl Cpus {
    pub const DEFAULT: usize = 4;

    /// The default for the partition the job goes to, as far as Slurm told.
    pub fn default_for(p: Option<&Partition>) -> Self {
        let largest = p.map(|p| (p.name.clone(), p.max_cpus()));
        let cpus = match &largest {
            Some((_, n)) => Self::DEFAULT
                .min(usize::try_from(*n).unwrap_or(usize::MAX))
                .max(1),
            None => Self::DEFAULT,
        };
        Cpus::Default { cpus, largest }
    }

    pub fn get(&self) -> usize {
        match self {
            Cpus::Given(n) | Cpus::Default { cpus: n, .. } => *n,
        }
    }

    /// The script's note on a default, so a reader knows the number was not chosen.
    fn note(&self) -> Option<String> {
        let Cpus::Default { cpus, largest } = self else {
            return None;
        };
        let d = Self::DEFAULT;
        Some(match largest {
            Some((p, n)) if *cpus < d => format!(
                "--cpus-per-task={cpus}: the default, {d}, lowered to fit partition {p} \
                 (largest node: {n} CPUs)"
            ),
            Some((p, n)) => {
                format!("--cpus-per-task={cpus}: the default (partition {p}'s largest node: {n} CPUs)")
            }
            None => format!(
                "--cpus-per-task={cpus}: the default (Slurm could not say what the partition offers)"
            ),
        })
    }
}

/// Runs a Slurm client command: `Ok(Ok(stdout))`, `Ok(Err(its last error line))` when
/// it fails, and an [`Error::Slurm`] when it cannot be run at all.
fn run_slurm(program: &str, args: &[&str]) -> Result<std::result::Result<String, String>> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "not on PATH".to_string(),
            _ => e.to_string(),
        };
        Error::Slurm(format!("Slurm not reachable: {program} {why}"))
    })?;
    if !output.status.success() {
        // Slurm's clients print their chain of causes first and the conclusion last.
        let text = String::from_utf8_lossy(&output.stderr);
        let last = text.lines().rev().find(|l| !l.trim().is_empty());
        let last = last.map(str::trim).unwrap_or_default();
        return Ok(Err(if last.starts_with(program) {
            last.to_string()
        } else {
            format!("{program} failed ({}): {last}", output.status)
        }));
    }
    Ok(Ok(String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Quotes a word for the shell, unless it needs none.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+%@".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The sbatch script. `heatmap` is the worker's command line after the executable
/// (absolute paths; `--shard` and `--threads` are added here); task logs go to `logs`.
pub fn script(exe: &Path, heatmap: &[String], logs: &Path, o: &SlurmOptions) -> Result<String> {
    if o.array == 0 {
        return Err(Error::Usage("--array 0: need at least one task".into()));
    }
    let cpus = o.cpus.get();
    if cpus == 0 {
        return Err(Error::Usage(
            "--cpus 0: need at least one CPU per task".into(),
        ));
    }
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "# Written by histomap {} (`histomap slurm`). Submit with: sbatch THIS_FILE\n\
         # {} array tasks; each runs a deterministic, size-balanced part of the slides\n\
         # (--shard slurm), so together they cover every slide exactly once. Finished\n\
         # slides are skipped and a slide locked by another task is left to it, so\n\
         # resubmitting this script redoes only failed, cancelled and missing slides.\n\
         # `histomap status OUT` tells where the run stands, `histomap report OUT` merges it;\n\
         # status also shows the queued tasks of jobs that `histomap slurm --submit` sent,\n\
         # since it records their ids in OUT (a plain sbatch does not).\n",
        env!("CARGO_PKG_VERSION"),
        o.array
    ));
    if let Some(note) = o.cpus.note() {
        s.push_str(&format!("# {note}; pass --cpus to choose.\n"));
    }
    let mut opt = |k: &str, v: &str| s.push_str(&format!("#SBATCH --{k}={}\n", quote(v)));
    opt("job-name", &o.job_name);
    opt("array", &format!("0-{}", o.array - 1));
    opt("cpus-per-task", &cpus.to_string());
    opt("ntasks", "1");
    if let Some(p) = &o.partition {
        opt("partition", p);
    }
    if let Some(m) = &o.mem {
        opt("mem", m);
    }
    if let Some(g) = o.gpus {
        opt("gpus-per-task", &g.to_string());
    }
    if let Some(t) = &o.time {
        opt("time", t);
    }
    opt("output", &logs.join("%A_%a.log").display().to_string());
    s.push_str("\nset -euo pipefail\nexec");
    let mut words = vec![exe.display().to_string()];
    words.extend(heatmap.iter().cloned());
    for w in &words {
        s.push_str(" \\\n  ");
        s.push_str(&quote(w));
    }
    s.push_str(" \\\n  --shard slurm --threads \"${SLURM_CPUS_PER_TASK:-");
    s.push_str(&cpus.to_string());
    s.push_str("}\" --quiet\n");
    Ok(s)
}

/// Submits a script with `sbatch`; returns the job id.
pub fn submit(script: &Path) -> Result<String> {
    let output = Command::new("sbatch")
        .arg("--parsable")
        .arg(script)
        .output()
        .map_err(|e| Error::output(script, format!("cannot run sbatch: {e}")))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(Error::output(
            script,
            format!("sbatch failed ({}): {}", output.status, err.trim()),
        ));
    }
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    let out = String::from_utf8_lossy(&output.stdout);
    let id = out.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::output(
            script,
            format!("sbatch printed no job id: {:?}", out.trim()),
        ));
    }
    Ok(id)
}

/// Where `histomap slurm` puts the script and the task logs by default.
pub fn default_paths(out: &Path) -> (PathBuf, PathBuf) {
    (
        out.join("histomap.sbatch"),
        out.join(crate::cohort::ledger::DIR).join("slurm"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quote("/a/b-c_d.svs"), "/a/b-c_d.svs");
        assert_eq!(quote("my slide.svs"), "'my slide.svs'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn script_names_resources_and_shards() {
        let o = SlurmOptions {
            array: 3,
            job_name: "histomap".into(),
            partition: Some("gpu".into()),
            cpus: Cpus::Given(4),
            mem: Some("8G".into()),
            gpus: Some(1),
            time: Some("1:00:00".into()),
        };
        let args = ["heatmap", "/data/my slides", "--out", "/o"].map(String::from);
        let s = script(Path::new("/bin/histomap"), &args, Path::new("/o/logs"), &o).unwrap();
        for line in [
            "#SBATCH --array=0-2",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --partition=gpu",
            "#SBATCH --mem=8G",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --time=1:00:00",
            "#SBATCH --output=/o/logs/%A_%a.log",
            "  '/data/my slides' \\",
            "  --shard slurm --threads \"${SLURM_CPUS_PER_TASK:-4}\" --quiet",
        ] {
            assert!(s.lines().any(|l| l == line), "{line:?} missing in\n{s}");
        }
        let no_tasks = SlurmOptions { array: 0, ..o };
        assert!(script(Path::new("h"), &args, Path::new("l"), &no_tasks).is_err());
    }

    #[test]
    fn the_default_cpus_fit_the_largest_node_and_say_so() {
        use cluster::{Node, TimeLimit};
        let partition = |cpus| Partition {
            name: "debug".into(),
            nodes: vec![Node {
                name: "n1".into(),
                cpus,
                mem_mb: 1024,
                gpus: 0,
            }],
            max_time: TimeLimit::Unlimited,
        };
        assert_eq!(Cpus::default_for(Some(&partition(64))).get(), 4);
        assert_eq!(Cpus::default_for(None).get(), 4);
        let o = SlurmOptions {
            array: 1,
            job_name: "histomap".into(),
            partition: None,
            cpus: Cpus::default_for(Some(&partition(2))),
            mem: None,
            gpus: None,
            time: None,
        };
        let args = ["heatmap".to_string()];
        let s = script(Path::new("h"), &args, Path::new("l"), &o).unwrap();
        for line in [
            "# --cpus-per-task=2: the default, 4, lowered to fit partition debug (largest \
             node: 2 CPUs); pass --cpus to choose.",
            "#SBATCH --cpus-per-task=2",
        ] {
            assert!(s.lines().any(|l| l == line), "{line:?} missing in\n{s}");
        }
        let given = SlurmOptions {
            cpus: Cpus::Given(2),
            ..o
        };
        let s = script(Path::new("h"), &args, Path::new("l"), &given).unwrap();
        assert!(!s.contains("the default"), "{s}");
    }
}
