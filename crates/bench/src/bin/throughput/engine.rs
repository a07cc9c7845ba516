//! The engine-only mode: the same plans fed by an in-process generator, straight into
//! Arrow batches (no Kafka, no JSON), results dropped (Flink's `datagen` → `blackhole`).
//! One thread.

use std::time::Instant;

use anyhow::{Context, Result};
use sluice_sql_planner::{QueryPlanner, StreamPlan};
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

use crate::rss_mb;
use crate::workload::{arrow_batches, BenchQuery, Source};

/// Plan `query` as the server would, over its source declared on `topic`.
pub fn plan(query: &BenchQuery, topic: &str) -> Result<StreamPlan> {
    let sql = query.statement(&query.name.to_uppercase());
    QueryPlanner::new()
        .plan_sql(&query.source.ddl(topic), &sql)
        .with_context(|| format!("planning {sql}"))
}

/// What one engine-only run measured.
pub struct EngineResult {
    pub events: usize,
    pub seconds: f64,
    pub rows_out: usize,
    pub peak_groups: usize,
}

/// The input of a run, built before the clock starts.
pub struct Input {
    batches: Vec<(datafusion::arrow::array::RecordBatch, Vec<RawRecord>)>,
    events: usize,
}

/// `events` events of `source` in batches of `rows`.
pub fn input(query: &BenchQuery, events: usize, rows: usize, first_ts_ms: i64) -> Result<Input> {
    let plan = plan(query, "bench")?;
    let mut offset = 0i64;
    let batches = arrow_batches(
        query.source,
        &plan.source.value_schema,
        events,
        rows,
        first_ts_ms,
    )
    .into_iter()
    .map(|(batch, times)| {
        let records = times
            .into_iter()
            .map(|ts| {
                offset += 1;
                RawRecord {
                    partition: 0,
                    offset,
                    timestamp_ms: Some(ts),
                    value: None,
                }
            })
            .collect();
        (batch, records)
    })
    .collect();
    Ok(Input { batches, events })
}

/// Run `query` over `input` on this thread; the results are counted and dropped.
pub fn run(query: &BenchQuery, input: &Input) -> Result<EngineResult> {
    let plan = plan(query, "bench")?;
    let mut pipeline = Pipeline::new(query.name, &plan, None)?;
    pipeline.assign([0], Instant::now());
    let stats = QueryStats::default();
    let mut rows_out = 0;
    let mut peak_groups = 0;
    let started = Instant::now();
    for (batch, records) in &input.batches {
        for out in pipeline.process_decoded(batch, records, &stats, Instant::now())? {
            rows_out += out.num_rows();
        }
        peak_groups = peak_groups.max(pipeline.state_groups());
    }
    for out in pipeline.finish()? {
        rows_out += out.num_rows();
    }
    Ok(EngineResult {
        events: input.events,
        seconds: started.elapsed().as_secs_f64(),
        rows_out,
        peak_groups,
    })
}

/// Resident bytes per group of a TUMBLE COUNT+SUM aggregation holding 100,000 keys in
/// one window: the growth of the process's resident memory while one window's events
/// (600,000, six per key) go in, divided by the groups held. EMIT FINAL, so no results
/// are made meanwhile. An upper bound: it includes what the allocator keeps of freed
/// temporaries. Also the bytes the operator's data structures hold, counted from their
/// capacities ([`Pipeline::state_bytes`]), per group: what the allocator was asked for.
pub fn state_bytes_per_group(first_ts_ms: i64) -> Result<(usize, f64, f64)> {
    let query = BenchQuery {
        name: "state_size",
        source: Source::Fraud,
        sql: "CREATE TABLE {name} AS SELECT card_id, COUNT(*) AS n, SUM(amount) AS total \
              FROM tx WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY card_id EMIT FINAL;"
            .to_string(),
        engine_only: true,
    };
    // Start at a window start, so all 600,000 events fall in one window.
    let first = first_ts_ms - first_ts_ms.rem_euclid(60_000);
    let input = input(&query, 600_000, 4096, first)?;
    let plan = plan(&query, "bench")?;
    let mut pipeline = Pipeline::new(query.name, &plan, None)?;
    pipeline.assign([0], Instant::now());
    let stats = QueryStats::default();
    let before = rss_mb(std::process::id());
    for (batch, records) in &input.batches {
        pipeline.process_decoded(batch, records, &stats, Instant::now())?;
    }
    let after = rss_mb(std::process::id());
    let groups = pipeline.state_groups();
    Ok((
        groups,
        (after - before) * 1024.0 * 1024.0 / groups.max(1) as f64,
        pipeline.state_bytes() as f64 / groups.max(1) as f64,
    ))
}
