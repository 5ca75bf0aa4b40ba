#!/usr/bin/python3
"""pipe_source.py - a small SMTP load source that pipelines (RFC 2920).

usage: pipe_source.py HOST:PORT SESSIONS COUNT SIZE

COUNT messages of SIZE octets (headers and body), one recipient each, one
message per connection, SESSIONS connections at a time (one thread each).
Every session: greeting, EHLO, then MAIL, RCPT and DATA in one write (the
pipelined group), then after the 354 the body and the final dot in one
write, then QUIT. Exits 1 if any message did not get a 250 to its end of
data. smtp-source (the postfix package) does not pipeline; this does what a
pipelining MTA sends.
"""
import socket
import sys
import threading


def replies(f, k):
    """Read k complete replies; return their codes."""
    codes = []
    while len(codes) < k:
        line = f.readline()
        if not line:
            raise OSError("connection closed")
        if line[3:4] != b"-":
            codes.append(int(line[:3]))
    return codes


def one(host, port, body):
    s = socket.create_connection((host, port))
    f = s.makefile("rb")
    try:
        replies(f, 1)
        s.sendall(b"EHLO source.test\r\n")
        replies(f, 1)
        s.sendall(b"MAIL FROM:<bench@bench.test>\r\nRCPT TO:<sink@example.org>\r\nDATA\r\n")
        if replies(f, 3) != [250, 250, 354]:
            return False
        s.sendall(body + b".\r\n")
        ok = replies(f, 1) == [250]
        s.sendall(b"QUIT\r\n")
        replies(f, 1)
        return ok
    finally:
        f.close()
        s.close()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    host, _, port = sys.argv[1].rpartition(":")
    sessions, count, size = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    head = b"From: bench@bench.test\r\nTo: sink@example.org\r\nSubject: bench\r\n\r\n"
    line = b"x" * 78 + b"\r\n"
    body = head + line * max(0, (size - len(head)) // len(line))
    left = [count]
    failed = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                ok = one(host, int(port), body)
            except OSError:
                ok = False
            if not ok:
                with lock:
                    failed[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed[0]:
        print("pipe_source: %d of %d messages failed" % (failed[0], count), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
