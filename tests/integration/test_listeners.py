"""Integration tests of listener roles (smtpd_listen ADDR:PORT/ROLE) and of
smtpd_listen changes applied on reload, with real clients (Python's smtplib
and ssl with the test CA) against the real convoyd.

  - /smtp (the default): relay for mynetworks, STARTTLS offered.
  - /submission (RFC 6409): AUTH required before MAIL from every client,
    even one in mynetworks; AUTH offered only after STARTTLS.
  - /submissions (RFC 8314): TLS from the first byte, no STARTTLS, AUTH
    required; a plaintext client gets no greeting.
  - reload: new addresses opened, removed ones closed, kept ones untouched
    (a session in progress on a kept listener finishes its message); a
    reload whose new address cannot be bound changes nothing.
"""

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from convoy import Daemon, free_port

HOST = "mx.test.example"
PASSWORD = "correct horse"
MSG = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: roles\r\n\r\nbody\r\n"
# Delivery goes nowhere: a relayhost on a loopback port where nothing listens.
PARK = "relayhost = [127.0.0.1]:%d" % free_port()


def make_hash(password):
    """A SHA-512-crypt hash, as `openssl passwd -6` writes it."""
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, text=True,
                       capture_output=True, check=True)
    return r.stdout.strip()


def check_sanitizers(daemon):
    """In a sanitizer build, the daemon's log must hold no sanitizer report."""
    log = daemon.log_text()
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
        if marker in log:
            raise AssertionError("sanitizer report in convoyd's log:\n" + log[log.index(marker) - 200:])


def refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return False
    except ConnectionRefusedError:
        return True


class Roles(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import pki

        cls.tmp = tempfile.TemporaryDirectory(prefix="convoy-roles-")
        d = cls.tmp.name
        ca = pki.CA(d)
        cls.ca = ca.cert
        leaf = ca.issue("mx", [HOST])
        cls.users = os.path.join(d, "users")
        with open(cls.users, "w") as f:
            f.write("alice:%s\n" % make_hash(PASSWORD))
        cls.tls_lines = ["smtpd_tls_cert_file = " + leaf.chain,
                         "smtpd_tls_key_file = " + leaf.key]
        cls.p25, cls.p587, cls.p465 = free_port(), free_port(), free_port()
        cls.base = "\n".join([
            "myhostname = " + HOST,
            PARK,
            "mynetworks = 127.0.0.0/8",
            "smtpd_timeout = 5s",
            "smtpd_auth_file = " + cls.users,
        ] + cls.tls_lines) + "\n"
        cls.listen = ("smtpd_listen = 127.0.0.1:%d, 127.0.0.1:%d/submission, "
                      "127.0.0.1:%d/submissions\n" % (cls.p25, cls.p587, cls.p465))
        cls.daemon = Daemon(cls.base + cls.listen)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.daemon.stop()
            check_sanitizers(cls.daemon)
        finally:
            cls.daemon.close()
            cls.tmp.cleanup()

    def ctx(self):
        c = ssl.create_default_context(cafile=self.ca)
        c.check_hostname = False
        return c

    def test_smtp_role_relays_for_mynetworks(self):
        with smtplib.SMTP("127.0.0.1", self.p25, timeout=10) as s:
            s.ehlo("client.example")
            self.assertTrue(s.has_extn("starttls"))
            self.assertEqual(s.mail("a@example.com")[0], 250)
            self.assertEqual(s.rcpt("b@example.org")[0], 250)
            self.assertEqual(s.data(MSG)[0], 250)
        self.daemon.wait_log("to 127.0.0.1:%d (smtp)" % self.p25)

    def test_submission_requires_auth_after_starttls(self):
        with smtplib.SMTP("127.0.0.1", self.p587, timeout=10) as s:
            s.ehlo("client.example")
            self.assertTrue(s.has_extn("starttls"))
            self.assertFalse(s.has_extn("auth"), "AUTH offered before STARTTLS on 587")
            # 127.0.0.1 is in mynetworks: that grants nothing on a submission port.
            code, text = s.mail("a@example.com")
            self.assertEqual((code, text), (530, b"5.7.0 Authentication required"))
            s.starttls(context=self.ctx())
            s.ehlo("client.example")
            self.assertFalse(s.has_extn("starttls"))
            self.assertTrue(s.has_extn("auth"))
            self.assertEqual(s.mail("a@example.com")[0], 530)
            s.login("alice", PASSWORD)
            self.assertEqual(s.mail("a@example.com")[0], 250)
            self.assertEqual(s.rcpt("b@example.org")[0], 250)
            code, text = s.data(MSG)
            self.assertEqual(code, 250, text)
        self.daemon.wait_log("to 127.0.0.1:%d (submission)" % self.p587)

    def test_submission_refuses_relay_from_mynetworks(self):
        with smtplib.SMTP("127.0.0.1", self.p587, timeout=10) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@example.com")[0], 530)
            # Without MAIL, RCPT is out of sequence: nothing is relayed.
            self.assertEqual(s.rcpt("b@example.org")[0], 503)

    def test_submissions_implicit_tls(self):
        with smtplib.SMTP_SSL("127.0.0.1", self.p465, context=self.ctx(), timeout=10) as s:
            code, _ = s.ehlo("client.example")
            self.assertEqual(code, 250)
            self.assertFalse(s.has_extn("starttls"), "STARTTLS offered over implicit TLS")
            self.assertTrue(s.has_extn("auth"))
            self.assertEqual(s.mail("a@example.com")[0], 530)
            s.login("alice", PASSWORD)
            self.assertEqual(s.mail("a@example.com")[0], 250)
            self.assertEqual(s.rcpt("b@example.org")[0], 250)
            self.assertEqual(s.data(MSG)[0], 250)
        self.daemon.wait_log("to 127.0.0.1:%d (submissions)" % self.p465)

    def test_submissions_plaintext_fails(self):
        # A plaintext client gets no greeting: the server waits for a TLS
        # ClientHello, and what the client says is not one.
        with socket.create_connection(("127.0.0.1", self.p465), timeout=5) as s:
            s.settimeout(1.5)
            try:
                got = s.recv(100)
            except socket.timeout:
                got = b""
            self.assertFalse(got.startswith(b"220"), got)
            s.sendall(b"EHLO client.example\r\n")
            s.settimeout(10)
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except (ConnectionResetError, socket.timeout):
                pass
            self.assertNotIn(b"250", data)
            self.assertNotIn(b"220 ", data)
        with self.assertRaises((smtplib.SMTPServerDisconnected, socket.timeout,
                                ConnectionResetError)):
            smtplib.SMTP("127.0.0.1", self.p465, timeout=3)


class RoleConfig(unittest.TestCase):
    """A submission port without TLS or credentials is a configuration error."""

    def check(self, conf, want):
        d = Daemon(conf)
        try:
            d.start(wait_ready=False)
            rc = d.proc.wait(20)
            self.assertEqual(rc, 78, d.log_text())
            self.assertIn(want, d.log_text())
        finally:
            d.close()

    def test_submission_without_certificate(self):
        p = free_port()
        self.check("smtpd_listen = 127.0.0.1:%d/submission\nsmtpd_auth_file = /dev/null\n" % p,
                   '"127.0.0.1:%d/submission"' % p)

    def test_submissions_without_credentials(self):
        p = free_port()
        self.check("smtpd_listen = 127.0.0.1:%d/submissions\n" % p,
                   '"127.0.0.1:%d/submissions"' % p)

    def test_unknown_role(self):
        p = free_port()
        self.check("smtpd_listen = 127.0.0.1:%d/lmtp\n" % p, "smtpd_listen")


class Reload(unittest.TestCase):
    def setUp(self):
        import pki

        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-relisten-")
        self.addCleanup(self.tmp.cleanup)
        d = self.tmp.name
        ca = pki.CA(d)
        leaf = ca.issue("mx", [HOST])
        users = os.path.join(d, "users")
        with open(users, "w") as f:
            f.write("alice:%s\n" % make_hash(PASSWORD))
        self.base = "\n".join([
            "myhostname = " + HOST, PARK, "mynetworks = 127.0.0.0/8",
            "smtpd_auth_file = " + users,
            "smtpd_tls_cert_file = " + leaf.chain, "smtpd_tls_key_file = " + leaf.key,
        ]) + "\n"
        self.pa, self.pb, self.pc = free_port(), free_port(), free_port()
        self.daemon = Daemon(self.base + "smtpd_listen = 127.0.0.1:%d, 127.0.0.1:%d\n"
                             % (self.pa, self.pb))
        self.addCleanup(self.daemon.close)
        self.addCleanup(lambda: (self.daemon.stop(), check_sanitizers(self.daemon)))
        self.daemon.start()

    def reload(self, listen):
        self.daemon.write_config("queue_directory = %s\n%ssmtpd_listen = %s\n"
                                 % (self.daemon.queue_dir, self.base, listen))
        r = self.daemon.ctl("reload")
        return r

    def test_add_remove_keep(self):
        # A session on the kept listener, in the middle of a transaction.
        kept = smtplib.SMTP("127.0.0.1", self.pa, timeout=10)
        self.addCleanup(kept.close)
        kept.ehlo("client.example")
        self.assertEqual(kept.mail("a@example.com")[0], 250)
        self.assertEqual(kept.rcpt("b@example.org")[0], 250)
        # A session on the listener about to be removed.
        gone = smtplib.SMTP("127.0.0.1", self.pb, timeout=10)
        self.addCleanup(gone.close)
        gone.ehlo("client.example")

        r = self.reload("127.0.0.1:%d, 127.0.0.1:%d/submission" % (self.pa, self.pc))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.daemon.wait_log("no longer listening on 127.0.0.1:%d" % self.pb)

        self.assertTrue(refused(self.pb), "removed listener still accepts")
        with smtplib.SMTP("127.0.0.1", self.pc, timeout=10) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@example.com")[0], 530)  # the submission role
        with smtplib.SMTP("127.0.0.1", self.pa, timeout=10) as s:
            self.assertEqual(s.ehlo("client.example")[0], 250)
        # Nothing lost: the sessions in progress finish their messages.
        code, text = kept.data(MSG)
        self.assertEqual(code, 250, text)
        self.assertEqual(gone.sendmail("a@example.com", ["b@example.org"], MSG), {})
        self.daemon.wait_log("to 127.0.0.1:%d (submission)" % self.pc)

    def test_bind_failure_changes_nothing(self):
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        busy = blocker.getsockname()[1]
        r = self.reload("127.0.0.1:%d, 127.0.0.1:%d" % (self.pa, busy))
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("127.0.0.1:%d" % busy, r.stdout + r.stderr)
        self.daemon.wait_log("reload failed")
        # Both old listeners are still there, with their old role.
        for p in (self.pa, self.pb):
            with smtplib.SMTP("127.0.0.1", p, timeout=10) as s:
                s.ehlo("client.example")
                self.assertEqual(s.mail("a@example.com")[0], 250)
        # A reload with a free address then works.
        r = self.reload("127.0.0.1:%d, 127.0.0.1:%d" % (self.pa, self.pc))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(refused(self.pb))
        with smtplib.SMTP("127.0.0.1", self.pc, timeout=10) as s:
            self.assertEqual(s.ehlo("client.example")[0], 250)


if __name__ == "__main__":
    unittest.main()
