#![no_main]
// Arbitrary templates and mechanism parameters through the argument decoders and the record
// encoder: the output is always one valid JSON line that seals and splits back.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p11audit::fuzzing::check_decoders_and_encoder(data));
