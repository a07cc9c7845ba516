//! Tests of the ksqlDB aggregates: accumulators directly, merges, and SQL through DataFusion.

use super::*;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::Schema;
use datafusion::assert_batches_sorted_eq;
use datafusion::datasource::MemTable;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

fn ints(values: &[Option<i64>]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn int_list(values: &[Option<i64>]) -> ScalarValue {
    list_scalar(ints(values), &DataType::Int64).unwrap()
}

/// `acc`'s state as the arrays `merge_batch` takes.
fn state_arrays(acc: &mut dyn Accumulator) -> Vec<ArrayRef> {
    acc.state()
        .unwrap()
        .iter()
        .map(|s| s.to_array().unwrap())
        .collect()
}

fn by_offset(which: Which, batches: &[&[Option<i64>]]) -> ByOffsetAccumulator {
    let mut acc = ByOffsetAccumulator::try_new(which, &DataType::Int64).unwrap();
    for batch in batches {
        acc.update_batch(&[ints(batch)]).unwrap();
    }
    acc
}

#[test]
fn latest_by_offset_keeps_last_non_null() {
    let mut acc = by_offset(
        Which::Latest,
        &[&[Some(1), Some(2), None], &[Some(3), None]],
    );
    assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int64(Some(3)));
    acc.update_batch(&[ints(&[None, None])]).unwrap();
    assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int64(Some(3)));
    assert!(acc.size() > 0);
}

#[test]
fn latest_by_offset_is_null_without_values() {
    let mut acc = by_offset(Which::Latest, &[&[None], &[]]);
    assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int64(None));
    assert_eq!(
        acc.state().unwrap(),
        vec![ScalarValue::Int64(None), ScalarValue::UInt64(None)]
    );
}

#[test]
fn earliest_by_offset_keeps_first_non_null() {
    let mut acc = by_offset(Which::Earliest, &[&[None, Some(4), Some(5)], &[Some(6)]]);
    assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int64(Some(4)));
    let mut empty = by_offset(Which::Earliest, &[&[None]]);
    assert_eq!(empty.evaluate().unwrap(), ScalarValue::Int64(None));
}

/// Merges `newer` into `older` and `older` into `newer` and returns both results.
fn merged_both_ways(which: Which) -> (ScalarValue, ScalarValue) {
    let mut older = by_offset(which, &[&[Some(1), Some(2)]]);
    let mut newer = by_offset(which, &[&[Some(3), None]]);
    let older_state = state_arrays(&mut older);
    let newer_state = state_arrays(&mut newer);
    older.merge_batch(&newer_state).unwrap();
    newer.merge_batch(&older_state).unwrap();
    (older.evaluate().unwrap(), newer.evaluate().unwrap())
}

#[test]
fn latest_by_offset_merge_follows_stamps() {
    let (into_older, into_newer) = merged_both_ways(Which::Latest);
    assert_eq!(into_older, ScalarValue::Int64(Some(3)));
    assert_eq!(into_newer, ScalarValue::Int64(Some(3)));
}

#[test]
fn earliest_by_offset_merge_follows_stamps() {
    let (into_older, into_newer) = merged_both_ways(Which::Earliest);
    assert_eq!(into_older, ScalarValue::Int64(Some(1)));
    assert_eq!(into_newer, ScalarValue::Int64(Some(1)));
}

#[test]
fn by_offset_merge_ignores_empty_states() {
    for which in [Which::Latest, Which::Earliest] {
        let mut acc = by_offset(which, &[&[Some(7)]]);
        let mut empty = by_offset(which, &[&[None]]);
        acc.merge_batch(&state_arrays(&mut empty)).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int64(Some(7)));
        let mut empty = by_offset(which, &[]);
        empty.merge_batch(&state_arrays(&mut acc)).unwrap();
        assert_eq!(empty.evaluate().unwrap(), ScalarValue::Int64(Some(7)));
    }
}

#[test]
fn topk_keeps_largest_descending() {
    let mut acc = TopKAccumulator::new(2, DataType::Int64);
    acc.update_batch(&[ints(&[Some(5), None, Some(9)])])
        .unwrap();
    acc.update_batch(&[ints(&[Some(1), Some(7)])]).unwrap();
    assert_eq!(acc.evaluate().unwrap(), int_list(&[Some(9), Some(7)]));
    assert!(acc.size() > 0);
}

#[test]
fn topk_merges_and_truncates() {
    let mut a = TopKAccumulator::new(3, DataType::Int64);
    a.update_batch(&[ints(&[Some(5), Some(1)])]).unwrap();
    let mut b = TopKAccumulator::new(3, DataType::Int64);
    b.update_batch(&[ints(&[Some(8), None, Some(5), Some(2)])])
        .unwrap();
    a.merge_batch(&state_arrays(&mut b)).unwrap();
    assert_eq!(
        a.evaluate().unwrap(),
        int_list(&[Some(8), Some(5), Some(5)])
    );
    let mut empty = TopKAccumulator::new(3, DataType::Int64);
    assert_eq!(empty.evaluate().unwrap(), int_list(&[]));
}

#[test]
fn topk_ranks_strings() {
    let mut acc = TopKAccumulator::new(2, DataType::Utf8);
    let strings: ArrayRef = Arc::new(StringArray::from(vec![Some("b"), None, Some("d")]));
    acc.update_batch(&[strings]).unwrap();
    let strings: ArrayRef = Arc::new(StringArray::from(vec!["a", "c"]));
    acc.update_batch(&[strings]).unwrap();
    let expected: ArrayRef = Arc::new(StringArray::from(vec!["d", "c"]));
    assert_eq!(
        acc.evaluate().unwrap(),
        list_scalar(expected, &DataType::Utf8).unwrap()
    );
}

#[test]
fn collect_list_keeps_nulls_and_order() {
    let mut acc = CollectListAccumulator {
        data_type: DataType::Int64,
        chunks: Vec::new(),
    };
    assert_eq!(acc.evaluate().unwrap(), int_list(&[]));
    acc.update_batch(&[ints(&[Some(3), None])]).unwrap();
    acc.update_batch(&[ints(&[Some(1), None, Some(2)])])
        .unwrap();
    assert_eq!(
        acc.evaluate().unwrap(),
        int_list(&[Some(3), None, Some(1), None, Some(2)])
    );

    let mut other = CollectListAccumulator {
        data_type: DataType::Int64,
        chunks: Vec::new(),
    };
    other.update_batch(&[ints(&[None, Some(9)])]).unwrap();
    acc.merge_batch(&state_arrays(&mut other)).unwrap();
    assert_eq!(
        acc.evaluate().unwrap(),
        int_list(&[Some(3), None, Some(1), None, Some(2), None, Some(9)])
    );
    assert!(acc.size() > 0);
}

/// `t(k, v)`: one partition of two batches. One target partition keeps the plan free
/// of repartitioning, which would need a tokio runtime (not a dev-dependency) and
/// would make arrival order nondeterministic.
fn context() -> SessionContext {
    let mut state = SessionStateBuilder::new()
        .with_config(SessionConfig::new().with_target_partitions(1))
        .with_default_features()
        .build();
    register(&mut state).unwrap();
    let ctx = SessionContext::new_with_state(state);

    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, true),
    ]));
    let batch = |keys: Vec<&str>, values: &[Option<i64>]| {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(keys)), ints(values)],
        )
        .unwrap()
    };
    let batches = vec![
        batch(vec!["a", "a", "b", "a"], &[Some(5), None, Some(3), Some(9)]),
        batch(vec!["a", "b", "a", "b"], &[Some(1), None, Some(7), None]),
    ];
    let table = MemTable::try_new(schema.clone(), vec![batches]).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx
}

fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    futures::executor::block_on(async { ctx.sql(sql).await?.collect().await })
}

#[test]
fn sql_names_resolve() {
    let ctx = context();
    let batches = run(
        &ctx,
        "SELECT k, LATEST_BY_OFFSET(v) AS latest, earliest_by_offset(v) AS earliest, \
         TOPK(v, 2) AS top, collect_list(v) AS all_v FROM t GROUP BY k",
    )
    .unwrap();
    assert_batches_sorted_eq!(
        [
            "+---+--------+----------+--------+----------------+",
            "| k | latest | earliest | top    | all_v          |",
            "+---+--------+----------+--------+----------------+",
            "| a | 7      | 5        | [9, 7] | [5, , 9, 1, 7] |",
            "| b | 3      | 3        | [3]    | [3, , ]        |",
            "+---+--------+----------+--------+----------------+",
        ],
        &batches
    );
}

#[test]
fn sql_without_group_by() {
    let ctx = context();
    let batches = run(
        &ctx,
        "SELECT latest_by_offset(v) AS latest, topk(v, 3) AS top FROM t",
    )
    .unwrap();
    assert_batches_sorted_eq!(
        [
            "+--------+-----------+",
            "| latest | top       |",
            "+--------+-----------+",
            "| 7      | [9, 7, 5] |",
            "+--------+-----------+",
        ],
        &batches
    );
}

#[test]
fn topk_rejects_bad_k() {
    let ctx = context();
    for sql in [
        "SELECT topk(v, 0) FROM t",
        "SELECT topk(v, -1) FROM t",
        "SELECT topk(v, v) FROM t",
        "SELECT topk(v, 1.5) FROM t",
        "SELECT topk(v, NULL) FROM t",
    ] {
        let err = run(&ctx, sql).unwrap_err().to_string();
        assert!(err.contains(TOPK_K_ERROR), "{sql}: {err}");
    }
}
