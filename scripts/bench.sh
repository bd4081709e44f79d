#!/usr/bin/env bash
# The performance table of docs/PERFORMANCE.md: direct SoftHSM, p11audit in front of SoftHSM,
# and OpenSC's pkcs11-spy in front of SoftHSM (installed by scripts/install-deps.sh), alternated
# A B C A B C ... ROUNDS times, at 1 and 2 threads; medians of the rounds, and the ratio to
# direct from the same rounds.
#
#   scripts/bench.sh [ROUNDS] [SECONDS_PER_OP]        (defaults: 3 rounds, 1 s per op)
#   P11BENCH_SYNC=always scripts/bench.sh             durable mode for the p11audit runs
#   P11BENCH_OPS="ecdsa_p256_sign get_info" ...        a subset of operations
#   P11BENCH_THREADS="1 2 4" ...                       thread counts (default: 1 2)
#   P11BENCH_PER_CALL=1 ...                            each call of an operation timed on its
#                                                      own (examples/p11calls.rs: the init, the
#                                                      length query, the call) instead of p11bench
#   P11BENCH_BASELINE=OLD/libp11audit.so ...           another build of p11audit, run as
#                                                      "baseline" in the same rounds: judges a
#                                                      change on a noisy machine (build the old
#                                                      commit in a git worktree)
#   P11BENCH_NO_SPY=1 ...                              leave pkcs11-spy out (shorter rounds)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
seconds=${2:-1}

scripts/install-deps.sh
cargo build --release --example p11bench --example p11calls --lib --bin p11audit >&2
bench=target/release/examples/p11bench
[[ -n ${P11BENCH_PER_CALL:-} ]] && bench=target/release/examples/p11calls
shim=$PWD/target/release/libp11audit.so
softhsm=/usr/lib/softhsm/libsofthsm2.so
spy=/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so

work=$(mktemp -d "${TMPDIR:-/tmp}/p11bench.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
eval "$(softhsm/new-token.sh "$work/token" bench 12345678 123456)"

ops=()
for op in ${P11BENCH_OPS:-}; do ops+=(--op "$op"); done

configs=(direct p11audit)
if [[ -n ${P11BENCH_BASELINE:-} ]]; then
    # A copy: the build may be rebuilt while this runs.
    cp "$P11BENCH_BASELINE" "$work/baseline.so"
    configs+=(baseline)
fi
if [[ -z ${P11BENCH_NO_SPY:-} ]]; then
    if [[ ! -f $spy ]]; then
        echo "bench: $spy is missing (package opensc-pkcs11; scripts/install-deps.sh)" >&2
        exit 1
    fi
    configs+=(pkcs11-spy)
fi

results=$work/results.jsonl
for round in $(seq 1 "$rounds"); do
    for config in "${configs[@]}"; do
        for threads in ${P11BENCH_THREADS:-1 2}; do
            run=$work/run-$round-$config-$threads
            mkdir -p "$run"
            case $config in
            direct)
                out=$("$bench" --module "$softhsm" --pin 123456 --threads "$threads" --seconds "$seconds" "${ops[@]}")
                ;;
            p11audit | baseline)
                module=$shim
                [[ $config == baseline ]] && module=$work/baseline.so
                target/release/p11audit keygen "$run/key" >/dev/null
                out=$(P11AUDIT_MODULE=$softhsm P11AUDIT_LOG=$run/audit.jsonl P11AUDIT_KEY_FILE=$run/key \
                    P11AUDIT_SYNC=${P11BENCH_SYNC:-none} \
                    "$bench" --module "$module" --pin 123456 --threads "$threads" --seconds "$seconds" "${ops[@]}")
                ;;
            pkcs11-spy)
                out=$(PKCS11SPY=$softhsm PKCS11SPY_OUTPUT=$run/spy.log \
                    "$bench" --module "$spy" --pin 123456 --threads "$threads" --seconds "$seconds" "${ops[@]}")
                ;;
            esac
            while IFS= read -r line; do
                printf '{"round":%s,"config":"%s",%s\n' "$round" "$config" "${line#\{}"
            done <<<"$out" >>"$results"
            rm -rf "$run"
        done
    done
    echo "bench: round $round of $rounds done" >&2
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
configs = sorted({r["config"] for r in rows}, key=["direct", "p11audit", "baseline", "pkcs11-spy"].index)
ops = list(dict.fromkeys(r["op"] for r in rows))
for threads in sorted({r["threads"] for r in rows}):
    print(f"\n### {threads} thread(s), one session each; medians of {max(r['round'] for r in rows)} alternated rounds\n")
    head = "| operation | direct ops/s | direct median µs |"
    for c in configs[1:]:
        head += f" {c} ops/s | {c} median µs | {c} p99 µs | {c}/direct | {c}/direct by median | {c} added µs |"
    head += " calls/op | records/op | log bytes/op |"
    print(head)
    print("|" + "---|" * head.count("|")[:-1] if False else "|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    for op in ops:
        sel = lambda c: [r for r in rows if r["op"] == op and r["threads"] == threads and r["config"] == c]
        d = sel("direct")
        if not d:
            continue  # e.g. login_logout, which only runs at 1 thread
        d_ops = med([r["ops_per_s"] for r in d])
        line = f"| {op} | {d_ops:,.0f} | {med([r['median_us'] for r in d]):.1f} |"
        for c in configs[1:]:
            rs = sel(c)
            # Ratio per round (same round, alternated), then the median of the ratios.
            ratios = [r["ops_per_s"] / x["ops_per_s"] for r in rs for x in d if x["round"] == r["round"]]
            # Added latency: the difference of the medians over the rounds.
            added = med([r["median_us"] for r in rs]) - med([r["median_us"] for r in d])
            # The same ratio from median latencies (direct's over this one's, per round): less
            # moved by the moments a busy machine takes the core away.
            by_median = [x["median_us"] / r["median_us"] for r in rs for x in d if x["round"] == r["round"]]
            line += f" {med([r['ops_per_s'] for r in rs]):,.0f} | {med([r['median_us'] for r in rs]):.1f} | {med([r['p99_us'] for r in rs]):.1f} | {med(ratios):.2f} | {med(by_median):.2f} | {added:+.1f} |"
        a = sel("p11audit")
        calls, logb = med([r["calls_per_op"] for r in a]), med([r["log_bytes_per_op"] for r in a])
        recs = med([r.get("records_per_op") for r in a])
        line += f" {calls:.1f} | {recs:.1f} | {logb:.0f} |" if calls is not None else " | | |"
        print(line)
PY

# The Merkle tree of the log and its signed checkpoints, per record (docs/PERFORMANCE.md,
# "Merkle tree and signed checkpoints"): without a provider, in its own program.
cargo build --release --example tree_bench >&2
printf '\n### Merkle tree and signed checkpoints (examples/tree_bench.rs)\n\n'
target/release/examples/tree_bench "$work" | sed 's/^/- /'
