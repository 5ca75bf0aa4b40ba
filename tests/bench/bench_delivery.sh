#!/bin/sh
# bench_delivery.sh - end-to-end relay throughput of convoyd against a stock
# Postfix: messages submitted over SMTP, queued (synced to disk), and
# delivered over SMTP to Postfix's smtp-sink, all on loopback.
#
# usage: tests/bench/bench_delivery.sh BUILD_DIR [RESULTS_FILE]
#        (CONVOYD=/path/to/convoyd overrides BUILD_DIR/mta/convoyd)
#
# For each message size (1 KiB, 10 KiB) smtp-source submits a fixed number of
# messages over 20 concurrent sessions to each MTA in turn; both MTAs relay
# everything to one smart host ([127.0.0.1]:SINK, an smtp-sink) with the same
# limits (20 connections to the destination, connection reuse on, no TLS).
# The rate is messages delivered (a "status=sent" log line, which each MTA
# writes only after the sink's 250) divided by the wall-clock time from the
# first submission to the last delivery.
#
# Then the MTA-STS run (tests/bench/bench_sts.py): convoyd alone, delivering
# by MX lookup to a STARTTLS sink, once to a domain without a policy and once
# to a domain with an enforce policy (verified TLS on every connection), with
# the number of policy fetches a burst of 10,000 messages costs.
#
# Postfix runs as a private instance with its own configuration, queue and
# log under a temporary directory; the system's Postfix (if any) is not used
# or touched, and the private one is stopped on exit. Needs root (Postfix's
# master runs as root) and the postfix package (smtp-source, smtp-sink).
set -eu

BUILD=${1:?usage: bench_delivery.sh BUILD_DIR [RESULTS_FILE]}
OUT=${2:-/dev/stdout}
CONVOYD=${CONVOYD:-$BUILD/mta/convoyd}
WORK=$(mktemp -d /tmp/convoy-bench-dlv-XXXXXX)
chmod 755 "$WORK" # Postfix's daemons run as the postfix user
CPORT=${CPORT:-26125}
PPORT=${PPORT:-26126}
SINK=${SINK:-26127}
PF=$WORK/postfix

cleanup() {
    [ -n "${CPID:-}" ] && kill "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null || true
    [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null || true
    postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# ---- the smart host: Postfix's smtp-sink (PIPELINING, answers 250) --------
smtp-sink -u nobody 127.0.0.1:$SINK 256 >/dev/null 2>&1 &
SPID=$!

# ---- convoyd ------------------------------------------------------------
cat >"$WORK/convoy.conf" <<CONF
queue_directory = $WORK/convoy
myhostname = bench.test
smtpd_listen = 127.0.0.1:$CPORT
relayhost = [127.0.0.1]:$SINK
smtp_tls_security_level = none
default_destination_concurrency_limit = 20
CONF
"$CONVOYD" -f -c "$WORK/convoy.conf" 2>"$WORK/convoyd.log" &
CPID=$!

# ---- a private, otherwise stock Postfix ------------------------------------
mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
chown postfix "$PF/data" # master's lock file lives there
cp /etc/postfix/master.cf /etc/postfix/dynamicmaps.cf "$PF/etc/"
cat >"$PF/etc/main.cf" <<CONF
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
relayhost = [127.0.0.1]:$SINK
smtp_tls_security_level = none
default_destination_concurrency_limit = 20
maillog_file = $PF/maillog
maillog_file_prefixes = $WORK
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
wait_port "$SINK"
wait_port "$CPORT"
wait_port "$PPORT"

sent_in() {
    grep -c "status=sent" "$1" 2>/dev/null || true
}

# run PORT LOG SIZE COUNT -> "seconds delivered"
run() {
    before=$(sent_in "$2")
    start=$(date +%s.%N)
    smtp-source -c -l "$3" -s 20 -m "$4" -f bench@bench.test -t sink@example.org \
        "127.0.0.1:$1" >/dev/null 2>&1 || true
    want=$((before + $4))
    i=0
    while [ "$(sent_in "$2")" -lt "$want" ] && [ $i -lt 1200 ]; do
        sleep 0.05
        i=$((i + 1))
    done
    end=$(date +%s.%N)
    got=$(($(sent_in "$2") - before))
    echo "$start $end $got" | awk '{printf "%.3f %d", $2 - $1, $3}'
}

{
    echo "| size | messages | convoyd msg/s | Postfix msg/s |"
    echo "| ---: | ---: | ---: | ---: |"
} >"$OUT"
for size in 1024 10240; do
    n=2000
    set -- $(run "$CPORT" "$WORK/convoyd.log" $size $n)
    crate=$(echo "$2 $1" | awk '{printf "%.0f", $1 / $2}')
    cres="$crate ($2 in ${1}s)"
    set -- $(run "$PPORT" "$PF/maillog" $size $n)
    prate=$(echo "$2 $1" | awk '{printf "%.0f", $1 / $2}')
    pres="$prate ($2 in ${1}s)"
    echo "| $((size / 1024)) KiB | $n | $cres | $pres |" >>"$OUT"
done

# ---- MTA-STS enforce vs no policy (convoyd only) ----------------------------
{
    echo
    echo "MTA-STS: 10000 messages of 1 KiB to one domain, no policy vs enforce"
    echo
} >>"$OUT"
/usr/bin/python3 "$(dirname "$0")/bench_sts.py" "$BUILD" 10000 "$OUT" >/dev/null
