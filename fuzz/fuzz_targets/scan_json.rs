//! The validating JSON-lines scan against arrow-json (differential): the same rows and the same
//! bad records for any input. Input: 1 byte of knobs (which columns the query reads; all bits set:
//! no pushdown), then the lines' bytes.
#![no_main]

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use libfuzzer_sys::fuzz_target;
use sluice_worker::source::scan::json::compare_with_reference;

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, body)) = input.split_first() else {
        return;
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("deviceId", DataType::Utf8, true),
        Field::new("temperature", DataType::Float64, true),
        Field::new("count", DataType::Int64, true),
        Field::new("level", DataType::Int32, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("key", DataType::Utf8, knobs & 0x80 == 0),
    ]));
    let columns: Vec<bool> = (0..7).map(|i| knobs & (1 << i) != 0).collect();
    let columns = (knobs & 0x7f != 0x7f).then_some(columns.as_slice());
    if let Err(difference) = compare_with_reference(&schema, columns, body) {
        panic!("the scan and arrow-json differ: {difference}");
    }
});
