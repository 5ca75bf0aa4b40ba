#!/bin/sh
# strace_smtpd.sh - system calls per accepted message in convoyd.
#
# usage: tests/bench/strace_smtpd.sh [LABEL=]BUILD_DIR [[LABEL=]BUILD_DIR ...]
#   Environment: N (2000) messages per run; SIZE (1024); SESSIONS (20);
#   CLIENTS ("smtp-source pipe"); WARM (200) messages sent before counting.
#
# For each build and each client in turn: a fresh convoyd (queue in a
# temporary directory, delivery paused with `convoyctl pause` so that only
# acceptance runs), WARM messages to warm it up, then `strace -f -c` attached
# to every thread of convoyd while the client sends N messages of SIZE
# octets in SESSIONS concurrent sessions, one message per connection, one
# recipient; strace is detached once the client has its last 250 (each 250
# comes after the message is synced to disk). The table gives the calls per
# message of each build side by side (tests/bench/strace_count.py).
# Clients: "smtp-source" (the postfix package; one command at a time) and
# "pipe" (tests/bench/pipe_source.py: MAIL, RCPT and DATA pipelined in one
# write, then the body with the final dot in one write, as a pipelining MTA
# sends them). strace slows every system call down, and with it how many
# messages share one sync: the sync counts are for this load only.
# Needs strace and, for the smtp-source client, the postfix package.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
N=${N:-2000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-20}
CLIENTS=${CLIENTS:-smtp-source pipe}
WARM=${WARM:-200}
PORT=${PORT:-26225}
PY=/usr/bin/python3
WORK=$(mktemp -d /tmp/convoy-strace-XXXXXX)
[ $# -ge 1 ] || { echo "usage: strace_smtpd.sh [LABEL=]BUILD_DIR ..." >&2; exit 2; }

CPID=
SPID=
cleanup() {
    [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
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

send() { # CLIENT COUNT
    case $1 in
    smtp-source)
        smtp-source -l "$SIZE" -s "$SESSIONS" -m "$2" -f bench@bench.test \
            -t sink@example.org "127.0.0.1:$PORT" >/dev/null 2>&1 || true
        ;;
    pipe) $PY "$HERE/pipe_source.py" "127.0.0.1:$PORT" "$SESSIONS" "$2" "$SIZE" ;;
    esac
}

cols=
for client in $CLIENTS; do
    for arg in "$@"; do
        case $arg in *=*) label=${arg%%=*} dir=${arg#*=} ;; *) label=$(basename "$arg") dir=$arg ;; esac
        tag=$label-$client
        conf=$WORK/$tag.conf
        cat >"$conf" <<CONF
queue_directory = $WORK/q.$tag
myhostname = bench.test
smtpd_listen = 127.0.0.1:$PORT
relayhost = [127.0.0.1]:9
smtpd_session_limit = 1000
CONF
        "$dir/bin/convoyd" -f -c "$conf" 2>"$WORK/$tag.log" &
        CPID=$!
        wait_port "$PORT"
        "$dir/bin/convoyctl" -c "$conf" pause --reason "system call count" >/dev/null
        send "$client" "$WARM"
        strace -f -c -o "$WORK/$tag.strace" -p "$CPID" 2>/dev/null &
        SPID=$!
        sleep 1 # strace attaches to every thread
        send "$client" "$N"
        sleep 0.5
        kill -INT "$SPID"
        wait "$SPID" || true
        SPID=
        got=$("$dir/bin/convoyctl" -c "$conf" queue list --json | wc -l)
        [ "$got" -eq $((WARM + N)) ] ||
            echo "warning: $label: $got of $((WARM + N)) messages in the queue" >&2
        kill "$CPID"
        wait "$CPID" 2>/dev/null || true
        CPID=
        cols="$cols $tag=$WORK/$tag.strace"
    done
    echo "client $client: $N messages of $SIZE octets, $SESSIONS sessions, one message per connection"
    echo
    # shellcheck disable=SC2086
    $PY "$HERE/strace_count.py" "$N" $cols
    echo
    cols=
done
