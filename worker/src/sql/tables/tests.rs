//! Lookup-table planning without a server, and lookups against the real PostgreSQL
//! (`SLUICE_TEST_PG_URL`; skipped loudly without it unless `SLUICE_REQUIRE_SERVERS=1`).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_crds::{OutputMode, SqlScope, TableSpec};

use super::*;
use crate::error::ErrorClass;
use crate::sql::{BatchQuery, Extensions};

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("deviceId", DataType::Utf8, true),
        Field::new("reading", DataType::Int64, true),
    ]))
}

/// One batch of events `(deviceId, reading)`.
fn events(rows: &[(Option<&str>, i64)]) -> Vec<RecordBatch> {
    vec![
        RecordBatch::try_new(
            events_schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(Int64Array::from(
                    rows.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
                )),
            ],
        )
        .expect("batch"),
    ]
}

/// The `devices` lookup table at `host:port/db` as `user` (password from `PGPASSWORD`).
fn devices_spec(table: &str, host: &str, port: u16, db: &str, user: &str) -> TableSpec {
    serde_json::from_value(serde_json::json!({
        "name": "devices",
        "postgres": {
            "connection": {"host": host, "port": port, "database": db, "user": user},
            "table": table,
            "keyColumns": ["deviceId"],
        },
        "schema": [
            {"name": "deviceId", "type": "string"},
            {"name": "site", "type": "string"},
            {"name": "floor", "type": "long"},
        ],
    }))
    .expect("table spec")
}

/// A spec pointing at a port nobody listens on (planning needs no connection).
fn offline_spec() -> TableSpec {
    devices_spec("devices", "127.0.0.1", 1, "db", "u")
}

async fn query(sql: &str, mode: OutputMode, table: &TableSpec) -> Result<BatchQuery> {
    BatchQuery::with_tables(
        sql,
        vec![("events".into(), events_schema())],
        SqlScope::Stream,
        mode,
        Vec::new(),
        vec![StaticTable::open(table).await?],
        Extensions::default(),
    )
    .await
}

/// Rows as `a | b | c` strings (NULL as empty), sorted.
fn rows(out: &[RecordBatch]) -> Vec<String> {
    let mut v = Vec::new();
    for batch in out {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(row) {
                        String::new()
                    } else {
                        arrow::util::display::array_value_to_string(c, row).expect("display")
                    }
                })
                .collect();
            v.push(cells.join(" | "));
        }
    }
    v.sort();
    v
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn lookup_statement_selects_the_declared_columns_by_typed_key_arrays() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("deviceId", DataType::Utf8, true),
        Field::new("floor", DataType::Int64, true),
    ]));
    assert_eq!(
        lookup_statement(
            "public.devices",
            &schema,
            &[("deviceId".into(), DataType::Utf8)]
        ),
        "SELECT row_to_json(t)::text FROM (SELECT \"deviceId\", \"floor\" FROM \"public\".\"devices\" \
         WHERE \"deviceId\" = ANY($1::text[]::text[])) AS t"
    );
    assert_eq!(
        lookup_statement(
            "d",
            &schema,
            &[
                ("deviceId".into(), DataType::Utf8),
                ("floor".into(), DataType::Int64)
            ]
        ),
        "SELECT row_to_json(t)::text FROM (SELECT \"deviceId\", \"floor\" FROM \"d\" WHERE \
         (\"deviceId\", \"floor\") IN (SELECT * FROM unnest($1::text[]::text[], $2::text[]::int8[]))) AS t"
    );
}

#[tokio::test]
async fn a_lookup_table_can_only_be_joined_on_all_its_key_columns() {
    let spec = offline_spec();
    for (sql, why) in [
        ("SELECT * FROM devices", "read whole"),
        (
            "SELECT e.deviceId, d.site FROM events e JOIN devices d ON e.reading = d.floor",
            "not on the key",
        ),
        (
            "SELECT e.deviceId FROM events e WHERE e.deviceId IN (SELECT deviceId FROM devices)",
            "subquery",
        ),
    ] {
        let err = query(sql, OutputMode::Append, &spec)
            .await
            .err()
            .unwrap_or_else(|| panic!("{why}: accepted {sql}"));
        assert!(
            err.to_string().contains(
                "can only JOIN (or LEFT JOIN) it with `ON <expression> = devices.deviceId`"
            ),
            "{why}: {err}"
        );
    }
    // Joins on the key plan fine without a database: ON, USING, a key computed from the stream,
    // the lookup table on either side, and further conditions.
    for sql in [
        "SELECT e.deviceId, d.site FROM events e JOIN devices d ON e.deviceId = d.deviceId",
        "SELECT deviceId, site FROM events LEFT JOIN devices USING (deviceId)",
        "SELECT e.reading, d.site FROM devices d JOIN events e ON d.deviceId = upper(e.deviceId) AND d.floor > 0",
    ] {
        query(sql, OutputMode::Append, &spec)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut with_refresh = offline_spec();
    with_refresh.refresh_interval = Some("1m".into());
    let err = StaticTable::open(&with_refresh)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("refreshInterval"), "{err}");
}

/// A batch without keys (all NULL) runs no query at all: the offline table is not contacted.
#[tokio::test]
async fn a_batch_without_keys_queries_nothing() {
    let mut q = query(
        "SELECT e.reading, d.site FROM events e LEFT JOIN devices d ON e.deviceId = d.deviceId",
        OutputMode::Append,
        &offline_spec(),
    )
    .await
    .expect("plan");
    let out = q.run(vec![events(&[(None, 1)])]).await.expect("run");
    assert_eq!(rows(&out), s(&["1 | "]));
    assert_eq!(
        q.lookup_progress(),
        [LookupProgress {
            table: "devices".into(),
            keys: 0,
            rows: 0
        }]
    );
}

/// An unreachable database fails the batch with a retryable error (the engine replays it) after
/// [`FETCH_ATTEMPTS`] attempts; the password never appears in the message.
#[tokio::test]
async fn an_unreachable_database_fails_the_batch_retryably() {
    let mut q = query(
        "SELECT e.reading, d.site FROM events e JOIN devices d ON e.deviceId = d.deviceId",
        OutputMode::Append,
        &offline_spec(),
    )
    .await
    .expect("plan");
    let err = q
        .run(vec![events(&[(Some("d1"), 1)])])
        .await
        .expect_err("no database");
    assert!(
        matches!(&err, EngineError::Lookup { table, .. } if table == "devices"),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::External);
    assert!(err.is_retryable());
}

// ---- against the real PostgreSQL ----

struct Pg {
    client: tokio_postgres::Client,
    url: url::Url,
    table: String,
}

impl Pg {
    /// A fresh `devices` table (unique name) with `rows` (deviceId, site, floor).
    async fn devices(test: &str, rows: &[(&str, &str, i64)]) -> Option<Self> {
        let Ok(url) = std::env::var("SLUICE_TEST_PG_URL") else {
            assert!(
                std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
                "{test}: SLUICE_TEST_PG_URL is not set but SLUICE_REQUIRE_SERVERS=1"
            );
            eprintln!(
                "SKIPPED {test}: SLUICE_TEST_PG_URL is not set (run `bash .ci/run`, or source $SLUICE_RUN_DIR/env.sh)"
            );
            return None;
        };
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect postgres");
        tokio::spawn(connection);
        let table = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            test.hash(&mut hasher);
            format!("devices_{}_{:x}", std::process::id(), hasher.finish())
        };
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (\"deviceId\" text PRIMARY KEY, \
                 site text, floor integer)"
            ))
            .await
            .expect("create table");
        let pg = Self {
            client,
            url: url::Url::parse(&url).expect("pg url"),
            table,
        };
        pg.upsert(rows).await;
        Some(pg)
    }

    async fn upsert(&self, rows: &[(&str, &str, i64)]) {
        for (device, site, floor) in rows {
            self.client
                .execute(
                    &format!(
                        "INSERT INTO {} VALUES ($1, $2, $3) ON CONFLICT (\"deviceId\") DO UPDATE \
                         SET site = EXCLUDED.site, floor = EXCLUDED.floor",
                        self.table
                    ),
                    &[device, site, &(*floor as i32)],
                )
                .await
                .expect("upsert");
        }
    }

    fn spec(&self) -> TableSpec {
        devices_spec(
            &self.table,
            self.url.host_str().expect("host"),
            self.url.port().unwrap_or(5432),
            self.url.path().trim_start_matches('/'),
            self.url.username(),
        )
    }

    async fn drop(self) {
        self.client
            .batch_execute(&format!("DROP TABLE {}", self.table))
            .await
            .expect("drop table");
    }
}

/// Inner join: exact rows; only the batch's distinct keys are fetched (counted in progress); a
/// key missing from the table drops the stream row.
#[tokio::test]
async fn inner_join_with_a_postgres_table_fetches_only_the_batch_keys() {
    let test = "inner_join_with_a_postgres_table_fetches_only_the_batch_keys";
    let Some(pg) = Pg::devices(
        test,
        &[
            ("d1", "berlin", 1),
            ("d2", "paris", 2),
            ("d3", "rome", 3),
            ("d4", "oslo", 4),
        ],
    )
    .await
    else {
        return;
    };
    let mut q = query(
        "SELECT e.deviceId, e.reading, d.site, d.floor FROM events e \
         JOIN devices d ON e.deviceId = d.deviceId",
        OutputMode::Append,
        &pg.spec(),
    )
    .await
    .expect("plan");
    let out = q
        .run(vec![events(&[
            (Some("d1"), 10),
            (Some("d2"), 20),
            (Some("d1"), 11),
            (Some("zz"), 99),
            (None, 0),
        ])])
        .await
        .expect("run");
    assert_eq!(
        rows(&out),
        s(&[
            "d1 | 10 | berlin | 1",
            "d1 | 11 | berlin | 1",
            "d2 | 20 | paris | 2"
        ])
    );
    assert_eq!(
        q.lookup_progress(),
        [LookupProgress {
            table: "devices".into(),
            keys: 3,
            rows: 2
        }],
        "keys d1, d2, zz looked up; 2 of the 4 table rows fetched"
    );
    pg.drop().await;
}

/// Left join: unmatched stream rows keep NULLs; a change in PostgreSQL is seen by the next batch
/// (lookups are per batch, no refresh interval).
#[tokio::test]
async fn left_join_with_a_postgres_table_sees_changes_in_the_next_batch() {
    let test = "left_join_with_a_postgres_table_sees_changes_in_the_next_batch";
    let Some(pg) = Pg::devices(test, &[("d1", "berlin", 1), ("d2", "paris", 2)]).await else {
        return;
    };
    let mut q = query(
        "SELECT e.deviceId, e.reading, d.site, d.floor FROM events e \
         LEFT JOIN devices d ON e.deviceId = d.deviceId",
        OutputMode::Append,
        &pg.spec(),
    )
    .await
    .expect("plan");
    let out = q
        .run(vec![events(&[
            (Some("d1"), 10),
            (Some("d3"), 30),
            (None, 0),
        ])])
        .await
        .expect("run");
    assert_eq!(
        rows(&out),
        s(&[" | 0 |  | ", "d1 | 10 | berlin | 1", "d3 | 30 |  | "])
    );
    pg.upsert(&[("d1", "lisbon", 7), ("d3", "rome", 3)]).await;
    let out = q
        .run(vec![events(&[(Some("d1"), 12), (Some("d3"), 31)])])
        .await
        .expect("run");
    assert_eq!(
        rows(&out),
        s(&["d1 | 12 | lisbon | 7", "d3 | 31 | rome | 3"])
    );
    assert_eq!(q.lookup_progress()[0].rows, 2);
    pg.drop().await;
}

/// A streaming aggregation over the lookup join keeps running totals per site (update mode).
#[tokio::test]
async fn aggregation_over_a_postgres_lookup_join_keeps_running_totals() {
    let test = "aggregation_over_a_postgres_lookup_join_keeps_running_totals";
    let Some(pg) = Pg::devices(
        test,
        &[("d1", "berlin", 1), ("d2", "berlin", 2), ("d3", "rome", 3)],
    )
    .await
    else {
        return;
    };
    let mut q = query(
        "SELECT d.site, sum(e.reading) AS total FROM events e \
         JOIN devices d ON e.deviceId = d.deviceId GROUP BY d.site",
        OutputMode::Update,
        &pg.spec(),
    )
    .await
    .expect("plan");
    let out = q
        .run(vec![events(&[(Some("d1"), 1), (Some("d3"), 5)])])
        .await
        .expect("run");
    q.commit_state();
    assert_eq!(rows(&out), s(&["berlin | 1", "rome | 5"]));
    let out = q.run(vec![events(&[(Some("d2"), 10)])]).await.expect("run");
    q.commit_state();
    assert_eq!(rows(&out), s(&["berlin | 11"]));
    pg.drop().await;
}

/// A value of the wrong type in PostgreSQL for the declared schema is a user error naming the table.
#[tokio::test]
async fn a_row_that_does_not_fit_the_declared_schema_is_a_user_error() {
    let test = "a_row_that_does_not_fit_the_declared_schema_is_a_user_error";
    let Some(pg) = Pg::devices(test, &[("d1", "berlin", 1)]).await else {
        return;
    };
    let mut spec = pg.spec();
    spec.schema[1].data_type = "long".into();
    let mut q = query(
        "SELECT e.deviceId, d.site FROM events e JOIN devices d ON e.deviceId = d.deviceId",
        OutputMode::Append,
        &spec,
    )
    .await
    .expect("plan");
    let err = q
        .run(vec![events(&[(Some("d1"), 1)])])
        .await
        .expect_err("site is text");
    assert_eq!(err.class(), ErrorClass::User, "{err}");
    assert!(err.to_string().contains("table `devices`"), "{err}");
    pg.drop().await;
}

/// A lookup table joined on another lookup table's column is looked up after it, with the keys
/// the first join produced.
#[tokio::test]
async fn a_lookup_joined_on_another_lookup_is_looked_up_after_it() {
    let test = "a_lookup_joined_on_another_lookup_is_looked_up_after_it";
    let Some(pg) = Pg::devices(
        test,
        &[("d1", "berlin", 1), ("d2", "paris", 2), ("d3", "rome", 3)],
    )
    .await
    else {
        return;
    };
    let sites_table = format!("{}_sites", pg.table);
    pg.client
        .batch_execute(&format!(
            "CREATE TABLE {sites_table} (site text PRIMARY KEY, country text); \
             INSERT INTO {sites_table} VALUES ('berlin', 'DE'), ('paris', 'FR'), ('rome', 'IT')"
        ))
        .await
        .expect("sites");
    let sites: TableSpec = serde_json::from_value(serde_json::json!({
        "name": "sites",
        "postgres": {
            "connection": serde_json::to_value(&pg.spec().postgres.expect("pg").connection).expect("json"),
            "table": sites_table,
            "keyColumns": ["site"],
        },
        "schema": [{"name": "site", "type": "string"}, {"name": "country", "type": "string"}],
    }))
    .expect("sites spec");
    let mut q = BatchQuery::with_tables(
        "SELECT e.deviceId, s.country FROM events e JOIN devices d ON e.deviceId = d.deviceId \
         JOIN sites s ON d.site = s.site",
        vec![("events".into(), events_schema())],
        SqlScope::Stream,
        OutputMode::Append,
        Vec::new(),
        vec![
            StaticTable::open(&sites).await.expect("sites"),
            StaticTable::open(&pg.spec()).await.expect("devices"),
        ],
        Extensions::default(),
    )
    .await
    .expect("plan");
    let out = q
        .run(vec![events(&[(Some("d1"), 1), (Some("d3"), 2)])])
        .await
        .expect("run");
    assert_eq!(rows(&out), s(&["d1 | DE", "d3 | IT"]));
    let mut progress = q.lookup_progress().to_vec();
    progress.sort_by(|a, b| a.table.cmp(&b.table));
    assert_eq!(
        progress,
        [
            LookupProgress {
                table: "devices".into(),
                keys: 2,
                rows: 2
            },
            LookupProgress {
                table: "sites".into(),
                keys: 2,
                rows: 2
            }
        ],
        "sites looked up by the sites of d1 and d3 only"
    );
    pg.client
        .batch_execute(&format!("DROP TABLE {sites_table}"))
        .await
        .expect("drop sites");
    pg.drop().await;
}

/// A `long` key is sent as text and cast to `int8[]` in PostgreSQL; it matches an `integer`
/// column, and a stream value of another type (`int` here) is cast to the declared type first.
#[tokio::test]
async fn a_numeric_key_is_looked_up_by_its_declared_type() {
    let test = "a_numeric_key_is_looked_up_by_its_declared_type";
    let Some(pg) = Pg::devices(test, &[("d1", "berlin", 1), ("d2", "paris", 2)]).await else {
        return;
    };
    let mut spec = pg.spec();
    if let Some(lookup) = spec.postgres.as_mut() {
        lookup.key_columns = vec!["floor".into()];
    }
    let mut q = query(
        "SELECT e.deviceId, d.site FROM events e \
         JOIN devices d ON CAST(e.reading AS INT) = d.floor",
        OutputMode::Append,
        &spec,
    )
    .await
    .expect("plan");
    let out = q
        .run(vec![events(&[(Some("x"), 2), (Some("y"), 5)])])
        .await
        .expect("run");
    assert_eq!(rows(&out), s(&["x | paris"]));
    assert_eq!(
        q.lookup_progress(),
        [LookupProgress {
            table: "devices".into(),
            keys: 2,
            rows: 1
        }]
    );
    pg.drop().await;
}
