#![no_main]
// Signed notes, checkpoints, keys and witness requests, fed arbitrary text: no parser panics,
// what parses writes back the same, and the witness decides without panicking.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p11audit::fuzzing::check_checkpoint_parsers(data));
