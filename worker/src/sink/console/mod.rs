//! Console sink: each batch as a table on stdout, in the shape of Spark's console sink.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;

use crate::error::Result;
use crate::sink::Sink;

/// The longest cell shown whole when truncating (Spark's `Dataset.show` default).
pub const TRUNCATE_AT: usize = 20;

/// Prints at most `num_rows` rows per batch, cells cut at [`TRUNCATE_AT`] characters when
/// `truncate`.
pub struct ConsoleSink {
    num_rows: usize,
    truncate: bool,
}

impl ConsoleSink {
    pub fn new(num_rows: usize, truncate: bool) -> Self {
        Self { num_rows, truncate }
    }
}

/// Renders a batch the way it is printed (header, table, and a "only showing" note when cut).
/// With `truncate`, a cell longer than [`TRUNCATE_AT`] characters shows its first 17 and `...`,
/// as Spark's console sink (`truncate`, default true).
///
/// # Errors
/// Arrow formatting errors.
pub fn render(
    task: u32,
    batch_id: u64,
    batches: &[RecordBatch],
    num_rows: usize,
    truncate: bool,
) -> Result<String> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut shown = Vec::new();
    let mut left = num_rows;
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = left.min(batch.num_rows());
        let slice = batch.slice(0, take);
        shown.push(if truncate {
            truncate_cells(&slice)?
        } else {
            slice
        });
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

/// `batch` with every cell as text, those over [`TRUNCATE_AT`] characters cut (nulls stay null).
fn truncate_cells(batch: &RecordBatch) -> Result<RecordBatch> {
    let options = FormatOptions::default();
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
        let cells: StringArray = (0..column.len())
            .map(|i| {
                (!column.is_null(i)).then(|| {
                    let text = formatter.value(i).to_string();
                    if text.chars().count() > TRUNCATE_AT {
                        let kept: String = text.chars().take(TRUNCATE_AT - 3).collect();
                        format!("{kept}...")
                    } else {
                        text
                    }
                })
            })
            .collect();
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        columns.push(Arc::new(cells));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[async_trait]
impl Sink for ConsoleSink {
    async fn write(&self, task: u32, batch_id: u64, batches: &[RecordBatch]) -> Result<u64> {
        let text = render(task, batch_id, batches, self.num_rows, self.truncate)?;
        print!("{text}");
        Ok(batches.iter().map(|b| b.num_rows() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("word", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("supercalifragilisticexpialidocious"),
                    Some("exactly-twenty-chars"),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![123_456_789_012_345_678, 2, 3])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn long_cells_are_cut_at_twenty_characters_like_spark() {
        let text = render(0, 4, &[batch()], 20, true).expect("render");
        // Exactly 20 characters stay whole; a null stays empty.
        assert_eq!(
            text,
            "-------------------------------------------\n\
             Batch: 4 (task 0)\n\
             -------------------------------------------\n\
             +----------------------+--------------------+\n\
             | word                 | n                  |\n\
             +----------------------+--------------------+\n\
             | supercalifragilis... | 123456789012345678 |\n\
             | exactly-twenty-chars | 2                  |\n\
             |                      | 3                  |\n\
             +----------------------+--------------------+\n"
        );
    }

    #[test]
    fn truncate_false_shows_whole_values() {
        let text = render(0, 0, &[batch()], 20, false).expect("render");
        assert!(
            text.contains("| supercalifragilisticexpialidocious |"),
            "{text}"
        );
    }
}
