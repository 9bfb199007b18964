//! The manifest parser and the grants an approval would sign.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_protocol::fuzz::manifest_input(data);
});
