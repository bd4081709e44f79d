#!/usr/bin/env bash
# How fast could p11audit be if part of its work cost nothing? Builds a measurement-only copy
# of this checkout with that part cut out, then runs scripts/bench.sh with the copy in the
# "baseline" column beside the real p11audit. What is cut (P11BOUND):
#
#   writes   (default) the log's `write` system call is skipped: the records are still built,
#            sealed and chained and the state is still stored; only the bytes never reach the
#            file, and the periodic log-length check is off because the file stays empty. An
#            upper bound for any way of putting the bytes in the file (mmap, io_uring, pwrite
#            outside the lock).
#   records  every record's body is cut to its time stamp, event and function (a line of about
#            230 bytes with the chain members, against 600-650 for a sign's records); the records
#            are still built from the call, sealed, chained and written. An upper bound for any
#            change of the format that writes less per record.
#   both     the two cuts together.
#
# Its "baseline/direct" ratios show which performance targets no change to the write path or
# the format can reach. NEVER use the copy for anything else: it
# logs nothing, or nothing useful.
#
#   scripts/bench-upper-bound.sh [ROUNDS] [SECONDS_PER_OP]
#   P11BOUND=records|both scripts/bench-upper-bound.sh ...
#   P11BENCH_OPS=... P11BENCH_THREADS=... as for scripts/bench.sh
#   scripts/bench-upper-bound.sh --check       only make the copy and apply the edits (tests
#                                              run this, so that an edit that no longer applies
#                                              is found before anyone measures with it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

copy=${TMPDIR:-/tmp}/p11audit-upper-bound
rm -rf -- "$copy/src"
mkdir -p "$copy"
git ls-files -z | xargs -0 tar -cf - | tar -xf - -C "$copy"
bound=${P11BOUND:-writes}
# Each edit is checked: a silent no-op would measure the real build under a false name.
patch() {
    local file=$copy/$1 from=$2 to=$3
    [[ $(grep -cF -- "$from" "$file") == 1 ]] || {
        echo "bench-upper-bound: cannot find '$from' once in $1" >&2
        exit 1
    }
    FROM=$from TO=$to perl -0pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/' "$file"
}
case $bound in
writes | records | both) ;;
*)
    echo "bench-upper-bound: P11BOUND must be writes, records or both, not '$bound'" >&2
    exit 2
    ;;
esac
if [[ $bound == writes || $bound == both ]]; then
    patch src/writer/audit_log.rs 'if let Err(e) = self.log.write_all(&self.buf) {' \
        'if let Err(e) = std::hint::black_box(Ok::<(), io::Error>(())) {'
    patch src/writer/audit_log.rs 'if recover || check_due {' 'if recover || (check_due && false) {'
fi
if [[ $bound == records || $bound == both ]]; then
    # The body keeps ts, ev and fn; host, pid, tid, uid, exe and the whole detail go.
    patch src/format/encode.rs '    m.str("host", &r.host);' '    let _ = &r.host;'
    patch src/format/encode.rs '    m.num("pid", u64::from(r.pid));' '    let _ = r.pid;'
    patch src/format/encode.rs '    m.num("tid", r.tid);' '    let _ = r.tid;'
    patch src/format/encode.rs '    m.num("uid", u64::from(r.uid));' '    let _ = r.uid;'
    patch src/format/encode.rs '    push_bytes(m.key("exe"), r.exe.bytes());' '    let _ = &r.exe;'
    patch src/format/encode.rs '    push_detail(&mut m, &r.detail);' '    std::hint::black_box(&r.detail);'
fi
if [[ ${1:-} == --check ]]; then
    echo "bench-upper-bound: the $bound edits apply in $copy"
    exit 0
fi
(cd "$copy" && CARGO_TARGET_DIR=$copy/target cargo build --release --lib >&2)
P11BENCH_BASELINE=$copy/target/release/libp11audit.so exec scripts/bench.sh "$@"
