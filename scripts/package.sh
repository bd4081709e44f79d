#!/usr/bin/env bash
# Builds the Debian package and prints its path (target/debian/p11audit_VERSION-1_ARCH.deb).
# The version is Cargo.toml's; the contents are listed in Cargo.toml's
# [package.metadata.deb]. Install it with `apt-get install ./target/debian/p11audit_*.deb`.
#
#   scripts/package.sh
#
# Needs cargo-deb (installed here with `cargo install` if missing) and dpkg-dev
# (dpkg-architecture). The man pages and completions come from the same command-line
# definition as the program (examples/gen_docs.rs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "package: installing cargo-deb" >&2
    cargo install cargo-deb --version 3.8.0 --locked
fi

cargo build --release --locked --lib --bin p11audit
target=${CARGO_TARGET_DIR:-target}

# The module where Debian keeps PKCS#11 modules: /usr/lib/<multiarch triplet>/pkcs11.
triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
stage=$target/release/multiarch
rm -rf "$stage"
mkdir -p "$stage/$triplet/pkcs11"
cp "$target/release/libp11audit.so" "$stage/$triplet/pkcs11/"

# Man pages and shell completions. The generator is built with the release profile, beside
# the package's build, so that the debug build the test suite runs with is left as it is.
rm -rf target/package
cargo run --quiet --locked --release --example gen_docs -- target/package

# Debian requires a changelog: one entry naming this version, dated by the last commit.
pkgid=$(cargo pkgid --locked)   # path+file:///...#p11audit@0.1.0, or ...#0.1.0
version=${pkgid##*#}
version=${version##*@}
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml)
when=$(git log -1 --format=%ct 2>/dev/null || date +%s)
cat >target/package/changelog <<END
p11audit ($version-1) unstable; urgency=medium

  * Built from the p11audit sources at version $version.

 -- $maintainer  $(date -u -R -d "@$when")
END

out=$(cargo deb --no-build --locked --quiet --strip)
echo "$out" | tail -n 1
