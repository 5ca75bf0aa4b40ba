#!/bin/sh
# strace_delivery.sh - system calls per delivered message in convoyd.
#
# usage: tests/bench/strace_delivery.sh [LABEL=]BUILD_DIR [[LABEL=]BUILD_DIR ...]
#   Each BUILD_DIR holds bin/convoyd, bin/convoyctl; the first also
#   tests/bench/bench_sink (cmake --build BUILD_DIR --target bench_sink).
#   Environment: N (2000, a multiple of 100) messages per run; SIZE (1024);
#   MODES ("tls none").
#
# For each mode and build in turn: a fresh bench_sink on 127.0.0.1 (mode
# "tls": it offers STARTTLS with a certificate from a test CA made here,
# convoyd uses smtp_tls_security_level = may; mode "none": no STARTTLS) and
# a fresh convoyd relaying everything to it (relayhost, 20 connections to
# the destination, connections reused: its defaults). Delivery is paused
# (`convoyctl pause`) while smtp-source puts N messages of SIZE octets into
# the queue (20 sessions, one recipient each); then `strace -f -c` is
# attached to every thread of convoyd, delivery resumed, and strace detached
# once the sink has all N messages and convoyd has logged N "status=sent"
# (the queue updates after each delivery are counted). The table gives the
# calls per delivered message of each build side by side
# (tests/bench/strace_count.py). strace slows every system call down; sync
# counts are for this load only. Needs strace, openssl and the postfix
# package (smtp-source).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
N=${N:-2000}
SIZE=${SIZE:-1024}
MODES=${MODES:-tls none}
PORT=${PORT:-26325}
SINKPORT=${SINKPORT:-26326}
PY=/usr/bin/python3
WORK=$(mktemp -d /tmp/convoy-strace-dlv-XXXXXX)
[ $# -ge 1 ] || { echo "usage: strace_delivery.sh [LABEL=]BUILD_DIR ..." >&2; exit 2; }
first=${1#*=}
SINKBIN=$first/tests/bench/bench_sink

CPID=
SPID=
KPID=
cleanup() {
    [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
    [ -n "$KPID" ] && kill "$KPID" 2>/dev/null || true
    [ -n "$CPID" ] && kill "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_port() {
    $PY - "$1" <<'PY'
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}

$PY - "$HERE/../integration" "$WORK/pki" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from pki import CA
CA(sys.argv[2]).issue("mx", ["sink.test"])
PY

wait_for() { # SECONDS COMMAND...: until COMMAND succeeds
    t=$(($1 * 10))
    shift
    while ! "$@" && [ "$t" -gt 0 ]; do
        sleep 0.1
        t=$((t - 1))
    done
}
sink_has() { grep -q "^$N " "$WORK/sink.$tag"; }
all_sent() { [ "$(grep -c 'status=sent' "$WORK/$tag.log")" -ge "$N" ]; }

cols=
for mode in $MODES; do
    for arg in "$@"; do
        case $arg in *=*) label=${arg%%=*} dir=${arg#*=} ;; *) label=$(basename "$arg") dir=$arg ;; esac
        tag=$label-$mode
        if [ "$mode" = tls ]; then
            tlsopt="-c $WORK/pki/mx-chain.pem -k $WORK/pki/mx.key"
            level=may
        else
            tlsopt=
            level=none
        fi
        # shellcheck disable=SC2086
        "$SINKBIN" $tlsopt -h sink.test -e 100 "127.0.0.1:$SINKPORT" >"$WORK/sink.$tag" &
        KPID=$!
        wait_port "$SINKPORT"
        conf=$WORK/$tag.conf
        cat >"$conf" <<CONF
queue_directory = $WORK/q.$tag
myhostname = bench.test
smtpd_listen = 127.0.0.1:$PORT
relayhost = [127.0.0.1]:$SINKPORT
smtp_tls_security_level = $level
smtp_tls_CAfile = $WORK/pki/ca.pem
default_destination_concurrency_limit = 20
smtpd_session_limit = 1000
CONF
        "$dir/bin/convoyd" -f -c "$conf" 2>"$WORK/$tag.log" &
        CPID=$!
        wait_port "$PORT"
        "$dir/bin/convoyctl" -c "$conf" pause --reason "system call count" >/dev/null
        smtp-source -l "$SIZE" -s 20 -m "$N" -f bench@bench.test -t sink@example.org \
            "127.0.0.1:$PORT" >/dev/null 2>&1 || true
        got=$("$dir/bin/convoyctl" -c "$conf" queue list --json | wc -l)
        [ "$got" -eq "$N" ] || echo "warning: $label: $got of $N messages queued" >&2
        strace -f -c -o "$WORK/$tag.strace" -p "$CPID" 2>/dev/null &
        SPID=$!
        sleep 1 # strace attaches to every thread
        "$dir/bin/convoyctl" -c "$conf" resume >/dev/null
        wait_for 300 sink_has
        wait_for 60 all_sent
        sleep 0.5
        kill -INT "$SPID"
        wait "$SPID" || true
        SPID=
        sink_has || echo "warning: $label: the sink did not get all $N messages" >&2
        echo "$label $mode: $(grep -c 'status=sent' "$WORK/$tag.log") sent," \
            "$(grep -c 'TLS connection established' "$WORK/$tag.log") TLS sessions" >&2
        kill "$CPID"
        wait "$CPID" 2>/dev/null || true
        CPID=
        kill "$KPID"
        wait "$KPID" 2>/dev/null || true
        KPID=
        cols="$cols $tag=$WORK/$tag.strace"
    done
    echo "delivery, TLS $mode: $N messages of $SIZE octets to one sink, 20 connections, reused"
    echo
    # shellcheck disable=SC2086
    $PY "$HERE/strace_count.py" "$N" $cols
    echo
    cols=
done
