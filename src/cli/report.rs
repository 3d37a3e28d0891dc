//! `histomap report`: the cohort table and page of a run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// The run's output folder.
    out: PathBuf,
}

pub fn run(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let r = histomap::cohort::report::write(&a.out)?;
    println!(
        "{} done, {} failed, {} running, {} missing",
        r.done, r.failed, r.running, r.missing
    );
    println!("wrote {} and {}", r.csv.display(), r.html.display());
    Ok(ExitCode::SUCCESS)
}
