//! `format: protobuf` against the reference implementation (Google's `protobuf` Python package,
//! with `protoc` from `grpcio-tools` compiling the `.proto` text, in the test servers' venv) and
//! the stand-in schema registry serving the Confluent REST API with `schemaType: PROTOBUF`:
//! messages Python wrote decode in Sluice, messages Sluice wrote decode in Python, schema
//! evolution by id, the message indexes, bad records, and a Kafka → SQL → Kafka round trip on
//! the tansu broker.

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
use sluice_worker::format::protobuf::{ProtobufDecoder, ProtobufEncoder};
use sluice_worker::format::registry::{RegistryClient, RegistryError, SchemaKind};
use sluice_worker::format::{RawValue, frame};

// ------------------------------------------------------------- the reference ----

const PYTHON_HELPER: &str = r#"
import base64, json, os, struct, sys, tempfile, urllib.request
import grpc_tools
from grpc_tools import protoc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

INCLUDE = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")

def compile_proto(text):
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "schema.proto"), "w") as f:
            f.write(text)
        out = os.path.join(d, "set.pb")
        rc = protoc.main(["protoc", "-I" + d, "-I" + INCLUDE, "--include_imports",
                          "--descriptor_set_out=" + out, os.path.join(d, "schema.proto")])
        assert rc == 0, "protoc failed"
        with open(out, "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool, pool.FindFileByName("schema.proto")

def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

def read_varint(data, pos):
    n, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, pos

def zigzag(n):
    return (n << 1) ^ (n >> 63)

def unzigzag(n):
    return (n >> 1) ^ -(n & 1)

def indexes_of(desc):
    path = []
    while desc.containing_type is not None:
        parent = desc.containing_type
        path.append(list(parent.nested_types).index(desc))
        desc = parent
    path.append(list(desc.file.message_types_by_name.values()).index(desc))
    return list(reversed(path))

def write_indexes(indexes):
    if indexes == [0]:
        return b"\x00"
    return varint(zigzag(len(indexes))) + b"".join(varint(zigzag(i)) for i in indexes)

def message_at(file, indexes):
    desc = list(file.message_types_by_name.values())[indexes[0]]
    for i in indexes[1:]:
        desc = list(desc.nested_types)[i]
    return desc

request = json.load(sys.stdin)
if sys.argv[1] == "write":
    out = []
    for item in request["records"]:
        pool, file = compile_proto(item["proto"])
        desc = pool.FindMessageTypeByName(item["message"])
        message = json_format.ParseDict(item["record"], message_factory.GetMessageClass(desc)())
        data = message.SerializeToString()
        if item.get("id") is not None:
            indexes = item.get("indexes") or indexes_of(desc)
            data = b"\x00" + struct.pack(">I", item["id"]) + write_indexes(indexes) + data
        out.append(data.hex())
    json.dump(out, sys.stdout)
else:
    out = []
    for value in request["values"]:
        data = bytes.fromhex(value)
        assert data[0] == 0, "magic byte"
        (schema_id,) = struct.unpack(">I", data[1:5])
        count, pos = read_varint(data, 5)
        count = unzigzag(count)
        indexes = [0] if count == 0 else []
        for _ in range(count):
            i, pos = read_varint(data, pos)
            indexes.append(unzigzag(i))
        r = urllib.request.Request(request["registry"] + "/schemas/ids/%d" % schema_id)
        r.add_header("Accept", "application/vnd.schemaregistry.v1+json")
        if request.get("auth"):
            r.add_header("Authorization", "Basic " + base64.b64encode(request["auth"].encode()).decode())
        with urllib.request.urlopen(r) as response:
            answer = json.load(response)
        assert answer["schemaType"] == "PROTOBUF", answer
        pool, file = compile_proto(answer["schema"])
        desc = message_at(file, indexes)
        message = message_factory.GetMessageClass(desc)()
        message.ParseFromString(data[pos:])
        record = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                           always_print_fields_with_no_presence=True)
        out.append({"id": schema_id, "indexes": indexes, "message": desc.full_name,
                    "record": record})
    json.dump(out, sys.stdout, sort_keys=True)
"#;

fn python(test: &str) -> Option<std::path::PathBuf> {
    let python = match std::env::var("SLUICE_TEST_PYTHON") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/sluice/venv/bin/python"),
    };
    let has_protobuf = std::process::Command::new(&python)
        .args(["-c", "import google.protobuf, grpc_tools.protoc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_protobuf {
        return Some(python);
    }
    assert!(
        std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "{test}: no python with protobuf and grpcio-tools at {} (run e2e/servers/install.sh)",
        python.display()
    );
    eprintln!(
        "SKIPPED {test}: no python with protobuf and grpcio-tools (run e2e/servers/install.sh)"
    );
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

/// One message for Python to write: its schema, message name, registry id (framed when set),
/// message indexes written instead of the message's own (to test bad ones), and its JSON.
struct Item<'a> {
    proto: &'a str,
    message: &'a str,
    id: Option<u32>,
    indexes: Option<Vec<i32>>,
    record: Json,
}

fn python_write(python: &std::path::Path, items: &[Item<'_>]) -> Vec<Vec<u8>> {
    let records: Vec<Json> = items
        .iter()
        .map(|i| {
            json!({"proto": i.proto, "message": i.message, "id": i.id, "indexes": i.indexes,
                   "record": i.record})
        })
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

/// The reader schema: every mapped type once (`Where` is nested: message indexes [0, 0]).
const READING_V1: &str = r#"syntax = "proto3";
package iot.v1;
import "google/protobuf/timestamp.proto";

message Reading {
  message Where { double lat = 1; double lon = 2; }
  string device_id = 1;
  double temperature = 2;
  int64 count = 3;
  optional string note = 4;
  Level level = 5;
  google.protobuf.Timestamp ts = 6;
  float ratio = 7;
  sint32 delta = 8;
  sfixed64 big = 9;
  uint32 small = 10;
  fixed64 huge = 11;
  bool ok = 12;
  bytes raw = 13;
  repeated string tags = 14;
  Where where = 15;
  map<string, int64> attrs = 16;
  oneof origin { string sensor = 17; int32 manual = 18; }
}

enum Level { LOW = 0; HIGH = 1; }

message Other { string name = 1; }
"#;

/// A newer compatible version: one more field (unknown to the v1 reader).
const READING_V2: &str = r#"syntax = "proto3";
package iot.v1;
import "google/protobuf/timestamp.proto";

message Reading {
  message Where { double lat = 1; double lon = 2; }
  string device_id = 1;
  double temperature = 2;
  int64 count = 3;
  optional string note = 4;
  Level level = 5;
  google.protobuf.Timestamp ts = 6;
  float ratio = 7;
  sint32 delta = 8;
  sfixed64 big = 9;
  uint32 small = 10;
  fixed64 huge = 11;
  bool ok = 12;
  bytes raw = 13;
  repeated string tags = 14;
  Where where = 15;
  map<string, int64> attrs = 16;
  oneof origin { string sensor = 17; int32 manual = 18; }
  string firmware = 19;
}

enum Level { LOW = 0; HIGH = 1; }

message Other { string name = 1; }
"#;

/// Another subject's schema: field 2 (`temperature`) is a string, which no reader of a double
/// can read.
const READING_TEXT: &str = r#"syntax = "proto3";
package iot.v1;
message Reading { string device_id = 1; string temperature = 2; }
"#;

fn reading(device: &str, temperature: f64, count: i64, note: Option<&str>) -> Json {
    let mut r = json!({
        "device_id": device, "temperature": temperature, "count": count.to_string(),
        "level": if temperature > 30.0 { "HIGH" } else { "LOW" },
        "ts": format!("2026-01-01T00:00:0{count}Z"), "ratio": 0.5, "delta": -count,
        "big": "-9000000000", "small": 4_000_000_000_u32, "huge": "18000000000000000000",
        "ok": count % 2 == 1, "raw": "AAH/", "tags": ["a", device],
        "where": {"lat": 1.5, "lon": -2.25}, "attrs": {"x": count.to_string(), "a": "1"},
    });
    if let Some(note) = note {
        r["note"] = json!(note);
    }
    if count % 2 == 1 {
        r["sensor"] = json!(format!("s{count}"));
    } else {
        r["manual"] = json!(count);
    }
    r
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
async fn python_messages_decode_with_evolution_and_bad_records_and_sluice_messages_decode_in_python()
 {
    let test = "python_messages_decode_with_evolution_and_bad_records_and_sluice_messages_decode_in_python";
    let Some(python) = python(test) else {
        return;
    };
    let (url, registry) = start_registry(None);
    let client = RegistryClient::with_kind(
        "test",
        &registry_spec(&url, None, false),
        SchemaKind::Protobuf,
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
    // The stand-in is strict: text that is not .proto is refused (422).
    let invalid = client.register("bad-value", "message {").await;
    assert!(
        matches!(&invalid, Err(RegistryError::Refused(m)) if m.contains("422")),
        "{invalid:?}"
    );
    // An Avro client refuses the PROTOBUF schema the registry holds for an id.
    let avro_client =
        RegistryClient::new("test", &registry_spec(&url, None, false)).expect("avro client");
    let wrong = avro_client.schema_by_id(v1).await;
    assert!(
        matches!(&wrong, Err(RegistryError::Refused(m)) if m.contains("PROTOBUF")),
        "{wrong:?}"
    );

    let values = python_write(
        &python,
        &[
            Item {
                proto: READING_V1,
                message: "iot.v1.Reading",
                id: Some(v1),
                indexes: None,
                record: reading("d1", 21.5, 1, Some("first")),
            },
            Item {
                proto: READING_V2,
                message: "iot.v1.Reading",
                id: Some(v2),
                indexes: None,
                record: {
                    let mut r = reading("d2", 35.0, 2, None);
                    r["firmware"] = json!("2.1");
                    r
                },
            },
            // Field 2 is a string in this writer schema.
            Item {
                proto: READING_TEXT,
                message: "iot.v1.Reading",
                id: Some(other),
                indexes: None,
                record: json!({"device_id": "d3", "temperature": "warm"}),
            },
            // An id the registry does not have.
            Item {
                proto: READING_V1,
                message: "iot.v1.Reading",
                id: Some(77),
                indexes: None,
                record: reading("d4", 1.0, 4, None),
            },
            // The nested `Where` (indexes [0, 0]): its field 1 is a double, the reader's a string.
            Item {
                proto: READING_V1,
                message: "iot.v1.Reading.Where",
                id: Some(v1),
                indexes: None,
                record: json!({"lat": 1.0, "lon": 2.0}),
            },
            // Message indexes naming no message of the writer schema.
            Item {
                proto: READING_V1,
                message: "iot.v1.Reading",
                id: Some(v1),
                indexes: Some(vec![5]),
                record: reading("d6", 1.0, 6, None),
            },
        ],
    );
    let mut inputs: Vec<Option<Vec<u8>>> = values.into_iter().map(Some).collect();
    // Not framed (plain JSON), a truncated message, and a tombstone.
    inputs.push(Some(br#"{"device_id":"d7"}"#.to_vec()));
    let mut truncated = inputs[0].clone().expect("v1 record");
    truncated.truncate(20);
    inputs.push(Some(truncated));
    inputs.push(None);

    let decoder = ProtobufDecoder::new(
        "source `events`: kafka",
        "events",
        Some(&inline(READING_V1)),
        None,
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
+-----------+-------------+-------+-------+-------+----------------------+-------+-------+-------------+------------+----------------------+-------+--------+---------+------------------------+--------------+--------+--------+
| device_id | temperature | count | note  | level | ts                   | ratio | delta | big         | small      | huge                 | ok    | raw    | tags    | where                  | attrs        | sensor | manual |
+-----------+-------------+-------+-------+-------+----------------------+-------+-------+-------------+------------+----------------------+-------+--------+---------+------------------------+--------------+--------+--------+
| d1        | 21.5        | 1     | first | LOW   | 2026-01-01T00:00:01Z | 0.5   | -1    | -9000000000 | 4000000000 | 18000000000000000000 | true  | 0001ff | [a, d1] | {lat: 1.5, lon: -2.25} | {a: 1, x: 1} | s1     |        |
| d2        | 35.0        | 2     |       | HIGH  | 2026-01-01T00:00:02Z | 0.5   | -2    | -9000000000 | 4000000000 | 18000000000000000000 | false | 0001ff | [a, d2] | {lat: 1.5, lon: -2.25} | {a: 1, x: 2} |        | 2      |
+-----------+-------------+-------+-------+-------+----------------------+-------+-------+-------------+------------+----------------------+-------+--------+---------+------------------------+--------------+--------+--------+";
    assert_eq!(table, expected, "\n{table}\n{bad:#?}");
    let schema = decoder.schema();
    let types: Vec<String> = schema
        .fields()
        .iter()
        .take(13)
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(
        types,
        vec![
            "Utf8",
            "Float64",
            "Int64",
            "Utf8",
            "Utf8",
            "Timestamp(µs, \"UTC\")",
            "Float32",
            "Int32",
            "Int64",
            "UInt32",
            "UInt64",
            "Boolean",
            "Binary"
        ]
    );
    let bad_offsets: Vec<u64> = bad.iter().map(|b| b.line).collect();
    assert_eq!(
        bad_offsets,
        vec![102, 103, 104, 105, 106, 107, 108],
        "{bad:#?}"
    );
    assert!(bad.iter().all(|b| b.origin == "readings/0"), "{bad:#?}");
    assert!(
        bad[0]
            .error
            .contains("field `temperature` (number 2) is string in the writer schema"),
        "{}",
        bad[0].error
    );
    assert!(
        bad[1].error.contains("schema id 77") && bad[1].error.contains("404"),
        "{}",
        bad[1].error
    );
    assert!(
        bad[2].error.contains("message iot.v1.Reading.Where")
            && bad[2]
                .error
                .contains("field `device_id` (number 1) is double"),
        "{}",
        bad[2].error
    );
    assert!(
        bad[3].error.contains("message indexes [5] name no message"),
        "{}",
        bad[3].error
    );
    assert!(bad[4].error.contains("magic byte"), "{}", bad[4].error);
    assert!(
        bad[5].error.contains("not a Protobuf message"),
        "{}",
        bad[5].error
    );
    assert!(bad[6].error.contains("tombstone"), "{}", bad[6].error);
    assert_eq!(bad[4].record, to_hex(br#"{"device_id":"d7"}"#));

    // Sluice writes: the schema is registered (v2 under a new subject) and Python reads the
    // values with the schema the registry returns for the id in them.
    let encoder = ProtobufEncoder::new(
        "sink.kafka",
        Some(&inline(READING_V2)),
        Some("Reading"),
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
    let record = |device: &str, count: i64, extra: Json| {
        let mut r = json!({
            "attrs": {"a": "1", "x": count.to_string()}, "big": "-9000000000",
            "count": count.to_string(), "delta": -count, "device_id": device,
            "firmware": "unknown", "huge": "18000000000000000000",
            "level": if count == 2 { "HIGH" } else { "LOW" }, "ok": count == 1, "ratio": 0.5,
            "raw": "AAH/", "small": 4_000_000_000_u32, "tags": ["a", device],
            "temperature": if count == 2 { 35.0 } else { 21.5 },
            "ts": format!("2026-01-01T00:00:0{count}Z"), "where": {"lat": 1.5, "lon": -2.25}
        });
        for (k, v) in extra.as_object().expect("object") {
            r[k] = v.clone();
        }
        r
    };
    let expected = json!([
        {"id": 2, "indexes": [0], "message": "iot.v1.Reading",
         "record": record("d1", 1, json!({"note": "first", "sensor": "s1"}))},
        {"id": 2, "indexes": [0], "message": "iot.v1.Reading",
         "record": record("d2", 2, json!({"manual": 2}))}
    ]);
    assert_eq!(read, expected);
    // The framing: magic byte, id 2, the single 0 of the first message.
    assert_eq!(written[0].get(..6), Some(&[0u8, 0, 0, 0, 2, 0][..]));
    assert_eq!(
        registry.lock().expect("lock").subjects.get("written-value"),
        Some(&vec![2])
    );

    // A nested writer message is framed with its indexes ([0, 0] for Reading.Where).
    let where_encoder = ProtobufEncoder::new(
        "sink.kafka",
        Some(&inline(READING_V1)),
        Some("iot.v1.Reading.Where"),
        Some(&registry_spec(&url, Some("where-value"), false)),
        "where",
    )
    .expect("encoder");
    let wheres = batch
        .column_by_name("where")
        .expect("where")
        .as_any()
        .downcast_ref::<arrow::array::StructArray>()
        .expect("struct")
        .clone();
    let written = where_encoder
        .encode(&RecordBatch::from(wheres))
        .await
        .expect("encode where");
    let read = run_python(
        &python,
        "read",
        &json!({"registry": url, "values": written.iter().map(|v| to_hex(v)).collect::<Vec<_>>()}),
    );
    assert_eq!(
        read[0],
        json!({"id": 1, "indexes": [0, 0], "message": "iot.v1.Reading.Where",
               "record": {"lat": 1.5, "lon": -2.25}})
    );
    assert_eq!(
        written[0].get(..8),
        Some(&[0u8, 0, 0, 0, 1, 4, 0, 0][..]),
        "count 2 and the indexes 0, 0 as zigzag varints"
    );

    // Rows that cannot be written name the column: a null in a field without presence, an
    // unknown enum name.
    let mut nulled = batch.columns().to_vec();
    nulled[0] = std::sync::Arc::new(StringArray::from(vec![Some("d1"), None]));
    let e = encoder
        .encode(&RecordBatch::try_new(batch.schema(), nulled).expect("batch"))
        .await
        .expect_err("null device_id")
        .to_string();
    assert!(
        e.contains("column `device_id`") && e.contains("null at row 1") && e.contains("optional"),
        "{e}"
    );
    let mut levels = batch.columns().to_vec();
    levels[4] = std::sync::Arc::new(StringArray::from(vec!["LOW", "MEDIUM"]));
    let e = encoder
        .encode(&RecordBatch::try_new(batch.schema(), levels).expect("batch"))
        .await
        .expect_err("unknown enum name")
        .to_string();
    assert!(
        e.contains("column `level`") && e.contains("`MEDIUM` is not a value of enum iot.v1.Level"),
        "{e}"
    );

    // Without a registry a value is the bare message.
    let bare = ProtobufEncoder::new("sink.kafka", Some(&inline(READING_V2)), None, None, "t")
        .expect("encoder")
        .encode(&batch)
        .await
        .expect("bare");
    let bare_decoder = ProtobufDecoder::new(
        "source `events`: kafka",
        "events",
        Some(&inline(READING_V1)),
        None,
        None,
        Some("t"),
    )
    .expect("decoder");
    let raw: Vec<RawValue<'_>> = bare
        .iter()
        .map(|v| RawValue {
            origin: "t/0",
            offset: 0,
            value: Some(v),
        })
        .collect();
    let (again, none) = bare_decoder.decode("events", &raw).await.expect("decode");
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&again)
            .expect("pretty")
            .to_string(),
        table
    );
    // ... and a framed value is then not a message of the reader.
    let (_, bad) = bare_decoder
        .decode(
            "events",
            &[RawValue {
                origin: "t/0",
                offset: 1,
                value: Some(&frame(1, &[0, 0xff])),
            }],
        )
        .await
        .expect("decode");
    assert_eq!(bad.len(), 1, "{bad:?}");

    // A registry that cannot be reached fails the batch retryably; the records are not bad.
    let down = ProtobufDecoder::new(
        "source `events`: kafka",
        "events",
        Some(&inline(READING_V1)),
        None,
        Some(&registry_spec("http://127.0.0.1:9", None, false)),
        Some("readings"),
    )
    .expect("decoder");
    let error = down
        .decode("events", &raw_first(&inputs))
        .await
        .expect_err("unreachable registry");
    assert!(error.is_retryable(), "{error}");
}

fn raw_first(inputs: &[Option<Vec<u8>>]) -> Vec<RawValue<'_>> {
    vec![RawValue {
        origin: "readings/0",
        offset: 100,
        value: inputs[0].as_deref(),
    }]
}

/// The decoded rows plus the `firmware` column v2 has (a field without presence that the rows
/// lack is an error).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_schema_from_the_registry_and_unmappable_schemas_are_refused_naming_the_field() {
    let (url, registry) = start_registry(None);
    registry
        .lock()
        .expect("lock")
        .add("readings-value", "PROTOBUF", READING_V1);
    // No valueSchema: the subject's latest version, its first message (Reading).
    let decoder = ProtobufDecoder::new(
        "source `events`: kafka",
        "events",
        None,
        None,
        Some(&registry_spec(&url, None, false)),
        Some("readings"),
    )
    .expect("decoder");
    assert_eq!(decoder.schema().field(0).name(), "device_id");
    let other = ProtobufDecoder::new(
        "source `events`: kafka",
        "events",
        None,
        Some("Other"),
        Some(&registry_spec(&url, None, false)),
        Some("readings"),
    )
    .expect("decoder of Other");
    assert_eq!(other.schema().fields().len(), 1);
    let refused = |text: &str, message_type: Option<&str>| {
        ProtobufDecoder::new(
            "source `events`: kafka",
            "events",
            Some(&inline(text)),
            message_type,
            None,
            Some("t"),
        )
        .expect_err("refused")
        .to_string()
    };
    let e = refused(READING_V1, Some("Missing"));
    assert!(
        e.contains("source `events`: kafka.messageType") && e.contains("no message `Missing`"),
        "{e}"
    );
    let e = refused(
        "syntax = \"proto2\"; message G { optional group Inner = 1 { optional int32 x = 2; } }",
        None,
    );
    assert!(e.contains("field `inner`") && e.contains("group"), "{e}");
    let e = refused("syntax = \"proto3\"; message T { T child = 1; }", None);
    assert!(
        e.contains("field `child`") && e.contains("recursive"),
        "{e}"
    );
    let e = refused("syntax = \"proto3\"; message T { int32 x = 1 }", None);
    assert!(
        e.contains(
            "source `events`: kafka.valueSchema: not a valid .proto schema: schema.proto:1:"
        ),
        "{e}"
    );
    // The registry's latest version of a subject that does not exist.
    let e = ProtobufDecoder::new(
        "source `events`: kafka",
        "events",
        None,
        None,
        Some(&registry_spec(&url, None, false)),
        Some("nobody"),
    )
    .expect_err("no subject")
    .to_string();
    assert!(e.contains("nobody-value") && e.contains("404"), "{e}");
}

const EVENT_V1: &str = r#"syntax = "proto3";
package iot;
message Event { string device_id = 1; double temperature = 2; }
"#;

const EVENT_V2: &str = r#"syntax = "proto3";
package iot;
message Event { string device_id = 1; double temperature = 2; string firmware = 3; }
"#;

const HOT: &str = r#"syntax = "proto3";
package iot.out;
message Hot { string device_id = 1; double fahrenheit = 2; int64 celsius = 3; }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_protobuf_sql_kafka_round_trip_with_registry_ids_an_evolved_schema_and_a_bad_record()
{
    let test =
        "kafka_protobuf_sql_kafka_round_trip_with_registry_ids_an_evolved_schema_and_a_bad_record";
    let Some(bootstrap) = kafka(test) else {
        return;
    };
    let Some(python) = python(test) else {
        return;
    };
    let (url, registry) = start_registry(Some("sluice:registry-secret"));
    let input = unique("proto-in");
    let output = unique("proto-out");
    create_topic(&bootstrap, &input, 1).await;
    create_topic(&bootstrap, &output, 1).await;
    // The producers' schemas: v1, then the evolved v2 (a field added).
    let (v1, v2) = {
        let mut r = registry.lock().expect("lock");
        let subject = format!("{input}-value");
        (
            r.add(&subject, "PROTOBUF", EVENT_V1),
            r.add(&subject, "PROTOBUF", EVENT_V2),
        )
    };
    let mut items = Vec::new();
    for i in 0..6 {
        let t = 20.0 + 5.0 * f64::from(i);
        let (proto, id, record) = if i % 2 == 0 {
            (
                EVENT_V1,
                v1,
                json!({"device_id": format!("d{i}"), "temperature": t}),
            )
        } else {
            (
                EVENT_V2,
                v2,
                json!({"device_id": format!("d{i}"), "temperature": t, "firmware": "2.0"}),
            )
        };
        items.push(Item {
            proto,
            message: "iot.Event",
            id: Some(id),
            indexes: None,
            record,
        });
    }
    let mut values = python_write(&python, &items);
    // A bad record between the good ones (offset 3): not in the wire format.
    values.insert(3, b"not protobuf".to_vec());
    produce_bytes(&bootstrap, &input, &values).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let schema_file = dir.path().join("event.proto");
    std::fs::write(&schema_file, EVENT_V1).expect("schema file");
    let manifest = dir.path().join("query.yaml");
    let hot = HOT.replace('\n', " ");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamingQuery
metadata: {{name: proto, namespace: test}}
spec:
  sources:
    - name: events
      kafka:
        bootstrapServers: "{bootstrap}"
        topic: {input}
        format: protobuf
        valueSchema: {{path: "{schema}"}}
        messageType: iot.Event
        schemaRegistry:
          url: "{url}"
          auth: {{username: sluice, password: {{env: REGISTRY_PASSWORD}}}}
  sql: >-
    SELECT device_id, temperature * 9 / 5 + 32 AS fahrenheit, CAST(temperature AS BIGINT) AS celsius
    FROM events WHERE temperature > 25
  sink:
    kafka:
      bootstrapServers: "{bootstrap}"
      topic: {output}
      format: protobuf
      keyColumn: device_id
      valueSchema: {{inline: '{hot}'}}
      schemaRegistry:
        url: "{url}"
        auth: {{username: sluice, password: {{env: REGISTRY_PASSWORD}}}}
  trigger: {{availableNow: true}}
  checkpoint: {{location: "{ckpt}"}}
"#,
            schema = schema_file.display(),
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
    let mut rows: Vec<(String, f64, String, u64, String)> = read
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            (
                r["record"]["device_id"].as_str().expect("id").to_string(),
                r["record"]["fahrenheit"].as_f64().expect("f"),
                // int64 is a string in Protobuf's JSON mapping.
                r["record"]["celsius"]
                    .as_str()
                    .expect("celsius")
                    .to_string(),
                r["id"].as_u64().expect("schema id"),
                r["message"].as_str().expect("message").to_string(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let hot = |d: &str, f: f64, c: &str| (d.to_string(), f, c.to_string(), 3, "iot.out.Hot".into());
    // d2..d5 are above 25 °C; d3 and d5 were written with the evolved schema (id 2).
    assert_eq!(
        rows,
        vec![
            hot("d2", 86.0, "30"),
            hot("d3", 95.0, "35"),
            hot("d4", 104.0, "40"),
            hot("d5", 113.0, "45"),
        ]
    );
    let mut keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, vec!["d2", "d3", "d4", "d5"]);

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
    assert_eq!(bad[0]["record"], json!(to_hex(b"not protobuf")));
    assert!(
        bad[0]["error"]
            .as_str()
            .expect("error")
            .contains("magic byte"),
        "{bad:?}"
    );
}
