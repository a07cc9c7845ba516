//! The scan stage: decoded values become the rows a query sees.
//!
//! It reads each record's event time, appends `rowtime` and, for windowed queries, the
//! window bound columns (one row per window for hopping windows; for sessions, whose bounds
//! only the aggregation knows, the record's own time), drops late records, and applies
//! the scan's projection.
//!
//! Hopping windows may instead be scanned one row per record ([`ScanStage::fan_out`]):
//! the row names the record's first open window, and the batch's
//! [`ChangeBatch::windows`](crate::operator::ChangeBatch) says how many windows from it
//! on the record is in, so the aggregation puts the row in each without the rows being
//! copied, their keys encoded and their arguments evaluated once per window.
//!
//! A record is late when the window it would go to has closed by the later of its
//! partition's stream time and the watermark: a time window at `end + grace`, a session
//! holding only the record once the watermark passes `t + gap + grace`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use sluice_sql_planner::{EventTime, SourceScan, TimestampFormat, WindowKind};

use crate::error::{ExecError, Result};
use crate::operator::ChangeBatch;
use crate::record::RawRecord;
use crate::stats::SkipReason;
use crate::watermark::{StreamTime, StreamTimeCheckpoint};

/// A record the scan skipped, by its index in the decoded batch.
#[derive(Debug)]
pub struct Skipped {
    /// Row of the decoded batch.
    pub row: usize,
    /// Why.
    pub reason: SkipReason,
    /// What was wrong.
    pub message: String,
}

/// Turns decoded value batches into scan batches.
pub struct ScanStage {
    scan: SourceScan,
    output_schema: SchemaRef,
    time_column: Option<usize>,
    stream_time: StreamTime,
    starts: Vec<i64>,
    /// Hopping windows scanned one row per record.
    fan_out: bool,
}

impl ScanStage {
    /// A scan stage for `scan`; partitions idle longer than `idle_timeout` stop holding
    /// the watermark back.
    pub fn new(scan: SourceScan, idle_timeout: Option<Duration>) -> Result<Self> {
        let time_column = match &scan.event_time {
            EventTime::RecordTimestamp => None,
            EventTime::Column(c) => Some(
                scan.value_schema
                    .index_of(c)
                    .map_err(ExecError::arrow("finding the time column"))?,
            ),
        };
        let output_schema = match &scan.projection {
            Some(p) => Arc::new(
                scan.scan_schema
                    .project(p)
                    .map_err(ExecError::arrow("projecting the scan schema"))?,
            ),
            None => scan.scan_schema.clone(),
        };
        Ok(Self {
            scan,
            output_schema,
            time_column,
            stream_time: StreamTime::new(idle_timeout),
            starts: Vec::with_capacity(4),
            fan_out: false,
        })
    }

    /// Scan hopping windows one row per record, with the windows it is in counted in
    /// the batch's `windows` (see the module docs). Only for a plan whose operators
    /// before the aggregation read no window column but to pass it on.
    pub fn fan_out(&mut self) {
        self.fan_out = matches!(
            self.scan.window.map(|w| w.spec.kind),
            Some(WindowKind::Hopping { .. })
        );
    }

    /// The watermark as of `now`.
    pub fn watermark(&mut self, now: Instant) -> Option<i64> {
        self.stream_time.watermark(now)
    }

    /// Stream time and watermark, to survive a restart.
    pub fn checkpoint(&self) -> StreamTimeCheckpoint {
        self.stream_time.checkpoint()
    }

    /// Continue from a checkpoint.
    pub fn restore(&mut self, checkpoint: &StreamTimeCheckpoint, now: Instant) {
        self.stream_time.restore(checkpoint, now);
    }

    /// The consumer holds exactly `assigned` from `now` on.
    pub fn set_assigned(&mut self, assigned: &std::collections::HashSet<i32>, now: Instant) {
        self.stream_time.set_assigned(assigned, now);
    }

    /// The query reads `partitions` from `now` on.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = i32>, now: Instant) {
        self.stream_time.assign(partitions, now);
    }

    /// The schema of the batches [`ScanStage::process`] returns.
    pub fn schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// Build the scan batch for `values`, whose row `i` came from `records[rows[i]]`.
    /// Skipped rows are appended to `skipped`.
    pub fn process(
        &mut self,
        values: &RecordBatch,
        rows: &[usize],
        records: &[RawRecord],
        skipped: &mut Vec<Skipped>,
        now: Instant,
    ) -> Result<ChangeBatch> {
        let watermark = self.stream_time.current().unwrap_or(i64::MIN);
        let times = self.event_times(values, rows, records, skipped)?;
        let window = self.scan.window;
        // Rows out per record: one, or one per hopping window.
        let per_record = match window {
            Some(w) if !self.fan_out => usize::try_from(w.spec.most_windows()).unwrap_or(1),
            _ => 1,
        };
        let mut windows: Vec<u32> = match self.fan_out {
            true => Vec::with_capacity(values.num_rows()),
            false => vec![],
        };
        let capacity = values.num_rows().saturating_mul(per_record);
        let mut picked: Vec<u32> = Vec::with_capacity(capacity);
        let mut rowtime: Vec<i64> = Vec::with_capacity(capacity);
        let mut window_start: Vec<i64> = match window {
            Some(_) => Vec::with_capacity(capacity),
            None => vec![],
        };
        for (row, ts) in times.iter().enumerate() {
            let Some(ts) = *ts else { continue };
            if ts < 0 {
                // Kafka has no timestamps before 1970, and windows start at 0.
                skipped.push(Skipped {
                    row,
                    reason: SkipReason::Malformed,
                    message: format!("event time {ts} is before 1970-01-01"),
                });
                continue;
            }
            let partition = records[rows[row]].partition;
            let stream_time = self.stream_time.observe(partition, ts, now);
            let threshold = stream_time.max(watermark);
            let Some(w) = &window else {
                picked.push(row as u32);
                rowtime.push(ts);
                continue;
            };
            // The windows the record goes to, and the watermark at which each closes.
            let mut closes_at = i64::MIN;
            let mut open = 0;
            if let WindowKind::Session { gap_ms } = w.spec.kind {
                closes_at = ts
                    .saturating_add(gap_ms)
                    .saturating_add(w.grace_ms)
                    .saturating_add(1);
                if closes_at > threshold {
                    picked.push(row as u32);
                    rowtime.push(ts);
                    window_start.push(ts);
                    open += 1;
                }
            } else {
                w.spec.window_starts(ts, &mut self.starts);
                let size = w.spec.size_ms();
                for &start in &self.starts {
                    let close = start.saturating_add(size).saturating_add(w.grace_ms);
                    closes_at = closes_at.max(close);
                    if close > threshold {
                        // The open windows are the last ones: they close in start order.
                        if !self.fan_out || open == 0 {
                            picked.push(row as u32);
                            rowtime.push(ts);
                            window_start.push(start);
                        }
                        open += 1;
                    }
                }
                if self.fan_out && open > 0 {
                    windows.push(open);
                }
            }
            if open == 0 && closes_at != i64::MIN {
                skipped.push(Skipped {
                    row,
                    reason: SkipReason::Late,
                    message: format!(
                        "late by {} ms: event time {ts}, its window closed at {closes_at} \
                         (stream time {stream_time}, watermark {}, grace {} ms)",
                        threshold.saturating_sub(closes_at),
                        if watermark == i64::MIN {
                            "none".to_string()
                        } else {
                            watermark.to_string()
                        },
                        w.grace_ms
                    ),
                });
            }
        }
        // Most batches keep every row once, in order: no copy needed then. Otherwise
        // only the value columns the projection keeps are copied (a hopping window
        // copies each row once per window).
        let identity = picked.len() == values.num_rows()
            && picked.iter().enumerate().all(|(i, &r)| r as usize == i);
        let picked = (!identity).then(|| UInt32Array::from(picked));
        let kept = |i: usize| match &self.scan.projection {
            Some(p) => p.contains(&i),
            None => true,
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(values.num_columns() + 5);
        for (i, column) in values.columns().iter().enumerate() {
            columns.push(match &picked {
                Some(picked) if kept(i) => take(column, picked, None)
                    .map_err(ExecError::arrow("selecting scanned rows"))?,
                // Not in the output: any array of the right type stands in.
                Some(_) => datafusion::arrow::array::new_empty_array(column.data_type()),
                None => column.clone(),
            });
        }
        columns.push(Arc::new(Int64Array::from(rowtime)));
        if let Some(w) = &window {
            let size = match w.spec.kind {
                WindowKind::Session { .. } => 0,
                _ => w.spec.size_ms(),
            };
            let end: Vec<i64> = window_start
                .iter()
                .map(|s| s.saturating_add(size))
                .collect();
            let (start, end) = (Int64Array::from(window_start), Int64Array::from(end));
            // The TIMESTAMP columns share the BIGINT columns' buffers.
            let start_ts = TimestampMillisecondArray::new(start.values().clone(), None);
            let end_ts = TimestampMillisecondArray::new(end.values().clone(), None);
            columns.push(Arc::new(start));
            columns.push(Arc::new(end));
            columns.push(Arc::new(start_ts));
            columns.push(Arc::new(end_ts));
        }
        let columns = match &self.scan.projection {
            Some(p) => p.iter().map(|&i| columns[i].clone()).collect(),
            None => columns,
        };
        let rows = RecordBatch::try_new(self.output_schema.clone(), columns)
            .map_err(ExecError::arrow("building the scan batch"))?;
        Ok(ChangeBatch {
            rows,
            tombstones: None,
            windows: self.fan_out.then_some(windows),
        })
    }

    /// Event time per decoded row in epoch ms; `None` (and a skip) when it has none.
    fn event_times(
        &self,
        values: &RecordBatch,
        rows: &[usize],
        records: &[RawRecord],
        skipped: &mut Vec<Skipped>,
    ) -> Result<Vec<Option<i64>>> {
        let Some(index) = self.time_column else {
            return Ok(rows
                .iter()
                .map(|&r| Some(records[r].timestamp_ms.unwrap_or(0)))
                .collect());
        };
        let column = values.column(index);
        let ms = match column.data_type() {
            DataType::Int64 => column.clone(),
            DataType::Timestamp(TimeUnit::Millisecond, _) => cast(column, &DataType::Int64)
                .map_err(ExecError::arrow("reading the time column"))?,
            DataType::Timestamp(_, _) => {
                let as_ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))
                    .map_err(ExecError::arrow("reading the time column"))?;
                cast(&as_ms, &DataType::Int64)
                    .map_err(ExecError::arrow("reading the time column"))?
            }
            DataType::Utf8 => {
                if let Some(format) = &self.scan.timestamp_format {
                    return Ok(parse_times(
                        column.as_string::<i32>(),
                        format,
                        &self.scan.value_schema.field(index).name().clone(),
                        skipped,
                    ));
                }
                return Err(ExecError::Arrow {
                    context: "reading the time column",
                    source: datafusion::arrow::error::ArrowError::InvalidArgumentError(
                        "a VARCHAR time column needs TIMESTAMP_FORMAT".to_string(),
                    ),
                });
            }
            other => {
                return Err(ExecError::Arrow {
                    context: "reading the time column",
                    source: datafusion::arrow::error::ArrowError::InvalidArgumentError(format!(
                        "time column has type {other}"
                    )),
                })
            }
        };
        let ms = ms.as_primitive::<Int64Type>();
        let name = self.scan.value_schema.field(index).name().clone();
        Ok((0..ms.len())
            .map(|row| {
                if ms.is_null(row) {
                    skipped.push(Skipped {
                        row,
                        reason: SkipReason::Malformed,
                        message: format!("the time column \"{name}\" is missing or null"),
                    });
                    None
                } else {
                    Some(ms.value(row))
                }
            })
            .collect())
    }
}

/// Event times of a VARCHAR column read with `format`; a value that does not match is
/// malformed.
fn parse_times(
    values: &datafusion::arrow::array::StringArray,
    format: &TimestampFormat,
    name: &str,
    skipped: &mut Vec<Skipped>,
) -> Vec<Option<i64>> {
    (0..values.len())
        .map(|row| {
            let parsed = if values.is_null(row) {
                Err(format!("the time column \"{name}\" is missing or null"))
            } else {
                parse_time(values.value(row), format).ok_or_else(|| {
                    format!(
                        "the time column \"{name}\" value {:?} does not match TIMESTAMP_FORMAT '{}'",
                        values.value(row),
                        format.pattern
                    )
                })
            };
            match parsed {
                Ok(ms) => Some(ms),
                Err(message) => {
                    skipped.push(Skipped {
                        row,
                        reason: SkipReason::Malformed,
                        message,
                    });
                    None
                }
            }
        })
        .collect()
}

/// One value in epoch ms: with the pattern's zone, else as UTC.
fn parse_time(text: &str, format: &TimestampFormat) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let f = format.strftime.as_str();
    if format.has_zone {
        // Java's X writes UTC as `Z`; chrono's %:z wants an offset.
        let text = match text.strip_suffix('Z') {
            Some(rest) => format!("{rest}+00:00"),
            None => text.to_string(),
        };
        return DateTime::parse_from_str(&text, f)
            .ok()
            .map(|t| t.timestamp_millis());
    }
    if format.has_time {
        return NaiveDateTime::parse_from_str(text, f)
            .ok()
            .map(|t| t.and_utc().timestamp_millis());
    }
    NaiveDate::parse_from_str(text, f)
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_times_are_read_with_their_zone_or_as_utc() {
        let iso = TimestampFormat::parse("yyyy-MM-dd'T'HH:mm:ss.SSSX").expect("valid");
        assert_eq!(parse_time("1970-01-01T00:00:01.500Z", &iso), Some(1_500));
        assert_eq!(
            parse_time("1970-01-01T01:00:01.500+01:00", &iso),
            Some(1_500)
        );
        let local = TimestampFormat::parse("dd/MM/yyyy HH:mm:ss").expect("valid");
        assert_eq!(parse_time("02/01/1970 00:00:00", &local), Some(86_400_000));
        let day = TimestampFormat::parse("yyyy-MM-dd").expect("valid");
        assert_eq!(parse_time("1970-01-03", &day), Some(2 * 86_400_000));
        assert_eq!(parse_time("yesterday", &day), None);
    }
}
