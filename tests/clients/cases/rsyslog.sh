# Central collection with rsyslog (Debian packages rsyslog and rsyslog-relp, 8.2302 in Debian 12).
#
# Two rsyslogd processes on loopback, each with its own configuration, working directory and pid
# file, none of them the system's (no /etc/rsyslog.conf, /dev/log or /var/spool): a "host" that
# tails the p11audit log with imfile and forwards every line over RELP through a queue on disk,
# and a "collector" that writes each received message, and nothing else, to a file per host.
# The configurations are tests/clients/rsyslog/{host,collector}.conf with their @NAME@
# placeholders filled in; docs/COLLECTING.md shows them verbatim (checked below).
#
# rsyslog details that matter for a byte-identical copy (all set in those files):
# - maxMessageSize (default 8k) would split longer records; it is 1m on both sides, and imrelp's
#   maxDataSize with it.
# - parser.escapeControlCharactersOnReceive (default on) would turn control bytes into #ooo
#   (records have none, JSON escapes them, but the copy must not depend on that).
# - The host sends RFC 5424 (RSYSLOG_SyslogProtocol23Format), whose MSG part the collector's
#   parser hands back unchanged; the collector writes "%msg%\n". (The traditional format makes
#   the collector's MSG start with a space.)
# - imfile skips empty lines; a p11audit log has none.
# - rsyslog's own messages: processInternalMessages="on", else rsyslogd sends them to /dev/log.
# - Order: the forwarding ruleset is Direct (imfile's thread enqueues) and the action queue is a
#   Disk queue with one worker. A disk-assisted LinkedList queue mixed the records from disk
#   with new ones after a restart, in batches of 128.

RSYSLOG_CONFS=$ROOT/tests/clients/rsyslog
declare -A RSYSLOG_PID

# rsyslog_conf NAME KEY=VALUE...: $WORK/NAME.conf from tests/clients/rsyslog/NAME.conf with
# every @KEY@ replaced; no placeholder may be left over.
rsyslog_conf() {
    local name=$1 kv script=()
    shift
    for kv in "$@"; do
        script+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${script[@]}" "$RSYSLOG_CONFS/$name.conf" >"$WORK/$name.conf"
    ! grep -n '@[A-Z_]*@' "$WORK/$name.conf" || fail "unfilled placeholder in $name.conf"
    rsyslogd -N1 -f "$WORK/$name.conf" >"$WORK/$name/check.out" 2>&1 ||
        { cat "$WORK/$name/check.out" >&2; fail "rsyslogd rejects $name.conf"; }
}

# rsyslog_start NAME: rsyslogd in the foreground (-n), as a child of this shell.
rsyslog_start() {
    local name=$1
    rsyslogd -n -f "$WORK/$name.conf" -i "$WORK/$name/rsyslogd.pid" >>"$WORK/$name/stderr" 2>&1 &
    RSYSLOG_PID[$name]=$!
}

# rsyslog_stop NAME [SIGNAL]: signals it and waits for it to end (at most 20 s).
rsyslog_stop() {
    local name=$1 sig=${2:-TERM} pid=${RSYSLOG_PID[$1]:-}
    [[ -n $pid ]] || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        fail "$name: rsyslogd did not stop on SIG$sig within 20 s"
    fi
    wait "$pid" 2>/dev/null || true
    RSYSLOG_PID[$name]=
}

rsyslog_stop_all() {
    local name pid
    for name in "${!RSYSLOG_PID[@]}"; do
        pid=${RSYSLOG_PID[$name]}
        [[ -n $pid ]] || continue
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# rsyslog_listening NAME PORT: process NAME has a TCP socket listening on 127.0.0.1:PORT.
rsyslog_listening() {
    local pid=${RSYSLOG_PID[$1]} inode
    kill -0 "$pid" 2>/dev/null || return 1
    # /proc/net/tcp: local address 0100007F:PORT in hex, state 0A (LISTEN), inode in column 10.
    inode=$(awk -v want="$(printf '0100007F:%04X' "$2")" '$2 == want && $4 == "0A" { print $10 }' /proc/net/tcp)
    [[ -n $inode ]] || return 1
    local fd
    for fd in "/proc/$pid/fd"/*; do
        [[ $(readlink "$fd" 2>/dev/null) == "socket:[$inode]" ]] && return 0
    done
    return 1
}

# A TCP port that was free a moment ago.
rsyslog_free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# rsyslog_wait_until SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails after SECONDS.
rsyslog_wait_until() {
    local secs=$1 i
    shift
    for ((i = 0; i < secs * 5; i++)); do
        "$@" && return 0
        sleep 0.2
    done
    return 1
}

# The collector's copy of the audit log: the only file it has written.
rsyslog_copy() {
    local files
    mapfile -t files < <(find "$WORK/store" -type f)
    ((${#files[@]} == 1)) || return 1
    COPY=${files[0]}
}

copy_matches() {
    rsyslog_copy && cmp -s "$LOG" "$COPY"
}

# A log's lines in seq order (lines start {"v":1,"seq":N,).
rsyslog_sorted() {
    LC_ALL=C sort -s -t: -k3,3n "$1"
}

# The copy holds every record of the log, each once, in any order.
copy_complete() {
    rsyslog_copy && [[ $(wc -l <"$COPY") == $(wc -l <"$LOG") ]] && rsyslog_sorted "$COPY" | cmp -s "$LOG" -
}

# How many lines of the copy are not where they are in the log.
rsyslog_moved() {
    diff "$LOG" "$COPY" | grep -c '^>' || true
}

# rsyslog_said NAME OFFSET TEXT: NAME's rsyslogd.log has TEXT after its first OFFSET bytes.
rsyslog_said() {
    tail -c +$(($2 + 1)) "$WORK/$1/rsyslogd.log" | grep -qF -- "$3"
}

# Fails unless the copy catches up with the log within 30 s, then says how far both are.
rsyslog_caught_up() {
    local what=$1
    rsyslog_wait_until 30 copy_matches || {
        [[ -n ${COPY:-} ]] && cmp "$LOG" "$COPY" >&2
        fail "$what: the collector's copy is not identical to the audit log after 30 s ($(wc -l <"$LOG") lines in the log, $(wc -l <"${COPY:-/dev/null}") in the copy)"
    }
    echo "rsyslog: $what: log and collector copy identical, $(wc -l <"$LOG") records, $(wc -c <"$LOG") bytes" >&2
    # Exit 3: every record verified; without the host's state file its end cannot be checked.
    local rc=0
    "$P11AUDIT_BIN" verify --key-file "$KEY" --no-state "$COPY" >"$WORK/verify-copy.out" 2>&1 || rc=$?
    ((rc == 3)) ||
        { cat "$WORK/verify-copy.out" >&2; fail "$what: p11audit verify rejects the collector's copy (exit $rc)"; }
}

# The witness at the collector (docs/COLLECTING.md): `p11audit witness` on every checkpoint
# record of the copy not witnessed yet, in the order received, with the copy's lines as the
# evidence. Returns the witness's exit status at the first one it does not accept (its message
# in $WORK/collector/witness.err); WITNESSED is then the number of checkpoint records handled.
rsyslog_witness_copy() {
    local n i done=0
    [[ -f $WORK/collector/witnessed ]] && done=$(cat "$WORK/collector/witnessed")
    n=$(/usr/bin/python3 - "$COPY" "$WORK/collector/checkpoint" <<'PY'
import json, sys
notes = [json.loads(l)["checkpoint"] for l in open(sys.argv[1], encoding="utf-8") if '"ev":"checkpoint"' in l]
for i, note in enumerate(notes):
    open("%s.%d" % (sys.argv[2], i), "w", encoding="utf-8").write(note)
print(len(notes))
PY
    )
    for ((i = done; i < n; i++)); do
        WITNESSED=$((i + 1))
        echo "$WITNESSED" >"$WORK/collector/witnessed"
        "$P11AUDIT_BIN" witness --key "$WORK/collector/witness.key" --state "$WORK/collector/witness.state" \
            --log-key "$CHECKPOINT_VKEY" --checkpoint "$WORK/collector/checkpoint.$i" --lines "$COPY" \
            >>"$WORK/collector/cosignatures" 2>"$WORK/collector/witness.err" || return $?
    done
    WITNESSED=$n
}

# The copy holds more checkpoint records than the witness has handled.
rsyslog_new_checkpoint() {
    (($(grep -c '"ev":"checkpoint"' "$COPY") > WITNESSED))
}

# A PyKCS11 client whose records are long and full of escapes: a data object whose label has a
# quote, a backslash, a tab, a control character and non-ASCII letters, then a template of 60
# long CKA_APPLICATION values, which SoftHSM refuses (CKR_TEMPLATE_INCONSISTENT) but whose intent
# record (about 16 KiB, twice rsyslog's default maxMessageSize) is written whole before that.
rsyslog_write_big_client() {
    cat >"$WORK/big.py" <<'PY'
import sys
import PyKCS11
from PyKCS11 import *

module, pin, tag = sys.argv[1:4]
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(pin)
label = '%s: quote " backslash \\ tab \t control \x01 \u00e9\u2713 ' % tag + "x" * 100
s.createObject([(CKA_CLASS, CKO_DATA), (CKA_TOKEN, True), (CKA_LABEL, label), (CKA_VALUE, b"value")])
big = [(CKA_CLASS, CKO_DATA), (CKA_TOKEN, False)]
big += [(CKA_APPLICATION, "application %03d " % i + "y" * 200) for i in range(60)]
try:
    s.createObject(big)
    sys.exit("SoftHSM accepted 60 CKA_APPLICATION values")
except PyKCS11Error as e:
    if e.value != CKR_TEMPLATE_INCONSISTENT:
        raise
s.logout()
s.closeSession()
PY
}

# Work through p11audit: a key generated ($1 names it), two signatures, a listing, and the
# long records of big.py.
rsyslog_workload() {
    local label=$1 id=$2
    /usr/bin/python3 "$WORK/big.py" "$MODULE" "$USER_PIN" "$label" ||
        fail "the PyKCS11 client failed"
    pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 \
        --label "$label" --id "$id" </dev/null >/dev/null 2>&1
    echo "data signed by $label" | openssl dgst -sha256 -binary >"$WORK/$label.digest"
    for n in 1 2; do
        pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --sign --mechanism ECDSA --id "$id" \
            --input-file "$WORK/$label.digest" --output-file "$WORK/$label.$n.sig" </dev/null >/dev/null 2>&1
    done
    pkcs11-tool --module "$MODULE" --login --pin "$USER_PIN" --list-objects </dev/null >/dev/null 2>&1
}

case_rsyslog() {
    # The documentation shows the tested configurations verbatim.
    local conf
    for conf in host collector; do
        /usr/bin/python3 -c 'import sys; sys.exit(open(sys.argv[1]).read() not in open(sys.argv[2]).read())' \
            "$RSYSLOG_CONFS/$conf.conf" "$ROOT/docs/COLLECTING.md" ||
            fail "docs/COLLECTING.md does not show tests/clients/rsyslog/$conf.conf verbatim"
    done

    trap rsyslog_stop_all EXIT
    use_token shim
    rsyslog_write_big_client
    mkdir -p "$WORK/host" "$WORK/collector" "$WORK/store"
    # Signed checkpoints on the host (at every process's close, and every 200 records); the
    # collector's witness knows their verifier key and has a key of its own.
    "$P11AUDIT_BIN" keygen --checkpoint host.example/p11audit "$WORK/shim/checkpoint.key" >/dev/null
    export P11AUDIT_CHECKPOINT_KEY=$WORK/shim/checkpoint.key P11AUDIT_CHECKPOINT_EVERY=200
    CHECKPOINT_VKEY=$WORK/shim/checkpoint.key.vkey
    "$P11AUDIT_BIN" keygen --witness collector.example/witness "$WORK/collector/witness.key" >/dev/null
    WITNESSED=0

    # The collector, on a port the kernel just handed out (another one if it is taken meanwhile).
    local port tries
    for tries in 1 2 3 4 5; do
        port=$(rsyslog_free_port)
        rsyslog_conf collector WORK_DIR="$WORK/collector" STORE_DIR="$WORK/store" \
            LISTEN_ADDRESS=127.0.0.1 LISTEN_PORT="$port"
        rsyslog_start collector
        rsyslog_wait_until 10 rsyslog_listening collector "$port" && break
        rsyslog_stop collector KILL
        ((tries < 5)) || { cat "$WORK/collector/stderr" "$WORK/collector/rsyslogd.log" >&2 || true; fail "the collector does not listen"; }
    done
    echo "rsyslog: collector listening on 127.0.0.1:$port" >&2

    # The host, started before the audit log exists, as at a fresh install.
    rsyslog_conf host WORK_DIR="$WORK/host" AUDIT_LOG="$LOG" COLLECTOR_HOST=127.0.0.1 COLLECTOR_PORT="$port"
    rsyslog_start host
    [[ ! -e $LOG ]] || fail "the audit log exists before any work"

    # (a) Work through p11audit; the collector's copy is the log, byte for byte, and verifies.
    rsyslog_workload rsyslog-ec-1 21
    log_verifies
    rsyslog_caught_up "after the first workload"
    local stored=$COPY
    [[ $(basename "$COPY") == p11audit.jsonl ]] || fail "the collector's file is named $(basename "$COPY")"
    # Some records are longer than rsyslog's default maxMessageSize (8 KiB).
    local longest
    longest=$(LC_ALL=C awk '{ if (length($0) > m) m = length($0) } END { print m }' "$LOG")
    ((longest > 8192)) || fail "no record is longer than 8 KiB (longest $longest bytes)"
    echo "rsyslog: longest record $longest bytes; copy at ${COPY#"$WORK"/}" >&2
    rsyslog_witness_copy || { cat "$WORK/collector/witness.err" >&2; fail "the collector's witness refused a checkpoint of the first workload"; }
    ((WITNESSED > 0)) || fail "no checkpoint record reached the collector"
    echo "rsyslog: the collector's witness cosigned $WITNESSED checkpoint(s)" >&2
    # The host's log, state and checkpoint as they are now, for the rollback of (e).
    mkdir "$WORK/backup"
    cp -p "$LOG" "$LOG.state" "$LOG.checkpoint" "$WORK/backup/"

    # (b) One character changed in a middle record of a copy of the collector's file: verify says
    # altered, exit 1.
    local lines mid rc=0
    lines=$(wc -l <"$COPY")
    mid=$((lines / 2))
    sed -E "${mid}s/\"pid\":([0-9]+)/\"pid\":\19/" "$COPY" >"$WORK/tampered.jsonl"
    [[ $(cmp "$COPY" "$WORK/tampered.jsonl" | wc -l) -eq 1 ]] || fail "the tampering did not change the copy"
    "$P11AUDIT_BIN" verify --key-file "$KEY" --no-state "$WORK/tampered.jsonl" >"$WORK/verify-tampered.out" 2>&1 || rc=$?
    ((rc == 1)) || { cat "$WORK/verify-tampered.out" >&2; fail "verify of the altered copy exited $rc, not 1"; }
    grep -q altered "$WORK/verify-tampered.out" || { cat "$WORK/verify-tampered.out" >&2; fail "verify does not report the record as altered"; }
    grep -q "tampered.jsonl:$mid " "$WORK/verify-tampered.out" || { cat "$WORK/verify-tampered.out" >&2; fail "verify does not name line $mid"; }
    echo "rsyslog: record on line $mid of $lines altered in a copy: verify exit 1, $(grep -m1 altered "$WORK/verify-tampered.out")" >&2

    # (c) The collector crashes (SIGKILL) while the host is connected; work goes on; the host
    # keeps what it cannot send and delivers it when the collector is back.
    rsyslog_stop collector KILL
    local before
    before=$(wc -l <"$LOG")
    rsyslog_workload rsyslog-ec-2 22
    sleep 2
    echo "rsyslog: collector killed; $(($(wc -l <"$LOG") - before)) records written meanwhile; copy has $(wc -l <"$COPY") of $(wc -l <"$LOG")" >&2
    cmp -s "$LOG" "$COPY" && fail "the copy is complete although the collector was down"
    rsyslog_start collector
    rsyslog_wait_until 10 rsyslog_listening collector "$port" || fail "the restarted collector does not listen on $port"
    rsyslog_caught_up "after the collector's restart"
    [[ $COPY == "$stored" ]] || fail "the restarted collector wrote to $COPY, not $stored"
    grep -qF '"label":"rsyslog-ec-2"' "$COPY" || fail "the copy lacks the records written while the collector was down"

    # (d) The host's rsyslogd also restarts while the collector is down. imfile resumes where it
    # stopped reading and the queue waits on disk, so nothing is lost; but rsyslog puts the
    # batch its sender was retrying when it stopped (1 to 128 records) back at the end of the
    # queue, so the copy may be out of order by that batch: verify then says "reordered" (or
    # "missing", if the batch is far from its place), and the copy sorted by seq is the log,
    # byte for byte.
    rsyslog_stop host TERM
    before=$(wc -l <"$LOG")
    rsyslog_workload rsyslog-ec-3 23 # read by the host only when it is back
    rsyslog_stop collector KILL
    local offset
    offset=$(wc -c <"$WORK/host/rsyslogd.log")
    rsyslog_start host
    rsyslog_wait_until 10 rsyslog_said host "$offset" "suspended (module 'omrelp')" ||
        fail "the restarted host did not find the collector down"
    sleep 1
    rsyslog_stop host TERM
    ls "$WORK/host"/p11audit-fwd.qi >/dev/null 2>&1 || fail "the host saved no queue to disk while the collector was down"
    rsyslog_workload rsyslog-ec-4 24 # while both are down
    echo "rsyslog: host restarted and stopped while the collector was down; $(($(wc -l <"$LOG") - before)) records since; copy has $(wc -l <"$COPY") of $(wc -l <"$LOG")" >&2
    offset=$(wc -c <"$WORK/host/rsyslogd.log")
    rsyslog_start collector
    rsyslog_wait_until 10 rsyslog_listening collector "$port" || fail "the restarted collector does not listen on $port"
    rsyslog_start host
    rsyslog_wait_until 30 copy_complete || fail "after both restarted: the copy still lacks records after 30 s ($(wc -l <"$COPY") of $(wc -l <"$LOG"))"
    [[ $COPY == "$stored" ]] || fail "the restarted collector wrote to $COPY, not $stored"
    local queued
    queued=$(tail -c +$((offset + 1)) "$WORK/host/rsyslogd.log" | grep -o 'queue files exist on disk, re-starting with [0-9]* messages' | grep -o '[0-9]\+' || true)
    ((${queued:-0} > 0)) || fail "the host did not restart from a queue on disk"
    if cmp -s "$LOG" "$COPY"; then
        echo "rsyslog: after both restarted: log and collector copy identical ($queued records came from the host's disk queue)" >&2
    else
        rc=0
        "$P11AUDIT_BIN" verify --key-file "$KEY" --no-state "$COPY" >"$WORK/verify-reordered.out" 2>&1 || rc=$?
        if ((rc != 1)) || ! grep -q '^FAIL: \(reordered\|missing\) ' "$WORK/verify-reordered.out"; then
            cat "$WORK/verify-reordered.out" >&2
            fail "the copy differs from the log, and verify does not say reordered or missing"
        fi
        echo "rsyslog: after both restarted: every record arrived ($queued from the host's disk queue), $(rsyslog_moved) out of place: verify exit 1, $(grep -m1 '^FAIL' "$WORK/verify-reordered.out")" >&2
    fi
    rsyslog_sorted "$COPY" >"$WORK/sorted.jsonl"
    rc=0
    "$P11AUDIT_BIN" verify --key-file "$KEY" --no-state "$WORK/sorted.jsonl" >"$WORK/verify-sorted.out" 2>&1 || rc=$?
    ((rc == 3)) || { cat "$WORK/verify-sorted.out" >&2; fail "the copy sorted by seq does not verify (exit $rc)"; }
    log_verifies
    log_has '"fn":"C_GenerateKeyPair"' '"label":"rsyslog-ec-4"'
    # Every checkpoint that arrived, in the order it arrived (an older one received late is a
    # prefix of what was cosigned: no alarm).
    rsyslog_witness_copy || { cat "$WORK/collector/witness.err" >&2; fail "the collector's witness refused a checkpoint after the restarts"; }
    echo "rsyslog: the collector's witness has handled $WITNESSED checkpoint(s)" >&2

    # (e) A rollback on the host: its log, state and checkpoint file put back (in place) to the
    # copies of (a), then more work. The host's rsyslogd, started afresh (no read positions),
    # sends the whole log again; the collector's witness refuses the next checkpoint and names
    # the rollback.
    rsyslog_stop host TERM
    local f
    for f in "$LOG" "$LOG.state" "$LOG.checkpoint"; do
        cp "$WORK/backup/$(basename "$f")" "$f"
    done
    pkcs11-tool --module "$MODULE" --list-objects </dev/null >/dev/null 2>&1
    rm -f "$WORK/host"/imfile-state:*
    rsyslog_start host
    rsyslog_wait_until 30 rsyslog_new_checkpoint || fail "the checkpoint of the rolled-back log did not reach the collector"
    rc=0
    rsyslog_witness_copy || rc=$?
    ((rc == 1)) || { cat "$WORK/collector/witness.err" >&2; fail "the collector's witness did not refuse the rolled-back log's checkpoint (exit $rc)"; }
    grep -q rollback "$WORK/collector/witness.err" || { cat "$WORK/collector/witness.err" >&2; fail "the witness's refusal does not name the rollback"; }
    echo "rsyslog: rollback on the host caught at the collector: $(cat "$WORK/collector/witness.err")" >&2

    rsyslog_stop host TERM
    rsyslog_stop collector TERM
    # rsyslog's own messages went to their own files, none of them into the copy (cmp above);
    # none of them is an error other than the collector being unreachable.
    [[ -s $WORK/host/rsyslogd.log && -s $WORK/collector/rsyslogd.log ]] || fail "an rsyslogd.log is empty"
    if grep -h -i 'error\|lost\|discard' "$WORK/host/rsyslogd.log" "$WORK/collector/rsyslogd.log" |
        grep -vF -e "omrelp[127.0.0.1:$port]: error 'server closed relp session" \
            -e "omrelp[127.0.0.1:$port]: error 'error waiting on required session state" \
            -e "omrelp[127.0.0.1:$port]: error 'error opening connection to remote peer" \
            -e "librelp error 10007[connection broken] forwarding to server 127.0.0.1:$port" \
            -e "omrelp: could not connect to remote server, librelp error 10014" >&2; then
        fail "rsyslogd reported unexpected errors"
    fi
}
register rsyslog "rsyslog: imfile + RELP + a disk queue copy the log byte for byte to a collector; the copy verifies, an altered copy fails, collector and host restarts lose nothing, and the collector's witness cosigns every checkpoint and catches a rollback on the host"
