//! Running a batch as a Slurm job array, with no service of our own. In: the
//! `heatmap` command line one worker would run, and the job's resources. Out: a
//! readable sbatch script whose N array tasks each run `histomap heatmap … --shard
//! slurm`, and, on request, its submission through `sbatch`.
//!
//! The tasks need no coordination: each computes its own part of the slide list
//! ([`shard`](crate::cohort::shard)), and the [`ledger`](crate::cohort::ledger) keeps a resubmitted or
//! overlapping task off slides that are finished or taken.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The job's shape and resources, as sbatch options.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Array tasks, i.e. workers.
    pub array: usize,
    pub job_name: String,
    pub partition: Option<String>,
    /// CPUs per task; the worker uses them all.
    pub cpus: usize,
    /// Memory per task, in sbatch's syntax (`8G`).
    pub mem: Option<String>,
    /// GPUs per task.
    pub gpus: Option<u32>,
    /// Time limit per task, in sbatch's syntax (`2:00:00`).
    pub time: Option<String>,
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
    if o.cpus == 0 {
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
         # `histomap status OUT` tells where the run stands, `histomap report OUT` merges it.\n",
        env!("CARGO_PKG_VERSION"),
        o.array
    ));
    let mut opt = |k: &str, v: &str| s.push_str(&format!("#SBATCH --{k}={}\n", quote(v)));
    opt("job-name", &o.job_name);
    opt("array", &format!("0-{}", o.array - 1));
    opt("cpus-per-task", &o.cpus.to_string());
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
    s.push_str(&o.cpus.to_string());
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
            cpus: 4,
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
}
