//! `format: avro` against the reference Python implementation (fastavro, in the test servers'
//! venv) and a stand-in schema registry serving the Confluent REST API (no registry server is
//! packaged): records fastavro wrote decode in Sluice, records Sluice wrote decode in fastavro,
//! schema evolution by id, bad records, and a Kafka → SQL → Kafka round trip on the tansu broker.

mod common;
mod kafka_util;
mod registry_standin;

use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use kafka_util::{create_topic, kafka, unique};
use registry_standin::{produce_bytes, read_bytes, start_registry};
use serde_json::{Value as Json, json};
use sluice_crds::{SchemaRegistryAuthSpec, SchemaRegistrySpec, SecretRef, ValueSchemaSpec};
use sluice_worker::format::registry::RegistryError;
use sluice_worker::format::{AvroDecoder, AvroEncoder, RawValue};

// ------------------------------------------------------------- the reference ----

const PYTHON_HELPER: &str = r#"
import base64, decimal, io, json, struct, sys, urllib.request
import fastavro

def parse(text):
    return fastavro.parse_schema(json.loads(text))

request = json.load(sys.stdin)
if sys.argv[1] == "write":
    out = []
    for item in request["records"]:
        buf = io.BytesIO()
        if item.get("id") is not None:
            buf.write(b"\x00" + struct.pack(">I", item["id"]))
        record = item["record"]
        # JSON has no decimal: a string `price` is one.
        if isinstance(record.get("price"), str):
            record["price"] = decimal.Decimal(record["price"])
        fastavro.schemaless_writer(buf, parse(item["schema"]), record)
        out.append(buf.getvalue().hex())
    json.dump(out, sys.stdout)
else:
    out = []
    for value in request["values"]:
        data = bytes.fromhex(value)
        assert data[0] == 0, "magic byte"
        (schema_id,) = struct.unpack(">I", data[1:5])
        r = urllib.request.Request(request["registry"] + "/schemas/ids/%d" % schema_id)
        r.add_header("Accept", "application/vnd.schemaregistry.v1+json")
        if request.get("auth"):
            r.add_header("Authorization", "Basic " + base64.b64encode(request["auth"].encode()).decode())
        with urllib.request.urlopen(r) as response:
            schema = parse(json.load(response)["schema"])
        body = io.BytesIO(data[5:])
        record = fastavro.schemaless_reader(body, schema)
        assert body.read() == b"", "trailing bytes"
        out.append({"id": schema_id, "record": record})
    json.dump(out, sys.stdout, default=str, sort_keys=True)
"#;

fn python(test: &str) -> Option<std::path::PathBuf> {
    let python = match std::env::var("SLUICE_TEST_PYTHON") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/sluice/venv/bin/python"),
    };
    let has_fastavro = std::process::Command::new(&python)
        .args(["-c", "import fastavro"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_fastavro {
        return Some(python);
    }
    assert!(
        std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "{test}: no python with fastavro at {} (run e2e/servers/install.sh)",
        python.display()
    );
    eprintln!("SKIPPED {test}: no python with fastavro (run e2e/servers/install.sh)");
    None
}

fn run_python(python: &std::path::Path, mode: &str, request: &Json) -> Json {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .args(["-c", PYTHON_HELPER, mode])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("python output");
    assert!(
        output.status.success(),
        "python {mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python JSON")
}

/// Values fastavro writes: `(schema, id or null, record)` each.
fn fastavro_write(python: &std::path::Path, items: &[(&str, Option<u32>, Json)]) -> Vec<Vec<u8>> {
    let records: Vec<Json> = items
        .iter()
        .map(|(schema, id, record)| json!({"schema": schema, "id": id, "record": record}))
        .collect();
    let out = run_python(python, "write", &json!({ "records": records }));
    out.as_array()
        .expect("list")
        .iter()
        .map(|h| hex(h.as_str().expect("hex")))
        .collect()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------ schemas ----

/// The reader schema: every mapped type once.
const READING_V1: &str = r#"{"type": "record", "name": "Reading", "namespace": "iot", "fields": [
  {"name": "deviceId", "type": "string"},
  {"name": "temperature", "type": "double"},
  {"name": "count", "type": "long"},
  {"name": "note", "type": ["null", "string"], "default": null},
  {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["LOW", "HIGH"]}},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "day", "type": {"type": "int", "logicalType": "date"}},
  {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
  {"name": "tags", "type": {"type": "array", "items": "string"}},
  {"name": "where", "type": {"type": "record", "name": "Where", "fields": [
      {"name": "lat", "type": "double"}, {"name": "lon", "type": "double"}]}},
  {"name": "attrs", "type": {"type": "map", "values": "long"}}
]}"#;

/// A newer, BACKWARD-compatible version: one more field, with a default.
const READING_V2: &str = r#"{"type": "record", "name": "Reading", "namespace": "iot", "fields": [
  {"name": "deviceId", "type": "string"},
  {"name": "temperature", "type": "double"},
  {"name": "count", "type": "long"},
  {"name": "note", "type": ["null", "string"], "default": null},
  {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["LOW", "HIGH"]}},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "day", "type": {"type": "int", "logicalType": "date"}},
  {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
  {"name": "tags", "type": {"type": "array", "items": "string"}},
  {"name": "where", "type": {"type": "record", "name": "Where", "fields": [
      {"name": "lat", "type": "double"}, {"name": "lon", "type": "double"}]}},
  {"name": "attrs", "type": {"type": "map", "values": "long"}},
  {"name": "firmware", "type": "string", "default": "unknown"}
]}"#;

/// Another subject's schema: `temperature` is a string, which no resolution turns into a double.
const READING_TEXT: &str = r#"{"type": "record", "name": "Reading", "namespace": "iot", "fields": [
  {"name": "deviceId", "type": "string"},
  {"name": "temperature", "type": "string"}
]}"#;

fn reading(device: &str, temperature: f64, count: i64, note: Option<&str>) -> Json {
    json!({
        "deviceId": device, "temperature": temperature, "count": count, "note": note,
        "level": if temperature > 30.0 { "HIGH" } else { "LOW" },
        "ts": 1_767_225_600_000_i64 + count * 1000, "day": 20454,
        "price": "12.34", "tags": ["a", device], "where": {"lat": 1.5, "lon": -2.25},
        "attrs": {"x": count, "a": 1}
    })
}

fn registry_spec(url: &str, subject: Option<&str>, auth: bool) -> SchemaRegistrySpec {
    SchemaRegistrySpec {
        url: url.to_string(),
        subject: subject.map(str::to_string),
        auth: auth.then(|| SchemaRegistryAuthSpec {
            username: Some("sluice".into()),
            password: Some(SecretRef {
                env: Some("SLUICE_TEST_REGISTRY_PASSWORD".into()),
                path: None,
            }),
            bearer_token: None,
        }),
    }
}

fn inline(text: &str) -> ValueSchemaSpec {
    ValueSchemaSpec {
        inline: Some(text.to_string()),
        path: None,
    }
}

// -------------------------------------------------------------------- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastavro_records_decode_with_evolution_and_bad_records_and_sluice_records_decode_in_fastavro()
 {
    let test = "fastavro_records_decode_with_evolution_and_bad_records_and_sluice_records_decode_in_fastavro";
    let Some(python) = python(test) else {
        return;
    };
    let (url, registry) = start_registry(None);
    let client = sluice_worker::format::registry::RegistryClient::new(
        "test",
        &registry_spec(&url, None, false),
    )
    .expect("client");
    // Registering: v1, then the compatible v2 on the same subject; the incompatible change is
    // refused by the stand-in's rule (409) and registered under another subject instead.
    let v1 = client
        .register("readings-value", READING_V1)
        .await
        .expect("v1");
    let v2 = client
        .register("readings-value", READING_V2)
        .await
        .expect("v2");
    assert_eq!((v1, v2), (1, 2));
    assert_eq!(
        client.register("readings-value", READING_V1).await,
        Ok(1),
        "same schema, same id"
    );
    let refused = client.register("readings-value", READING_TEXT).await;
    assert!(
        matches!(&refused, Err(RegistryError::Refused(m)) if m.contains("409")),
        "{refused:?}"
    );
    let other = client
        .register("other-value", READING_TEXT)
        .await
        .expect("other");
    assert_eq!(other, 3);
    assert!(matches!(
        client.schema_by_id(77).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        client.latest("nobody-value").await,
        Err(RegistryError::NotFound(_))
    ));
    // The stand-in is strict: a POST that is not JSON is refused.
    let plain = reqwest::Client::new()
        .post(format!("{url}/subjects/x/versions"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(plain.status().as_u16(), 415);

    let price = |r: Json| r;
    let values = fastavro_write(
        &python,
        &[
            (
                READING_V1,
                Some(v1),
                price(reading("d1", 21.5, 1, Some("first"))),
            ),
            (READING_V2, Some(v2), {
                let mut r = price(reading("d2", 35.0, 2, None));
                r["firmware"] = json!("2.1");
                r
            }),
            (
                READING_TEXT,
                Some(other),
                json!({"deviceId": "d3", "temperature": "warm"}),
            ),
            (READING_V1, Some(77), price(reading("d4", 1.0, 4, None))),
        ],
    );
    let mut inputs: Vec<Option<Vec<u8>>> = values.into_iter().map(Some).collect();
    // Not framed (plain JSON), a truncated datum, and a tombstone.
    inputs.push(Some(br#"{"deviceId":"d5"}"#.to_vec()));
    let mut truncated = inputs[0].clone().expect("v1 record");
    truncated.truncate(12);
    inputs.push(Some(truncated));
    inputs.push(None);

    let decoder = AvroDecoder::new(
        "source `events`: kafka",
        "events",
        Some(&inline(READING_V1)),
        Some(&registry_spec(&url, None, false)),
        Some("readings"),
    )
    .expect("decoder");
    let raw: Vec<RawValue<'_>> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| RawValue {
            origin: "readings/0",
            offset: 100 + i as i64,
            value: v.as_deref(),
        })
        .collect();
    let (batches, bad) = decoder.decode("events", &raw).await.expect("decode");
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .expect("pretty")
        .to_string();
    let expected = "\
+----------+-------------+-------+-------+-------+----------------------+------------+-------+---------+------------------------+--------------+
| deviceId | temperature | count | note  | level | ts                   | day        | price | tags    | where                  | attrs        |
+----------+-------------+-------+-------+-------+----------------------+------------+-------+---------+------------------------+--------------+
| d1       | 21.5        | 1     | first | LOW   | 2026-01-01T00:00:01Z | 2026-01-01 | 12.34 | [a, d1] | {lat: 1.5, lon: -2.25} | {a: 1, x: 1} |
| d2       | 35.0        | 2     |       | HIGH  | 2026-01-01T00:00:02Z | 2026-01-01 | 12.34 | [a, d2] | {lat: 1.5, lon: -2.25} | {a: 1, x: 2} |
+----------+-------------+-------+-------+-------+----------------------+------------+-------+---------+------------------------+--------------+";
    assert_eq!(table, expected, "\n{table}\n{bad:#?}");
    let bad_offsets: Vec<(u64, bool)> = bad
        .iter()
        .map(|b| (b.line, b.origin == "readings/0"))
        .collect();
    assert_eq!(
        bad_offsets,
        vec![
            (102, true),
            (103, true),
            (104, true),
            (105, true),
            (106, true)
        ],
        "{bad:#?}"
    );
    assert!(
        bad[0].error.contains("resolve") || bad[0].error.contains("datum"),
        "{}",
        bad[0].error
    );
    assert!(
        bad[1].error.contains("schema id 77") && bad[1].error.contains("404"),
        "{}",
        bad[1].error
    );
    assert!(bad[2].error.contains("magic byte"), "{}", bad[2].error);
    assert!(bad[3].error.contains("Avro datum"), "{}", bad[3].error);
    assert!(bad[4].error.contains("tombstone"), "{}", bad[4].error);
    assert_eq!(bad[2].record, to_hex(br#"{"deviceId":"d5"}"#));

    // Sluice writes: the schema is registered (v2 under a new subject) and fastavro reads the
    // values with the schema the registry returns for the id in them.
    let encoder = AvroEncoder::new(
        "sink.kafka",
        Some(&inline(READING_V2)),
        Some(&registry_spec(&url, Some("written-value"), false)),
        "written",
    )
    .expect("encoder");
    let batch = decoded_with_firmware(&batches);
    let written = encoder.encode(&batch).await.expect("encode");
    let read = run_python(
        &python,
        "read",
        &json!({"registry": url, "values": written.iter().map(|v| to_hex(v)).collect::<Vec<_>>()}),
    );
    let expected = json!([
        {"id": 2, "record": {"attrs": {"a": 1, "x": 1}, "count": 1, "day": "2026-01-01",
         "deviceId": "d1", "firmware": "unknown", "level": "LOW", "note": "first",
         "price": "12.34", "tags": ["a", "d1"], "temperature": 21.5,
         "ts": "2026-01-01 00:00:01+00:00", "where": {"lat": 1.5, "lon": -2.25}}},
        {"id": 2, "record": {"attrs": {"a": 1, "x": 2}, "count": 2, "day": "2026-01-01",
         "deviceId": "d2", "firmware": "unknown", "level": "HIGH", "note": null,
         "price": "12.34", "tags": ["a", "d2"], "temperature": 35.0,
         "ts": "2026-01-01 00:00:02+00:00", "where": {"lat": 1.5, "lon": -2.25}}}
    ]);
    assert_eq!(read, expected);
    assert!(
        registry
            .lock()
            .expect("lock")
            .subjects
            .contains_key("written-value")
    );

    // A registry that cannot be reached fails the batch retryably; the records are not bad.
    let down = AvroDecoder::new(
        "source `events`: kafka",
        "events",
        Some(&inline(READING_V1)),
        Some(&registry_spec("http://127.0.0.1:9", None, false)),
        Some("readings"),
    )
    .expect("decoder");
    let error = down
        .decode("events", &raw[..1])
        .await
        .expect_err("unreachable registry");
    assert!(error.is_retryable(), "{error}");
}

/// The decoded rows plus the `firmware` column v2 has (a column the writer schema needs that the
/// rows lack is an error unless the field is nullable).
fn decoded_with_firmware(batches: &[RecordBatch]) -> RecordBatch {
    let batch = arrow::compute::concat_batches(&batches[0].schema(), batches).expect("concat");
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    fields.push(Field::new("firmware", DataType::Utf8, true));
    columns.push(std::sync::Arc::new(StringArray::from(vec![
        "unknown";
        batch.num_rows()
    ])));
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns).expect("batch")
}

const EVENT_V1: &str = r#"{"type": "record", "name": "Event", "namespace": "iot", "fields": [
  {"name": "deviceId", "type": "string"},
  {"name": "temperature", "type": "double"}
]}"#;

const EVENT_V2: &str = r#"{"type": "record", "name": "Event", "namespace": "iot", "fields": [
  {"name": "deviceId", "type": "string"},
  {"name": "temperature", "type": "double"},
  {"name": "firmware", "type": "string", "default": "unknown"}
]}"#;

const HOT: &str = r#"{"type": "record", "name": "Hot", "namespace": "iot.out", "fields": [
  {"name": "deviceId", "type": "string"},
  {"name": "fahrenheit", "type": "double"},
  {"name": "celsius", "type": "long"}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_avro_sql_kafka_round_trip_with_registry_ids_an_evolved_schema_and_a_bad_record() {
    let test =
        "kafka_avro_sql_kafka_round_trip_with_registry_ids_an_evolved_schema_and_a_bad_record";
    let Some(bootstrap) = kafka(test) else {
        return;
    };
    let Some(python) = python(test) else {
        return;
    };
    let (url, registry) = start_registry(Some("sluice:registry-secret"));
    let input = unique("avro-in");
    let output = unique("avro-out");
    create_topic(&bootstrap, &input, 1).await;
    create_topic(&bootstrap, &output, 1).await;
    // The producers' schemas: v1, then the evolved v2 (a field added with a default).
    let (v1, v2) = {
        let mut r = registry.lock().expect("lock");
        let subject = format!("{input}-value");
        (
            r.add(&subject, "AVRO", EVENT_V1),
            r.add(&subject, "AVRO", EVENT_V2),
        )
    };
    assert_eq!((v1, v2), (1, 2));
    let mut items = Vec::new();
    for i in 0..6 {
        let t = 20.0 + 5.0 * f64::from(i);
        if i % 2 == 0 {
            items.push((
                EVENT_V1,
                Some(v1),
                json!({"deviceId": format!("d{i}"), "temperature": t}),
            ));
        } else {
            items.push((
                EVENT_V2,
                Some(v2),
                json!({"deviceId": format!("d{i}"), "temperature": t, "firmware": "2.0"}),
            ));
        }
    }
    let mut values = fastavro_write(&python, &items);
    // A bad record between the good ones (offset 3): not in the wire format.
    values.insert(3, b"not avro".to_vec());
    produce_bytes(&bootstrap, &input, &values).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("query.yaml");
    let schema_v1 = EVENT_V1.replace('\n', " ");
    let hot = HOT.replace('\n', " ");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: avro, namespace: test}}
spec:
  sources:
    - name: events
      kafka:
        bootstrapServers: "{bootstrap}"
        topic: {input}
        format: avro
        valueSchema: {{inline: '{schema_v1}'}}
        schemaRegistry:
          url: "{url}"
          auth: {{username: sluice, password: {{env: REGISTRY_PASSWORD}}}}
  sql: >-
    SELECT deviceId, temperature * 9 / 5 + 32 AS fahrenheit, CAST(temperature AS BIGINT) AS celsius
    FROM events WHERE temperature > 25
  sink:
    kafka:
      bootstrapServers: "{bootstrap}"
      topic: {output}
      format: avro
      keyColumn: deviceId
      valueSchema: {{inline: '{hot}'}}
      schemaRegistry:
        url: "{url}"
        auth: {{username: sluice, password: {{env: REGISTRY_PASSWORD}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{ckpt}"}}
"#,
            ckpt = dir.path().join("ckpt").display()
        ),
    )
    .expect("manifest");
    let status = common::spawn_worker(&manifest, &[("REGISTRY_PASSWORD", "registry-secret")])
        .wait()
        .expect("worker");
    assert!(status.success(), "worker failed: {status}");

    // The sink registered its schema under `<output>-value`: id 3, carried by every record.
    let out_id = {
        let r = registry.lock().expect("lock");
        *r.subjects
            .get(&format!("{output}-value"))
            .and_then(|v| v.last())
            .expect("sink subject registered")
    };
    assert_eq!(out_id, 3);
    let records = read_bytes(&bootstrap, &output, Duration::from_secs(3));
    let read = run_python(
        &python,
        "read",
        &json!({"registry": url, "auth": "sluice:registry-secret",
                "values": records.iter().map(|(_, v)| to_hex(v)).collect::<Vec<_>>()}),
    );
    let mut rows: Vec<(String, f64, i64, u64)> = read
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            (
                r["record"]["deviceId"].as_str().expect("id").to_string(),
                r["record"]["fahrenheit"].as_f64().expect("f"),
                r["record"]["celsius"].as_i64().expect("celsius"),
                r["id"].as_u64().expect("schema id"),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    // d2..d5 are above 25 °C; d3 and d5 were written with the evolved schema (id 2).
    assert_eq!(
        rows,
        vec![
            ("d2".to_string(), 86.0, 30, 3),
            ("d3".to_string(), 95.0, 35, 3),
            ("d4".to_string(), 104.0, 40, 3),
            ("d5".to_string(), 113.0, 45, 3),
        ]
    );
    let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted_keys = keys.clone();
    sorted_keys.sort();
    assert_eq!(sorted_keys, vec!["d2", "d3", "d4", "d5"]);

    // The bad record is in the bad-records location with its partition and offset.
    let bad_dir = dir.path().join("ckpt/bad-records/events/task-0");
    let mut bad = String::new();
    for entry in std::fs::read_dir(&bad_dir).expect("bad-records dir") {
        bad.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("read"));
    }
    let bad: Vec<Json> = bad
        .lines()
        .map(|l| serde_json::from_str(l).expect("bad record JSON"))
        .collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["origin"], json!(format!("{input}/0")));
    assert_eq!(bad[0]["line"], json!(3));
    assert_eq!(bad[0]["record"], json!(to_hex(b"not avro")));
    assert!(
        bad[0]["error"]
            .as_str()
            .expect("error")
            .contains("magic byte"),
        "{bad:?}"
    );
}
