#!/bin/sh
# bench_smtpd.sh - SMTP acceptance rate of convoyd against a stock Postfix
# smtpd, both on loopback, measured with Postfix's smtp-source.
#
# usage: tests/bench/bench_smtpd.sh BUILD_DIR [RESULTS_FILE]
#
# For each message size (1 KiB, 10 KiB) and number of concurrent sessions
# (1, 20, 100), smtp-source sends a fixed number of messages, one message per
# connection (its default), to each server in turn, three times (the runs
# of the two servers interleaved); the rate is messages accepted (counted in
# each server's queue afterwards) per second of smtp-source's wall-clock
# time, and the table gives the median and the range of the three runs.
# Both servers sync every message to disk before their 250. Both relay
# through a closed port ([127.0.0.1]:9), so delivery attempts fail fast and
# cost little on either side.
#
# Postfix runs as a private instance with its own configuration, queue and
# log under a temporary directory; the system's Postfix (if any) is not used
# or touched. Needs root (Postfix's master runs as root) and the postfix
# package for smtp-source.
set -eu

BUILD=${1:?usage: bench_smtpd.sh BUILD_DIR [RESULTS_FILE]}
OUT=${2:-/dev/stdout}
BIN=$BUILD/bin
WORK=$(mktemp -d /tmp/convoy-bench-XXXXXX)
chmod 755 "$WORK" # Postfix's daemons run as the postfix user
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
maillog_file_prefixes = /var, /dev/stdout, /tmp
CONF
chown postfix "$PF/data"
postconf -c "$PF/etc" -F '*/*/chroot = n'
postconf -c "$PF/etc" -M# smtp/inet
postconf -c "$PF/etc" -M "127.0.0.1:$PPORT/inet=127.0.0.1:$PPORT inet n - n - - smtpd"
postfix -c "$PF/etc" check >/dev/null 2>&1 || true
postfix -c "$PF/etc" start >/dev/null 2>&1 || {
    echo "postfix did not start; see $PF/maillog" >&2
    cat "$PF/maillog" >&2
    exit 1
}

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

# rate PORT SIZE SESSIONS COUNT COUNTER -> "rate" (accepted messages / second)
rate() {
    b=$($5)
    t=$(run "$1" "$2" "$3" "$4")
    sleep 1
    got=$(($($5) - b))
    [ "$got" -eq "$4" ] || echo "warning: $got of $4 accepted on port $1" >&2
    echo "$got $t" | awk '{printf "%.0f", $1 / $2}'
}

{
    echo "| size | sessions | messages per run | convoyd msg/s (median, min-max) | Postfix msg/s (median, min-max) |"
    echo "| ---: | ---: | ---: | ---: | ---: |"
} >"$OUT"
for size in 1024 10240; do
    for sessions in 1 20 100; do
        case $sessions in 1) n=500 ;; 20) n=2000 ;; *) n=3000 ;; esac
        c1=$(rate "$CPORT" $size $sessions $n convoy_count)
        p1=$(rate "$PPORT" $size $sessions $n postfix_count)
        c2=$(rate "$CPORT" $size $sessions $n convoy_count)
        p2=$(rate "$PPORT" $size $sessions $n postfix_count)
        c3=$(rate "$CPORT" $size $sessions $n convoy_count)
        p3=$(rate "$PPORT" $size $sessions $n postfix_count)
        cs=$(printf '%s\n%s\n%s\n' "$c1" "$c2" "$c3" | sort -n | tr '\n' ' ')
        ps=$(printf '%s\n%s\n%s\n' "$p1" "$p2" "$p3" | sort -n | tr '\n' ' ')
        echo "$cs $ps" | awk -v s=$((size / 1024)) -v k=$sessions -v n=$n \
            '{printf "| %d KiB | %d | %d | %d (%d-%d) | %d (%d-%d) |\n", s, k, n, $2, $1, $3, $5, $4, $6}' >>"$OUT"
    done
done
