#!/usr/bin/env bash
# Create a fresh, private SoftHSM2 token for p11audit tests and the demo.
#
# usage: softhsm/new-token.sh DIR [LABEL] [SO_PIN] [USER_PIN]
#
# Creates DIR/tokens, writes DIR/softhsm2.conf from softhsm/softhsm2.conf.in and
# initialises one token in the first free slot. On success the only thing on
# stdout is a line to eval:
#
#   eval "$(softhsm/new-token.sh /tmp/tok)"    # sets SOFTHSM2_CONF
#
# Defaults: LABEL p11audit-test, SO_PIN 12345678, USER_PIN 123456.
# Everything else (softhsm2-util's own chatter, errors) goes to stderr.
set -euo pipefail

prog=${0##*/}
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

if [[ $# -lt 1 || $# -gt 4 || $1 == -h || $1 == --help ]]; then
    printf 'usage: %s DIR [LABEL] [SO_PIN] [USER_PIN]\n' "$prog" >&2
    exit 2
fi

dir=$1
label=${2:-p11audit-test}
so_pin=${3:-12345678}
user_pin=${4:-123456}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
template=$here/softhsm2.conf.in
[[ -r $template ]] || die "template not found: $template"

command -v softhsm2-util >/dev/null 2>&1 \
    || die "softhsm2-util not found (install the Debian package softhsm2, e.g. scripts/install-deps.sh)"

[[ -n $dir ]] || die "DIR must not be empty"
[[ -n $label && ${#label} -le 32 ]] || die "LABEL must be 1 to 32 characters"
# softhsm2-util falls back to an interactive prompt on a bad PIN: check first.
for pin in "$so_pin" "$user_pin"; do
    [[ ${#pin} -ge 4 && ${#pin} -le 255 ]] || die "PINs must be 4 to 255 characters"
done
mkdir -p -- "$dir/tokens" || die "cannot create $dir/tokens"
dir=$(cd -- "$dir" && pwd) || die "cannot resolve $dir"
[[ $dir != *[[:space:]]* ]] \
    || die "DIR must not contain whitespace (SoftHSM's config parser trims it): '$dir'"

conf=$dir/softhsm2.conf
content=$(<"$template")
content=${content//@TOKENDIR@/$dir/tokens}
printf '%s\n' "$content" >"$conf" || die "cannot write $conf"

if ! SOFTHSM2_CONF=$conf softhsm2-util --init-token --free \
        --label "$label" --so-pin "$so_pin" --pin "$user_pin" </dev/null >&2; then
    die "softhsm2-util --init-token failed (config $conf)"
fi

printf 'export SOFTHSM2_CONF=%q\n' "$conf"
