use almanac_jobs::JobsError;

/// Everything the CLI can fail with; the message is printed as is.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Jobs(#[from] JobsError),

    #[error("{0}")]
    Usage(String),

    /// The scheduler refused a request or could not be reached.
    #[error("{0}")]
    Remote(String),

    #[error(transparent)]
    Train(#[from] almanac_train::TrainError),

    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}
