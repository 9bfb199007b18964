//! The admission message decoder and a connection fed arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_protocol::fuzz::admission_input(data);
});
