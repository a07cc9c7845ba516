//! # sluice-sql-planner
//!
//! The front of Sluice: SQL text in, [`StreamPlan`] out. No I/O and no async; every
//! behaviour can be tested from a string.
//!
//! - [`dialect`]: ksqlDB statements around standard SELECTs, with positions in errors.
//! - [`statement`]: the [`Statement`] enum those parse into.
//! - [`catalog`]: streams and tables, their columns, topics and event time.
//! - [`ddl`]: catalog entries from CREATE statements, checked without Kafka.
//! - [`window`]: the window spec both window spellings lower to.
//! - [`timestamp_format`]: `TIMESTAMP_FORMAT` patterns (Java letters) for string event times.
//! - [`functions`]: ksqlDB's aggregates (`LATEST_BY_OFFSET`, `TOPK`, ...) as DataFusion UDAFs.
//! - [`planner`]: DataFusion `SqlToRel` + optimizer, then lowering to a [`StreamPlan`].
//! - [`stream_plan`]: the plan the executor runs.

pub mod catalog;
pub mod ddl;
pub mod dialect;
pub mod error;
/// ksqlDB's aggregate functions as DataFusion UDAFs, and their registration.
pub mod functions;
pub mod planner;
pub mod statement;
pub mod stream_plan;
pub mod timestamp_format;
pub mod window;
mod window_syntax;

pub use catalog::{Catalog, EventTime, SourceDef, SourceKind, ValueFormat, ROWTIME};
pub use dialect::parse_statements;
pub use error::{PlanError, PlanErrorKind, Position};
pub use planner::QueryPlanner;
pub use statement::{ColumnSpec, ContinuousQuery, Emit, ParsedStatement, Properties, Statement};
pub use stream_plan::{AssignedWindow, SourceScan, StreamOperator, StreamPlan};
pub use timestamp_format::TimestampFormat;
pub use window::{WindowKind, WindowSpec};

pub use datafusion;
