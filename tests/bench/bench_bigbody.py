#!/usr/bin/python3
"""bench_bigbody.py - convoyd's memory with many large messages in flight.

N sessions (default 100) each send MAIL, RCPT, DATA and a body of SIZE MiB
(default 20), then hold before the final dot until every session has sent
its whole body; then all send the dot at once and read the reply. Reports
convoyd's peak resident set (VmHWM from /proc/PID/status), how many
messages got 250, and how many messages the queue holds afterwards (LMDB's
mdb_stat on the message database). Deliveries go to a closed port and are
deferred for an hour, so nothing leaves the queue while it is counted.

Usage: tests/bench/bench_bigbody.py [--convoyd build/bin/convoyd] [-n 100]
       [--size 20] [--keep]
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid, field):
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"^%s:\s+(\d+) kB" % field, f.read(), re.M)
    return int(m.group(1)) if m else 0


def make_body(size):
    """size octets of 76-column text lines, dot-stuffed already."""
    line = (b"The quick brown fox jumps over the lazy dog. 0123456789 "
            b"abcdefghijklmnopqr\r\n")
    body = b"From: bench@example.com\r\nTo: sink@example.org\r\nSubject: big\r\n\r\n"
    return body + line * (size // len(line))


class Session(threading.Thread):
    def __init__(self, port, body, ready, go):
        super().__init__(daemon=True)
        self.port, self.body, self.ready, self.go = port, body, ready, go
        self.reply = None
        self.error = None

    def run(self):
        try:
            s = socket.socket()
            # A small send buffer: when sendall() returns, the body has
            # (nearly) all left this process.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
            s.settimeout(600)
            s.connect(("127.0.0.1", self.port))
            f = s.makefile("rb")

            def reply():
                while True:
                    line = f.readline()
                    if not line:
                        raise EOFError("connection closed")
                    if line[3:4] != b"-":
                        return line

            reply()
            for cmd in (b"EHLO bench.test", b"MAIL FROM:<bench@example.com>",
                        b"RCPT TO:<sink@example.org>", b"DATA"):
                s.sendall(cmd + b"\r\n")
                r = reply()
                if r[:1] not in (b"2", b"3"):
                    raise RuntimeError("%s: %r" % (cmd, r))
            s.sendall(self.body)
            self.ready.wait()  # every session has sent its body
            self.go.wait()
            s.sendall(b".\r\n")
            self.reply = reply()
            s.sendall(b"QUIT\r\n")
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        except Exception as e:  # reported below
            self.error = e
            self.ready.abort()


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--convoyd", default=os.path.join(here, "../../build/bin/convoyd"))
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--size", type=int, default=20, help="MiB per body")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="convoy-bigbody-")
    port = free_port()
    conf = os.path.join(work, "convoy.conf")
    with open(conf, "w") as f:
        f.write("queue_directory = %s/queue\n"
                "myhostname = bench.test\n"
                "smtpd_listen = 127.0.0.1:%d\n"
                "relayhost = [127.0.0.1]:9\n"
                "minimal_backoff_time = 3600s\n"
                "maximal_backoff_time = 3600s\n"
                "message_size_limit = %d\n"
                "smtpd_session_limit = %d\n"
                % (work, port, (a.size + 1) << 20, a.n + 10))
    log = open(os.path.join(work, "convoyd.log"), "wb")
    d = subprocess.Popen([a.convoyd, "-f", "-c", conf], stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        base = status(d.pid, "VmRSS")
        body = make_body(a.size << 20)
        ready = threading.Barrier(a.n + 1)
        go = threading.Event()
        sessions = [Session(port, body, ready, go) for _ in range(a.n)]
        t0 = time.time()
        for s in sessions:
            s.start()
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            pass
        t1 = time.time()
        held = status(d.pid, "VmRSS")
        held_anon, held_file = status(d.pid, "RssAnon"), status(d.pid, "RssFile")
        if os.environ.get("SMAPS"):
            cur = None
            for line in open("/proc/%d/smaps" % d.pid):
                if re.match(r"^[0-9a-f]+-", line):
                    cur = line.strip()
                elif line.startswith("Rss:") and int(line.split()[1]) > 1024:
                    print("  ", line.strip(), cur)
        go.set()
        for s in sessions:
            s.join()
        t2 = time.time()
        ok = sum(1 for s in sessions if s.reply and s.reply.startswith(b"250"))
        errors = [repr(s.error or s.reply) for s in sessions
                  if not (s.reply and s.reply.startswith(b"250"))]
        hwm = status(d.pid, "VmHWM")
        r = subprocess.run(["mdb_stat", "-n", "-s", "msg", os.path.join(work, "queue",
                                                                       "queue.lmdb")],
                           capture_output=True, text=True)
        m = re.search(r"Entries: (\d+)", r.stdout)
        queued = int(m.group(1)) if m else -1
        print("sessions %d, body %d MiB each (%.1f GiB in all)" % (a.n, a.size,
                                                                    a.n * a.size / 1024))
        print("convoyd RSS: %.1f MiB idle, %.1f MiB with every body sent, peak (VmHWM) %.1f MiB"
              % (base / 1024, held / 1024, hwm / 1024))
        print("  with every body sent: %.1f MiB anonymous, %.1f MiB file-backed (the LMDB map)"
              % (held_anon / 1024, held_file / 1024))
        print("250 replies: %d of %d; messages in the queue: %d" % (ok, a.n, queued))
        print("time: bodies sent in %.1f s, all answered %.1f s after the dots"
              % (t1 - t0, t2 - t1))
        for e in errors[:5]:
            print("  not accepted: %s" % e)
        return 0 if ok == a.n and queued == a.n else 1
    finally:
        d.terminate()
        d.wait()
        log.close()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("work directory: %s" % work)


if __name__ == "__main__":
    sys.exit(main())
