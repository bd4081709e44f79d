# OpenSSL 3 with the libp11 PKCS#11 engine (Debian package libengine-pkcs11-openssl).
#
# The engine is configured through an OpenSSL config file (OPENSSL_CONF) that names the module
# with MODULE_PATH and holds the user PIN, or the PIN is given with -passin (neither file is the
# log: the PIN must still not reach the log). Keys are made on the token with pkcs11-tool;
# OpenSSL then signs (RSA and ECDSA), makes a self-signed certificate with `req -x509` and
# decrypts with the token's RSA key. Every result is checked with plain OpenSSL (no engine)
# against the token's public keys.
#
# Client notes:
# - The engine (libp11 0.4.12 with OpenSSL 3.0) never calls C_Finalize, directly or through the
#   shim (pkcs11-spy shows the same), so each openssl process ends in the log without a `close`
#   record; its waiting records are written at exit. `p11audit verify` still exits 0 and says
#   "attached without close" for those processes.
# - Only the engine commands get OPENSSL_CONF; the checks run plain OpenSSL without it.
# - Without a PIN in the config or -passin, the engine prompts on the terminal; pin-source=file:
#   in the URI keeps the file's trailing newline as part of the PIN (CKR_PIN_INCORRECT).
# - The engine segfaults (exit 139) when a pkcs11: URI matches no key or several tokens match;
#   each use_token makes a separate SoftHSM token directory, so the URI's token= is unique.

OSSL_ENGINE_SO=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so

# ossl_engine_conf FILE [nopin]: an OpenSSL config that loads the pkcs11 engine for $MODULE,
# with the user PIN in it unless nopin is given (then the command line gives it with -passin).
ossl_engine_conf() {
    cat >"$1" <<EOF
openssl_conf = openssl_init

[openssl_init]
engines = engine_section

[engine_section]
pkcs11 = pkcs11_section

[pkcs11_section]
engine_id = pkcs11
dynamic_path = $OSSL_ENGINE_SO
MODULE_PATH = $MODULE
init = 0
EOF
    [[ ${2:-} == nopin ]] || echo "PIN = $USER_PIN" >>"$1"
}

# ossl_rsa_pubkey_pem ID OUT: the token's RSA public key ID as PEM (read with pkcs11-tool).
ossl_rsa_pubkey_pem() {
    pkcs11-tool --module "$MODULE" --read-object --type pubkey --id "$1" -o "$2.der" >/dev/null 2>&1 ||
        fail "$MODE: cannot read RSA public key $1"
    openssl pkey -pubin -inform DER -in "$2.der" -out "$2"
}

# ossl_ec_pubkey_pem ID OUT: the token's EC P-256 public key ID as PEM, built from CKA_EC_POINT
# (Debian 12's pkcs11-tool 0.23 must not export EC keys with --read-object, see pkcs11_tool.sh).
ossl_ec_pubkey_pem() {
    local point
    point=$(pkcs11-tool --module "$MODULE" --list-objects --type pubkey --id "$1" 2>/dev/null |
        awk -v id="$1" '/^[A-Z].* Object;/ { point = "" } $1 == "EC_POINT:" { point = $2 }
            $1 == "ID:" && $2 == id { print point }')
    [[ $point =~ ^044104[0-9a-f]{128}$ ]] || fail "$MODE: unexpected EC_POINT for id $1: $point"
    printf '3059301306072a8648ce3d020106082a8648ce3d030107034200%s' "${point#0441}" | xxd -r -p |
        openssl pkey -pubin -inform DER -out "$2"
}

case_openssl_engine() {
    local mode uri plain=ossl-plaintext-canary-Vb3q
    echo "hello from the OpenSSL engine case" >data.txt
    printf %s "$plain" >secret.txt
    for mode in direct shim; do
        use_token "$mode"
        mkdir -p "$mode.out"
        ossl_engine_conf "$WORK/$mode/openssl.cnf"
        ossl_engine_conf "$WORK/$mode/openssl-nopin.cnf" nopin
        printf '%s\n' "$USER_PIN" >"$WORK/$mode/pin.txt"
        pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --keypairgen --key-type rsa:2048 \
            --label engine-rsa --id 51 >/dev/null
        pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 \
            --label engine-ec --id 52 >/dev/null
        ossl_rsa_pubkey_pem 51 "$mode.out/rsa.pub.pem"
        ossl_ec_pubkey_pem 52 "$mode.out/ec.pub.pem"
        uri="pkcs11:token=$TOKEN_LABEL"
        (
            # Only the engine commands see the config; plain openssl below does not.
            export OPENSSL_CONF=$WORK/$mode/openssl.cnf
            openssl dgst -sha256 -engine pkcs11 -keyform engine \
                -sign "$uri;object=engine-rsa;type=private" -out "$mode.out/rsa.sig" data.txt
            openssl dgst -sha256 -engine pkcs11 -keyform engine \
                -sign "$uri;id=%52;type=private" -out "$mode.out/ec.sig" data.txt
            openssl req -x509 -engine pkcs11 -keyform engine -key "$uri;object=engine-ec;type=private" \
                -new -subj "/CN=p11audit engine test" -days 2 -sha256 -out "$mode.out/cert.pem"
            # Encrypt with plain OpenSSL and the public key; decrypt on the token (PKCS#1 v1.5).
            OPENSSL_CONF=/dev/null openssl pkeyutl -encrypt -pubin -inkey "$mode.out/rsa.pub.pem" \
                -in secret.txt -out "$mode.out/secret.enc"
            # This one gets the PIN with -passin instead of from the config.
            OPENSSL_CONF=$WORK/$mode/openssl-nopin.cnf openssl pkeyutl -decrypt -engine pkcs11 -keyform engine \
                -inkey "$uri;object=engine-rsa;type=private" -passin "file:$WORK/$mode/pin.txt" \
                -in "$mode.out/secret.enc" -out "$mode.out/secret.dec"
        ) </dev/null 2>"$mode.out/engine.err" || { cat "$mode.out/engine.err" >&2; fail "$mode: an engine command failed"; }

        # Checked with plain OpenSSL, without the engine, against the token's public keys.
        {
            openssl dgst -sha256 -verify "$mode.out/rsa.pub.pem" -signature "$mode.out/rsa.sig" data.txt
            openssl dgst -sha256 -verify "$mode.out/ec.pub.pem" -signature "$mode.out/ec.sig" data.txt
            openssl verify -CAfile "$mode.out/cert.pem" "$mode.out/cert.pem" | sed "s|$mode.out/||"
            openssl x509 -in "$mode.out/cert.pem" -noout -subject -issuer
            openssl x509 -in "$mode.out/cert.pem" -noout -text | grep -E 'Signature Algorithm|Public Key Algorithm|ASN1 OID|Public-Key:' | sort -u
            openssl x509 -in "$mode.out/cert.pem" -noout -pubkey | cmp - "$mode.out/ec.pub.pem" &&
                echo "certificate key is the token's engine-ec key"
            cmp secret.txt "$mode.out/secret.dec" && echo "decrypted the plaintext"
        } >"$mode.result" 2>&1 || { cat "$mode.result" >&2; fail "$mode: a result does not check with plain OpenSSL"; }
    done
    cat shim.result >&2
    same_output direct.result shim.result

    log_verifies
    # The story: the engine (exe /usr/bin/openssl) logged in and used the keys it was given.
    log_has '"exe":"/usr/bin/openssl"' '"fn":"C_Login"' '"user_type":"CKU_USER"' '"rv":"CKR_OK"'
    log_has '"exe":"/usr/bin/openssl"' '"fn":"C_Sign"' '"mechanism":{"type":"CKM_RSA_PKCS"}' \
        '"label":"engine-rsa","id":{"hex":"51"}' '"out":"returned"'
    log_has '"exe":"/usr/bin/openssl"' '"fn":"C_Sign"' '"mechanism":{"type":"CKM_ECDSA"}' \
        '"label":"engine-ec","id":{"hex":"52"}' '"out":"returned"'
    log_has '"exe":"/usr/bin/openssl"' '"fn":"C_Decrypt"' '"mechanism":{"type":"CKM_RSA_PKCS"}' \
        '"label":"engine-rsa","id":{"hex":"51"}' '"out":"returned"'
    log_has '"fn":"C_GenerateKeyPair"' '"engine-rsa"'
    log_has '"fn":"C_GenerateKeyPair"' '"engine-ec"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "$plain"
}
register openssl_engine "OpenSSL pkcs11 engine: RSA and ECDSA dgst -sign, req -x509, RSA decrypt, checked by plain OpenSSL; the log names the keys"
