//! `Pipeline`: a [`StreamPlan`] made runnable over raw records, without Kafka.
//!
//! decode (JSON → Arrow) → scan (event time, window bounds, lateness, projection) →
//! operators in plan order → result batches. After each input, and on each
//! [`Pipeline::tick`] (idle partitions stop holding the watermark back as the clock
//! advances), the watermark is pushed through the operators so closed windows are emitted
//! (EMIT FINAL) and dropped.
//! The Kafka loop ([`crate::query_runner`]) and tests drive the same code.

use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use sluice_sql_planner::StreamPlan;

use crate::error::Result;
use crate::json_decoder::JsonDecoder;
use crate::operator::{self, ChangeBatch, Operator};
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
    /// Build the pipeline of `plan` for query `query_id`. Partitions that deliver nothing
    /// for longer than `idle_timeout` stop holding the watermark back.
    pub fn new(query_id: &str, plan: &StreamPlan, idle_timeout: Option<Duration>) -> Result<Self> {
        Ok(Self {
            query_id: query_id.to_string(),
            topic: plan.source.topic.clone(),
            decoder: JsonDecoder::new(plan.source.value_schema.clone()),
            scan: ScanStage::new(plan.source.clone(), idle_timeout)?,
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

    /// The query reads `partitions` from `now` on: until each delivers a record or goes
    /// idle, it holds the watermark back.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = i32>, now: Instant) {
        self.scan.assign(partitions, now);
    }

    /// How many groups (key × window) the operators hold.
    pub fn state_groups(&self) -> usize {
        self.operators.iter().map(|o| o.state_groups()).sum()
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
            .process(&decoded.batch, &rows, records, &mut skipped, now)?;
        for s in skipped {
            self.log_skip(stats, &records[rows[s.row]], s.reason, s.message);
        }
        let mut out = vec![];
        if scanned.num_rows() > 0 {
            self.run_from(0, ChangeBatch::rows(scanned), &mut out)?;
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
