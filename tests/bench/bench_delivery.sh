#!/bin/sh
# bench_delivery.sh - end-to-end relay throughput and cost of convoyd against
# a stock Postfix in the same world: messages submitted over SMTP, queued
# (synced to disk) and delivered over STARTTLS to one sink, with and without
# an MTA-STS enforce policy.
#
# usage: tests/bench/bench_delivery.sh BUILD_DIR [RESULTS_FILE]
#   BUILD_DIR holds bin/convoyd and tests/bench/bench_sink (a Release build:
#   cmake --build BUILD_DIR --target convoyd bench_sink).
#   Environment: RUNS (3) runs of each case; N (2000) messages per relay run;
#   STS_N (10000) messages per MTA-STS run; SIZES ("1024 10240");
#   MODES ("tls none"); PHASES ("relay sts"); PF_TLS_REUSE (yes):
#   Postfix's smtp_tls_connection_reuse; LIMIT (6000): give up waiting for
#   the sink after LIMIT / 20 seconds; KEEP (unset): keep the work directory.
#   About ten minutes with the defaults. Not part of ctest or the test run.
#
# Needs root: it creates a network namespace and runs Postfix's master. It
# installs what is missing with apt-get (postfix, postfix-mta-sts-resolver,
# nginx-light, dnsmasq-base, openssl, python3), with a policy-rc.d guard so
# that no packaged service starts, and stops any that did.
#
# The world. Everything runs inside a network namespace made for the run
# ("convoybench", only its loopback interface, removed on exit), so that
# dnsmasq can answer on 127.0.0.1:53 and the programs that use the system
# resolver (Postfix, postfix-mta-sts-resolver) resolve through it: "ip netns
# exec" mounts /etc/netns/convoybench/resolv.conf over /etc/resolv.conf.
#   127.0.0.1:53    dnsmasq: MX plain.test -> mx.plain.test, MX enforce.test
#                   -> mx.enforce.test, both A 127.0.0.2; TXT
#                   _mta-sts.enforce.test "v=STSv1; id=bench1"
#   127.0.0.1:443   nginx: https://mta-sts.enforce.test/.well-known/mta-sts.txt
#                   (mode: enforce, mx: mx.enforce.test, max_age: 86400)
#   127.0.0.2:25    bench_sink (tests/bench/bench_sink.c): STARTTLS with a
#                   certificate for mx.plain.test and mx.enforce.test from a
#                   test CA made here (tests/integration/pki.py); answers at
#                   once and keeps nothing.
#   127.0.0.1:8461  mta-sts-daemon (Postfix's smtp_tls_policy_maps), STS runs
#   convoyd on 127.0.0.1:26125, a private Postfix on 127.0.0.1:26126 (own
#   configuration, queue and log under a temporary directory, chroot off;
#   the system's Postfix is neither used nor touched).
# Both MTAs trust the test CA (convoyd and Postfix: smtp_tls_CAfile; the
# resolver: SSL_CERT_FILE) and nothing else.
#
# Phase "relay": both MTAs relay everything to [127.0.0.2]:25 with
# opportunistic TLS (mode "tls": STARTTLS, certificate not required to
# verify) or none (mode "none", the sink offers no STARTTLS);
# default_destination_concurrency_limit 20 and connection reuse in both.
# Phase "sts": delivery by MX lookup, to plain.test (no policy) and to
# enforce.test (enforce: verified TLS to mx.enforce.test on every
# connection); convoyd with its built-in MTA-STS, Postfix with
# postfix-mta-sts-resolver (socketmap) configured in both runs.
#
# One run: a fresh sink and a fresh MTA (new queue), then smtp-source -s 20
# -m N -l SIZE (20 submission sessions, one message per connection, one
# recipient). Measured per run:
#   seconds   from the start of smtp-source to the moment the sink answered
#             250 to the Nth message (the sink stamps it)
#   msg/s     N / seconds
#   CPU       user + system seconds of the whole MTA between just before the
#             submissions and 1 s after its log shows N "status=sent":
#             convoyd's process; for Postfix, master and every process under
#             it (smtpd, cleanup, qmgr, trivial-rewrite, smtp, tlsmgr,
#             tlsproxy, postlogd, ...), those that exited counted through
#             master's cutime/cstime, plus mta-sts-daemon in the STS phase
#             (tests/bench/proctree.py cpu)
#   peak RSS  the highest sum of VmRSS (and of Pss) over those processes,
#             sampled every 100 ms during the run (proctree.py peak); for
#             convoyd also its VmHWM
#   fetches   policy fetches seen in nginx's access log during the run
#   sink CPU  the sink's own CPU seconds over the same interval
# The two MTAs' runs are interleaved (their order alternates). Results go to
# RESULTS_FILE (default: standard output): every run, then the medians.
set -eu

NS=convoybench
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "${1:?usage: bench_delivery.sh BUILD_DIR [RESULTS_FILE]}" && pwd)
OUT=${2:-/dev/stdout}
case $OUT in /*) ;; *) OUT=$(pwd)/$OUT ;; esac

# ---- outside: packages, the namespace, then this script again inside it ----
if [ -z "${CONVOY_BENCH_NS:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "bench_delivery: needs root" >&2; exit 1; }
    missing=
    for p in postfix postfix-mta-sts-resolver nginx-light dnsmasq-base openssl python3; do
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
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            $missing || true
        if [ -n "$placed" ]; then rm -f $guard; fi
        # Only the services of packages installed just now: a machine's own
        # Postfix or nginx is left as it was.
        svcs=
        for p in $missing; do
            case $p in
            postfix | postfix-mta-sts-resolver) svcs="$svcs $p" ;;
            nginx-light) svcs="$svcs nginx" ;;
            esac
        done
        for s in $svcs; do
            if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
                systemctl disable --now $s >/dev/null 2>&1 || true
            else
                service $s stop >/dev/null 2>&1 || true
            fi
        done
    fi
    if ip netns list | grep -qw "^$NS"; then
        echo "bench_delivery: namespace $NS exists (another run? else: ip netns del $NS)" >&2
        exit 1
    fi
    WORK=$(mktemp -d /tmp/convoy-bench-dlv-XXXXXX)
    chmod 755 "$WORK" # Postfix's daemons run as the postfix user
    IPID=
    made_etc=
    outer_cleanup() {
        # The script inside stops what it started; give it time, then stop
        # whatever is left in the namespace.
        if [ -n "$IPID" ] && kill -0 "$IPID" 2>/dev/null; then
            kill "$IPID" 2>/dev/null || true
            i=0
            while kill -0 "$IPID" 2>/dev/null && [ $i -lt 150 ]; do
                sleep 0.1
                i=$((i + 1))
            done
        fi
        for p in $(ip netns pids $NS 2>/dev/null); do kill "$p" 2>/dev/null || true; done
        sleep 1
        for p in $(ip netns pids $NS 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del $NS 2>/dev/null || true
        rm -rf /etc/netns/$NS
        if [ -n "$made_etc" ]; then rmdir /etc/netns 2>/dev/null || true; fi
        [ -n "${KEEP:-}" ] || rm -rf "$WORK"
    }
    trap outer_cleanup EXIT
    trap 'exit 130' INT TERM
    made_etc=
    [ -d /etc/netns ] || made_etc=1
    ip netns add $NS
    mkdir -p /etc/netns/$NS
    echo "nameserver 127.0.0.1" >/etc/netns/$NS/resolv.conf
    # In the background, so that a signal to this shell is handled at once.
    ip netns exec $NS env CONVOY_BENCH_NS=$NS CONVOY_BENCH_WORK="$WORK" \
        sh "$0" "$BUILD" "$OUT" &
    IPID=$!
    rc=0
    wait $IPID || rc=$?
    IPID=
    exit $rc
fi

# ---- inside the namespace ----------------------------------------------------
RUNS=${RUNS:-3}
N=${N:-2000}
STS_N=${STS_N:-10000}
SIZES=${SIZES:-1024 10240}
MODES=${MODES:-tls none}
PHASES=${PHASES:-relay sts}
PF_TLS_REUSE=${PF_TLS_REUSE:-yes}
LIMIT=${LIMIT:-6000}
CONVOYD=${CONVOYD:-$BUILD/bin/convoyd}
SINKBIN=$BUILD/tests/bench/bench_sink
PY=/usr/bin/python3
PT="$PY $HERE/proctree.py"
CPORT=26125
PPORT=26126
MX=127.0.0.2

ip link set lo up
WORK=$CONVOY_BENCH_WORK
PF=$WORK/postfix
RAW=$WORK/raw.tsv
: >"$RAW"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

stop_pid() { # PID [SIGNAL]
    if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
        kill -"${2:-TERM}" "$1" 2>/dev/null || true
        i=0
        while kill -0 "$1" 2>/dev/null && [ $i -lt 100 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        kill -9 "$1" 2>/dev/null || true
    fi
}
pf_stop() {
    if [ -f "$PF/etc/main.cf" ]; then
        postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
        [ -n "${MPID:-}" ] && stop_pid "$MPID"
    fi
    MPID=
}
cleanup() {
    stop_pid "${SAMPID:-}"
    stop_pid "${SPID:-}"
    stop_pid "${CPID:-}"
    stop_pid "${RPID:-}"
    pf_stop
    stop_pid "${NGPID:-}" QUIT
    stop_pid "${DPID:-}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # HOST PORT
    $PY - "$1" "$2" <<'PY'
import socket, sys, time
for _ in range(300):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}

# ---- test CA and certificates ------------------------------------------------
$PY - "$HERE/../integration" "$WORK/pki" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from pki import CA
ca = CA(sys.argv[2])
ca.issue("mx", ["mx.plain.test", "mx.enforce.test"])
ca.issue("web", ["mta-sts.enforce.test"])
PY
CA=$WORK/pki/ca.pem
chmod -R a+rX "$WORK/pki"

# ---- DNS ---------------------------------------------------------------------
cat >"$WORK/dnsmasq.conf" <<CONF
local=/test/
local-ttl=3600
mx-host=plain.test,mx.plain.test,10
mx-host=enforce.test,mx.enforce.test,10
host-record=mx.plain.test,$MX
host-record=mx.enforce.test,$MX
host-record=mta-sts.enforce.test,127.0.0.1
txt-record=_mta-sts.enforce.test,"v=STSv1; id=bench1"
host-record=localhost,127.0.0.1
CONF
dnsmasq --no-daemon --port=53 --listen-address=127.0.0.1 --bind-interfaces --no-resolv \
    --no-hosts --conf-file="$WORK/dnsmasq.conf" --pid-file= \
    --log-facility="$WORK/dnsmasq.log" 2>>"$WORK/dnsmasq.log" &
DPID=$!

# ---- the policy host -----------------------------------------------------------
NG=$WORK/nginx
mkdir -p "$NG/site/.well-known" "$NG/tmp"
printf 'version: STSv1\r\nmode: enforce\r\nmx: mx.enforce.test\r\nmax_age: 86400\r\n' \
    >"$NG/site/.well-known/mta-sts.txt"
chmod -R a+rX "$NG"
cat >"$NG/nginx.conf" <<CONF
worker_processes 1;
pid $NG/nginx.pid;
error_log $NG/error.log;
events { worker_connections 64; }
http {
  access_log $NG/access.log;
  client_body_temp_path $NG/tmp;
  proxy_temp_path $NG/tmp;
  fastcgi_temp_path $NG/tmp;
  uwsgi_temp_path $NG/tmp;
  scgi_temp_path $NG/tmp;
  server {
    listen 127.0.0.1:443 ssl;
    server_name mta-sts.enforce.test;
    ssl_certificate $WORK/pki/web-chain.pem;
    ssl_certificate_key $WORK/pki/web.key;
    root $NG/site;
    location = /.well-known/mta-sts.txt { types { } default_type text/plain; }
  }
}
CONF
nginx -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf" -g 'daemon off;' &
NGPID=$!
wait_port 127.0.0.1 443
fetches() { grep -c 'mta-sts.txt' "$NG/access.log" 2>/dev/null || true; }

# ---- the resolver's configuration (started fresh for each Postfix STS run) -----
cat >"$WORK/resolver.yml" <<CONF
host: 127.0.0.1
port: 8461
reuse_port: true
cache:
  type: internal
  options:
    cache_size: 10000
default_zone:
  strict_testing: false
  timeout: 4
CONF

# ---- Postfix: a private instance ---------------------------------------------------
mkdir -p "$PF/etc" "$PF/data"
chown postfix "$PF/data" # master's lock file lives there
cp /etc/postfix/master.cf /etc/postfix/dynamicmaps.cf "$PF/etc/"
: >"$PF/etc/main.cf"
postconf -c "$PF/etc" -F '*/*/chroot = n'
postconf -c "$PF/etc" -M# smtp/inet
postconf -c "$PF/etc" -M "tlsproxy/unix=tlsproxy unix - - n - 0 tlsproxy"
postconf -c "$PF/etc" -M "127.0.0.1:$PPORT/inet=127.0.0.1:$PPORT inet n - n - - smtpd"

# pf_conf TAG PHASE MODE: main.cf for one run
pf_conf() {
    if [ "$2" = relay ]; then relay="[$MX]:25"; else relay=; fi
    if [ "$3" = none ]; then level=none; else level=may; fi
    cat >"$PF/etc/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $PF/spool.$1
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = $relay
smtp_host_lookup = dns
default_destination_concurrency_limit = 20
smtp_tls_security_level = $level
smtp_tls_CAfile = $CA
smtp_tls_loglevel = 1
smtp_tls_connection_reuse = $PF_TLS_REUSE
maillog_file = $PF/maillog.$1
maillog_file_prefixes = $WORK
CONF
    if [ "$2" = sts ]; then
        echo "smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix" >>"$PF/etc/main.cf"
    fi
}

# cv_conf TAG PHASE MODE: convoyd's configuration for one run
cv_conf() {
    if [ "$3" = none ]; then level=none; else level=may; fi
    {
        echo "queue_directory = $WORK/convoy.$1"
        echo "myhostname = bench.test"
        echo "smtpd_listen = 127.0.0.1:$CPORT"
        echo "dns_servers = 127.0.0.1:53"
        echo "smtp_tls_security_level = $level"
        echo "smtp_tls_CAfile = $CA"
        echo "default_destination_concurrency_limit = 20"
        if [ "$2" = relay ]; then echo "relayhost = [$MX]:25"; fi
    } >"$WORK/convoy.$1.conf"
}

sent_in() { grep -c "status=sent" "$1" 2>/dev/null || true; }

# one PHASE MODE SIZE COUNT DEST MTA RUN: one run, one line to $RAW
one() {
    phase=$1 mode=$2 size=$3 n=$4 dest=$5 mta=$6 run=$7
    tag=$phase-$mode-$size-$dest-$mta-$run
    if [ "$mode" = none ]; then tlsopt=; else
        tlsopt="-c $WORK/pki/mx-chain.pem -k $WORK/pki/mx.key"
    fi
    # shellcheck disable=SC2086
    "$SINKBIN" $tlsopt -h mx.plain.test -e 100 "$MX:25" >"$WORK/sink.$tag" &
    SPID=$!
    wait_port "$MX" 25
    hwm=-
    if [ "$mta" = convoyd ]; then
        cv_conf "$tag" "$phase" "$mode"
        log=$WORK/convoyd.$tag.log
        "$CONVOYD" -f -c "$WORK/convoy.$tag.conf" 2>"$log" &
        CPID=$!
        port=$CPORT
        roots=$CPID
    else
        pf_conf "$tag" "$phase" "$mode"
        log=$PF/maillog.$tag
        roots=
        if [ "$phase" = sts ]; then
            SSL_CERT_FILE=$CA mta-sts-daemon -c "$WORK/resolver.yml" -v warn \
                -l "$WORK/resolver.$tag.log" &
            RPID=$!
            wait_port 127.0.0.1 8461
            roots=$RPID
        fi
        mkdir -p "$PF/spool.$tag"
        postfix -c "$PF/etc" check >/dev/null 2>&1 || true
        postfix -c "$PF/etc" start >/dev/null 2>&1 || {
            echo "postfix did not start:" >&2
            cat "$log" >&2
            exit 1
        }
        port=$PPORT
        MPID=$(tr -d ' ' <"$PF/spool.$tag/pid/master.pid")
        roots="$roots $MPID"
    fi
    wait_port 127.0.0.1 $port
    sleep 1 # let start-up work settle
    f0=$(fetches)
    # shellcheck disable=SC2086
    c0=$($PT cpu $roots)
    r0=0
    if [ -n "${RPID:-}" ]; then r0=$($PT cpu "$RPID"); fi
    s0=$($PT cpu "$SPID")
    # shellcheck disable=SC2086
    $PT peak "$WORK/peak.$tag" $roots &
    SAMPID=$!
    t0=$(date +%s.%N)
    smtp-source -l "$size" -s 20 -m "$n" -f bench@bench.test -t "rcpt@$dest" \
        "127.0.0.1:$port" >/dev/null 2>&1 || true
    i=0
    while ! grep -q "^$n " "$WORK/sink.$tag" && [ $i -lt "$LIMIT" ]; do
        sleep 0.05
        i=$((i + 1))
    done
    t1=$(awk -v n="$n" '$1 == n { print $2 }' "$WORK/sink.$tag")
    [ -n "$t1" ] || t1=$(date +%s.%N)
    i=0
    while [ "$(sent_in "$log")" -lt "$n" ] && [ $i -lt 600 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    sleep 1
    # shellcheck disable=SC2086
    c1=$($PT cpu $roots)
    r1=0
    if [ -n "${RPID:-}" ]; then r1=$($PT cpu "$RPID"); fi
    s1=$($PT cpu "$SPID")
    stop_pid "$SAMPID"
    SAMPID=
    got=$(tail -1 "$WORK/sink.$tag" | awk '{print $1}')
    sent=$(sent_in "$log")
    tls=$(grep -c "TLS connection established" "$log" || true)
    ver=$(grep -c "Verified TLS connection established" "$log" || true)
    f1=$(fetches)
    if [ "$mta" = convoyd ]; then
        hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$CPID/status")
        stop_pid "$CPID"
        CPID=
        rm -rf "$WORK/convoy.$tag"
    else
        pf_stop
        stop_pid "${RPID:-}"
        RPID=
        rm -rf "$PF/spool.$tag"
    fi
    stop_pid "$SPID"
    SPID=
    read -r prss ppss samples <"$WORK/peak.$tag"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$phase" "$mode" "$size" "$dest" "$mta" "$run" "$n" "${got:-0}" "$sent" \
        "$(echo "$t0 $t1" | awk '{printf "%.3f", $2 - $1}')" \
        "$(echo "$c0 $c1" | awk '{printf "%.2f", $2 - $1}')" \
        "$prss" "$ppss" "$hwm" "$((f1 - f0))" "$tls" "$ver" \
        "$(echo "$r0 $r1" | awk '{printf "%.2f", $2 - $1}')" \
        "$(echo "$s0 $s1" | awk '{printf "%.2f", $2 - $1}')" >>"$RAW"
    tail -1 "$RAW" >&2
}

# ---- the runs (the two MTAs interleaved, their order alternating) -------------------
order() { if [ $(($1 % 2)) -eq 1 ]; then echo "convoyd postfix"; else echo "postfix convoyd"; fi; }
for phase in $PHASES; do
    if [ "$phase" = relay ]; then
        for mode in $MODES; do
            for size in $SIZES; do
                r=1
                while [ $r -le "$RUNS" ]; do
                    for mta in $(order $r); do one relay "$mode" "$size" "$N" relay.test "$mta" $r; done
                    r=$((r + 1))
                done
            done
        done
    else
        r=1
        while [ $r -le "$RUNS" ]; do
            for dest in plain.test enforce.test; do
                for mta in $(order $r); do one sts tls 1024 "$STS_N" "$dest" "$mta" $r; done
            done
            r=$((r + 1))
        done
    fi
done

# ---- report ------------------------------------------------------------------------
{
    echo "load average at the start: $LOAD0; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    $PY - "$RAW" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| phase | TLS | size | destination | MTA | run | sent | at sink | delivered (log) | s | msg/s "
      "| CPU s (resolver) | CPU ms/msg | peak RSS MiB (sum) | peak PSS MiB (sum) | VmHWM MiB | fetches "
      "| TLS sessions (verified) | sink CPU s |")
print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
      "| ---: | ---: | ---: | ---: | ---: | ---: |")
for (ph, mode, size, dest, mta, run, n, got, sent, secs, cpu, rss, pss, hwm, fet, tls,
     ver, rcpu, scpu) in rows:
    n, secs, cpu = int(n), float(secs), float(cpu)
    print("| %s | %s | %d KiB | %s | %s | %s | %d | %s | %s | %.2f | %.0f | %.2f%s | %.3f | %.1f "
          "| %.1f | %s | %s | %s (%s) | %s |" % (
              ph, mode, int(size) // 1024, dest, mta, run, n, got, sent, secs, n / secs, cpu,
              " (%s)" % rcpu if float(rcpu) > 0 else "",
              1000 * cpu / n, int(rss) / 1024, int(pss) / 1024,
              "%.1f" % (int(hwm) / 1024) if hwm != "-" else "-", fet, tls, ver, scpu))
print()
groups = {}
for r in rows:
    groups.setdefault(tuple(r[:4]), {}).setdefault(r[4], []).append(r)


def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


print("| phase | TLS | size | destination | convoyd msg/s | Postfix msg/s | rate ratio "
      "| convoyd CPU ms/msg | Postfix CPU ms/msg | CPU ratio (Postfix/convoyd) "
      "| convoyd peak RSS MiB | Postfix peak RSS (PSS) MiB | fetches per run (convoyd, Postfix) |")
print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for key, by in groups.items():
    def stats(m):
        rs = by.get(m, [])
        if not rs:
            return None
        rate = med([int(r[6]) / float(r[9]) for r in rs])
        cpu = med([1000 * float(r[10]) / int(r[6]) for r in rs])
        rss = med([int(r[11]) / 1024 for r in rs])
        pss = med([int(r[12]) / 1024 for r in rs])
        return rate, cpu, rss, pss, ",".join(r[14] for r in rs), [int(r[6]) / float(r[9]) for r in rs]
    c, p = stats("convoyd"), stats("postfix")
    if not c or not p:
        continue
    print("| %s | %s | %d KiB | %s | %.0f (%s) | %.0f (%s) | %.1f | %.3f | %.3f | %.1f | %.1f "
          "| %.1f (%.1f) | %s; %s |" % (
              key[0], key[1], int(key[2]) // 1024, key[3],
              c[0], ", ".join("%.0f" % x for x in c[5]), p[0],
              ", ".join("%.0f" % x for x in p[5]), c[0] / p[0], c[1], p[1], p[1] / c[1],
              c[2], p[2], p[3], c[4], p[4]))
PY
} >>"$OUT"
