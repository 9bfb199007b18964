//! The sync message decoder and a sync engine fed arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_protocol::fuzz::sync_input(data);
});
