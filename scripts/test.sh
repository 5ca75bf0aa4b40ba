#!/usr/bin/env bash
# Install dependencies, build (normal, ASan+UBSan and ThreadSanitizer), and
# run every test: unit and integration tests under ctest in all three builds
# (TSAN_SUITES below), a short run of each
# fuzzer when clang is there, the formatting check and the generated-docs
# check. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

echo "== format"
scripts/check-format.sh

echo "== build (RelWithDebInfo)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"

echo "== generated docs are current"
build/bin/convoyctl config doc | diff -u docs/convoy.conf.5.md - \
    || { echo "docs/convoy.conf.5.md is stale: run build/bin/convoyctl config doc > docs/convoy.conf.5.md" >&2; exit 1; }

echo "== man pages are current and render without warnings"
scripts/man.sh --check

echo "== tests (RelWithDebInfo)"
(cd build && ctest --output-on-failure -j"$jobs")

echo "== build (ASan+UBSan)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCONVOY_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
echo "== tests (ASan+UBSan)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j"$jobs")

echo "== build (ThreadSanitizer)"
# The queue's writer thread and the AUTH worker threads share state with the
# loop thread. halt_on_error: a race fails the test that ran into it (in the
# daemon too, whose exit the integration tests check).
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONVOY_TSAN=ON >/dev/null
cmake --build build-tsan -j"$jobs"
echo "== tests (ThreadSanitizer)"
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --output-on-failure -j"$jobs" -R "${TSAN_SUITES:-.}")

if command -v clang >/dev/null; then
    echo "== fuzzers (short runs)"
    cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
        -DCONVOY_FUZZ=ON -DCONVOY_TESTS=OFF >/dev/null
    cmake --build build-fuzz -j"$jobs"
    scripts/run-fuzzers.sh build-fuzz "${CONVOY_FUZZ_SECONDS:-20}"
fi
echo "== Debian package: build, lintian, install/upgrade/purge and a running service in a scratch root"
scripts/package.sh
if [ "$(id -u)" -eq 0 ]; then tests/package/test-package.sh dist/convoy_*.deb; else sudo tests/package/test-package.sh dist/convoy_*.deb; fi
echo "== all tests passed"
