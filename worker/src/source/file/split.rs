//! How a task's new files are cut into batches under a byte cap (the memory budget's
//! [`crate::memory::ReadSizes::batch_bytes`]), and which lines a piece of a JSON-lines file holds.
//!
//! A batch takes whole files, oldest first, while they fit in the cap; a JSON-lines file that does
//! not fit is cut at a byte offset, and the rest of it starts the next batch. A piece `start..end`
//! holds the lines that **begin** in it (Hadoop's `LineRecordReader` rule): reading skips the line
//! that began before `start` and reads past `end` to finish its last line. So pieces logged at any
//! offsets hold every line of the file exactly once, whatever the offsets, and reading a logged
//! piece again (a replay) gives the same lines: the file does not change once written (the file
//! source reads each file once and relies on this for whole files already).

use super::FileEntry;

/// Smallest piece cut from a file to fill the rest of a batch that already holds other files
/// (bytes): below it the file waits for the next batch instead.
pub const MIN_PIECE_BYTES: u64 = 64 << 10;

/// A file not planned to its end yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The whole file (no `start`/`end`).
    pub file: FileEntry,
    /// Offset its next piece starts at (0: not planned at all), bytes.
    pub from: u64,
}

impl Pending {
    /// The rest of the file from `from`: the whole file when nothing of it was planned.
    fn rest(&self) -> FileEntry {
        if self.from == 0 {
            self.file.clone()
        } else {
            self.piece(self.file.size)
        }
    }

    /// The piece `from..end` (bytes).
    fn piece(&self, end: u64) -> FileEntry {
        FileEntry {
            path: self.file.path.clone(),
            size: self.file.size,
            start: Some(self.from),
            end: Some(end),
        }
    }
}

/// The entries of the next batch from `pending` (oldest first): at most `max_files` entries
/// (`maxFilesPerTrigger`) and at most `max_bytes` bytes (`None`: no cap), always at least one
/// entry when anything is pending. A file that does not fit is cut when `splittable` (JSON
/// lines) — then the batch ends with a piece of it, as long as the piece is not under
/// [`MIN_PIECE_BYTES`] while the batch already holds something; a file that cannot be cut is
/// taken whole, alone, when it is first.
pub fn take_batch(
    pending: &[Pending],
    max_files: Option<usize>,
    max_bytes: Option<u64>,
    splittable: bool,
) -> Vec<FileEntry> {
    let mut taken = Vec::new();
    let mut bytes: u64 = 0;
    for file in pending {
        if max_files.is_some_and(|max| taken.len() >= max.max(1)) {
            break;
        }
        let rest = file.file.size.saturating_sub(file.from);
        let Some(cap) = max_bytes.map(|cap| cap.max(1)) else {
            taken.push(file.rest());
            continue;
        };
        let left = cap.saturating_sub(bytes);
        if rest <= left {
            taken.push(file.rest());
            bytes += rest;
            continue;
        }
        if splittable && (taken.is_empty() || left >= MIN_PIECE_BYTES) {
            taken.push(file.piece(file.from + left));
        } else if taken.is_empty() {
            taken.push(file.rest());
        }
        break;
    }
    taken
}

/// Whether `entry` reads its file to the end (a whole file or its last piece).
pub fn reaches_end(entry: &FileEntry) -> bool {
    entry.end.is_none_or(|end| end >= entry.size)
}

/// Cuts the bytes of a file, read from [`LineSplit::read_from`] on, to the lines that begin in a
/// piece `start..end`: feed it every chunk in order with [`LineSplit::take`] until
/// [`LineSplit::done`].
#[derive(Debug, Clone)]
pub struct LineSplit {
    end: u64,
    /// Offset of the next byte fed.
    pos: u64,
    /// Whether the first owned line has been reached.
    begun: bool,
    done: bool,
}

impl LineSplit {
    /// The piece `start..end` (bytes).
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            end,
            pos: start.saturating_sub(1),
            begun: start == 0,
            done: start >= end,
        }
    }

    /// Offset reading must start at (bytes): the byte before `start`, which says whether a line
    /// begins at `start`.
    pub fn read_from(&self) -> u64 {
        self.pos
    }

    /// Whether every owned line has been returned (the rest of the file is not needed).
    pub fn done(&self) -> bool {
        self.done
    }

    /// The part of `chunk` (the next bytes of the file) that belongs to the piece.
    pub fn take<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let mut offset = self.pos;
        self.pos += chunk.len() as u64;
        if self.done {
            return &[];
        }
        let mut bytes = chunk;
        if !self.begun {
            // Skip the end of the line that began before `start`.
            let Some(newline) = memchr::memchr(b'\n', bytes) else {
                return &[];
            };
            bytes = bytes.get(newline + 1..).unwrap_or_default();
            offset += newline as u64 + 1;
            self.begun = true;
            if offset >= self.end {
                // No line begins in the piece.
                self.done = true;
                return &[];
            }
        }
        // The last owned line ends at the first newline at or after `end - 1`.
        let last = self.end.saturating_sub(1);
        let from = usize::try_from(last.saturating_sub(offset)).unwrap_or(usize::MAX);
        if let Some(newline) = bytes
            .get(from..)
            .and_then(|tail| memchr::memchr(b'\n', tail))
        {
            self.done = true;
            return bytes.get(..from + newline + 1).unwrap_or(bytes);
        }
        bytes
    }
}
