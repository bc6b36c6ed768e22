#!/usr/bin/env bash
# Stop every server that start.sh or ctl.sh started, by the PID in its PID
# file (never by process name). Data stays in ${SLUICE_RUN_DIR} until the
# next start.sh. Safe to run when nothing is running.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ -d "$SLUICE_RUN_DIR" ] || exit 0
# Reverse start order: kafka may keep its data in s3.
for s in tlsproxy kafkatls postgres prometheus kafka s3; do
    if [ -f "$(pid_file "$s")" ]; then
        stop_server "$s"
    fi
done
write_env
