# NSS (Debian package libnss3-tools): modutil -add, certutil -K, and a self-signed EC
# certificate made on the token with certutil -S -x.
#
# Client notes:
# - modutil stores the module's path in the NSS database (pkcs11.txt); every later NSS program
#   using that database loads it, with the P11AUDIT_* environment of that program.
# - certutil reads the token PIN from a file (-f); that file is not the log.
# - certutil -S makes the key pair on the token with no CKA_LABEL, and sets CKA_ID to the SHA-1
#   of the public key afterwards; the certificate object gets the nickname as its label. So the
#   sign records name that key by its id (the "ckaid" certutil -K prints), with an empty label.
# - Trust flags are left empty (-t ",,"): any trust makes NSS try to store an NSS vendor trust
#   object (CKO_NSS_TRUST), which SoftHSM refuses with CKR_ATTRIBUTE_VALUE_INVALID (certutil
#   still succeeds).

# nss_ec_pubkey_pem ID OUT: the token's EC P-256 public key ID (hex) as PEM, from CKA_EC_POINT
# (Debian 12's pkcs11-tool must not export EC keys with --read-object, see pkcs11_tool.sh).
# pkcs11-tool 0.23 ignores --id with --list-objects, so the object is picked by its ID line.
nss_ec_pubkey_pem() {
    local point
    point=$(pkcs11-tool --module "$MODULE" --list-objects --type pubkey --id "$1" 2>/dev/null |
        awk -v id="$1" '/^[A-Z].* Object;/ { point = "" } $1 == "EC_POINT:" { point = $2 }
            $1 == "ID:" && $2 == id { print point }')
    [[ $point =~ ^044104[0-9a-f]{128}$ ]] || fail "$MODE: unexpected EC_POINT for id $1: $point"
    printf '3059301306072a8648ce3d020106082a8648ce3d030107034200%s' "${point#0441}" | xxd -r -p |
        openssl pkey -pubin -inform DER -out "$2"
}

case_nss() {
    local mode db ckaid bad_pin=Wrong-pin-Kd4m
    printf '%s\n' "$bad_pin" >bad-pin.txt
    head -c 64 /dev/urandom >noise.bin
    for mode in direct shim; do
        use_token "$mode"
        db=sql:$WORK/$mode/db
        printf '%s\n' "$USER_PIN" >"$mode/pin.txt"
        pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 \
            --label nss-ec-key --id 81 >/dev/null

        mkdir "$mode/db"
        certutil -N -d "$db" --empty-password
        modutil -dbdir "$db" -add p11audit -libfile "$MODULE" -force >"$mode.modutil" 2>&1 ||
            { cat "$mode.modutil" >&2; fail "$mode: modutil -add failed"; }
        modutil -dbdir "$db" -list p11audit >>"$mode.modutil" 2>&1 ||
            { cat "$mode.modutil" >&2; fail "$mode: modutil -list failed"; }
        grep -Eq "Token Name: $TOKEN_LABEL *\$" "$mode.modutil" || { cat "$mode.modutil" >&2; fail "$mode: modutil does not see the token"; }

        {
            # The key pkcs11-tool made, as NSS sees it.
            certutil -K -d "$db" -h "$TOKEN_LABEL" -f "$mode/pin.txt"
            # A wrong PIN is refused.
            certutil -K -d "$db" -h "$TOKEN_LABEL" -f bad-pin.txt && fail "$mode: certutil -K accepted a wrong PIN"
            # A self-signed EC certificate; its key pair is made on the token.
            certutil -S -x -d "$db" -h "$TOKEN_LABEL" -f "$mode/pin.txt" -z noise.bin -k ec -q nistp256 \
                -n nss-selfsigned -s "CN=p11audit NSS test,O=p11audit" -t ",," -v 12 -Z SHA256 -m 4242 </dev/null
            certutil -L -d "$db" -h "$TOKEN_LABEL" -f "$mode/pin.txt"
            certutil -K -d "$db" -h "$TOKEN_LABEL" -f "$mode/pin.txt"
        } >"$mode.nss" 2>&1 || { cat "$mode.nss" >&2; fail "$mode: certutil failed"; }
        certutil -L -d "$db" -h "$TOKEN_LABEL" -f "$mode/pin.txt" -a -n "$TOKEN_LABEL:nss-selfsigned" >"$mode.cert.pem" ||
            fail "$mode: cannot export the certificate"
        # The generated key's CKA_ID, as certutil -K lists it.
        ckaid=$(awk '/nss-selfsigned$/ { print $4 }' "$mode.nss" | tail -n1)
        [[ $ckaid =~ ^[0-9a-f]{40}$ ]] || { cat "$mode.nss" >&2; fail "$mode: no key id for the certificate's key"; }
        echo "$ckaid" >"$mode.ckaid"
        nss_ec_pubkey_pem "$ckaid" "$mode.pub.pem"

        # Checked with plain OpenSSL: a valid self-signed certificate for the token's key.
        {
            # Keys are listed in the token's object order, which differs between tokens: each run of
            # key lines is sorted, without its index.
            sed -e "s/$ckaid/CKAID/" -e 's/slot ID 0x[0-9a-f]*/slot ID N/' -e 's/^< *[0-9]*> /<key> /' "$mode.nss" |
                awk '/^<key> / { keys = keys $0 "\n"; next }
                     { if (keys != "") { printf "%s", keys | "sort"; close("sort"); keys = "" } print }
                     END { if (keys != "") printf "%s", keys | "sort" }'
            openssl verify -CAfile "$mode.cert.pem" "$mode.cert.pem" | sed "s/^$mode/MODE/"
            openssl x509 -in "$mode.cert.pem" -noout -subject -issuer -serial
            openssl x509 -in "$mode.cert.pem" -noout -text | grep -E 'Signature Algorithm|Public Key Algorithm|ASN1 OID|Public-Key:' | sort -u
            openssl x509 -in "$mode.cert.pem" -noout -pubkey | cmp - "$mode.pub.pem" &&
                echo "the certificate's key is the token's key with the listed id"
        } >"$mode.result" 2>&1 || { cat "$mode.result" >&2; fail "$mode: the certificate does not check with OpenSSL"; }
        sed -e "s|$MODULE|MODULE|" -e 's/0x[0-9a-f]\{4,\}/0xN/g' -e 's/Serial Number: [0-9a-f]*/Serial Number: N/' \
            -e '/uri: pkcs11:library/d' -e '/library-version/d' "$mode.modutil" >>"$mode.result"
        library_named "$mode" "$mode.result"
    done
    cat shim.result >&2
    same_output direct.result shim.result

    log_verifies
    ckaid=$(cat shim.ckaid)
    log_has '"exe":"/usr/bin/certutil"' '"fn":"C_Login"' '"rv":"CKR_OK"'
    log_has '"exe":"/usr/bin/certutil"' '"fn":"C_Login"' '"rv":"CKR_PIN_INCORRECT"'
    log_has '"exe":"/usr/bin/certutil"' '"fn":"C_GenerateKeyPair"' '"ev":"intent"' '"CKM_EC_KEY_PAIR_GEN"' \
        '"type":"CKA_EC_PARAMS","len":10,"value":{"hex":"06082a8648ce3d030107"}'
    log_has '"exe":"/usr/bin/certutil"' '"fn":"C_SetAttributeValue"' '"class":"CKO_PRIVATE_KEY"' "\"hex\":\"$ckaid\""
    log_has '"exe":"/usr/bin/certutil"' '"fn":"C_Sign"' '"mechanism":{"type":"CKM_ECDSA"}' \
        "\"class\":\"CKO_PRIVATE_KEY\",\"key_type\":\"CKK_EC\",\"label\":\"\",\"id\":{\"hex\":\"$ckaid\"}" '"out":"returned"'
    log_has '"exe":"/usr/bin/certutil"' '"fn":"C_CreateObject"' '"value":"CKO_CERTIFICATE"' '"nss-selfsigned"'
    log_has '"exe":"/usr/bin/modutil"' '"ev":"attach"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "$bad_pin"
}
register nss "NSS: modutil -add, certutil -K (and a wrong PIN), self-signed EC cert made on the token, checked by OpenSSL"
