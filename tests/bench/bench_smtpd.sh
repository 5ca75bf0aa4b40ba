#!/bin/sh
# bench_smtpd.sh - SMTP acceptance rate of convoyd against a stock Postfix
# smtpd and against Postfix's smtp-sink, all on loopback, measured with
# Postfix's smtp-source.
#
# usage: tests/bench/bench_smtpd.sh BUILD_DIR [RESULTS_FILE]
#
# For each message size (1 KiB, 10 KiB) and number of concurrent sessions
# (1, 20, 100), smtp-source sends a fixed number of messages, one message per
# connection (its default), to each server in turn, three times (the runs
# of the three servers interleaved); the rate is messages accepted per second
# of smtp-source's wall-clock time, and the table gives the median and the
# range of the runs. convoyd and Postfix sync every message to disk before
# their 250 and their accepted messages are counted in their queues
# afterwards. Both relay through a closed port ([127.0.0.1]:9), so delivery
# attempts fail fast and cost little on either side.
#
# smtp-sink is the ceiling: the same smtp-source talks to a server that
# answers EHLO (with PIPELINING) and every command like a normal one but
# keeps nothing; its accepted messages are read from its own -c counter.
# The two ratio columns divide convoyd's median by smtp-sink's and by
# Postfix's; the parenthesis gives the range of the per-run ratios (each
# run's convoyd rate over the rate of the run beside it).
#
# Environment knobs (defaults: the full matrix):
#   SIZES="1024 10240"  message sizes in bytes
#   SESSIONS="1 20 100" numbers of concurrent sessions
#   RUNS=3              runs per server and case (the median is the middle
#                       run, or the lower of the two middle ones)
#   CPORT, PPORT, SPORT loopback ports of convoyd, Postfix and smtp-sink
#
# Postfix runs as a private instance with its own configuration, queue and
# log under a temporary directory; the system's Postfix (if any) is not used
# or touched. Needs root (Postfix's master runs as root; smtp-sink drops to
# nobody) and the postfix package for smtp-source and smtp-sink.
set -eu

BUILD=${1:?usage: bench_smtpd.sh BUILD_DIR [RESULTS_FILE]}
OUT=${2:-/dev/stdout}
BIN=$BUILD/bin
WORK=$(mktemp -d /tmp/convoy-bench-XXXXXX)
chmod 755 "$WORK" # Postfix's daemons run as the postfix user
CPORT=${CPORT:-26025}
PPORT=${PPORT:-26026}
SPORT=${SPORT:-26027}
SIZES=${SIZES:-1024 10240}
SESSIONS=${SESSIONS:-1 20 100}
RUNS=${RUNS:-3}
PF=$WORK/postfix

cleanup() {
    [ -n "${CPID:-}" ] && kill "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null || true
    [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null || true
    postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # exit runs cleanup once

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

# ---- smtp-sink: the same protocol, nothing kept --------------------------
# -c: running counters (sess= quit= mesg=) written to its output at every
# end of session, QUIT and final dot; -u: it drops root after binding; a
# backlog of 256 and its default limit of 256 simultaneous connections (-m)
# cover 100 sessions. PIPELINING is announced (the default, as without -p).
smtp-sink -c -u nobody "127.0.0.1:$SPORT" 256 >"$WORK/smtp-sink.out" 2>"$WORK/smtp-sink.log" &
SPID=$!

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
wait_port "$SPORT"

convoy_count() {
    "$BIN/convoyctl" -c "$WORK/convoy.conf" queue list --json | wc -l
}
postfix_count() {
    find "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" "$PF/spool/maildrop" \
        -type f 2>/dev/null | wc -l
}
sink_count() {
    # The last "mesg=N" of the counter line (rewritten in place with \r);
    # wait_port's probe is a session without a message, so this starts at 0.
    tr '\r' '\n' <"$WORK/smtp-sink.out" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -n 1 |
        awk '{n = $1} END {print n + 0}'
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

# median LIST -> "median min max" of the numbers in LIST
median() {
    echo "$1" | tr -s ' ' '\n' | sed '/^$/d' | sort -n | awk '{v[NR] = $1} END {printf "%s %s %s", v[int((NR + 1) / 2)], v[1], v[NR]}'
}
# ratio NUMS DENS -> "median-ratio min max" (ratio of the medians, range of
# the per-run ratios of the two lists taken pairwise)
ratio() {
    printf '%s\n%s\n' "$1" "$2" | awk -v m1="$(median "$1" | cut -d' ' -f1)" \
        -v m2="$(median "$2" | cut -d' ' -f1)" '
        NR == 1 { n = split($0, a, " ") }
        NR == 2 { split($0, b, " ")
                  for (i = 1; i <= n; i++) { r = (b[i] > 0 ? a[i] / b[i] : 0)
                      if (i == 1 || r < lo) lo = r; if (i == 1 || r > hi) hi = r }
                  printf "%.2f %.2f %.2f", (m2 > 0 ? m1 / m2 : 0), lo, hi }'
}

{
    echo "| size | sessions | messages per run | convoyd msg/s (median, min-max) | Postfix msg/s (median, min-max) | smtp-sink msg/s (median, min-max) | convoyd/smtp-sink | convoyd/Postfix |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$OUT"
for size in $SIZES; do
    for sessions in $SESSIONS; do
        case $sessions in 1) n=500 ;; 20) n=2000 ;; *) n=3000 ;; esac
        cs='' ps='' ss=''
        i=0
        while [ "$i" -lt "$RUNS" ]; do
            cs="$cs $(rate "$CPORT" "$size" "$sessions" $n convoy_count)"
            ps="$ps $(rate "$PPORT" "$size" "$sessions" $n postfix_count)"
            ss="$ss $(rate "$SPORT" "$size" "$sessions" $n sink_count)"
            i=$((i + 1))
        done
        echo "$(median "$cs") $(median "$ps") $(median "$ss") $(ratio "$cs" "$ss") $(ratio "$cs" "$ps")" |
            awk -v s=$((size / 1024)) -v k="$sessions" -v n=$n '{printf "| %d KiB | %d | %d | %d (%d-%d) | %d (%d-%d) | %d (%d-%d) | %s (%s-%s) | %s (%s-%s) |\n", s, k, n, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15}' >>"$OUT"
    done
done
