//! The fast decoder's corners, each checked two ways: whether the fast path takes the
//! batch, and that `JsonDecoder::decode` still equals arrow-json alone.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit,
};

use super::column::{parse_i32, parse_i64, parse_timestamp};
use crate::json_decoder::JsonDecoder;

pub(super) fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(name, t, nullable)| Field::new(*name, t.clone(), *nullable))
            .collect::<Vec<_>>(),
    ))
}

/// Asserts `decode` equals arrow-json alone on `values`, and returns the fast path's
/// batch (which, when there is one, is arrow-json's too).
pub(super) fn check(decoder: &JsonDecoder, values: &[&[u8]]) -> Option<RecordBatch> {
    let slow = decoder
        .decode_with_arrow_json(values)
        .expect("arrow-json runs");
    let got = decoder.decode(values).expect("decodes");
    assert_eq!(got.batch, slow.batch, "batch of {values:?}");
    assert_eq!(got.rows, slow.rows, "rows of {values:?}");
    assert_eq!(got.errors, slow.errors, "errors of {values:?}");
    let fast = decoder.decode_fast(values).expect("fast path runs");
    if let Some(batch) = &fast {
        assert!(
            slow.errors.is_empty(),
            "the fast path took bad values {values:?}"
        );
        assert_eq!(batch, &slow.batch);
    }
    fast
}

/// One value through [`check`]: whether the fast path took it.
fn fast_one(decoder: &JsonDecoder, value: &str) -> bool {
    check(decoder, &[value.as_bytes()]).is_some()
}

fn fraud() -> JsonDecoder {
    JsonDecoder::new(schema(&[
        ("card_id", DataType::Utf8, true),
        ("amount", DataType::Float64, true),
        ("country", DataType::Utf8, true),
        ("merchant", DataType::Utf8, true),
        ("ts", DataType::Int64, true),
    ]))
}

fn one(t: DataType, nullable: bool) -> JsonDecoder {
    JsonDecoder::new(schema(&[("v", t, nullable)]))
}

#[test]
fn plain_events_take_the_fast_path() {
    let values: Vec<String> = (0..50)
        .map(|i| {
            format!(
                r#"{{"card_id":"card-{i:06}","amount":{i}.45,"country":"DE","merchant":"m-17","ts":17000000000{i:02}}}"#
            )
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let batch = check(&fraud(), &refs).expect("the fast path takes plain events");
    assert_eq!(batch.num_rows(), 50);
    assert_eq!(batch.column(0).as_string::<i32>().value(7), "card-000007");
    assert_eq!(batch.column(1).as_primitive::<Float64Type>().value(7), 7.45);
    assert_eq!(
        batch.column(4).as_primitive::<Int64Type>().value(7),
        1_700_000_000_007
    );
}

#[test]
fn empty_input_is_left_to_arrow_json() {
    assert!(check(&fraud(), &[]).is_none());
}

#[test]
fn fields_in_any_order_missing_or_null() {
    let d = fraud();
    let values: [&[u8]; 3] = [
        br#"{"ts":1,"merchant":"m","country":"FR","amount":2.5,"card_id":"c"}"#,
        br#"{"amount":null,"ts":null}"#,
        br#" {} "#,
    ];
    let batch = check(&d, &values).expect("fast path");
    assert_eq!(batch.column(1).null_count(), 2);
    assert_eq!(batch.column(0).null_count(), 2);
}

#[test]
fn unknown_fields_are_skipped_whatever_they_hold() {
    let d = fraud();
    let value = r#"{"x":{"a":[1,{"b":"}\"]"},[]],"c":{}},"card_id":"c1","y":[[],[{}],"\u0041\\",-1.5e3,true,false,null],"z":"{\"ts\":5}","ts":7}"#;
    assert!(fast_one(&d, value));
    assert!(
        fast_one(&d, r#"{"u":1-2+e,"ts":1}"#),
        "arrow-json skips any number text"
    );
    assert!(!fast_one(&d, r#"{"u":[1,],"ts":1}"#));
    assert!(!fast_one(&d, r#"{"u":{"a" 1},"ts":1}"#));
    assert!(!fast_one(&d, r#"{"u":"\x","ts":1}"#));
    assert!(!fast_one(&d, r#"{"u":[1}],"ts":1}"#));
    assert!(!fast_one(&d, r#"{"u":nul,"ts":1}"#));
}

#[test]
fn deep_unknown_values_are_left_to_arrow_json() {
    let d = fraud();
    let ok = format!(r#"{{"u":{}1{},"ts":1}}"#, "[".repeat(128), "]".repeat(128));
    assert!(fast_one(&d, &ok));
    let deep = format!(r#"{{"u":{}1{},"ts":1}}"#, "[".repeat(129), "]".repeat(129));
    assert!(!fast_one(&d, &deep));
}

#[test]
fn string_escapes_match_arrow_json() {
    let d = one(DataType::Utf8, true);
    for ok in [
        r#"{"v":"a\"b\\c\/d\be\ff\ng\rh\ti"}"#,
        r#"{"v":"\u00e9\u20AC\uD83D\uDE00\u0000"}"#,
        "{\"v\":\"raw\u{1}control\nnew line é 😀\"}",
        r#"{"v":""}"#,
    ] {
        assert!(fast_one(&d, ok), "{ok}");
    }
    for bad in [
        r#"{"v":"\x"}"#,
        r#"{"v":"\u12"}"#,
        r#"{"v":"\uD800"}"#,
        r#"{"v":"\uD800\u0041"}"#,
        r#"{"v":"\uDC00\uD800"}"#,
        r#"{"v":"\uZZZZ"}"#,
        r#"{"v":"open}"#,
    ] {
        assert!(!fast_one(&d, bad), "{bad}");
    }
}

#[test]
fn keys_match_as_arrow_json_matches_them() {
    let d = fraud();
    let batch = check(&d, &[br#"{"\u0074s":5,"card\u005fid":"x"}"#]).expect("fast path");
    assert_eq!(batch.column(4).as_primitive::<Int64Type>().value(0), 5);
    assert_eq!(batch.column(0).as_string::<i32>().value(0), "x");
    let batch = check(&d, &[br#"{"TS":5,"ts ":6}"#]).expect("fast path");
    assert!(batch.column(4).is_null(0), "names match exactly");
    // The expected next key is card_id, then amount: a longer or escaped key is not it.
    let batch = check(&d, &[br#"{"card_idx":"a","amoun\u0074":1.5}"#]).expect("fast path");
    assert!(batch.column(0).is_null(0));
    assert_eq!(batch.column(1).as_primitive::<Float64Type>().value(0), 1.5);
}

#[test]
fn repeated_fields_are_left_to_arrow_json() {
    assert!(!fast_one(&fraud(), r#"{"ts":1,"ts":2}"#));
    assert!(fast_one(&fraud(), r#"{"u":1,"u":2}"#));
}

#[test]
fn non_nullable_fields_need_a_value() {
    let d = one(DataType::Int64, false);
    assert!(fast_one(&d, r#"{"v":1}"#));
    assert!(!fast_one(&d, r#"{}"#));
    assert!(!fast_one(&d, r#"{"v":null}"#));
}

#[test]
fn coercions_are_left_to_arrow_json() {
    assert!(!fast_one(&one(DataType::Int64, true), r#"{"v":"12"}"#));
    assert!(!fast_one(&one(DataType::Float64, true), r#"{"v":"1.5"}"#));
    assert!(!fast_one(&one(DataType::Utf8, true), r#"{"v":12}"#));
    assert!(!fast_one(&one(DataType::Utf8, true), r#"{"v":true}"#));
    assert!(!fast_one(&one(DataType::Boolean, true), r#"{"v":1}"#));
    assert!(!fast_one(&one(DataType::Boolean, true), r#"{"v":"true"}"#));
    assert!(!fast_one(&one(DataType::Int64, true), r#"{"v":[1]}"#));
    assert!(!fast_one(&one(DataType::Utf8, true), r#"{"v":{"a":"b"}}"#));
    assert!(!fast_one(&one(DataType::Int64, true), r#"{"v":true}"#));
}

#[test]
fn integers_follow_arrow_json_rules() {
    let d = one(DataType::Int64, true);
    for ok in [
        "0",
        "-0",
        "9223372036854775807",
        "-9223372036854775808",
        "-9223372036854775809",
        "1.0",
        "1.9",
        "-0.5",
        "1e3",
        "1E+3",
        "9.2e18",
    ] {
        assert!(fast_one(&d, &format!(r#"{{"v":{ok}}}"#)), "{ok}");
    }
    for bad in ["9223372036854775808", "1e19", "1e400", "-", "1-2", "1.2.3"] {
        assert!(!fast_one(&d, &format!(r#"{{"v":{bad}}}"#)), "{bad}");
    }
    let d = one(DataType::Int32, true);
    for ok in [
        "2147483647",
        "-2147483648",
        "2147483647.9",
        "-2147483648.9",
        "1e9",
    ] {
        assert!(fast_one(&d, &format!(r#"{{"v":{ok}}}"#)), "{ok}");
    }
    for bad in [
        "2147483648",
        "-2147483649",
        "2147483648.0",
        "-2147483649.0",
        "1e10",
    ] {
        assert!(!fast_one(&d, &format!(r#"{{"v":{bad}}}"#)), "{bad}");
    }
}

#[test]
fn integer_parsing_helpers() {
    assert_eq!(parse_i64(b"-9223372036854775809"), Some(i64::MIN));
    assert_eq!(parse_i64(b"-1.9"), Some(-1));
    assert_eq!(parse_i64(b"9223372036854775808"), None);
    assert_eq!(parse_i32(b"-2147483648.9"), Some(i32::MIN));
    assert_eq!(parse_i32(b"2147483648"), None);
    assert_eq!(parse_timestamp(b"1e30"), Some(i64::MAX));
    assert_eq!(parse_timestamp(b"1.5"), Some(1));
    assert_eq!(parse_timestamp(b"x"), None);
}

#[test]
fn floats_follow_arrow_json_rules() {
    let d = one(DataType::Float64, true);
    for ok in [
        "-0.0", "0", "1e308", "1e309", "-1e400", "4.9e-324", "1e-400", "123.45", "7",
    ] {
        let batch = check(&d, &[format!(r#"{{"v":{ok}}}"#).as_bytes()]).expect(ok);
        let v = batch.column(0).as_primitive::<Float64Type>().value(0);
        assert_eq!(
            v.to_bits(),
            lexical_core::parse::<f64>(ok.as_bytes())
                .expect(ok)
                .to_bits()
        );
    }
    for bad in ["-", "1e", "1.2.3", "--1"] {
        assert!(!fast_one(&d, &format!(r#"{{"v":{bad}}}"#)), "{bad}");
    }
    // Not JSON numbers at all: arrow-json fails on the first byte.
    for bad in ["+1", ".5", "NaN", "inf"] {
        assert!(!fast_one(&d, &format!(r#"{{"v":{bad}}}"#)), "{bad}");
    }
}

#[test]
fn booleans_timestamps_and_dates() {
    let d = JsonDecoder::new(schema(&[
        ("b", DataType::Boolean, true),
        ("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ("d", DataType::Date32, true),
    ]));
    let batch = check(
        &d,
        &[
            br#"{"b":true,"t":1700000000000,"d":19000}"#,
            br#"{"b":false,"t":1.5e3,"d":null}"#,
        ],
    )
    .expect("fast path");
    assert!(batch.column(0).as_boolean().value(0));
    assert_eq!(
        batch
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Date32Type>()
            .value(0),
        19000
    );
    assert!(!fast_one(&d, r#"{"t":"2024-01-01T00:00:00Z"}"#));
    assert!(!fast_one(&d, r#"{"d":"2024-01-01"}"#));
    assert!(!fast_one(&d, r#"{"b":tru}"#));
}

#[test]
fn only_one_object_with_json_whitespace_around_it() {
    let d = fraud();
    assert!(fast_one(&d, " \t\r\n{ \"ts\" : 1 , \"amount\" :2 }\n "));
    for bad in [
        "",
        "  ",
        "null",
        "[]",
        r#"{"ts":1}{"ts":2}"#,
        r#"{"ts":1} x"#,
        "{\"ts\":1}\u{c}",
        "\u{c}{\"ts\":1}",
        r#"{"ts":1,}"#,
        r#"{,"ts":1}"#,
        r#"{"ts":1 "amount":2}"#,
        r#"{"ts":1"#,
        r#"{"ts"1}"#,
        r#"{ts:1}"#,
    ] {
        assert!(!fast_one(&d, bad), "{bad:?}");
    }
}

#[test]
fn invalid_utf8_is_left_to_arrow_json() {
    let d = fraud();
    for bad in [
        &b"{\"card_id\":\"\xff\"}"[..],
        b"{\"u\":\"\xc3\",\"ts\":1}",
        b"{\"\xc3\xa9\xff\":1}",
        b"{\"ts\":1}\xc3",
    ] {
        assert!(check(&d, &[bad]).is_none(), "{bad:?}");
    }
    assert!(check(&d, &["{\"card_id\":\"é\",\"é\":\"ü\"}".as_bytes()]).is_some());
}

#[test]
fn one_bad_value_sends_the_batch_to_arrow_json() {
    let d = fraud();
    let values: [&[u8]; 3] = [br#"{"ts":1}"#, br#"{"ts":"x"}"#, br#"{"ts":3}"#];
    assert!(check(&d, &values).is_none());
    let got = d.decode(&values).expect("decodes");
    assert_eq!(got.rows, vec![0, 2]);
    assert_eq!(got.errors.len(), 1);
}

#[test]
fn schemas_the_fast_path_does_not_take() {
    let value: &[&[u8]] = &[br#"{"a":1}"#];
    for s in [
        schema(&[("a", DataType::Float32, true)]),
        schema(&[("a", DataType::Utf8View, true)]),
        schema(&[("a", DataType::Timestamp(TimeUnit::Microsecond, None), true)]),
        schema(&[("a", DataType::Int64, true), ("a", DataType::Int64, true)]),
        schema(&[]),
    ] {
        assert!(check(&JsonDecoder::new(s), value).is_none());
    }
}

#[test]
fn wide_schemas_find_fields_by_name() {
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let fields: Vec<(&str, DataType, bool)> = names
        .iter()
        .map(|n| (n.as_str(), DataType::Int32, true))
        .collect();
    let d = JsonDecoder::new(schema(&fields));
    let batch = check(&d, &[br#"{"f19":19,"f3":3,"f4":4,"x":0,"f0":0}"#]).expect("fast path");
    assert_eq!(batch.column(19).as_primitive::<Int32Type>().value(0), 19);
    assert_eq!(batch.column(4).as_primitive::<Int32Type>().value(0), 4);
    assert!(batch.column(5).is_null(0));
}
