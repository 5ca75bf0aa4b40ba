#!/usr/bin/env bash
# Install dependencies, build, and run convoyd in the foreground on its
# built-in defaults: SMTP on 127.0.0.1:2525, state under ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
exec build/bin/convoyd -f "$@"
