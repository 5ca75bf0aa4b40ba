#!/bin/sh
# bench_smtpd.sh - SMTP acceptance rate of convoyd against a stock Postfix
# smtpd, both on loopback, measured with Postfix's smtp-source.
#
# usage: tests/bench/bench_smtpd.sh BUILD_DIR [RESULTS_FILE]
#
# For each message size (1 KiB, 10 KiB) and number of concurrent sessions
# (1, 20, 100), smtp-source sends a fixed number of messages, one message per
# connection (its default), to each server in turn; the rate is messages
# accepted (250 after DATA, counted in each server's queue afterwards) per
# second of wall-clock time. Both servers sync every message to disk before
# their 250. Both relay through a closed port ([127.0.0.1]:9), so delivery
# attempts fail fast and cost little on either side.
#
# Postfix runs as a private instance with its own configuration, queue and
# log under a temporary directory; the system's Postfix (if any) is not used
# or touched. Needs root (Postfix's master runs as root) and the postfix
# package for smtp-source.
set -eu

BUILD=${1:?usage: bench_smtpd.sh BUILD_DIR [RESULTS_FILE]}
OUT=${2:-/dev/stdout}
BIN=$BUILD/mta
WORK=$(mktemp -d /tmp/convoy-bench-XXXXXX)
CPORT=${CPORT:-26025}
PPORT=${PPORT:-26026}
PF=$WORK/postfix

cleanup() {
    [ -n "${CPID:-}" ] && kill "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null || true
    postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# ---- convoyd ------------------------------------------------------------
cat > "$WORK/convoy.conf" <<CONF
queue_directory = $WORK/convoy
myhostname = bench.test
smtpd_listen = 127.0.0.1:$CPORT
relayhost = [127.0.0.1]:9
smtpd_session_limit = 1000
CONF
"$BIN/convoyd" -f -c "$WORK/convoy.conf" 2>"$WORK/convoyd.log" &
CPID=$!

# ---- a private, otherwise stock Postfix ------------------------------------
mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
cp /etc/postfix/master.cf /etc/postfix/dynamicmaps.cf "$PF/etc/"
cat > "$PF/etc/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:9
maillog_file = $PF/maillog
CONF
postconf -c "$PF/etc" -F '*/*/chroot = n'
postconf -c "$PF/etc" -M# smtp/inet
postconf -c "$PF/etc" -M "127.0.0.1:$PPORT/inet=127.0.0.1:$PPORT inet n - n - - smtpd"
postfix -c "$PF/etc" check >/dev/null 2>&1 || true
postfix -c "$PF/etc" start >/dev/null 2>&1

wait_port() {
    /usr/bin/python3 - "$1" <<'PY'
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
wait_port "$CPORT"
wait_port "$PPORT"

convoy_count() {
    "$BIN/convoyctl" -c "$WORK/convoy.conf" queue list --json | wc -l
}
postfix_count() {
    find "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" "$PF/spool/maildrop" \
        -type f 2>/dev/null | wc -l
}

# run PORT SIZE SESSIONS COUNT -> prints seconds
run() {
    start=$(date +%s.%N)
    smtp-source -c -l "$2" -s "$3" -m "$4" -f bench@bench.test -t sink@example.org \
        "127.0.0.1:$1" >/dev/null 2>&1 || true
    end=$(date +%s.%N)
    echo "$start $end" | awk '{printf "%.3f", $2 - $1}'
}

{
    echo "| size | sessions | messages | convoyd msg/s | Postfix msg/s |"
    echo "| ---: | ---: | ---: | ---: | ---: |"
} >"$OUT"
for size in 1024 10240; do
    for sessions in 1 20 100; do
        case $sessions in 1) n=500 ;; 20) n=2000 ;; *) n=3000 ;; esac
        b=$(convoy_count)
        t=$(run "$CPORT" $size $sessions $n)
        got=$(($(convoy_count) - b))
        crate=$(echo "$got $t" | awk '{printf "%.0f", $1 / $2}')
        b=$(postfix_count)
        t2=$(run "$PPORT" $size $sessions $n)
        sleep 1
        got2=$(($(postfix_count) - b))
        prate=$(echo "$got2 $t2" | awk '{printf "%.0f", $1 / $2}')
        echo "| $((size / 1024)) KiB | $sessions | $n | $crate ($got in ${t}s) | $prate ($got2 in ${t2}s) |" >>"$OUT"
    done
done
