use super::*;
use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("deviceId", DataType::Utf8, true),
        Field::new("temperature", DataType::Float64, true),
        Field::new("danger_level", DataType::Utf8, true),
    ]))
}

fn events() -> RecordBatch {
    RecordBatch::try_new(
        events_schema(),
        vec![
            Arc::new(StringArray::from(vec!["d1", "d2", "d3"])),
            Arc::new(Float64Array::from(vec![95.5, 30.1, 102.0])),
            Arc::new(StringArray::from(vec!["HIGH", "LOW", "HIGH"])),
        ],
    )
    .expect("batch")
}

async fn query(sql: &str, scope: SqlScope, mode: OutputMode) -> Result<BatchQuery> {
    BatchQuery::new(
        sql,
        vec![("events".into(), events_schema())],
        scope,
        mode,
        Extensions::default(),
    )
    .await
}

#[tokio::test]
async fn camel_case_columns_resolve_unquoted_and_filter_works() {
    let mut q = query(
        "SELECT deviceId, CAST(temperature AS BIGINT) AS t, CASE WHEN temperature > 100 THEN 'hot' ELSE 'warm' END AS k \
         FROM events WHERE danger_level = 'HIGH'",
        SqlScope::Stream,
        OutputMode::Append,
    )
    .await
    .expect("plan");
    let out = q.run(vec![vec![events()]]).await.expect("run");
    let batch = arrow::compute::concat_batches(&out[0].schema(), &out).expect("concat");
    let ids = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("ids");
    assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), vec!["d1", "d3"]);
    let t = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("t");
    assert_eq!(t.values().to_vec(), vec![95, 102]);
    let k = batch
        .column(2)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("k");
    assert_eq!(k.iter().flatten().collect::<Vec<_>>(), vec!["warm", "hot"]);
}

#[tokio::test]
async fn stateful_sql_over_a_stream_is_refused_with_the_operator_named() {
    for (sql, op) in [
        ("SELECT * FROM events ORDER BY temperature", "ORDER BY"),
        (
            "SELECT a.deviceId FROM events a JOIN events b ON a.deviceId = b.deviceId",
            "join",
        ),
    ] {
        let err = query(sql, SqlScope::Stream, OutputMode::Append)
            .await
            .err()
            .expect(sql)
            .to_string();
        assert!(
            err.contains(op) && err.contains("not supported yet"),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn complete_mode_without_aggregation_is_refused() {
    let err = query(
        "SELECT * FROM events",
        SqlScope::Stream,
        OutputMode::Complete,
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("complete") && err.contains("aggregation"),
        "{err}"
    );
}

#[tokio::test]
async fn word_count_per_micro_batch_with_spark_split_and_explode() {
    let lines = Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Utf8,
        false,
    )]));
    let mut q = BatchQuery::new(
        "SELECT word, count(*) AS n FROM (SELECT explode(split(value, ' ')) AS word FROM lines) GROUP BY word ORDER BY word",
        vec![("lines".into(), lines.clone())],
        SqlScope::MicroBatch,
        OutputMode::Update,
        Extensions::default(),
    )
    .await
    .expect("plan");
    let batch = RecordBatch::try_new(
        lines,
        vec![Arc::new(StringArray::from(vec!["a b a", "b c"]))],
    )
    .expect("batch");
    let out = q.run(vec![vec![batch]]).await.expect("run");
    let out = arrow::compute::concat_batches(&out[0].schema(), &out).expect("concat");
    let words = out
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("words");
    let counts = out
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("counts");
    assert_eq!(
        words.iter().flatten().collect::<Vec<_>>(),
        vec!["a", "b", "c"]
    );
    assert_eq!(counts.values().to_vec(), vec![2, 2, 1]);
}

#[tokio::test]
async fn unknown_column_is_a_sql_error() {
    let err = query(
        "SELECT nope FROM events",
        SqlScope::Stream,
        OutputMode::Append,
    )
    .await
    .err()
    .expect("err");
    assert!(matches!(err, EngineError::Sql(_)), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
}
