use super::*;
use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice_crds::PostgresConnectionSpec;
use std::sync::Arc;

fn spec(mode: PostgresWriteMode, keys: &[&str]) -> PostgresSinkSpec {
    PostgresSinkSpec {
        connection: PostgresConnectionSpec {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "db".into(),
            user: "u".into(),
            password_env: None,
            ssl_mode: Default::default(),
            ssl_root_cert: None,
        },
        table: "public.counts".into(),
        mode,
        key_columns: keys.iter().map(|k| k.to_string()).collect(),
        statement_timeout: None,
    }
}

fn columns() -> Vec<String> {
    vec!["deviceId".into(), "n".into()]
}

#[test]
fn insert_statement_keeps_row_order() {
    let sql = write_statement(&spec(PostgresWriteMode::Insert, &[]), &columns()).expect("sql");
    assert_eq!(
        sql,
        "INSERT INTO \"public\".\"counts\" (\"deviceId\", \"n\") SELECT \"deviceId\", \"n\" FROM \
         json_populate_recordset(NULL::\"public\".\"counts\", $1::text::json) WITH ORDINALITY AS r \
         ORDER BY r.ordinality"
    );
}

#[test]
fn upsert_statement_takes_the_last_row_per_key() {
    let sql =
        write_statement(&spec(PostgresWriteMode::Upsert, &["deviceId"]), &columns()).expect("sql");
    assert!(
        sql.contains("SELECT DISTINCT ON (\"deviceId\") \"deviceId\", \"n\""),
        "{sql}"
    );
    assert!(
        sql.contains("ORDER BY \"deviceId\", r.ordinality DESC"),
        "{sql}"
    );
    assert!(
        sql.ends_with("ON CONFLICT (\"deviceId\") DO UPDATE SET \"n\" = EXCLUDED.\"n\""),
        "{sql}"
    );
}

#[test]
fn accumulate_statement_sums_the_batch_then_adds_to_stored_values() {
    let sql = write_statement(
        &spec(PostgresWriteMode::Accumulate, &["deviceId"]),
        &columns(),
    )
    .expect("sql");
    assert!(
        sql.contains("SELECT \"deviceId\", sum(\"n\") AS \"n\""),
        "{sql}"
    );
    assert!(sql.contains("GROUP BY \"deviceId\""), "{sql}");
    assert!(
        sql.ends_with("DO UPDATE SET \"n\" = \"public\".\"counts\".\"n\" + EXCLUDED.\"n\""),
        "{sql}"
    );
}

#[test]
fn keyed_modes_need_key_columns_that_exist() {
    assert!(PostgresSink::new(&spec(PostgresWriteMode::Upsert, &[]), "q").is_err());
    let err = write_statement(&spec(PostgresWriteMode::Upsert, &["nope"]), &columns())
        .expect_err("missing key");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn identifiers_are_quoted_and_rows_become_a_json_array() {
    assert_eq!(quote_ident("a\"b.c"), "\"a\"\"b\".\"c\"");
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("deviceId", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec![Some("it's"), None])) as ArrayRef,
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .expect("batch");
    assert_eq!(
        rows_json(&[batch]).expect("json"),
        r#"[{"deviceId":"it's","n":1},{"deviceId":null,"n":2}]"#
    );
    assert_eq!(rows_json(&[]).expect("empty"), "[]");
}
