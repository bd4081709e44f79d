//! The fuzz targets' properties over the regression corpus in fuzz/regressions/<target>/ (inputs
//! kept from fuzzing runs, including any that once failed), plus a few hand-made edge inputs, as
//! ordinary tests.

use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("dir entry").path()).expect("read corpus file"))
        .collect();
    inputs.extend([
        Vec::new(),
        b"\n\n\n".to_vec(),
        vec![0xff; 64],
        b"{\"v\":1,\"seq\":0,\"prev\":\"".to_vec(),
        (0u8..=255).collect(),
    ]);
    inputs
}

#[test]
fn verifier_regressions() {
    let inputs = corpus("verifier");
    assert!(inputs.len() > 5, "the verifier corpus is empty");
    for input in inputs {
        p11audit::fuzzing::check_verifier(&input);
    }
}

#[test]
fn decoders_and_encoder_regressions() {
    let inputs = corpus("decoders_and_encoder");
    assert!(inputs.len() > 5, "the decoder corpus is empty");
    for input in inputs {
        p11audit::fuzzing::check_decoders_and_encoder(&input);
    }
}

#[test]
fn verifier_sealed_regressions() {
    let inputs = corpus("verifier_sealed");
    assert!(inputs.len() > 5, "the sealed verifier corpus is empty");
    for input in inputs {
        p11audit::fuzzing::check_verifier_sealed(&input);
    }
    // The harness itself: sealed records verify, tampering does not.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/verifier_sealed");
    for (name, intact) in [
        ("real-bodies", true),
        ("real-bodies-with-state", true),
        ("trailing-skip", true),
        ("trailing-skip-with-state", false),
        ("duplicate-skip-raw", false),
    ] {
        let input = std::fs::read(dir.join(name)).expect("read corpus file");
        assert_eq!(
            p11audit::fuzzing::check_verifier_sealed(&input),
            intact,
            "{name}"
        );
    }
}

#[test]
fn checkpoint_parsers_regressions() {
    let inputs = corpus("checkpoint_parsers");
    assert!(inputs.len() > 5, "the checkpoint parsers' corpus is empty");
    for input in inputs {
        p11audit::fuzzing::check_checkpoint_parsers(&input);
    }
}
