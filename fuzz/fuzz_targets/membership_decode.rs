//! The membership snapshot decoder and a membership merging arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_protocol::fuzz::membership_input(data);
});
