# GnuTLS p11tool and certtool (Debian package gnutls-bin, GnuTLS 3.7 in Debian 12).
#
# Both tools take the module with `--provider FILE`: GnuTLS then uses that module only (it does
# not load the modules registered with p11-kit), so --list-tokens shows SoftHSM's token and
# nothing else. P11_KIT_NO_USER_CONFIG=1 keeps a developer's ~/.config/pkcs11 out of the test
# anyway. The PIN comes from GNUTLS_PIN (p11tool --set-pin would put it on the command line).
# --batch keeps the tools from ever waiting on the terminal.
#
# Quirks, the same directly and through p11audit:
# - SoftHSM lists objects and slots in the random order of its token directory: listings are
#   compared as sorted blocks, with "Object N:" numbers removed.

gnutls_env() {
    export P11_KIT_NO_USER_CONFIG=1 GNUTLS_PIN=$USER_PIN GNUTLS_SO_PIN=$SO_PIN
}

p11tool_() {
    p11tool --batch --provider "$MODULE" "$@" </dev/null
}

certtool_() {
    certtool --provider "$MODULE" "$@" </dev/null
}

# Serial numbers (bare and in URLs) and object numbers differ between two fresh tokens.
gnutls_normalize() {
    sed -E -e 's/serial=[0-9a-f]+/serial=SERIAL/g' -e 's/(Serial: ).*/\1SERIAL/' \
        -e 's/^Object [0-9]+:/Object N:/' -e 's/^Token [0-9]+:/Token N:/'
}

# Sorted blocks: a block is a line that does not start with white space and the indented
# lines after it; blank lines are dropped.
gnutls_sort_blocks() {
    awk 'NF == 0 { next } /^[^ \t]/ && n++ { print "" } { printf "%s\x1f", $0 } END { print "" }' |
        LC_ALL=C sort | tr '\037' '\n'
}

case_gnutls_p11tool() {
    local token_url key_url
    for mode in direct shim; do
        use_token "$mode"
        gnutls_env
        token_url="pkcs11:token=$TOKEN_LABEL"
        key_url="pkcs11:token=$TOKEN_LABEL;object=gnutls-ec"
        {
            echo "-- tokens"
            p11tool_ --list-tokens
            echo "-- token urls"
            p11tool_ --list-token-urls
        } 2>"$mode.err" | gnutls_normalize >"$mode.out"
        # GnuTLS uses the given module only: one initialized token, SoftHSM's.
        [[ $(grep -c '^pkcs11:' "$mode.out") == 1 ]] || fail "$mode: expected exactly one token URL"
        grep -q 'Label: p11audit-clients' "$mode.out" || fail "$mode: token not listed"
        # Generate an EC key: p11tool prints its public key.
        p11tool_ --login --generate-privkey ECDSA --curve secp256r1 --label gnutls-ec --id 0a0b \
            --outfile "$mode.generated.pem" "$token_url" 2>>"$mode.err"
        p11tool_ --export-pubkey "$key_url;type=public" --outfile "$mode.exported.pem" 2>>"$mode.err"
        cmp "$mode.generated.pem" "$mode.exported.pem" || fail "$mode: the exported public key is not the generated one"
        openssl pkey -pubin -in "$mode.exported.pem" -noout -text | grep -q 'ASN1 OID: prime256v1' ||
            fail "$mode: the generated key is not on P-256"
        {
            echo "-- all objects"
            p11tool_ --login --list-all "$token_url" | gnutls_normalize | gnutls_sort_blocks
            echo "-- private keys"
            p11tool_ --login --list-privkeys "$token_url" | gnutls_normalize
            echo "-- test sign"
            p11tool_ --login --test-sign "$key_url;type=private" 2>&1
        } 2>>"$mode.err" >>"$mode.out"
        grep -q 'Verifying against public key in the token... ok' "$mode.out" || fail "$mode: --test-sign failed"
    done
    same_output direct.out shim.out
    log_verifies
    log_has '"ev":"intent"' '"fn":"C_GenerateKeyPair"' '"mechanism":{"type":"CKM_EC_KEY_PAIR_GEN"' '"type":"CKA_LABEL","len":9,"value":"gnutls-ec"' '"type":"CKA_ID","len":2,"value":{"hex":"0a0b"}'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"rv":"CKR_OK"' '"class":"CKO_PRIVATE_KEY","key_type":"CKK_EC","label":"gnutls-ec","id":{"hex":"0a0b"}'
    log_has '"ev":"outcome"' '"fn":"C_Login"' '"rv":"CKR_OK"' '"user_type":"CKU_USER"' '"exe":"/usr/bin/p11tool"'
    # --test-sign: signs with the private key, verifies with the public key.
    log_has '"fn":"C_Sign"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_ECDSA"}' '"class":"CKO_PRIVATE_KEY","key_type":"CKK_EC","label":"gnutls-ec","id":{"hex":"0a0b"}' '"out":"returned"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register gnutls_p11tool "GnuTLS p11tool: tokens, EC key generation, listing and test-sign the same directly and through p11audit; the log names the key"

case_gnutls_certtool() {
    local url
    cat >cert.tmpl <<'EOF'
cn = "p11audit certtool test"
organization = "p11audit"
serial = 7
expiration_days = 30
ca
cert_signing_key
signing_key
EOF
    for mode in direct shim; do
        use_token "$mode"
        gnutls_env
        for kind in ec rsa; do
            url="pkcs11:token=$TOKEN_LABEL;object=certtool-$kind"
            if [[ $kind == ec ]]; then
                p11tool_ --login --generate-privkey ECDSA --curve secp256r1 --label certtool-ec --id 0c \
                    "pkcs11:token=$TOKEN_LABEL" >/dev/null 2>&1
            else
                p11tool_ --login --generate-privkey RSA --bits 2048 --label certtool-rsa --id 0d \
                    "pkcs11:token=$TOKEN_LABEL" >/dev/null 2>&1
            fi
            # A self-signed certificate whose key stays on the token.
            certtool_ --generate-self-signed --load-privkey "$url;type=private" \
                --template cert.tmpl --outfile "$mode.$kind.cert.pem" >/dev/null 2>>"$mode.err"
            # And a certificate request.
            certtool_ --generate-request --load-privkey "$url;type=private" \
                --template cert.tmpl --outfile "$mode.$kind.csr.pem" >/dev/null 2>>"$mode.err"
            # Checked independently: OpenSSL verifies the self-signature and the request.
            openssl verify -CAfile "$mode.$kind.cert.pem" "$mode.$kind.cert.pem" >/dev/null ||
                fail "$mode: OpenSSL rejects the $kind certificate"
            certtool --verify --load-ca-certificate "$mode.$kind.cert.pem" --infile "$mode.$kind.cert.pem" \
                >"$mode.$kind.verify" 2>&1 || fail "$mode: certtool rejects the $kind certificate"
            grep -q 'Chain verification output: Verified' "$mode.$kind.verify" || fail "$mode: $kind not verified"
            openssl req -in "$mode.$kind.csr.pem" -verify -noout 2>/dev/null ||
                fail "$mode: OpenSSL rejects the $kind request"
            # The certificate carries the token's public key.
            p11tool_ --export-pubkey "$url;type=public" --outfile "$mode.$kind.pub.pem" 2>>"$mode.err"
            [[ $(openssl x509 -in "$mode.$kind.cert.pem" -noout -pubkey) == "$(cat "$mode.$kind.pub.pem")" ]] ||
                fail "$mode: the $kind certificate does not hold the token's key"
            {
                echo "-- $kind certificate"
                openssl x509 -in "$mode.$kind.cert.pem" -noout -subject -issuer -serial \
                    -ext basicConstraints,keyUsage
                openssl x509 -in "$mode.$kind.cert.pem" -noout -text |
                    grep -E 'Signature Algorithm|Public Key Algorithm|Public-Key:|ASN1 OID' | sort -u
                openssl req -in "$mode.$kind.csr.pem" -noout -subject
            } >>"$mode.out"
        done
    done
    same_output direct.out shim.out
    log_verifies
    # certtool's signatures: which key, which mechanism, output handed out.
    log_has '"exe":"/usr/bin/certtool"' '"fn":"C_Sign"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_ECDSA"}' '"label":"certtool-ec","id":{"hex":"0c"}' '"out":"returned"'
    log_has '"exe":"/usr/bin/certtool"' '"fn":"C_Sign"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_RSA_PKCS"}' '"label":"certtool-rsa","id":{"hex":"0d"}' '"out_len":256' '"out":"returned"'
    log_has '"exe":"/usr/bin/certtool"' '"ev":"outcome"' '"fn":"C_Login"' '"rv":"CKR_OK"'
    log_has '"fn":"C_GenerateKeyPair"' '"mechanism":{"type":"CKM_RSA_PKCS_KEY_PAIR_GEN"' '"type":"CKA_MODULUS_BITS","len":8,"value":2048' '"value":"certtool-rsa"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register gnutls_certtool "GnuTLS certtool: self-signed certificates and requests with pkcs11: URL keys (EC, RSA) verified by OpenSSL; the log names the signing key"
