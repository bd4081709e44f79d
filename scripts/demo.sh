#!/usr/bin/env bash
# The p11audit demo: OpenSC's pkcs11-tool talks to a fresh SoftHSM token through
# libp11audit.so; then the audit log is printed and verified, and a tampered copy is
# shown to fail verification.
#
#   scripts/demo.sh
#
# Everything happens in a temporary directory (removed on success, kept on failure).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

scripts/install-deps.sh

say "Building p11audit (release)"
cargo build --release
shim=$root/target/release/libp11audit.so
tool=$root/target/release/p11audit
[[ -f $shim ]] || die "$shim was not built"
[[ -x $tool ]] || die "$tool was not built"

softhsm=/usr/lib/softhsm/libsofthsm2.so
[[ -f $softhsm ]] || die "$softhsm not found (package softhsm2)"

work=$(mktemp -d "${TMPDIR:-/tmp}/p11audit-demo.XXXXXX")
cleanup() {
    local rc=$?
    if ((rc == 0)); then
        rm -rf -- "$work"
    else
        printf 'demo: failed (exit %d); files left in %s\n' "$rc" "$work" >&2
    fi
}
trap cleanup EXIT

say "Creating a SoftHSM token in $work/token"
eval "$(softhsm/new-token.sh "$work/token" p11audit-demo 12345678 123456)"

say "Creating the chain key"
"$tool" keygen "$work/chain.key"
ls -l "$work/chain.key"

export P11AUDIT_MODULE=$softhsm
export P11AUDIT_LOG=$work/audit.log
export P11AUDIT_KEY_FILE=$work/chain.key
log=$P11AUDIT_LOG

p11() {
    printf '$ pkcs11-tool --module %s --token-label p11audit-demo' "${shim#"$root"/}"
    printf ' %q' "$@"
    printf '\n'
    pkcs11-tool --module "$shim" --token-label p11audit-demo "$@"
}

say "Generating an EC P-256 key pair through the shim"
p11 --login --pin 123456 --keypairgen --key-type EC:prime256v1 --label demo-key --id 01

say "Signing a file"
echo hello >"$work/f"
# SoftHSM 2.6.1 (Debian 12) has no CKM_ECDSA_SHA256: hash on the token, then sign the
# digest with CKM_ECDSA, which is the same signature.
p11 --hash --mechanism SHA256 --input-file "$work/f" --output-file "$work/f.sha256"
p11 --login --pin 123456 --sign --mechanism ECDSA --id 01 \
    --input-file "$work/f.sha256" --output-file "$work/sig"
p11 --verify --mechanism ECDSA --id 01 --input-file "$work/f.sha256" --signature-file "$work/sig"

[[ -s $log ]] || die "no audit log was written at $log"

say "The audit log ($(wc -l <"$log") records, one JSON object per line)"
cat -- "$log"

say "Looking for the PIN (123456) in the log and its state file: expect no match"
[[ -f $log.state ]] || die "no state file at $log.state"
# As a JSON string, or hex-encoded.
if grep -F -e '"123456"' -e '313233343536' -- "$log" "$log.state"; then
    die "the PIN appears in the log"
fi
echo "no match"

say "Verifying: p11audit verify --key-file chain.key audit.log"
"$tool" verify --key-file "$work/chain.key" "$log"

say "Tampering with a copy (deleting record 2) and verifying again (expect exit 1)"
mkdir "$work/tampered"
sed '2d' "$log" >"$work/tampered/audit.log"
set +e
"$tool" verify --key-file "$work/chain.key" "$work/tampered/audit.log"
rc=$?
set -e
[[ $rc -eq 1 ]] || die "verify of the tampered copy exited $rc, expected 1"
echo "verify exited 1: tampering detected"

say "Demo finished"
