#!/bin/sh
# bench_dkim.sh - acceptance with DKIM signing: convoyd signing with an
# RSA-2048 key, with an Ed25519 key, and unsigned, against Postfix 3.7 with
# Debian's OpenDKIM milter signing with the same RSA key, and Postfix
# unsigned. 4 KiB messages, 20 concurrent sessions, sent by Postfix's
# smtp-source, one message per connection.
#
# usage: tests/bench/bench_dkim.sh BUILD_DIR [RESULTS_FILE]
#
# Everything runs in a network namespace of its own (unshare --net, only
# its loopback up), so no port of the machine is used and nothing is left
# listening. Delivery is kept out of the measurement: convoyd's delivery is
# paused (convoyctl pause) and Postfix defers its smtp transport
# (defer_transports), so what is measured is the SMTP session, the signing,
# the queue write and the sync. Each configuration runs RUNS times (default
# 3), interleaved; the table gives the median rate (messages accepted per
# second of smtp-source's wall-clock time, counted in the queues afterwards)
# and the median CPU per message of the server's process tree (convoyd; for
# Postfix the master and its children plus the opendkim process), from
# /proc (proctree.py cpu) before and after each run.
#
# Needs root (Postfix's master), the postfix package (smtp-source) and
# opendkim; installs what is missing, with packaged services kept from
# starting. A private Postfix instance under a temporary directory is used;
# the machine's own Postfix, if any, is not touched.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "${1:?usage: bench_dkim.sh BUILD_DIR [RESULTS_FILE]}" && pwd)
OUT=${2:-/dev/stdout}
case $OUT in /* | /dev/*) ;; *) OUT=$(pwd)/$OUT ;; esac
N=${N:-1500}
RUNS=${RUNS:-3}

# ---- outside: packages, then this script again in a namespace --------------
if [ -z "${CONVOY_BENCH_NS:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "bench_dkim: needs root" >&2; exit 1; }
    missing=
    for p in postfix opendkim; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        guard=/usr/sbin/policy-rc.d
        placed=
        if [ ! -e $guard ]; then
            printf '#!/bin/sh\nexit 101\n' >$guard && chmod 755 $guard && placed=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
        if [ -n "$placed" ]; then rm -f $guard; fi
        for s in $missing; do
            if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
                systemctl disable --now "$s" >/dev/null 2>&1 || true
            else
                service "$s" stop >/dev/null 2>&1 || true
            fi
        done
    fi
    CONVOY_BENCH_NS=1 exec unshare --net "$0" "$BUILD" "$OUT"
fi

# ---- inside the namespace ---------------------------------------------------
ip link set lo up
BIN=$BUILD/mta
WORK=$(mktemp -d /tmp/convoy-bench-dkim-XXXXXX)
chmod 755 "$WORK"
PF=$WORK/postfix
PY=/usr/bin/python3
PIDS=

cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $PIDS; do wait "$p" 2>/dev/null || true; done
    postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# The message: 4 KiB, From the signing domain.
{
    printf 'From: Bench <bench@bench.test>\nTo: sink@example.org\nSubject: DKIM benchmark\n'
    printf 'Date: Sat, 05 Dec 2026 09:00:00 +0000\nMessage-ID: <bench@bench.test>\n'
    printf 'MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n'
    i=0
    while [ $i -lt 63 ]; do
        printf 'The quick brown fox jumps over the lazy dog, again and again. %02d\n' $i
        i=$((i + 1))
    done
} >"$WORK/msg.txt"

# One RSA-2048 key for both, an Ed25519 key for Convoy.
mkdir -p "$WORK/keys"
"$BIN/convoyctl" -c /dev/null dkim keygen bench.test rsa --out "$WORK/keys/rsa.pem" >/dev/null
"$BIN/convoyctl" -c /dev/null dkim keygen bench.test ed --algorithm ed25519 \
    --out "$WORK/keys/ed.pem" >/dev/null
echo "bench.test rsa keys/rsa.pem" >"$WORK/rsa.keys"
echo "bench.test ed keys/ed.pem" >"$WORK/ed.keys"

# ---- three convoyd ------------------------------------------------------------
start_convoy() { # NAME PORT KEYTABLE
    cat >"$WORK/$1.conf" <<CONF
queue_directory = $WORK/$1
myhostname = bench.test
smtpd_listen = 127.0.0.1:$2
relayhost = [127.0.0.1]:9
smtpd_session_limit = 1000
dkim_key_table = $3
CONF
    "$BIN/convoyd" -f -c "$WORK/$1.conf" 2>"$WORK/$1.log" &
    PIDS="$PIDS $!"
    eval "PID_$1=$!"
}
start_convoy c_rsa 26101 "$WORK/rsa.keys"
start_convoy c_ed 26102 "$WORK/ed.keys"
start_convoy c_none 26103 ""

# ---- opendkim ---------------------------------------------------------------------
cat >"$WORK/opendkim.conf" <<CONF
Mode s
Domain bench.test
Selector rsa
KeyFile $WORK/keys/rsa.pem
Socket inet:8891@127.0.0.1
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
InternalHosts 127.0.0.1
RequireSafeKeys false
Syslog no
UserID root
PidFile $WORK/opendkim.pid
CONF
opendkim -f -x "$WORK/opendkim.conf" 2>"$WORK/opendkim.log" &
PIDS="$PIDS $!"
PID_odkim=$!

# ---- a private Postfix: one queue, two listeners (with and without the milter) ----
mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
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
relayhost = [127.0.0.1]:9
defer_transports = smtp
milter_default_action = tempfail
maillog_file = $PF/maillog
maillog_file_prefixes = /var, /dev/stdout, /tmp
CONF
chown postfix "$PF/data"
postconf -c "$PF/etc" -F '*/*/chroot = n'
postconf -c "$PF/etc" -M# smtp/inet
postconf -c "$PF/etc" -M "127.0.0.1:26104/inet=127.0.0.1:26104 inet n - n - - smtpd"
postconf -c "$PF/etc" -M "127.0.0.1:26105/inet=127.0.0.1:26105 inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:8891"
postfix -c "$PF/etc" start >/dev/null 2>&1 || {
    echo "postfix did not start" >&2
    cat "$PF/maillog" >&2
    exit 1
}
PID_pf=$(head -1 "$PF/spool/pid/master.pid" | tr -d ' ')

wait_port() {
    $PY - "$1" <<'PY'
import socket, sys, time
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}
for p in 26101 26102 26103 26104 26105 8891; do
    wait_port $p || { echo "bench_dkim: nothing listens on $p" >&2; exit 1; }
done
for c in c_rsa c_ed c_none; do
    "$BIN/convoyctl" -c "$WORK/$c.conf" pause --reason "bench_dkim" >/dev/null
done

convoy_count() { "$BIN/convoyctl" -c "$WORK/$1.conf" queue list --count; }
postfix_count() {
    find "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" "$PF/spool/maildrop" \
        -type f 2>/dev/null | wc -l
}

# one CONFIG -> "rate cpu_ms_per_message"
one() {
    case $1 in
    c_rsa) port=26101 pids=$PID_c_rsa count="convoy_count c_rsa" ;;
    c_ed) port=26102 pids=$PID_c_ed count="convoy_count c_ed" ;;
    c_none) port=26103 pids=$PID_c_none count="convoy_count c_none" ;;
    p_none) port=26104 pids=$PID_pf count=postfix_count ;;
    p_odkim) port=26105 pids="$PID_pf $PID_odkim" count=postfix_count ;;
    esac
    b=$($count)
    c0=$($PY "$HERE/proctree.py" cpu $pids)
    t0=$(date +%s.%N)
    smtp-source -s 20 -m "$N" -F "$WORK/msg.txt" -f bench@bench.test -t sink@example.org \
        "127.0.0.1:$port" >/dev/null 2>&1 || true
    t1=$(date +%s.%N)
    sleep 2
    c1=$($PY "$HERE/proctree.py" cpu $pids)
    got=$(($($count) - b))
    [ "$got" -eq "$N" ] || echo "bench_dkim: $1: $got of $N accepted" >&2
    echo "$got $t0 $t1 $c0 $c1" | awk '{printf "%.0f %.3f\n", $1 / ($3 - $2), ($5 - $4) * 1000 / $1}'
}

# Check once that each signing configuration really signs.
smtp-source -m 1 -F "$WORK/msg.txt" -f bench@bench.test -t sink@example.org 127.0.0.1:26105 \
    >/dev/null 2>&1
sleep 1
f=$(find "$PF/spool/deferred" "$PF/spool/active" "$PF/spool/incoming" -type f | head -1)
postcat -c "$PF/etc" "$f" 2>/dev/null | grep -q '^DKIM-Signature: v=1; a=rsa-sha256' ||
    { echo "bench_dkim: Postfix + OpenDKIM did not sign" >&2; exit 1; }
for c in c_rsa c_ed; do
    smtp-source -m 1 -F "$WORK/msg.txt" -f bench@bench.test -t sink@example.org \
        "127.0.0.1:$([ $c = c_rsa ] && echo 26101 || echo 26102)" >/dev/null 2>&1
    sleep 0.5
    id=$("$BIN/convoyctl" -c "$WORK/$c.conf" queue list --json | head -1 |
        $PY -c 'import json,sys; print(json.loads(sys.stdin.readline())["id"])')
    "$BIN/convoyctl" -c "$WORK/$c.conf" queue show "$id" --headers | grep -q '^DKIM-Signature' ||
        { echo "bench_dkim: convoyd ($c) did not sign" >&2; exit 1; }
done

configs="c_rsa c_ed c_none p_odkim p_none"
r=1
while [ $r -le "$RUNS" ]; do
    for c in $configs; do
        one $c >"$WORK/res.$c.$r"
    done
    r=$((r + 1))
done

label() {
    case $1 in
    c_rsa) echo "Convoy, RSA-2048 signing" ;;
    c_ed) echo "Convoy, Ed25519 signing" ;;
    c_none) echo "Convoy, unsigned" ;;
    p_odkim) echo "Postfix 3.7 + OpenDKIM, RSA-2048 signing" ;;
    p_none) echo "Postfix 3.7, unsigned" ;;
    esac
}
{
    echo "| server | msg/s (median, min-max) | CPU ms per message (median) |"
    echo "| --- | ---: | ---: |"
    for c in $configs; do
        rates=$(cat "$WORK"/res.$c.* | awk '{print $1}' | sort -n | tr '\n' ' ')
        cpus=$(cat "$WORK"/res.$c.* | awk '{print $2}' | sort -n | tr '\n' ' ')
        echo "$(label $c)|$rates|$cpus" | awk -F'|' '{
            n = split($2, r, " "); split($3, c, " ");
            printf "| %s | %d (%d-%d) | %.3f |\n", $1, r[int((n + 1) / 2)], r[1], r[n], c[int((n + 1) / 2)] }'
    done
} >"$OUT"
