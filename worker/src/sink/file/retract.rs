//! Taking back a run's batches from the file sink's output, for a checkpoint restore: the
//! restored generation replays the batches after N under its own run id, so the old run's output
//! of those batches must stop counting.
//!
//! Each commit-log entry `_sluice_log/<run>/<task>-<batchId>.json` of a batch after N is renamed to
//! `<…>.json.retracted` (which [`super::committed_files`] skips: only `.json` counts) and then the
//! data files it lists are deleted, so readers that ignore the log see no duplicates either. The
//! order keeps every step safe to repeat: the retracted copy is written first, then the live
//! entry deleted (from here on the files no longer count), then the files; a repeat finishes the
//! deletes of the entries already retracted.

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};

use super::{LOG_DIR, LogEntry, read_log_entry_at};
use crate::error::{EngineError, Result};
use crate::storage::Location;

const RETRACTED: &str = ".retracted";

/// What [`retract_after`] took back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retracted {
    /// Commit-log entries retracted by this call.
    pub entries: u64,
    /// Rows those entries had written.
    pub rows: u64,
}

/// Retracts run `run`'s output of every batch after `batch_id` (all tasks) under the output
/// `location`.
///
/// # Errors
/// [`EngineError::Storage`] when the store fails, [`EngineError::Sink`] for an unreadable entry.
pub async fn retract_after(location: &Location, run: &str, batch_id: u64) -> Result<Retracted> {
    let dir = location.child(&format!("{LOG_DIR}/{run}"));
    let paths: Vec<object_store::path::Path> = location
        .store
        .list(Some(&dir))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| EngineError::storage(dir.to_string(), e))?;
    let mut done = Retracted::default();
    for path in paths {
        let Some(name) = path.filename().map(str::to_string) else {
            continue;
        };
        let (live, stem) = match name.strip_suffix(RETRACTED) {
            Some(stem) => (false, stem.to_string()),
            None => (true, name.clone()),
        };
        let Some(batch) = entry_batch_id(&stem) else {
            continue;
        };
        if batch <= batch_id {
            continue;
        }
        let entry: LogEntry = read_log_entry_at(location, &path).await?;
        if live {
            let retracted = dir.clone().join(format!("{stem}{RETRACTED}"));
            let body =
                serde_json::to_vec(&entry).map_err(|e| EngineError::Internal(e.to_string()))?;
            location
                .store
                .put(&retracted, PutPayload::from(body))
                .await
                .map_err(|e| EngineError::storage(retracted.to_string(), e))?;
            delete(location, &path).await?;
            done.entries += 1;
            done.rows += entry.rows;
        }
        for file in &entry.files {
            delete(location, &super::stored_path(location, file)?).await?;
        }
    }
    Ok(done)
}

/// The batch id of a log entry name `<task>-<batchId>.json`.
fn entry_batch_id(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    stem.split_once('-')?.1.parse().ok()
}

async fn delete(location: &Location, path: &object_store::path::Path) -> Result<()> {
    match location.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(EngineError::storage(path.to_string(), e)),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    use super::*;
    use crate::sink::Sink;
    use crate::sink::file::{FileSink, committed_files};

    #[tokio::test]
    async fn batches_after_the_restored_one_stop_counting_and_their_files_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("utf8").to_string();
        let spec: sluice_crds::FileSinkSpec =
            serde_saphyr::from_str(&format!("{{path: \"{path}\", format: json}}")).expect("spec");
        let sink = FileSink::new(&spec, "run-a").expect("sink");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        for batch_id in 0..4 {
            let rows = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(vec![batch_id as i64]))],
            )
            .expect("rows");
            sink.write(0, batch_id, &[rows]).await.expect("write");
        }
        let location = Location::parse(&path).expect("loc");
        let retracted = retract_after(&location, "run-a", 1).await.expect("retract");
        assert_eq!(
            retracted,
            Retracted {
                entries: 2,
                rows: 2
            }
        );
        let names = |files: Vec<String>| {
            files
                .iter()
                .map(|f| f.split('-').nth(2).unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        let files = committed_files(&location)
            .await
            .expect("log")
            .expect("some");
        assert_eq!(
            names(files),
            vec![format!("{:020}", 0), format!("{:020}", 1)]
        );
        assert!(!dir.path().join(sink.file_name(0, 2)).exists());
        assert!(dir.path().join(sink.file_name(0, 1)).exists());
        // Repeating it takes back nothing more.
        assert_eq!(
            retract_after(&location, "run-a", 1).await.expect("again"),
            Retracted::default()
        );
    }
}
