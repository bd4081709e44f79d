#!/usr/bin/env bash
# Compares two builds of libp11audit.so in front of SoftHSM, alternated with direct SoftHSM in
# the same rounds (direct, A, B, direct, A, B, ...), and prints per operation the median ratio
# to direct and the median latency of each build. For judging a change on a noisy machine:
#
#   git worktree add /tmp/base HEAD~1 && (cd /tmp/base && cargo build --release --lib)
#   cargo build --release --lib --example p11bench
#   scripts/bench-compare.sh /tmp/base/target/release/libp11audit.so target/release/libp11audit.so \
#       [ROUNDS] [SECONDS] [THREADS] [OP...]          (defaults: 5 rounds, 1 s, 1 thread, a sign,
#                                                      an HMAC, a digest and a keygen)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $# -ge 2 ]] || { sed -n 2,10p "$0"; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/p11compare.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
# Copies: the builds may be rebuilt while this runs.
build_a=$1
build_b=$2
cp "$build_a" "$work/a.so"
cp "$build_b" "$work/b.so"
rounds=${3:-5}
seconds=${4:-1}
threads=${5:-1}
shift $(($# < 5 ? $# : 5))
ops=()
for op in "${@:-ecdsa_p256_sign hmac_sha256_64 sha256_1k aes_keygen_destroy}"; do
    for o in $op; do ops+=(--op "$o"); done
done
bench=target/release/examples/p11bench
softhsm=/usr/lib/softhsm/libsofthsm2.so
eval "$(softhsm/new-token.sh "$work/token" bench 12345678 123456)" >/dev/null
target/release/p11audit keygen "$work/key" >/dev/null
results=$work/results.jsonl
for round in $(seq 1 "$rounds"); do
    for config in direct a b; do
        rm -f "$work"/audit.jsonl*
        case $config in
        direct) out=$("$bench" --module "$softhsm" --pin 123456 --threads "$threads" --seconds "$seconds" "${ops[@]}") ;;
        *) out=$(P11AUDIT_MODULE=$softhsm P11AUDIT_LOG=$work/audit.jsonl P11AUDIT_KEY_FILE=$work/key \
            "$bench" --module "$work/$config.so" --pin 123456 --threads "$threads" --seconds "$seconds" "${ops[@]}") ;;
        esac
        while IFS= read -r line; do
            printf '{"round":%s,"config":"%s",%s\n' "$round" "$config" "${line#\{}"
        done <<<"$out" >>"$results"
    done
done
python3 - "$results" "$build_a" "$build_b" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}")
print("| operation | direct median µs | A/direct | A median µs | B/direct | B median µs |")
print("|---|---|---|---|---|---|")
for op in dict.fromkeys(r["op"] for r in rows):
    direct = {r["round"]: r for r in rows if r["op"] == op and r["config"] == "direct"}
    line = f"| {op} | {st.median(r['median_us'] for r in direct.values()):.1f} |"
    for c in ("a", "b"):
        rs = [r for r in rows if r["op"] == op and r["config"] == c]
        ratio = st.median(r["ops_per_s"] / direct[r["round"]]["ops_per_s"] for r in rs)
        line += f" {ratio:.3f} | {st.median(r['median_us'] for r in rs):.1f} |"
    print(line)
PY
