//! `Pipeline`: a [`StreamPlan`] made runnable over raw records, without Kafka.
//!
//! decode (JSON → Arrow) → scan (event time, window bounds, lateness, projection) →
//! operators in plan order → result batches. After each input, and on each
//! [`Pipeline::tick`] (idle partitions stop holding the watermark back as the clock
//! advances), the watermark is pushed through the operators so closed windows are emitted
//! (EMIT FINAL) and dropped.
//! The Kafka loop ([`crate::query_runner`]) and tests drive the same code.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::Expr;
use sluice_sql_planner::window::WINDOW_COLUMNS;
use sluice_sql_planner::{StreamOperator, StreamPlan};

use crate::error::{ExecError, Result};
use crate::json_decoder::JsonDecoder;
use crate::operator::{self, ChangeBatch, Operator};
use crate::record::RawRecord;
use crate::scan::{ScanStage, Skipped};
use crate::state::StateChange;
use crate::stats::{ProcessingLogEntry, QueryStats, SkipReason};
use crate::watermark::StreamTimeCheckpoint;

/// A running plan's operators and state.
pub struct Pipeline {
    query_id: String,
    topic: String,
    decoder: JsonDecoder,
    scan: ScanStage,
    operators: Vec<Box<dyn Operator>>,
    output_schema: SchemaRef,
    last_watermark: Option<i64>,
    /// The stream time last handed out as a state change.
    checkpointed_time: Option<StreamTimeCheckpoint>,
}

/// Records of a batch decoded ahead of processing (see [`Pipeline::decode`]).
pub struct DecodedPart {
    /// One row per record decoded.
    batch: RecordBatch,
    /// Per row, its record's index in the batch.
    rows: Vec<usize>,
    /// Records that could not be decoded: index in the batch, and why.
    errors: Vec<(usize, String)>,
}

/// The changelog key of the stream time (per partition) and the watermark.
pub const STREAM_TIME_KEY: &[u8] = b"stream-time";

impl Pipeline {
    /// Build the pipeline of `plan` for query `query_id`. Partitions that deliver nothing
    /// for longer than `idle_timeout` stop holding the watermark back.
    pub fn new(query_id: &str, plan: &StreamPlan, idle_timeout: Option<Duration>) -> Result<Self> {
        let mut scan = ScanStage::new(plan.source.clone(), idle_timeout)?;
        if windows_only_passed_on(&plan.operators) {
            scan.fan_out();
        }
        Ok(Self {
            query_id: query_id.to_string(),
            topic: plan.source.topic.clone(),
            decoder: JsonDecoder::new(plan.source.value_schema.clone()),
            scan,
            operators: plan
                .operators
                .iter()
                .map(operator::build)
                .collect::<Result<_>>()?,
            output_schema: plan.output_schema.clone(),
            last_watermark: None,
            checkpointed_time: None,
        })
    }

    /// The schema of result batches.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// The query reads `partitions` from `now` on: until each delivers a record or goes
    /// idle, it holds the watermark back.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = i32>, now: Instant) {
        self.scan.assign(partitions, now);
    }

    /// The consumer holds exactly `assigned` of the source's partitions from `now` on;
    /// the others cannot deliver, so they hold the watermark back instead of going idle.
    pub fn set_assigned(&mut self, assigned: &std::collections::HashSet<i32>, now: Instant) {
        self.scan.set_assigned(assigned, now);
    }

    /// How many groups (key × window) the operators hold.
    pub fn state_groups(&self) -> usize {
        self.operators.iter().map(|o| o.state_groups()).sum()
    }

    /// The heap bytes the operators' state holds, as far as they count it (see
    /// [`Operator::state_bytes`]).
    pub fn state_bytes(&self) -> usize {
        self.operators.iter().map(|o| o.state_bytes()).sum()
    }

    /// Whether an operator keeps state that must survive a restart: then the query
    /// writes [`Pipeline::take_state_changes`] to a changelog.
    pub fn is_stateful(&self) -> bool {
        self.operators.iter().any(|o| o.is_stateful())
    }

    /// The changelog records for what changed since the last call: each stateful
    /// operator's changed entries, keyed `<operator index>:<entry key>`, and the stream
    /// time under [`STREAM_TIME_KEY`].
    pub fn take_state_changes(&mut self) -> Result<Vec<StateChange>> {
        let mut out = vec![];
        for (i, op) in self.operators.iter_mut().enumerate() {
            let prefix = format!("{i}:");
            for change in op.take_state_changes()? {
                let mut key = Vec::with_capacity(prefix.len() + change.key.len());
                key.extend_from_slice(prefix.as_bytes());
                key.extend_from_slice(&change.key);
                out.push(StateChange {
                    key,
                    value: change.value,
                });
            }
        }
        let stream_time = self.scan.checkpoint();
        if self.is_stateful() && self.checkpointed_time.as_ref() != Some(&stream_time) {
            out.push(StateChange {
                key: STREAM_TIME_KEY.to_vec(),
                value: Some(
                    serde_json::to_vec(&stream_time)
                        .map_err(|e| ExecError::State(format!("encoding stream time: {e}")))?,
                ),
            });
            self.checkpointed_time = Some(stream_time);
        }
        Ok(out)
    }

    /// The changelog records of every live state entry (with, maybe, deletions of
    /// entries already gone), and the stream time: a snapshot, which a changelog read
    /// back from nothing but it restores the same state.
    pub fn take_state_snapshot(&mut self) -> Result<Vec<StateChange>> {
        for op in &mut self.operators {
            op.mark_all_changed();
        }
        self.checkpointed_time = None;
        self.take_state_changes()
    }

    /// Rebuild the state of a pipeline that has processed nothing from the latest value
    /// of each changelog key (as [`Pipeline::take_state_changes`] wrote them), at `now`.
    pub fn restore(&mut self, latest: &HashMap<Vec<u8>, Vec<u8>>, now: Instant) -> Result<()> {
        let mut per_operator: Vec<Vec<(&[u8], &[u8])>> = vec![vec![]; self.operators.len()];
        for (key, value) in latest {
            if key.as_slice() == STREAM_TIME_KEY {
                let checkpoint: StreamTimeCheckpoint = serde_json::from_slice(value)
                    .map_err(|e| ExecError::State(format!("reading stream time: {e}")))?;
                self.scan.restore(&checkpoint, now);
                self.last_watermark = checkpoint.watermark;
                self.checkpointed_time = Some(checkpoint);
                continue;
            }
            let (index, entry_key) = key
                .iter()
                .position(|b| *b == b':')
                .and_then(|colon| {
                    let index = std::str::from_utf8(&key[..colon])
                        .ok()?
                        .parse::<usize>()
                        .ok()?;
                    Some((index, &key[colon + 1..]))
                })
                .filter(|(i, _)| *i < self.operators.len())
                .ok_or_else(|| {
                    ExecError::State(format!(
                        "changelog key {:?} names no operator of this query",
                        String::from_utf8_lossy(key)
                    ))
                })?;
            per_operator[index].push((entry_key, value));
        }
        for (op, entries) in self.operators.iter_mut().zip(per_operator) {
            if !entries.is_empty() {
                op.restore_state(&entries, self.last_watermark)?;
            }
        }
        Ok(())
    }

    /// [`Pipeline::process_at`] now.
    pub fn process(
        &mut self,
        records: &[RawRecord],
        stats: &QueryStats,
    ) -> Result<Vec<ChangeBatch>> {
        self.process_at(records, stats, Instant::now())
    }

    /// Process `records`, read in this order at `now`; returns the result batches.
    /// Records that cannot be decoded, or arrive after their window closed, are counted in
    /// `stats` and written to the processing log.
    pub fn process_at(
        &mut self,
        records: &[RawRecord],
        stats: &QueryStats,
        now: Instant,
    ) -> Result<Vec<ChangeBatch>> {
        let part = self.decode(records, 0)?;
        self.process_parts(records, vec![part], stats, now)
    }

    /// Decode `records`, the ones of a batch from its `first` on, ahead of
    /// [`Pipeline::process_parts`]: the Kafka loop decodes each chunk as it arrives, while
    /// the next is read. Decoding is the same for any split of the records.
    pub fn decode(&self, records: &[RawRecord], first: usize) -> Result<DecodedPart> {
        let with_value: Vec<usize> = (0..records.len())
            .filter(|&i| records[i].value.is_some())
            .collect();
        let values: Vec<&[u8]> = with_value
            .iter()
            .filter_map(|&i| records[i].value.as_deref())
            .collect();
        let decoded = self.decoder.decode(&values)?;
        Ok(DecodedPart {
            batch: decoded.batch,
            rows: decoded
                .rows
                .iter()
                .map(|&i| first + with_value[i])
                .collect(),
            errors: decoded
                .errors
                .into_iter()
                .map(|(i, message)| (first + with_value[i], message))
                .collect(),
        })
    }

    /// [`Pipeline::process_at`] of `records`, decoded in `parts` (in order, together
    /// covering them all).
    pub fn process_parts(
        &mut self,
        records: &[RawRecord],
        mut parts: Vec<DecodedPart>,
        stats: &QueryStats,
        now: Instant,
    ) -> Result<Vec<ChangeBatch>> {
        stats.add_in(records.len() as u64);
        for part in &mut parts {
            for (i, message) in std::mem::take(&mut part.errors) {
                self.log_skip(stats, &records[i], SkipReason::Malformed, message);
            }
        }
        let (batch, rows) = if parts.len() == 1 {
            let part = parts.remove(0);
            (part.batch, part.rows)
        } else {
            let batch = concat_batches(self.decoder.schema(), parts.iter().map(|p| &p.batch))
                .map_err(ExecError::arrow("joining decoded parts"))?;
            let rows = parts.into_iter().flat_map(|p| p.rows).collect();
            (batch, rows)
        };
        self.run_values(&batch, &rows, records, stats, now)
    }

    /// Process `values`, already decoded: row `i` came from `records[i]` (whose `value`
    /// is not read). This is [`Pipeline::process_at`] without the JSON decoding, for an
    /// in-process source (the engine-only benchmark, say); `stats` counts the rows as read.
    pub fn process_decoded(
        &mut self,
        values: &RecordBatch,
        records: &[RawRecord],
        stats: &QueryStats,
        now: Instant,
    ) -> Result<Vec<ChangeBatch>> {
        if values.num_rows() != records.len() {
            return Err(ExecError::internal(
                "pipeline",
                "a decoded batch needs one record per row",
            ));
        }
        stats.add_in(records.len() as u64);
        let rows: Vec<usize> = (0..records.len()).collect();
        self.run_values(values, &rows, records, stats, now)
    }

    /// Scan and run `values`, whose row `i` came from `records[rows[i]]`.
    fn run_values(
        &mut self,
        values: &RecordBatch,
        rows: &[usize],
        records: &[RawRecord],
        stats: &QueryStats,
        now: Instant,
    ) -> Result<Vec<ChangeBatch>> {
        let mut skipped: Vec<Skipped> = vec![];
        let scanned = self
            .scan
            .process(values, rows, records, &mut skipped, now)?;
        for s in skipped {
            self.log_skip(stats, &records[rows[s.row]], s.reason, s.message);
        }
        let mut out = vec![];
        if scanned.num_rows() > 0 {
            self.run_from(0, scanned, &mut out)?;
        }
        self.tick_into(now, &mut out)?;
        stats.set_state_groups(self.state_groups() as u64);
        Ok(out)
    }

    /// The clock reached `now` with no new records: partitions may have gone idle, so
    /// the watermark may advance and close windows.
    pub fn tick(&mut self, now: Instant, stats: &QueryStats) -> Result<Vec<ChangeBatch>> {
        let mut out = vec![];
        self.tick_into(now, &mut out)?;
        stats.set_state_groups(self.state_groups() as u64);
        Ok(out)
    }

    fn tick_into(&mut self, now: Instant, out: &mut Vec<ChangeBatch>) -> Result<()> {
        if let Some(wm) = self.scan.watermark(now) {
            if self.last_watermark != Some(wm) {
                self.last_watermark = Some(wm);
                self.advance_watermark(wm, out)?;
            }
        }
        Ok(())
    }

    /// The watermark the operators last saw.
    pub fn watermark(&self) -> Option<i64> {
        self.last_watermark
    }

    /// Close every window, as if the stream ended: EMIT FINAL results come out.
    pub fn finish(&mut self) -> Result<Vec<ChangeBatch>> {
        let mut out = vec![];
        self.advance_watermark(i64::MAX, &mut out)?;
        Ok(out)
    }

    fn advance_watermark(&mut self, wm: i64, out: &mut Vec<ChangeBatch>) -> Result<()> {
        for i in 0..self.operators.len() {
            if let Some(batch) = self.operators[i].advance_watermark(wm)? {
                self.run_from(i + 1, batch, out)?;
            }
        }
        Ok(())
    }

    fn run_from(
        &mut self,
        start: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let mut current = batch;
        for op in &mut self.operators[start..] {
            match op.process(current)? {
                Some(next) => current = next,
                None => return Ok(()),
            }
        }
        if current.num_rows() > 0 {
            out.push(current);
        }
        Ok(())
    }

    fn log_skip(
        &self,
        stats: &QueryStats,
        record: &RawRecord,
        reason: SkipReason,
        message: String,
    ) {
        stats.skip(
            &self.query_id,
            ProcessingLogEntry {
                reason,
                topic: self.topic.clone(),
                partition: record.partition,
                offset: record.offset,
                message,
            },
        );
    }
}

/// Whether the operators before the aggregation read no window column but to pass it
/// on as it is, and the aggregation reads them only as group columns: then a hopping
/// window's records may be scanned one row each, and the aggregation put each row in its
/// windows (see [`ScanStage::fan_out`]).
fn windows_only_passed_on(operators: &[StreamOperator]) -> bool {
    let reads_window = |e: &Expr| {
        e.column_refs()
            .iter()
            .any(|c| WINDOW_COLUMNS.contains(&c.name.as_str()))
    };
    for op in operators {
        match op {
            StreamOperator::Filter { predicate, .. } => {
                if reads_window(predicate) {
                    return false;
                }
            }
            StreamOperator::Project { exprs, output, .. } => {
                let passed_on = exprs.iter().zip(output.fields()).all(|(e, field)| {
                    !reads_window(e) || matches!(e, Expr::Column(c) if &c.name == field.name())
                });
                if !passed_on {
                    return false;
                }
            }
            // Its window bounds for the windows after a row's first are derived.
            StreamOperator::WindowAggregate {
                group_exprs,
                aggr_exprs,
                ..
            } => {
                return group_exprs
                    .iter()
                    .all(|e| !reads_window(e) || matches!(e, Expr::Column(_)))
                    && !aggr_exprs.iter().any(reads_window)
            }
        }
    }
    false
}
