//! `histomap view`: serves an OUT folder to a browser on this machine.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use histomap::view::{Server, ServerOptions};

use super::args::at_least;

#[derive(Args)]
pub struct ViewArgs {
    /// The output folder of `heatmap` (or of a Slurm run).
    out: PathBuf,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8642)]
    port: u16,
    /// Address to listen on. The default answers this machine only; another address
    /// (0.0.0.0: every interface) shows the slides to anyone who can reach it.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Memory for cut tiles and maps, in MiB (besides at most 4 open slides, each with
    /// OpenSlide's own cache and a 3 MiB overview).
    #[arg(long, default_value_t = 256, value_parser = at_least::<1>)]
    cache_mib: usize,
    /// Requests worked on at once (each cuts one tile at a time); more wait their turn.
    #[arg(long, default_value_t = 4, value_parser = super::args::threads)]
    workers: usize,
    /// Connections open at once; more wait to be accepted. Browsers open about six.
    #[arg(long, default_value_t = 256, value_parser = at_least::<1>)]
    max_connections: usize,
    /// Seconds a request's head may take to arrive (however slowly it trickles in),
    /// an idle connection may stay open, and an answer may take to be ready (408).
    #[arg(long, default_value_t = 20, value_parser = at_least::<1>)]
    timeout_s: usize,
}

pub fn run(a: ViewArgs) -> anyhow::Result<ExitCode> {
    let server = Server::bind(ServerOptions {
        out: a.out.clone(),
        host: a.host,
        port: a.port,
        cache_bytes: a.cache_mib << 20,
        workers: a.workers,
        max_connections: a.max_connections,
        timeout: Duration::from_secs(a.timeout_s as u64),
    })?;
    // The first line is the address, for people and for scripts that start the
    // server with --port 0.
    println!("{}", server.url());
    std::io::stdout().flush()?;
    eprintln!(
        "histomap: serving {} at {} (the report at /, each slide's viewer from it); Ctrl-C stops",
        a.out.display(),
        server.url()
    );
    server.run()?;
    eprintln!("histomap: stopped");
    Ok(ExitCode::SUCCESS)
}
