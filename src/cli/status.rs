//! `histomap status`: where a run stands, read from OUT's markers.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use histomap::cohort::ledger::{Ledger, SlideState, Worker};

#[derive(Args)]
pub struct StatusArgs {
    /// The run's output folder.
    out: PathBuf,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let (out, json) = (&a.out, a.json);
    let survey = Ledger::of_run(out)?.survey()?;
    for (name, path, state) in &survey {
        let word = state.word();
        let detail = match state {
            SlideState::Done | SlideState::Missing => String::new(),
            SlideState::Failed(f) => f.error.clone(),
            SlideState::Unreadable { error } => error.clone(),
            SlideState::Running { worker } => worker.as_ref().map_or(String::new(), |w| {
                let secs = Worker::now().time - w.time;
                format!("{w}, for {secs:.0} s")
            }),
        };
        if json {
            let row = serde_json::json!({
                "slide": name, "path": path, "state": word, "detail": detail,
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
    }
    Ok(ExitCode::SUCCESS)
}
