//! The Nexmark event stream as JSON-lines files, so that other engines read the exact events the
//! `nexmark` source generates (`sluice_worker::source::nexmark`).
//!
//! `person.json`, `auction.json` and `bid.json` hold events `0..events` of each table, one JSON
//! object per line, in event order, with the source's column names; times are RFC 3339 UTC with
//! milliseconds (`2015-07-15T00:00:00.001Z`), prices integers (cents).

use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_worker::source::nexmark::model::{self, Kind};

use crate::rfc3339_ms;

/// The three files' names, in table order.
pub const FILES: [&str; 3] = ["person.json", "auction.json", "bid.json"];

/// Rows written per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub persons: u64,
    pub auctions: u64,
    pub bids: u64,
}

/// A JSON string literal (quotes and escapes).
fn text(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The JSON line of event `n` (no newline) and the file it belongs to (index into [`FILES`]).
pub fn json_line(n: u64, events_per_second: u64) -> (usize, String) {
    match model::kind_of(n) {
        Kind::Person => {
            let p = model::person(n, events_per_second);
            let line = format!(
                "{{\"id\":{},\"name\":{},\"emailAddress\":{},\"creditCard\":{},\"city\":{},\"state\":{},\"dateTime\":\"{}\",\"extra\":{}}}",
                p.id,
                text(&p.name),
                text(&p.email_address),
                text(&p.credit_card),
                text(&p.city),
                text(&p.state),
                rfc3339_ms(p.date_time),
                text(&p.extra)
            );
            (0, line)
        }
        Kind::Auction => {
            let a = model::auction(n, events_per_second);
            let line = format!(
                "{{\"id\":{},\"itemName\":{},\"description\":{},\"initialBid\":{},\"reserve\":{},\"dateTime\":\"{}\",\"expires\":\"{}\",\"seller\":{},\"category\":{},\"extra\":{}}}",
                a.id,
                text(&a.item_name),
                text(&a.description),
                a.initial_bid,
                a.reserve,
                rfc3339_ms(a.date_time),
                rfc3339_ms(a.expires),
                a.seller,
                a.category,
                text(&a.extra)
            );
            (1, line)
        }
        Kind::Bid => {
            let b = model::bid(n, events_per_second);
            let line = format!(
                "{{\"auction\":{},\"bidder\":{},\"price\":{},\"channel\":{},\"url\":{},\"dateTime\":\"{}\",\"extra\":{}}}",
                b.auction,
                b.bidder,
                b.price,
                text(&b.channel),
                text(&b.url),
                rfc3339_ms(b.date_time),
                text(&b.extra)
            );
            (2, line)
        }
    }
}

/// Writes events `0..events` into `dir` as [`FILES`], event times spaced at `events_per_second`
/// (the source's `eventsPerSecond`; 10,000 when the source has none). Each file is written under
/// a hidden name and renamed, so a running query never sees half a file.
///
/// # Errors
/// I/O errors.
pub fn write_files(dir: &Path, events: u64, events_per_second: u64) -> std::io::Result<Counts> {
    std::fs::create_dir_all(dir)?;
    let hidden: Vec<PathBuf> = FILES
        .iter()
        .map(|f| dir.join(format!(".{f}.tmp")))
        .collect();
    let mut outs = Vec::new();
    for path in &hidden {
        outs.push(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path)?,
        ));
    }
    let mut counts = [0u64; 3];
    for n in 0..events {
        let (file, line) = json_line(n, events_per_second);
        outs[file].write_all(line.as_bytes())?;
        outs[file].write_all(b"\n")?;
        counts[file] += 1;
    }
    for (mut out, (path, name)) in outs.into_iter().zip(hidden.iter().zip(FILES)) {
        out.flush()?;
        drop(out);
        std::fs::rename(path, dir.join(name))?;
    }
    Ok(Counts {
        persons: counts[0],
        auctions: counts[1],
        bids: counts[2],
    })
}

/// The three tables' folder names, in table order (as [`FILES`] without `.json`).
pub const TABLES: [&str; 3] = ["person", "auction", "bid"];

/// Writes events `0..events` as `dir/<table>/part-<k>.json` (JSON lines as in [`write_files`]),
/// `parts` files per table: part `k` holds the table's events among `k * events / parts ..
/// (k + 1) * events / parts`, so each file is in event-time order and a file source with `p`
/// partitions (files dealt to tasks) gets a share of every table. For engines that read a
/// folder per table (`bench-nexmark`). Each file is written under a hidden name and renamed.
///
/// # Errors
/// I/O errors.
pub fn write_parts(
    dir: &Path,
    events: u64,
    events_per_second: u64,
    parts: u64,
) -> std::io::Result<Counts> {
    let parts = parts.max(1);
    let mut counts = [0u64; 3];
    for k in 0..parts {
        let (from, to) = (k * events / parts, (k + 1) * events / parts);
        let mut outs = Vec::new();
        for table in TABLES {
            let folder = dir.join(table);
            std::fs::create_dir_all(&folder)?;
            let hidden = folder.join(format!(".part-{k:05}.json.tmp"));
            let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&hidden)?);
            outs.push((out, hidden, folder.join(format!("part-{k:05}.json"))));
        }
        for n in from..to {
            let (file, line) = json_line(n, events_per_second);
            outs[file].0.write_all(line.as_bytes())?;
            outs[file].0.write_all(b"\n")?;
            counts[file] += 1;
        }
        for (mut out, hidden, path) in outs {
            out.flush()?;
            drop(out);
            std::fs::rename(hidden, path)?;
        }
    }
    Ok(Counts {
        persons: counts[0],
        auctions: counts[1],
        bids: counts[2],
    })
}

#[cfg(test)]
mod tests {
    use std::io::BufReader;

    use sluice_crds::NexmarkTable;
    use sluice_worker::source::nexmark::{table_batch, table_schema};

    use super::*;

    /// The files decode, with the source's schema, to exactly the rows the source reads.
    #[test]
    fn files_hold_the_source_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = 500;
        let counts = write_files(dir.path(), events, 1000).expect("write");
        assert_eq!(
            counts,
            Counts {
                persons: 10,
                auctions: 30,
                bids: 460
            }
        );
        let tables = [
            NexmarkTable::Person,
            NexmarkTable::Auction,
            NexmarkTable::Bid,
        ];
        for (table, file) in tables.into_iter().zip(FILES) {
            let schema = table_schema(table);
            let reader = arrow::json::ReaderBuilder::new(schema)
                .with_batch_size(10_000)
                .build(BufReader::new(
                    std::fs::File::open(dir.path().join(file)).expect("open"),
                ))
                .expect("reader");
            let batches: Vec<_> = reader.map(|b| b.expect("decode")).collect();
            assert_eq!(batches.len(), 1, "{file}");
            let expected = table_batch(table, Some(1000), 0..events).expect("batch");
            assert_eq!(batches[0], expected, "{file}");
        }
    }

    /// The parts of a table, read in part order, are that table's single file.
    #[test]
    fn parts_split_each_table_in_event_order() {
        let (whole, split) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let counts = write_files(whole.path(), 777, 1000).expect("write");
        assert_eq!(
            write_parts(split.path(), 777, 1000, 4).expect("parts"),
            counts
        );
        for (table, file) in TABLES.into_iter().zip(FILES) {
            let joined: String = (0..4)
                .map(|k| {
                    std::fs::read_to_string(
                        split.path().join(table).join(format!("part-{k:05}.json")),
                    )
                    .expect("part")
                })
                .collect();
            let one = std::fs::read_to_string(whole.path().join(file)).expect("file");
            assert_eq!(joined, one, "{table}");
        }
    }
}
