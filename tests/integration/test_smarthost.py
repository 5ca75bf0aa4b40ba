"""Integration tests of SMTP AUTH to a smart host (smtp_sasl_auth_enable,
smtp_sasl_password_maps, smtp_sasl_tls_required): the real convoyd relays
through an aiosmtpd smart host that requires STARTTLS and AUTH and records
every AUTH attempt.

  - the right password: delivered, after STARTTLS, with AUTH;
  - a wrong password: deferred with the server's 535 in the log and in the
    queue, and the password appears nowhere in convoyd's log;
  - a map others can read: a configuration error (at start and on reload);
  - TLS required but no STARTTLS offered: deferred with 4.7.0, and the
    password is never sent.
"""

import json
import os
import smtplib
import ssl
import tempfile
import threading
import time
import unittest

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from convoy import Daemon, free_port

USER = "relayuser"
PASSWORD = "Pw-9f3Kq-xyzzy-plugh"
WRONG = "Wrong-7Hd2-frobozz"
MSG = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: via smart host\r\n\r\nhello\r\n"


def check_sanitizers(daemon):
    """In a sanitizer build, the daemon's log must hold no sanitizer report."""
    log = daemon.log_text()
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
        if marker in log:
            raise AssertionError("sanitizer report in convoyd's log:\n" + log[log.index(marker) - 200:])


class SmartHost:
    """aiosmtpd on 127.0.0.1:port: AUTH required before MAIL, STARTTLS
    offered when tls is given (and then required before AUTH). Records
    every AUTH command and every login/password it was given."""

    def __init__(self, port, tls=None, mechanisms=("PLAIN", "LOGIN")):
        self.port = port
        self.tls = tls
        self.lock = threading.Lock()
        self.auth_commands = 0
        self.logins = []  # (login, password, over_tls)
        self.messages = []
        self.exclude = [m for m in ("PLAIN", "LOGIN") if m not in mechanisms]
        self.ctl = None

    def start(self):
        sink = self

        def authenticator(server, session, envelope, mechanism, auth_data):
            if not isinstance(auth_data, LoginPassword):
                return AuthResult(success=False, handled=False)
            login = auth_data.login.decode()
            password = auth_data.password.decode()
            with sink.lock:
                sink.logins.append((login, password, bool(session.ssl)))
            ok = login == USER and password == PASSWORD
            return AuthResult(success=ok, handled=False)

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with sink.lock:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.content, bool(session.ssl),
                                          session.authenticated))
                return "250 2.0.0 Ok: queued"

        class Server(SMTP):
            async def smtp_AUTH(self, arg):
                with sink.lock:
                    sink.auth_commands += 1
                return await super().smtp_AUTH(arg)

        class Ctl(Controller):
            def factory(self):
                return Server(self.handler, **self.SMTP_kwargs)

        kw = dict(hostname="127.0.0.1", port=self.port, server_hostname="relay.test",
                  auth_required=True, authenticator=authenticator, ready_timeout=10,
                  auth_exclude_mechanism=self.exclude)
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.tls[0], self.tls[1])
            kw.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
        else:
            # AUTH offered in plaintext: the client must still not use it.
            kw.update(auth_require_tls=False)
        self.ctl = Ctl(Handler(), **kw)
        self.ctl.start()
        with self.lock:
            self.auth_commands = 0
            self.logins.clear()
        return self

    def stop(self):
        if self.ctl:
            self.ctl.stop()
            self.ctl = None

    def wait(self, pred, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if pred():
                    return True
            time.sleep(0.05)
        return False


class Base(unittest.TestCase):
    tls = True
    mechanisms = ("PLAIN", "LOGIN")
    password = PASSWORD
    extra = ""

    def setUp(self):
        import pki

        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-smarthost-")
        self.addCleanup(self.tmp.cleanup)
        d = self.tmp.name
        ca = pki.CA(d)
        leaf = ca.issue("relay", ["relay.test"])
        self.port = free_port()
        self.relay = SmartHost(self.port, (leaf.chain, leaf.key) if self.tls else None,
                               self.mechanisms).start()
        self.addCleanup(self.relay.stop)
        self.map = os.path.join(d, "sasl_passwd")
        self.write_map("[127.0.0.1]:%d %s:%s\n" % (self.port, USER, self.password))
        self.listen = free_port()
        self.conf = "\n".join([
            "myhostname = convoy.test",
            "smtpd_listen = 127.0.0.1:%d" % self.listen,
            "relayhost = [127.0.0.1]:%d" % self.port,
            "smtp_tls_CAfile = " + ca.cert,
            "smtp_sasl_auth_enable = yes",
            "smtp_sasl_password_maps = " + self.map,
            "minimal_backoff_time = 1h",
            self.extra,
        ]) + "\n"
        self.daemon = Daemon(self.conf)
        self.addCleanup(self.daemon.close)
        self.addCleanup(self.stop_and_check)

    def stop_and_check(self):
        if self.daemon.proc and self.daemon.proc.poll() is None:
            self.daemon.stop()
        check_sanitizers(self.daemon)

    def write_map(self, text, mode=0o600):
        with open(self.map, "w") as f:
            f.write(text)
        os.chmod(self.map, mode)

    def submit(self):
        with smtplib.SMTP("127.0.0.1", self.listen, timeout=10) as s:
            s.sendmail("a@example.com", ["b@example.org"], MSG)

    def queue(self):
        r = self.daemon.ctl("queue", "list", "--json", check=True)
        return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]

    def assert_no_password_logged(self):
        log = self.daemon.log_text()
        for secret in (PASSWORD, WRONG):
            self.assertNotIn(secret, log)
            # Nor its base64 (AUTH PLAIN's initial response or LOGIN's).
            import base64
            self.assertNotIn(base64.b64encode(secret.encode()).decode(), log)
            self.assertNotIn(base64.b64encode(("\0%s\0%s" % (USER, secret)).encode()).decode(),
                             log)


class Delivered(Base):
    def test_delivered_with_auth_over_tls(self):
        self.daemon.start()
        self.submit()
        self.assertTrue(self.relay.wait(lambda: self.relay.messages), self.daemon.log_text())
        sender, rcpts, content, over_tls, authenticated = self.relay.messages[0]
        self.assertEqual((sender, rcpts), ("a@example.com", ["b@example.org"]))
        self.assertTrue(over_tls)
        self.assertTrue(authenticated)
        self.assertEqual(self.relay.logins, [(USER, PASSWORD, True)])
        self.daemon.wait_log("status=sent")
        self.daemon.wait_log("SASL authentication succeeded")
        self.assert_no_password_logged()


class DeliveredLogin(Base):
    mechanisms = ("LOGIN",)

    def test_login_when_plain_is_not_offered(self):
        self.daemon.start()
        self.submit()
        self.assertTrue(self.relay.wait(lambda: self.relay.messages), self.daemon.log_text())
        self.assertEqual(self.relay.logins, [(USER, PASSWORD, True)])
        self.assert_no_password_logged()


class WrongPassword(Base):
    password = WRONG

    def test_deferred_with_server_reply(self):
        self.daemon.start()
        self.submit()
        self.daemon.wait_log("status=deferred")
        log = self.daemon.log_text()
        self.assertIn("535 5.7.8", log)
        self.assertIn("SASL authentication failed", log)
        self.assertIn("dsn=4.7.8", log)
        self.assertEqual(self.relay.messages, [])
        self.assertEqual(self.relay.logins, [(USER, WRONG, True)])
        [m] = self.queue()
        [r] = m["recipients"]
        self.assertEqual(r["state"], "deferred")
        self.assertIn("535 5.7.8", r["reason"])
        self.assert_no_password_logged()


class WorldReadable(Base):
    def test_refused_at_start(self):
        self.write_map("[127.0.0.1]:%d %s:%s\n" % (self.port, USER, PASSWORD), 0o644)
        self.daemon.start(wait_ready=False)
        rc = self.daemon.proc.wait(20)
        self.assertNotEqual(rc, 0)
        self.assertIn(self.map, self.daemon.log_text())
        self.assert_no_password_logged()

    def test_refused_on_reload(self):
        self.daemon.start()
        self.write_map("[127.0.0.1]:%d %s:%s\n" % (self.port, USER, WRONG), 0o644)
        r = self.daemon.ctl("reload")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(self.map, r.stdout + r.stderr)
        # The old table stays in force: the right password is used.
        self.submit()
        self.assertTrue(self.relay.wait(lambda: self.relay.messages), self.daemon.log_text())
        self.assertEqual(self.relay.logins, [(USER, PASSWORD, True)])
        self.assert_no_password_logged()


class NoStarttls(Base):
    tls = False

    def test_deferred_and_password_never_sent(self):
        self.daemon.start()
        self.submit()
        self.daemon.wait_log("status=deferred")
        log = self.daemon.log_text()
        self.assertIn("dsn=4.7.0", log)
        self.assertIn("credentials not sent", log)
        self.assertEqual(self.relay.auth_commands, 0)
        self.assertEqual(self.relay.logins, [])
        self.assertEqual(self.relay.messages, [])
        self.assert_no_password_logged()


class NoStarttlsAllowed(Base):
    tls = False
    extra = "smtp_sasl_tls_required = no"

    def test_plaintext_auth_when_allowed(self):
        self.daemon.start()
        self.submit()
        self.assertTrue(self.relay.wait(lambda: self.relay.messages), self.daemon.log_text())
        self.assertEqual(self.relay.logins, [(USER, PASSWORD, False)])
        self.assert_no_password_logged()


if __name__ == "__main__":
    unittest.main()
