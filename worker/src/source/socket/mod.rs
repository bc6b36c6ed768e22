//! Socket source: UTF-8 text lines from a TCP server, one column `value: Utf8` (Spark's `socket`
//! source, for testing).
//!
//! Like Spark's, it is **not fault tolerant**: lines live in this process's memory until their batch
//! commits, so a crash loses the lines received but not committed. One partition. The connection is
//! retried with backoff until the server is up.

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sluice_crds::SocketSourceSpec;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::error::{EngineError, Result, backoff};
use crate::source::{PlanLimit, Range, ReadOutput, Source, SourceTask, decode_range, encode_range};

/// A socket range: line numbers `start..end` since the worker started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SocketRange {
    pub start: u64,
    pub end: u64,
}

/// The configured socket source.
pub struct SocketSource {
    name: String,
    address: String,
    schema: SchemaRef,
}

impl SocketSource {
    pub fn new(name: &str, spec: &SocketSourceSpec) -> Self {
        Self {
            name: name.to_string(),
            address: format!("{}:{}", spec.host, spec.port),
            schema: Arc::new(Schema::new(vec![Field::new(
                "value",
                DataType::Utf8,
                false,
            )])),
        }
    }
}

/// Lines received and not yet released: `lines[0]` is line number `base`.
#[derive(Default)]
struct Buffer {
    base: u64,
    lines: Vec<String>,
    closed: bool,
}

#[async_trait]
impl Source for SocketSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn partitions(&self) -> u32 {
        1
    }
    async fn open(&self, _task: u32, _logged: &[Range]) -> Result<Box<dyn SourceTask>> {
        // Line numbers restart with the process: logged ranges of an earlier run mean nothing now.
        let buffer = Arc::new(Mutex::new(Buffer::default()));
        tokio::spawn(receive(self.address.clone(), buffer.clone()));
        Ok(Box::new(SocketTask {
            name: self.name.clone(),
            schema: self.schema.clone(),
            buffer,
            next: 0,
            frozen_end: None,
        }))
    }
}

async fn receive(address: String, buffer: Arc<Mutex<Buffer>>) {
    let mut attempt = 0;
    let stream = loop {
        match tokio::net::TcpStream::connect(&address).await {
            Ok(stream) => break stream,
            Err(e) => {
                tracing::warn!(%address, error = %e, "socket source: connect failed, retrying");
                tokio::time::sleep(backoff(attempt, Duration::from_secs(5))).await;
                attempt += 1;
            }
        }
    };
    let mut lines = BufReader::new(stream).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => match buffer.lock() {
                Ok(mut b) => b.lines.push(line),
                Err(_) => return,
            },
            Ok(None) | Err(_) => {
                if let Ok(mut b) = buffer.lock() {
                    b.closed = true;
                }
                return;
            }
        }
    }
}

struct SocketTask {
    name: String,
    schema: SchemaRef,
    buffer: Arc<Mutex<Buffer>>,
    next: u64,
    frozen_end: Option<u64>,
}

impl SocketTask {
    fn received(&self) -> Result<u64> {
        let buffer = self.buffer.lock().map_err(|_| self.poisoned())?;
        Ok(buffer.base + buffer.lines.len() as u64)
    }

    fn poisoned(&self) -> EngineError {
        EngineError::Internal(format!(
            "socket source `{}`: buffer lock poisoned",
            self.name
        ))
    }
}

#[async_trait]
impl SourceTask for SocketTask {
    async fn freeze(&mut self) -> Result<()> {
        self.frozen_end = Some(self.received()?);
        Ok(())
    }

    async fn plan(&mut self, _limit: PlanLimit) -> Result<Option<Range>> {
        let end = self.frozen_end.unwrap_or(self.received()?);
        if end <= self.next {
            return Ok(None);
        }
        let range = SocketRange {
            start: self.next,
            end,
        };
        self.next = end;
        encode_range(&range).map(Some)
    }

    async fn read(&mut self, range: &Range) -> Result<ReadOutput> {
        let range: SocketRange = decode_range(&self.name, range)?;
        let lines: Vec<String> = {
            let buffer = self.buffer.lock().map_err(|_| self.poisoned())?;
            if range.start < buffer.base {
                return Err(EngineError::Source {
                    source_name: self.name.clone(),
                    message: format!(
                        "lines {}..{} were received by an earlier process and are gone (the socket source is not fault tolerant)",
                        range.start, range.end
                    ),
                });
            }
            let from = (range.start - buffer.base) as usize;
            let to = ((range.end - buffer.base) as usize).min(buffer.lines.len());
            buffer.lines.get(from..to).unwrap_or_default().to_vec()
        };
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(StringArray::from(lines))],
        )?;
        Ok(ReadOutput {
            batches: vec![batch],
            bad_records: Vec::new(),
            ..ReadOutput::default()
        })
    }

    fn committed(&mut self, range: &Range) {
        let Ok(range) = serde_json::from_value::<SocketRange>(range.clone()) else {
            return;
        };
        if let Ok(mut buffer) = self.buffer.lock()
            && range.end > buffer.base
        {
            let drop = ((range.end - buffer.base) as usize).min(buffer.lines.len());
            buffer.lines.drain(..drop);
            buffer.base += drop as u64;
        }
    }

    fn backlog(&self) -> Option<u64> {
        self.received().ok().map(|r| r.saturating_sub(self.next))
    }

    /// Consecutive line ranges are one run of lines: `[earlier.start, later.end)`.
    fn merge(&self, earlier: &Range, later: &Range) -> Option<Range> {
        let earlier: SocketRange = serde_json::from_value(earlier.clone()).ok()?;
        let later: SocketRange = serde_json::from_value(later.clone()).ok()?;
        encode_range(&SocketRange {
            start: earlier.start,
            end: later.end,
        })
        .ok()
    }
}
