//! Planning a continuous query: DataFusion's `SqlToRel` and optimizer, then lowering the
//! optimized `LogicalPlan` into a [`StreamPlan`].
//!
//! Streams are exposed to DataFusion as table sources whose schema adds the pseudo
//! columns (`rowtime`, and the window bounds when the query is windowed), so type
//! checking, name resolution and every built-in function come from DataFusion.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DFSchemaRef, ScalarValue, TableReference};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::planner::ExprPlanner;
use datafusion::logical_expr::{
    AggregateUDF, Expr, HigherOrderUDF, LogicalPlan, ScalarUDF, TableProviderFilterPushDown,
    TableSource, WindowUDF,
};
use datafusion::sql::planner::{ContextProvider, ParserOptions, SqlToRel};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::catalog::{Catalog, EventTime, SourceDef, SourceKind, ROWTIME};
use crate::error::{PlanError, PlanErrorKind, Result};
use crate::statement::{ContinuousQuery, Emit};
use crate::stream_plan::{AssignedWindow, SourceScan, StreamOperator, StreamPlan};
use crate::timestamp_format::TimestampFormat;
use crate::window::{WindowKind, WINDOWEND, WINDOWSTART, WINDOW_COLUMNS, WINDOW_END, WINDOW_START};

/// Plans continuous queries against a catalog. Holds DataFusion's function registry, so
/// make one and reuse it.
pub struct QueryPlanner {
    state: SessionState,
}

impl Default for QueryPlanner {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for QueryPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryPlanner")
    }
}

/// A stream as DataFusion sees it while planning: a schema that takes no pushed-down
/// filters, so every filter stays a plan node the executor runs.
#[derive(Debug)]
struct StreamSource {
    schema: SchemaRef,
}

impl TableSource for StreamSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }
}

/// A windowed table's default retention, as ksqlDB's: one day (or size + grace if longer).
const DAY_MS: i64 = 86_400_000;

/// Resolves the tables a query names; the only way a query reaches data.
pub type TableResolver<'a> =
    &'a dyn Fn(&TableReference) -> datafusion::error::Result<Arc<dyn TableSource>>;

struct Provider<'a> {
    state: &'a SessionState,
    resolve: TableResolver<'a>,
}

impl ContextProvider for Provider<'_> {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion::error::Result<Arc<dyn TableSource>> {
        (self.resolve)(&name)
    }

    fn get_table_function_source(
        &self,
        name: &str,
        _args: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn TableSource>> {
        Err(datafusion::error::DataFusionError::Plan(format!(
            "table function {name}(…) is not available: queries read Sluice's streams and \
             tables only, never files"
        )))
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.state.scalar_functions().get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.state.higher_order_functions().get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.state.aggregate_functions().get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        self.state.config_options()
    }

    fn udf_names(&self) -> Vec<String> {
        self.state.scalar_functions().keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.state
            .higher_order_functions()
            .keys()
            .cloned()
            .collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
}

impl QueryPlanner {
    /// A planner with all of DataFusion's built-in functions.
    pub fn new() -> Self {
        let mut state = SessionStateBuilder::new().with_default_features().build();
        crate::functions::register(&mut state)
            .expect("registering functions with fresh names cannot fail");
        Self { state }
    }

    /// DataFusion's session state: its functions and configuration.
    pub fn session_state(&self) -> &SessionState {
        &self.state
    }

    /// Plan `sql` (one `CREATE STREAM|TABLE … AS SELECT`) over the one stream `ddl`
    /// declares (`CREATE STREAM … WITH (…)`): what tests and benchmarks need, without a
    /// server's catalog.
    pub fn plan_sql(&self, ddl: &str, sql: &str) -> Result<StreamPlan> {
        let crate::Statement::CreateSource {
            name,
            columns,
            properties,
            ..
        } = crate::parse_statements(ddl)?.remove(0).statement
        else {
            return Err(PlanError::invalid("expected a CREATE STREAM statement"));
        };
        let mut catalog = Catalog::new();
        catalog.insert(
            crate::ddl::declare_source(SourceKind::Stream, &name, &columns, properties, ddl)?
                .source,
        )?;
        let crate::Statement::CreateAsSelect { query, .. } =
            crate::parse_statements(sql)?.remove(0).statement
        else {
            return Err(PlanError::invalid(
                "expected a CREATE … AS SELECT statement",
            ));
        };
        self.plan(&catalog, &query)
    }

    /// Plan `query` over the streams of `catalog`.
    pub fn plan(&self, catalog: &Catalog, query: &ContinuousQuery) -> Result<StreamPlan> {
        let windowed = query.window.is_some();
        let used: RefCell<Vec<SourceDef>> = RefCell::new(vec![]);
        let resolve = |name: &TableReference| -> datafusion::error::Result<Arc<dyn TableSource>> {
            let source = catalog
                .get(name.table())
                .ok_or_else(|| {
                    datafusion::error::DataFusionError::Plan(format!(
                        "stream or table \"{}\" does not exist",
                        name.table().to_ascii_uppercase()
                    ))
                })?
                .clone();
            let schema = source.planning_schema(windowed);
            used.borrow_mut().push(source);
            Ok(Arc::new(StreamSource { schema }))
        };
        let logical =
            logical_plan(&self.state, &query.query, &resolve).map_err(|e| e.at(query.position))?;
        let used = used.into_inner();
        let source = match used.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(PlanError::unsupported(
                    "a continuous query must read from a stream (FROM name)",
                )
                .at(query.position))
            }
            _ => {
                return Err(PlanError::unsupported(
                    "joins are not supported yet: a query may read one stream",
                )
                .at(query.position))
            }
        };
        if source.kind == SourceKind::Table {
            return Err(PlanError::unsupported(format!(
                "\"{}\" is a table; continuous queries can read only streams for now",
                source.name
            ))
            .at(query.position));
        }
        // now() and friends become the statement's planning time, as in a DataFusion query.
        let mut state = self.state.clone();
        state.mark_start_execution();
        let optimized = state
            .optimize(&logical)
            .map_err(PlanError::from_datafusion)?;
        let emit = query.emit.unwrap_or(Emit::Changes);
        if emit == Emit::Final && query.window.is_none() {
            return Err(PlanError::invalid(
                "EMIT FINAL is only supported for windowed aggregations",
            )
            .at(query.position));
        }
        let event_time = match &query.window_time_column {
            Some(c) if c == ROWTIME => EventTime::RecordTimestamp,
            Some(c) => {
                check_time_column(&source, c)?;
                EventTime::Column(c.clone())
            }
            None => source.event_time.clone(),
        };
        let window = query.window.map(|spec| AssignedWindow {
            spec,
            grace_ms: spec.effective_grace_ms(emit),
        });
        let mut lowering = Lowering {
            source: None,
            operators: vec![],
            keys: vec![],
            window_keys: vec![],
            window_end_keys: vec![],
            aggregates: false,
            window,
            emit,
        };
        lowering.lower(&optimized)?;
        let scan = lowering
            .source
            .ok_or_else(|| PlanError::unsupported("the query reads no stream"))?;
        let (projection, scan_schema) = scan;
        let output_schema: SchemaRef = Arc::new(optimized.schema().as_arrow().clone());
        if lowering.aggregates {
            check_unique_names(&output_schema)?;
        }
        Ok(StreamPlan {
            source: SourceScan {
                stream: source.name.clone(),
                topic: source.topic.clone(),
                value_schema: source.schema.clone(),
                scan_schema,
                projection,
                event_time,
                timestamp_format: source
                    .timestamp_format
                    .as_deref()
                    .map(TimestampFormat::parse)
                    .transpose()?,
                window,
            },
            operators: lowering.operators,
            output_schema,
            // A time window is named by its start; a session, whose end moves, by both.
            key_columns: lowering
                .keys
                .into_iter()
                .chain(lowering.window_keys.first().copied())
                .chain(lowering.window_end_keys.first().copied().filter(|_| {
                    matches!(
                        window.map(|w| w.spec.kind),
                        Some(WindowKind::Session { .. })
                    )
                }))
                .collect(),
            aggregates: lowering.aggregates,
            window_retention: window.and_then(|w| {
                let end = lowering.window_end_keys.first().copied()?;
                let retention = w
                    .spec
                    .retention_ms
                    .unwrap_or(DAY_MS)
                    .max(w.spec.size_ms().saturating_add(w.grace_ms));
                Some((end, retention))
            }),
        })
    }
}

/// DataFusion's logical plan of a SELECT, reading only the tables `resolve` hands out:
/// there is no other catalog, no table function and no file behind it.
pub fn logical_plan(
    state: &SessionState,
    query: &datafusion::sql::sqlparser::ast::Query,
    resolve: TableResolver<'_>,
) -> Result<LogicalPlan> {
    let provider = Provider { state, resolve };
    let mut options = ParserOptions::new();
    options.map_string_types_to_utf8view = false;
    options.collect_spans = true;
    SqlToRel::new_with_options(&provider, options)
        .sql_statement_to_plan(SqlStatement::Query(Box::new(query.clone())))
        .map_err(PlanError::from_datafusion)
}

fn check_unique_names(schema: &Schema) -> Result<()> {
    let mut seen = HashMap::new();
    for f in schema.fields() {
        if seen.insert(f.name().to_ascii_lowercase(), ()).is_some() {
            return Err(PlanError::invalid(format!(
                "the result has two columns named \"{}\"; give one an alias with AS",
                f.name()
            )));
        }
    }
    Ok(())
}

/// A time column must be a BIGINT or TIMESTAMP value column, or VARCHAR when the source
/// has a `TIMESTAMP_FORMAT`.
pub fn check_time_column(source: &SourceDef, column: &str) -> Result<()> {
    let field = source
        .schema
        .fields()
        .iter()
        .find(|f| f.name() == column)
        .ok_or_else(|| {
            PlanError::not_found(format!(
                "column \"{column}\" does not exist in stream \"{}\"",
                source.name
            ))
        })?;
    match field.data_type() {
        DataType::Int64 | DataType::Timestamp(_, _) => Ok(()),
        DataType::Utf8 if source.timestamp_format.is_some() => Ok(()),
        DataType::Utf8 => Err(PlanError::invalid(format!(
            "time column \"{column}\" is VARCHAR; give its pattern with TIMESTAMP_FORMAT, \
             e.g. TIMESTAMP_FORMAT='yyyy-MM-dd''T''HH:mm:ssX'"
        ))),
        other => Err(PlanError::invalid(format!(
            "time column \"{column}\" must be BIGINT (epoch milliseconds), TIMESTAMP, or VARCHAR with TIMESTAMP_FORMAT, not {other}"
        ))),
    }
}

struct Lowering {
    /// Projection of the scan and the full scan schema.
    source: Option<(Option<Vec<usize>>, SchemaRef)>,
    operators: Vec<StreamOperator>,
    /// Positions of key columns in the current operator's output.
    keys: Vec<usize>,
    /// Positions of the window start columns (`windowstart`, `window_start`); the first
    /// that reaches the output joins the key.
    window_keys: Vec<usize>,
    /// Positions of the window end columns; for sessions the first joins the key.
    window_end_keys: Vec<usize>,
    aggregates: bool,
    window: Option<AssignedWindow>,
    emit: Emit,
}

impl Lowering {
    fn lower(&mut self, plan: &LogicalPlan) -> Result<()> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return Err(PlanError::new(
                        PlanErrorKind::Internal,
                        "the optimizer pushed work into the scan; this is a bug, please report it",
                    ));
                }
                let schema = scan.source.schema();
                self.source = Some((scan.projection.clone(), schema));
            }
            LogicalPlan::SubqueryAlias(a) => self.lower(&a.input)?,
            LogicalPlan::Filter(f) => {
                self.lower(&f.input)?;
                if !self.absorb_having(&f.predicate)? {
                    self.operators.push(StreamOperator::Filter {
                        predicate: f.predicate.clone(),
                        input: f.input.schema().clone(),
                    });
                }
            }
            LogicalPlan::Projection(p) => {
                self.lower(&p.input)?;
                let input = p.input.schema().clone();
                let follow = |keys: &[usize]| -> Vec<usize> {
                    keys.iter()
                        .filter_map(|&k| find_column(&p.expr, &input, k))
                        .collect()
                };
                self.keys = follow(&self.keys);
                self.window_keys = follow(&self.window_keys);
                self.window_end_keys = follow(&self.window_end_keys);
                self.operators.push(StreamOperator::Project {
                    exprs: p.expr.clone(),
                    input,
                    output: p.schema.clone(),
                });
            }
            LogicalPlan::Aggregate(a) => {
                self.lower(&a.input)?;
                if self.aggregates {
                    return Err(PlanError::unsupported(
                        "an aggregation over an aggregation is not supported",
                    ));
                }
                self.aggregates = true;
                a.aggr_expr.iter().try_for_each(check_topk)?;
                let input = a.input.schema().clone();
                let group_name = |e: &Expr| match e {
                    Expr::Column(c) => Some(c.name.clone()),
                    _ => None,
                };
                let window_end = a
                    .group_expr
                    .iter()
                    .position(|e| group_name(e).as_deref() == Some(WINDOWEND));
                if self.window.is_some() != window_end.is_some() {
                    return Err(PlanError::new(
                        PlanErrorKind::Internal,
                        "the window columns are missing from GROUP BY; this is a bug, please report it",
                    ));
                }
                // The key: every group column except the window bounds, then the window start.
                self.keys = a
                    .group_expr
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        !group_name(e).is_some_and(|n| WINDOW_COLUMNS.contains(&n.as_str()))
                    })
                    .map(|(i, _)| i)
                    .collect();
                self.window_keys = a
                    .group_expr
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        matches!(group_name(e).as_deref(), Some(WINDOWSTART) | Some(WINDOW_START))
                    })
                    .map(|(i, _)| i)
                    .collect();
                self.window_end_keys = a
                    .group_expr
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        matches!(group_name(e).as_deref(), Some(WINDOWEND) | Some(WINDOW_END))
                    })
                    .map(|(i, _)| i)
                    .collect();
                self.operators.push(StreamOperator::WindowAggregate {
                    group_exprs: a.group_expr.clone(),
                    aggr_exprs: a.aggr_expr.clone(),
                    input,
                    output: a.schema.clone(),
                    window_end,
                    window: self.window,
                    emit: self.emit,
                    having: None,
                });
            }
            LogicalPlan::Sort(_) => {
                return Err(PlanError::unsupported(
                    "ORDER BY has no meaning on an unbounded stream; remove it",
                ))
            }
            LogicalPlan::Limit(_) => {
                return Err(PlanError::unsupported(
                    "LIMIT is not supported in persistent queries",
                ))
            }
            LogicalPlan::Join(_) => {
                return Err(PlanError::unsupported("joins are not supported yet"))
            }
            LogicalPlan::Window(_) => {
                return Err(PlanError::unsupported(
                    "OVER (…) window functions are not supported on streams; use WINDOW or GROUP BY TUMBLE(…)",
                ))
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                return Err(PlanError::unsupported(
                    "the query must read from a stream (its WHERE clause may be always false)",
                ))
            }
            other => {
                return Err(PlanError::unsupported(format!(
                    "{} is not supported in a continuous query",
                    other.display()
                )))
            }
        }
        Ok(())
    }
}

/// `TOPK(col, k)` needs a positive integer literal `k`; checked here so a bad `k` fails
/// the statement, not the running query.
fn check_topk(e: &Expr) -> Result<()> {
    let e = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        other => other,
    };
    if let Expr::AggregateFunction(f) = e {
        if f.func.name() == "topk" {
            let k = match f.params.args.get(1) {
                Some(Expr::Literal(v, _)) => match v {
                    ScalarValue::Int64(Some(k)) => Some(*k),
                    ScalarValue::Int32(Some(k)) => Some(i64::from(*k)),
                    _ => None,
                },
                _ => None,
            };
            if k.is_none_or(|k| k <= 0) {
                return Err(PlanError::invalid(
                    "the second argument of TOPK must be a positive integer literal, as in TOPK(amount, 3)",
                ));
            }
        }
    }
    Ok(())
}

impl Lowering {
    /// A filter right after an aggregation (through projections only) is its HAVING: it
    /// moves into the aggregation, rewritten over the aggregation's output, so the
    /// aggregation knows which rows it wrote and can delete those that stop passing.
    fn absorb_having(&mut self, predicate: &Expr) -> Result<bool> {
        let Some(at) = self
            .operators
            .iter()
            .rposition(|o| matches!(o, StreamOperator::WindowAggregate { .. }))
        else {
            return Ok(false);
        };
        let mut predicate = predicate.clone();
        for op in self.operators[at + 1..].iter().rev() {
            let StreamOperator::Project { exprs, output, .. } = op else {
                return Ok(false);
            };
            predicate = inline_projection(predicate, exprs, output)?;
        }
        if let StreamOperator::WindowAggregate { having, .. } = &mut self.operators[at] {
            *having = Some(match having.take() {
                Some(h) => h.and(predicate),
                None => predicate,
            });
        }
        Ok(true)
    }
}

/// `predicate` over a projection's `output`, rewritten over its input: each column
/// reference replaced by the expression that computes it.
fn inline_projection(predicate: Expr, exprs: &[Expr], output: &DFSchemaRef) -> Result<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    predicate
        .transform(|e| {
            if let Expr::Column(c) = &e {
                if let Ok(i) = output.index_of_column(c) {
                    return Ok(Transformed::yes(exprs[i].clone().unalias()));
                }
            }
            Ok(Transformed::no(e))
        })
        .map(|t| t.data)
        .map_err(PlanError::from_datafusion)
}

/// The position in `exprs` of a plain reference to column `index` of `input`.
fn find_column(exprs: &[Expr], input: &DFSchemaRef, index: usize) -> Option<usize> {
    let (qualifier, field) = input.qualified_field(index);
    exprs.iter().position(|e| {
        let e = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        matches!(e, Expr::Column(c) if c.name == *field.name()
            && (c.relation.is_none() || c.relation.as_ref() == qualifier))
    })
}

/// Build the value schema of a new stream from `CREATE STREAM`'s columns.
pub fn value_schema(columns: &[(String, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}
