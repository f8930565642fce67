//! Errors of the ingest stage.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by the ingest stage. Bad *records* are not errors: they become [`crate::Rejected`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when the Kafka client cannot be created, subscribe, poll or commit.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: String,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Occurs when the task gathering the next batch of records ended without one (it panicked
    /// or was cancelled: a bug in Vigil); the records are read again from the last commit.
    #[error("gathering the next batch of records: {0}")]
    Gather(String),
    /// Occurs when Arrow rejects an operation that should not fail (a bug in Vigil).
    #[error("internal arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Error {
    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Error::Kafka { context: context.into(), source }
    }
}
