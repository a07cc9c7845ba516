//! Errors of the executor, each with its class: the user's (a plan that cannot run),
//! external (Kafka), or internal (a bug).

use datafusion::error::DataFusionError;

/// An executor error.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Kafka refused or failed an operation; retrying may help.
    #[error("kafka error while {context}: {source}")]
    Kafka {
        /// What Sluice was doing.
        context: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Evaluating an expression or aggregate failed.
    #[error("evaluation failed in {operator}: {source}")]
    Evaluation {
        /// The operator that failed.
        operator: &'static str,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
    /// Encoding or decoding Arrow data failed unexpectedly.
    #[error("arrow error while {context}: {source}")]
    Arrow {
        /// What Sluice was doing.
        context: &'static str,
        /// Arrow's error.
        #[source]
        source: datafusion::arrow::error::ArrowError,
    },
    /// A query's changelog holds state this query cannot read.
    #[error("operator state: {0}")]
    State(String),
    /// The embedded broker could not be started or used.
    #[error("embedded broker: {0}")]
    EmbeddedBroker(String),
}

impl ExecError {
    /// A Kafka error with context.
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        ExecError::Kafka {
            context: context.into(),
            source,
        }
    }

    /// An evaluation error in `operator`.
    pub fn eval(operator: &'static str) -> impl FnOnce(DataFusionError) -> Self {
        move |source| ExecError::Evaluation { operator, source }
    }

    /// A broken invariant in `operator`: a bug.
    pub fn internal(operator: &'static str, message: &str) -> Self {
        ExecError::Evaluation {
            operator,
            source: DataFusionError::Internal(message.to_string()),
        }
    }

    /// An Arrow error while `context`.
    pub fn arrow(
        context: &'static str,
    ) -> impl FnOnce(datafusion::arrow::error::ArrowError) -> Self {
        move |source| ExecError::Arrow { context, source }
    }
}

/// The executor's result type.
pub type Result<T, E = ExecError> = std::result::Result<T, E>;
