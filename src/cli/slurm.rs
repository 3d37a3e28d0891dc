//! `histomap slurm`: a Slurm job array of `heatmap` workers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use histomap::cohort::ledger::{Ledger, SubmittedJob};
use histomap::cohort::run;
use histomap::cohort::slurm::{self, cluster, Cpus};
use histomap::model::{Classifier, DeviceChoice};

use super::args::{at_least, shown};
use super::heatmap::HeatmapArgs;

#[derive(Args)]
pub struct SlurmArgs {
    #[command(flatten)]
    heatmap: HeatmapArgs,
    /// Array tasks (workers).
    #[arg(long, value_parser = at_least::<1>)]
    array: usize,
    /// Slurm partition to submit to; default: the cluster's.
    #[arg(long)]
    partition: Option<String>,
    /// CPUs per task; default: 4, or the CPUs of the partition's largest node when
    /// fewer (when sinfo can tell).
    #[arg(long)]
    cpus: Option<usize>,
    /// Memory per task (sbatch syntax, e.g. 8G).
    #[arg(long)]
    mem: Option<String>,
    /// GPUs per task (the workers then run with --device cuda unless --device is given).
    #[arg(long)]
    gpus: Option<u32>,
    /// Time limit per task (sbatch syntax, e.g. 4:00:00).
    #[arg(long)]
    time: Option<String>,
    /// Slurm job name.
    #[arg(long, default_value = "histomap")]
    job_name: String,
    /// Where to write the script; default OUT/histomap.sbatch.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Submit it with sbatch and print the job id (recorded in OUT, so `histomap
    /// status` shows tasks still waiting in the queue and Slurm's reason).
    #[arg(long)]
    submit: bool,
    /// Write and submit the job even when no node of the partition can run a task as
    /// asked: more CPUs, memory or GPUs than any node has, or --time above the
    /// partition's MaxTime. Without it such a job is refused, since Slurm would keep
    /// its tasks pending until the cluster changes. The check asks sinfo; with no Slurm
    /// reachable the script is written unchecked.
    #[arg(long)]
    no_check: bool,
}

pub fn run(a: SlurmArgs) -> anyhow::Result<ExitCode> {
    if a.heatmap.shard.is_some() {
        bail!("--shard is set per task by the script (its array index); leave it out");
    }
    if a.heatmap.threads.is_some() {
        bail!("--threads is set per task by the script (--cpus); leave it out");
    }
    let mut heatmap = a.heatmap;
    if a.gpus.is_some_and(|g| g > 0) && heatmap.device == DeviceChoice::Auto {
        heatmap.device = DeviceChoice::Cuda;
    }
    // Check the job before it reaches a queue: the pipeline and model load, and the
    // slide list is what every task will see.
    Classifier::load_with_pipeline(
        heatmap.pipeline.as_deref(),
        heatmap.model.as_deref(),
        &candle_core::Device::Cpu,
    )?;
    let slides = run::collect_slides(&heatmap.inputs)?;
    if slides.is_empty() {
        bail!("no slides found in {}", shown(&heatmap.inputs));
    }

    // A job no node can run is accepted by Slurm and then waits in silence: ask first.
    let offer = cluster::partition(a.partition.as_deref())
        .inspect_err(|e| eprintln!("histomap: {e}; the job is not checked against the cluster"))
        .ok();
    let cpus = a
        .cpus
        .map_or_else(|| Cpus::default_for(offer.as_ref()), Cpus::Given);
    let opts = slurm::SlurmOptions {
        array: a.array,
        job_name: a.job_name,
        partition: a.partition,
        cpus,
        mem: a.mem,
        gpus: a.gpus,
        time: a.time,
    };
    let problems: Vec<String> = offer
        .iter()
        .flat_map(|p| cluster::unsatisfiable(&opts, p))
        .map(|u| u.to_string())
        .collect();
    if !problems.is_empty() {
        let problems = problems.join("; ");
        if !a.no_check {
            bail!(
                "{problems}; Slurm would keep every task pending. Ask for less, or pass \
                 --no-check to submit it as it is"
            );
        }
        eprintln!("histomap: {problems}; Slurm will keep every task pending (--no-check)");
    }

    let ledger = Ledger::create(&heatmap.out)?;
    ledger.write_slides(&run::slide_entries(&slides))?;
    let (default_script, logs) = slurm::default_paths(&std::path::absolute(&heatmap.out)?);
    std::fs::create_dir_all(&logs).with_context(|| format!("{}", logs.display()))?;
    let exe = std::env::current_exe().context("locating the histomap executable")?;
    let text = slurm::script(&exe, &heatmap.worker_argv()?, &logs, &opts)?;
    let script = a.script.unwrap_or(default_script);
    histomap::output::write_atomic(&script, text.as_bytes())?;
    eprintln!(
        "wrote {} ({} tasks of {} CPUs over {} slides)",
        script.display(),
        opts.array,
        opts.cpus.get(),
        slides.len()
    );
    if a.submit {
        let id = slurm::submit(&script)?;
        ledger.record_job(&SubmittedJob {
            id: id.clone(),
            tasks: opts.array,
            script: std::path::absolute(&script)?,
        })?;
        println!("{id}");
        eprintln!(
            "submitted job {id}; follow it with: histomap status {}",
            heatmap.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
