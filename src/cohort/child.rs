//! Each slide in a child process that the batch supervises. In: a command that runs one
//! slide (the CLI's `heatmap` with the slide's name, which holds no lock of its own).
//! Out: the slide's outcome, whatever happened to the child.
//!
//! The C libraries that decode slides (OpenSlide, libtiff, libjpeg, zlib) run in the
//! child, so a crash inside one of them, or a panic, costs that slide alone: the batch
//! records it as the slide's failure, naming the signal or the panic, and goes on.
//! The child reports on its stdout, one JSON line per progress step and its outcome
//! last: that pipe is its progress interface. Its stderr is kept only to explain a
//! crash.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cohort::ledger::ProcessStats;
use crate::progress::Progress;

/// What a slide's child finished with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub dir: PathBuf,
    /// Patches classified.
    pub patches: usize,
    /// Tissue patches that could not be read.
    pub unreadable: usize,
}

/// One line the child writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Started { patches: u64 },
    Patches { n: u64 },
    Warning { line: String },
    Done(Finished),
    Failed { error: String },
}

fn send(message: &Message) {
    let mut line = serde_json::to_vec(message).expect("messages serialise");
    line.push(b'\n');
    // A parent that went away cannot be told anything; SIGPIPE ends the child then.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&line).and_then(|()| out.flush());
}

/// The child's progress, sent up to the batch.
pub struct Reporter;

impl Progress for Reporter {
    fn slide_started(&self, _name: &str, patches: u64) {
        send(&Message::Started { patches });
    }

    fn patches_done(&self, n: u64) {
        send(&Message::Patches { n });
    }

    fn warning(&self, line: &str) {
        send(&Message::Warning { line: line.into() });
    }
}

/// The child's last word: how its slide ended.
pub fn report(outcome: &Result<Finished, String>) {
    send(&match outcome {
        Ok(f) => Message::Done(f.clone()),
        Err(error) => Message::Failed {
            error: error.clone(),
        },
    });
}

/// Stderr kept from a child: enough of its end to name a crash.
const STDERR_KEPT: usize = 16 << 10;

/// Runs `cmd` (a child processing `slide`), forwarding its progress, and waits for it.
/// A child that dies without reporting (a signal, a panic, an abort in a C library)
/// becomes the slide's one-line error. Returns how long the child ran and its peak
/// memory too.
pub fn supervise(
    mut cmd: Command,
    slide: &Path,
    name: &str,
    progress: &dyn Progress,
) -> (Result<Finished, String>, Option<ProcessStats>) {
    let start = Instant::now();
    // A worker killed mid-slide (kill -9, a node's end) takes its child with it, so no
    // orphan goes on to commit a slide whose lock has been released.
    // SAFETY: prctl is async-signal-safe, and the closure touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let spawned = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let error = format!("{}: cannot start a worker process: {e}", slide.display());
            return (Err(error), None);
        }
    };
    let mut stderr = child.stderr.take().expect("piped");
    let kept = std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * STDERR_KEPT {
                tail.drain(..tail.len() - STDERR_KEPT);
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    let mut last = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Message>(&line) {
            Ok(Message::Started { patches }) => progress.slide_started(name, patches),
            Ok(Message::Patches { n }) => progress.patches_done(n),
            Ok(Message::Warning { line }) => progress.warning(&line),
            Ok(end) => last = Some(end),
            // Not ours (a library writing to stdout): not a report.
            Err(_) => {}
        }
    }
    let (status, max_rss_kib) = wait_with_rusage(child.id());
    let stats = ProcessStats {
        seconds: start.elapsed().as_secs_f64(),
        max_rss_mib: max_rss_kib as f64 / 1024.0,
    };
    let stderr = kept.join().unwrap_or_default();
    let outcome = match last {
        Some(Message::Done(f)) => Ok(f),
        Some(Message::Failed { error }) => Err(error),
        _ => Err(format!("{}: {}", slide.display(), died(status, &stderr))),
    };
    (outcome, Some(stats))
}

/// Waits for process `pid`; its wait status and peak resident memory in KiB.
fn wait_with_rusage(pid: u32) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 writes only into the two locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: as above; `pid` is our own unwaited child.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return (status, usage.ru_maxrss);
        }
    }
}

/// Why a child that did not report ended, in words, from its wait status and stderr.
fn died(status: i32, stderr: &str) -> String {
    let last_line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: strsignal returns a valid C string for any signal number.
        let what = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) }.to_string_lossy();
        let said = if last_line.is_empty() {
            String::new()
        } else {
            format!("; it last said: {last_line}")
        };
        return format!(
            "the worker reading this slide crashed: killed by signal {sig} ({what}){said}"
        );
    }
    let code = libc::WEXITSTATUS(status);
    if let Some(panic) = stderr.lines().find(|l| l.contains("panicked at")) {
        let message = stderr
            .lines()
            .skip_while(|l| !l.contains("panicked at"))
            .nth(1)
            .unwrap_or(panic);
        return format!(
            "histomap panicked on this slide ({}): {message}",
            panic.trim()
        );
    }
    format!("the worker reading this slide exited with code {code} without a result: {last_line}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn a_reported_outcome_is_the_slides() {
        let done = r#"{"started":{"patches":3}}
{"patches":{"n":3}}
{"done":{"dir":"/o/a","patches":2,"unreadable":1}}"#;
        let (outcome, stats) = supervise(
            sh(&format!("echo '{done}'")),
            "a.svs".as_ref(),
            "a",
            &Silent,
        );
        assert_eq!(
            outcome,
            Ok(Finished {
                dir: "/o/a".into(),
                patches: 2,
                unreadable: 1
            })
        );
        assert!(stats.unwrap().max_rss_mib > 0.0);
        let failed = r#"echo '{"failed":{"error":"a.svs: corrupt"}}'; exit 1"#;
        let (outcome, _) = supervise(sh(failed), "a.svs".as_ref(), "a", &Silent);
        assert_eq!(outcome, Err("a.svs: corrupt".into()));
    }

    #[test]
    fn a_crash_is_the_slides_failure_in_one_line() {
        let (outcome, _) = supervise(
            sh("echo 'libfoo: bad tile' >&2; kill -SEGV $$"),
            "a.svs".as_ref(),
            "a",
            &Silent,
        );
        let error = outcome.unwrap_err();
        assert!(
            error.starts_with("a.svs: the worker reading this slide crashed: killed by signal 11")
                && error.ends_with("it last said: libfoo: bad tile")
                && !error.contains('\n'),
            "{error}"
        );
        let panic = "echo \"thread 'main' panicked at src/x.rs:1:2:\" >&2; echo 'index out of bounds' >&2; exit 101";
        let error = supervise(sh(panic), "a.svs".as_ref(), "a", &Silent)
            .0
            .unwrap_err();
        assert!(
            error.contains("panicked") && error.ends_with("index out of bounds"),
            "{error}"
        );
    }
}
