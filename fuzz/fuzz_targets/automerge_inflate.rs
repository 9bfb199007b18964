//! The bound on what automerge data from a peer inflates to, fed arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_protocol::fuzz::inflate_input(data);
});
