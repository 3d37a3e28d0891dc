//! The library's one error type. Every message names the file it concerns and the
//! values that were wrong, so a user can act on one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
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

    pub fn output(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Output {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
