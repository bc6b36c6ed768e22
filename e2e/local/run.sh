#!/usr/bin/env bash
# e2e of the local backend (issue 6): autoscaling, stateful upgrades, the partitionKey scaling
# rule and recovery with real S3, Prometheus and Kafka. Needs the servers of
# e2e/servers/start.sh (s3, prometheus, kafka) and their env.sh (sourced here when the
# variables are not set yet). About 3 minutes on 2 cores (tests), plus the build.
# Extra arguments go to the test binary, e.g. `e2e/local/run.sh partition_key` runs one test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
run_dir=${SLUICE_RUN_DIR:-/tmp/sluice-servers}
if [ -z "${SLUICE_TEST_S3_ENDPOINT:-}" ] && [ -f "$run_dir/env.sh" ]; then
    # shellcheck source=/dev/null
    source "$run_dir/env.sh"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}
# The same build as the workspace's nextest run (`cargo build -p` would resolve other features and
# rebuild DataFusion).
cargo test --workspace --no-run
# A private copy: a later build into the shared target dir must not swap the binary mid-test.
mkdir -p "$run_dir/bin"
cp "$CARGO_TARGET_DIR/debug/sluice-worker" "$run_dir/bin/sluice-worker-e2e"
export SLUICE_WORKER_BIN="$run_dir/bin/sluice-worker-e2e"
exec cargo nextest run --workspace --no-fail-fast --run-ignored only --test-threads 1 --no-capture \
    -E 'binary(local_e2e)' "$@"
