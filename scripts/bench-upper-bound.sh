#!/usr/bin/env bash
# How fast could p11audit be if writing the log cost nothing? Builds a measurement-only copy
# of this checkout in which the log's `write` system call is skipped (the records are still
# built, sealed and chained, the state is still stored; only the bytes never reach the file,
# and the periodic log-length check is off because the file stays empty), then runs
# scripts/bench.sh with that copy in the "baseline" column beside the real p11audit.
#
# The "baseline/direct" ratio is an upper bound for any way of putting the bytes in the file
# (mmap, io_uring, pwrite outside the lock): docs/PERFORMANCE.md uses it to show which targets
# of issue 5 no change to the write path alone can reach. NEVER use the copy for anything else:
# it logs nothing.
#
#   scripts/bench-upper-bound.sh [ROUNDS] [SECONDS_PER_OP]
#   P11BENCH_OPS=... P11BENCH_THREADS=... as for scripts/bench.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

copy=${TMPDIR:-/tmp}/p11audit-upper-bound
rm -rf -- "$copy/src"
mkdir -p "$copy"
git ls-files -z | xargs -0 tar -cf - | tar -xf - -C "$copy"
writer=$copy/src/audit/writer.rs
# The two edits, each checked: a silent no-op would measure the real build under a false name.
patch() {
    local from=$1 to=$2
    [[ $(grep -cF -- "$from" "$writer") == 1 ]] || {
        echo "bench-upper-bound: cannot find '$from' once in src/audit/writer.rs" >&2
        exit 1
    }
    FROM=$from TO=$to perl -0pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/' "$writer"
}
patch 'if let Err(e) = self.log.write_all(&self.buf) {' \
    'if let Err(e) = std::hint::black_box(Ok::<(), io::Error>(())) {'
patch 'if recover || check_due {' 'if recover || (check_due && false) {'
(cd "$copy" && CARGO_TARGET_DIR=$copy/target cargo build --release --lib >&2)
P11BENCH_BASELINE=$copy/target/release/libp11audit.so exec scripts/bench.sh "$@"
