//! Console sink: each batch as a table on stdout, in the shape of Spark's console sink.

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::error::Result;
use crate::sink::Sink;

/// Prints at most `num_rows` rows per batch.
pub struct ConsoleSink {
    num_rows: usize,
}

impl ConsoleSink {
    pub fn new(num_rows: usize) -> Self {
        Self { num_rows }
    }
}

/// Renders a batch the way it is printed (header, table, and a "only showing" note when cut).
///
/// # Errors
/// Arrow formatting errors.
pub fn render(
    task: u32,
    batch_id: u64,
    batches: &[RecordBatch],
    num_rows: usize,
) -> Result<String> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut shown = Vec::new();
    let mut left = num_rows;
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = left.min(batch.num_rows());
        shown.push(batch.slice(0, take));
        left -= take;
    }
    let table = arrow::util::pretty::pretty_format_batches(&shown)?;
    let mut out = format!(
        "-------------------------------------------\nBatch: {batch_id} (task {task})\n-------------------------------------------\n{table}\n"
    );
    if total > num_rows {
        out.push_str(&format!("only showing top {num_rows} rows of {total}\n"));
    }
    Ok(out)
}

#[async_trait]
impl Sink for ConsoleSink {
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        let text = render(task, batch_id, batches, self.num_rows)?;
        print!("{text}");
        Ok(batches.iter().map(|b| b.num_rows() as u64).sum())
    }
}
