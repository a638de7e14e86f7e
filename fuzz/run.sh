#!/usr/bin/env bash
# Runs every fuzz target for a bounded time with libFuzzer, on the stable
# toolchain (the coverage instrumentation cargo fuzz would add, passed by
# hand): `bash fuzz/run.sh [SECONDS_PER_TARGET]` (default 20).
#
# Each target starts from its corpus in fuzz/corpus/TARGET (kept in the
# repository: inputs that reached new code, and every input that once
# failed); what it finds this run goes to a scratch directory, so the
# checkout stays clean. A failing input is copied to fuzz/artifacts/ and
# the run exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-20}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/tollgate-fuzz-target}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
# Instrumented code only for the target itself: build scripts and
# procedural macros are built without (hence the explicit --target).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --locked --release --bins --target "$triple" --quiet

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=0
for target in classify strict_json validate; do
  mkdir -p "$scratch/$target" "$scratch/crash-$target"
  echo "fuzz: $target for ${seconds}s"
  if ! "$CARGO_TARGET_DIR/$triple/release/$target" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$scratch/crash-$target/" \
      "$scratch/$target" "corpus/$target" >"$scratch/$target.log" 2>&1; then
    failed=1
    mkdir -p artifacts
    cp "$scratch/crash-$target/"* artifacts/ 2>/dev/null || true
    tail -n 40 "$scratch/$target.log"
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/ (add it to fuzz/corpus/$target once fixed)" >&2
  else
    grep -E '^stat::number_of_executed_units|^Done' "$scratch/$target.log" | sed "s/^/  $target: /"
  fi
done
exit "$failed"
