#!/usr/bin/env bash
# Sluice vs Spark Structured Streaming, side by side on the same data and cores (docs/bench.md).
#
#   bench/run.sh [--install-spark] [bench options]      e.g. bench/run.sh --install-spark
#   bench/run.sh --help                                  all options of the runner
#   bench/run.sh --nexmark [--install-flink] [--install-spark] [options]
#                                                        the Nexmark suite beside Flink and Spark (bench-nexmark;
#                                                        --help lists its options, e.g. --events)
#
# Builds the worker as shipped (cargo profile `dist`: fat LTO, one codegen unit, packed relocations
# when glibc >= 2.36 -- the container image's build; a cold build takes ~30-40 min on 2 cores) and the
# runner in release (into $SLUICE_BENCH_TARGET_DIR, default ~/.cache/sluice-target-release, so it
# never waits on a debug build's lock). SLUICE_BENCH_PROFILE=release measures a release worker
# instead (~10 min cold). Generates the IoT data once (~/.cache/sluice/bench-data), runs every
# scenario, prints the table and writes bench/results/bench.json and bench.png. With --install-spark, first makes a venv with pyspark and
# matplotlib from PyPI ($SLUICE_BENCH_VENV, default ~/.cache/sluice/bench-venv; Spark needs Java 17).
set -euo pipefail
cd "$(dirname "$0")/.."

runner=bench
if [[ "${1:-}" == "--nexmark" ]]; then
  shift
  runner=bench-nexmark
  # PyFlink (Flink's Python API with its jars; Flink 2 needs Java 17) in its own venv.
  flink_venv="${SLUICE_BENCH_FLINK_VENV:-$HOME/.cache/sluice/flink-venv}"
  if [[ "${1:-}" == "--install-flink" ]]; then
    shift
    if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; then
      echo "Flink 2 needs Java 17 or newer (e.g. apt-get install -y openjdk-17-jre-headless)" >&2
      exit 1
    fi
    if [[ ! -x "$flink_venv/bin/python" ]]; then
      python3 -m venv "$flink_venv"
    fi
    "$flink_venv/bin/pip" install --quiet --disable-pip-version-check "apache-flink==2.3.0"
  fi
  if [[ -x "$flink_venv/bin/python" ]]; then
    export SLUICE_BENCH_FLINK_PYTHON="${SLUICE_BENCH_FLINK_PYTHON:-$flink_venv/bin/python}"
  fi
fi
venv="${SLUICE_BENCH_VENV:-$HOME/.cache/sluice/bench-venv}"
if [[ "${1:-}" == "--install-spark" ]]; then
  shift
  if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; then
    echo "Spark 4 needs Java 17 or newer (e.g. apt-get install -y openjdk-17-jre-headless)" >&2
    exit 1
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "pyspark==4.3.0" "matplotlib>=3.8"
fi
if [[ -x "$venv/bin/python" ]]; then
  export SLUICE_BENCH_PYTHON="${SLUICE_BENCH_PYTHON:-$venv/bin/python}"
fi

export CARGO_TARGET_DIR="${SLUICE_BENCH_TARGET_DIR:-$HOME/.cache/sluice-target-release}"
profile="${SLUICE_BENCH_PROFILE:-dist}"
# Packed relative relocations (worker/build.rs) need glibc 2.36+ where the worker runs: here.
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
if [[ -n "$glibc" ]] && printf '2.36\n%s\n' "$glibc" | sort -V -C; then
  export SLUICE_PACK_RELOCS=1
fi
nice -n 15 cargo build --release --quiet -p sluice-bench --bins
nice -n 15 cargo build --profile "$profile" --quiet -p sluice-worker --bin sluice-worker
export SLUICE_BENCH_WORKER="$CARGO_TARGET_DIR/$profile/sluice-worker"
exec "$CARGO_TARGET_DIR/release/$runner" "$@"
