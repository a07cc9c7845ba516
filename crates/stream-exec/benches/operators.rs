//! Criterion benchmarks of the executor's hot operators, each in isolation, so a
//! regression in one shows up by name. Nothing here asserts a time.
//!
//! Input: fraud-style JSON events such as
//! `{"card_id":"card-04217","merchant":"m-0017","amount":123.45,"country":"DE","ts":1764000000123}`
//! (about 95 bytes), with card ids drawn uniformly from 100,000 keys. Event time moves
//! forward 1–3 ms per event (2 ms on average) and each event is up to 50 ms out of order.
//! The data is seeded, so every run sees the same events. Batches hold 4096 records (the
//! Kafka loop's batches hold 1024 to 262,144); throughput is in events (criterion's `elem/s`).
//!
//! - `decode/4096`: [`JsonDecoder::decode`] of 4096 JSON values into one Arrow batch (its
//!   fast path, as these plain events take it); `decode/arrow_json/4096`: the same values
//!   through arrow-json alone, the path a batch the fast path gives up on takes.
//! - `window_aggregate/tumble_changes`, `…/tumble_final`, `…/session_changes`: a
//!   [`Pipeline`] for a `CREATE TABLE … AS SELECT card_id, COUNT(*), SUM(amount) … GROUP
//!   BY card_id` with a 1-minute tumbling window (EMIT CHANGES, EMIT FINAL) or a 30-second
//!   session window, fed already-decoded batches through [`Pipeline::process_decoded`]:
//!   scan (event time, window assignment, lateness), aggregation, and the watermark
//!   closing windows. One iteration is 25 batches (102,400 events, 205 s of event time).
//! - `materialize/tumble_changes`, `…/session_changes`, `…/hop_final`: a pass's results of
//!   those queries applied to the [`MaterializedTable`] pull queries read (one table across
//!   all iterations, keeping 10 minutes of windows instead of a day, so it stays bounded;
//!   a session that grows is a tombstone for its old row and a new row). Only
//!   `apply_encoded` is timed.
//! - `encode/4096`: [`json_encoder::encode_batch`] of 4096 `tumble_changes` result rows into
//!   Kafka keys (card id and window bounds) and JSON values.
//! - `read_back/tumble_changes`: what a restarted query does with its changelog's records
//!   ([`StateWriter::read_back`], then [`Pipeline::restore`]) at its longest: a snapshot of
//!   the steady `tumble_changes` state, then the frames of its state changes, batch after
//!   batch, until the next snapshot would be due.
//!
//! Steady state. Each window bench keeps one pipeline across all its iterations, warmed
//! before measuring, and the input goes on in event time: iteration `k` replays the same
//! 25 batches shifted by `k` × 205 s, so windows keep opening and closing and the state
//! neither starts empty nor grows. A pipeline rebuilt per iteration (`iter_batched`) would
//! measure a cold, growing hash table instead. For the state to stay bounded the windows
//! must close, so the queries give `GRACE PERIOD 3 MINUTES`: EMIT CHANGES's default grace
//! (24 h less the size) would keep a day of event time, more than the bench ever covers.
//! With 3 minutes about 100,000 groups are live at any time: some 26,000 cards per
//! 1-minute window times the four windows within their grace, or about 90,000 open
//! sessions. Each bench prints its count after warming up.
//! After each batch the pipeline's state changes are taken, outside the timed part, as a
//! persistent query does for its changelog: otherwise the operators' record of changed
//! groups would grow without end. Only `process_decoded` is timed (`iter_custom`).
//!
//! Run: `cargo bench -p sluice-stream-exec --bench operators` (a few minutes). Criterion
//! plans a window bench's samples by wall time, which includes the unmeasured state
//! changes (often more than the measured part), so it may warn that it cannot complete
//! 10 samples in 15 s; that is expected. A quicker, rougher run: `cargo bench -p
//! sluice-stream-exec --bench operators -- --warm-up-time 1 --measurement-time 3`, or
//! `-- --quick`. One bench: `… -- window_aggregate/tumble_final`. Criterion compares each
//! run with the one before it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::Int64Type;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_sql_planner::{QueryPlanner, StreamPlan};
use sluice_stream_exec::changelog::KeyedRecord;
use sluice_stream_exec::frames::{Frames, StateWriter};
use sluice_stream_exec::json_decoder::JsonDecoder;
use sluice_stream_exec::json_encoder;
use sluice_stream_exec::materialized::MaterializedTable;
use sluice_stream_exec::operator::ChangeBatch;
use sluice_stream_exec::state::StateChange;
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

const DDL: &str = "CREATE STREAM tx (card_id VARCHAR, merchant VARCHAR, amount DOUBLE, \
    country VARCHAR, ts BIGINT) WITH (KAFKA_TOPIC='tx', VALUE_FORMAT='JSON', TIMESTAMP='ts');";

const TUMBLE_CHANGES: &str = "CREATE TABLE t AS SELECT card_id, COUNT(*) AS n, \
    SUM(amount) AS total FROM tx \
    WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 3 MINUTES) GROUP BY card_id EMIT CHANGES;";

const TUMBLE_FINAL: &str = "CREATE TABLE t AS SELECT card_id, COUNT(*) AS n, \
    SUM(amount) AS total FROM tx \
    WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 3 MINUTES) GROUP BY card_id EMIT FINAL;";

const HOP_FINAL: &str = "CREATE TABLE t AS SELECT card_id, COUNT(*) AS n, \
    SUM(amount) AS total FROM tx \
    WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 20 SECONDS, GRACE PERIOD 3 MINUTES) \
    GROUP BY card_id EMIT FINAL;";

const SESSION_CHANGES: &str = "CREATE TABLE t AS SELECT card_id, COUNT(*) AS n, \
    SUM(amount) AS total FROM tx \
    WINDOW SESSION (30 SECONDS, GRACE PERIOD 3 MINUTES) GROUP BY card_id EMIT CHANGES;";

/// Records per batch: the Kafka loop's batch limit.
const BATCH: usize = 4096;
/// Batches per window-bench iteration.
const BATCHES_PER_ITER: usize = 25;
/// Distinct card ids.
const KEYS: u32 = 100_000;
/// Event time of the first event: 2025-11-24.
const START_MS: i64 = 1_764_000_000_000;
const COUNTRIES: [&str; 12] = [
    "DE", "FR", "NL", "ES", "IT", "PL", "SE", "GB", "US", "BR", "IN", "JP",
];

/// Plan `sql` (a CTAS) over the stream `ddl` declares, as the server does.
fn plan(ddl: &str, sql: &str) -> StreamPlan {
    QueryPlanner::new().plan_sql(ddl, sql).expect("plans")
}

/// The JSON values of `batches` × [`BATCH`] events, and the event time one past the last
/// (where a replay shifted by the span would continue).
fn events(batches: usize) -> (Vec<Vec<Vec<u8>>>, i64) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut clock = START_MS;
    let out = (0..batches)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    clock += rng.random_range(1..=3);
                    let ts = clock - rng.random_range(0..=50);
                    let cents: u32 = rng.random_range(100..=200_000);
                    format!(
                        r#"{{"card_id":"card-{:05}","merchant":"m-{:04}","amount":{}.{:02},"country":"{}","ts":{ts}}}"#,
                        rng.random_range(0..KEYS),
                        rng.random_range(0..5_000),
                        cents / 100,
                        cents % 100,
                        COUNTRIES[rng.random_range(0..COUNTRIES.len())],
                    )
                    .into_bytes()
                })
                .collect()
        })
        .collect();
    (out, clock + 2)
}

/// One iteration's input, decoded once, replayed later in event time.
struct Replay {
    batches: Vec<RecordBatch>,
    records: Vec<RawRecord>,
    ts_column: usize,
    span_ms: i64,
    pass: i64,
}

impl Replay {
    fn new(plan: &StreamPlan) -> Self {
        let (values, end) = events(BATCHES_PER_ITER);
        let decoder = JsonDecoder::new(plan.source.value_schema.clone());
        let batches = values
            .iter()
            .map(|batch| {
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                let decoded = decoder.decode(&refs).expect("decodes");
                assert!(decoded.errors.is_empty(), "the generated JSON is valid");
                decoded.batch
            })
            .collect();
        // The event time comes from `ts`, so the records only say where rows came from.
        let records = (0..BATCH as i64)
            .map(|offset| RawRecord {
                partition: 0,
                offset,
                timestamp_ms: None,
                value: None,
            })
            .collect();
        Self {
            batches,
            records,
            ts_column: plan
                .source
                .value_schema
                .index_of("ts")
                .expect("a ts column"),
            span_ms: end - START_MS,
            pass: 0,
        }
    }

    /// The next pass over the events, `span_ms` later than the one before.
    fn next_pass(&mut self) -> Vec<RecordBatch> {
        let shift = self.pass * self.span_ms;
        self.pass += 1;
        self.batches
            .iter()
            .map(|batch| {
                let ts = batch.column(self.ts_column).as_primitive::<Int64Type>();
                let shifted: ArrayRef = Arc::new(Int64Array::from_iter_values(
                    ts.values().iter().map(|t| t + shift),
                ));
                let mut columns = batch.columns().to_vec();
                columns[self.ts_column] = shifted;
                RecordBatch::try_new(batch.schema(), columns).expect("same schema")
            })
            .collect()
    }
}

/// A pipeline for `sql` with its input, run until its state is steady.
struct Running {
    pipeline: Pipeline,
    replay: Replay,
    stats: QueryStats,
    now: Instant,
}

impl Running {
    fn new(sql: &str) -> Self {
        let plan = plan(DDL, sql);
        let mut running = Self {
            pipeline: Pipeline::new("bench", &plan, None).expect("builds"),
            replay: Replay::new(&plan),
            stats: QueryStats::default(),
            // No idle timeout, so the clock does not matter.
            now: Instant::now(),
        };
        // Two passes (410 s of event time) fill the windows still within their grace.
        for _ in 0..2 {
            running.pass();
        }
        running
    }

    /// Process one pass; returns the time spent in `process_decoded` and its results.
    fn pass(&mut self) -> (Duration, Vec<ChangeBatch>) {
        self.pass_with(|_| {})
    }

    /// Process one pass, handing the state changes after each batch to `changes`.
    fn pass_with(
        &mut self,
        mut changes: impl FnMut(Vec<StateChange>),
    ) -> (Duration, Vec<ChangeBatch>) {
        let batches = self.replay.next_pass();
        let mut spent = Duration::ZERO;
        let mut results = vec![];
        for batch in &batches {
            let start = Instant::now();
            let out = self
                .pipeline
                .process_decoded(batch, &self.replay.records, &self.stats, self.now)
                .expect("processes");
            spent += start.elapsed();
            results.extend(out);
            // As a persistent query does after every batch; not what is measured.
            changes(black_box(
                self.pipeline.take_state_changes().expect("state changes"),
            ));
        }
        (spent, results)
    }
}

fn decode(c: &mut Criterion) {
    let plan = plan(DDL, TUMBLE_CHANGES);
    let decoder = JsonDecoder::new(plan.source.value_schema.clone());
    let (values, _) = events(1);
    let refs: Vec<&[u8]> = values[0].iter().map(Vec::as_slice).collect();
    let bytes: usize = refs.iter().map(|v| v.len()).sum();
    eprintln!(
        "decode: {BATCH} values, {} bytes each on average",
        bytes / BATCH
    );
    let fast = decoder.decode_fast(&refs).expect("decodes");
    assert!(fast.is_some(), "the fast path takes the generated events");
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::from_parameter(BATCH), |b| {
        b.iter(|| decoder.decode(black_box(&refs)).expect("decodes"))
    });
    group.bench_function(BenchmarkId::new("arrow_json", BATCH), |b| {
        b.iter(|| {
            decoder
                .decode_with_arrow_json(black_box(&refs))
                .expect("decodes")
        })
    });
    group.finish();
}

fn window_aggregate(c: &mut Criterion) {
    let mut group = c.benchmark_group("window_aggregate");
    // An iteration can take up to a second: flat samples, not a ramp.
    group
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements((BATCHES_PER_ITER * BATCH) as u64));
    for (name, sql) in [
        ("tumble_changes", TUMBLE_CHANGES),
        ("tumble_final", TUMBLE_FINAL),
        ("hop_final", HOP_FINAL),
        ("session_changes", SESSION_CHANGES),
    ] {
        // Built on first use: criterion calls the closure only for benches the
        // command-line filter selects, and warming up takes seconds.
        let mut running: Option<Running> = None;
        group.bench_function(name, |b| {
            let running = running.get_or_insert_with(|| {
                let running = Running::new(sql);
                eprintln!(
                    "window_aggregate/{name}: {} live groups after warming up, {} late records",
                    running.pipeline.state_groups(),
                    running.stats.snapshot().late_records
                );
                running
            });
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let (spent, results) = running.pass();
                        drop(black_box(results));
                        spent
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

fn materialize(c: &mut Criterion) {
    let mut group = c.benchmark_group("materialize");
    group
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements((BATCHES_PER_ITER * BATCH) as u64));
    for (name, sql) in [
        ("tumble_changes", TUMBLE_CHANGES),
        ("session_changes", SESSION_CHANGES),
        ("hop_final", HOP_FINAL),
    ] {
        let mut built: Option<(Running, Arc<MaterializedTable>, StreamPlan)> = None;
        group.bench_function(name, |b| {
            let (running, table, plan) = built.get_or_insert_with(|| {
                let plan = plan(DDL, sql);
                // A retention of 10 minutes (three passes) instead of a day, so the
                // table stays bounded and the bench measures its steady state.
                let window = plan.window_retention.map(|(end, _)| (end, 600_000));
                let table = Arc::new(
                    MaterializedTable::new(plan.output_schema.clone(), window).expect("table"),
                );
                table.restore().finish().expect("nothing to read back");
                (Running::new(sql), table, plan)
            });
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let (_, results) = running.pass();
                    let encoded: Vec<_> = results
                        .iter()
                        .map(|r| json_encoder::encode_batch(r, &plan.key_columns).expect("encodes"))
                        .collect();
                    let start = Instant::now();
                    for (batch, encoded) in results.iter().zip(&encoded) {
                        table.apply_encoded(batch, encoded).expect("applies");
                    }
                    spent += start.elapsed();
                }
                spent
            })
        });
        if let Some((_, table, _)) = &built {
            eprintln!("materialize/{name}: {} rows at the end", table.len());
        }
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let plan = plan(DDL, TUMBLE_CHANGES);
    let mut batch: Option<ChangeBatch> = None;
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::from_parameter(BATCH), |b| {
        let batch = batch.get_or_insert_with(|| tumble_results(BATCH));
        b.iter(|| json_encoder::encode_batch(black_box(batch), &plan.key_columns).expect("encodes"))
    });
    group.finish();
}

fn read_back(c: &mut Criterion) {
    let mut running = Running::new(TUMBLE_CHANGES);
    let mut frames = Frames::default();
    let snapshot = running.pipeline.take_state_snapshot().expect("a snapshot");
    let mut log: Vec<KeyedRecord> = vec![];
    let mut keep = |changes: Vec<StateChange>| {
        log.extend(changes.into_iter().map(|c| (c.key, c.value)));
    };
    keep(frames.pack_snapshot(&snapshot));
    while !frames.wants_snapshot() {
        running.pass_with(|changes| keep(frames.pack(&changes)));
    }
    let bytes: usize = log
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    eprintln!(
        "read_back: {} records, {} MB, from a snapshot of {} entries",
        log.len(),
        bytes >> 20,
        snapshot.len()
    );
    let plan = plan(DDL, TUMBLE_CHANGES);
    let mut group = c.benchmark_group("read_back");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("tumble_changes", |b| {
        b.iter_batched(
            || log.clone(),
            |log| {
                let (entries, writer) = StateWriter::read_back(log, true).expect("reads back");
                let mut pipeline = Pipeline::new("bench", &plan, None).expect("builds");
                pipeline
                    .restore(&entries, Instant::now())
                    .expect("restores");
                (pipeline, writer)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The first `n` result rows of `tumble_changes` in its steady state.
fn tumble_results(n: usize) -> ChangeBatch {
    let mut running = Running::new(TUMBLE_CHANGES);
    let (_, results) = running.pass();
    let rows: Vec<RecordBatch> = results.into_iter().map(|r| r.rows).collect();
    let all = concat_batches(running.pipeline.output_schema(), &rows).expect("concatenates");
    assert!(
        all.num_rows() >= n,
        "a pass gives {} result rows",
        all.num_rows()
    );
    ChangeBatch::rows(all.slice(0, n))
}

// Settings here are defaults that command-line options override (settings made on a
// benchmark group would not be).
criterion_group! {
    name = codecs;
    config = Criterion::default().sample_size(50);
    targets = decode, encode
}
criterion_group! {
    name = engine;
    config = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    targets = window_aggregate, materialize, read_back
}
criterion_main!(codecs, engine);
