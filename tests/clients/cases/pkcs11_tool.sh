# OpenSC pkcs11-tool (Debian package opensc).

# The public key of EC object ID as a PEM file, built from its CKA_EC_POINT.
# (Debian 12's pkcs11-tool 0.23 `--read-object --type pubkey` reads freed memory for EC keys,
# valgrind shows it even directly against SoftHSM, and fails at random depending on heap
# layout, so the key is not exported that way.)
ec_p256_pubkey_pem() {
    local id=$1 out=$2 point
    point=$(pkcs11-tool --module "$MODULE" --list-objects --type pubkey --id "$id" 2>/dev/null |
        awk '/EC_POINT:/ { print $2 }')
    [[ $point == 044104* ]] || fail "unexpected EC_POINT for id $id: $point"
    # SubjectPublicKeyInfo prefix for id-ecPublicKey / prime256v1, then the 65-byte point.
    printf '3059301306072a8648ce3d020106082a8648ce3d030107034200%s' "${point#0441}" | xxd -r -p |
        openssl pkey -pubin -inform DER -out "$out"
}

case_pkcs11_tool_sign() {
    for mode in direct shim; do
        use_token "$mode"
        pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 \
            --label client-ec --id 0e >/dev/null
        echo "hello from $mode" | openssl dgst -sha256 -binary >"$mode.digest"
        pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --sign --mechanism ECDSA --id 0e \
            --signature-format openssl --input-file "$mode.digest" --output-file "$mode.sig" >/dev/null
        # Checked independently with plain OpenSSL, against the token's own public key.
        ec_p256_pubkey_pem 0e "$mode.pub.pem"
        openssl pkeyutl -verify -pubin -inkey "$mode.pub.pem" -in "$mode.digest" -sigfile "$mode.sig" >/dev/null ||
            fail "$mode: the ECDSA signature does not verify with OpenSSL"
    done
    # MODE is shim now: LOG and KEY name its audit log.
    log_verifies
    log_has '"fn":"C_Sign"' '"label":"client-ec"' '"out":"returned"'
    log_has '"fn":"C_GenerateKeyPair"' '"client-ec"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register pkcs11_tool_sign "pkcs11-tool: EC P-256 keypair, ECDSA sign checked by OpenSSL; the log names the key"
