//! `Pipeline`: a [`StreamPlan`] made runnable over raw records, without Kafka.
//!
//! decode (JSON → Arrow) → scan (event time, window bounds, lateness, projection) →
//! operators in plan order → result batches. After each input the watermark is pushed
//! through the operators so closed windows are emitted (EMIT FINAL) and dropped.
//! The Kafka loop ([`crate::query_runner`]) and tests drive the same code.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use sluice_sql_planner::StreamPlan;

use crate::error::Result;
use crate::json_decoder::JsonDecoder;
use crate::operator::{self, Operator};
use crate::record::RawRecord;
use crate::scan::{ScanStage, Skipped};
use crate::stats::{ProcessingLogEntry, QueryStats, SkipReason};

/// A running plan's operators and state.
pub struct Pipeline {
    query_id: String,
    topic: String,
    decoder: JsonDecoder,
    scan: ScanStage,
    operators: Vec<Box<dyn Operator>>,
    output_schema: SchemaRef,
    last_watermark: Option<i64>,
}

impl Pipeline {
    /// Build the pipeline of `plan` for query `query_id`.
    pub fn new(query_id: &str, plan: &StreamPlan) -> Result<Self> {
        Ok(Self {
            query_id: query_id.to_string(),
            topic: plan.source.topic.clone(),
            decoder: JsonDecoder::new(plan.source.value_schema.clone()),
            scan: ScanStage::new(plan.source.clone())?,
            operators: plan
                .operators
                .iter()
                .map(operator::build)
                .collect::<Result<_>>()?,
            output_schema: plan.output_schema.clone(),
            last_watermark: None,
        })
    }

    /// The schema of result batches.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// Process `records`, read in this order; returns the result batches. Records that
    /// cannot be decoded, or arrive after their window closed, are counted in `stats`
    /// and written to the processing log.
    pub fn process(
        &mut self,
        records: &[RawRecord],
        stats: &QueryStats,
    ) -> Result<Vec<RecordBatch>> {
        stats.add_in(records.len() as u64);
        let with_value: Vec<usize> = (0..records.len())
            .filter(|&i| records[i].value.is_some())
            .collect();
        let values: Vec<&[u8]> = with_value
            .iter()
            .filter_map(|&i| records[i].value.as_deref())
            .collect();
        let decoded = self.decoder.decode(&values)?;
        for (i, message) in decoded.errors {
            self.log_skip(
                stats,
                &records[with_value[i]],
                SkipReason::Malformed,
                message,
            );
        }
        let rows: Vec<usize> = decoded.rows.iter().map(|&i| with_value[i]).collect();
        let mut skipped: Vec<Skipped> = vec![];
        let scanned = self
            .scan
            .process(&decoded.batch, &rows, records, &mut skipped)?;
        for s in skipped {
            self.log_skip(stats, &records[rows[s.row]], s.reason, s.message);
        }
        let mut out = vec![];
        if scanned.num_rows() > 0 {
            self.run_from(0, scanned, &mut out)?;
        }
        if let Some(wm) = self.scan.watermark() {
            if self.last_watermark != Some(wm) {
                self.last_watermark = Some(wm);
                self.advance_watermark(wm, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Close every window, as if the stream ended: EMIT FINAL results come out.
    pub fn finish(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        self.advance_watermark(i64::MAX, &mut out)?;
        Ok(out)
    }

    fn advance_watermark(&mut self, wm: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
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
        batch: RecordBatch,
        out: &mut Vec<RecordBatch>,
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
