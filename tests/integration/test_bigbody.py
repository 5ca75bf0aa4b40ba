"""Large message bodies end to end: the real convoyd takes multi-MB messages
over SMTP (smtplib for DATA, a raw socket for BDAT) and streams them into its
queue as they arrive, then relays them to an aiosmtpd sink (sink.py), which
must get every octet as sent. A connection lost in the middle of a body, a
message over message_size_limit, a header section too long to hold and a
mail loop (hop count) must each leave nothing in the queue: the body chunks
and the unfinished-stage markers are counted with LMDB's own mdb_stat(1).
"""

import os
import re
import shutil
import smtplib
import socket
import subprocess
import time
import unittest

from convoy import Daemon, free_port
from sink import Sink

MDB_STAT = shutil.which("mdb_stat")
LIMIT = 8 * 1024 * 1024


def body_of(size, seed):
    """size octets of CRLF lines (some starting with a dot, some with
    trailing space, some empty; none over 998 octets, which would be
    folded) that differ from message to message."""
    lines = []
    n = 0
    i = 0
    while n < size:
        k = (i * 7919 + seed) % 900
        if k % 13 == 0:
            line = b""
        elif k % 17 == 0:
            line = b"." + b"d" * (1 + k % 50)
        else:
            line = (b"%d:%d " % (seed, i)) + bytes([97 + k % 26]) * k + b" \t"
        lines.append(line + b"\r\n")
        n += len(line) + 2
        i += 1
    return b"".join(lines)


@unittest.skipUnless(MDB_STAT, "mdb_stat (lmdb-utils) is not installed")
class BigBodyTest(unittest.TestCase):

    def setUp(self):
        self.mx_port = free_port()
        self.mx = Sink("127.0.0.1", self.mx_port).start()
        self.addCleanup(self.mx.stop)
        self.port = free_port()
        self.daemon = Daemon("myhostname = relay.test\n"
                             "smtpd_listen = 127.0.0.1:%d\n"
                             "relayhost = [127.0.0.1]:%d\n"
                             "message_size_limit = %d\n"
                             "minimal_backoff_time = 1s\n"
                             "maximal_backoff_time = 2s\n"
                             % (self.port, self.mx_port, LIMIT)).start()
        self.addCleanup(self.daemon.close)
        self.addCleanup(self.check_sanitizers)
        self.addCleanup(self.daemon.stop)

    def check_sanitizers(self):
        log = self.daemon.log_text()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, log)

    def entries(self, db):
        r = subprocess.run([MDB_STAT, "-n", "-s", db,
                            os.path.join(self.daemon.queue_dir, "queue.lmdb")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        m = re.search(r"Entries: (\d+)", r.stdout)
        self.assertIsNotNone(m, r.stdout)
        return int(m.group(1))

    def assert_queue_empty(self):
        """No message, no body chunk, and no marker of an unfinished body
        (the META database holds only its "layout" record)."""
        deadline = time.time() + 10
        while time.time() < deadline:
            counts = (self.entries("msg"), self.entries("body"), self.entries("meta"))
            if counts == (0, 0, 1):
                return
            time.sleep(0.1)
        self.fail("queue not empty (msg, body, meta): %r\n%s" % (counts, self.daemon.log_text()))

    def delivered(self, n):
        self.assertTrue(self.mx.wait_messages(n, timeout=60), self.daemon.log_text())
        return self.mx.messages[n - 1].content

    def test_data_bodies_arrive_byte_for_byte(self):
        sizes = [200 * 1024, 3 * 1024 * 1024 + 17, 7 * 1024 * 1024]
        sent = []
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as c:
            for i, size in enumerate(sizes):
                msg = (b"From: a@example.com\r\nTo: b@example.org\r\nSubject: big %d\r\n\r\n" % i
                       + body_of(size, i))
                self.assertEqual(c.sendmail("a@example.com", ["b@example.org"], msg), {})
                sent.append(msg)
        for i, msg in enumerate(sent, 1):
            got = self.delivered(i)
            self.assertTrue(got.endswith(msg), "message %d differs (%d vs %d octets)"
                            % (i, len(got), len(msg)))
            self.assertTrue(got.startswith(b"Received: from "), got[:200])
        self.assert_queue_empty()

    def bdat_session(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        f = s.makefile("rb")

        def reply():
            lines = []
            while True:
                line = f.readline()
                self.assertTrue(line, "connection closed")
                lines.append(line)
                if line[3:4] == b" ":
                    return lines[-1]
        self.assertTrue(reply().startswith(b"220"))
        s.sendall(b"EHLO client.test\r\n")
        self.assertIn(b"250", reply())
        return s, reply

    def test_bdat_chunks(self):
        # CHUNKING (RFC 3030): the octets of every BDAT chunk, streamed as
        # they come, with chunk boundaries that fall mid-line.
        msg = b"From: a@example.com\r\nSubject: bdat\r\n\r\n" + body_of(5 * 1024 * 1024, 9)
        s, reply = self.bdat_session()
        s.sendall(b"MAIL FROM:<a@example.com>\r\n")
        self.assertTrue(reply().startswith(b"250"))
        s.sendall(b"RCPT TO:<b@example.org>\r\n")
        self.assertTrue(reply().startswith(b"250"))
        cuts = [0, 1234567, 1234568, 4000001, len(msg)]
        for a, b in zip(cuts, cuts[1:]):
            last = b" LAST" if b == len(msg) else b""
            s.sendall(b"BDAT %d%s\r\n" % (b - a, last) + msg[a:b])
            r = reply()
            self.assertTrue(r.startswith(b"250"), r)
        self.assertIn(b"queued as", r)
        s.sendall(b"QUIT\r\n")
        s.shutdown(socket.SHUT_RDWR)
        s.close()
        got = self.delivered(1)
        self.assertTrue(got.endswith(msg), (len(got), len(msg)))
        self.assert_queue_empty()

    def test_connection_lost_mid_body_leaves_nothing(self):
        for how in ("data", "bdat"):
            with self.subTest(how=how):
                s, reply = self.bdat_session()
                s.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n")
                reply()
                reply()
                if how == "data":
                    s.sendall(b"DATA\r\n")
                    self.assertTrue(reply().startswith(b"354"))
                    body = body_of(4 * 1024 * 1024, 3).replace(b"\r\n.", b"\r\n..")
                    s.sendall(b"Subject: lost\r\n\r\n" + body)
                else:
                    s.sendall(b"BDAT %d\r\n" % (6 * 1024 * 1024) +
                              b"Subject: lost\r\n\r\n" + body_of(4 * 1024 * 1024, 3))
                # Part of the body is stored (and invisible) before the drop.
                deadline = time.time() + 10
                while self.entries("body") == 0 and time.time() < deadline:
                    time.sleep(0.05)
                self.assertGreater(self.entries("body"), 0)
                self.assertEqual(self.entries("msg"), 0)
                s.shutdown(socket.SHUT_RDWR)  # the reader's file object holds the socket
                s.close()
                self.daemon.wait_log("lost connection after %s" % how.upper())
                self.assert_queue_empty()
        # And the daemon still takes mail.
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as c:
            c.sendmail("a@example.com", ["b@example.org"], b"Subject: after\r\n\r\nok\r\n")
        self.assertTrue(self.delivered(1).endswith(b"Subject: after\r\n\r\nok\r\n"))

    def test_refusals_at_the_end_leave_nothing(self):
        over = b"Subject: too big\r\n\r\n" + body_of(LIMIT + 100000, 5)
        loop = b"".join(b"Received: from hop%d.test by x.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                        % i for i in range(60)) + b"Subject: loop\r\n\r\n" + body_of(1 << 20, 6)
        huge_head = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 100) for i in range(4000)) + \
            b"\r\n" + body_of(1 << 20, 7)
        cases = [(over, 552, b"5.3.4"), (loop, 554, b"5.4.6"), (huge_head, 552, b"header")]
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as c:
            # No SIZE= in MAIL, so the limit is met in the middle of DATA.
            c.ehlo("client.test")
            c.esmtp_features.pop("size", None)
            for data, code, text in cases:
                with self.subTest(code=code, text=text):
                    with self.assertRaises(smtplib.SMTPDataError) as cm:
                        c.sendmail("a@example.com", ["b@example.org"], data)
                    self.assertEqual(cm.exception.smtp_code, code)
                    self.assertIn(text, cm.exception.smtp_error)
                    self.assert_queue_empty()
            # The session goes on after each refusal.
            c.sendmail("a@example.com", ["b@example.org"], b"Subject: fine\r\n\r\nok\r\n")
        self.assertTrue(self.delivered(1).endswith(b"Subject: fine\r\n\r\nok\r\n"))


if __name__ == "__main__":
    unittest.main()
