#!/usr/bin/env bash
# Stop or start one server, keeping its data dir, to simulate outages.
#
#   e2e/servers/ctl.sh stop    <s3|kafka|prometheus|postgres>  # SIGTERM (postgres: fast shutdown), wait
#   e2e/servers/ctl.sh kill    <name>                          # SIGKILL: a crash
#   e2e/servers/ctl.sh start   <name>                          # same ports, same data
#   e2e/servers/ctl.sh restart <name>
#   e2e/servers/ctl.sh status  [name...]                       # exit 1 if any is down
#
# Note: with the default SLUICE_KAFKA_STORAGE=memory, tansu forgets all
# topics when it stops; start servers with SLUICE_KAFKA_STORAGE=s3 to keep them.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ "$#" -ge 1 ] || usage
cmd=$1
shift
check_run_dir
case "$cmd" in
    stop | kill | start | restart)
        [ "$#" -eq 1 ] || usage
        is_server "$1" || die "unknown server '$1' (known: ${ALL_SERVERS[*]})"
        case "$cmd" in
            stop) stop_server "$1" ;;
            kill) stop_server "$1" KILL ;;
            start) start_server "$1" ;;
            restart)
                stop_server "$1"
                start_server "$1"
                ;;
        esac
        ;;
    status)
        [ "$#" -gt 0 ] || set -- "${ALL_SERVERS[@]}"
        rc=0
        for s in "$@"; do
            is_server "$s" || die "unknown server '$s'"
            if pid=$(live_pid "$s"); then
                echo "$s: running (pid $pid, 127.0.0.1:$(port_of "$s"))"
            else
                echo "$s: stopped"
                rc=1
            fi
        done
        exit "$rc"
        ;;
    *) usage ;;
esac
