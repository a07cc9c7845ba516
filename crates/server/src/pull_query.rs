//! Pull queries: `SELECT … FROM table …;` without EMIT, answered once from the current
//! rows of materialized tables.
//!
//! Each table a CTAS writes keeps its current rows ([`MaterializedTable`]). A pull query
//! takes a snapshot of each table it names and runs on DataFusion as a batch query, so any
//! SQL DataFusion can run works: key lookups, `WINDOWSTART` ranges, filters on any column,
//! aggregates, GROUP BY, ORDER BY, LIMIT, joins between tables.
//!
//! The query reaches no files: its only tables are the snapshots (planned through
//! [`logical_plan`], whose catalog is those tables and nothing else), so file-backed
//! tables, `'path'` table names and table functions such as `read_csv` do not resolve,
//! and statements other than SELECT (`CREATE EXTERNAL TABLE`, `COPY`) never reach
//! DataFusion.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::common::TableReference;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{LogicalPlan, TableSource};
use datafusion::sql::sqlparser::ast::Query;
use sluice_sql_planner::planner::logical_plan;
use sluice_sql_planner::{Catalog, PlanError, SourceKind};
use sluice_stream_exec::MaterializedTable;

use crate::engine::PullSources;
use crate::error::ApiError;

/// How long a pull query may run before it is cancelled.
pub const PULL_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory one pull query's operators may reserve (sorts, aggregates, joins).
pub const PULL_QUERY_MEMORY_BYTES: usize = 512 << 20;
/// Pull queries running at once; more are refused with 429.
pub const MAX_PULL_QUERIES: usize = 4;
/// How long a pull query waits for a table still being read back after a restart.
pub const RESTORE_WAIT: Duration = Duration::from_secs(10);

/// Tables still being read back after a restart, by name.
type Restoring = Vec<(String, Arc<MaterializedTable>)>;

/// The result of a pull query.
#[derive(Debug)]
pub struct PullResult {
    /// Its columns.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
    /// Result columns that are key columns of the table read (for ksqlDB's `KEY` marker).
    pub key_columns: Vec<String>,
}

/// Runs pull queries. Holds DataFusion's function registry and the runtime pull queries
/// execute on: their own threads, so a heavy query cannot stall the HTTP server or the
/// persistent queries, and can be dropped when it runs out of time.
pub struct PullQueries {
    state: SessionState,
    runtime: Option<tokio::runtime::Runtime>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Drop for PullQueries {
    fn drop(&mut self) {
        // Dropping a runtime may happen inside another runtime: do not block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PullQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PullQueries")
    }
}

impl Default for PullQueries {
    fn default() -> Self {
        Self::new()
    }
}

impl PullQueries {
    /// DataFusion's built-in functions plus Sluice's, a memory limit, and a runtime with
    /// one worker thread.
    pub fn new() -> Self {
        let memory = RuntimeEnvBuilder::new()
            .with_memory_limit(PULL_QUERY_MEMORY_BYTES, 1.0)
            .build_arc()
            .expect("a memory-limited runtime environment builds");
        let mut state = SessionStateBuilder::new()
            .with_default_features()
            .with_runtime_env(memory)
            .build();
        sluice_sql_planner::functions::register(&mut state)
            .expect("registering functions with fresh names cannot fail");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pull-query")
            .enable_all()
            .build()
            .expect("the pull-query runtime starts");
        Self {
            state,
            runtime: Some(runtime),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_PULL_QUERIES)),
        }
    }

    /// `query`'s logical plan over snapshots of the tables it reads, with the key columns
    /// among them; and the tables it reads that are still being read back (planned over
    /// no rows).
    fn plan(
        &self,
        query: &Query,
        catalog: &Catalog,
        sources: &PullSources,
    ) -> (Result<(LogicalPlan, Vec<String>), ApiError>, Restoring) {
        // Planning is synchronous and its resolver is not `Send`: keep it out of the awaits.
        let read: RefCell<Vec<String>> = RefCell::new(vec![]);
        let restoring: RefCell<Restoring> = RefCell::new(vec![]);
        let resolve = |name: &TableReference| -> datafusion::error::Result<Arc<dyn TableSource>> {
            let table = resolve_table(name, catalog, sources)?;
            read.borrow_mut().extend(table.1.iter().cloned());
            if let Some(why) = table.0.restore_failed() {
                return Err(DataFusionError::Execution(format!(
                    "table \"{}\" has no rows to read: they could not be read back from its \
                     topic, as {why}",
                    name.table().to_ascii_uppercase()
                )));
            }
            let snapshot = if table.0.is_restoring() {
                let named = name.table().to_ascii_uppercase();
                restoring.borrow_mut().push((named, table.0.clone()));
                RecordBatch::new_empty(table.0.schema().clone())
            } else {
                table.0.snapshot().map_err(|e| {
                    DataFusionError::Execution(format!("cannot read \"{}\": {e}", name.table()))
                })?
            };
            let mem = MemTable::try_new(table.0.schema().clone(), vec![vec![snapshot]])?;
            Ok(provider_as_source(Arc::new(mem)))
        };
        let planned = logical_plan(&self.state, query, &resolve).map_err(ApiError::from);
        let planned = planned.map(|logical| (logical, read.take()));
        (planned, restoring.into_inner())
    }

    /// Run `query` over the tables of `sources`; `catalog` only names what is not a table.
    pub async fn run(
        &self,
        query: &Query,
        catalog: &Catalog,
        sources: &PullSources,
    ) -> Result<PullResult, ApiError> {
        // A table still being read back after a restart is waited for (once): its rows are
        // not all there yet.
        let mut waited = false;
        let deadline = tokio::time::Instant::now() + RESTORE_WAIT;
        let (logical, key_names) = loop {
            let (planned, restoring) = self.plan(query, catalog, sources);
            let planned = planned?;
            if restoring.is_empty() {
                break planned;
            }
            for (name, table) in restoring {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if waited || !table.wait_restored(left).await {
                    return Err(ApiError::not_ready(format!(
                        "table \"{name}\" is still being read back from its topic after a \
                         restart ({} rows so far); try again shortly",
                        table.len()
                    )));
                }
            }
            waited = true;
        };
        let schema: SchemaRef = Arc::new(logical.schema().as_arrow().clone());
        let key_columns = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| key_names.contains(n))
            .collect();
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError {
                status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                error_code: 42900,
                ..ApiError::bad_request(format!(
                    "{MAX_PULL_QUERIES} pull queries are running; try again when one has finished"
                ))
            })?;
        // now() is this query's start time.
        let mut state = self.state.clone();
        state.mark_start_execution();
        let run = async move {
            let _permit = permit;
            let optimized = state.optimize(&logical)?;
            let physical = state.create_physical_plan(&optimized).await?;
            let task = Arc::new(TaskContext::from(&state));
            datafusion::physical_plan::collect(physical, task).await
        };
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| ApiError::internal("the pull-query runtime is gone"))?;
        let handle = runtime.spawn(run);
        let abort = handle.abort_handle();
        let batches = match tokio::time::timeout(PULL_QUERY_TIMEOUT, handle).await {
            Ok(Ok(result)) => result.map_err(|e| ApiError::from(PlanError::from_datafusion(e)))?,
            Ok(Err(e)) => return Err(ApiError::internal(format!("a pull query failed: {e}"))),
            Err(_) => {
                abort.abort();
                return Err(ApiError {
                    status: axum::http::StatusCode::REQUEST_TIMEOUT,
                    error_code: 40800,
                    ..ApiError::bad_request(format!(
                        "the pull query ran longer than {} s and was stopped",
                        PULL_QUERY_TIMEOUT.as_secs()
                    ))
                });
            }
        };
        Ok(PullResult {
            schema,
            batches,
            key_columns,
        })
    }
}

/// The materialized table `name` and its key column names, or why it cannot be read.
fn resolve_table(
    name: &TableReference,
    catalog: &Catalog,
    sources: &PullSources,
) -> datafusion::error::Result<(Arc<MaterializedTable>, Vec<String>)> {
    let plan_error = |m: String| DataFusionError::Plan(m);
    if name.schema().is_some() || name.catalog().is_some() {
        return Err(plan_error(format!(
            "\"{name}\" names a schema or catalog; Sluice has one namespace of streams and tables"
        )));
    }
    let Some(source) = catalog.get(name.table()) else {
        return Err(plan_error(format!(
            "table \"{}\" does not exist",
            name.table().to_ascii_uppercase()
        )));
    };
    if source.kind == SourceKind::Stream {
        return Err(plan_error(format!(
            "\"{}\" is a stream; a pull query reads a table. Add EMIT CHANGES to stream its rows \
             as a push query",
            source.name
        )));
    }
    match sources.get(&source.name) {
        Some((def, table)) => Ok((table.clone(), def.key_columns.clone())),
        None => Err(plan_error(format!(
            "table \"{}\" is not materialized: only tables made by CREATE TABLE … AS SELECT can \
             be queried",
            source.name
        ))),
    }
}
