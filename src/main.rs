//! The `histomap` command: parses arguments, runs the subcommand, maps the result to
//! an exit code (0 success, 1 a slide or the job failed, 2 bad usage). Each
//! subcommand lives in `cli/`; the work is done by the library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `histomap info … | head` would panic on the closed pipe;
    // the default action ends the process quietly, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition at start, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    histomap::tune_allocator();
    match cli::Cli::parse().command.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("histomap: {e:#}");
            ExitCode::from(1)
        }
    }
}
