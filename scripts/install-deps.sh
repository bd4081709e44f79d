#!/usr/bin/env bash
# Install the Debian packages p11audit's tests and demo need, if any are missing.
# The one place the package list lives: scripts/test.sh, scripts/demo.sh and .ci/run use it.
#
#   softhsm2        the real PKCS#11 2.40 module the tests and the demo forward to
#   opensc          pkcs11-tool, the client in the demo and in tests/kryoptic.rs
#   opensc-pkcs11   opensc-pkcs11.so, the real PKCS#11 3.0 module of tests/interfaces.rs
#   gcc             compiles the C test programs in tests/c (libc6-dev: their headers)
#   pkg-config      used by crate build scripts that look for system libraries (kryoptic's
#                   libsqlite3-sys)
#   libssl-dev      OpenSSL 3 headers and libcrypto.so: kryoptic (scripts/build-kryoptic.sh,
#                   a test-only provider) links the system OpenSSL
#   libclang-dev    libclang for bindgen in kryoptic's build script
#   libsqlite3-dev  libsqlite3.so: kryoptic's sqlite token database
#   valgrind        memcheck over the shim (tests/valgrind.rs)
#   real clients of tests/clients/run.sh, each run directly and through p11audit:
#   gnutls-bin                p11tool, certtool
#   libengine-pkcs11-openssl  the OpenSSL pkcs11 engine (with openssl)
#   openssl                   checks every signature independently
#   openssh-client            ssh-keygen -D, ssh-agent, ssh-add
#   default-jre-headless      Java 17 SunPKCS11: keytool, jarsigner
#   python3-pykcs11           PyKCS11
#   p11-kit                   p11-kit-proxy.so and .module files
#   libnss3-tools             NSS modutil, certutil
#   xxd                       hex to bytes in the client cases
#   rsyslog, rsyslog-relp     central collection (case rsyslog): imfile, omrelp/imrelp; the case
#                             runs its own rsyslogd processes, not the system's
#   the separated mode (tests/separated.rs: p11audit as its own user behind p11-kit's RPC):
#   p11-kit-modules   p11-kit-client.so, the applications' side of the RPC
#   systemd           systemd-socket-activate (runs the shipped unit's command line per
#                     connection) and systemd-analyze (checks the units in deploy/)
#   passwd            useradd, groupadd: the test's service, application and auditor users
#   providers of the matrix (tests/tpm2_pkcs11.rs, tests/opencryptoki.rs), each run directly and
#   through p11audit with daemons the tests start and stop themselves:
#   libtpm2-pkcs11-1          libtpm2_pkcs11.so, the TPM-backed PKCS#11 module
#   libtpm2-pkcs11-tools      tpm2_ptool: makes the tpm2-pkcs11 store and token
#   swtpm                     the software TPM the module talks to (on loopback ports)
#   tpm2-abrmd                the TPM resource manager, on a private D-Bus session bus
#   libtss2-tcti-tabrmd0      the TCTI through which the module and tpm2_ptool reach tpm2-abrmd
#   tpm2-tools                tpm2_getrandom: tells when tpm2-abrmd answers
#   dbus                      dbus-daemon for the private session bus
#   opencryptoki              pkcsslotd, pkcsconf, and the pkcs11/libopencryptoki.so link
#   libopencryptoki0          the module itself and its soft token (libpkcs11_sw.so)
#   the Debian package (scripts/package.sh, tests/package.rs):
#   dpkg-dev                  dpkg-architecture: the multiarch directory of the module
#   lintian                   reviews the package
#   man-db                    man -l renders the man page
#   (systemd, above, also gives the package's postinst systemd-sysusers and systemd-tmpfiles)
set -euo pipefail

packages=(
    softhsm2
    opensc
    opensc-pkcs11
    gcc
    libc6-dev
    pkg-config
    libssl-dev
    libclang-dev
    libsqlite3-dev
    valgrind
    gnutls-bin
    libengine-pkcs11-openssl
    openssl
    openssh-client
    default-jre-headless
    python3-pykcs11
    p11-kit
    libnss3-tools
    xxd
    rsyslog
    rsyslog-relp
    p11-kit-modules
    systemd
    passwd
    libtpm2-pkcs11-1
    libtpm2-pkcs11-tools
    swtpm
    tpm2-abrmd
    libtss2-tcti-tabrmd0
    tpm2-tools
    dbus
    opencryptoki
    libopencryptoki0
    dpkg-dev
    lintian
    man-db
)

installed() {
    dpkg -s "$1" 2>/dev/null | grep -qx 'Status: install ok installed'
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    if [[ $(id -u) -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "install-deps: error: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: error: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
