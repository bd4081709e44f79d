#!/usr/bin/env bash
# The separated deployment's cost (docs/PERFORMANCE.md, "Behind p11-kit's RPC"): direct SoftHSM
# in process, p11-kit's RPC to bare SoftHSM, and p11-kit's RPC to p11audit in front of SoftHSM,
# alternated A B C A B C ... ROUNDS times at one thread; medians of the rounds, and each
# configuration's ratio to direct and the p11audit-behind-RPC ratio to bare RPC, from the same
# rounds.
#
#   scripts/bench-rpc.sh [ROUNDS] [SECONDS_PER_OP]     (defaults: 3 rounds, 1 s per op)
#   P11BENCH_OPS="ecdsa_p256_sign find_by_label" ...     a subset of operations (default: the
#                                                        ones whose mechanisms cross p11-kit
#                                                        0.24's RPC)
#
# The server is `p11-kit server` in the foreground, one per configuration and round, as the
# current user; p11bench loads p11-kit-client.so and reaches it through P11_KIT_SERVER_ADDRESS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
seconds=${2:-1}

scripts/install-deps.sh
cargo build --release --example p11bench --lib --bin p11audit >&2
bench=target/release/examples/p11bench
shim=$PWD/target/release/libp11audit.so
softhsm=/usr/lib/softhsm/libsofthsm2.so
client=$(pkg-config --variable=p11_module_path p11-kit-1 2>/dev/null || echo /usr/lib/x86_64-linux-gnu/pkcs11)/p11-kit-client.so
[[ -f $client ]] || client=/usr/lib/$(gcc -print-multiarch)/pkcs11/p11-kit-client.so

work=$(mktemp -d "${TMPDIR:-/tmp}/p11bench-rpc.XXXXXX")
server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
    return 0
}
trap 'stop_server; rm -rf -- "$work"' EXIT
eval "$(softhsm/new-token.sh "$work/token" bench 12345678 123456)"

ops=()
for op in ${P11BENCH_OPS:-ecdsa_p256_sign hmac_sha256_64 find_by_label aes_keygen_destroy get_info}; do
    ops+=(--op "$op")
done

# Starts `p11-kit server` for `module` on `socket`, with the NAME=value settings after them in
# its environment, and waits until it listens.
start_server() {
    local module=$1 socket=$2
    env "${@:3}" p11-kit server -f -n "$socket" --provider "$module" "pkcs11:token=bench" \
        >"$work/server.out" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        [[ -S $socket ]] && return 0
        sleep 0.05
    done
    echo "bench-rpc: p11-kit server did not start:" >&2
    cat "$work/server.out" >&2
    exit 1
}

configs=(direct rpc rpc-p11audit)
results=$work/results.jsonl
for round in $(seq 1 "$rounds"); do
    for config in "${configs[@]}"; do
        run=$work/run-$round-$config
        mkdir -p "$run"
        case $config in
        direct)
            out=$("$bench" --module "$softhsm" --pin 123456 --threads 1 --seconds "$seconds" "${ops[@]}")
            ;;
        rpc)
            start_server "$softhsm" "$run/sock"
            out=$(P11_KIT_SERVER_ADDRESS=unix:path=$run/sock \
                "$bench" --module "$client" --pin 123456 --threads 1 --seconds "$seconds" "${ops[@]}")
            stop_server
            ;;
        rpc-p11audit)
            target/release/p11audit keygen "$run/key" >/dev/null
            start_server "$shim" "$run/sock" P11AUDIT_MODULE=$softhsm \
                P11AUDIT_LOG=$run/audit.jsonl P11AUDIT_KEY_FILE=$run/key
            out=$(P11_KIT_SERVER_ADDRESS=unix:path=$run/sock \
                "$bench" --module "$client" --pin 123456 --threads 1 --seconds "$seconds" "${ops[@]}")
            stop_server
            # Every record names the client: the benchmark itself.
            grep -q '"peer":{"pid":' "$run/audit.jsonl" ||
                { echo "bench-rpc: the records name no peer" >&2; exit 1; }
            target/release/p11audit verify --key-file "$run/key" "$run/audit.jsonl" >/dev/null ||
                { echo "bench-rpc: the log of round $round does not verify" >&2; exit 1; }
            ;;
        esac
        while IFS= read -r line; do
            printf '{"round":%s,"config":"%s",%s\n' "$round" "$config" "${line#\{}"
        done <<<"$out" >>"$results"
        rm -rf "$run"
    done
    echo "bench-rpc: round $round of $rounds done" >&2
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else None
ops = list(dict.fromkeys(r["op"] for r in rows))
print(f"\n### 1 thread; medians of {max(r['round'] for r in rows)} alternated rounds\n")
print("| operation | direct ops/s | RPC ops/s | RPC median µs | RPC/direct | RPC + p11audit ops/s | RPC + p11audit/direct | p11audit's share of the RPC path | the same by median latency | added µs |")
print("|---|---|---|---|---|---|---|---|---|---|")
for op in ops:
    sel = lambda c: [r for r in rows if r["op"] == op and r["config"] == c]
    d, rpc, aud = sel("direct"), sel("rpc"), sel("rpc-p11audit")
    per_round = lambda a, b: med([x["ops_per_s"] / y["ops_per_s"] for x in a for y in b if x["round"] == y["round"]])
    # p11audit's share: how much slower the RPC path is with p11audit than without, per round.
    share = 1 / per_round(aud, rpc) - 1
    # The same from median latencies, per round: less moved by the moments the machine takes a
    # core away from one of the two processes.
    share_by_median = med([x["median_us"] / y["median_us"] for x in aud for y in rpc if x["round"] == y["round"]]) - 1
    added = med([r["median_us"] for r in aud]) - med([r["median_us"] for r in rpc])
    print(f"| {op} | {med([r['ops_per_s'] for r in d]):,.0f} | {med([r['ops_per_s'] for r in rpc]):,.0f} | "
          f"{med([r['median_us'] for r in rpc]):.1f} | "
          f"{per_round(rpc, d):.2f} | {med([r['ops_per_s'] for r in aud]):,.0f} | {per_round(aud, d):.2f} | "
          f"{share:+.1%} | {share_by_median:+.1%} | {added:+.1f} |")
PY
