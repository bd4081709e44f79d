//! The command line both benchmark programs take (p11bench and p11calls):
//! `PROGRAM --module PATH --pin PIN [--threads N] [--seconds S] [--op NAME]...`
//! (scripts/bench.sh runs either with the same arguments). Not an example itself: each program
//! includes it with `#[path]`.

pub struct Args {
    pub module: String,
    pub pin: String,
    pub threads: usize,
    pub seconds: f64,
    pub ops: Vec<String>,
}

/// The arguments, or the usage and `ops` printed for `--help` (the smoke test reads the ops
/// from there). Without `--op`, every op of `ops`; an op not in `ops` is refused here, before
/// any thread starts.
///
/// Also makes any later panic end the process: the measuring threads meet at barriers, and a
/// thread that panicked before its barrier would otherwise leave the others waiting for good.
pub fn parse_args(program: &str, ops: &[&str]) -> Args {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
    let mut a = Args {
        module: String::new(),
        pin: String::new(),
        threads: 1,
        seconds: 1.0,
        ops: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--module" => a.module = value(),
            "--pin" => a.pin = value(),
            "--threads" => a.threads = value().parse().expect("--threads N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--op" => a.ops.push(value()),
            "--help" | "-h" => {
                println!("{program} --module PATH --pin PIN [--threads N] [--seconds S] [--op NAME]...\nops: {}", ops.join(" "));
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !a.module.is_empty() && !a.pin.is_empty(),
        "--module and --pin are required"
    );
    if let Some(unknown) = a.ops.iter().find(|op| !ops.contains(&op.as_str())) {
        eprintln!("{program}: unknown op {unknown}; ops: {}", ops.join(" "));
        std::process::exit(2);
    }
    if a.ops.is_empty() {
        a.ops = ops.iter().map(|s| s.to_string()).collect();
    }
    a
}
