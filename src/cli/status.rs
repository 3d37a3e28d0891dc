//! `histomap status`: where a run stands, read from OUT's markers, and from Slurm's
//! queue for arrays submitted with `histomap slurm --submit`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use histomap::cohort::ledger::{Ledger, SlideState, Worker};
use histomap::cohort::slurm::queue;

#[derive(Args)]
pub struct StatusArgs {
    /// The run's output folder.
    out: PathBuf,
    /// Print JSON lines instead of a table; a slide waiting for a queued Slurm task
    /// has it under "slurm" (task, state, reason), else "slurm" is null.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let (out, json) = (&a.out, a.json);
    let ledger = Ledger::of_run(out)?;
    let survey = ledger.survey()?;
    // Tasks that never start write nothing into OUT; only Slurm can say they wait. A
    // run with every slide done or running has nothing to ask about.
    let unfinished = survey
        .iter()
        .any(|s| matches!(s.2.word(), "missing" | "failed"));
    let queue = match unfinished.then(|| queue::queue(&ledger)) {
        Some(Ok(q)) => q.unwrap_or_default(),
        Some(Err(e)) => {
            eprintln!("histomap: {e}; queued Slurm tasks are not shown");
            Default::default()
        }
        None => Default::default(),
    };
    for (name, path, state) in &survey {
        let word = state.word();
        let waiting = matches!(state, SlideState::Missing)
            .then(|| queue.slides.get(name))
            .flatten();
        let detail = match state {
            SlideState::Done => String::new(),
            SlideState::Missing => waiting.map_or(String::new(), |t| t.describe()),
            SlideState::Failed(f) => f.error.clone(),
            SlideState::Unreadable { error } => error.clone(),
            SlideState::Running { worker } => worker.as_ref().map_or(String::new(), |w| {
                let secs = Worker::now().time - w.time;
                format!("{w}, for {secs:.0} s")
            }),
        };
        if json {
            let slurm = waiting.map(
                |t| serde_json::json!({ "task": t.id(), "state": t.state, "reason": t.reason }),
            );
            let row = serde_json::json!({
                "slide": name, "path": path, "state": word, "detail": detail, "slurm": slurm,
            });
            println!("{row}");
        } else {
            println!("{word:<8} {name}  {detail}");
        }
    }
    if !json {
        let count = |w: &str| survey.iter().filter(|s| s.2.word() == w).count();
        println!(
            "{} done, {} failed, {} running, {} missing (of {})",
            count("done"),
            count("failed"),
            count("running"),
            count("missing"),
            survey.len()
        );
        for line in queue.summary() {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
