# OpenSSH (Debian package openssh-client): ssh-keygen -D, ssh-agent with ssh-add -s, and
# ssh-keygen -Y sign / -Y verify through the agent.
#
# Client notes:
# - ssh-agent loads PKCS#11 modules (in its ssh-pkcs11-helper) only from paths matching its
#   allowlist, `-P pattern,...` (default /usr/lib/*,/usr/local/lib/*), matched against the
#   module's real path (ssh-add resolves symlinks). The shim's own path must be on it; the real
#   module it forwards to needs not be, the shim loads it itself.
# - The helper inherits the agent's environment, so P11AUDIT_* (and SOFTHSM2_CONF) must be set
#   where ssh-agent starts, not where ssh-add runs.
# - ssh-add reads the PIN from a prompt; SSH_ASKPASS with SSH_ASKPASS_REQUIRE=force makes it ask
#   a program instead of the terminal (OpenSSH 9.2 does not need DISPLAY then; it is set anyway
#   for older versions).
# - The agent runs in the foreground (-D) as a child of this case, so it is killed by PID at the
#   end, and the time limit's kill reaches it if the case hangs.
# - Keys are listed in whatever order the token returns its objects, so listings are sorted.

# openssh_pubkey KEYTYPE ID: the token's public key ID as one OpenSSH public key line, built
# from the key the token holds (pkcs11-tool), independently of ssh-keygen -D.
openssh_pubkey() {
    local type=$1 id=$2 point
    case $type in
    rsa)
        pkcs11-tool --module "$MODULE" --read-object --type pubkey --id "$id" -o "$WORK/pub-$id.der" >/dev/null 2>&1 ||
            fail "$MODE: cannot read RSA public key $id"
        openssl pkey -pubin -inform DER -in "$WORK/pub-$id.der" -out "$WORK/pub-$id.pem"
        ;;
    ec)
        # From CKA_EC_POINT (Debian 12's pkcs11-tool must not export EC keys with --read-object).
        # pkcs11-tool 0.23 ignores --id with --list-objects: the object is picked by its ID line.
        point=$(pkcs11-tool --module "$MODULE" --list-objects --type pubkey --id "$id" 2>/dev/null |
            awk -v id="$id" '/^[A-Z].* Object;/ { point = "" } $1 == "EC_POINT:" { point = $2 }
            $1 == "ID:" && $2 == id { print point }')
        [[ $point =~ ^044104[0-9a-f]{128}$ ]] || fail "$MODE: unexpected EC_POINT for id $id: $point"
        printf '3059301306072a8648ce3d020106082a8648ce3d030107034200%s' "${point#0441}" | xxd -r -p |
            openssl pkey -pubin -inform DER -out "$WORK/pub-$id.pem"
        ;;
    esac
    ssh-keygen -i -m PKCS8 -f "$WORK/pub-$id.pem" | awk '{ print $1, $2 }'
}

# openssh_agent_start: an ssh-agent in the foreground on $WORK/$MODE/agent.sock that accepts
# modules in the shim's directory and SoftHSM's.
openssh_agent_start() {
    SSH_AUTH_SOCK=$WORK/$MODE/agent.sock
    export SSH_AUTH_SOCK
    # ssh-add sends the module's real path (symlinks resolved: SoftHSM's
    # /usr/lib/softhsm/libsofthsm2.so is a link into /usr/lib/x86_64-linux-gnu/softhsm/).
    ssh-agent -D -a "$SSH_AUTH_SOCK" -P "$(dirname "$(realpath "$SHIM")")/*,$(dirname "$(realpath "$SOFTHSM")")/*" \
        >"$WORK/$MODE/agent.log" 2>&1 &
    OPENSSH_AGENT_PID=$!
    for _ in $(seq 50); do
        [[ -S $SSH_AUTH_SOCK ]] && return 0
        sleep 0.1
    done
    fail "$MODE: ssh-agent did not start"
}

openssh_agent_stop() {
    [[ -n ${OPENSSH_AGENT_PID:-} ]] || return 0
    kill "$OPENSSH_AGENT_PID" 2>/dev/null || true
    wait "$OPENSSH_AGENT_PID" 2>/dev/null || true
    OPENSSH_AGENT_PID=
}

case_openssh() {
    local mode t id
    trap openssh_agent_stop EXIT
    printf '#!/bin/sh\necho %s\n' "$USER_PIN" >askpass.sh
    chmod 700 askpass.sh
    echo "a file signed with an ssh key on a PKCS#11 token" >data.txt
    for mode in direct shim; do
        use_token "$mode"
        pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --keypairgen --key-type rsa:2048 \
            --label ssh-rsa-key --id 71 >/dev/null
        pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 \
            --label ssh-ec-key --id 72 >/dev/null

        # ssh-keygen -D: the token's public keys, with their labels as comments.
        ssh-keygen -D "$MODULE" >"$mode.D" 2>"$mode.D.err" || { cat "$mode.D.err" >&2; fail "$mode: ssh-keygen -D failed"; }
        {
            openssh_pubkey rsa 71
            openssh_pubkey ec 72
        } | sort >"$mode.token-keys"
        awk '{ print $1, $2 }' "$mode.D" | sort | diff -u "$mode.token-keys" - >&2 ||
            fail "$mode: ssh-keygen -D does not list the token's keys"
        {
            echo "ssh-keygen -D: $(wc -l <"$mode.D") keys"
            awk '{ print $1, $3 }' "$mode.D" | sort
        } >"$mode.result"

        # ssh-agent with the module; the PIN comes from SSH_ASKPASS.
        openssh_agent_start
        SSH_ASKPASS=$WORK/askpass.sh SSH_ASKPASS_REQUIRE=force DISPLAY=:0 \
            ssh-add -s "$MODULE" </dev/null >>"$mode.result" 2>&1 || { cat "$mode.result" >&2; fail "$mode: ssh-add -s failed"; }
        ssh-add -L | sort >"$mode.agent-keys"
        awk '{ print $1, $2 }' "$mode.agent-keys" | diff -u "$mode.token-keys" - >&2 ||
            fail "$mode: the agent does not hold the token's keys"
        awk '{ print "agent:", $1, $3 }' "$mode.agent-keys" >>"$mode.result"

        # Sign a file with each key through the agent; verify with an allowed_signers file.
        for t in ecdsa-sha2-nistp256 ssh-rsa; do
            grep "^$t " "$mode.agent-keys" >"$mode.$t.pub"
            cp data.txt "$mode.$t.data"
            ssh-keygen -Y sign -f "$mode.$t.pub" -n file "$mode.$t.data" 2>>"$mode.sign.err" ||
                { cat "$mode.sign.err" >&2; fail "$mode: ssh-keygen -Y sign with $t failed"; }
            echo "signer@example namespaces=\"file\" $(cat "$mode.$t.pub")" >"$mode.$t.allowed"
            ssh-keygen -Y verify -f "$mode.$t.allowed" -I signer@example -n file -s "$mode.$t.data.sig" \
                <"$mode.$t.data" >"$mode.$t.verify" 2>&1 || { cat "$mode.$t.verify" >&2; fail "$mode: -Y verify with $t failed"; }
            # A signature over other data must not verify.
            echo tampered | ssh-keygen -Y verify -f "$mode.$t.allowed" -I signer@example -n file \
                -s "$mode.$t.data.sig" >/dev/null 2>&1 && fail "$mode: a $t signature verified over other data"
            sed 's/ SHA256:.*//' "$mode.$t.verify" >>"$mode.result"
        done
        # Removing the provider makes the helper finalize the module.
        ssh-add -e "$MODULE" >>"$mode.result" 2>&1
        openssh_agent_stop
        sed -i "s|$MODULE|MODULE|" "$mode.result"
    done
    cat shim.result >&2
    same_output direct.result shim.result

    log_verifies
    # ssh-keygen -D read the public keys; the agent's helper logged in and signed with each key.
    log_has '"exe":"/usr/bin/ssh-keygen"' '"fn":"C_GetAttributeValue"' '"label":"ssh-ec-key"'
    log_has '"exe":"/usr/lib/openssh/ssh-pkcs11-helper"' '"fn":"C_Login"' '"user_type":"CKU_USER"' '"rv":"CKR_OK"'
    for id in '"label":"ssh-rsa-key","id":{"hex":"71"}' '"label":"ssh-ec-key","id":{"hex":"72"}'; do
        log_has '"exe":"/usr/lib/openssh/ssh-pkcs11-helper"' '"fn":"C_Sign"' "$id" '"rv":"CKR_OK"' '"out":"returned"'
    done
    log_has '"exe":"/usr/lib/openssh/ssh-pkcs11-helper"' '"fn":"C_Sign"' '"mechanism":{"type":"CKM_ECDSA"}'
    log_has '"exe":"/usr/lib/openssh/ssh-pkcs11-helper"' '"fn":"C_Sign"' '"mechanism":{"type":"CKM_RSA_PKCS"}'
    log_has '"exe":"/usr/lib/openssh/ssh-pkcs11-helper"' '"ev":"close"'
    log_has_no_secret "$USER_PIN" "$SO_PIN"
}
register openssh "OpenSSH: ssh-keygen -D lists the token's keys; ssh-agent with ssh-add -s; -Y sign/verify with EC and RSA"
