# OpenSC pkcs11-tool (Debian package opensc, 0.23 in Debian 12).
#
# Every case runs the same pkcs11-tool commands against a fresh SoftHSM token directly, then
# against another fresh token through p11audit. Outputs are compared after removing what differs
# between two tokens (slot ids, serial numbers, EC points); results are also checked on their
# own (signatures with plain OpenSSL, decryptions against the plaintext, digests with sha256sum).
#
# Quirks of pkcs11-tool 0.23 and SoftHSM 2.6.1, the same directly and through p11audit:
# - `--read-object --type pubkey` of an EC key reads freed memory (see ec_p256_pubkey_pem); only
#   RSA public keys are exported that way.
# - SoftHSM has no CKM_ECDSA_SHA256: ECDSA signs a SHA-256 digest made by OpenSSL.
# - SoftHSM's RSA-OAEP takes SHA-1 only (hash and MGF1); pkcs11-tool's default (SHA-256) gets
#   CKR_ARGUMENTS_BAD from C_DecryptInit, which is also why `--test` fails as soon as the token
#   holds an RSA key (case pkcs11_tool_test).
# - `--test-threads` starts its threads and calls C_Initialize in the main thread at once; a
#   thread's command "IN"/"IL" (C_Initialize) then runs concurrently with it, which crashes
#   SoftHSM 2.6.1 (both threads inside SoftHSM's C_Initialize, SIGSEGV or abort) in most runs
#   directly too. See case pkcs11_tool_test_threads for how the case avoids the race.
# - `--test-fork` needs SoftHSM's `library.reset_on_fork = true`; without it the child's
#   C_Initialize fails with CKR_CRYPTOKI_ALREADY_INITIALIZED.

# Sorts the blocks of a listing (a line that does not start with a blank, and the indented
# lines after it): SoftHSM lists objects, and orders slots, by the random file names of its
# token directory, so two fresh tokens list the same things in different orders.
p11t_sort_blocks() {
    awk '/^[^ \t]/ && NR > 1 { print "" } { printf "%s\x1f", $0 } END { print "" }' |
        LC_ALL=C sort | tr '\037' '\n'
}

# pkcs11-tool on the current $MODULE, never waiting for a PIN on stdin.
p11t() {
    pkcs11-tool --module "$MODULE" "$@" </dev/null
}

# p11t_must_fail ERRFILE ARGS...: pkcs11-tool ARGS must fail; its stderr goes to ERRFILE.
p11t_must_fail() {
    local err=$1
    shift
    if p11t "$@" >/dev/null 2>"$err"; then
        fail "$MODE: pkcs11-tool $* succeeded but should have failed"
    fi
}

# Removes what legitimately differs between two fresh tokens: slot ids, serial numbers, EC points.
p11t_normalize() {
    sed -E -e 's/0x[0-9a-f]+/0xID/g' \
        -e 's/(serial num +: ).*/\1SERIAL/' \
        -e 's/(EC_POINT: +).*/\1POINT/'
}

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

# The RSA public key of object ID as a PEM file, read with --read-object (fine for RSA).
p11t_rsa_pubkey_pem() {
    local id=$1 out=$2
    p11t --read-object --type pubkey --id "$id" --output-file "$out.der" 2>/dev/null
    openssl pkey -pubin -inform DER -in "$out.der" -out "$out"
}

p11t_rsa_keypair() {
    p11t --login --pin "$USER_PIN" --keypairgen --key-type rsa:2048 --label "$1" --id "$2" \
        --usage-sign --usage-decrypt 2>/dev/null
}

# Hex and base64 forms of a binary file, to check that its bytes never reach the log.
p11t_encodings() {
    xxd -p -c 100000 "$1"
    base64 -w0 "$1"
    echo
}

case_pkcs11_tool_info() {
    for mode in direct shim; do
        use_token "$mode"
        {
            p11t --show-info
            p11t --list-slots
            p11t --list-token-slots
            p11t --list-mechanisms
            echo "-- objects after login"
            p11t --login --pin "$USER_PIN" --list-objects
        } 2>"$mode.err" | p11t_normalize >"$mode.out"
        library_named "$mode" "$mode.out"
        grep -q 'token label *: p11audit-clients' "$mode.out" || fail "$mode: token not listed"
        grep -q '^ *ECDSA-KEY-PAIR-GEN' "$mode.out" || fail "$mode: mechanisms not listed"
    done
    same_output direct.out shim.out
    log_verifies
    log_has '"fn":"C_GetInfo"' '"rv":"CKR_OK"'
    log_has '"fn":"C_GetSlotList"' '"count":2'
    log_has '"fn":"C_GetTokenInfo"' '"rv":"CKR_OK"'
    # The log counts as many mechanisms as pkcs11-tool lists.
    local mechs
    mechs=$(awk '/^Supported mechanisms:/ { m = 1; next } m && /^  / { n++ } m && /^[^ ]/ { m = 0 } END { print n }' shim.out)
    ((mechs > 20)) || fail "only $mechs mechanisms listed"
    log_has '"fn":"C_GetMechanismList"' "\"count\":$mechs,"
    log_has '"fn":"C_OpenSession"' '"token":{"label":"p11audit-clients"'
    log_has '"fn":"C_GetMechanismInfo"'
    log_has '"ev":"outcome"' '"fn":"C_Login"' '"rv":"CKR_OK"' '"user_type":"CKU_USER"' '"login":"user"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register pkcs11_tool_info "pkcs11-tool: info, slots, tokens, mechanisms and a login list the same; the log shows each query"

case_pkcs11_tool_keygen() {
    for mode in direct shim; do
        use_token "$mode"
        {
            p11t_rsa_keypair client-rsa 01
            p11t --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 --label client-ec --id 02
            p11t --login --pin "$USER_PIN" --keygen --key-type AES:32 --label client-aes --id 03
            echo "-- public objects"
            p11t --list-objects
            echo "-- all objects"
            p11t --login --pin "$USER_PIN" --list-objects
        } 2>"$mode.err" | p11t_normalize | p11t_sort_blocks >"$mode.out"
        p11t_rsa_pubkey_pem 01 "$mode.rsa.pem"
        openssl pkey -pubin -in "$mode.rsa.pem" -noout -text | grep -q 'Public-Key: (2048 bit)' ||
            fail "$mode: the exported RSA public key is not 2048 bits"
        ec_p256_pubkey_pem 02 "$mode.ec.pem"
        grep -c 'label: *client-' "$mode.out" >"$mode.count"
    done
    same_output direct.out shim.out
    same_output direct.count shim.count
    log_verifies
    # Each generated key shows up with its label and id, asked for and as created.
    log_has '"ev":"intent"' '"fn":"C_GenerateKeyPair"' '"value":"client-rsa"' '"type":"CKA_MODULUS_BITS","len":8,"value":2048'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"rv":"CKR_OK"' '"class":"CKO_PRIVATE_KEY","key_type":"CKK_RSA","label":"client-rsa","id":{"hex":"01"}'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"class":"CKO_PUBLIC_KEY","key_type":"CKK_EC","label":"client-ec","id":{"hex":"02"}'
    log_has '"ev":"intent"' '"fn":"C_GenerateKeyPair"' '"mechanism":{"type":"CKM_EC_KEY_PAIR_GEN"' '"type":"CKA_EC_PARAMS","len":10,"value":{"hex":"06082a8648ce3d030107"}'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKey"' '"mechanism":{"type":"CKM_AES_KEY_GEN"' '"key_type":"CKK_AES","label":"client-aes","id":{"hex":"03"}'
    # The RSA public key was read: its CKA_VALUE by length only, never the bytes.
    log_has '"fn":"C_GetAttributeValue"' '"label":"client-rsa"' '"type":"CKA_MODULUS","len":256}'
    grep -F '"CKA_MODULUS"' "$LOG" | grep -qF '"CKA_MODULUS","len":256,"value"' && fail "a modulus value was logged"
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register pkcs11_tool_keygen "pkcs11-tool: RSA-2048, EC P-256 and AES-256 generated and listed the same; the log names each new key"

case_pkcs11_tool_sign() {
    for mode in direct shim; do
        use_token "$mode"
        p11t --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 \
            --label client-ec --id 0e >/dev/null 2>&1
        echo "hello from $mode" | openssl dgst -sha256 -binary >"$mode.digest"
        # SoftHSM has no CKM_ECDSA_SHA256: the token signs a digest.
        p11t --login --pin "$USER_PIN" --sign --mechanism ECDSA --id 0e \
            --input-file "$mode.digest" --output-file "$mode.sig" 2>/dev/null
        p11t --verify --mechanism ECDSA --id 0e --input-file "$mode.digest" \
            --signature-file "$mode.sig" 2>/dev/null | grep -qx 'Signature is valid' ||
            fail "$mode: pkcs11-tool does not verify its own ECDSA signature"
        p11t --login --pin "$USER_PIN" --sign --mechanism ECDSA --id 0e \
            --signature-format openssl --input-file "$mode.digest" --output-file "$mode.der.sig" 2>/dev/null
        # Checked independently with plain OpenSSL, against the token's own public key.
        ec_p256_pubkey_pem 0e "$mode.pub.pem"
        openssl pkeyutl -verify -pubin -inkey "$mode.pub.pem" -in "$mode.digest" -sigfile "$mode.der.sig" >/dev/null ||
            fail "$mode: the ECDSA signature does not verify with OpenSSL"
        # A signature of another digest is rejected the same way.
        echo "something else" | openssl dgst -sha256 -binary >"$mode.other"
        p11t --verify --mechanism ECDSA --id 0e --input-file "$mode.other" \
            --signature-file "$mode.sig" >"$mode.bad.out" 2>&1 || true
        grep -qx 'Invalid signature' "$mode.bad.out" || fail "$mode: a wrong signature was not rejected"
    done
    # MODE is shim now: LOG and KEY name its audit log.
    log_verifies
    log_has '"fn":"C_Sign"' '"label":"client-ec"' '"id":{"hex":"0e"}' '"mechanism":{"type":"CKM_ECDSA"' '"in_len":32' '"out":"returned"'
    log_has '"fn":"C_GenerateKeyPair"' '"client-ec"'
    log_has '"fn":"C_Verify"' '"rv":"CKR_OK"' '"class":"CKO_PUBLIC_KEY","key_type":"CKK_EC","label":"client-ec"' '"sig_len":64'
    log_has '"fn":"C_Verify"' '"rv":"CKR_SIGNATURE_INVALID"' '"label":"client-ec"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "hello from shim" $(p11t_encodings shim.digest) $(p11t_encodings shim.sig)
}
register pkcs11_tool_sign "pkcs11-tool: EC P-256 keypair, ECDSA sign and verify checked by OpenSSL; the log names the key"

case_pkcs11_tool_sign_rsa() {
    for mode in direct shim; do
        use_token "$mode"
        p11t_rsa_keypair client-rsa 01 >/dev/null
        p11t_rsa_pubkey_pem 01 "$mode.pub.pem"
        echo "Message-canary-Ws3 signed in $mode" >"$mode.msg"
        # PKCS#1 v1.5 with SHA-256, hashed on the token.
        p11t --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS --id 01 \
            --input-file "$mode.msg" --output-file "$mode.pkcs1.sig" 2>/dev/null
        p11t --verify --mechanism SHA256-RSA-PKCS --id 01 --input-file "$mode.msg" \
            --signature-file "$mode.pkcs1.sig" 2>/dev/null | grep -qx 'Signature is valid' ||
            fail "$mode: pkcs11-tool does not verify its own PKCS#1 signature"
        openssl dgst -sha256 -verify "$mode.pub.pem" -signature "$mode.pkcs1.sig" "$mode.msg" >/dev/null ||
            fail "$mode: the PKCS#1 signature does not verify with OpenSSL"
        # PSS with SHA-256, MGF1-SHA256 and a 32-byte salt (pkcs11-tool's defaults for SHA-256).
        p11t --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS-PSS --id 01 \
            --input-file "$mode.msg" --output-file "$mode.pss.sig" 2>/dev/null
        p11t --verify --mechanism SHA256-RSA-PKCS-PSS --id 01 --input-file "$mode.msg" \
            --signature-file "$mode.pss.sig" 2>/dev/null | grep -qx 'Signature is valid' ||
            fail "$mode: pkcs11-tool does not verify its own PSS signature"
        openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 \
            -verify "$mode.pub.pem" -signature "$mode.pss.sig" "$mode.msg" >/dev/null ||
            fail "$mode: the PSS signature does not verify with OpenSSL"
        # PKCS#1 v1.5 signatures are deterministic: the same key signs the same bytes the same way.
        p11t --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS --id 01 \
            --input-file "$mode.msg" --output-file "$mode.again.sig" 2>/dev/null
        cmp -s "$mode.pkcs1.sig" "$mode.again.sig" || fail "$mode: PKCS#1 signatures of the same message differ"
    done
    log_verifies
    log_has '"ev":"outcome"' '"fn":"C_SignInit"' '"mechanism":{"type":"CKM_SHA256_RSA_PKCS"' '"class":"CKO_PRIVATE_KEY","key_type":"CKK_RSA","label":"client-rsa","id":{"hex":"01"}'
    log_has '"fn":"C_Sign"' '"mechanism":{"type":"CKM_SHA256_RSA_PKCS"' '"label":"client-rsa"' '"out_len":256' '"out":"returned"'
    log_has '"fn":"C_Sign"' '"mechanism":{"type":"CKM_SHA256_RSA_PKCS_PSS","param_len":24,"params":{"hash":"CKM_SHA256","mgf":"CKG_MGF1_SHA256","salt_len":32}}' '"label":"client-rsa"'
    log_has '"fn":"C_Verify"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_SHA256_RSA_PKCS_PSS"' '"class":"CKO_PUBLIC_KEY"' '"sig_len":256'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "Message-canary-Ws3" $(p11t_encodings shim.pkcs1.sig) $(p11t_encodings shim.pss.sig)
}
register pkcs11_tool_sign_rsa "pkcs11-tool: RSA-2048 SHA256-RSA-PKCS and RSA-PSS sign/verify checked by OpenSSL; the log names key and PSS parameters"

case_pkcs11_tool_decrypt() {
    for mode in direct shim; do
        use_token "$mode"
        p11t_rsa_keypair client-rsa 01 >/dev/null
        p11t_rsa_pubkey_pem 01 "$mode.pub.pem"
        printf 'Plain-canary-Jd2 for %s' "$mode" >"$mode.plain"
        # Encrypted by plain OpenSSL with the exported public key, decrypted on the token.
        openssl pkeyutl -encrypt -pubin -inkey "$mode.pub.pem" -in "$mode.plain" -out "$mode.pkcs1.enc"
        p11t --login --pin "$USER_PIN" --decrypt --mechanism RSA-PKCS --id 01 \
            --input-file "$mode.pkcs1.enc" --output-file "$mode.pkcs1.dec" 2>/dev/null
        cmp "$mode.plain" "$mode.pkcs1.dec" || fail "$mode: RSA-PKCS decryption is wrong"
        # OAEP: SoftHSM 2.6.1 takes SHA-1 only.
        openssl pkeyutl -encrypt -pubin -inkey "$mode.pub.pem" -in "$mode.plain" -out "$mode.oaep.enc" \
            -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1
        p11t --login --pin "$USER_PIN" --decrypt --mechanism RSA-PKCS-OAEP --hash-algorithm SHA-1 \
            --mgf MGF1-SHA1 --id 01 --input-file "$mode.oaep.enc" --output-file "$mode.oaep.dec" 2>/dev/null
        cmp "$mode.plain" "$mode.oaep.dec" || fail "$mode: RSA-OAEP decryption is wrong"
        # ... and refuses SHA-256 in the same way directly and through p11audit.
        openssl pkeyutl -encrypt -pubin -inkey "$mode.pub.pem" -in "$mode.plain" -out "$mode.oaep256.enc" \
            -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256
        p11t_must_fail "$mode.oaep256.err" --login --pin "$USER_PIN" --decrypt --mechanism RSA-PKCS-OAEP \
            --hash-algorithm SHA256 --mgf MGF1-SHA256 --id 01 --input-file "$mode.oaep256.enc" --output-file "$mode.oaep256.dec"
        grep -o 'C_DecryptInit failed: rv = [A-Z_]*' "$mode.oaep256.err" >"$mode.oaep256.rv" ||
            fail "$mode: OAEP-SHA256 failed otherwise: $(cat "$mode.oaep256.err")"
    done
    same_output direct.oaep256.rv shim.oaep256.rv
    log_verifies
    log_has '"ev":"outcome"' '"fn":"C_DecryptInit"' '"mechanism":{"type":"CKM_RSA_PKCS"' '"label":"client-rsa","id":{"hex":"01"}'
    log_has '"fn":"C_Decrypt"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_RSA_PKCS"' '"in_len":256' '"out":"returned"'
    log_has '"fn":"C_Decrypt"' '"rv":"CKR_OK"' '"params":{"hash":"CKM_SHA_1","mgf":"CKG_MGF1_SHA1","source_len":0}' '"label":"client-rsa"' '"out":"returned"'
    log_has '"ev":"outcome"' '"fn":"C_DecryptInit"' '"rv":"CKR_ARGUMENTS_BAD"' '"params":{"hash":"CKM_SHA256","mgf":"CKG_MGF1_SHA256","source_len":0}'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "Plain-canary-Jd2" $(p11t_encodings shim.pkcs1.enc)
}
register pkcs11_tool_decrypt "pkcs11-tool: RSA-PKCS and RSA-OAEP decryption of OpenSSL ciphertexts; the log shows OAEP parameters, never the plaintext"

case_pkcs11_tool_aes() {
    local iv
    iv=$(openssl rand -hex 16)
    for mode in direct shim; do
        use_token "$mode"
        head -c 4096 /dev/urandom >"$mode.data"
        # A generated key: the round trip on the token gives the data back.
        p11t --login --pin "$USER_PIN" --keygen --key-type AES:32 --label client-aes --id 03 >/dev/null 2>&1
        p11t --login --pin "$USER_PIN" --encrypt --mechanism AES-CBC --iv "$iv" --id 03 \
            --input-file "$mode.data" --output-file "$mode.enc" 2>/dev/null
        cmp -s "$mode.data" "$mode.enc" && fail "$mode: AES-CBC did not encrypt"
        p11t --login --pin "$USER_PIN" --decrypt --mechanism AES-CBC --iv "$iv" --id 03 \
            --input-file "$mode.enc" --output-file "$mode.dec" 2>/dev/null
        cmp "$mode.data" "$mode.dec" || fail "$mode: AES-CBC round trip lost the data"
        # An imported key, so that OpenSSL can check the token's ciphertext independently.
        head -c 32 /dev/urandom >"$mode.key"
        p11t --login --pin "$USER_PIN" --write-object "$mode.key" --type secrkey --key-type AES:32 \
            --label client-aes-imported --id 04 --usage-decrypt >/dev/null 2>&1
        p11t --login --pin "$USER_PIN" --encrypt --mechanism AES-CBC --iv "$iv" --id 04 \
            --input-file "$mode.data" --output-file "$mode.enc2" 2>/dev/null
        openssl enc -aes-256-cbc -nopad -K "$(xxd -p -c 64 "$mode.key")" -iv "$iv" \
            -in "$mode.data" -out "$mode.openssl.enc"
        cmp "$mode.enc2" "$mode.openssl.enc" || fail "$mode: the token's AES-CBC differs from OpenSSL's"
    done
    log_verifies
    log_has '"ev":"outcome"' '"fn":"C_GenerateKey"' '"label":"client-aes","id":{"hex":"03"}'
    log_has '"ev":"outcome"' '"fn":"C_EncryptInit"' '"mechanism":{"type":"CKM_AES_CBC","param_len":16}' '"key_type":"CKK_AES","label":"client-aes","id":{"hex":"03"}'
    log_has '"fn":"C_DecryptInit"' '"mechanism":{"type":"CKM_AES_CBC","param_len":16}' '"label":"client-aes"'
    log_has '"fn":"C_EncryptFinal"' '"label":"client-aes-imported"'
    log_has '"fn":"C_DecryptUpdate"' '"label":"client-aes"' '"in_len":'
    # The imported key: its template is logged, its CKA_VALUE by length only.
    log_has '"ev":"intent"' '"fn":"C_CreateObject"' '"type":"CKA_VALUE","len":32}' '"value":"client-aes-imported"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "$iv" $(p11t_encodings shim.key) $(p11t_encodings shim.data | cut -c1-64)
}
register pkcs11_tool_aes "pkcs11-tool: AES-256 generated and imported, AES-CBC round trip and OpenSSL's ciphertext; key, IV and data stay out of the log"

case_pkcs11_tool_hash_random() {
    for mode in direct shim; do
        use_token "$mode"
        printf 'Digest-canary-Hy6 in %s' "$mode" >"$mode.data"
        p11t --hash --mechanism SHA256 --input-file "$mode.data" --output-file "$mode.sha256" 2>/dev/null
        [[ $(xxd -p -c 64 "$mode.sha256") == "$(sha256sum "$mode.data" | cut -d' ' -f1)" ]] ||
            fail "$mode: the token's SHA-256 differs from sha256sum's"
        p11t --generate-random 48 --output-file "$mode.random" 2>/dev/null
        [[ $(stat -c %s "$mode.random") == 48 ]] || fail "$mode: --generate-random 48 gave another length"
        # 48 random bytes that are all zero would mean no random bytes at all.
        [[ $(tr -d '\0' <"$mode.random" | wc -c) -gt 0 ]] || fail "$mode: the random bytes are all zero"
    done
    cmp -s direct.random shim.random && fail "direct and shim produced the same random bytes"
    log_verifies
    log_has '"ev":"outcome"' '"fn":"C_DigestInit"' '"mechanism":{"type":"CKM_SHA256"}'
    log_has '"fn":"C_DigestUpdate"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_SHA256"}' "\"in_len\":$(stat -c %s shim.data)"
    log_has '"fn":"C_DigestFinal"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_SHA256"}' '"out_len":32' '"out":"returned"'
    log_has '"fn":"C_GenerateRandom"' '"rv":"CKR_OK"' '"out_len":48' '"out":"returned"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "Digest-canary-Hy6" $(p11t_encodings shim.sha256) $(p11t_encodings shim.random)
}
register pkcs11_tool_hash_random "pkcs11-tool: SHA-256 on the token equals sha256sum, random bytes come back; neither the data, digest nor random bytes are logged"

case_pkcs11_tool_data() {
    for mode in direct shim; do
        use_token "$mode"
        printf 'Data-canary-Rt5 stored by %s\n' "$mode" >"$mode.data"
        p11t --login --pin "$USER_PIN" --write-object "$mode.data" --type data --label client-data \
            --application-label p11audit-app --private 2>/dev/null | p11t_normalize >"$mode.out"
        p11t --login --pin "$USER_PIN" --list-objects --type data 2>/dev/null >>"$mode.out"
        p11t --login --pin "$USER_PIN" --read-object --type data --label client-data \
            --output-file "$mode.read" 2>/dev/null
        cmp "$mode.data" "$mode.read" || fail "$mode: the data object read back differs"
        # A private object is invisible without login.
        p11t_must_fail "$mode.nologin.err" --read-object --type data --label client-data --output-file "$mode.none"
        grep -q 'object not found' "$mode.nologin.err" || fail "$mode: private data object readable without login"
    done
    same_output direct.out shim.out
    log_verifies
    log_has '"ev":"intent"' '"fn":"C_CreateObject"' '"type":"CKA_CLASS","len":8,"value":"CKO_DATA"' '"type":"CKA_LABEL","len":11,"value":"client-data"' '"type":"CKA_APPLICATION","len":12,"value":"p11audit-app"' '"type":"CKA_PRIVATE","len":1,"value":true'
    log_has '"ev":"outcome"' '"fn":"C_CreateObject"' '"created":[{"handle":' '"class":"CKO_DATA","label":"client-data"'
    # Read back: which object and which attribute, the value by length only.
    log_has '"fn":"C_GetAttributeValue"' '"class":"CKO_DATA","label":"client-data"' '"type":"CKA_VALUE","len":'
    log_has '"fn":"C_FindObjectsInit"' '"login":"public"' '"value":"client-data"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "Data-canary-Rt5"
}
register pkcs11_tool_data "pkcs11-tool: a private data object written and read back, invisible without login; the log names it, never its value"

case_pkcs11_tool_pins() {
    # PINs of the second token, all canaries like lib.sh's.
    local so2=So2-canary-Hj4 user2=User2-canary-Kp5 user3=User3-canary-Lm6 wrong=Wrong-canary-Vb8
    for mode in direct shim; do
        use_token "$mode"
        {
            # new-token.sh initialized slot index 0; index 1 is SoftHSM's free slot.
            p11t --slot-index 1 --init-token --label second-token --so-pin "$so2"
            p11t --token-label second-token --login --login-type so --so-pin "$so2" --init-pin --pin "$user2"
            p11t --token-label second-token --login --pin "$user2" --change-pin --new-pin "$user3"
            p11t --token-label second-token --login --pin "$user3" --list-objects
            echo "-- slots"
            p11t --list-slots
        } 2>"$mode.err" | p11t_normalize | sed -E 's/^Slot [0-9]+ /Slot N /' | p11t_sort_blocks >"$mode.out"
        grep -q 'token label *: second-token' "$mode.out" || fail "$mode: second token not initialized"
        # The old PIN no longer works, a wrong one never did.
        p11t_must_fail "$mode.old.err" --token-label second-token --login --pin "$user2" --list-objects
        p11t_must_fail "$mode.wrong.err" --token-label p11audit-clients --login --pin "$wrong" --list-objects
        for e in old wrong; do
            grep -o 'C_Login failed: rv = [A-Z_]*' "$mode.$e.err" >>"$mode.rv" || fail "$mode: $e PIN: $(cat "$mode.$e.err")"
        done
    done
    same_output direct.out shim.out
    same_output direct.rv shim.rv
    grep -qx 'C_Login failed: rv = CKR_PIN_INCORRECT' shim.rv || fail "wrong PIN not reported as CKR_PIN_INCORRECT"
    log_verifies
    log_has '"ev":"intent"' '"fn":"C_InitToken"' '"slot":1,"token":{"label":"second-token"'
    log_has '"ev":"outcome"' '"fn":"C_InitToken"' '"rv":"CKR_OK"' '"label":"second-token"'
    log_has '"ev":"outcome"' '"fn":"C_Login"' '"rv":"CKR_OK"' '"user_type":"CKU_SO"' '"login":"so"' '"label":"second-token"'
    log_has '"ev":"outcome"' '"fn":"C_InitPIN"' '"rv":"CKR_OK"' '"login":"so"' '"label":"second-token"'
    log_has '"ev":"outcome"' '"fn":"C_SetPIN"' '"rv":"CKR_OK"' '"login":"user"' '"label":"second-token"'
    log_has '"ev":"outcome"' '"fn":"C_Login"' '"rv":"CKR_PIN_INCORRECT"' '"user_type":"CKU_USER"' '"login":"public"' '"label":"p11audit-clients"'
    log_has '"ev":"outcome"' '"fn":"C_Login"' '"rv":"CKR_PIN_INCORRECT"' '"label":"second-token"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "$so2" "$user2" "$user3" "$wrong"
}
register pkcs11_tool_pins "pkcs11-tool: init-token on a free slot, init-pin, change-pin, wrong PINs; the log shows CKR_PIN_INCORRECT on C_Login and no PIN"

case_pkcs11_tool_test() {
    for mode in direct shim; do
        use_token "$mode"
        # With an RSA key, --test also tries RSA-OAEP with SHA-256, which SoftHSM 2.6.1 refuses
        # (CKR_ARGUMENTS_BAD): the same failure both ways. (One private key only: with several,
        # the tests run depend on the order SoftHSM lists them in, which is random.)
        p11t_rsa_keypair test-rsa 11 >/dev/null
        if p11t --login --pin "$USER_PIN" --test >"$mode.rsa.out" 2>&1; then
            fail "$mode: --test with an RSA key passed; SoftHSM 2.6.1 was expected to refuse OAEP-SHA256"
        fi
        p11t_normalize <"$mode.rsa.out" >"$mode.rsa.norm"
        grep -q 'C_DecryptInit failed: rv = CKR_ARGUMENTS_BAD' "$mode.rsa.norm" ||
            fail "$mode: --test with an RSA key failed otherwise: $(tail -3 "$mode.rsa.norm")"
        p11t --login --pin "$USER_PIN" --delete-object --type privkey --id 11 2>/dev/null
        p11t --login --pin "$USER_PIN" --delete-object --type pubkey --id 11 2>/dev/null
        # With EC and AES keys, every test pkcs11-tool 0.23 runs passes.
        p11t --login --pin "$USER_PIN" --keygen --key-type AES:32 --label test-aes --id 13 >/dev/null 2>&1
        p11t --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 --label test-ec --id 12 >/dev/null 2>&1
        p11t --login --pin "$USER_PIN" --test 2>&1 | p11t_normalize >"$mode.out"
        grep -qx 'No errors' "$mode.out" || fail "$mode: pkcs11-tool --test found errors"
    done
    same_output direct.rsa.norm shim.rsa.norm
    same_output direct.out shim.out
    log_verifies
    log_has '"fn":"C_SeedRandom"' '"rv":"CKR_OK"'
    log_has '"fn":"C_GenerateRandom"' '"out":"returned"'
    log_has '"fn":"C_Digest"' '"mechanism":{"type":"CKM_MD5"}' '"out":"returned"'
    log_has '"fn":"C_DigestFinal"' '"out":"returned"'
    log_has '"fn":"C_Verify"' '"rv":"CKR_OK"' '"label":"test-rsa"'
    log_has '"fn":"C_Decrypt"' '"rv":"CKR_OK"' '"mechanism":{"type":"CKM_RSA_PKCS"}' '"label":"test-rsa"'
    log_has '"ev":"outcome"' '"fn":"C_DecryptInit"' '"rv":"CKR_ARGUMENTS_BAD"' '"type":"CKM_RSA_PKCS_OAEP"'
    log_has '"ev":"outcome"' '"fn":"C_DestroyObject"' '"rv":"CKR_OK"' '"label":"test-rsa"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register pkcs11_tool_test "pkcs11-tool --test: the same results (and SoftHSM's same OAEP refusal) directly and through p11audit"

case_pkcs11_tool_test_threads() {
    # Each thread waits 1 s ("P1") so that the main thread's C_Initialize is over before the
    # threads call C_Initialize with CKF_OS_LOCKING_OK ("IL", which then gets
    # CKR_CRYPTOKI_ALREADY_INITIALIZED), C_GetInfo ("GI"), C_GetSlotList ("SL") and
    # C_GetTokenInfo ("T0") at the same time. Without the pause pkcs11-tool 0.23 races its own
    # C_Initialize against the threads' and SoftHSM 2.6.1 crashes, directly too. With it,
    # pkcs11-tool's clean-up waits a fixed 30 s for the threads, so direct and shim run side by
    # side.
    # --use-locking: the main thread's C_Initialize passes CKF_OS_LOCKING_OK. Without it
    # (C_Initialize(NULL), which promises single-threaded use) SoftHSM runs without locks and
    # the threads' concurrent C_GetTokenInfo crash it now and then (SIGSEGV in SoftHSM's
    # C_GetTokenInfo, seen through p11audit and possible directly: the same race).
    local threads=(--use-locking --test-threads P1ILGISLT0 --test-threads P1ILGISLT0 --test-threads P1ILGISLT0)
    use_token direct
    (p11t "${threads[@]}" --list-slots >direct.out 2>direct.err) &
    local direct_pid=$!
    use_token shim
    local shim_rc=0 direct_rc=0
    p11t "${threads[@]}" --list-slots >shim.out 2>shim.err || shim_rc=$?
    wait "$direct_pid" || direct_rc=$?
    ((direct_rc == 0)) || fail "direct: pkcs11-tool --test-threads failed ($direct_rc): $(tail -3 direct.err)"
    ((shim_rc == 0)) || fail "shim: pkcs11-tool --test-threads failed ($shim_rc): $(tail -3 shim.err)"
    for mode in direct shim; do
        for t in 0 1 2; do
            grep -qx "Test thread $t C_Initialize  returned CKR_CRYPTOKI_ALREADY_INITIALIZED" "$mode.err" &&
                grep -qx "Test thread $t returning rv = 0" "$mode.err" || fail "$mode: thread $t did not run as expected"
        done
        grep -q 'all threads have ended with CKR_OK' "$mode.err" || fail "$mode: threads did not end with CKR_OK"
        # Threads print the token info in any order: compare the sorted lines.
        p11t_normalize <"$mode.out" | sort >"$mode.sorted"
    done
    same_output direct.sorted shim.sorted
    log_verifies
    # Three threads of one process, each with its own records.
    local tids
    tids=$(grep -F '"fn":"C_GetInfo"' "$LOG" | grep -o '"tid":[0-9]*' | sort -u | wc -l)
    ((tids == 3)) || fail "expected C_GetInfo from 3 threads, found $tids"
    log_has '"ev":"intent"' '"fn":"C_Initialize"' '"flags":2'
    log_has '"ev":"outcome"' '"fn":"C_Initialize"' '"rv":"CKR_CRYPTOKI_ALREADY_INITIALIZED"'
    tids=$(grep -F '"fn":"C_GetTokenInfo"' "$LOG" | grep -o '"tid":[0-9]*' | sort -u | wc -l)
    ((tids == 4)) || fail "expected C_GetTokenInfo from the main thread and 3 others, found $tids"
    log_has '"ev":"close"' '"fn":"C_Finalize"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register pkcs11_tool_test_threads "pkcs11-tool --test-threads: three threads initialize and query at once, the same directly and through p11audit; the log verifies"

case_pkcs11_tool_test_fork() {
    for mode in direct shim; do
        use_token "$mode"
        # pkcs11-tool's fork test relies on SoftHSM resetting itself in the child.
        sed 's/^library\.reset_on_fork *=.*/library.reset_on_fork = true/' "$SOFTHSM2_CONF" >"$WORK/$mode/fork.conf"
        grep -qx 'library.reset_on_fork = true' "$WORK/$mode/fork.conf" || fail "could not enable reset_on_fork"
        SOFTHSM2_CONF=$WORK/$mode/fork.conf p11t --test-fork 2>&1 | p11t_normalize >"$mode.out"
        grep -q 'Calling C_Initialize in forked child process' "$mode.out" || fail "$mode: no fork test ran"
        # Without reset_on_fork the child's C_Initialize fails, the same way both ways.
        if p11t --test-fork >"$mode.noreset.out" 2>&1; then
            fail "$mode: --test-fork passed without reset_on_fork"
        fi
        p11t_normalize <"$mode.noreset.out" >>"$mode.out"
    done
    same_output direct.out shim.out
    log_verifies
    # The child's C_Initialize is recorded under the child's own pid, with its own attach.
    local parent child
    parent=$(grep -F '"ev":"close"' "$LOG" | head -1 | grep -o '"pid":[0-9]*' | cut -d: -f2)
    child=$(grep -F '"ev":"attach"' "$LOG" | grep -o '"pid":[0-9]*' | cut -d: -f2 | grep -vx "$parent" | head -1)
    [[ -n $parent && -n $child ]] || fail "no parent and child attach in the log"
    log_has "\"pid\":$child," '"ev":"outcome"' '"fn":"C_Initialize"' '"rv":"CKR_OK"'
    log_has '"ev":"outcome"' '"fn":"C_Initialize"' '"rv":"CKR_CRYPTOKI_ALREADY_INITIALIZED"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register pkcs11_tool_test_fork "pkcs11-tool --test-fork (SoftHSM reset_on_fork): the child's C_Initialize works and is logged under its own pid"
