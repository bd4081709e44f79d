# Shared by tests/clients/run.sh and the cases in tests/clients/cases/*.sh.
#
# A case is a shell function `case_NAME` registered with `register NAME "description"`. It runs
# in its own subshell, in its own empty working directory ($WORK), under a time limit, with
# `set -euo pipefail`. It fails by exiting non-zero (any failing command, or `fail "why"`).
#
# Typical shape: run the client against a fresh token directly, then against another fresh token
# through p11audit, compare what can be compared, then check the audit log:
#
#   case_example() {
#       use_token direct;  pkcs11-tool --module "$MODULE" ... >direct.out
#       use_token shim;    pkcs11-tool --module "$MODULE" ... >shim.out
#       same_output direct.out shim.out
#       log_verifies
#       log_has '"fn":"C_Sign"' '"label":"my-key"'
#       log_has_no_secret "$USER_PIN" "$SO_PIN"
#   }
#   register example "what it shows"

ROOT=${ROOT:?}
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
SHIM=${P11AUDIT_SHIM:-$ROOT/target/debug/libp11audit.so}
P11AUDIT_BIN=${P11AUDIT_BIN:-$ROOT/target/debug/p11audit}
# PINs that cannot turn up in a log by chance (not digits, not hex), so a match means a leak.
USER_PIN=Pin-canary-Qx7
SO_PIN=So-canary-Zw9k
TOKEN_LABEL=p11audit-clients

CASES=()
declare -A CASE_DESCRIPTION

register() {
    CASES+=("$1")
    CASE_DESCRIPTION[$1]=$2
}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# library_named MODE FILE: C_GetInfo's libraryDescription and libraryVersion, as the clients
# print them, name p11audit through the shim ("p11audit VERSION" and its major.minor, the
# version `p11audit --version` prints: README, "Versions") and the provider directly. Checks
# that in FILE, then writes LIBRARY and VERSION in their place, so that the rest of the output
# compares between the modes.
library_named() {
    local mode=$1 file=$2 full major_minor named=no
    full=$("$P11AUDIT_BIN" --version)
    full=${full#p11audit }
    major_minor=${full%.*}
    if grep -Eq "(Description: |library-description: |^Library +)p11audit $full( |\(|\$)" "$file" &&
        grep -Eq "(Library Version: |library-version: |\(ver )$major_minor(\)| *\$)" "$file"; then
        named=yes
    fi
    case $mode/$named in
    shim/no) fail "shim: C_GetInfo does not name p11audit $full: $(cat "$file")" ;;
    direct/yes) fail "direct: the provider's C_GetInfo names p11audit" ;;
    esac
    sed -i -E -e 's/^( *(Description|library-description): ).*/\1LIBRARY/' \
        -e 's/^( *(Library Version|library-version): ).*/\1VERSION/' \
        -e 's/^(Library +).* \(ver [0-9.]+\)$/\1LIBRARY (ver VERSION)/' "$file"
}

# use_token MODE: a fresh SoftHSM token in $WORK/MODE, and MODULE pointing at SoftHSM (direct)
# or at p11audit in front of it (shim), with the audit log at $WORK/shim/audit.jsonl.
use_token() {
    local mode=$1 dir=$WORK/$1
    mkdir -p "$dir"
    eval "$("$ROOT/softhsm/new-token.sh" "$dir/token" "$TOKEN_LABEL" "$SO_PIN" "$USER_PIN")"
    export SOFTHSM2_CONF
    case $mode in
    direct)
        MODULE=$SOFTHSM
        unset P11AUDIT_MODULE P11AUDIT_LOG P11AUDIT_KEY_FILE
        ;;
    shim)
        MODULE=$SHIM
        LOG=$dir/audit.jsonl
        KEY=$dir/chain.key
        [[ -f $KEY ]] || "$P11AUDIT_BIN" keygen "$KEY" >/dev/null
        export P11AUDIT_MODULE=$SOFTHSM P11AUDIT_LOG=$LOG P11AUDIT_KEY_FILE=$KEY
        ;;
    *) fail "use_token: unknown mode $mode" ;;
    esac
    MODE=$mode
    export MODULE MODE
}

# same_output A B: the two files are identical (after the caller removed what legitimately
# differs, e.g. serial numbers or random bytes).
same_output() {
    diff -u "$1" "$2" >&2 || fail "direct and shim results differ: $1 vs $2"
}

log_verifies() {
    "$P11AUDIT_BIN" verify --key-file "$KEY" "$LOG" >"$WORK/verify.out" 2>&1 ||
        { cat "$WORK/verify.out" >&2; fail "p11audit verify rejected $LOG"; }
}

# log_has TEXT...: some record contains each TEXT; with several, one record must contain all.
log_has() {
    local line
    line=$(grep -F -- "$1" "$LOG" || true)
    shift
    for t in "$@"; do
        line=$(grep -F -- "$t" <<<"$line" || true)
    done
    [[ -n $line ]] || fail "no record in $LOG contains all of: $*"
}

# log_has_no_secret S...: none of the strings appears in the log or the state file, raw, in
# hex (either case) or in base64 (any alignment).
log_has_no_secret() {
    local s enc
    for s in "$@"; do
        for f in "$LOG" "$LOG.state"; do
            grep -qF -- "$s" "$f" && fail "secret found raw in $f"
            enc=$(printf %s "$s" | od -An -tx1 | tr -d ' \n')
            grep -qiF -- "$enc" "$f" && fail "secret found as hex in $f"
            for pad in "" "x" "xx"; do
                enc=$(printf %s "$pad$s" | base64 -w0 | cut -c$((${#pad} * 4 / 3 + 3))-)
                enc=${enc%%=*}
                enc=${enc:0:$((${#enc} - 2))}
                [[ ${#enc} -ge 6 ]] && grep -qF -- "$enc" "$f" && fail "secret found as base64 in $f"
            done
        done
    done
    return 0
}
