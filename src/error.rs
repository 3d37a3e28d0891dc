//! The library's one error type. Every message names the file it concerns and the
//! values that were wrong, so a user can act on one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The causes are part of the message and deliberately not `#[source]`s: the CLI
    // prints the whole chain, which would repeat them.
    #[error("{}: {}", path.display(), io_message(err))]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Slide { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Pipeline { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Model { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Dataset { path: PathBuf, msg: String },
    #[error("{0}")]
    Usage(String),
    /// Slurm could not be asked, or answered what histomap cannot read.
    #[error("{0}")]
    Slurm(String),
    #[error("inference failed: {}", one_line(.0))]
    Candle(candle_core::Error),
}

/// The words of an I/O error, without the OS's error number; a missing path reads the
/// same wherever it was found missing.
fn io_message(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file or folder".into(),
        _ => {
            let text = err.to_string();
            match text.rfind(" (os error ") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

/// A candle error as one line: without the backtrace candle appends when
/// `RUST_BACKTRACE` is set, its layers of context joined by ": ".
pub(crate) fn one_line(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => one_line(inner),
        E::Context { inner, context } => format!("{context}: {}", one_line(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), one_line(inner)),
        other => other.to_string().replace('\n', " "),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e)
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    /// A path the user gave that does not exist.
    pub fn not_found(path: impl Into<PathBuf>) -> Self {
        Error::io(path, std::io::ErrorKind::NotFound.into())
    }

    pub fn slide(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Slide {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub fn model(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Model {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub fn pipeline(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Pipeline {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub fn dataset(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Dataset {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub fn output(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Output {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    /// The message without the file it names, for reports that name the file once.
    pub fn reason(&self) -> String {
        match self {
            Error::Io { err, .. } => io_message(err),
            Error::Slide { msg, .. }
            | Error::Pipeline { msg, .. }
            | Error::Model { msg, .. }
            | Error::Output { msg, .. }
            | Error::Dataset { msg, .. } => msg.clone(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_chain_names_a_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::from(Error::io("a.svs", io)).context("reading slides");
        assert_eq!(
            format!("{e:#}"),
            "reading slides: a.svs: no such file or folder"
        );
    }

    #[test]
    fn io_errors_read_without_the_os_number() {
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            Error::io("out", denied).to_string(),
            "out: Permission denied"
        );
    }
}
