#!/usr/bin/env bash
# Run every fuzzer in BUILD_DIR/tests/fuzz for SECONDS each, starting from
# the seed corpus in tests/fuzz/corpus/<name>/ (copied, so the repo's seeds
# are not changed). Fails if any fuzzer finds a crash.
set -euo pipefail
build=${1:?usage: run-fuzzers.sh BUILD_DIR [SECONDS]}
secs=${2:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shopt -s nullglob
count=0
for bin in "$build"/tests/fuzz/fuzz_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin"); name=${name#fuzz_}
    mkdir -p "$work/$name"
    if [ -d "$root/tests/fuzz/corpus/$name" ]; then cp -r "$root/tests/fuzz/corpus/$name/." "$work/$name/"; fi
    echo "fuzz $name: ${secs}s"
    "$bin" -max_total_time="$secs" -print_final_stats=0 -artifact_prefix="$work/$name-" \
        "$work/$name" >"$work/$name.log" 2>&1 \
        || { tail -40 "$work/$name.log"; echo "fuzzer $name failed" >&2; exit 1; }
    count=$((count + 1))
done
echo "fuzzers: $count ran, none crashed"
