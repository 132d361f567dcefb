use almanac_jobs::JobsError;

/// Everything the CLI can fail with; the message is printed as is.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Jobs(#[from] JobsError),

    #[error("{0}")]
    Usage(String),

    #[error(transparent)]
    Train(#[from] almanac_train::TrainError),

    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}
