//! `WindowAggregateOperator`: keyed aggregation per window using DataFusion accumulators.
//!
//! Group keys (the GROUP BY values, window bounds among them) are encoded with arrow's
//! row format. Each group holds one DataFusion `Accumulator` per aggregate, fed with the
//! group's rows of each batch through `update_batch`. With `EMIT CHANGES` the groups a
//! batch touched are emitted after it; with `EMIT FINAL` a group is emitted once, when the
//! watermark passes its window's end plus grace. Either way closed windows are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Accumulator, Expr};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::PhysicalExpr;
use sluice_sql_planner::{Emit, StreamOperator};

use super::{physical, Operator};
use crate::error::{ExecError, Result};

const NAME: &str = "WindowAggregate";

struct Aggregate {
    function: Arc<AggregateFunctionExpr>,
    args: Vec<Arc<dyn PhysicalExpr>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
}

struct Group {
    accumulators: Vec<Box<dyn Accumulator>>,
}

/// Keyed, windowed aggregation. See the module docs.
pub struct WindowAggregateOperator {
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    aggregates: Vec<Aggregate>,
    converter: RowConverter,
    schema: SchemaRef,
    groups: HashMap<OwnedRow, Group>,
    /// Groups by window end, to close them in order; empty when not windowed.
    by_end: BTreeMap<i64, Vec<OwnedRow>>,
    window_end: Option<usize>,
    grace_ms: i64,
    emit: Emit,
}

impl WindowAggregateOperator {
    /// Build from a `StreamOperator::WindowAggregate` plan step.
    pub fn new(op: &StreamOperator) -> Result<Self> {
        let StreamOperator::WindowAggregate {
            group_exprs,
            aggr_exprs,
            input,
            output,
            window_end,
            window,
            emit,
        } = op
        else {
            return Err(ExecError::Evaluation {
                operator: NAME,
                source: datafusion::error::DataFusionError::Internal(
                    "not a WindowAggregate step".into(),
                ),
            });
        };
        let group = group_exprs
            .iter()
            .map(|e| physical(e, input, NAME))
            .collect::<Result<Vec<_>>>()?;
        let arrow_input = input.as_arrow();
        let fields = group
            .iter()
            .map(|e| {
                e.data_type(arrow_input)
                    .map(SortField::new)
                    .map_err(ExecError::eval(NAME))
            })
            .collect::<Result<Vec<_>>>()?;
        let converter =
            RowConverter::new(fields).map_err(ExecError::arrow("encoding group keys"))?;
        let aggregates = aggr_exprs
            .iter()
            .map(|e| {
                let props = ExecutionProps::new();
                let planning = Default::default();
                let mut builder =
                    LoweredAggregateBuilder::new(e, input, arrow_input, &props, &planning);
                if let Expr::Alias(a) = e {
                    builder = builder.with_name(a.name.clone());
                }
                let lowered = builder.build().map_err(ExecError::eval(NAME))?;
                let (function, filter) = (lowered.aggregate, lowered.filter);
                let args = function.expressions();
                Ok(Aggregate {
                    function,
                    args,
                    filter,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            group_exprs: group,
            aggregates,
            converter,
            schema: Arc::new(output.as_arrow().clone()),
            groups: HashMap::new(),
            by_end: BTreeMap::new(),
            window_end: *window_end,
            grace_ms: window.map_or(0, |w| w.grace_ms),
            emit: *emit,
        })
    }

    /// Number of groups (key × window) held in state.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    fn new_group(&self) -> Result<Group> {
        Ok(Group {
            accumulators: self
                .aggregates
                .iter()
                .map(|a| a.function.create_accumulator())
                .collect::<datafusion::error::Result<_>>()
                .map_err(ExecError::eval(NAME))?,
        })
    }

    /// The output rows of `keys`, in that order.
    fn emit_rows(&mut self, keys: &[OwnedRow]) -> Result<Option<RecordBatch>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let mut columns = self
            .converter
            .convert_rows(keys.iter().map(|k| k.row()))
            .map_err(ExecError::arrow("decoding group keys"))?;
        for i in 0..self.aggregates.len() {
            let values = keys
                .iter()
                .map(|k| {
                    self.groups
                        .get_mut(k)
                        .map_or(Ok(ScalarValue::Null), |g| g.accumulators[i].evaluate())
                })
                .collect::<datafusion::error::Result<Vec<_>>>()
                .map_err(ExecError::eval(NAME))?;
            let field = self.schema.field(self.group_exprs.len() + i);
            let array = ScalarValue::iter_to_array(values)
                .and_then(|a| {
                    if a.data_type() == field.data_type() {
                        Ok(a)
                    } else {
                        Ok(datafusion::arrow::compute::cast(&a, field.data_type())?)
                    }
                })
                .map_err(ExecError::eval(NAME))?;
            columns.push(array);
        }
        RecordBatch::try_new(self.schema.clone(), columns)
            .map(Some)
            .map_err(ExecError::arrow("building aggregate results"))
    }
}

impl Operator for WindowAggregateOperator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let n = batch.num_rows();
        let keys = self
            .group_exprs
            .iter()
            .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(ExecError::eval(NAME))?;
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(ExecError::arrow("encoding group keys"))?;
        // Rows of this batch per group, groups in order of first appearance.
        let mut batch_groups: HashMap<datafusion::arrow::row::Row<'_>, usize> = HashMap::new();
        let mut order: Vec<(datafusion::arrow::row::Row<'_>, Vec<u32>)> = vec![];
        for (i, row) in rows.iter().enumerate() {
            let slot = *batch_groups.entry(row).or_insert_with(|| {
                order.push((row, vec![]));
                order.len() - 1
            });
            order[slot].1.push(i as u32);
        }
        let args: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| {
                a.args
                    .iter()
                    .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<_>>>()
            })
            .collect::<datafusion::error::Result<_>>()
            .map_err(ExecError::eval(NAME))?;
        let filters: Vec<Option<BooleanArray>> = self
            .aggregates
            .iter()
            .map(|a| {
                a.filter
                    .as_ref()
                    .map(|f| {
                        f.evaluate(&batch)
                            .and_then(|v| v.into_array(n))
                            .map(|a| a.as_boolean().clone())
                    })
                    .transpose()
            })
            .collect::<datafusion::error::Result<_>>()
            .map_err(ExecError::eval(NAME))?;
        let window_ends = self
            .window_end
            .map(|i| keys[i].as_primitive::<Int64Type>().clone());
        let mut touched = Vec::with_capacity(order.len());
        for (row, indices) in order {
            let owned = row.owned();
            if !self.groups.contains_key(&owned) {
                let group = self.new_group()?;
                self.groups.insert(owned.clone(), group);
                if let Some(ends) = &window_ends {
                    let end = ends.value(indices[0] as usize);
                    self.by_end.entry(end).or_default().push(owned.clone());
                }
            }
            let group = self
                .groups
                .get_mut(&owned)
                .ok_or_else(|| ExecError::Evaluation {
                    operator: NAME,
                    source: datafusion::error::DataFusionError::Internal("group vanished".into()),
                })?;
            // One index array per group; only aggregates with FILTER (WHERE …) need their own.
            let all = UInt32Array::from(indices);
            for (a, acc) in group.accumulators.iter_mut().enumerate() {
                let filtered;
                let idx =
                    match &filters[a] {
                        Some(mask) => {
                            filtered =
                                UInt32Array::from_iter_values(all.values().iter().copied().filter(
                                    |&i| mask.is_valid(i as usize) && mask.value(i as usize),
                                ));
                            &filtered
                        }
                        None => &all,
                    };
                if idx.is_empty() {
                    continue;
                }
                let values = args[a]
                    .iter()
                    .map(|arr| take(arr.as_ref(), idx, None))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(ExecError::arrow("selecting group rows"))?;
                acc.update_batch(&values).map_err(ExecError::eval(NAME))?;
            }
            touched.push(owned);
        }
        match self.emit {
            Emit::Changes => self.emit_rows(&touched),
            Emit::Final => Ok(None),
        }
    }

    fn advance_watermark(&mut self, watermark_ms: i64) -> Result<Option<RecordBatch>> {
        let mut closed = vec![];
        while let Some(entry) = self.by_end.first_entry() {
            if entry.key().saturating_add(self.grace_ms) > watermark_ms {
                break;
            }
            closed.extend(entry.remove());
        }
        let out = match self.emit {
            Emit::Final => self.emit_rows(&closed)?,
            Emit::Changes => None,
        };
        for key in closed {
            self.groups.remove(&key);
        }
        Ok(out)
    }
}
