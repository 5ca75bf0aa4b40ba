#!/usr/bin/env bash
# Install what Convoy needs to build and to run its tests, from Debian 12's
# packages. Idempotent: does nothing when everything is already installed.
# Runs as root, or as a user with sudo rights. Never leaves a packaged
# service (nginx, ...) running: services are kept from starting while
# packages install.
set -euo pipefail

packages=(
    # build
    build-essential cmake pkg-config clang libclang-rt-14-dev clang-format
    libuv1-dev libwolfssl-dev libc-ares-dev liblmdb-dev libjansson-dev zlib1g-dev
    libhttp-parser-dev libidn2-dev libcrypt-dev libcmocka-dev libhiredis-dev
    # tests: real peers and tools
    python3 python3-aiosmtpd python3-dnslib swaks dnsmasq-base nginx-light openssl
    ca-certificates lmdb-utils procps iproute2 valgrind
    # tests: shared_state (test_shared_state.py and, with TLS, test_shared_tls.py
    # start their own redis-server; Debian's is built with TLS)
    redis-server
    # tests: the DNSSEC world (a validating resolver, an authoritative
    # server, zone signing); the tests run them in the foreground
    unbound nsd ldnsutils
    # packaging (scripts/package.sh) and its checks
    debhelper dpkg-dev fakeroot lintian man-db groff-base util-linux
    # tests: an independent DKIM verifier (dkimpy; python3-nacl for Ed25519)
    python3-dkim python3-nacl
)

# promtool (checks the /metrics output) comes from Debian's prometheus
# package; only that one program is taken out of it, into $promtool_dir,
# so no Prometheus server is installed or started.
promtool_dir=/usr/local/lib/convoy-tools
install_promtool() {
    [ -x "$promtool_dir/promtool" ] && return 0
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && "${SUDO[@]}" apt-get download -q prometheus >/dev/null 2>&1 \
        || { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
             && "${SUDO[@]}" apt-get download -q prometheus >/dev/null; })
    "${SUDO[@]}" mkdir -p "$promtool_dir"
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb \
        | "${SUDO[@]}" tar -x -C "$promtool_dir" --strip-components=3 ./usr/bin/promtool
    rm -rf "$tmp"
    echo "install-deps: promtool in $promtool_dir"
}
# redis-server: the packaged service must neither run nor start at boot
# (the tests start their own on a free loopback port). systemctl disable
# works without a running systemd; the packaged daemon is stopped by its
# pid file, not by name, so a test's redis-server is left alone.
quiet_redis() {
    dpkg-query -W -f='${Status}' redis-server 2>/dev/null | grep -q 'install ok installed' || return 0
    if command -v systemctl >/dev/null; then
        "${SUDO[@]}" systemctl disable redis-server.service >/dev/null 2>&1 || true
    fi
    if [ -s /run/redis/redis-server.pid ]; then
        "${SUDO[@]}" kill "$(cat /run/redis/redis-server.pid)" >/dev/null 2>&1 || true
    fi
}
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages present"
    quiet_redis
    install_promtool
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi

echo "install-deps: installing ${missing[*]}"
# Keep packaged services (nginx, unbound, nsd, redis-server) from starting on install; remove the guard
# afterwards only if we put it there.
guard=/usr/sbin/policy-rc.d
placed=0
if [ ! -e "$guard" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$guard" >/dev/null
    "${SUDO[@]}" chmod 755 "$guard"
    placed=1
fi
cleanup() { if [ "$placed" = 1 ]; then "${SUDO[@]}" rm -f "$guard"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
# In case a service started anyway (a machine where policy-rc.d is ignored).
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    for unit in nginx.service unbound.service nsd.service redis-server.service; do
        "${SUDO[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
fi
for prog in nginx unbound nsd; do
    "${SUDO[@]}" pkill -x "$prog" >/dev/null 2>&1 || true
done
quiet_redis
install_promtool
echo "install-deps: done"
