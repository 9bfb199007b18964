//! Every decoder of signed documents (chains, capabilities, revocations, invocations).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_protocol::fuzz::capability_input(data);
});
