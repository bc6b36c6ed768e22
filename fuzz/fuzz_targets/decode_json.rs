//! JSON lines decoding with bad-record routing (file source, Kafka source, static tables).
//! Input: 3 bytes of knobs (piece size, chunk size, record size limit), then the file's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_worker::source::decode::TextFormat;

fuzz_target!(|input: &[u8]| {
    let Some((knobs, data)) = input.split_first_chunk::<3>() else {
        return;
    };
    sluice_fuzz::check_text_decoding(&TextFormat::Json, *knobs, data);
});
