//! # sluice-stream-exec
//!
//! Runs [`StreamPlan`](sluice_sql_planner::StreamPlan)s. The flow of one query:
//!
//! - [`query_runner`]: the Kafka loop — consume a batch, process, produce, commit.
//! - [`pipeline`]: the same processing without Kafka: [`json_decoder`] → [`scan`]
//!   (event time, window bounds, lateness) → [`operator`]s → result batches.
//! - [`operator`]: `Filter`, `Project`, `WindowAggregate`, over Arrow batches with
//!   DataFusion physical expressions and accumulators.
//! - [`watermark`]: stream time per partition and the watermark that closes windows.
//! - [`native`]: librdkafka's batch consume and batch produce, which rust-rdkafka does not
//!   offer (the one module with `unsafe` code).
//! - `delivery`: a persistent query's batch written to Kafka (results, state, offsets).
//! - `json_flat`: [`json_decoder`]'s one-pass fast path for flat schemas.
//! - [`json_encoder`]: result rows to Kafka keys and JSON values.
//! - [`materialized`]: a CTAS table's current rows, for pull queries.
//! - [`changelog`]: reading a query's changelog and result topic back at start.
//! - [`state`]: operator state as changelog records, for restarts.
//! - [`frames`]: those records packed into few, large ones, with snapshots.
//! - [`stats`]: per-query counters and the processing log.
//! - [`embedded_broker`]: the in-process broker used when no Kafka is given.
//! - [`kafka`]: the configuration every Kafka client starts from.

pub mod changelog;
mod consumer;
mod delivery;
pub mod embedded_broker;
pub mod error;
pub mod frames;
pub mod json_decoder;
pub mod json_encoder;
mod json_flat;
pub mod kafka;
pub mod materialized;
pub mod native;
pub mod operator;
pub mod pipeline;
pub mod query_runner;
mod reader;
pub mod record;
pub mod scan;
pub mod state;
mod state_rows;
pub mod stats;
pub mod watermark;

pub use embedded_broker::EmbeddedBroker;
pub use error::{ExecError, Result};
pub use materialized::MaterializedTable;
pub use pipeline::Pipeline;
pub use query_runner::{run_push_query, run_query, QueryConfig};
pub use record::{Payload, RawRecord};
pub use stats::{QueryStats, StatsSnapshot};
