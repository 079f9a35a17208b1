//! Errors of the log layer, each naming the file it concerns.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading or writing a shape log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An operating-system call on one of the log's files failed.
    #[error("shape log file {path}: {source}")]
    Io {
        /// The file (or directory) the call was about.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The file does not start with a pg_shapes header of a version we understand.
    #[error("{path} is not a pg_shapes shape log of format version {version} (bad magic, version or record size)")]
    BadHeader {
        /// The index file.
        path: PathBuf,
        /// The version this build reads.
        version: u32,
    },
    /// `create` found an existing log where a fresh one was expected.
    #[error("shape log {path} already exists")]
    AlreadyExists {
        /// The log directory.
        path: PathBuf,
    },
    /// The log would grow beyond what its records can address.
    #[error("shape log {path} would exceed the maximum size of {max} bytes")]
    TooLarge {
        /// The data file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// A single message is larger than a record can describe.
    #[error("message of {len} bytes is larger than the 4 GiB a log record can hold")]
    MessageTooLarge {
        /// The message length.
        len: usize,
    },
}

impl LogError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io { path: path.into(), source }
    }

    /// True when the log directory or one of its files does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Result alias for the log layer.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
