# p11-kit (Debian packages p11-kit and libp11-kit0, 0.24.1 in Debian 12): the module registered
# with a `.module` file and used through p11-kit-proxy.so, the module that applications are
# given when they should see every registered module (here driven by pkcs11-tool).
#
# Where p11-kit looks (pkcs11.conf(5)): system module files in /etc/pkcs11/modules and
# /usr/share/p11-kit/modules, the system config /etc/pkcs11/pkcs11.conf, and per user
# ~/.config/pkcs11/pkcs11.conf and ~/.config/pkcs11/modules (HOME, not XDG_CONFIG_HOME). There is
# no environment variable for another directory. The test therefore writes a user config under
# HOME=$WORK/home and never touches the system's files.
#
# Quirks:
# - p11-kit 0.24 ignores the user config in a program running as root ("skipping user config in
#   program running as root" with P11_KIT_DEBUG=conf), and in setuid/setgid programs. When the
#   tests run as root, the clients therefore run as `nobody` (setpriv), in a $WORK owned by
#   nobody. (For root services, the module file belongs in /etc/pkcs11/modules: see the
#   recipe in CLIENTS.md.)
# - Debian's softhsm2 package registers SoftHSM itself (/usr/share/p11-kit/modules/
#   softhsm2.module). Unless the user config says `user-config: only`, the proxy would offer the
#   same token twice, once through p11audit and once around it; a user module file with the
#   same name and an empty `module:` hides the system one (case p11_kit_merge).
# - The proxy renumbers slots (0x11, 0x12, ...) and is a "managed" module: p11-kit calls the
#   shim's C_Initialize itself, with CKF_OS_LOCKING_OK, and C_Finalize when the program ends.

P11KIT_PROXY=/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so

# p11kit_config MODE USER_CONFIG: a private p11-kit user configuration in $WORK/home with
# `user-config: USER_CONFIG` and one module file naming SoftHSM (direct) or p11audit (shim).
p11kit_config() {
    local mode=$1 user_config=$2 dir=$WORK/home/.config/pkcs11
    rm -rf "$dir"
    mkdir -p "$dir/modules"
    printf 'user-config: %s\n' "$user_config" >"$dir/pkcs11.conf"
    case $mode in
    direct)
        P11KIT_MODULE_PATH=$SOFTHSM
        printf 'module: %s\n' "$SOFTHSM" >"$dir/modules/token.module"
        ;;
    # The module file names only the shim; the shim finds SoftHSM, the log and the key in
    # P11AUDIT_* (set by use_token), which p11-kit leaves in the environment of the program.
    # A copy in $WORK: the clients may run as nobody, who cannot always reach the checkout
    # (CI clones it where it likes).
    shim)
        cp "$SHIM" "$WORK/libp11audit.so"
        P11KIT_MODULE_PATH=$WORK/libp11audit.so
        printf 'module: %s\n' "$P11KIT_MODULE_PATH" >"$dir/modules/token.module"
        ;;
    esac
    export HOME=$WORK/home
}

# Runs a command as a user whose p11-kit user config is read: as nobody if we are root.
p11kit_as_user() {
    if (($(id -u) == 0)); then
        chown -R nobody:nogroup "$WORK"
        setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@" </dev/null
    else
        "$@" </dev/null
    fi
}

p11kit_tool() {
    p11kit_as_user pkcs11-tool --module "$P11KIT_PROXY" "$@"
}

p11kit_normalize() {
    sed -E -e 's/0x[0-9a-f]+/0xID/g' -e 's/(serial num +: ).*/\1SERIAL/' -e 's/(EC_POINT: +).*/\1POINT/' \
        -e 's/(serial-number: ).*/\1SERIAL/'
}

# Sorted blocks (a line not starting with a blank, and the indented lines after it): SoftHSM
# lists objects in the random order of its token directory.
p11kit_sort_blocks() {
    awk '/^[^ \t]/ && NR > 1 { print "" } { printf "%s\x1f", $0 } END { print "" }' |
        LC_ALL=C sort | tr '\037' '\n'
}

# The public key of EC object ID, through the proxy, as PEM (see ec_p256_pubkey_pem).
p11kit_ec_pubkey_pem() {
    local id=$1 out=$2 point
    point=$(p11kit_tool --list-objects --type pubkey --id "$id" 2>/dev/null | awk '/EC_POINT:/ { print $2 }')
    [[ $point == 044104* ]] || fail "unexpected EC_POINT for id $id: $point"
    printf '3059301306072a8648ce3d020106082a8648ce3d030107034200%s' "${point#0441}" | xxd -r -p |
        openssl pkey -pubin -inform DER -out "$out"
}

case_p11_kit_proxy() {
    for mode in direct shim; do
        use_token "$mode"
        p11kit_config "$mode" only
        # p11-kit's own view: the registered module and its token.
        p11kit_as_user p11-kit list-modules >"$mode.modules" 2>"$mode.modules.err"
        grep -qx "token: $P11KIT_MODULE_PATH" "$mode.modules" || fail "$mode: p11-kit does not list the module file"
        grep -q 'token: p11audit-clients' "$mode.modules" || fail "$mode: p11-kit does not see the token"
        sed 1d "$mode.modules" | p11kit_normalize >"$mode.out"
        library_named "$mode" "$mode.out"
        {
            p11kit_tool --list-slots
            p11kit_tool --list-mechanisms
            p11kit_tool --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 --label kit-ec --id 4b
            p11kit_tool --login --pin "$USER_PIN" --list-objects
        } 2>"$mode.err" | p11kit_normalize | p11kit_sort_blocks >>"$mode.out"
        # Sign through the proxy, verify with plain OpenSSL.
        echo "signed through p11-kit ($mode)" | openssl dgst -sha256 -binary >"$mode.digest"
        p11kit_tool --login --pin "$USER_PIN" --sign --mechanism ECDSA --id 4b --signature-format openssl \
            --input-file "$mode.digest" --output-file "$mode.sig" 2>>"$mode.err"
        p11kit_ec_pubkey_pem 4b "$mode.pub.pem"
        openssl pkeyutl -verify -pubin -inkey "$mode.pub.pem" -in "$mode.digest" -sigfile "$mode.sig" >/dev/null ||
            fail "$mode: the signature made through p11-kit does not verify with OpenSSL"
        # A wrong PIN through the proxy.
        if p11kit_tool --login --pin Wrong-canary-Pk4 --list-objects >"$mode.wrong" 2>&1; then
            fail "$mode: a wrong PIN was accepted"
        fi
        grep -o 'C_Login failed: rv = [A-Z_]*' "$mode.wrong" >>"$mode.out" || fail "$mode: wrong PIN: $(cat "$mode.wrong")"
    done
    same_output direct.out shim.out
    grep -qx 'C_Login failed: rv = CKR_PIN_INCORRECT' shim.out || fail "the wrong PIN is not CKR_PIN_INCORRECT"
    log_verifies
    # p11-kit initializes the shim itself (CKF_OS_LOCKING_OK), for pkcs11-tool and for p11-kit.
    log_has '"ev":"intent"' '"fn":"C_Initialize"' '"exe":"/usr/bin/pkcs11-tool"' '"flags":2'
    log_has '"ev":"attach"' '"exe":"/usr/bin/p11-kit"'
    log_has '"ev":"close"' '"exe":"/usr/bin/pkcs11-tool"'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"rv":"CKR_OK"' '"class":"CKO_PRIVATE_KEY","key_type":"CKK_EC","label":"kit-ec","id":{"hex":"4b"}'
    log_has '"fn":"C_Sign"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_ECDSA"}' '"label":"kit-ec","id":{"hex":"4b"}' '"out":"returned"'
    log_has '"ev":"outcome"' '"fn":"C_Login"' '"rv":"CKR_PIN_INCORRECT"' '"user_type":"CKU_USER"'
    # The clients ran as nobody when the tests run as root: the log says who.
    local uid
    uid=$(id -u)
    ((uid != 0)) || uid=$(id -u nobody)
    log_has '"fn":"C_Sign"' "\"uid\":$uid," '"label":"kit-ec"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "Wrong-canary-Pk4"
}
register p11_kit_proxy "p11-kit: module file (user-config: only) used through p11-kit-proxy.so by pkcs11-tool, signature checked by OpenSSL; the log names the key"

case_p11_kit_merge() {
    for mode in direct shim; do
        use_token "$mode"
        # Merged with the system's module files, as users normally run. p11audit's module file
        # goes next to the system's modules; a module file named like Debian's softhsm2.module
        # with an empty `module:` hides the system registration of SoftHSM, so the token is
        # reached through p11audit only.
        p11kit_config "$mode" merge
        if [[ $mode == shim ]]; then
            printf 'module:\n' >"$WORK/home/.config/pkcs11/modules/softhsm2.module"
        else
            rm "$WORK/home/.config/pkcs11/modules/token.module"
        fi
        p11kit_tool --list-token-slots 2>/dev/null | p11kit_normalize >"$mode.slots"
        # Exactly one SoftHSM token, whichever way it is reached.
        [[ $(grep -c 'token label *: p11audit-clients' "$mode.slots") == 1 ]] ||
            fail "$mode: the token is not listed exactly once: $(cat "$mode.slots")"
        echo "merge ($mode)" | openssl dgst -sha256 -binary >"$mode.digest"
        p11kit_tool --login --pin "$USER_PIN" --token-label p11audit-clients --keypairgen \
            --key-type EC:prime256v1 --label kit-merge --id 4c >/dev/null 2>&1
        p11kit_tool --login --pin "$USER_PIN" --token-label p11audit-clients --sign --mechanism ECDSA \
            --id 4c --signature-format openssl --input-file "$mode.digest" --output-file "$mode.sig" 2>/dev/null
        p11kit_ec_pubkey_pem 4c "$mode.pub.pem"
        openssl pkeyutl -verify -pubin -inkey "$mode.pub.pem" -in "$mode.digest" -sigfile "$mode.sig" >/dev/null ||
            fail "$mode: the signature does not verify with OpenSSL"
    done
    same_output direct.slots shim.slots
    log_verifies
    log_has '"fn":"C_Sign"' '"rv":"CKR_OK"' '"label":"kit-merge","id":{"hex":"4c"}' '"out":"returned"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register p11_kit_merge "p11-kit: module file merged with the system's, Debian's own softhsm2.module hidden, so the token is reached through p11audit only"

case_p11_kit_gnutls() {
    # GnuTLS programs given no --provider load the modules registered with p11-kit: the same
    # module file serves them (here p11tool and certtool).
    local url="pkcs11:token=$TOKEN_LABEL;object=kit-gnutls"
    cat >cert.tmpl <<'TMPL'
cn = "p11audit via p11-kit"
serial = 9
expiration_days = 30
ca
cert_signing_key
TMPL
    for mode in direct shim; do
        use_token "$mode"
        p11kit_config "$mode" only
        export GNUTLS_PIN=$USER_PIN
        p11kit_as_user p11tool --batch --list-token-urls 2>/dev/null | sed -E 's/serial=[0-9a-f]+/serial=SERIAL/' >"$mode.out"
        [[ $(grep -c . "$mode.out") == 1 ]] || fail "$mode: expected one token: $(cat "$mode.out")"
        p11kit_as_user p11tool --batch --login --generate-privkey ECDSA --curve secp256r1 --label kit-gnutls \
            --id 4d "pkcs11:token=$TOKEN_LABEL" >/dev/null 2>&1
        p11kit_as_user certtool --generate-self-signed --load-privkey "$url;type=private" \
            --template cert.tmpl --outfile "$mode.cert.pem" >/dev/null 2>&1
        openssl verify -CAfile "$mode.cert.pem" "$mode.cert.pem" >/dev/null || fail "$mode: OpenSSL rejects the certificate"
        openssl x509 -in "$mode.cert.pem" -noout -subject -issuer >>"$mode.out"
    done
    same_output direct.out shim.out
    log_verifies
    log_has '"exe":"/usr/bin/p11tool"' '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"rv":"CKR_OK"' '"label":"kit-gnutls","id":{"hex":"4d"}'
    log_has '"exe":"/usr/bin/certtool"' '"fn":"C_Sign"' '"rv":"CKR_OK"' '"label":"kit-gnutls","id":{"hex":"4d"}' '"out":"returned"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register p11_kit_gnutls "p11-kit: GnuTLS p11tool and certtool without --provider find the token through the module file; the log names the key"

case_p11_kit_critical() {
    # The shim registered, but the program's environment lacks the P11AUDIT_* settings.
    use_token shim
    p11kit_config shim only
    unset P11AUDIT_MODULE P11AUDIT_LOG P11AUDIT_KEY_FILE
    # Not critical (p11-kit's default): p11-kit skips the module, the token silently vanishes.
    p11kit_tool --list-token-slots >quiet.out 2>quiet.err || true
    grep -q '^p11audit: P11AUDIT_MODULE is not set' quiet.err || fail "no p11audit: line: $(cat quiet.err)"
    grep -q 'p11audit-clients' quiet.out && fail "the token was reachable without p11audit's configuration"
    # `critical: yes`: the program's C_Initialize fails instead.
    echo 'critical: yes' >>"$WORK/home/.config/pkcs11/modules/token.module"
    if p11kit_tool --list-token-slots >critical.out 2>critical.err; then
        fail "pkcs11-tool went on although a critical module failed"
    fi
    grep -q '^p11audit: P11AUDIT_MODULE is not set' critical.err || fail "no p11audit: line: $(cat critical.err)"
    grep -q 'C_Initialize failed: rv = CKR_GENERAL_ERROR' critical.err || fail "unexpected failure: $(cat critical.err)"
    # Nothing was logged, nothing was done: there was no configuration to log with.
    [[ ! -e $LOG ]] || fail "a log was written without configuration"
}
register p11_kit_critical "p11-kit: without P11AUDIT_* the registered shim is skipped, or with 'critical: yes' stops the program"
