//! Differential tests: `JsonDecoder::decode` (fast path when it can) against arrow-json
//! alone, on random schemas of the fast path's types and random records — well-formed,
//! odd (coercions, escapes, number shapes, repeated or unknown fields) and malformed.
//! A second property checks the fast path is taken for clean records, so the first
//! cannot pass by the fast path always giving up.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use proptest::prelude::*;

use super::tests::{check, schema};
use crate::json_decoder::JsonDecoder;

/// Field names, some needing escapes in JSON, some alike but for case or a space.
const NAMES: [&str; 10] = [
    "id", "n", "amount", "é", "a b", "q\"t", "b\\s", "", "ID", "id ",
];

/// A schema field: name, type, nullable.
type Spec = (String, DataType, bool);

fn data_type() -> impl Strategy<Value = DataType> {
    prop_oneof![
        Just(DataType::Utf8),
        Just(DataType::Int32),
        Just(DataType::Int64),
        Just(DataType::Float64),
        Just(DataType::Boolean),
        Just(DataType::Timestamp(TimeUnit::Millisecond, None)),
        Just(DataType::Date32),
    ]
}

/// 1 to 5 fields; names are unique when `unique`, else may repeat.
fn specs(unique: bool) -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec((0..NAMES.len(), data_type(), any::<bool>()), 1..6).prop_map(
        move |fields| {
            let mut out: Vec<Spec> = vec![];
            for (i, t, nullable) in fields {
                let name = NAMES[i].to_string();
                if !unique || out.iter().all(|(n, _, _)| *n != name) {
                    out.push((name, t, nullable));
                }
            }
            out
        },
    )
}

fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => prop::sample::select(vec![
            '"', '\\', '/', '\u{1}', '\u{8}', '\u{c}', '\n', '\r', '\t', '\u{7f}', 'é', '€',
            '😀', '\u{FFFF}', '\u{10FFFF}', '\u{0}',
        ]),
        1 => any::<char>(),
    ]
}

/// `c` into a JSON string: raw where JSON allows (`how` 0; arrow-json also takes raw
/// control characters), a short escape, or `\u` in either case (surrogates beyond BMP).
fn encode_char(out: &mut String, c: char, how: u8) {
    let short = match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '/' => Some("\\/"),
        '\u{8}' => Some("\\b"),
        '\u{c}' => Some("\\f"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        _ => None,
    };
    match (how, short) {
        (0, _) if c != '"' && c != '\\' => out.push(c),
        (0 | 1, Some(s)) => out.push_str(s),
        _ => {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                if how == 3 {
                    out.push_str(&format!("\\u{u:04X}"));
                } else {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
}

fn encode(text: &str, hows: &[u8]) -> String {
    let mut out = String::from("\"");
    for (i, c) in text.chars().enumerate() {
        encode_char(&mut out, c, hows.get(i).copied().unwrap_or(0));
    }
    out.push('"');
    out
}

/// A well-formed JSON string literal.
fn json_string() -> impl Strategy<Value = String> {
    prop::collection::vec((interesting_char(), 0..4u8), 0..8).prop_map(|cs| {
        let mut out = String::from("\"");
        for (c, how) in cs {
            encode_char(&mut out, c, how);
        }
        out.push('"');
        out
    })
}

/// String literals arrow-json rejects.
fn bad_string() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        r#""\x""#,
        r#""\u12""#,
        r#""\uD800""#,
        r#""\uD800x""#,
        r#""\uDC00\uD800""#,
        r#""\uD800\u0041""#,
        r#""\uZZZZ""#,
        r#""\"#,
        r#""abc"#,
    ])
    .prop_map(str::to_string)
}

/// Number texts of many shapes: each rule of arrow-json's parsing, its edges, and texts
/// that are not numbers (some still read as number tokens by arrow-json).
fn odd_number() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "0",
        "-0",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "2147483647",
        "2147483648",
        "-2147483648",
        "-2147483649",
        "1.0",
        "-0.0",
        "1e3",
        "1E+3",
        "1e-3",
        "1.5e2",
        "-0.5",
        "1.9",
        "1e308",
        "1e309",
        "-1e309",
        "4.9e-324",
        "1e-400",
        "0.1",
        "123.45",
        "01",
        "-",
        "1e",
        "+1",
        ".5",
        "1.",
        "1-2",
        "--1",
        "1ee2",
        "9007199254740993",
        "9.223372036854775807e18",
        "-9.223372036854775808e18",
        "2147483647.9",
        "-2147483648.9",
        "2147483648.0",
        "1e18",
        "1e19",
        "-2147483648.5",
        "0e0",
        "00",
        "NaN",
        "Infinity",
        "1E400",
        "-1e-400",
    ])
    .prop_map(str::to_string)
}

/// A number that is plain JSON and fits every numeric column.
fn clean_int32() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i32>().prop_map(|i| i.to_string()),
        any::<i16>().prop_map(|i| format!("{i}.0")),
        (-2000..2000i32).prop_map(|i| format!("{}e3", i)),
    ]
}

fn clean_float() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        any::<i64>().prop_map(|i| i.to_string()),
        Just("-0.0".to_string()),
        Just("1e308".to_string()),
    ]
}

fn any_number() -> impl Strategy<Value = String> {
    prop_oneof![clean_float(), odd_number()]
}

/// Any JSON value, nested up to 3 deep; `clean` keeps it to what arrow-json accepts.
fn json_value(clean: bool) -> BoxedStrategy<String> {
    let leaf = if clean {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            clean_float(),
            json_string(),
        ]
        .boxed()
    } else {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            any_number(),
            json_string(),
            bad_string(),
        ]
        .boxed()
    };
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((json_string(), inner), 0..4).prop_map(|m| {
                let members: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", members.join(" ,"))
            }),
        ]
    })
    .boxed()
}

/// A value of the field's own JSON type; `clean` keeps numbers within every rule.
fn typed_value(t: &DataType, clean: bool) -> BoxedStrategy<String> {
    match (t, clean) {
        (DataType::Utf8, _) => json_string().boxed(),
        (DataType::Boolean, _) => prop_oneof![Just("true"), Just("false")]
            .prop_map(str::to_string)
            .boxed(),
        (DataType::Float64, true) => clean_float().boxed(),
        (DataType::Int64 | DataType::Timestamp(_, _), true) => {
            prop_oneof![clean_int32(), any::<i64>().prop_map(|i| i.to_string())].boxed()
        }
        (_, true) => clean_int32().boxed(),
        (_, false) => prop_oneof![any_number(), clean_int32()].boxed(),
    }
}

/// One member of a record for a schema field (`None`: absent): null, its own type, or
/// (unless `clean`) anything. Clean records give non-nullable fields a value.
fn member(spec: &Spec, clean: bool) -> BoxedStrategy<Option<(String, String)>> {
    let (name, t, nullable) = spec.clone();
    let key = prop::collection::vec(0..4u8, 0..8).prop_map(move |hows| encode(&name, &hows));
    let value = match (clean, nullable) {
        (true, false) => typed_value(&t, true).prop_map(Some).boxed(),
        (true, true) => prop_oneof![
            6 => typed_value(&t, true).prop_map(Some),
            1 => Just(Some("null".to_string())),
            1 => Just(None),
        ]
        .boxed(),
        (false, _) => prop_oneof![
            6 => typed_value(&t, false).prop_map(Some),
            1 => Just(Some("null".to_string())),
            1 => json_value(false).prop_map(Some),
            1 => Just(None),
        ]
        .boxed(),
    };
    (key, value).prop_map(|(k, v)| v.map(|v| (k, v))).boxed()
}

/// Members for fields not in the schema (their names are never field names).
fn unknown_members(clean: bool) -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["zz", "extra", "nested", "zz\u{e9}", "x\"y"]),
            json_value(clean),
        )
            .prop_map(|(k, v)| (encode(k, &[2, 0, 1]), v)),
        0..3,
    )
}

/// Whitespace between tokens: JSON's four kinds, and (unless `clean`) a form feed.
fn gaps(clean: bool) -> impl Strategy<Value = Vec<&'static str>> {
    let pool = if clean {
        vec!["", "", "", " ", "\n", "\t", "\r\n "]
    } else {
        vec!["", "", "", " ", "\n", "\t", "\r\n ", "\u{c}"]
    };
    prop::collection::vec(prop::sample::select(pool), 16)
}

/// A damage to a record's bytes: at a position (scaled to the length), a kind, a byte.
type Damage = Option<(usize, u8, u8)>;

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(None),
        1 => (any::<usize>(), 0..4u8, prop::sample::select(vec![
            b'{', b'}', b',', b':', b'"', b'\\', b' ', b'x', b'1', 0xff, 0xc3, 0x0c, b'[',
        ])).prop_map(Some),
    ]
}

fn apply(damage: Damage, mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some((at, kind, b)) = damage {
        let i = at % (bytes.len() + 1);
        match kind {
            0 => bytes.truncate(i),
            1 => bytes.insert(i, b),
            2 if i < bytes.len() => bytes[i] = b,
            _ => bytes.push(b),
        }
    }
    bytes
}

/// One record for `fields`: its members shuffled, whitespace between tokens, maybe a
/// member repeated, maybe damaged (unless `clean`).
fn record(fields: &[Spec], clean: bool) -> BoxedStrategy<Vec<u8>> {
    let members: Vec<_> = fields.iter().map(|f| member(f, clean)).collect();
    let repeat = if clean {
        Just(false).boxed()
    } else {
        prop::bool::weighted(0.1).boxed()
    };
    let hurt = if clean {
        Just(None).boxed()
    } else {
        damage().boxed()
    };
    (
        members,
        unknown_members(clean),
        gaps(clean),
        any::<u64>(),
        repeat,
        hurt,
    )
        .prop_map(|(known, unknown, gaps, seed, repeat, hurt)| {
            let mut all: Vec<(String, String)> = known.into_iter().flatten().collect();
            all.extend(unknown);
            if repeat && !all.is_empty() {
                all.push(all[0].clone());
            }
            shuffle(&mut all, seed);
            apply(hurt, render(&all, &gaps).into_bytes())
        })
        .boxed()
}

/// A cheap deterministic shuffle from `seed`.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn render(members: &[(String, String)], gaps: &[&str]) -> String {
    let mut g = gaps.iter().cycle();
    let mut gap = || *g.next().unwrap_or(&"");
    let mut out = format!("{}{{", gap());
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{}{k}{}:{}{v}{}", gap(), gap(), gap(), gap()));
    }
    out.push_str(&format!("{}}}{}", gap(), gap()));
    out
}

/// A schema and up to 7 records for it. Unless `clean`, each record is clean or not at
/// random, so that some batches are all clean and others have a few odd records.
fn batch(unique: bool, clean: bool) -> impl Strategy<Value = (Vec<Spec>, Vec<Vec<u8>>)> {
    specs(unique).prop_flat_map(move |fields| {
        let one = if clean {
            record(&fields, true)
        } else {
            prop_oneof![3 => record(&fields, true), 1 => record(&fields, false)].boxed()
        };
        (Just(fields), prop::collection::vec(one, 0..8))
    })
}

fn decoder(fields: &[Spec]) -> JsonDecoder {
    let named: Vec<(&str, DataType, bool)> = fields
        .iter()
        .map(|(n, t, b)| (n.as_str(), t.clone(), *b))
        .collect();
    JsonDecoder::new(schema(&named))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Whatever the input, `decode` gives what arrow-json alone gives: batch, rows and
    /// errors (`check` also holds the fast path's batch to arrow-json's when taken).
    #[test]
    fn decode_equals_arrow_json((fields, records) in batch(false, false)) {
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        check(&decoder(&fields), &refs);
    }

    /// Clean records (right types, in range, unknown fields of any shape, escapes) are
    /// taken by the fast path, and give arrow-json's batch.
    #[test]
    fn clean_records_take_the_fast_path((fields, records) in batch(true, true)) {
        prop_assume!(!records.is_empty());
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let fast = check(&decoder(&fields), &refs);
        prop_assert!(fast.is_some(), "fast path refused {:?}", records
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect::<Vec<_>>());
    }
}
