"""Integration tests of the SMTP submission server: real clients (Python's
smtplib, swaks, raw sockets) against the real convoyd.

Two daemons run for the whole module:
  - "strict": smtpd_forbid_bare_newline = reject (the default), STARTTLS
    with a throwaway certificate, AUTH from a crypt(3) credentials file,
    listening on 127.0.0.1 (in mynetworks) and [::1] (not in mynetworks, so
    relay from there needs AUTH), small limits so limits are cheap to hit.
  - "lenient": smtpd_forbid_bare_newline = normalize.

Every accepted message is read back from the queue: the envelope with
`convoyctl queue list --json`, the body with the queue_cat helper.
"""

import base64
import json
import os
import signal
import socket
import smtplib
import ssl
import subprocess
import tempfile
import time
import unittest

import convoy
from convoy import Daemon, free_port

HOST = "mx.test.example"
SIZE_LIMIT = 20000
RCPT_LIMIT = 100
ERROR_LIMIT = 10
CLIENT_LIMIT = 20
SESSION_LIMIT = 25
TIMEOUT = 3
DATA_TIMEOUT = 4
PASSWORD = "correct horse"

BUILD = os.environ.get("CONVOY_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
QUEUE_CAT = os.path.join(BUILD, "tests", "integration", "queue_cat")


def have_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = have_ipv6()


def make_hash(password):
    """A SHA-512-crypt hash, as `openssl passwd -6` writes it."""
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, text=True,
                       capture_output=True, check=True)
    return r.stdout.strip()


class Raw:
    """A byte-exact SMTP client: what a test writes is what goes on the wire."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=10, greet=True):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.greeting = self.reply() if greet else None

    def send(self, data):
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed; pending %r" % self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def reply(self):
        """One reply: (code, text of all lines joined by newlines)."""
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line):
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def starttls(self):
        code, text = self.cmd("STARTTLS")
        assert code == 220, (code, text)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=HOST)

    def closed(self, timeout=5):
        """Does the server close the connection (after any pending bytes)?"""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def silent(self, wait=1.0):
        """Nothing arrives within wait seconds."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
            self.buf += chunk
            return False
        except socket.timeout:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def check_sanitizers(daemon):
    """In a sanitizer build, the daemon's log must hold no sanitizer report."""
    log = daemon.log_text()
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
        if marker in log:
            raise AssertionError("sanitizer report in convoyd's log:\n" + log[log.index(marker) - 200:])


# Accepted mail must stay in the queue for these tests to read it back:
# delivery goes to a relayhost on a loopback port where nothing listens, so
# every attempt is deferred (connection refused) and nothing leaves.
PARK = "relayhost = [127.0.0.1]:%d" % free_port()


def queued_id(text):
    assert "queued as " in text, text
    return text.split("queued as ")[1].split()[0]


class Base(unittest.TestCase):
    daemon = None

    @classmethod
    def queue(cls):
        r = cls.daemon.ctl("queue", "list", "--json", check=True)
        return {m["id"]: m for m in (json.loads(l) for l in r.stdout.splitlines() if l.strip())}

    @classmethod
    def body(cls, qid):
        if not os.path.exists(QUEUE_CAT):
            raise unittest.SkipTest("queue_cat helper not built")
        r = subprocess.run([QUEUE_CAT, cls.daemon.queue_dir, qid], capture_output=True,
                           timeout=30)
        if r.returncode != 0:
            raise AssertionError("queue_cat: %s" % r.stderr.decode())
        return r.stdout

    def raw(self, **kw):
        c = Raw(self.port, **kw)
        self.addCleanup(c.close)
        return c

    def session(self, **kw):
        c = self.raw(**kw)
        self.assertEqual(c.cmd("EHLO client.example")[0], 250)
        return c

    def assertNothingQueued(self, before):
        time.sleep(0.2)
        self.assertEqual(set(self.queue()), set(before))


class Strict(Base):
    @classmethod
    def setUpClass(cls):
        import pki  # the TLS engineer's throwaway PKI

        cls.tmp = tempfile.TemporaryDirectory(prefix="convoy-smtpd-")
        d = cls.tmp.name
        ca = pki.CA(d)
        leaf = ca.issue("mx", [HOST])
        users = os.path.join(d, "users")
        with open(users, "w") as f:
            f.write("# test users\nalice:%s\n" % make_hash(PASSWORD))
        cls.port = free_port()
        listen = "127.0.0.1:%d" % cls.port
        if IPV6:
            listen += ", [::1]:%d" % cls.port
        conf = "\n".join([
            "myhostname = " + HOST,
            PARK,
            "smtpd_listen = " + listen,
            "mynetworks = 127.0.0.0/8",
            "message_size_limit = %d" % SIZE_LIMIT,
            "smtpd_recipient_limit = %d" % RCPT_LIMIT,
            "smtpd_hard_error_limit = %d" % ERROR_LIMIT,
            "smtpd_client_connection_count_limit = %d" % CLIENT_LIMIT,
            "smtpd_session_limit = %d" % SESSION_LIMIT,
            "smtpd_timeout = %ds" % TIMEOUT,
            "smtpd_data_timeout = %ds" % DATA_TIMEOUT,
            "smtpd_tls_cert_file = " + leaf.chain,
            "smtpd_tls_key_file = " + leaf.key,
            "smtpd_auth_file = " + users,
            "",
        ])
        cls.daemon = Daemon(conf)
        cls.daemon.start()
        cls.ca = ca.cert

    @classmethod
    def tearDownClass(cls):
        try:
            cls.daemon.stop()
            check_sanitizers(cls.daemon)
        finally:
            cls.daemon.close()
            cls.tmp.cleanup()

    def tls_context(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.check_hostname = False
        return ctx

    # ---- plain sessions -------------------------------------------------

    def test_smtplib_plain(self):
        msg = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: plain\r\n\r\nline 1\r\n.dot\r\n"
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example") as s:
            code, _ = s.ehlo()
            self.assertEqual(code, 250)
            for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8",
                        "dsn", "starttls", "chunking"):
                self.assertTrue(s.has_extn(ext), ext)
            self.assertFalse(s.has_extn("auth"), "AUTH offered before TLS")
            self.assertEqual(s.esmtp_features["size"], str(SIZE_LIMIT))
            s.mail("a@example.com")
            s.rcpt("b@example.org")
            code, text = s.data(msg)
            self.assertEqual(code, 250)
        qid = queued_id(text.decode())
        m = self.queue()[qid]
        self.assertEqual(m["sender"], "a@example.com")
        self.assertEqual([r["address"] for r in m["recipients"]], ["b@example.org"])
        self.assertEqual(m["client"]["addr"], "127.0.0.1")
        self.assertEqual(m["client"]["helo"], "client.example")
        body = self.body(qid)
        self.assertTrue(body.startswith(b"Received: from client.example (unknown [127.0.0.1])\r\n"),
                        body[:200])
        self.assertIn(b"by " + HOST.encode() + b" (Convoy) with ESMTP", body)
        self.assertIn(b"\r\n\tfor <b@example.org>; ", body)
        self.assertIn(b"\r\nDate: ", body)
        self.assertIn(b"\r\nMessage-ID: <", body)
        self.assertTrue(body.endswith(msg), body)
        self.daemon.wait_log("%s: from=<a@example.com>" % qid)
        self.daemon.wait_log("%s: client=unknown[127.0.0.1]" % qid)

    def test_message_id_and_date_kept(self):
        msg = (b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n"
               b"Subject: s\r\n\r\nb\r\n")
        with smtplib.SMTP("127.0.0.1", self.port) as s:
            s.sendmail("a@example.com", ["b@example.org"], msg)
        qid = max(self.queue())
        body = self.body(qid)
        self.assertEqual(body.count(b"Date:"), 1)
        self.assertEqual(body.count(b"Message-ID:"), 1)

    def test_pipelined(self):
        c = self.session()
        c.send(b"MAIL FROM:<p@example.com>\r\nRCPT TO:<r1@example.org>\r\n"
               b"RCPT TO:<bad address@example.org>\r\nRCPT TO:<r2@example.org>\r\nDATA\r\n")
        codes = [c.reply()[0] for _ in range(5)]
        self.assertEqual(codes, [250, 250, 501, 250, 354])
        code, text = c.cmd(b"Subject: pipe\r\n\r\nhello\r\n.")
        self.assertEqual(code, 250, text)
        qid = queued_id(text)
        # A second transaction on the same session, pipelined after RSET.
        c.send(b"RSET\r\nMAIL FROM:<>\r\nRCPT TO:<r3@example.org>\r\nDATA\r\n")
        self.assertEqual([c.reply()[0] for _ in range(4)], [250, 250, 250, 354])
        code, text2 = c.cmd(b"x\r\n.")
        self.assertEqual(code, 250)
        self.assertEqual(c.cmd("QUIT")[0], 221)
        q = self.queue()
        self.assertEqual([r["address"] for r in q[qid]["recipients"]],
                         ["r1@example.org", "r2@example.org"])
        self.assertEqual(q[queued_id(text2)]["sender"], "")
        self.assertTrue(self.body(qid).endswith(b"Subject: pipe\r\n\r\nhello\r\n"))

    def test_swaks_pipelining(self):
        r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % self.port, "--pipeline",
                            "--from", "swaks@example.com", "--to", "t1@example.org,t2@example.org",
                            "--header", "Subject: via swaks", "--body", "swaks body"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        qid = queued_id(r.stdout)
        m = self.queue()[qid]
        self.assertEqual(sorted(x["address"] for x in m["recipients"]),
                         ["t1@example.org", "t2@example.org"])
        self.assertIn(b"swaks body", self.body(qid))

    def test_dsn_parameters(self):
        c = self.session()
        self.assertEqual(c.cmd("MAIL FROM:<d@example.com> RET=HDRS ENVID=QQ314159 "
                               "BODY=8BITMIME SIZE=100")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<x@example.org> NOTIFY=SUCCESS,FAILURE "
                               "ORCPT=rfc822;x+40example.org")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<y@example.org> NOTIFY=NEVER")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        code, text = c.cmd(b"caf\xc3\xa9\r\n.")
        self.assertEqual(code, 250)
        m = self.queue()[queued_id(text)]
        self.assertEqual(m["envid"], "QQ314159")
        self.assertEqual(m["ret"], "HDRS")
        self.assertTrue(m["8bitmime"])
        r0, r1 = m["recipients"]
        self.assertEqual(r0["orcpt"], "rfc822;x+40example.org")
        self.assertEqual(r0["notify"], ["SUCCESS", "FAILURE"])
        self.assertEqual(r1["notify"], ["NEVER"])
        self.assertIsNone(r1["orcpt"])

    def test_smtputf8(self):
        c = self.session()
        code, text = c.cmd("MAIL FROM:<j\u00f6rg@example.com>".encode())
        self.assertEqual((code, text[:5]), (553, "5.6.7"))
        self.assertEqual(c.cmd("MAIL FROM:<j\u00f6rg@example.com> SMTPUTF8".encode())[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<\u00e5sa@b\u00fccher.example>".encode())[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        code, text = c.cmd(b"Subject: utf8\r\n\r\nx\r\n.")
        self.assertEqual(code, 250)
        m = self.queue()[queued_id(text)]
        self.assertTrue(m["smtputf8"])
        self.assertEqual(m["sender"], "j\u00f6rg@example.com")

    def test_bdat(self):
        c = self.session()
        c.send(b"MAIL FROM:<b@example.com>\r\nRCPT TO:<c@example.org>\r\n"
               b"BDAT 14\r\nSubject: b\r\n\r\nBDAT 6 LAST\r\nhello\n")
        codes = [c.reply() for _ in range(4)]
        # A bare LF inside BDAT data is refused like in DATA.
        self.assertEqual([x[0] for x in codes[:3]], [250, 250, 250])
        self.assertEqual(codes[3][0], 521)
        c = self.session()
        c.send(b"MAIL FROM:<b@example.com>\r\nRCPT TO:<c@example.org>\r\n"
               b"BDAT 14\r\nSubject: b\r\n\r\nBDAT 8 LAST\r\n.hello\r\n")
        codes = [c.reply() for _ in range(4)]
        self.assertEqual([x[0] for x in codes], [250, 250, 250, 250], codes)
        qid = queued_id(codes[3][1])
        self.assertTrue(self.body(qid).endswith(b"Subject: b\r\n\r\n.hello\r\n"))

    def test_bdat_out_of_sequence_is_skipped(self):
        before = self.queue()
        c = self.session()
        # The chunk's bytes look like commands; they must not be run.
        c.send(b"BDAT 28\r\nMAIL FROM:<evil@example.com>")
        self.assertEqual(c.reply()[0], 503)
        self.assertEqual(c.cmd("NOOP")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<x@example.org>")[0], 503)
        self.assertEqual(c.cmd("BDAT x")[0], 501)
        self.assertTrue(c.closed())
        self.assertNothingQueued(before)

    # ---- TLS and AUTH ------------------------------------------------------

    def test_starttls_and_auth(self):
        host = "::1" if IPV6 else "127.0.0.1"
        with smtplib.SMTP(host, self.port, local_hostname="client.example") as s:
            s.starttls(context=self.tls_context())
            s.ehlo()
            self.assertTrue(s.has_extn("auth"))
            self.assertFalse(s.has_extn("starttls"))
            self.assertIn("PLAIN", s.esmtp_features["auth"])
            self.assertIn("LOGIN", s.esmtp_features["auth"])
            with self.assertRaises(smtplib.SMTPAuthenticationError):
                s.login("alice", "wrong password")
            with self.assertRaises(smtplib.SMTPAuthenticationError):
                s.login("mallory", PASSWORD)
            s.login("alice", PASSWORD)
            s.mail("alice@example.com")
            s.rcpt("far@example.net")
            code, text = s.data(b"Subject: tls\r\n\r\nsecret\r\n")
            self.assertEqual(code, 250)
        qid = queued_id(text.decode())
        m = self.queue()[qid]
        self.assertEqual(m["client"]["auth_user"], "alice")
        self.assertTrue(m["client"]["tls"].startswith("TLSv1."))
        body = self.body(qid)
        self.assertRegex(body.split(b"\r\n")[1].decode(), r"^\t\(using TLSv1\.[23] with cipher \S+\)$")
        self.assertIn(b"with ESMTPSA", body)
        self.daemon.wait_log("sasl_username=alice")
        self.daemon.wait_log("SASL PLAIN authentication failed")

    def test_auth_login_mechanism(self):
        c = self.session()
        c.starttls()
        self.assertEqual(c.cmd("EHLO client.example")[0], 250)
        self.assertEqual(c.cmd("AUTH LOGIN")[0], 334)
        self.assertEqual(c.cmd(base64.b64encode(b"alice"))[0], 334)
        self.assertEqual(c.cmd(base64.b64encode(PASSWORD.encode()))[0], 235)
        self.assertEqual(c.cmd("AUTH PLAIN")[0], 503)

    def test_auth_needs_tls(self):
        c = self.session()
        code, text = c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode())
        self.assertEqual(code, 538)
        self.assertTrue(text.startswith("5.7.11"))

    def test_auth_malformed(self):
        c = self.session()
        c.starttls()
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("AUTH CRAM-MD5")[0], 504)
        self.assertEqual(c.cmd("AUTH PLAIN !!!!")[0], 501)
        self.assertEqual(c.cmd("AUTH PLAIN")[0], 334)
        self.assertEqual(c.cmd("*")[0], 501)
        self.assertEqual(c.cmd("AUTH PLAIN " + base64.b64encode(b"nonuls").decode())[0], 501)
        self.assertEqual(c.cmd("NOOP")[0], 250)

    @unittest.skipUnless(IPV6, "no IPv6 loopback")
    def test_relay_denied(self):
        before = self.queue()
        c = self.raw(host="::1")
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 250)
        code, text = c.cmd("RCPT TO:<victim@example.net>")
        self.assertEqual(code, 554)
        self.assertEqual(text, "5.7.1 <victim@example.net>: Relay access denied")
        self.assertEqual(c.cmd("DATA")[0], 554)
        self.assertNothingQueued(before)
        self.daemon.wait_log("Relay access denied; from=<a@example.com> to=<victim@example.net>")

    def test_starttls_injection(self):
        """CVE-2011-0411: commands pipelined after STARTTLS are discarded."""
        before = self.queue()
        c = self.session()
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<x@example.org>\r\n")
        self.assertEqual(c.reply()[0], 220)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname=HOST)
        self.assertTrue(c.silent(1.0), "server answered injected commands: %r" % c.buf)
        # The EHLO state is forgotten too.
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 503)
        self.assertEqual(c.cmd("EHLO client.example")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<x@example.org>")[0], 503)
        self.assertNothingQueued(before)
        self.daemon.wait_log("pipelined after STARTTLS discarded")

    def test_starttls_twice_and_in_transaction(self):
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        self.assertEqual(c.cmd("STARTTLS")[0], 503)
        c.cmd("RSET")
        c.starttls()
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("STARTTLS")[0], 554)

    def test_bad_tls_handshake(self):
        c = self.session()
        self.assertEqual(c.cmd("STARTTLS")[0], 220)
        c.send(b"this is not a TLS ClientHello\r\n")
        self.assertTrue(c.closed())

    # ---- limits ---------------------------------------------------------------

    def test_size_declared_too_big(self):
        c = self.session()
        code, text = c.cmd("MAIL FROM:<a@example.com> SIZE=%d" % (SIZE_LIMIT + 1))
        self.assertEqual((code, text[:5]), (552, "5.3.4"))

    def test_size_exceeded_in_data(self):
        before = self.queue()
        with smtplib.SMTP("127.0.0.1", self.port) as s:
            s.ehlo()
            self.assertEqual(s.mail("a@example.com")[0], 250)
            self.assertEqual(s.rcpt("b@example.org")[0], 250)
            code, text = s.data(b"x" * 900 + b"\r\n" * 30 + (b"y" * 500 + b"\r\n") * 40)
            self.assertEqual(code, 552)
            self.assertTrue(text.startswith(b"5.3.4"))
            self.assertEqual(s.noop()[0], 250)
        self.assertNothingQueued(before)

    # ---- long lines: folded at acceptance (issue 13 item 5) ------------------

    def check_folded(self, body, original):
        """Every stored line is at most 998 octets, and deleting the
        inserted CRLF SP gives back what the client sent."""
        for line in body.split(b"\r\n"):
            self.assertLessEqual(len(line), 998)
        self.assertTrue(body.replace(b"\r\n ", b"").endswith(original), body[-300:])

    LONG_MSG = (b"Subject: long\r\n"
                b"X-Long: " + b" ".join(b"word%04d" % i for i in range(400)) + b"\r\n"
                b"\r\n"
                b"<p>" + b"a" * 2500 + b"</p>\r\n"
                b"." + b"d" * 1200 + b"\r\n"
                b"short\r\n")

    def test_long_lines_folded_in_data(self):
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        self.assertEqual(c.cmd("DATA")[0], 354)
        # Dot-stuffed on the wire: the ".ddd..." line goes as "..ddd...".
        wire = self.LONG_MSG.replace(b"\r\n.", b"\r\n..")
        code, text = c.cmd(wire + b".")
        self.assertEqual(code, 250, text)
        body = self.body(queued_id(text))
        self.check_folded(body, self.LONG_MSG)
        # The header is folded at a space, the body line without one at 998.
        self.assertIn(b" word0109 \r\n word0110 ", body)
        self.assertIn(b"\r\n<p>" + b"a" * 995 + b"\r\n " + b"a" * 997 + b"\r\n ", body)
        self.assertIn(b"\r\n." + b"d" * 997 + b"\r\n " + b"d" * 203 + b"\r\nshort\r\n", body)

    def test_long_lines_folded_in_bdat(self):
        c = self.session()
        msg = self.LONG_MSG
        cut = 1500  # inside the long header line
        c.send(b"MAIL FROM:<b@example.com>\r\nRCPT TO:<c@example.org>\r\n" +
               b"BDAT %d\r\n" % cut + msg[:cut] +
               b"BDAT %d LAST\r\n" % (len(msg) - cut) + msg[cut:])
        codes = [c.reply() for _ in range(4)]
        self.assertEqual([x[0] for x in codes], [250, 250, 250, 250], codes)
        self.check_folded(self.body(queued_id(codes[3][1])), msg)

    # ---- mail loops (issue 13 item 1) -----------------------------------------

    def send_hops(self, n):
        msg = b"".join(b"Received: from h%d.example by h%d.example; Mon, 30 Nov 2026 "
                       b"17:00:00 +0000\r\n" % (i, i + 1) for i in range(n))
        msg += b"Subject: loop\r\n\r\nround and round\r\n"
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        return c.cmd(msg + b".")

    def test_too_many_hops(self):
        before = self.queue()
        for n in (120, 50):
            code, text = self.send_hops(n)
            self.assertEqual((code, text), (554, "5.4.6 Too many hops"), n)
        self.assertNothingQueued(before)
        self.daemon.wait_log("554 5.4.6 Too many hops")
        # 49 Received: fields plus ours make 50, the limit: accepted.
        code, text = self.send_hops(49)
        self.assertEqual(code, 250, text)
        self.assertEqual(self.body(queued_id(text)).count(b"Received:"), 50)

    def test_received_in_body_not_counted(self):
        msg = b"Subject: x\r\n\r\n" + b"Received: from a by b; x\r\n" * 60
        with smtplib.SMTP("127.0.0.1", self.port) as s:
            s.ehlo()
            s.mail("a@example.com")
            s.rcpt("b@example.org")
            self.assertEqual(s.data(msg)[0], 250)

    # ---- postmaster (issue 13 item 2) ---------------------------------------------

    def test_bare_postmaster(self):
        c = self.session()
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 250)
        for form in ("<postmaster>", "<PostMaster>", " <POSTMASTER> NOTIFY=NEVER"):
            code, text = c.cmd("RCPT TO:" + form)
            self.assertEqual(code, 250, (form, text))
        self.assertEqual(c.cmd("DATA")[0], 354)
        code, text = c.cmd(b"Subject: to postmaster\r\n\r\nhi\r\n.")
        self.assertEqual(code, 250, text)
        m = self.queue()[queued_id(text)]
        # myhostname mx.test.example: its domain is test.example.
        self.assertEqual([r["address"] for r in m["recipients"]],
                         ["postmaster@test.example"] * 3)

    @unittest.skipUnless(IPV6, "no IPv6 loopback")
    def test_bare_postmaster_without_relay_rights(self):
        c = self.raw(host="::1")
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<victim@example.net>")[0], 554)
        self.assertEqual(c.cmd("RCPT TO:<postmaster@example.net>")[0], 554)
        self.assertEqual(c.cmd("RCPT TO:<Postmaster>")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        code, text = c.cmd(b"Subject: complaint\r\n\r\nhi\r\n.")
        self.assertEqual(code, 250, text)
        m = self.queue()[queued_id(text)]
        self.assertEqual([r["address"] for r in m["recipients"]], ["postmaster@test.example"])

    def test_too_many_recipients(self):
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        c.send(b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(RCPT_LIMIT + 2)))
        codes = [c.reply() for _ in range(RCPT_LIMIT + 2)]
        self.assertTrue(all(x[0] == 250 for x in codes[:RCPT_LIMIT]))
        self.assertEqual(codes[RCPT_LIMIT][0], 452)
        self.assertTrue(codes[RCPT_LIMIT][1].startswith("4.5.3"))
        self.assertEqual(c.cmd("DATA")[0], 354)
        code, text = c.cmd(b"x\r\n.")
        self.assertEqual(code, 250)
        self.assertEqual(len(self.queue()[queued_id(text)]["recipients"]), RCPT_LIMIT)

    def test_command_line_too_long(self):
        c = self.session()
        code, text = c.cmd(b"NOOP " + b"x" * 5000)
        self.assertEqual((code, text[:5]), (500, "5.5.2"))
        self.assertEqual(c.cmd("NOOP")[0], 250)

    def test_error_limit(self):
        c = self.session()
        for _ in range(ERROR_LIMIT - 1):
            self.assertEqual(c.cmd("BOGUS")[0], 502)
        code, _ = c.cmd("BOGUS")
        self.assertEqual(code, 502)
        self.assertEqual(c.reply()[0], 421)
        self.assertTrue(c.closed())

    def test_idle_timeout(self):
        c = self.session()
        t0 = time.time()
        code, text = c.reply()
        self.assertEqual((code, text[:5]), (421, "4.4.2"))
        self.assertLess(time.time() - t0, TIMEOUT + 3)
        self.assertTrue(c.closed())

    def test_slow_data(self):
        before = self.queue()
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        t0 = time.time()
        try:
            while time.time() - t0 < DATA_TIMEOUT + 4:
                c.send(b"x")
                time.sleep(0.5)
                if not c.silent(0.01):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertIn(b"421 4.4.2", c.buf)
        self.assertNothingQueued(before)
        self.daemon.wait_log("data too slow")

    def test_connection_limits(self):
        time.sleep(0.5)  # let the server see earlier tests' connections close
        opened = 0
        if IPV6:
            # ::1 is not in mynetworks, so the per-client limit applies.
            conns = [self.raw(host="::1") for _ in range(CLIENT_LIMIT)]
            for c in conns:
                self.assertEqual(c.greeting[0], 220)
            extra = self.raw(host="::1")
            self.assertEqual(extra.greeting[0], 421)
            self.assertIn("too many connections from ::1", extra.greeting[1])
            opened = CLIENT_LIMIT
        # Clients in mynetworks are exempt from it, as in Postfix, but not
        # from the total.
        others = [self.raw(source="127.0.0.2") for _ in range(SESSION_LIMIT - opened)]
        for c in others:
            self.assertEqual(c.greeting[0], 220)
        last = self.raw(source="127.0.0.3")
        self.assertEqual(last.greeting[0], 421)
        self.assertIn("too many connections", last.greeting[1])

    # ---- malformed input and sequence -----------------------------------------

    def test_out_of_sequence(self):
        c = self.raw()
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 503)
        self.assertEqual(c.cmd("RCPT TO:<b@example.org>")[0], 503)
        self.assertEqual(c.cmd("DATA")[0], 503)
        self.assertEqual(c.cmd("EHLO client.example")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<b@example.org>")[0], 503)
        self.assertEqual(c.cmd("DATA")[0], 503)
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 503)
        self.assertEqual(c.cmd("DATA")[0], 503)

    def test_malformed_commands(self):
        cases = [
            ("EHLO", 501), ("HELO", 501), ("XYZZY", 502), ("EXPN list", 502),
            ("MAIL FROM:a@example.com", 501), ("MAIL FROM:<a@example.com", 501),
            ("MAIL TO:<a@example.com>", 501), ("MAIL FROM:<a@example.com> FOO=1", 555),
            ("MAIL FROM:<a@example.com> SIZE=x", 501), ("DATA now", 501), ("RSET x", 501),
            ("VRFY", 501), ("VRFY someone", 252), ("HELP", 214), ("NOOP", 250),
        ]
        # A few per session, so the error limit is not what answers.
        for i in range(0, len(cases), 5):
            c = self.session()
            for line, want in cases[i:i + 5]:
                code, text = c.cmd(line)
                self.assertEqual(code, want, line)
                if code >= 500:
                    self.assertRegex(text, r"^5\.\d\.\d+ ", line)
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        for line, want in [("RCPT TO:<a..b@example.org>", 501), ("RCPT TO:<@example.org>", 501),
                           ("RCPT TO:<" + "l" * 65 + "@example.org>", 501),
                           ("RCPT TO:<a@" + "d" * 256 + ">", 501), ("RCPT TO:<a@-x.org>", 501),
                           ("RCPT TO:<b@example.org> NOTIFY=BOGUS", 501)]:
            code, text = c.cmd(line)
            self.assertEqual(code, want, line)
            self.assertRegex(text, r"^5\.\d\.\d+ ", line)

    def test_nul_in_command(self):
        c = self.session()
        code, text = c.cmd(b"NOOP \x00")
        self.assertEqual((code, text[:5]), (500, "5.5.2"))
        self.assertEqual(c.cmd("NOOP")[0], 250)

    def test_bare_lf_in_command(self):
        c = self.raw()
        c.send(b"EHLO client.example\n")
        code, text = c.reply()
        self.assertEqual(code, 521)
        self.assertIn("bare <LF>", text)
        self.assertTrue(c.closed())

    def test_garbage_does_not_crash(self):
        import random
        rnd = random.Random(5321)
        for _ in range(20):
            c = Raw(self.port)
            try:
                c.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 3000))))
                c.closed(0.3)
            except OSError:
                pass
            c.close()
        c = self.session()
        self.assertEqual(c.cmd("NOOP")[0], 250)

    def test_disconnect_mid_data(self):
        before = self.queue()
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        c.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
        c.close()
        self.daemon.wait_log("lost connection after DATA")
        self.assertNothingQueued(before)

    def test_smuggling_rejected(self):
        """Every non-CRLF end-of-data shape is refused and nothing is queued."""
        before = self.queue()
        for shape in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n",
                      b"\n..\n"):
            c = self.session()
            c.cmd("MAIL FROM:<a@example.com>")
            c.cmd("RCPT TO:<b@example.org>")
            self.assertEqual(c.cmd("DATA")[0], 354)
            c.send(b"Subject: outer\r\n\r\nbody" + shape +
                   b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.org>\r\n"
                   b"DATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n")
            code, text = c.reply()
            self.assertEqual(code, 521, shape)
            self.assertIn("bare <", text)
            self.assertTrue(c.closed(), shape)
        self.assertNothingQueued(before)

    def test_nul_in_data(self):
        before = self.queue()
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        code, text = c.cmd(b"a\x00b\r\n.")
        self.assertEqual((code, text[:5]), (554, "5.6.0"))
        self.assertEqual(c.cmd("NOOP")[0], 250)
        self.assertNothingQueued(before)


class Lenient(Base):
    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        cls.daemon = Daemon("\n".join([
            "myhostname = " + HOST,
            PARK,
            "smtpd_listen = 127.0.0.1:%d" % cls.port,
            "smtpd_forbid_bare_newline = normalize",
            "smtpd_reject_long_lines = yes",
            "postmaster_address = hostmaster@ops.example",
            "",
        ]))
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.daemon.stop()
            check_sanitizers(cls.daemon)
        finally:
            cls.daemon.close()

    def test_reload_applies_to_new_sessions(self):
        old = self.raw()
        self.assertTrue(old.greeting[1].endswith("ESMTP Convoy"), old.greeting)
        with open(self.daemon.conf_path) as f:
            text = f.read()
        self.daemon.write_config(text + "smtpd_banner = ESMTP reloaded\n")
        try:
            self.daemon.signal(signal.SIGHUP)
            self.daemon.wait_log("reload: configuration")
            new = self.raw()
            self.assertEqual(new.greeting, (220, HOST + " ESMTP reloaded"))
            # The session from before goes on with what it had.
            self.assertEqual(old.cmd("EHLO client.example")[0], 250)
        finally:
            self.daemon.write_config(text)
            self.daemon.signal(signal.SIGHUP)

    def test_long_line_refused_when_asked(self):
        before = self.queue()
        c = self.session()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        code, text = c.cmd(b"a" * 999 + b"\r\n.")
        self.assertEqual((code, text[:5]), (554, "5.6.0"))
        # 998 octets, and 998 after a stuffed dot, are fine.
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        code, text = c.cmd(b"a" * 998 + b"\r\n." + b"b" * 998 + b"\r\n.")
        self.assertEqual(code, 250, text)
        self.assertEqual(len(set(self.queue()) - set(before)), 1)

    def test_postmaster_address(self):
        with smtplib.SMTP("127.0.0.1", self.port) as s:
            s.ehlo()
            s.mail("a@example.com")
            self.assertEqual(s.rcpt("postmaster")[0], 250)
            code, text = s.data(b"Subject: pm\r\n\r\nhi\r\n")
        m = self.queue()[queued_id(text.decode())]
        self.assertEqual([r["address"] for r in m["recipients"]], ["hostmaster@ops.example"])

    def test_bare_lf_command_accepted(self):
        c = self.raw()
        c.send(b"EHLO client.example\n")
        self.assertEqual(c.reply()[0], 250)

    def test_smuggling_normalized_into_one_message(self):
        """In normalize mode the smuggled message stays inside the first one."""
        for shape in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n"):
            before = self.queue()
            c = self.session()
            c.cmd("MAIL FROM:<a@example.com>")
            c.cmd("RCPT TO:<b@example.org>")
            self.assertEqual(c.cmd("DATA")[0], 354)
            c.send(b"Subject: outer\r\n\r\nbody" + shape +
                   b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.org>\r\n"
                   b"DATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n")
            code, text = c.reply()
            self.assertEqual(code, 250, shape)
            # No reply for the smuggled commands: they were message text.
            self.assertTrue(c.silent(0.5), (shape, c.buf))
            after = self.queue()
            new = set(after) - set(before)
            self.assertEqual(len(new), 1, shape)
            qid = new.pop()
            self.assertEqual([r["address"] for r in after[qid]["recipients"]], ["b@example.org"])
            body = self.body(qid)
            self.assertTrue(body.endswith(b"Subject: outer\r\n\r\nbody\r\n.\r\n"
                                          b"MAIL FROM:<admin@example.com>\r\n"
                                          b"RCPT TO:<victim@example.org>\r\nDATA\r\n"
                                          b"Subject: smuggled\r\n\r\nx\r\n"), (shape, body))
            # Only CRLF line ends were stored.
            self.assertNotIn(b"\n", body.replace(b"\r\n", b""))
            self.assertNotIn(b"\r", body.replace(b"\r\n", b""))


class Shutdown(unittest.TestCase):
    def test_sigterm_with_sessions_open(self):
        """On SIGTERM sessions in progress may finish within
        daemon_shutdown_timeout; the rest get 421 and are closed."""
        port = free_port()
        d = Daemon("\n".join(["myhostname = " + HOST, PARK, "smtpd_listen = 127.0.0.1:%d" % port,
                               "daemon_shutdown_timeout = 2s", ""]))
        self.addCleanup(d.close)
        d.start()
        idle = Raw(port)
        self.addCleanup(idle.close)
        busy = Raw(port)
        self.addCleanup(busy.close)
        busy.cmd("EHLO client.example")
        busy.cmd("MAIL FROM:<a@example.com>")
        busy.cmd("RCPT TO:<b@example.org>")
        self.assertEqual(busy.cmd("DATA")[0], 354)
        busy.send(b"Subject: half\r\n")
        t0 = time.time()
        d.signal(signal.SIGTERM)
        # New connections are refused at once; the sessions go on for now.
        time.sleep(0.5)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), 1).close()
        self.assertEqual(idle.cmd("NOOP")[0], 250)
        # The busy one does not finish in time: both are dropped.
        self.assertEqual(d.proc.wait(15), 0)
        self.assertLess(time.time() - t0, 10)
        for c in (idle, busy):
            self.assertTrue(c.closed(2))
        self.assertIn(b"421 4.3.2", idle.buf)
        check_sanitizers(d)
        r = d.ctl("queue", "list", "--json", check=True)
        self.assertEqual(r.stdout.strip(), "")


if __name__ == "__main__":
    unittest.main()
