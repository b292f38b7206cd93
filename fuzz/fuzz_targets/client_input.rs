//! Arbitrary client bytes through request framing, command lookup, key routing, comparison
//! rules, mirror effect rewriting and reply parsing (see `tandem::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tandem::fuzzing::client_input(data);
});
