//! Checkpoint generations: which folder under a checkpoint location the query runs on.
//!
//! A location starts as generation 0, the location itself. A restore to a retained batch
//! ([`super::restore`]) writes a new generation `restores/<n>/` (n = 1, 2, …) holding the log and
//! state as of that batch and then points `restores/current.json` at it; the older generations
//! stay as they were. Every worker opening the location ([`open_current`]) follows the pointer, so
//! whoever starts the query (the operator, `sluice-worker run`) needs no other setting.
//!
//! Restored generations live under `restores/`, not `generations/`: the operator's `stateless`
//! upgrade mode already uses `<location>/generations/<deployment generation>/` as a fresh
//! checkpoint location of its own, and a restore must never land in one of those.
//!
//! Each restored generation records what it was restored from in `restores/<n>/restore.json`
//! ([`RestoreRecord`]); `complete` turns true only after the sink has been prepared for the
//! replay, and a worker refuses a generation whose restore did not finish.

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::{EngineError, Result};
use crate::storage::Location;

/// The folder holding restored generations, relative to the checkpoint location.
pub const RESTORES_DIR: &str = "restores";
/// The pointer to the current generation.
const CURRENT: &str = "restores/current.json";
/// A restored generation's record, relative to its folder.
const RECORD: &str = "restore.json";

/// `restores/current.json`: the generation workers run on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct CurrentGeneration {
    generation: u32,
}

/// `restores/<n>/restore.json`: what a restored generation was made from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRecord {
    /// This generation's number (≥ 1).
    pub generation: u32,
    /// The generation it was restored from (0: the location itself).
    pub from_generation: u32,
    /// The batch whose state and end offsets it starts from; its next batch is `batch_id + 1`.
    pub batch_id: u64,
    /// The query id of the generation it was restored from (the new one has its own: sinks key
    /// their idempotence on it, so the replayed batches are written again).
    pub from_query_id: String,
    /// When the restore started, ms since the Unix epoch.
    pub created_ms: i64,
    /// True once the generation is current and the sink is prepared for the replay.
    pub complete: bool,
}

/// A checkpoint location with its generations.
#[derive(Clone, Debug)]
pub struct Generations {
    base: Location,
}

impl Generations {
    /// The generations of the checkpoint at `base`.
    pub fn new(base: Location) -> Self {
        Self { base }
    }

    /// The location the user gave.
    pub fn base(&self) -> &Location {
        &self.base
    }

    fn root(&self) -> Checkpoint {
        Checkpoint::new(self.base.clone())
    }

    /// The checkpoint of generation `generation` (0: the base itself).
    pub fn checkpoint(&self, generation: u32) -> Checkpoint {
        if generation == 0 {
            self.root()
        } else {
            Checkpoint::new(self.base.sub(&format!("{RESTORES_DIR}/{generation}")))
        }
    }

    /// The current generation's number (0 when no restore ever happened).
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails, [`EngineError::Checkpoint`] when the pointer
    /// is unreadable.
    pub async fn current(&self) -> Result<u32> {
        let Some(bytes) = self.root().get_relative(CURRENT).await? else {
            return Ok(0);
        };
        let current: CurrentGeneration =
            serde_json::from_slice(&bytes).map_err(|e| self.corrupt(&format!("{CURRENT}: {e}")))?;
        Ok(current.generation)
    }

    /// Makes `generation` the current one (one object written whole: readers see the old or the
    /// new pointer).
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails.
    pub async fn set_current(&self, generation: u32) -> Result<()> {
        let body = serde_json::to_vec(&CurrentGeneration { generation })
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.root().put(CURRENT, body).await
    }

    /// The record of restored generation `generation` (`None` for 0 or when absent).
    ///
    /// # Errors
    /// [`EngineError::Storage`] / [`EngineError::Checkpoint`] as for [`Self::current`].
    pub async fn record(&self, generation: u32) -> Result<Option<RestoreRecord>> {
        if generation == 0 {
            return Ok(None);
        }
        let Some(bytes) = self.checkpoint(generation).get_relative(RECORD).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.corrupt(&format!("{RESTORES_DIR}/{generation}/{RECORD}: {e}")))
    }

    /// Writes the record of its generation.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails.
    pub async fn write_record(&self, record: &RestoreRecord) -> Result<()> {
        let body =
            serde_json::to_vec_pretty(record).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.checkpoint(record.generation).put(RECORD, body).await
    }

    /// The numbers of the restored generations on record, ascending.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the store fails.
    pub async fn restored(&self) -> Result<Vec<u32>> {
        let mut generations: Vec<u32> = Vec::new();
        let prefix = self.base.child(RESTORES_DIR);
        let listing = self
            .base
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| EngineError::storage(prefix.to_string(), e))?;
        for dir in listing.common_prefixes {
            if let Some(n) = dir.filename().and_then(|name| name.parse::<u32>().ok())
                && n > 0
            {
                generations.push(n);
            }
        }
        generations.sort_unstable();
        Ok(generations)
    }

    fn corrupt(&self, message: &str) -> EngineError {
        EngineError::Checkpoint {
            location: self.base.url.clone(),
            message: message.to_string(),
        }
    }
}

/// The checkpoint a worker runs on at `base`: the current generation's folder.
///
/// # Errors
/// [`EngineError::Checkpoint`] when the current generation is a restore that did not finish (its
/// sink may not be prepared for the replay: running would duplicate output); storage errors.
pub async fn open_current(base: Location) -> Result<Checkpoint> {
    let generations = Generations::new(base);
    let current = generations.current().await?;
    if let Some(record) = generations.record(current).await?
        && !record.complete
    {
        return Err(EngineError::Checkpoint {
            location: generations.base().url.clone(),
            message: format!(
                "the restore to batch {} (generation {current}) did not finish; run \
                 `sluice-worker checkpoint restore --batch-id {}` again before starting the query",
                record.batch_id, record.batch_id
            ),
        });
    }
    Ok(generations.checkpoint(current))
}
