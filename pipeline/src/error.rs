//! Errors of the pipeline stage.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by the pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when the feature SQL does not plan or run, or lacks a column the models need.
    #[error("feature plan: {0}")]
    Plan(String),
    /// Occurs when DataFusion fails while executing a plan.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Occurs when an Arrow kernel fails (a bug in Vigil).
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Occurs when a table is read before it was created.
    #[error("no table named `{0}`")]
    NoTable(String),
}
