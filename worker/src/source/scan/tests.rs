//! The differential test: the scan against arrow-json (the reference decoder, `reference.rs`) over
//! hand-written edge cases and seeded random records; identical rows and identical bad records.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, Scalar, StringArray};
use arrow::compute::kernels::cmp;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::json::JsonScan;
use super::{CompareOp, ScanPredicate, ScanPushdown, ScanTest, ScanValue};
use crate::bad_record::BadRecord;
use crate::source::reference::{TextFormat, decode_lines};

fn schema(nullable_key: bool) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("s", DataType::Utf8, true),
        Field::new("f", DataType::Float64, true),
        Field::new("i", DataType::Int64, true),
        Field::new("n", DataType::Int32, true),
        Field::new("h", DataType::Int16, true),
        Field::new("b", DataType::Boolean, true),
        Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("k", DataType::Utf8, nullable_key),
    ]))
}

fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(schema, batches).expect("concat")
}

/// Both decoders over `body`: the same rows and the same bad records.
fn same_as_reference(schema: &SchemaRef, body: &[u8]) -> (RecordBatch, Vec<BadRecord>) {
    let (expected, expected_bad) =
        decode_lines(schema, &TextFormat::Json, "f.json", body, 7).expect("reference");
    let mut scan = JsonScan::new(schema, None).expect("scan");
    let decoded = scan.decode_lines("f.json", body, 7).expect("scan");
    let expected = concat(schema, &expected);
    let got = concat(schema, &decoded.batches);
    assert_eq!(
        got,
        expected,
        "rows differ for {:?}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(
        decoded.bad,
        expected_bad,
        "bad records differ for {:?}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(decoded.filtered, 0);
    (expected, expected_bad)
}

/// The hand-written edge cases, one record (line) each.
fn edge_cases() -> Vec<Vec<u8>> {
    let text = [
        r#"{"s":"a","f":1.5,"i":1,"n":2,"h":3,"b":true,"t":"2026-01-01T00:00:00Z","k":"x"}"#,
        r#"{"s":"\u00e9\u4e2d","k":"x"}"#,
        r#"{"s":"\ud83d\ude00","k":"x"}"#,
        r#"{"s":"\ud800","k":"x"}"#,
        r#"{"s":"\udc00x","k":"x"}"#,
        r#"{"z":"\ud800","k":"x"}"#,
        r#"{"s":"\ud83dx","k":"x"}"#,
        r#"{"s":"\u0041\u00","k":"x"}"#,
        "{\"s\":\"h\u{e9}llo \u{1F600}\",\"k\":\"x\"}",
        r#"{"z":{"a":[1,{"b":null}],"c":"}"},"s":"x","k":"x"}"#,
        r#"{"s":{"a":1},"k":"x"}"#,
        r#"{"s":[1],"k":"x"}"#,
        r#"{"f":[],"k":"x"}"#,
        r#"{"s":"a","s":"b","k":"x"}"#,
        r#"{"f":"hot","f":1.5,"k":"x"}"#,
        r#"{"f":1.5,"f":"hot","k":"x"}"#,
        r#"{"z":1,"z":2,"k":"x"}"#,
        r#"{"i":9223372036854775807,"k":"x"}"#,
        r#"{"i":-9223372036854775808,"k":"x"}"#,
        r#"{"i":9223372036854775808,"k":"x"}"#,
        r#"{"i":-9223372036854775809,"k":"x"}"#,
        r#"{"i":9.2233720368547758e18,"k":"x"}"#,
        r#"{"i":1e3,"n":1e3,"h":1e3,"k":"x"}"#,
        r#"{"i":1.5,"n":-1.5,"h":0.999,"k":"x"}"#,
        r#"{"i":-0,"f":-0.0,"k":"x"}"#,
        r#"{"n":2147483647,"k":"x"}"#,
        r#"{"n":2147483648,"k":"x"}"#,
        r#"{"h":32768,"k":"x"}"#,
        r#"{"h":-32768,"k":"x"}"#,
        r#"{"f":1e400,"k":"x"}"#,
        r#"{"f":-1e400,"k":"x"}"#,
        r#"{"f":5e-324,"k":"x"}"#,
        r#"{"f":2.2250738585072014e-308,"k":"x"}"#,
        r#"{"f":1.7976931348623157e308,"k":"x"}"#,
        r#"{"f":0.1,"k":"x"}"#,
        r#"{"f":1E2,"i":1e+2,"k":"x"}"#,
        r#"{"f":123456789012345678901234567890,"k":"x"}"#,
        r#"{"f":9007199254740993,"k":"x"}"#,
        r#"{"i":"12","k":"x"}"#,
        r#"{"f":"1.5","k":"x"}"#,
        r#"{"f":"NaN","k":"x"}"#,
        r#"{"b":"true","k":"x"}"#,
        r#"{"b":1,"k":"x"}"#,
        r#"{"s":1,"k":"x"}"#,
        r#"{"s":true,"k":"x"}"#,
        r#"{"i":true,"k":"x"}"#,
        r#"{"i":null,"s":null,"t":null,"k":"x"}"#,
        r#"{"t":1767225600000000,"k":"x"}"#,
        r#"{"t":1.5e15,"k":"x"}"#,
        r#"{"t":1e30,"k":"x"}"#,
        r#"{"t":"not a time","k":"x"}"#,
        r#"{"t":"2026-01-01","k":"x"}"#,
        r#"{"t":"2026-01-01 10:00:00+02:00","k":"x"}"#,
        r#"{"t":"2026-01-01T10:00:00.123456789Z","k":"x"}"#,
        r#"{"t":"2026-02-30T00:00:00Z","k":"x"}"#,
        r#"{"t":"2026-01-01T00:00:00\u005a","k":"x"}"#,
        r#"{"t":"2026-01-01T00:00:00\/","k":"x"}"#,
        r#"{"s":"abc"#,
        r#"{"s":"a","#,
        r#"{"s":"#,
        r#"{"#,
        r#"{"f":1."#,
        r#"{"f":1"#,
        r#"{"s":"a","k":"x"}{"s":"b","k":"x"}"#,
        r#"{"s":"a","k":"x"} {"s":"b","k":"x"}"#,
        r#"{"s":"a","k":"x"} x"#,
        r#"{"s":"a","k":"x"} 12"#,
        "1",
        r#""str""#,
        "[1]",
        "null",
        "[]",
        "true",
        r#"{"s":"a" "k":"x"}"#,
        r#"{,"s":"a","k":"x"}"#,
        r#"{"s":"a","k":"x",}"#,
        r#"{"s":"a",,"k":"x"}"#,
        "{\"s\":\"a\u{1}b\",\"k\":\"x\"}",
        "{\"s\":\"a\tb\",\"k\":\"x\"}",
        r#"{"s":"a\"b\\c\/d\n\t\r\b\f","k":"x"}"#,
        r#"{"s":"a\x","k":"x"}"#,
        r#"{"\u0073":"x","k":"x"}"#,
        r#"{"s\"":1,"k":"x"}"#,
        r#"{"s\n":1,"k":"x"}"#,
        r#"{"S":"x","k":"x"}"#,
        "{}",
        "{ }",
        r#"{"k":null}"#,
        r#"{"s":"a"}"#,
        r#"{"z":1-2,"k":"x"}"#,
        r#"{"z":01,"k":"x"}"#,
        r#"{"z":-,"k":"x"}"#,
        r#"{"z":.5,"k":"x"}"#,
        r#"{"f":01,"k":"x"}"#,
        r#"{"f":1.,"k":"x"}"#,
        r#"{"f":+1,"k":"x"}"#,
        r#"{"f":NaN,"k":"x"}"#,
        r#"{"f":Infinity,"k":"x"}"#,
        r#"{"b":tru,"k":"x"}"#,
        r#"{"b":nul,"k":"x"}"#,
        r#"{"b":false,"k":"x"}"#,
        r#"{ "s" : "a" , "k" : "x" }"#,
        "\t{\"s\":\"a\",\"k\":\"x\"}\t",
        "{\"s\":\"a\",\"k\":\"x\"}\r",
        "",
        "   ",
        "\t",
        "\x0c",
        "\x0b{\"k\":\"x\"}",
    ];
    let mut cases: Vec<Vec<u8>> = text.iter().map(|t| t.as_bytes().to_vec()).collect();
    cases.push(b"\xef\xbb\xbf{\"s\":\"a\",\"k\":\"x\"}".to_vec());
    cases.push(b"{\"s\":\"\xff\",\"k\":\"x\"}".to_vec());
    cases.push(b"{\"z\":\"\xff\",\"k\":\"x\"}".to_vec());
    cases.push(b"{\"s\":\"\xc3\",\"k\":\"x\"}".to_vec());
    cases.push(b"{\"s\":\"a\xc3\xa9\",\"k\":\"x\"}".to_vec());
    let deep = format!(
        "{{\"z\":{}{},\"k\":\"x\"}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    cases.push(deep.into_bytes());
    cases
}

#[test]
fn every_edge_case_alone_decodes_as_arrow_json_does() {
    for nullable_key in [true, false] {
        let schema = schema(nullable_key);
        for case in edge_cases() {
            let mut line = case.clone();
            line.push(b'\n');
            same_as_reference(&schema, &line);
            // Without a final newline too (the last line of a file).
            same_as_reference(&schema, &case);
        }
    }
}

#[test]
fn edge_cases_between_good_lines_decode_as_arrow_json_does() {
    let good = br#"{"s":"g","f":2.5,"i":7,"k":"x"}"#;
    for nullable_key in [true, false] {
        let schema = schema(nullable_key);
        let mut all = Vec::new();
        for case in edge_cases() {
            let mut body = Vec::new();
            for part in [&good[..], &case, &good[..]] {
                body.extend_from_slice(part);
                body.push(b'\n');
            }
            same_as_reference(&schema, &body);
            all.extend_from_slice(&body);
        }
        // All of them in one run: chunks of lines with several bad records.
        let (rows, bad) = same_as_reference(&schema, &all);
        assert!(rows.num_rows() > 200);
        assert!(bad.len() > 20);
    }
}

#[test]
fn a_record_spanning_lines_decodes_as_arrow_json_does() {
    let schema = schema(true);
    for body in [
        &b"{\"s\":\"a\"}\n{\"s\":\n\"b\"}\n{\"s\":\"c\"}\n"[..],
        b"{\"s\":\"a\"}\n{\"s\":\n\"b\"}\nbroken\n{\"s\":\"c\"}\n",
        b"{\"s\":\n\"b\"\n}\n",
        b"{\"s\":\"a\nb\"}\n",
        b"{\"s\":\"a\r\nb\"}\r\n{\"s\":\"c\"}\r\n",
    ] {
        same_as_reference(&schema, body);
    }
}

/// A random record: mostly well formed, with random fields, types, whitespace and damage.
fn random_line(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut fields: Vec<String> = Vec::new();
    let names = ["s", "f", "i", "n", "h", "b", "t", "k", "z", "S"];
    for _ in 0..rng.usize(0..9) {
        let name = names[rng.usize(0..names.len())];
        let value = match rng.u8(0..24) {
            0 => "null".to_string(),
            1 => "true".to_string(),
            2 => "false".to_string(),
            3 => rng.i64(..).to_string(),
            4 => rng.i32(..).to_string(),
            5 => rng.i16(..).to_string(),
            6 => format!("{}", rng.f64() * 10f64.powi(rng.i32(-30..30))),
            7 => format!("{:e}", rng.f64() * 1e10),
            8 => format!("-{}.{}", rng.u32(..), rng.u8(..)),
            9 => format!(
                "\"{}\"",
                ["HIGH", "LOW", "MEDIUM", "", "x y"][rng.usize(0..5)]
            ),
            10 => "\"a\\\"b\\\\c\\n\"".to_string(),
            11 => "\"\\u00e9\"".to_string(),
            12 => format!(
                "\"2026-{:02}-{:02}T{:02}:00:00.{:03}Z\"",
                rng.u8(1..13),
                rng.u8(1..29),
                rng.u8(0..24),
                rng.u16(0..1000)
            ),
            13 => "\"2026-01-01 00:00:00\"".to_string(),
            14 => "{\"a\":[1,2,{\"b\":\"}\"}]}".to_string(),
            15 => "[]".to_string(),
            16 => format!("\"{}\"", rng.i64(..)),
            17 => "\"h\u{e9}\u{1F600}\"".to_string(),
            18 => format!("{}", rng.u64(..)),
            19 => "1e400".to_string(),
            20 => format!("{}", rng.i64(..) as f64),
            _ => format!("\"v{}\"", rng.u16(..)),
        };
        fields.push(format!("\"{name}\":{value}"));
    }
    let spaced = rng.u8(0..4) == 0;
    let separator = if spaced { " , " } else { "," };
    let mut line = format!("{{{}}}", fields.join(separator)).into_bytes();
    match rng.u8(0..30) {
        0 => line.truncate(rng.usize(0..=line.len())),
        1 => {
            let at = rng.usize(0..=line.len());
            line.insert(
                at,
                [b'"', b',', b'}', b'\\', 0xff, b'\n', 1][rng.usize(0..7)],
            );
        }
        2 => line.clear(),
        3 => line = b"   ".to_vec(),
        4 => line.extend_from_slice(b"\r"),
        5 => {
            let copy = line.clone();
            line.extend_from_slice(&copy);
        }
        _ => {}
    }
    line
}

fn random_body(rng: &mut fastrand::Rng, lines: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..lines {
        body.extend_from_slice(&random_line(rng));
        body.push(b'\n');
    }
    body
}

#[test]
fn random_records_decode_as_arrow_json_does() {
    let mut rng = fastrand::Rng::with_seed(19);
    for round in 0..300 {
        let schema = schema(round % 5 != 0);
        let lines = if round % 50 == 0 {
            2500
        } else {
            rng.usize(1..40)
        };
        let body = random_body(&mut rng, lines);
        same_as_reference(&schema, &body);
    }
}

/// Rows passing `s = 'HIGH'` and `i > 0`, by arrow's kernels.
fn sql_filter(batch: &RecordBatch) -> RecordBatch {
    let s = cmp::eq(
        batch.column(0),
        &Scalar::new(StringArray::from(vec!["HIGH"])),
    )
    .expect("eq");
    let i = cmp::gt(
        batch.column(2),
        &Scalar::new(arrow::array::Int64Array::from(vec![0])),
    )
    .expect("gt");
    let both: BooleanArray = arrow::compute::and(&s, &i).expect("and");
    arrow::compute::filter_record_batch(batch, &both).expect("filter")
}

/// With a projection and predicates: the rows the SQL filter keeps are all there, with the read
/// columns as arrow-json decodes them and the others null; every dropped row is counted.
#[test]
fn pushdown_keeps_every_row_the_filter_keeps_and_counts_the_rest() {
    let schema = schema(true);
    let pushdown = ScanPushdown {
        // s, i and t read; f, n, h, b, k not.
        columns: vec![true, false, true, false, false, false, true, false],
        predicates: vec![
            ScanPredicate {
                column: 0,
                test: ScanTest::Compare(CompareOp::Eq, ScanValue::Utf8("HIGH".into())),
            },
            ScanPredicate {
                column: 2,
                test: ScanTest::Compare(CompareOp::Gt, ScanValue::Int(0)),
            },
        ],
    };
    let mut rng = fastrand::Rng::with_seed(7);
    let mut filtered_total = 0;
    for _ in 0..200 {
        let mut body = Vec::new();
        for _ in 0..rng.usize(1..60) {
            let line = if rng.bool() {
                format!(
                    "{{\"s\":\"{}\",\"f\":1.5,\"i\":{},\"t\":\"2026-01-01T00:00:0{}Z\",\"k\":\"x\"}}",
                    ["HIGH", "LOW"][rng.usize(0..2)],
                    rng.i64(-3..3),
                    rng.u8(0..10)
                )
                .into_bytes()
            } else {
                random_line(&mut rng)
            };
            body.extend_from_slice(&line);
            body.push(b'\n');
        }
        let (expected, expected_bad) =
            decode_lines(&schema, &TextFormat::Json, "f", &body, 1).expect("reference");
        let expected = concat(&schema, &expected);
        let mut scan = JsonScan::new(&schema, Some(&pushdown)).expect("scan");
        let decoded = scan.decode_lines("f", &body, 1).expect("scan");
        let got = concat(&schema, &decoded.batches);
        assert_eq!(decoded.bad, expected_bad);
        assert_eq!(
            got.num_rows() as u64 + decoded.filtered,
            expected.num_rows() as u64,
            "every row returned or counted"
        );
        filtered_total += decoded.filtered;
        let (want, have) = (sql_filter(&expected), sql_filter(&got));
        assert_eq!(have.num_rows(), want.num_rows());
        for (column, read) in pushdown.columns.iter().enumerate() {
            if *read {
                assert_eq!(have.column(column), want.column(column), "column {column}");
            }
            // An unread column: null in built rows; rows of lines arrow-json decoded come whole.
        }
    }
    assert!(filtered_total > 1000, "the predicates dropped rows");
}

#[test]
fn predicates_follow_sql_on_nulls_in_and_float_order() {
    use super::FieldValue;
    let eq_high = ScanTest::Compare(CompareOp::Eq, ScanValue::Utf8("HIGH".into()));
    assert!(eq_high.passes(FieldValue::Str(b"HIGH")));
    assert!(!eq_high.passes(FieldValue::Str(b"LOW")));
    assert!(!eq_high.passes(FieldValue::Null));
    let not_in = ScanTest::In {
        values: vec![ScanValue::Int(1), ScanValue::Int(2)],
        negated: true,
    };
    assert!(not_in.passes(FieldValue::Int(3)));
    assert!(!not_in.passes(FieldValue::Int(2)));
    assert!(
        !not_in.passes(FieldValue::Null),
        "NULL NOT IN (...) is NULL"
    );
    let below_zero = ScanTest::Compare(CompareOp::Lt, ScanValue::Float(0.0));
    assert!(
        below_zero.passes(FieldValue::Float(-0.0)),
        "arrow's total order"
    );
    assert!(!below_zero.passes(FieldValue::Float(0.0)));
    // A type the test was not made for is not decided here: the row stays for SQL.
    assert!(eq_high.passes(FieldValue::Int(1)));
    assert_eq!(CompareOp::Lt.swapped(), CompareOp::Gt);
}

#[test]
fn unsupported_schemas_and_the_switch_leave_decoding_to_arrow_json() {
    let with_date: SchemaRef = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
    assert!(JsonScan::new(&with_date, None).is_none());
    assert!(JsonScan::new(&schema(true), None).is_some());
}
