#!/usr/bin/env bash
# Start the real servers the tests use, on 127.0.0.1 only, and wait until
# each one is ready. Writes ${SLUICE_RUN_DIR:-/tmp/sluice-servers}/env.sh.
#
#   e2e/servers/start.sh                 # s3 kafka prometheus postgres
#   e2e/servers/start.sh s3 kafka        # a subset
#   e2e/servers/start.sh --keep-data ... # don't wipe earlier data
#
# A server that is already running (by its PID file) is left as it is. A
# server that is not running is started with an empty data dir, unless
# --keep-data (or SLUICE_KEEP_DATA=1) is given. Ports and other settings:
# see lib.sh. Stop everything with e2e/servers/stop.sh; stop or start one
# server (outage tests) with e2e/servers/ctl.sh.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

keep=${SLUICE_KEEP_DATA:-0}
want=()
for arg in "$@"; do
    case "$arg" in
        --keep-data) keep=1 ;;
        -h | --help)
            sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        all) want+=("${ALL_SERVERS[@]}") ;;
        *)
            is_server "$arg" || die "unknown server '$arg' (known: ${ALL_SERVERS[*]})"
            want+=("$arg")
            ;;
    esac
done
[ "${#want[@]}" -gt 0 ] || want=("${ALL_SERVERS[@]}")

check_run_dir
t0=$SECONDS
# Start in a fixed order (kafka may keep its data in s3).
for s in "${ALL_SERVERS[@]}"; do
    for w in "${want[@]}"; do
        [ "$s" = "$w" ] || continue
        if ! is_running "$s" && [ "$keep" != 1 ]; then
            rm -rf "${SLUICE_RUN_DIR:?}/$s"
        fi
        start_server "$s"
        if [ "$s" = s3 ]; then check_s3_semantics; fi
        break
    done
done

write_env
log "all requested servers ready in $((SECONDS - t0))s; environment (${SLUICE_RUN_DIR}/env.sh):"
grep '^export' "$SLUICE_RUN_DIR/env.sh"
