#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time: coverage-guided fuzzing with libFuzzer
# through cargo-fuzz. Exits non-zero on any crash (a panic, a broken assertion, a timeout, an
# out-of-memory) and prints the crashing input. `.ci/run` calls it; developers can too.
#
# Why cargo-fuzz on the stable toolchain: CI machines have only the stable toolchain (no nightly
# can be installed there). cargo-fuzz's default AddressSanitizer needs nightly's `-Zsanitizer`, but
# `--sanitizer none` uses only stable flags (`-Cpasses=sancov-module` and LLVM's sanitizer-coverage
# options), so libFuzzer still gets full coverage feedback. Sluice is safe Rust: what the fuzzer
# hunts here are panics and broken contracts, which need no sanitizer. `--dev` (unoptimized)
# because the worker targets link DataFusion, whose optimized instrumented build takes far longer.
#
# Environment (optional):
#   FUZZ_SECONDS       seconds per target (default 45)
#   FUZZ_TARGETS       space-separated targets to run (default: all of fuzz/Cargo.toml's)
#   FUZZ_ARGS          extra libFuzzer flags, space-separated (e.g. `-max_len=16384`)
#   FUZZ_WORK_DIR      inputs found and crash artifacts (default ${TMPDIR:-/tmp}/sluice-fuzz,
#                      emptied first; the committed seeds in fuzz/corpus/ are read, never written)
#   CARGO_TARGET_DIR   the build goes to its subfolder `fuzz/`: other RUSTFLAGS than the main
#                      build, which would otherwise be rebuilt from scratch after each fuzz build
#   SLUICE_CACHE       cargo-fuzz is installed into $SLUICE_CACHE/bin (default ~/.cache/sluice)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${FUZZ_SECONDS:-45}
TARGETS=${FUZZ_TARGETS:-manifest duration decode_json decode_csv scan_json sql_plan}
WORK=${FUZZ_WORK_DIR:-${TMPDIR:-/tmp}/sluice-fuzz}
read -r -a extra_args <<<"${FUZZ_ARGS:-}"
SLUICE_CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/fuzz/target}/fuzz
export PATH="$SLUICE_CACHE/bin:$PATH"

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    # Built in a temporary target dir (not the main build's).
    env -u CARGO_TARGET_DIR cargo install --locked cargo-fuzz \
        --version "$CARGO_FUZZ_VERSION" --root "$SLUICE_CACHE"
fi

cargo fmt --manifest-path fuzz/Cargo.toml -- --check

fuzz_opts=(--sanitizer none --dev --target-dir "$TARGET_DIR")
cargo fuzz build "${fuzz_opts[@]}"

rm -rf "$WORK"
failed=()
for target in $TARGETS; do
    mkdir -p "$WORK/corpus/$target" "$WORK/artifacts/$target"
    # Keywords and field names the mutations splice in (fuzz/dict/<target>.dict).
    dict=()
    if [ -f "fuzz/dict/$target.dict" ]; then dict=(-dict="fuzz/dict/$target.dict"); fi
    printf '\n--- fuzz %s for %ss\n' "$target" "$SECONDS_PER_TARGET"
    # The first corpus dir receives new inputs; the committed seeds (and past crashes kept as
    # regression inputs) in fuzz/corpus/<target> all run first. The full output (a line per new
    # input) goes to a log; a success shows its summary, a crash the log's end.
    log="$WORK/$target.log"
    if cargo fuzz run "${fuzz_opts[@]}" "$target" "$WORK/corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="$WORK/artifacts/$target/" -print_final_stats=1 -print_funcs=0 \
        "${dict[@]}" "${extra_args[@]}" >"$log" 2>&1; then
        grep -E '^(INFO: (Loaded 1 modules|seed corpus)|#[0-9]+[[:space:]]+(INITED|DONE)|Done |stat::)' \
            "$log" || true
        continue
    fi
    tail -n 150 "$log"
    failed+=("$target")
    for input in "$WORK/artifacts/$target"/*; do
        [ -f "$input" ] || continue
        printf '\n--- %s crashed on %s (%s bytes), as characters:\n' \
            "$target" "$input" "$(wc -c <"$input")"
        od -A d -c "$input" | head -n 64
        printf -- '--- base64: %s\n' "$(base64 -w0 "$input")"
        printf -- '--- reproduce: cargo fuzz run %s %s %s\n' "${fuzz_opts[*]}" "$target" "$input"
    done
done

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\nfuzz targets that crashed: %s\n' "${failed[*]}"
    exit 1
fi
printf '\nfuzz: no crash in %s (%ss each)\n' "$TARGETS" "$SECONDS_PER_TARGET"
