"""Hostile peers on both sides of the real convoyd: clients that flood the
submission port, and an MX host (a deliberately broken server written here)
that answers with endless, oversized or NUL-laden replies.

Each case reads as data: what the peer does, and what must come out: a
clear SMTP reply or a dropped connection, a daemon that stays up with its
memory (VmRSS) within a bound, and a queued message that stays queued
(deferred, with the reason logged) rather than lost.
"""

import json
import os
import smtplib
import socket
import threading
import time
import unittest

from convoy import Daemon, free_port
import world
from world import A, MX, DnsServer, free_udp_tcp_port

MXIP = "127.0.0.11"
# How much the daemon's resident memory may grow during one attack.
RSS_GROWTH_MAX_KB = 64 * 1024


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_reply(f):
    """One SMTP reply as a list of lines (b"<EOF>" when the peer closed)."""
    lines = []
    while True:
        line = f.readline()
        if not line:
            lines.append(b"<EOF>")
            return lines
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return lines


class SubmissionFloodTest(unittest.TestCase):
    """Clients that send too much, too many or too slowly."""

    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        cls.daemon = Daemon("myhostname = relay.test\n"
                            "smtpd_listen = 127.0.0.1:%d\n"
                            "smtpd_timeout = 3s\n"
                            "smtpd_data_timeout = 4s\n"
                            "smtpd_session_limit = 100\n" % cls.port).start()
        cls.pid = cls.daemon.proc.pid

    @classmethod
    def tearDownClass(cls):
        try:
            cls.daemon.stop()
        finally:
            cls.daemon.close()

    def setUp(self):
        self.rss0 = rss_kb(self.pid)

    def tearDown(self):
        self.assertIsNone(self.daemon.proc.poll(), self.daemon.log_text()[-2000:])
        self.assertLess(rss_kb(self.pid) - self.rss0, RSS_GROWTH_MAX_KB)

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        f = s.makefile("rb")
        return s, f

    def test_10mb_without_newline(self):
        s, f = self.connect()
        with s, f:
            self.assertTrue(read_reply(f)[0].startswith(b"220"))
            try:
                s.sendall(b"A" * (10 << 20))
            except OSError:
                pass  # dropped while sending: also fine
            # The line is discarded as it comes; the command timeout ends it.
            self.assertIn(read_reply(f)[0][:3], (b"500", b"421", b"<EO"))

    def test_thousands_of_recipients(self):
        s, f = self.connect()
        with s, f:
            read_reply(f)
            s.sendall(b"EHLO app.test\r\n")
            read_reply(f)
            s.sendall(b"MAIL FROM:<a@src.test>\r\n")
            self.assertEqual(read_reply(f)[0][:3], b"250")
            n = 3000
            s.sendall(b"".join(b"RCPT TO:<u%d@dest.test>\r\n" % i for i in range(n)))
            codes = {}
            for _ in range(n):
                code = read_reply(f)[-1][:3]
                codes[code] = codes.get(code, 0) + 1
                if code in (b"<EO", b"421"):
                    break
            # RFC 5321 4.5.3.1.8: past the limit, 452 (too many recipients).
            self.assertEqual(codes.get(b"250"), 1000, codes)
            self.assertGreater(codes.get(b"452", 0), 0, codes)

    def test_2000_connections(self):
        # A daemon of its own, whose sessions outlive the test: the session
        # limit is on sessions at the same time.
        port = free_port()
        d = Daemon("myhostname = relay.test\n"
                   "smtpd_listen = 127.0.0.1:%d\n"
                   "smtpd_timeout = 60s\n"
                   "smtpd_session_limit = 100\n" % port).start()
        self.addCleanup(d.close)
        rss0 = rss_kb(d.proc.pid)
        socks = []
        try:
            for _ in range(2000):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                except OSError:
                    break
            greetings = {}
            for s in socks:
                s.settimeout(5)
                try:
                    code = s.recv(64)[:3]
                except OSError:
                    code = b"err"
                greetings[code] = greetings.get(code, 0) + 1
            # Up to the session limit are served; the rest hear 421 or are
            # closed; none is left hanging.
            self.assertEqual(greetings.get(b"220", 0), 100, greetings)
            self.assertEqual(set(greetings) - {b"220", b"421", b""}, set(), greetings)
            self.assertLess(rss_kb(d.proc.pid) - rss0, RSS_GROWTH_MAX_KB)
        finally:
            for s in socks:
                s.close()
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            self.assertEqual(s.recv(64)[:3], b"220")
        self.assertEqual(d.stop(), 0)

    def test_slowloris_data(self):
        s, f = self.connect()
        with s, f:
            read_reply(f)
            s.sendall(b"EHLO app.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n")
            for _ in range(4):
                last = read_reply(f)
            self.assertEqual(last[0][:3], b"354")
            t0 = time.time()
            try:
                while time.time() - t0 < 20:
                    s.sendall(b"x")
                    time.sleep(0.5)
            except OSError:
                pass
            self.assertLess(time.time() - t0, 15)
            self.assertEqual(read_reply(f)[0][:3], b"421")


class HostileMX:
    """An MX host that misbehaves as told, on MXIP:port."""

    def __init__(self, port, mode):
        self.mode = mode
        self.stop_ev = threading.Event()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((MXIP, port))
        self.ls.listen(16)
        self.ls.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.mode == "endless multi-line greeting":
                while not self.stop_ev.is_set():
                    c.sendall(b"220-" + b"x" * 200 + b"\r\n")
            elif self.mode == "1 MB greeting line":
                c.sendall(b"220 " + b"y" * (1 << 20) + b"\r\n")
                c.recv(1024)
            elif self.mode == "endless EHLO reply":
                c.sendall(b"220 mx.dest.test ESMTP\r\n")
                c.recv(1024)
                while not self.stop_ev.is_set():
                    c.sendall(b"250-" + b"E" * 100 + b"\r\n")
            elif self.mode == "NULs in replies":
                c.sendall(b"220 mx\x00.dest.test ESMTP\r\n")
                f = c.makefile("rb")
                while not self.stop_ev.is_set():
                    line = f.readline()
                    if not line:
                        break
                    if line.startswith(b"EHLO"):
                        c.sendall(b"250-mx\x00\r\n250 PIPE\x00LINING\r\n")
                    elif line.startswith(b"DATA"):
                        c.sendall(b"354 go\x00\r\n")
                    elif line == b".\r\n":
                        c.sendall(b"451 4.3.0 \x00\x00 nope\r\n")
                    elif line.startswith(b"QUIT"):
                        c.sendall(b"221 bye\r\n")
                        break
                    elif line[:4] in (b"MAIL", b"RCPT"):
                        c.sendall(b"250 \x00ok\r\n")
            time.sleep(0.5)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop_ev.set()
        self.thread.join()
        self.ls.close()


@world.needs("dnsmasq")
class HostileMXTest(unittest.TestCase):
    """The delivery target misbehaves; the message must stay queued."""

    # mode -> the reason the recipient is deferred with
    CASES = {
        "endless multi-line greeting": "sent a malformed reply while in state greeting",
        "1 MB greeting line": "sent a line longer than 2048 octets",
        "endless EHLO reply": "sent a malformed reply while in state ehlo",
        "NULs in replies": "said: 451 4.3.0",
    }

    def run_case(self, mode, reason):
        port = free_udp_tcp_port((MXIP,))
        mx = HostileMX(port, mode)
        dns = DnsServer([MX("dest.test", 10, "mx.dest.test"), A("mx.dest.test", MXIP)]).start()
        sub = free_port()
        d = Daemon("myhostname = relay.test\n"
                   "smtpd_listen = 127.0.0.1:%d\n"
                   "dns_servers = %s\n"
                   "smtp_destination_port = %d\n"
                   "smtp_helo_timeout = 5s\n"
                   "smtp_data_done_timeout = 5s\n"
                   "minimal_backoff_time = 300s\n" % (sub, dns.server, port))
        try:
            d.start()
            rss0 = rss_kb(d.proc.pid)
            with smtplib.SMTP("127.0.0.1", sub, timeout=10) as c:
                c.sendmail("a@src.test", ["r@dest.test"], b"Subject: x\r\n\r\nhello\r\n")
            d.wait_log("status=deferred", timeout=30)
            self.assertIsNone(d.proc.poll())
            self.assertLess(rss_kb(d.proc.pid) - rss0, RSS_GROWTH_MAX_KB)
            # The log line comes as the result is committed; wait for it.
            deadline = time.time() + 20
            while True:
                listing = [json.loads(line) for line in
                           d.ctl("queue", "list", "--json", check=True).stdout.splitlines()]
                self.assertEqual(len(listing), 1, listing)
                r = listing[0]["recipients"][0]
                if r["state"] != "active" or time.time() > deadline:
                    break
                time.sleep(0.2)
            self.assertEqual(r["state"], "deferred", r)
            self.assertIn(reason, r["reason"], r)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()
            dns.close()
            mx.close()

    def test_cases(self):
        for mode, reason in self.CASES.items():
            with self.subTest(mode=mode):
                self.run_case(mode, reason)


@world.needs("dnsmasq")
class HostileMXCheckTest(unittest.TestCase):
    """convoyctl sts check probes MX hosts itself: one that sends all its
    replies at once and closes makes the probe write into a closed
    connection, which must be a failed step, not a SIGPIPE death."""

    def test_sts_check_mx_closes_early(self):
        port = free_udp_tcp_port((MXIP,))
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((MXIP, port))
        ls.listen(16)
        stop = threading.Event()

        def serve():
            ls.settimeout(0.2)
            while not stop.is_set():
                try:
                    c, _ = ls.accept()
                except socket.timeout:
                    continue
                try:
                    c.sendall(b"220 mx ESMTP\r\n250-mx\r\n250 STARTTLS\r\n220 go ahead\r\n")
                except OSError:
                    pass
                c.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        dns = DnsServer([MX("dest.test", 10, "mx.dest.test"), A("mx.dest.test", MXIP)]).start()
        d = Daemon("dns_servers = %s\nsmtp_destination_port = %d\nsmtp_connect_timeout = 5s\n"
                   % (dns.server, port))
        try:
            for _ in range(5):
                r = d.ctl("sts", "check", "dest.test")
                self.assertGreaterEqual(r.returncode, 0, "killed by signal %d" % -r.returncode)
                self.assertIn("verdict:", r.stdout)
                self.assertIn("tls: FAIL", r.stdout)
        finally:
            d.close()
            dns.close()
            stop.set()
            t.join()
            ls.close()


if __name__ == "__main__":
    unittest.main()
