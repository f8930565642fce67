//! Errors of the models stage.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by the models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when the features batch lacks a column or has the wrong type for it.
    #[error("features batch: {0}")]
    Input(String),
    /// Occurs when an Arrow kernel fails (a bug in Vigil).
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Occurs when a model's SQL (health) fails to run.
    #[error("SQL: {0}")]
    Sql(#[from] datafusion::error::DataFusionError),
}
