//! `StreamPlan`: the planner's output and the only contract with the executor.
//!
//! A plan is a source, a chain of operators, and the output schema. Expressions stay
//! DataFusion logical expressions with the schema they are resolved against, so the
//! executor turns them into `PhysicalExpr`s without a second implementation of SQL.
//! `Display` prints the plan as `EXPLAIN` shows it, one operator per line, sink first.

use std::fmt;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::Expr;

use crate::catalog::EventTime;
use crate::statement::Emit;
use crate::timestamp_format::TimestampFormat;
use crate::window::{WindowKind, WindowSpec};

/// Where a plan reads: one stream's topic, decoded with the stream's schema.
#[derive(Debug, Clone)]
pub struct SourceScan {
    /// Upper-case stream name.
    pub stream: String,
    /// Its topic.
    pub topic: String,
    /// The value columns to decode.
    pub value_schema: SchemaRef,
    /// The schema queries see: value columns, `rowtime`, then window columns if windowed.
    pub scan_schema: SchemaRef,
    /// Columns of `scan_schema` the rest of the plan uses, if not all.
    pub projection: Option<Vec<usize>>,
    /// Where event time comes from.
    pub event_time: EventTime,
    /// How to read a VARCHAR time column.
    pub timestamp_format: Option<TimestampFormat>,
    /// The window assigned to each record, with the grace in force.
    pub window: Option<AssignedWindow>,
}

/// A window as the source assigns it: spec plus effective grace.
#[derive(Debug, Clone, Copy)]
pub struct AssignedWindow {
    /// The window's shape.
    pub spec: WindowSpec,
    /// The grace in force (given, or the default for the emit mode).
    pub grace_ms: i64,
}

/// One step of a stream plan, applied to every batch in order.
#[derive(Debug, Clone)]
pub enum StreamOperator {
    /// Keep rows for which `predicate` is true.
    Filter {
        /// Boolean expression over `input`.
        predicate: Expr,
        /// The schema `predicate` is resolved against.
        input: DFSchemaRef,
    },
    /// Compute `exprs` for each row.
    Project {
        /// One expression per output column.
        exprs: Vec<Expr>,
        /// The schema `exprs` are resolved against.
        input: DFSchemaRef,
        /// The output schema.
        output: DFSchemaRef,
    },
    /// Keyed aggregation per window (or over all time when the query has no window).
    WindowAggregate {
        /// Group expressions; window bound columns are among them when windowed.
        group_exprs: Vec<Expr>,
        /// Aggregate function expressions.
        aggr_exprs: Vec<Expr>,
        /// The schema both are resolved against.
        input: DFSchemaRef,
        /// Group columns then aggregate columns.
        output: DFSchemaRef,
        /// Position in `group_exprs` of `windowend`, when windowed.
        window_end: Option<usize>,
        /// The window and its grace, when windowed.
        window: Option<AssignedWindow>,
        /// When results are sent.
        emit: Emit,
        /// HAVING, over `output`: a row that fails it is not written, and a row written
        /// before that now fails it gets a tombstone.
        having: Option<Expr>,
    },
}

impl StreamOperator {
    /// The operator's name as EXPLAIN prints it; also its type name in the executor
    /// (`SessionAggregate` runs a `WindowAggregate` step with a SESSION window).
    pub fn name(&self) -> &'static str {
        match self {
            StreamOperator::Filter { .. } => "Filter",
            StreamOperator::Project { .. } => "Project",
            StreamOperator::WindowAggregate {
                window: Some(w), ..
            } if matches!(w.spec.kind, WindowKind::Session { .. }) => "SessionAggregate",
            StreamOperator::WindowAggregate { .. } => "WindowAggregate",
        }
    }
}

/// A continuous query, ready to run.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// What it reads.
    pub source: SourceScan,
    /// What it does, in order.
    pub operators: Vec<StreamOperator>,
    /// The schema of its result rows.
    pub output_schema: SchemaRef,
    /// Output columns that make the Kafka key of result records.
    pub key_columns: Vec<usize>,
    /// Whether the result is a table (an aggregation) or a stream.
    pub aggregates: bool,
    /// For windowed results: the output column with each row's window end (BIGINT or
    /// TIMESTAMP), and how long after the newest window end a window stays queryable.
    pub window_retention: Option<(usize, i64)>,
}

fn exprs(v: &[Expr]) -> String {
    v.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for StreamPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self
            .key_columns
            .iter()
            .map(|&i| self.output_schema.field(i).name().as_str())
            .collect();
        let columns: Vec<&str> = self
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        writeln!(
            f,
            "Output: columns=[{}] key=[{}]",
            columns.join(", "),
            keys.join(", ")
        )?;
        let mut depth = 1;
        for op in self.operators.iter().rev() {
            let pad = "  ".repeat(depth);
            match op {
                StreamOperator::Filter { predicate, .. } => {
                    writeln!(f, "{pad}Filter: {predicate}")?
                }
                StreamOperator::Project { exprs: e, .. } => {
                    writeln!(f, "{pad}Project: {}", exprs(e))?
                }
                StreamOperator::WindowAggregate {
                    group_exprs,
                    aggr_exprs,
                    window,
                    emit,
                    having,
                    ..
                } => {
                    write!(
                        f,
                        "{pad}{}: group=[{}] aggr=[{}]",
                        op.name(),
                        exprs(group_exprs),
                        exprs(aggr_exprs)
                    )?;
                    if let Some(w) = window {
                        write!(
                            f,
                            " window={} grace={}",
                            w.spec,
                            crate::window::ms(w.grace_ms)
                        )?;
                    }
                    write!(f, " emit={}", emit.as_str())?;
                    if let Some(h) = having {
                        write!(f, " having={h}")?;
                    }
                    writeln!(f)?;
                }
            }
            depth += 1;
        }
        let pad = "  ".repeat(depth);
        let time = match &self.source.event_time {
            EventTime::RecordTimestamp => "ROWTIME".to_string(),
            EventTime::Column(c) => c.clone(),
        };
        write!(
            f,
            "{pad}Source: stream={} topic={} time={time}",
            self.source.stream, self.source.topic
        )?;
        if let Some(format) = &self.source.timestamp_format {
            write!(f, " format='{}'", format.pattern.replace('\'', "''"))?;
        }
        if let Some(p) = &self.source.projection {
            let names: Vec<&str> = p
                .iter()
                .map(|&i| self.source.scan_schema.field(i).name().as_str())
                .collect();
            write!(f, " projection=[{}]", names.join(", "))?;
        }
        Ok(())
    }
}
