//! Noop sink: counts the result rows and drops them, as Spark's `noop` format and Flink's
//! `blackhole` connector do. The engine still plans, runs and commits every batch (offsets,
//! state, the commit log), so a benchmark measures the query without a sink's cost.

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::error::Result;
use crate::sink::Sink;

/// Drops every row; nothing to replay or take back.
pub struct NoopSink;

#[async_trait]
impl Sink for NoopSink {
    async fn write(&self, _task: u32, _batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        Ok(batches.iter().map(|b| b.num_rows() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[tokio::test]
    async fn counts_the_rows_it_drops() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])
            .expect("batch");
        let written = NoopSink
            .write(0, 7, &[batch.clone(), batch])
            .await
            .expect("write");
        assert_eq!(written, 6);
    }
}
