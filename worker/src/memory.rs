//! The worker's memory budget (`--memory-budget`, issue 19): how many bytes the worker plans its
//! batches' reading and decoding within.
//!
//! The budget is not an allocator limit: it sizes what grows with a batch's input, which is what
//! drove peak memory (a task used to decode a whole file range per batch). Each task's share of it
//! bounds the bytes one file-source batch decodes, the decoder's chunk and how many files a task
//! decodes at once ([`ReadSizes`]). Memory that does not grow with a batch (the binary, the state
//! store, which grows with the number of keys) is not sized by it.
//!
//! Default: half of the container's memory limit (cgroup v2 `memory.max`, else cgroup v1
//! `memory.limit_in_bytes`), or [`DEFAULT_BUDGET_BYTES`] when there is no limit. Half, because the
//! rest of the limit is taken by what the budget does not size: the binary's own pages (≈ 40 MiB),
//! the state store, the sink's buffers, memory the allocator keeps after a batch, and — in cgroup
//! v2 — the page cache of the files the sink writes, which is charged to the same limit.

use std::path::Path;

use crate::error::{EngineError, Result};

/// The budget without a container memory limit: 256 MiB, what a 512 MiB container gets.
pub const DEFAULT_BUDGET_BYTES: u64 = 256 << 20;

/// The budget is `limit / BUDGET_DIVISOR` of the container's memory limit (half).
pub const BUDGET_DIVISOR: u64 = 2;

/// How many bytes of memory a batch may use per byte of input it decodes: the decoded columns
/// (for JSON lines 0.4–1.1× the text, more for arrow-json than for the scan), the SQL's
/// intermediate and output batches and the sink's encoding buffers are held at the same time,
/// and the allocator does not return all of it between batches.
pub const BYTES_PER_INPUT_BYTE: u64 = 4;

/// Smallest input one file-source batch is given (bytes): a smaller budget still makes progress
/// at a useful pace (per-batch costs — offsets and commit files, a sink file — stay small).
pub const MIN_BATCH_INPUT_BYTES: u64 = 1 << 20;

/// Smallest decode chunk (bytes); the decoder's default, [`crate::source::decode::TextFileDecoder::CHUNK_BYTES`], is the largest.
pub const MIN_CHUNK_BYTES: usize = 256 << 10;

/// Values at or above this (bytes) mean "no limit" in cgroup v1, which writes a huge number
/// (`9223372036854771712`, `i64::MAX` rounded down to a page) instead of `max`.
const UNLIMITED_FROM: u64 = 1 << 60;

/// Parses a budget: a number of bytes with an optional binary unit, `K`/`Ki`/`KiB`, `M`/`Mi`/`MiB`,
/// `G`/`Gi`/`GiB`, `T`/`Ti`/`TiB` (powers of 1024; `k`, `m`, `g`, `t` as well, as for
/// `docker --memory`), e.g. `512M`, `1G`, `268435456`.
///
/// # Errors
/// [`EngineError::Config`] for anything else, zero, or a value that overflows `u64`.
pub fn parse_budget(text: &str) -> Result<u64> {
    let bad = |why: &str| {
        EngineError::Config(format!(
            "--memory-budget `{text}`: {why} (a number of bytes with an optional K, M, G or T \
             suffix, e.g. `512M`)"
        ))
    };
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad("not a number"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "k" | "Ki" | "KiB" => 10,
        "M" | "m" | "Mi" | "MiB" => 20,
        "G" | "g" | "Gi" | "GiB" => 30,
        "T" | "t" | "Ti" | "TiB" => 40,
        _ => return Err(bad("unknown unit")),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("too large"))?;
    if bytes == 0 {
        return Err(bad("must be positive"));
    }
    Ok(bytes)
}

/// The budget for a container memory limit (bytes): half of it, or [`DEFAULT_BUDGET_BYTES`]
/// without one.
pub fn budget_for_limit(limit: Option<u64>) -> u64 {
    match limit {
        Some(limit) => (limit / BUDGET_DIVISOR).max(1),
        None => DEFAULT_BUDGET_BYTES,
    }
}

/// Where the budget came from, for the worker's start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetOrigin {
    /// `--memory-budget` or `SLUICE_MEMORY_BUDGET`.
    Configured,
    /// Half of this container memory limit (bytes).
    ContainerLimit(u64),
    /// No container limit found: [`DEFAULT_BUDGET_BYTES`].
    Default,
}

/// The default budget of this process (bytes) and where it came from: reads the container's
/// memory limit from `/proc/self/cgroup` and `/sys/fs/cgroup`. A limit that cannot be read counts
/// as none (a warning is logged for an unreadable value).
pub fn default_budget() -> (u64, BudgetOrigin) {
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = match container_limit(Path::new("/sys/fs/cgroup"), &self_cgroup) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("{e}; using the default memory budget");
            None
        }
    };
    match limit {
        Some(limit) => (
            budget_for_limit(Some(limit)),
            BudgetOrigin::ContainerLimit(limit),
        ),
        None => (DEFAULT_BUDGET_BYTES, BudgetOrigin::Default),
    }
}

/// The memory limit (bytes) of the cgroup `self_cgroup` (the text of `/proc/self/cgroup`) names
/// under `root` (`/sys/fs/cgroup`), `None` when unlimited or not found. cgroup v2 (`0::<path>`):
/// `<root>/<path>/memory.max`, else `<root>/memory.max` (a container with its own cgroup
/// namespace sees its cgroup as the root). cgroup v1 (`<n>:...memory...:<path>`):
/// `memory.limit_in_bytes` under `<root>/memory/<path>`, else `<root>/memory`.
///
/// # Errors
/// [`EngineError::Config`] when a limit file exists but does not hold a number (or `max`).
pub fn container_limit(root: &Path, self_cgroup: &str) -> Result<Option<u64>> {
    let mut candidates = Vec::new();
    for line in self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let relative = path.trim().trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(relative).join("memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(
                root.join("memory")
                    .join(relative)
                    .join("memory.limit_in_bytes"),
            );
            candidates.push(root.join("memory").join("memory.limit_in_bytes"));
        }
    }
    candidates.push(root.join("memory.max"));
    for file in candidates {
        if let Ok(text) = std::fs::read_to_string(&file) {
            return parse_limit(&text).map_err(|why| {
                EngineError::Config(format!("cgroup memory limit {}: {why}", file.display()))
            });
        }
    }
    Ok(None)
}

/// A cgroup memory limit file's value (bytes): `max` (v2) or a value from [`UNLIMITED_FROM`] on
/// (v1's "unlimited") is `None`.
///
/// # Errors
/// The reason, when the text is neither.
pub fn parse_limit(text: &str) -> std::result::Result<Option<u64>, String> {
    let value = text.trim();
    if value == "max" {
        return Ok(None);
    }
    let bytes: u64 = value
        .parse()
        .map_err(|_| format!("`{value}` is neither a number of bytes nor `max`"))?;
    Ok((bytes < UNLIMITED_FROM && bytes > 0).then_some(bytes))
}

/// What a task's share of the budget allows one file-source batch (all in bytes but
/// `files_at_once`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSizes {
    /// Input bytes one batch of the task decodes (at least [`MIN_BATCH_INPUT_BYTES`]; a batch still
    /// takes at least one whole file where a file cannot be split).
    pub batch_bytes: u64,
    /// Bytes the text decoder buffers before decoding a run of lines.
    pub chunk_bytes: usize,
    /// Files of one batch decoded at the same time (at least 1, at most `cores`).
    pub files_at_once: usize,
}

impl ReadSizes {
    /// The sizes for `share` bytes of budget for one task's batch of one source, on `cores` cores:
    /// a quarter of the share ([`BYTES_PER_INPUT_BYTE`]) is input; a 64th is the decoder's chunk
    /// (within [`MIN_CHUNK_BYTES`] and `max_chunk`); files are decoded at once as long as their
    /// read buffers (about two chunks each) stay within another quarter.
    ///
    /// The chunk is kept small because glibc's allocator keeps freed buffers of a chunk's size in
    /// the arena of the thread that freed them (its mmap threshold rises to the largest freed
    /// block), and a task's decodes run on a different blocking thread from batch to batch: with
    /// 8 MiB chunks, many small batches left more memory resident than one large batch did.
    pub fn for_share(share: u64, cores: usize, max_chunk: usize) -> Self {
        let batch_bytes = (share / BYTES_PER_INPUT_BYTE).max(MIN_BATCH_INPUT_BYTES);
        let chunk_bytes = usize::try_from(share / 64)
            .unwrap_or(usize::MAX)
            .clamp(MIN_CHUNK_BYTES.min(max_chunk), max_chunk.max(1));
        let buffers = 2 * chunk_bytes as u64;
        let files_at_once = usize::try_from((share / 4) / buffers.max(1))
            .unwrap_or(usize::MAX)
            .clamp(1, cores.max(1));
        Self {
            batch_bytes,
            chunk_bytes,
            files_at_once,
        }
    }
}

#[cfg(test)]
mod tests;
