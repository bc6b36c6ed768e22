#!/usr/bin/env bash
# e2e of the local backend (issue 6): autoscaling, upgrades, recovery with real S3 and
# Prometheus. Needs the servers of e2e/servers/start.sh (s3, prometheus) and their env.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [ -z "${SLUICE_TEST_S3_ENDPOINT:-}" ] && [ -f "${SLUICE_RUN_DIR:-/tmp/sluice-servers}/env.sh" ]; then
    # shellcheck source=/dev/null
    source "${SLUICE_RUN_DIR:-/tmp/sluice-servers}/env.sh"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}
cargo build -p sluice-worker --bin sluice-worker
export SLUICE_WORKER_BIN="$CARGO_TARGET_DIR/debug/sluice-worker"
exec cargo test -p sluice-operator --test local_e2e -- --ignored --test-threads=1 --nocapture
