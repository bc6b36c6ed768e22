//! Memory sink: rows kept in this process, keyed by (task, batch id) so a replay replaces rather
//! than duplicates. For tests and embedding.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::error::{EngineError, Result};
use crate::sink::Sink;

type Table = BTreeMap<(u32, u64), Vec<RecordBatch>>;

static TABLES: LazyLock<Mutex<HashMap<String, Table>>> = LazyLock::new(Default::default);

/// Writes into the named in-memory table.
pub struct MemorySink {
    name: String,
}

impl MemorySink {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        let mut tables = TABLES
            .lock()
            .map_err(|_| EngineError::Internal("memory sink lock poisoned".into()))?;
        tables
            .entry(self.name.clone())
            .or_default()
            .insert((task, batch_id), batches.to_vec());
        Ok(batches.iter().map(|b| b.num_rows() as u64).sum())
    }
}

/// The batches written to table `name`, per (task, batch id), in order.
pub fn read_table(name: &str) -> BTreeMap<(u32, u64), Vec<RecordBatch>> {
    TABLES
        .lock()
        .map(|t| t.get(name).cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// Forgets table `name`.
pub fn clear_table(name: &str) {
    if let Ok(mut t) = TABLES.lock() {
        t.remove(name);
    }
}
