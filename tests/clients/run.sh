#!/usr/bin/env bash
# Real client programs, each against SoftHSM directly and through p11audit.
#
#   tests/clients/run.sh [CASE...]        all cases, or the named ones
#
# Prints one `PASS name` / `FAIL name` line per case and ends with `N passed, N failed`.
# Each case has CASE_TIMEOUT seconds (default 180); a hung case is killed and fails.
# Failed cases keep their working directory (printed), passed ones are removed.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export ROOT
CASE_TIMEOUT=${CASE_TIMEOUT:-180}
# shellcheck source=lib.sh
source "$ROOT/tests/clients/lib.sh"
for f in "$ROOT"/tests/clients/cases/*.sh; do
    # shellcheck disable=SC1090
    source "$f"
done

wanted=("$@")
((${#wanted[@]})) || wanted=("${CASES[@]}")

passed=0 failed=0
for name in "${wanted[@]}"; do
    [[ -n ${CASE_DESCRIPTION[$name]:-} ]] || { echo "FAIL $name (no such case)"; failed=$((failed + 1)); continue; }
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/p11audit-client-$name.XXXXXX")
    export WORK
    start=$(date +%s)
    # The case runs in its own bash so `timeout` can kill it and all it started.
    timeout --kill-after=10 "$CASE_TIMEOUT" bash -c '
        set -euo pipefail
        source "$ROOT/tests/clients/lib.sh"
        for f in "$ROOT"/tests/clients/cases/*.sh; do source "$f"; done
        cd "$WORK"
        "case_$1"
    ' _ "$name" >"$WORK/case.log" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    if ((rc == 0)); then
        echo "PASS $name (${secs}s): ${CASE_DESCRIPTION[$name]}"
        passed=$((passed + 1))
        rm -rf -- "$WORK"
    else
        why="exit $rc"
        ((rc == 124 || rc == 137)) && why="timed out after ${CASE_TIMEOUT}s"
        echo "FAIL $name (${secs}s, $why): ${CASE_DESCRIPTION[$name]}; files in $WORK"
        sed 's/^/    /' "$WORK/case.log" | tail -n 40
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
((failed == 0))
