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
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::TableSource;
use datafusion::sql::sqlparser::ast::Query;
use sluice_sql_planner::planner::logical_plan;
use sluice_sql_planner::{Catalog, PlanError, SourceKind};
use sluice_stream_exec::MaterializedTable;

use crate::engine::PullSources;
use crate::error::ApiError;

/// How long a pull query may run before it is cancelled.
pub const PULL_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Runs pull queries. Holds DataFusion's function registry; make one and share it.
#[derive(Clone)]
pub struct PullQueries {
    state: SessionState,
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
    /// DataFusion's built-in functions plus Sluice's.
    pub fn new() -> Self {
        let mut state = SessionStateBuilder::new().with_default_features().build();
        sluice_sql_planner::functions::register(&mut state)
            .expect("registering functions with fresh names cannot fail");
        Self { state }
    }

    /// Run `query` over the tables of `sources`; `catalog` only names what is not a table.
    pub async fn run(
        &self,
        query: &Query,
        catalog: &Catalog,
        sources: &PullSources,
    ) -> Result<PullResult, ApiError> {
        // Planning is synchronous and its resolver is not `Send`: keep it out of the awaits.
        let (logical, key_names) = {
            let read: RefCell<Vec<String>> = RefCell::new(vec![]);
            let resolve =
                |name: &TableReference| -> datafusion::error::Result<Arc<dyn TableSource>> {
                    let table = resolve_table(name, catalog, sources)?;
                    read.borrow_mut().extend(table.1.iter().cloned());
                    let snapshot = table.0.snapshot().map_err(|e| {
                        DataFusionError::Execution(format!("cannot read \"{}\": {e}", name.table()))
                    })?;
                    let mem = MemTable::try_new(table.0.schema().clone(), vec![vec![snapshot]])?;
                    Ok(provider_as_source(Arc::new(mem)))
                };
            let logical = logical_plan(&self.state, query, &resolve).map_err(ApiError::from)?;
            (logical, read.into_inner())
        };
        let schema: SchemaRef = Arc::new(logical.schema().as_arrow().clone());
        let key_columns = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| key_names.contains(n))
            .collect();
        let run = async {
            let optimized = self.state.optimize(&logical)?;
            let physical = self.state.create_physical_plan(&optimized).await?;
            let task = Arc::new(TaskContext::from(&self.state));
            datafusion::physical_plan::collect(physical, task).await
        };
        let batches = match tokio::time::timeout(PULL_QUERY_TIMEOUT, run).await {
            Ok(result) => result.map_err(|e| ApiError::from(PlanError::from_datafusion(e)))?,
            Err(_) => {
                return Err(ApiError {
                    status: axum::http::StatusCode::REQUEST_TIMEOUT,
                    error_code: 40800,
                    ..ApiError::bad_request(format!(
                        "the pull query ran longer than {} s and was stopped",
                        PULL_QUERY_TIMEOUT.as_secs()
                    ))
                })
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
