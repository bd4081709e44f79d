#![no_main]
// The verifier's parser, fed arbitrary audit files: it never panics and always reports.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p11audit::fuzzing::check_verifier(data));
