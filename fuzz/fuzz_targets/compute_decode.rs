//! The compute job, reply and receipt decoders.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_protocol::fuzz::compute_input(data);
});
