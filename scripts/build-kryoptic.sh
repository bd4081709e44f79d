#!/usr/bin/env bash
# Builds kryoptic 1.1.0 (a PKCS#11 3.0 soft token in Rust, from crates.io) for the tests in
# tests/kryoptic.rs, and prints the path of its libkryoptic_pkcs11.so on stdout (everything
# else goes to stderr):
#
#   so=$(scripts/build-kryoptic.sh)
#
# kryoptic is GPL-3.0-or-later. It is a test provider only: it is built outside the checkout,
# loaded by the tests at run time with dlopen, and never linked into or shipped with p11audit.
#
# The build is cached in $P11AUDIT_KRYOPTIC_CACHE (default
# /var/cache/p11audit-test/kryoptic-1.1.0); when the library for this version and feature set
# is already there the script only prints its path. The first build takes several minutes.
#
# Features: Debian 12 has OpenSSL 3.0, so `dynamic` (link the system libcrypto) and no
# `eddsa` (it needs OpenSSL 3.2). No `pkcs11_3_2`: kryoptic then offers "PKCS 11" 3.0 and 2.40.
# Needs libssl-dev, libclang-dev (bindgen), libsqlite3-dev and pkg-config
# (scripts/install-deps.sh).
set -euo pipefail

version=1.1.0
features=dynamic,sqlitedb,ecdsa,ecdh,hash_all,kdf_all,rsa,aes
cache=${P11AUDIT_KRYOPTIC_CACHE:-/var/cache/p11audit-test/kryoptic-$version}
lib=$cache/libkryoptic_pkcs11.so
stamp=$cache/BUILT
want_stamp="kryoptic $version features $features"

say() { printf 'build-kryoptic: %s\n' "$*" >&2; }

built() {
    [[ -f $lib && -f $stamp && $(cat -- "$stamp") == "$want_stamp" ]]
}

if built; then
    printf '%s\n' "$lib"
    exit 0
fi

mkdir -p -- "$cache"
# One build at a time (two test runs may start together).
exec 9>"$cache/.lock"
flock 9
if built; then
    printf '%s\n' "$lib"
    exit 0
fi

started=$SECONDS
say "building kryoptic $version (features $features) in $cache"

# A throwaway project that depends on exactly this version, so that `cargo fetch` puts the
# crate's source into the registry cache.
fetch=$cache/fetch
mkdir -p -- "$fetch/src"
: >"$fetch/src/lib.rs"
cat >"$fetch/Cargo.toml" <<EOF
[package]
name = "p11audit-kryoptic-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
kryoptic = "=$version"

[workspace]
EOF
(cd "$fetch" && cargo fetch --quiet) >&2

cargo_home=${CARGO_HOME:-$HOME/.cargo}
shopt -s nullglob
sources=("$cargo_home"/registry/src/*/"kryoptic-$version")
shopt -u nullglob
if ((${#sources[@]} == 0)); then
    say "error: cargo fetch did not unpack kryoptic-$version under $cargo_home/registry/src"
    exit 1
fi

src=$cache/src
rm -rf -- "$src"
cp -a -- "${sources[0]}" "$src"
# The crate ships its Cargo.lock: build with exactly the dependencies upstream tested. Only the
# library (the cdylib); its two tool binaries are not needed.
(
    cd "$src"
    cargo build --release --locked --lib \
        --no-default-features --features "$features" \
        --target-dir "$cache/target"
) >&2

out=$cache/target/release/libkryoptic_pkcs11.so
if [[ ! -f $out ]]; then
    say "error: the build finished but $out is missing"
    exit 1
fi
cp -- "$out" "$lib.tmp"
mv -f -- "$lib.tmp" "$lib"
printf '%s\n' "$want_stamp" >"$stamp"
say "built $lib in $((SECONDS - started)) s"
printf '%s\n' "$lib"
