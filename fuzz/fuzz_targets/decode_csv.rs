//! CSV decoding with bad-record routing (file source, Kafka source, static tables).
//! Input: 1 byte for header and delimiter, 3 bytes of knobs (piece size, chunk size, record size
//! limit), then the file's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_worker::source::decode::TextFormat;

fuzz_target!(|input: &[u8]| {
    let Some((&[options], rest)) = input.split_first_chunk::<1>() else {
        return;
    };
    let Some((knobs, data)) = rest.split_first_chunk::<3>() else {
        return;
    };
    let delimiter = [b',', b';', b'\t', b'|'][usize::from(options >> 1) % 4];
    let format = TextFormat::Csv {
        header: options & 1 == 1,
        delimiter,
    };
    sluice_fuzz::check_text_decoding(&format, *knobs, data);
});
