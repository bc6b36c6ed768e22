//! Spec rules that the schema alone cannot express. Shared by the operator (admission of a new spec)
//! and the worker (start-up), so both refuse the same manifests with the same words.
//!
//! Rules that need the SQL plan (output mode vs. aggregation, Spark's rules) live in the worker's
//! planner, which is the only place that can see the plan.

use std::collections::HashSet;

use crate::duration::parse_duration;
use crate::spec::{
    ColumnSpec, DeltaSinkSpec, DeltaWriteMode, FileSinkSpec, KafkaFormat, OutputMode,
    PostgresConnectionSpec, PostgresSslMode, SchemaRegistrySpec, SourceKind, StreamingQuerySpec,
    ValueSchemaSpec,
};

pub use crate::error::ValidationError;

fn err(path: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.into(),
        message: message.into(),
    }
}

/// Column types a schema may name, as Spark's DDL type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Double,
    Float,
    Long,
    Int,
    Short,
    Boolean,
    /// UTC, microsecond precision (as Spark's `TimestampType`).
    Timestamp,
    Date,
    Binary,
}

impl ColumnType {
    /// Parses a type name (case-insensitive; `bigint`, `integer`, `bool`, `str` are aliases).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "string" | "str" | "varchar" | "text" => Self::String,
            "double" | "float64" => Self::Double,
            "float" | "float32" | "real" => Self::Float,
            "long" | "bigint" | "int64" => Self::Long,
            "int" | "integer" | "int32" => Self::Int,
            "short" | "smallint" | "int16" => Self::Short,
            "boolean" | "bool" => Self::Boolean,
            "timestamp" => Self::Timestamp,
            "date" => Self::Date,
            "binary" | "bytes" => Self::Binary,
            _ => return None,
        })
    }
}

/// The output modes the file sink takes, as Spark's `FileStreamSink` (append only: a file cannot
/// take back rows it holds), plus `complete` with `overwrite: partitions`, which replaces
/// partitions instead of appending to them.
///
/// # Errors
/// At `spec.outputMode` for `update`, and for `complete` without `overwrite`; at
/// `spec.sink.file.overwrite` for `overwrite` with `append`.
pub fn check_file_sink_mode(mode: OutputMode, file: &FileSinkSpec) -> Result<(), ValidationError> {
    match (mode, file.overwrite) {
        (OutputMode::Update, _) => Err(err(
            "spec.outputMode",
            "the file sink does not support `update` output mode (Spark: \"Data source parquet does \
             not support Update output mode\"): files cannot change the rows they already hold. Use \
             `append` (aggregations need a watermark), or `complete` with \
             `sink.file.overwrite: partitions`",
        )),
        (OutputMode::Complete, None) => Err(err(
            "spec.outputMode",
            "the file sink supports `complete` output mode only with `sink.file.overwrite: \
             partitions` (Spark: \"Data source parquet does not support Complete output mode\"): \
             appending the whole result table every batch would repeat every row",
        )),
        (OutputMode::Append, Some(_)) => Err(err(
            "spec.sink.file.overwrite",
            "`partitions` replaces each partition with the batch's rows of it, which are the \
             whole partition only in `outputMode: complete`; set it, or drop `overwrite`",
        )),
        _ => Ok(()),
    }
}

/// Checks a spec's cross-field rules.
///
/// # Errors
/// The first broken rule, with the field path, e.g. ``"`spec.sources[0]`: exactly one of file,
/// kafka, socket, rate, nexmark must be set"``.
pub fn validate_spec(spec: &StreamingQuerySpec) -> Result<(), ValidationError> {
    if spec.sources.is_empty() {
        return Err(err("spec.sources", "at least one source is required"));
    }
    if spec.sql.trim().is_empty() {
        return Err(err("spec.sql", "the query is empty"));
    }
    let mut names = HashSet::new();
    for (i, source) in spec.sources.iter().enumerate() {
        let path = format!("spec.sources[{i}]");
        check_name(&format!("{path}.name"), &source.name)?;
        if !names.insert(source.name.as_str()) {
            return Err(err(
                format!("{path}.name"),
                format!("duplicate name `{}`", source.name),
            ));
        }
        let kinds = source.kinds();
        let [kind] = kinds.as_slice() else {
            return Err(err(
                path,
                "exactly one of file, kafka, socket, rate, nexmark must be set",
            ));
        };
        check_schema(&format!("{path}.schema"), &source.schema)?;
        match *kind {
            SourceKind::File => {
                if source.schema.is_empty() {
                    return Err(err(
                        format!("{path}.schema"),
                        "a file source needs a schema (a stream's schema is not inferred)",
                    ));
                }
                let file = source.file.as_ref().ok_or_else(|| err(&path, "file"))?;
                if file.path.trim().is_empty() {
                    return Err(err(format!("{path}.file.path"), "empty path"));
                }
                if file.partitions == 0 {
                    return Err(err(format!("{path}.file.partitions"), "must be at least 1"));
                }
                if file.max_files_per_trigger == Some(0) {
                    return Err(err(
                        format!("{path}.file.maxFilesPerTrigger"),
                        "must be at least 1",
                    ));
                }
                if let Some(d) = &file.delimiter
                    && d.len() != 1
                {
                    return Err(err(format!("{path}.file.delimiter"), "must be one byte"));
                }
            }
            SourceKind::Rate => {
                let rate = source.rate.as_ref().ok_or_else(|| err(&path, "rate"))?;
                if rate.rows_per_second == 0 {
                    return Err(err(
                        format!("{path}.rate.rowsPerSecond"),
                        "must be positive",
                    ));
                }
                if rate.partitions == 0 {
                    return Err(err(format!("{path}.rate.partitions"), "must be at least 1"));
                }
            }
            SourceKind::Kafka => {
                let kafka = source.kafka.as_ref().ok_or_else(|| err(&path, "kafka"))?;
                let topic_kinds = usize::from(kafka.topic.is_some())
                    + usize::from(!kafka.topics.is_empty())
                    + usize::from(kafka.topic_pattern.is_some());
                if topic_kinds != 1 {
                    return Err(err(
                        format!("{path}.kafka"),
                        "exactly one of topic, topics, topicPattern must be set",
                    ));
                }
                crate::secrets::check_kafka_options(
                    &format!("{path}.kafka"),
                    &kafka.options,
                    &kafka.secret_options,
                )?;
                check_value_format(
                    &format!("{path}.kafka"),
                    kafka.format,
                    kafka.value_schema.as_ref(),
                    kafka.message_type.as_deref(),
                    kafka.schema_registry.as_ref(),
                    kafka.topic.is_some(),
                )?;
                if kafka.format.has_value_schema() && !source.schema.is_empty() {
                    return Err(err(
                        format!("{path}.schema"),
                        format!(
                            "with kafka.format {} the columns come from the value schema \
                             (kafka.valueSchema or kafka.schemaRegistry); leave schema unset",
                            kafka.format.name()
                        ),
                    ));
                }
            }
            SourceKind::Socket => {}
            SourceKind::Nexmark => {
                let nexmark = source
                    .nexmark
                    .as_ref()
                    .ok_or_else(|| err(&path, "nexmark"))?;
                if nexmark.events_per_second == Some(0) {
                    return Err(err(
                        format!("{path}.nexmark.eventsPerSecond"),
                        "must be positive (leave it unset for as fast as possible)",
                    ));
                }
                if nexmark.partitions == 0 {
                    return Err(err(
                        format!("{path}.nexmark.partitions"),
                        "must be at least 1",
                    ));
                }
                if !source.schema.is_empty() {
                    return Err(err(
                        format!("{path}.schema"),
                        "a nexmark source has a fixed schema; leave schema unset",
                    ));
                }
            }
        }
        if let Some(watermark) = &source.watermark {
            let column = source.schema.iter().find(|c| c.name == watermark.column);
            let is_timestamp = column
                .and_then(|c| ColumnType::parse(&c.data_type))
                .is_some_and(|t| t == ColumnType::Timestamp);
            // The rate source has a built-in `timestamp` column; nexmark tables `dateTime`; an
            // Avro source's columns are known only once its schema is read (the worker checks).
            let builtin = (source.rate.is_some() && watermark.column == "timestamp")
                || (source.nexmark.is_some() && watermark.column == "dateTime")
                || source
                    .kafka
                    .as_ref()
                    .is_some_and(|k| k.format.has_value_schema());
            if !is_timestamp && !builtin {
                return Err(err(
                    format!("{path}.watermark.column"),
                    format!(
                        "`{}` is not a timestamp column of the schema",
                        watermark.column
                    ),
                ));
            }
            parse_duration(&watermark.delay)
                .map_err(|m| err(format!("{path}.watermark.delay"), m))?;
            if let Some(idle) = &watermark.idle_timeout {
                parse_duration(idle)
                    .map_err(|m| err(format!("{path}.watermark.idleTimeout"), m))?;
            }
        }
    }
    for (i, table) in spec.tables.iter().enumerate() {
        let path = format!("spec.tables[{i}]");
        check_name(&format!("{path}.name"), &table.name)?;
        if !names.insert(table.name.as_str()) {
            return Err(err(
                format!("{path}.name"),
                format!("duplicate name `{}`", table.name),
            ));
        }
        if usize::from(table.file.is_some()) + usize::from(table.postgres.is_some()) != 1 {
            return Err(err(path, "exactly one of file, postgres must be set"));
        }
        check_schema(&format!("{path}.schema"), &table.schema)?;
        if let Some(interval) = &table.refresh_interval {
            parse_duration(interval).map_err(|m| err(format!("{path}.refreshInterval"), m))?;
        }
        if let Some(pg) = &table.postgres {
            check_lookup_table(&path, table, pg)?;
        }
    }
    for (i, model) in spec.models.iter().enumerate() {
        let path = format!("spec.models[{i}]");
        check_name(&format!("{path}.name"), &model.name)?;
        let kinds = usize::from(model.file.is_some())
            + usize::from(model.streaming_k_means.is_some())
            + usize::from(model.streaming_linear_regression.is_some());
        if kinds != 1 {
            return Err(err(
                path,
                "exactly one of file, streamingKMeans, streamingLinearRegression must be set",
            ));
        }
        let source_of = |name: &str| spec.sources.iter().find(|s| s.name == name);
        if let Some(km) = &model.streaming_k_means {
            let p = format!("{path}.streamingKMeans");
            if source_of(&km.source).is_none() {
                return Err(err(
                    format!("{p}.source"),
                    format!("no source named `{}`", km.source),
                ));
            }
            if km.k == 0 || km.features.is_empty() {
                return Err(err(p, "k and features must be non-empty"));
            }
            if !(0.0..=1.0).contains(&km.decay_factor) {
                return Err(err(format!("{p}.decayFactor"), "must be in [0, 1]"));
            }
            if !km.initial_centers.is_empty()
                && (km.initial_centers.len() != km.k as usize
                    || km
                        .initial_centers
                        .iter()
                        .any(|c| c.len() != km.features.len()))
            {
                return Err(err(
                    format!("{p}.initialCenters"),
                    format!("need {} centers of {} values", km.k, km.features.len()),
                ));
            }
        }
        if let Some(lr) = &model.streaming_linear_regression {
            let p = format!("{path}.streamingLinearRegression");
            if source_of(&lr.source).is_none() {
                return Err(err(
                    format!("{p}.source"),
                    format!("no source named `{}`", lr.source),
                ));
            }
            if lr.features.is_empty() || lr.step_size <= 0.0 {
                return Err(err(p, "features must be non-empty and stepSize positive"));
            }
        }
    }
    if spec.sink.kinds().len() != 1 {
        return Err(err(
            "spec.sink",
            "exactly one of console, file, kafka, postgres, memory, delta, noop must be set",
        ));
    }
    if let Some(delta) = &spec.sink.delta {
        check_delta_sink(spec, delta)?;
    }
    if let Some(file) = &spec.sink.file
        && file.path.trim().is_empty()
    {
        return Err(err("spec.sink.file.path", "empty path"));
    }
    if let Some(file) = &spec.sink.file {
        check_file_sink_mode(spec.output_mode, file)?;
        if let Some(compaction) = &file.compaction {
            if file.overwrite.is_some() {
                return Err(err(
                    "spec.sink.file.compaction",
                    "an overwriting sink keeps one file per partition and task already; \
                     compaction is for `append`",
                ));
            }
            crate::size::parse_size(&compaction.target_file_size)
                .map_err(|m| err("spec.sink.file.compaction.targetFileSize", m))?;
        }
    }
    if let Some(kafka) = &spec.sink.kafka {
        crate::secrets::check_kafka_options(
            "spec.sink.kafka",
            &kafka.options,
            &kafka.secret_options,
        )?;
        check_value_format(
            "spec.sink.kafka",
            kafka.format,
            kafka.value_schema.as_ref(),
            kafka.message_type.as_deref(),
            kafka.schema_registry.as_ref(),
            true,
        )?;
    }
    if let Some(pg) = &spec.sink.postgres {
        check_pg_connection("spec.sink.postgres.connection", &pg.connection)?;
    }
    if let Some(timeout) = spec
        .sink
        .postgres
        .as_ref()
        .and_then(|pg| pg.statement_timeout.as_deref())
    {
        let parsed =
            parse_duration(timeout).map_err(|m| err("spec.sink.postgres.statementTimeout", m))?;
        if parsed.is_zero() {
            return Err(err(
                "spec.sink.postgres.statementTimeout",
                "must be positive (0 would disable the timeout)",
            ));
        }
    }
    if let Some(bound) = spec.health.max_batch_duration.as_deref() {
        let parsed = parse_duration(bound).map_err(|m| err("spec.health.maxBatchDuration", m))?;
        if parsed.is_zero() {
            return Err(err(
                "spec.health.maxBatchDuration",
                "must be positive (leave it unset for no bound)",
            ));
        }
    }
    let trigger = &spec.trigger;
    let set = usize::from(trigger.processing_time.is_some())
        + usize::from(trigger.once == Some(true))
        + usize::from(trigger.available_now == Some(true))
        + usize::from(trigger.continuous.is_some());
    if set > 1 {
        return Err(err(
            "spec.trigger",
            "at most one of processingTime, once, availableNow, continuous may be set",
        ));
    }
    if let Some(interval) = &trigger.processing_time {
        parse_duration(interval).map_err(|m| err("spec.trigger.processingTime", m))?;
    }
    if let Some(interval) = &trigger.continuous {
        parse_duration(interval).map_err(|m| err("spec.trigger.continuous", m))?;
    }
    if let Some(schedule) = &spec.schedule {
        if trigger.once != Some(true) && trigger.available_now != Some(true) {
            return Err(err(
                "spec.schedule",
                "a scheduled query runs to the end of its input each time: set trigger \
                 {availableNow: true} or {once: true}",
            ));
        }
        // Seconds are the local backend's; the operator refuses them for Kubernetes.
        crate::schedule::parse_cron(&schedule.cron, true)
            .map_err(|m| err("spec.schedule.cron", m))?;
        crate::schedule::parse_time_zone(schedule.time_zone.as_deref())
            .map_err(|m| err("spec.schedule.timeZone", m))?;
    }
    for (i, source) in spec.sources.iter().enumerate() {
        if let Some(bytes) = source.file.as_ref().and_then(|f| f.max_record_bytes)
            && !(1024..=1_073_741_824).contains(&bytes)
        {
            return Err(err(
                format!("spec.sources[{i}].file.maxRecordBytes"),
                format!("must be between 1024 and 1073741824 (1 GiB), got {bytes}"),
            ));
        }
    }
    if let Some(attempts) = spec.max_batch_attempts
        && !(1..=100).contains(&attempts)
    {
        return Err(err(
            "spec.maxBatchAttempts",
            format!("must be between 1 and 100, got {attempts}"),
        ));
    }
    if spec.checkpoint.min_batches_to_retain == Some(0) {
        return Err(err(
            "spec.checkpoint.minBatchesToRetain",
            "must be at least 1 (the last committed batch is always kept)",
        ));
    }
    let parallelism = &spec.parallelism;
    if parallelism.replicas == 0 {
        return Err(err("spec.parallelism.replicas", "must be at least 1"));
    }
    if let Some(groups) = parallelism.max_parallelism
        && !(1..=32_768).contains(&groups)
    {
        return Err(err(
            "spec.parallelism.maxParallelism",
            format!(
                "must be between 1 and 32768 (key groups fit 15 bits, as Flink's), got {groups}"
            ),
        ));
    }
    if let Some(auto) = &parallelism.autoscale {
        if auto.min_replicas == 0 {
            return Err(err(
                "spec.parallelism.autoscale.minReplicas",
                "must be at least 1",
            ));
        }
        if auto.min_replicas > auto.max_replicas {
            return Err(err(
                "spec.parallelism.autoscale.minReplicas",
                format!(
                    "minReplicas {} > maxReplicas {}",
                    auto.min_replicas, auto.max_replicas
                ),
            ));
        }
        if !(auto.target_utilization > 0.0 && auto.target_utilization <= 1.0) {
            return Err(err(
                "spec.parallelism.autoscale.targetUtilization",
                "must be in (0, 1]",
            ));
        }
        for (field, value) in [
            ("catchUpDuration", &auto.catch_up_duration),
            ("scaleUpStabilization", &auto.scale_up_stabilization),
            ("scaleDownWindow", &auto.scale_down_window),
            ("cooldown", &auto.cooldown),
        ] {
            if let Some(text) = value {
                parse_duration(text)
                    .map_err(|m| err(format!("spec.parallelism.autoscale.{field}"), m))?;
            }
        }
    }
    Ok(())
}

/// The Delta sink's mode fits the output mode, and its durations and sizes parse.
fn check_delta_sink(
    spec: &StreamingQuerySpec,
    delta: &DeltaSinkSpec,
) -> Result<(), ValidationError> {
    if delta.path.trim().is_empty() {
        return Err(err("spec.sink.delta.path", "empty path"));
    }
    let expected = delta_mode_for(spec.output_mode);
    if let Some(mode) = delta.mode
        && mode != expected
    {
        return Err(err(
            "spec.sink.delta.mode",
            format!(
                "{mode:?} does not fit outputMode {:?} (which writes as {expected:?}); leave mode unset",
                spec.output_mode
            )
            .to_lowercase(),
        ));
    }
    if !delta.key_columns.is_empty() && expected != DeltaWriteMode::Merge {
        return Err(err(
            "spec.sink.delta.keyColumns",
            "only used by mode merge (outputMode update)",
        ));
    }
    if let Some(optimize) = &delta.optimize {
        check_positive_duration("spec.sink.delta.optimize.every", &optimize.every)?;
        if let Some(size) = &optimize.target_file_size {
            let bytes = crate::size::parse_size(size)
                .map_err(|m| err("spec.sink.delta.optimize.targetFileSize", m))?;
            if bytes == 0 {
                return Err(err(
                    "spec.sink.delta.optimize.targetFileSize",
                    "must be positive",
                ));
            }
        }
    }
    if let Some(vacuum) = &delta.vacuum {
        check_positive_duration("spec.sink.delta.vacuum.every", &vacuum.every)?;
        if let Some(retention) = &vacuum.retention {
            parse_duration(retention).map_err(|m| err("spec.sink.delta.vacuum.retention", m))?;
        }
    }
    Ok(())
}

/// How the Delta sink writes under an output mode (Spark's Delta sink: append appends, complete
/// overwrites; update is a MERGE on the keys, as `foreachBatch` + MERGE does in Spark).
pub fn delta_mode_for(output_mode: OutputMode) -> DeltaWriteMode {
    match output_mode {
        OutputMode::Append => DeltaWriteMode::Append,
        OutputMode::Complete => DeltaWriteMode::Overwrite,
        OutputMode::Update => DeltaWriteMode::Merge,
    }
}

fn check_positive_duration(path: &str, text: &str) -> Result<(), ValidationError> {
    let parsed = parse_duration(text).map_err(|m| err(path, m))?;
    if parsed.is_zero() {
        return Err(err(path, "must be positive"));
    }
    Ok(())
}

/// A PostgreSQL connection's TLS fields: a root certificate is a reference, and only used when
/// the mode verifies.
fn check_pg_connection(path: &str, c: &PostgresConnectionSpec) -> Result<(), ValidationError> {
    if let Some(root) = &c.ssl_root_cert {
        crate::secrets::check_secret_ref(&format!("{path}.sslRootCert"), root)?;
        if !matches!(
            c.ssl_mode,
            PostgresSslMode::VerifyCa | PostgresSslMode::VerifyFull
        ) {
            return Err(err(
                format!("{path}.sslRootCert"),
                "only used with sslMode verify-ca or verify-full",
            ));
        }
    }
    Ok(())
}

fn check_name(path: &str, name: &str) -> Result<(), ValidationError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(err(
            path,
            format!("`{name}` is not a SQL identifier ([A-Za-z_][A-Za-z0-9_]*)"),
        ))
    }
}

/// A PostgreSQL lookup table reads its declared `schema` columns and is looked up by
/// `keyColumns` (a subset of them) every batch, so `refreshInterval` does not apply.
fn check_lookup_table(
    path: &str,
    table: &crate::TableSpec,
    pg: &crate::PostgresTableSpec,
) -> Result<(), ValidationError> {
    if table.schema.is_empty() {
        return Err(err(
            format!("{path}.schema"),
            "a PostgreSQL table needs a schema (the columns to read)",
        ));
    }
    check_pg_connection(&format!("{path}.postgres.connection"), &pg.connection)?;
    if pg.key_columns.is_empty() {
        return Err(err(
            format!("{path}.postgres.keyColumns"),
            "a PostgreSQL table needs keyColumns (the columns it is looked up by)",
        ));
    }
    for (j, key) in pg.key_columns.iter().enumerate() {
        if !table.schema.iter().any(|c| &c.name == key) {
            return Err(err(
                format!("{path}.postgres.keyColumns[{j}]"),
                format!("`{key}` is not a column of the table's schema"),
            ));
        }
    }
    if table.refresh_interval.is_some() {
        return Err(err(
            format!("{path}.refreshInterval"),
            "a PostgreSQL table is looked up every batch; refreshInterval applies to file tables",
        ));
    }
    Ok(())
}

fn check_schema(path: &str, schema: &[ColumnSpec]) -> Result<(), ValidationError> {
    let mut seen = HashSet::new();
    for (i, column) in schema.iter().enumerate() {
        if ColumnType::parse(&column.data_type).is_none() {
            return Err(err(
                format!("{path}[{i}].type"),
                format!("unknown type `{}`", column.data_type),
            ));
        }
        if !seen.insert(column.name.as_str()) {
            return Err(err(
                format!("{path}[{i}].name"),
                format!("duplicate column `{}`", column.name),
            ));
        }
    }
    Ok(())
}

/// Checks a Kafka source's or sink's `format` against `valueSchema`, `messageType` and
/// `schemaRegistry` (`path` is the `kafka` object's field path). `single_topic`: whether the
/// subject may default to `<topic>-value`.
///
/// # Errors
/// A value schema or registry with a format that has none (`raw`, `json`, `csv`); `messageType`
/// with a format other than `protobuf`, or not a Protobuf full name; `avro`/`protobuf` with
/// neither schema nor registry; `valueSchema` not exactly one of `inline`, `path`; a registry URL
/// that is not http(s), a subject needed but not given, or credentials that are not one complete
/// form.
fn check_value_format(
    path: &str,
    format: KafkaFormat,
    value_schema: Option<&ValueSchemaSpec>,
    message_type: Option<&str>,
    registry: Option<&SchemaRegistrySpec>,
    single_topic: bool,
) -> Result<(), ValidationError> {
    if let Some(name) = message_type {
        if format != KafkaFormat::Protobuf {
            return Err(err(
                format!("{path}.messageType"),
                "only format protobuf takes a messageType",
            ));
        }
        if !is_protobuf_full_name(name) {
            return Err(err(
                format!("{path}.messageType"),
                format!(
                    "`{name}` is not a Protobuf message name (identifiers joined by dots, \
                     e.g. iot.v1.Reading)"
                ),
            ));
        }
    }
    if !format.has_value_schema() {
        if value_schema.is_some() {
            return Err(err(
                format!("{path}.valueSchema"),
                "only formats avro and protobuf take a valueSchema",
            ));
        }
        if registry.is_some() {
            return Err(err(
                format!("{path}.schemaRegistry"),
                "only formats avro and protobuf use a schema registry",
            ));
        }
        return Ok(());
    }
    if value_schema.is_none() && registry.is_none() {
        let what = match format {
            KafkaFormat::Protobuf => "the .proto schema",
            _ => "the Avro schema",
        };
        return Err(err(
            format!("{path}.valueSchema"),
            format!(
                "format {} needs {what}: set valueSchema (inline or path), schemaRegistry, \
                 or both",
                format.name()
            ),
        ));
    }
    if let Some(schema) = value_schema
        && usize::from(schema.inline.is_some()) + usize::from(schema.path.is_some()) != 1
    {
        return Err(err(
            format!("{path}.valueSchema"),
            "exactly one of inline, path must be set",
        ));
    }
    if let Some(registry) = registry {
        let url = registry.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(err(
                format!("{path}.schemaRegistry.url"),
                "must be an http:// or https:// URL",
            ));
        }
        if registry.subject.is_none() && !single_topic && value_schema.is_none() {
            return Err(err(
                format!("{path}.schemaRegistry.subject"),
                "required for the reader schema when the source reads several topics (the \
                 default is <topic>-value); or give valueSchema",
            ));
        }
        if let Some(auth) = &registry.auth {
            let auth_path = format!("{path}.schemaRegistry.auth");
            match (&auth.username, &auth.password, &auth.bearer_token) {
                (Some(_), Some(password), None) => {
                    crate::secrets::check_secret_ref(&format!("{auth_path}.password"), password)?
                }
                (None, None, Some(token)) => {
                    crate::secrets::check_secret_ref(&format!("{auth_path}.bearerToken"), token)?
                }
                _ => {
                    return Err(err(
                        auth_path,
                        "set either username with password (a secret reference) or bearerToken",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A Protobuf fully qualified name: identifiers (a letter or `_`, then letters, digits, `_`)
/// joined by dots, optionally with a leading dot (protobuf language spec, "fullIdent").
fn is_protobuf_full_name(name: &str) -> bool {
    let name = name.strip_prefix('.').unwrap_or(name);
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use crate::manifest::parse_manifest;

    fn manifest(spec_tail: &str) -> String {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingQuery\nmetadata: {{name: q}}\nspec:\n  sql: SELECT * FROM events\n{spec_tail}"
        )
    }

    const SOURCES: &str = "  sources:\n    - name: events\n      file: {path: /in, format: json}\n      schema: [{name: ts, type: timestamp}, {name: v, type: long}]\n";

    fn error_of(tail: &str) -> String {
        parse_manifest(&manifest(tail))
            .expect_err("must be rejected")
            .to_string()
    }

    fn kafka_source(kafka_tail: &str, schema: &str) -> String {
        format!(
            "  sources:\n    - name: events\n      kafka: {{bootstrapServers: k:9092, topic: t{kafka_tail}}}\n{schema}"
        )
    }

    #[test]
    fn avro_value_schema_and_registry_combinations_are_checked_naming_the_field() {
        let registry = ", schemaRegistry: {url: 'http://registry:8081'}";
        let inline =
            ", valueSchema: {inline: '{\"type\": \"record\", \"name\": \"R\", \"fields\": []}'}";
        let sink = "  sink: {console: {}}\n";
        let ok = |tail: &str| {
            parse_manifest(&manifest(&format!("{}{sink}", kafka_source(tail, ""))))
                .unwrap_or_else(|e| panic!("{tail}: {e}"));
        };
        ok(&format!(", format: avro{registry}"));
        ok(&format!(", format: avro{inline}"));
        ok(&format!(", format: avro{inline}{registry}"));
        let cases = [
            (
                ", format: avro".to_string(),
                "",
                "spec.sources[0].kafka.valueSchema",
                "needs the Avro schema",
            ),
            (
                format!(", format: json{registry}"),
                "      schema: [{name: v, type: long}]\n",
                "spec.sources[0].kafka.schemaRegistry",
                "only formats avro and protobuf",
            ),
            (
                format!(", format: avro{registry}"),
                "      schema: [{name: v, type: long}]\n",
                "spec.sources[0].schema",
                "leave schema unset",
            ),
            (
                ", format: avro, valueSchema: {inline: x, path: /s.avsc}".to_string(),
                "",
                "spec.sources[0].kafka.valueSchema",
                "exactly one of inline, path",
            ),
            (
                ", format: avro, schemaRegistry: {url: 'ftp://r'}".to_string(),
                "",
                "spec.sources[0].kafka.schemaRegistry.url",
                "http",
            ),
            (
                ", format: avro, schemaRegistry: {url: 'http://r', auth: {username: u}}"
                    .to_string(),
                "",
                "spec.sources[0].kafka.schemaRegistry.auth",
                "bearerToken",
            ),
            (
                ", format: avro, schemaRegistry: {url: 'http://r', auth: {bearerToken: {}}}"
                    .to_string(),
                "",
                "spec.sources[0].kafka.schemaRegistry.auth.bearerToken",
                "exactly one of env, path",
            ),
        ];
        for (tail, schema, path, message) in cases {
            let e = error_of(&format!("{}{sink}", kafka_source(&tail, schema)));
            assert!(
                e.contains(&format!("`{path}`")) && e.contains(message),
                "{tail}: {e}"
            );
        }
        // A password is never given inline: the field takes a reference only.
        let e = error_of(&format!(
            "{}{sink}",
            kafka_source(
                ", format: avro, schemaRegistry: {url: 'http://r', auth: {username: u, password: hunter2}}",
                ""
            )
        ));
        assert!(e.contains("password"), "{e}");
        // Several topics: the reader schema's subject cannot default to `<topic>-value`.
        let e = error_of(&format!(
            "  sources:\n    - name: events\n      kafka: {{bootstrapServers: k:9092, topics: [a, b], format: avro{registry}}}\n{sink}"
        ));
        assert!(
            e.contains("spec.sources[0].kafka.schemaRegistry.subject"),
            "{e}"
        );
        // The sink: same rules.
        let e = error_of(&format!(
            "{}  sink: {{kafka: {{bootstrapServers: k:9092, topic: o, format: csv{inline}}}}}\n",
            kafka_source(", format: avro", "")
                .replace(", format: avro", &format!(", format: avro{registry}"))
        ));
        assert!(
            e.contains("spec.sink.kafka.valueSchema")
                && e.contains("only formats avro and protobuf"),
            "{e}"
        );
    }

    #[test]
    fn protobuf_value_schema_message_type_and_registry_combinations_are_checked_naming_the_field() {
        let registry = ", schemaRegistry: {url: 'http://registry:8081'}";
        let inline = ", valueSchema: {inline: 'syntax = \"proto3\"; message R { int64 v = 1; }'}";
        let sink = "  sink: {console: {}}\n";
        let ok = |tail: &str| {
            parse_manifest(&manifest(&format!("{}{sink}", kafka_source(tail, ""))))
                .unwrap_or_else(|e| panic!("{tail}: {e}"));
        };
        ok(&format!(", format: protobuf{registry}"));
        ok(&format!(", format: protobuf{inline}"));
        ok(&format!(
            ", format: protobuf{inline}, messageType: iot.v1.R{registry}"
        ));
        ok(&format!(", format: protobuf{registry}, messageType: .R_2"));
        let cases = [
            (
                ", format: protobuf".to_string(),
                "",
                "spec.sources[0].kafka.valueSchema",
                "format protobuf needs the .proto schema",
            ),
            (
                format!(", format: avro{registry}, messageType: R"),
                "",
                "spec.sources[0].kafka.messageType",
                "only format protobuf",
            ),
            (
                format!(", format: protobuf{inline}, messageType: 'iot..R'"),
                "",
                "spec.sources[0].kafka.messageType",
                "not a Protobuf message name",
            ),
            (
                format!(", format: protobuf{inline}, messageType: '1R'"),
                "",
                "spec.sources[0].kafka.messageType",
                "not a Protobuf message name",
            ),
            (
                format!(", format: protobuf{registry}"),
                "      schema: [{name: v, type: long}]\n",
                "spec.sources[0].schema",
                "kafka.format protobuf the columns come from the value schema",
            ),
            (
                ", format: protobuf, valueSchema: {inline: x, path: /s.proto}".to_string(),
                "",
                "spec.sources[0].kafka.valueSchema",
                "exactly one of inline, path",
            ),
        ];
        for (tail, schema, path, message) in cases {
            let e = error_of(&format!("{}{sink}", kafka_source(&tail, schema)));
            assert!(
                e.contains(&format!("`{path}`")) && e.contains(message),
                "{tail}: {e}"
            );
        }
        // The sink: same rules (messageType only with protobuf).
        let e = error_of(&format!(
            "{}  sink: {{kafka: {{bootstrapServers: k:9092, topic: o, format: json, messageType: R}}}}\n",
            kafka_source(&format!(", format: protobuf{registry}"), "")
        ));
        assert!(
            e.contains("spec.sink.kafka.messageType") && e.contains("only format protobuf"),
            "{e}"
        );
    }

    #[test]
    fn delta_sink_mode_must_fit_the_output_mode() {
        let sink = "  sink: {delta: {path: /t, mode: merge}}\n";
        let e = error_of(&format!("{SOURCES}{sink}"));
        assert!(
            e.contains("spec.sink.delta.mode") && e.contains("outputmode append"),
            "{e}"
        );
        parse_manifest(&manifest(&format!("{SOURCES}{sink}  outputMode: update\n")))
            .expect("merge fits update");
        let e = error_of(&format!(
            "{SOURCES}  sink: {{delta: {{path: /t, keyColumns: [v]}}}}\n"
        ));
        assert!(e.contains("spec.sink.delta.keyColumns"), "{e}");
        let e = error_of(&format!(
            "{SOURCES}  sink: {{delta: {{path: /t, optimize: {{every: 1h, targetFileSize: 1 parsec}}}}}}\n"
        ));
        assert!(e.contains("spec.sink.delta.optimize.targetFileSize"), "{e}");
        let e = error_of(&format!(
            "{SOURCES}  sink: {{delta: {{path: /t, vacuum: {{every: 0s}}}}}}\n"
        ));
        assert!(e.contains("spec.sink.delta.vacuum.every"), "{e}");
    }

    #[test]
    fn two_sink_kinds_are_rejected() {
        let e = error_of(&format!(
            "{SOURCES}  sink: {{console: {{}}, memory: {{name: m}}}}\n"
        ));
        assert!(e.contains("spec.sink") && e.contains("exactly one"), "{e}");
    }

    #[test]
    fn watermark_must_name_a_timestamp_column() {
        let e = error_of(&format!(
            "{SOURCES}      watermark: {{column: v, delay: 10m}}\n  sink: {{console: {{}}}}\n"
        ));
        assert!(e.contains("spec.sources[0].watermark.column"), "{e}");
    }

    #[test]
    fn max_batch_duration_must_be_a_positive_duration() {
        for (bound, message) in [
            ("soon", "spec.health.maxBatchDuration"),
            ("0s", "must be positive"),
        ] {
            let e = error_of(&format!(
                "{SOURCES}  sink: {{console: {{}}}}\n  health: {{maxBatchDuration: {bound}}}\n"
            ));
            assert!(
                e.contains("spec.health.maxBatchDuration") && e.contains(message),
                "{e}"
            );
        }
        let ok = parse_manifest(&manifest(&format!(
            "{SOURCES}  sink: {{console: {{}}}}\n  health: {{maxBatchDuration: 15m}}\n"
        )))
        .expect("valid");
        assert_eq!(ok.spec.health.max_batch_duration.as_deref(), Some("15m"));
    }

    #[test]
    fn file_sink_takes_append_or_complete_with_overwrite() {
        let spec = |mode: &str, extra: &str| {
            format!(
                "{SOURCES}  sink: {{file: {{path: /out, format: parquet{extra}}}}}\n  outputMode: {mode}\n"
            )
        };
        let e = error_of(&spec("update", ""));
        assert!(
            e.contains("`spec.outputMode`: the file sink does not support `update` output mode"),
            "{e}"
        );
        let e = error_of(&spec("complete", ""));
        assert!(
            e.contains("`spec.outputMode`")
                && e.contains("only with `sink.file.overwrite: partitions`"),
            "{e}"
        );
        let e = error_of(&spec("append", ", overwrite: partitions"));
        assert!(e.contains("`spec.sink.file.overwrite`"), "{e}");
        for (mode, extra) in [("append", ""), ("complete", ", overwrite: partitions")] {
            parse_manifest(&manifest(&spec(mode, extra))).expect(mode);
        }
        let e = error_of(&spec("append", ", compaction: {targetFileSize: 10MB}"));
        assert!(
            e.contains("`spec.sink.file.compaction.targetFileSize`: `10MB` is not a size"),
            "{e}"
        );
        let e = error_of(&spec(
            "complete",
            ", overwrite: partitions, compaction: {minFiles: 4}",
        ));
        assert!(e.contains("`spec.sink.file.compaction`"), "{e}");
        parse_manifest(&manifest(&spec(
            "append",
            ", compaction: {minFiles: 4, targetFileSize: 64Mi}",
        )))
        .expect("compaction");
    }

    #[test]
    fn bad_delay_is_named() {
        let e = error_of(&format!(
            "{SOURCES}      watermark: {{column: ts, delay: soon}}\n  sink: {{console: {{}}}}\n"
        ));
        assert!(e.contains("spec.sources[0].watermark.delay"), "{e}");
    }

    #[test]
    fn nexmark_source_rules() {
        let nexmark = |options: &str, rest: &str| {
            manifest(&format!(
                "  sources:\n    - name: events\n      nexmark: {{{options}}}\n{rest}  sink: {{console: {{}}}}\n"
            ))
        };
        // The built-in `dateTime` column takes a watermark.
        let ok = nexmark(
            "table: bid, maxEvents: 1000",
            "      watermark: {column: dateTime, delay: 5s}\n",
        );
        parse_manifest(&ok).expect("valid nexmark source");
        let e = parse_manifest(&nexmark("table: bid, eventsPerSecond: 0", ""))
            .expect_err("zero rate")
            .to_string();
        assert!(e.contains("spec.sources[0].nexmark.eventsPerSecond"), "{e}");
        let e = parse_manifest(&nexmark(
            "table: person",
            "      schema: [{name: id, type: long}]\n",
        ))
        .expect_err("schema")
        .to_string();
        assert!(e.contains("spec.sources[0].schema"), "{e}");
        let e = parse_manifest(&nexmark("table: bids", ""))
            .expect_err("unknown table")
            .to_string();
        assert!(e.contains("table"), "{e}");
    }

    #[test]
    fn file_source_needs_schema() {
        let e = error_of(
            "  sources:\n    - name: events\n      file: {path: /in, format: json}\n  sink: {console: {}}\n",
        );
        assert!(e.contains("spec.sources[0].schema"), "{e}");
    }

    #[test]
    fn unknown_column_type_is_named() {
        let e = error_of(
            "  sources:\n    - name: events\n      file: {path: /in, format: json}\n      schema: [{name: a, type: decimalish}]\n  sink: {console: {}}\n",
        );
        assert!(e.contains("spec.sources[0].schema[0].type"), "{e}");
    }

    #[test]
    fn two_triggers_are_rejected() {
        let e = error_of(&format!(
            "{SOURCES}  sink: {{console: {{}}}}\n  trigger: {{once: true, processingTime: 1s}}\n"
        ));
        assert!(e.contains("spec.trigger"), "{e}");
    }

    #[test]
    fn zero_batches_to_retain_is_rejected() {
        let e = error_of(&format!(
            "{SOURCES}  sink: {{console: {{}}}}\n  checkpoint: {{minBatchesToRetain: 0}}\n"
        ));
        assert!(e.contains("spec.checkpoint.minBatchesToRetain"), "{e}");
    }

    #[test]
    fn min_above_max_replicas_is_rejected() {
        let e = error_of(&format!(
            "{SOURCES}  sink: {{console: {{}}}}\n  parallelism: {{autoscale: {{enabled: true, minReplicas: 5, maxReplicas: 2}}}}\n"
        ));
        assert!(e.contains("minReplicas 5 > maxReplicas 2"), "{e}");
    }

    #[test]
    fn max_parallelism_must_fit_key_groups() {
        let e = error_of(&format!(
            "{SOURCES}  sink: {{console: {{}}}}\n  parallelism: {{maxParallelism: 40000}}\n"
        ));
        assert!(
            e.contains("spec.parallelism.maxParallelism") && e.contains("got 40000"),
            "{e}"
        );
        let e = error_of(&format!(
            "{SOURCES}  sink: {{console: {{}}}}\n  parallelism: {{maxParallelism: 0}}\n"
        ));
        assert!(e.contains("got 0"), "{e}");
    }

    #[test]
    fn lookup_table_keys_must_be_schema_columns() {
        let table = "  tables:\n    - name: devices\n      postgres: {connection: {host: h, database: d, user: u}, table: devices, keyColumns: [id]}\n";
        let e = error_of(&format!(
            "{SOURCES}{table}      schema: [{{name: deviceId, type: string}}]\n  sink: {{console: {{}}}}\n"
        ));
        assert!(e.contains("spec.tables[0].postgres.keyColumns[0]"), "{e}");
        let e = error_of(&format!(
            "{SOURCES}{table}      schema: [{{name: id, type: string}}]\n      refreshInterval: 1m\n  sink: {{console: {{}}}}\n"
        ));
        assert!(e.contains("spec.tables[0].refreshInterval"), "{e}");
        parse_manifest(&manifest(&format!(
            "{SOURCES}{table}      schema: [{{name: id, type: string}}]\n  sink: {{console: {{}}}}\n"
        )))
        .expect("valid");
    }

    #[test]
    fn valid_spec_passes() {
        parse_manifest(&manifest(&format!("{SOURCES}  sink: {{console: {{}}}}\n"))).expect("valid");
    }

    #[test]
    fn a_schedule_needs_a_one_shot_trigger_a_cron_and_a_known_zone() {
        let sink = "  sink: {console: {}}\n";
        let e = error_of(&format!("{SOURCES}{sink}  schedule: {{cron: '@hourly'}}\n"));
        assert!(
            e.contains("spec.schedule") && e.contains("availableNow"),
            "{e}"
        );
        let once = "  trigger: {availableNow: true}\n";
        let e = error_of(&format!(
            "{SOURCES}{sink}{once}  schedule: {{cron: '99 * * * *'}}\n"
        ));
        assert!(e.contains("spec.schedule.cron"), "{e}");
        let e = error_of(&format!(
            "{SOURCES}{sink}{once}  schedule: {{cron: '@hourly', timeZone: Mars/Base}}\n"
        ));
        assert!(e.contains("spec.schedule.timeZone"), "{e}");
        parse_manifest(&manifest(&format!(
            "{SOURCES}{sink}{once}  schedule: {{cron: '*/5 * * * *', timeZone: Europe/Zurich, concurrencyPolicy: Forbid}}\n"
        )))
        .expect("valid schedule");
    }
}
