#![no_main]
// The verifier fed chains that are sealed with the right key (so the fuzzer gets past the mac
// check), with duplicated, skipped and unsealed lines mixed in: it never panics, and it calls a
// log intact only when the log is exactly the sealed records.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    p11audit::fuzzing::check_verifier_sealed(data);
});
