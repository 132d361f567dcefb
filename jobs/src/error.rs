//! The one error type of `almanac-jobs`.
//!
//! Messages are written for the person who ran the command: they name the file, field or value
//! that is wrong and say what was expected. Causes are kept as `#[source]` so logs can show the
//! whole chain.

use std::path::PathBuf;

use crate::spec::SpecErrors;

/// Result alias used across the crate.
pub type Result<T, E = JobsError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// A spec file failed to parse or validate; holds every problem found, not just the first.
    #[error(transparent)]
    Spec(#[from] SpecErrors),

    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A source declared in a spec cannot be used as written.
    #[error("source {path}: {message}")]
    Source { path: String, message: String },

    /// Timestamps in a source that cannot be turned into instants.
    #[error(
        "source {path}: {failed} row(s) in the window have a timestamp in column '{column}' that \
         cannot be read as {expected}; first: {first}"
    )]
    BadTimestamps {
        path: String,
        column: String,
        expected: String,
        failed: u64,
        first: String,
    },

    /// The transformation does not produce what the spec declares.
    #[error("{file}: {message}")]
    Transformation { file: String, message: String },

    /// The cluster lost an executor while a query ran; its result was not used.
    #[error(
        "an executor was lost while this ran ({0}); the result was discarded and will be \
         computed again"
    )]
    ExecutorLost(String),

    /// A command-line argument or other user input is invalid.
    #[error("{0}")]
    InvalidInput(String),

    /// The engine failed while planning or running a query.
    #[error("{context}: {source}")]
    Engine {
        context: String,
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },

    /// Writing or reading parquet outside the engine.
    #[error("{context}: {source}")]
    Parquet {
        context: String,
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },

    /// The registry database failed.
    #[error("{context}: {source}")]
    Registry {
        context: String,
        #[source]
        source: rusqlite::Error,
    },

    /// Reading a Delta Lake table's log.
    #[error("delta table {uri}: {source}")]
    Delta {
        uri: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
}

impl JobsError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        JobsError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn engine(
        context: impl Into<String>,
        source: datafusion::error::DataFusionError,
    ) -> Self {
        JobsError::Engine {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

/// Adds context to DataFusion results without losing the cause.
pub(crate) trait EngineResultExt<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> EngineResultExt<T> for std::result::Result<T, datafusion::error::DataFusionError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| JobsError::engine(context(), e))
    }
}
