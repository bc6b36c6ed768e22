//! SQL guard and planning (`spec.sql`): parsing, the only-a-query guard, Spark function rewrites,
//! the streaming rules (aggregation, dedup, stream–stream join, output modes) and DataFusion's
//! planner, over two fixed sources with a watermark, exactly as a start and `sluice-worker check`
//! plan it; then one micro-batch of a few fixed rows through the planned query (window functions
//! and the streaming operators evaluate their arguments only then). A run longer than
//! [`RUN_LIMIT`] is abandoned, not reported: a user's query may legitimately take long.
//!
//! Input: 1 byte for `sqlScope` (bit 0) and `outputMode` (bits 1-2), then the SQL text.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arrow::array::RecordBatch;
use sluice_worker::source::decode::{TextFormat, decode_text};

use libfuzzer_sys::fuzz_target;
use sluice_crds::{OutputMode, SqlScope, StreamingQuery};
use sluice_worker::ml::TaskModels;

const MANIFEST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {name: fuzz}
spec:
  sources:
    - name: events
      file: {path: /tmp/in, format: json}
      schema:
        - {name: deviceId, type: string}
        - {name: temperature, type: double}
        - {name: level, type: long}
        - {name: ts, type: timestamp}
      watermark: {column: ts, delay: 10 seconds}
    - name: clicks
      file: {path: /tmp/clicks, format: csv}
      schema:
        - {name: deviceId, type: string}
        - {name: page, type: string}
        - {name: at, type: timestamp}
      watermark: {column: at, delay: 1 minute}
  sql: SELECT * FROM events
  sink: {console: {}}
"#;

/// The rows of one micro-batch, per source (JSON lines).
const EVENTS: &str = r#"{"deviceId":"d1","temperature":21.5,"level":1,"ts":"2024-01-01T00:00:00Z"}
{"deviceId":"d2","temperature":-3.25,"level":-2,"ts":"2024-01-01T00:01:30.5Z"}
{"deviceId":null,"temperature":null,"level":null,"ts":null}
"#;
const CLICKS: &str = r#"{"deviceId":"d1","page":"/","at":"2024-01-01T00:00:10Z"}
{"deviceId":"d3","page":"/a","at":"2024-01-01T02:00:00Z"}
"#;

/// Longest run of one micro-batch before the input is skipped.
const RUN_LIMIT: Duration = Duration::from_secs(2);

struct Fixture {
    runtime: tokio::runtime::Runtime,
    query: StreamingQuery,
    inputs: Vec<(String, arrow::datatypes::SchemaRef)>,
    models: TaskModels,
    rows: Vec<Vec<RecordBatch>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let query = sluice_crds::parse_manifest(MANIFEST).expect("fixed manifest");
        let inputs: Vec<_> = query
            .spec
            .sources
            .iter()
            .map(|s| {
                let schema = sluice_worker::schema::arrow_schema(&s.schema).expect("schema");
                (s.name.clone(), schema)
            })
            .collect();
        let rows = inputs
            .iter()
            .zip([EVENTS, CLICKS])
            .map(|((name, schema), json)| {
                let (batches, bad) =
                    decode_text(schema, &TextFormat::Json, name, json.as_bytes()).expect("rows");
                assert!(bad.is_empty(), "{bad:?}");
                batches
            })
            .collect();
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime"),
            models: TaskModels::new(&[], None).expect("no models"),
            query,
            inputs,
            rows,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&[options], sql)) = input.split_first_chunk::<1>() else {
        return;
    };
    let Ok(sql) = std::str::from_utf8(sql) else {
        return;
    };
    let fixture = fixture();
    let mut spec = fixture.query.spec.clone();
    spec.sql = sql.to_string();
    spec.sql_scope = if options & 1 == 0 {
        SqlScope::Stream
    } else {
        SqlScope::MicroBatch
    };
    spec.output_mode = match (options >> 1) % 3 {
        0 => OutputMode::Append,
        1 => OutputMode::Update,
        _ => OutputMode::Complete,
    };
    fixture.runtime.block_on(async {
        let Ok(mut planned) =
            sluice_worker::engine::plan_query(&spec, &fixture.inputs, &fixture.models).await
        else {
            return;
        };
        // What `check` and a start ask of a planned query.
        let _ = planned.output_schema().await;
        let _ = planned.logical_plan().await;
        let _ = planned.grouping_columns();
        let _ = planned.stateful_fingerprint();
        let _ = tokio::time::timeout(RUN_LIMIT, planned.run(fixture.rows.clone())).await;
    });
});
