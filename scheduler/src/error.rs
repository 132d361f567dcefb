//! The one error type of `almanac-scheduler`.

use std::net::SocketAddr;
use std::path::PathBuf;

use almanac_jobs::JobsError;

pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Jobs(#[from] JobsError),

    #[error("cannot listen for the {what} on {address}: {source} (is another process using it?)")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the embedded Ballista scheduler: {0}")]
    Ballista(String),

    #[error("the {what} server failed: {message}")]
    Serve { what: &'static str, message: String },
}

impl From<SchedulerError> for tonic::Status {
    fn from(e: SchedulerError) -> tonic::Status {
        match e {
            SchedulerError::Jobs(e) => jobs_status(e),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

/// A request's mistakes are the caller's (invalid argument); the rest is the server's.
pub fn jobs_status(e: JobsError) -> tonic::Status {
    match &e {
        JobsError::InvalidInput(_)
        | JobsError::Spec(_)
        | JobsError::Source { .. }
        | JobsError::Transformation { .. } => tonic::Status::invalid_argument(e.to_string()),
        _ => tonic::Status::internal(e.to_string()),
    }
}
