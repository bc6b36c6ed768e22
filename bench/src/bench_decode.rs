//! JSON decoding ceiling on one core: how fast arrow-json alone turns the IoT JSON lines into
//! Arrow columns, and how fast Sluice's text decoder (arrow-json plus line bookkeeping and
//! bad-record checks) does, on the same bytes already in memory.
//!
//! Why: scenarios (1) and (2) of `bench` read these files, and decoding is most of their task
//! time, so rows/s per core of the decoder bounds them: with 2 cores no file query can go faster
//! than 2 × the figure printed here (before filtering, aggregating or writing anything).
//!
//! Usage: `bench-decode <file.json> [--rounds 3]` (e.g. a file of `~/.cache/sluice/bench-data`).
//! Prints, per decoder and round: rows, seconds, M rows/s and MB/s (decimal MB).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use clap::Parser;
use sluice_worker::schema::timestamp_type;
use sluice_worker::source::decode::{BATCH_ROWS, TextFormat, decode_text};

#[derive(Parser)]
#[command(about = "JSON decoding rows/s on one core: arrow-json alone and Sluice's decoder")]
struct Args {
    /// A JSON-lines file with the IoT schema (deviceId, temperature, danger_level, timestamp).
    file: PathBuf,
    /// Rounds per decoder (the first warms the allocator).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

/// The IoT schema as the bench manifests declare it (`timestamp` parsed to Sluice's timestamp).
fn iot_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("deviceId", DataType::Utf8, true),
        Field::new("temperature", DataType::Float64, true),
        Field::new("danger_level", DataType::Utf8, true),
        Field::new("timestamp", timestamp_type(), true),
    ]))
}

/// arrow-json's `Decoder` over the whole buffer, `batch_rows` rows per batch, the batches kept (as
/// a micro-batch keeps its input until the query has run). Returns the rows decoded.
fn arrow_json_only(schema: &SchemaRef, data: &[u8], batch_rows: usize) -> Result<usize> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(batch_rows)
        .build_decoder()?;
    let mut kept = Vec::new();
    let mut rows = 0;
    let mut rest = data;
    while !rest.is_empty() {
        let read = decoder.decode(rest)?;
        if read == 0 {
            bail!("arrow-json made no progress");
        }
        rest = &rest[read..];
        if let Some(batch) = decoder.flush()? {
            rows += batch.num_rows();
            kept.push(batch);
        }
    }
    if let Some(batch) = decoder.flush()? {
        rows += batch.num_rows();
        kept.push(batch);
    }
    drop(kept);
    Ok(rows)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let data =
        std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let schema = iot_schema();
    println!(
        "{}: {} bytes, {} lines",
        args.file.display(),
        data.len(),
        memchr::memchr_iter(b'\n', &data).count()
    );
    for round in 1..=args.rounds {
        for batch_rows in [8192, BATCH_ROWS] {
            let started = Instant::now();
            let rows = arrow_json_only(&schema, &data, batch_rows)?;
            report(
                &format!("arrow-json, {batch_rows:>5}-row batches"),
                round,
                rows,
                data.len(),
                started,
            );
        }
        let started = Instant::now();
        let (batches, bad) = decode_text(&schema, &TextFormat::Json, "bench", &data)?;
        let rows = batches.iter().map(|b| b.num_rows()).sum::<usize>() + bad.len();
        report(
            "Sluice decoder (65536-row batches)",
            round,
            rows,
            data.len(),
            started,
        );
    }
    Ok(())
}

fn report(label: &str, round: u32, rows: usize, bytes: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{label} round {round}: {rows} rows in {seconds:.3} s = {:.2} M rows/s, {:.0} MB/s (one core)",
        rows as f64 / seconds / 1e6,
        bytes as f64 / seconds / 1e6
    );
}
