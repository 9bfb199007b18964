//! The session machine's exchange decoder and two sessions fed arbitrary messages.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_protocol::fuzz::session_input(data);
});
