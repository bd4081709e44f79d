# Java 17 SunPKCS11 (Debian package default-jre-headless): keytool and jarsigner.
#
# Client quirks, seen the same way directly against SoftHSM (they are Java's, not p11audit's):
# - Without -providerName, keytool -genkeypair takes the first provider that offers the
#   algorithm: RSA keys are then made in software by SunRsaSign and imported with
#   C_CreateObject (private exponent and all). -providerName SunPKCS11-<name> makes the token
#   generate them (C_GenerateKeyPair), which is what a token is for.
# - The SunPKCS11 keystore generates a session key pair without label or id, signs the
#   self-signed certificate with it, then copies the private key to the token (C_CopyObject)
#   with CKA_ID = the alias bytes and *no* CKA_LABEL; the alias is the CKA_LABEL of the
#   certificate only. So in the log a Java-made private key has "label":"" and its id is the
#   alias in hex ("java-rsa" = 6a6176612d727361).
# - SunPKCS11 never calls C_Finalize (nor C_CloseSession) at exit, so each JVM's records end
#   without a "close" record and `p11audit verify` reports "attached without close" for them.
#   Records that were waiting are still written at process exit (atexit); the case checks that
#   every intent has its outcome.
# - ECDSA: SoftHSM 2.6 has no CKM_ECDSA_SHA256, so SunPKCS11 hashes in Java and signs with
#   CKM_ECDSA (C_Sign); RSA uses CKM_SHA256_RSA_PKCS (C_SignInit/C_SignUpdate/C_SignFinal).

java_bin_dir() {
    local d
    for d in /usr/lib/jvm/default-java/bin /usr/lib/jvm/java-17-openjdk-*/bin; do
        [[ -x $d/keytool && -x $d/jarsigner ]] && { echo "$d"; return; }
    done
    fail "no keytool/jarsigner under /usr/lib/jvm (install default-jre-headless)"
}

# Every intent record has an outcome that names it (none lost at JVM exit).
java_every_intent_has_outcome() {
    /usr/bin/python3 - "$LOG" <<'PY' || fail "an intent has no outcome in $LOG"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
intents = {r["seq"] for r in recs if r["ev"] == "intent"}
answered = {r["intent"] for r in recs if r["ev"] == "outcome" and "intent" in r}
missing = sorted(intents - answered)
if missing:
    sys.exit(f"intents without outcome: {missing[:20]}")
PY
}

case_java_sunpkcs11() {
    local jbin mode cfg out b
    jbin=$(java_bin_dir)
    local wrong_pin=Wrong-canary-Jv5r
    printf 'hello from a jar\n' >hello.txt
    if [[ -x $jbin/jar ]]; then
        "$jbin/jar" cf app.jar hello.txt
    else
        /usr/bin/python3 -m zipfile -c app.jar hello.txt
    fi
    for mode in direct shim; do
        use_token "$mode"
        cfg=$WORK/$mode/sunpkcs11.cfg
        printf 'name = p11audit\nlibrary = %s\nslotListIndex = 0\n' "$MODULE" >"$cfg"
        local p11=(-providerClass sun.security.pkcs11.SunPKCS11 -providerArg "$cfg"
            -providerName SunPKCS11-p11audit -keystore NONE -storetype PKCS11)
        local kt=("$jbin/keytool" "${p11[@]}" -storepass "$USER_PIN")
        out=$WORK/$mode.out
        cd "$WORK/$mode"
        {
            echo "== list (empty)"
            "${kt[@]}" -list
            echo "== wrong PIN"
            "$jbin/keytool" "${p11[@]}" -storepass "$wrong_pin" -list 2>&1 && fail "$mode: keytool accepted a wrong PIN"
            echo "== genkeypair"
            "${kt[@]}" -genkeypair -alias java-ec -keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA -dname CN=java-ec 2>&1
            "${kt[@]}" -genkeypair -alias java-rsa -keyalg RSA -keysize 2048 -sigalg SHA256withRSA -dname CN=java-rsa 2>&1
            echo "== list"
            "${kt[@]}" -list | sed 's/^\(Certificate fingerprint (SHA-256):\).*/\1 <fp>/'
            echo "== certreq"
            for b in ec rsa; do
                "${kt[@]}" -certreq -alias "java-$b" -file "java-$b.csr"
                openssl req -in "java-$b.csr" -verify -noout -subject 2>&1
                openssl req -in "java-$b.csr" -noout -text | grep -E 'Public Key Algorithm|Public-Key:|Signature Algorithm' | sort -u
            done
            echo "== jarsigner"
            "$jbin/jarsigner" "${p11[@]}" -storepass "$USER_PIN" -signedjar signed.jar "$WORK/app.jar" java-rsa
            "$jbin/jarsigner" "${p11[@]}" -storepass "$USER_PIN" signed.jar java-ec
            echo "== jarsigner -verify (certificates from the token)"
            "$jbin/jarsigner" -verify -verbose "${p11[@]}" -storepass "$USER_PIN" signed.jar >verify.raw
            # Entry sizes (an ECDSA signature's DER length varies) and times differ: drop them.
            sed -E 's/^(....) +[0-9]+ .* UTC [0-9]{4} /\1 /' verify.raw
        } >"$out"
        # Checked independently with plain OpenSSL: each signature block verifies over its .SF
        # file, and its signer certificate holds the key of the CSR keytool made.
        /usr/bin/python3 -m zipfile -e signed.jar jar
        for b in EC RSA; do
            openssl cms -verify -inform DER -in "jar/META-INF/JAVA-$b.$b" -content "jar/META-INF/JAVA-$b.SF" \
                -binary -noverify -out /dev/null 2>/dev/null || fail "$mode: OpenSSL rejects the $b signature of the jar"
            openssl pkcs7 -inform DER -in "jar/META-INF/JAVA-$b.$b" -print_certs | openssl x509 -pubkey -noout >"signer-$b.pem"
            openssl req -in "java-${b,,}.csr" -pubkey -noout | cmp -s - "signer-$b.pem" ||
                fail "$mode: the $b jar signer's key is not the key of the CSR"
        done
        grep -qx 'smk  hello.txt' "$out" ||
            fail "$mode: jarsigner -verify did not mark hello.txt signed, in manifest and in keystore"
        cd "$WORK"
    done
    same_output direct.out shim.out

    # MODE is shim now: LOG and KEY name its audit log.
    log_verifies
    java_every_intent_has_outcome
    log_has '"exe":"' '/keytool"' '"fn":"C_Login"' '"rv":"CKR_PIN_INCORRECT"'
    # Keys generated on the token, then made token objects under their alias (see above).
    log_has '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"CKM_EC_KEY_PAIR_GEN"' '"rv":"CKR_OK"'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"CKM_RSA_PKCS_KEY_PAIR_GEN"' '"rv":"CKR_OK"'
    log_has '"ev":"intent"' '"fn":"C_CopyObject"' '{"type":"CKA_ID","len":7,"value":{"hex":"6a6176612d6563"}}'
    log_has '"ev":"outcome"' '"fn":"C_CopyObject"' '"created":[{' '"class":"CKO_PRIVATE_KEY","key_type":"CKK_EC","label":"","id":{"hex":"6a6176612d6563"}}'
    log_has '"ev":"outcome"' '"fn":"C_CopyObject"' '"created":[{' '"class":"CKO_PRIVATE_KEY","key_type":"CKK_RSA","label":"","id":{"hex":"6a6176612d727361"}}'
    log_has '"ev":"outcome"' '"fn":"C_CreateObject"' '"class":"CKO_CERTIFICATE","label":"java-ec","id":{"hex":"6a6176612d6563"}'
    log_has '"ev":"outcome"' '"fn":"C_CreateObject"' '"class":"CKO_CERTIFICATE","label":"java-rsa","id":{"hex":"6a6176612d727361"}'
    # keytool -certreq signs with the stored keys; jarsigner signs with both.
    log_has '/keytool"' '"fn":"C_Sign"' '"CKM_ECDSA"' '"id":{"hex":"6a6176612d6563"}' '"out":"returned"'
    log_has '/jarsigner"' '"fn":"C_Sign"' '"CKM_ECDSA"' '"id":{"hex":"6a6176612d6563"}' '"out":"returned"'
    log_has '/jarsigner"' '"fn":"C_SignFinal"' '"CKM_SHA256_RSA_PKCS"' '"key_type":"CKK_RSA","label":"","id":{"hex":"6a6176612d727361"}' '"out":"returned"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "$wrong_pin"
}
register java_sunpkcs11 "Java 17 SunPKCS11: keytool list/genkeypair EC+RSA/certreq, jarsigner sign+verify, checked by OpenSSL; wrong PIN; the log names the keys"
