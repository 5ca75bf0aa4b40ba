#!/usr/bin/python3
"""bench_shared.py - the cost per message of shared_state (docs/scale-out.md):
one convoyd relaying N messages to a sink with a destination rate in
destination_limits, once with the rate local and once with shared_state
pointing at a private redis-server, so that every message takes a token
from Redis (in batches). The rate is set far above what the run reaches
(100000/s), so it never makes anything wait: what differs is the work.

usage: /usr/bin/python3 tests/bench/bench_shared.py BUILD_DIR
  Environment: N (2000) messages per run, RUNS (3) runs of each case,
  SESSIONS (4) parallel submission sessions.
Not part of ctest. Needs redis-server and python3-aiosmtpd (Debian's).

Measured per run, from the first submission to the Nth message at the
sink: wall seconds, convoyd's CPU (user + system, /proc/PID/stat), and
redis-server's CPU; printed as CPU microseconds per message; and the
Redis scripts run (EVALSHA calls: grants, heartbeats) per message. The sink
(aiosmtpd) and the submitting client run on the same machine: the wall
time is theirs as much as convoyd's; compare the CPU columns.
"""
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../integration"))
if len(sys.argv) > 1:
    os.environ["CONVOY_BIN"] = os.path.join(os.path.abspath(sys.argv[1]), "bin")

from convoy import Daemon, free_port  # noqa: E402
from sink import Sink  # noqa: E402
from test_shared_state import Redis  # noqa: E402

N = int(os.environ.get("N", "2000"))
RUNS = int(os.environ.get("RUNS", "3"))
SESSIONS = int(os.environ.get("SESSIONS", "4"))
TICK = os.sysconf("SC_CLK_TCK")
SINK_HOST = "127.0.0.14"


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def evalsha_calls(port):
    """EVALSHA calls so far (grants, heartbeats, leases), from INFO."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def one_run(shared, tmp):
    redis = Redis(tmp).start() if shared else None
    sink = Sink(SINK_HOST, free_port(SINK_HOST)).start()
    limits = os.path.join(tmp, "limits")
    with open(limits, "w") as f:
        f.write("%s rate=100000/s\n" % SINK_HOST)
    port = free_port()
    text = ("myhostname = bench.test\nsmtpd_listen = 127.0.0.1:%d\n"
            "relayhost = [%s]:%d\ndestination_limits = %s\n%s"
            % (port, SINK_HOST, sink.port, limits,
               "shared_state = %s\n" % redis.url if shared else ""))
    d = Daemon(text).start()
    try:
        if shared:
            d.wait_log("is up", timeout=10)
        c0 = cpu_s(d.proc.pid)
        r0 = cpu_s(redis.proc.pid) if shared else 0
        e0 = evalsha_calls(redis.port) if shared else 0
        t0 = time.time()

        def submit(k):
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
                for i in range(k):
                    c.sendmail("a@src.test", ["r@dst.test"],
                               b"Subject: b\r\n\r\nHello.\r\n")
        per = [N // SESSIONS + (1 if i < N % SESSIONS else 0) for i in range(SESSIONS)]
        ts = [threading.Thread(target=submit, args=(k,)) for k in per]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if not sink.wait_messages(N, timeout=600):
            raise RuntimeError("only %d of %d delivered" % (len(sink.messages), N))
        wall = max(sink.arrivals) - t0
        c1 = cpu_s(d.proc.pid)
        r1 = cpu_s(redis.proc.pid) if shared else 0
        e1 = evalsha_calls(redis.port) if shared else 0
        return wall, (c1 - c0) / N * 1e6, (r1 - r0) / N * 1e6, (e1 - e0) / N
    finally:
        d.stop()
        d.close()
        sink.stop()
        if redis:
            redis.kill()


def main():
    rows = {False: [], True: []}
    for r in range(RUNS):
        for shared in ((False, True) if r % 2 == 0 else (True, False)):
            with tempfile.TemporaryDirectory(prefix="convoy-bench-shared-") as tmp:
                res = one_run(shared, tmp)
            rows[shared].append(res)
            print("run %d %-6s wall %.1f s, convoyd %.0f us/msg, redis %.0f us/msg, "
                  "%.3f round trips/msg"
                  % (r + 1, "shared" if shared else "local", *res), file=sys.stderr)
    print("| case | msg/s | convoyd CPU us/msg | redis-server CPU us/msg | Redis scripts/msg |")
    print("| --- | --- | --- | --- | --- |")
    for shared in (False, True):
        w = [N / x[0] for x in rows[shared]]
        c = [x[1] for x in rows[shared]]
        rr = [x[2] for x in rows[shared]]
        ee = [x[3] for x in rows[shared]]
        print("| %s | %.0f (%.0f-%.0f) | %.0f (%.0f-%.0f) | %s | %s |"
              % ("shared_state (Redis on loopback)" if shared else "local rate",
                 statistics.median(w), min(w), max(w),
                 statistics.median(c), min(c), max(c),
                 "%.0f (%.0f-%.0f)" % (statistics.median(rr), min(rr), max(rr))
                 if shared else "-",
                 "%.3f" % statistics.median(ee) if shared else "-"))


if __name__ == "__main__":
    main()
