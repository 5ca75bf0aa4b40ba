"""Running as a service (issue 17): mail_owner and the privilege drop, the
Prometheus endpoint (metrics_listen) checked with promtool, and the
systemd watchdog.

The privilege tests need root (CI runs as root) and use the system's
`nobody` user; they are skipped otherwise. Mail goes to an aiosmtpd sink
through relayhost on loopback.
"""

import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import time
import unittest
import urllib.error
import urllib.request

from convoy import CONVOYD, Daemon, free_port
from sink import Sink

ROOT = os.geteuid() == 0
DOCS = os.path.join(os.path.dirname(__file__), "../../docs/metrics.md")
PROMTOOL = shutil.which("promtool") or "/usr/local/lib/convoy-tools/promtool"


def nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


def proc_ids(pid):
    """The Uid:, Gid: and Groups: lines of /proc/PID/status, as int lists."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[key] = [int(x) for x in val.split()]
    return out


def files_under(path):
    for dirpath, dirnames, filenames in os.walk(path):
        yield dirpath
        for n in filenames:
            yield os.path.join(dirpath, n)


class Base(unittest.TestCase):
    def setUp(self):
        self.sink = Sink("127.0.0.1", free_port()).start()
        self.sub_port = free_port()
        self.daemon = None

    def tearDown(self):
        if self.daemon:
            try:
                self.daemon.stop()
            finally:
                self.daemon.close()
        self.sink.stop()

    def config(self, extra=""):
        return ("myhostname = relay.test\n"
                "smtpd_listen = 127.0.0.1:%d\n"
                "relayhost = [127.0.0.1]:%d\n"
                "smtp_tls_security_level = none\n"
                "dns_servers = 127.0.0.1:%d\n"
                "dns_timeout = 1s\n"
                "dns_tries = 1\n%s" % (self.sub_port, self.sink.port, free_port(), extra))

    def send(self, rcpt="rcpt@dest.test"):
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.ehlo("app.test")
            c.sendmail("sender@src.test", [rcpt],
                       b"Subject: service\r\n\r\nHello.\r\n")


class MetricsTest(Base):
    def get(self, path, method="GET"):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.mport, path), method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def test_metrics_endpoint(self):
        self.mport = free_port()
        self.daemon = Daemon(self.config("metrics_listen = 127.0.0.1:%d\n" % self.mport)).start()
        self.send()
        self.sink.wait_messages(1)
        # A refusal: a malformed MAIL gets 501 5.1.7 (an address problem).
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.ehlo("app.test")
            code, _ = c.docmd("MAIL FROM:<broken")
            self.assertEqual(code // 100, 5)
        status, headers, text = self.get("/metrics")
        self.assertEqual(status, 200)
        self.assertIn("version=0.0.4", headers["Content-Type"])
        self.assertRegex(text, r"(?m)^convoy_messages_accepted_total 1$")
        self.assertRegex(text, r'(?m)^convoy_messages_refused_total\{reason="[a-z]+",code="5xx"\} 1$')
        self.assertRegex(text, r'(?m)^convoy_queue_recipients\{state="queued"\} \d+$')
        self.assertRegex(text, r"(?m)^convoy_queue_oldest_message_age_seconds \d")
        self.assertRegex(text, r"(?m)^convoy_queue_commit_requests_count [1-9]")
        self.assertRegex(text, r"(?m)^convoy_smtpd_sessions 0$")
        # The delivery engine's series: the one delivery above.
        self.assertRegex(text, r"(?m)^convoy_recipients_delivered_total 1$")
        self.assertRegex(text, r"(?m)^convoy_delivery_latency_seconds_count 1$")
        self.assertRegex(text, r"(?m)^convoy_smtp_sessions [01]$")
        # Every series is documented, and the doc names no other.
        with open(DOCS) as f:
            doc = f.read()
        names = set(re.findall(r"(?m)^# TYPE (\S+) ", text))
        self.assertGreater(len(names), 15)
        documented = set(re.findall(r"`(convoy_[a-z_]+)`", doc))
        self.assertEqual(names, documented)
        # promtool is Prometheus's own checker of the exposition format.
        self.assertTrue(os.access(PROMTOOL, os.X_OK), "promtool missing: run scripts/install-deps.sh")
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # Anything else: 404, 405; a HEAD has no body.
        self.assertEqual(self.get("/")[0], 404)
        self.assertEqual(self.get("/metrics", "POST")[0], 405)
        status, _, body = self.get("/metrics", "HEAD")
        self.assertEqual((status, body), (200, ""))
        # Garbage gets 400 and the endpoint keeps serving.
        with socket.create_connection(("127.0.0.1", self.mport), timeout=10) as s:
            s.sendall(b"\x00\x01 nonsense\r\n\r\n")
            self.assertIn(b" 400 ", s.recv(4096))
        self.assertEqual(self.get("/metrics")[0], 200)
        self.assertEqual(self.daemon.stop(), 0)

    def test_metrics_off_by_default(self):
        self.daemon = Daemon(self.config()).start()
        self.assertNotIn("metrics on", self.daemon.log_text())

    def test_bad_metrics_listen(self):
        d = Daemon(self.config("metrics_listen = localhost:80\n"))
        try:
            r = subprocess.run([CONVOYD, "--check-config", "-c", d.conf_path], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(r.returncode, 78, r.stderr)
            self.assertIn("metrics_listen", r.stderr)
        finally:
            d.close()

    def test_watchdog(self):
        """With WATCHDOG_USEC, WATCHDOG=1 comes at least every half interval."""
        os.environ["WATCHDOG_USEC"] = "400000"
        try:
            self.daemon = Daemon(self.config()).start()
        finally:
            del os.environ["WATCHDOG_USEC"]
        start = time.time()
        for _ in range(4):
            self.daemon.wait_notify("WATCHDOG=1", timeout=2)
        self.assertLess(time.time() - start, 2.5)


class MailOwnerTest(Base):
    def check(self, extra):
        d = Daemon(self.config(extra))
        try:
            return subprocess.run([CONVOYD, "-f", "-c", d.conf_path], capture_output=True,
                                  text=True, timeout=30)
        finally:
            d.close()

    def test_unknown_user_is_bad_configuration(self):
        r = self.check("mail_owner = no-such-user-convoy\n")
        self.assertEqual(r.returncode, 78, r.stderr)
        self.assertIn("no such user", r.stderr)

    def test_root_is_bad_configuration(self):
        r = self.check("mail_owner = root\n")
        self.assertEqual(r.returncode, 78, r.stderr)
        self.assertIn("must not be root", r.stderr)

    @unittest.skipUnless(ROOT and nobody(), "needs root and the user nobody")
    def test_drop_to_mail_owner(self):
        pw = nobody()
        self.daemon = Daemon(self.config("mail_owner = nobody\n"))
        os.chmod(self.daemon.dir, 0o755)  # nobody must reach its state
        self.daemon.start()
        self.daemon.wait_log("running as nobody")
        ids = proc_ids(self.daemon.proc.pid)
        self.assertEqual(ids["Uid"], [pw.pw_uid] * 4)
        self.assertEqual(ids["Gid"], [pw.pw_gid] * 4)
        self.assertNotIn(0, ids["Groups"])
        self.send()
        self.sink.wait_messages(1)
        self.assertEqual(self.sink.messages[0].rcpt_tos, ["rcpt@dest.test"])
        # convoyctl run by root talks to it (as the directory's owner) ...
        r = self.daemon.ctl("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.daemon.ctl("reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        # ... and nothing in the state directory is root's.
        root_owned = [p for p in files_under(self.daemon.queue_dir) if os.lstat(p).st_uid == 0]
        self.assertEqual(root_owned, [])
        self.assertNotIn("running as root", self.daemon.log_text())
        self.assertEqual(self.daemon.stop(), 0)

    @unittest.skipUnless(ROOT and nobody(), "needs root and the user nobody")
    def test_root_without_mail_owner_warns(self):
        self.daemon = Daemon(self.config()).start()
        self.daemon.wait_log("running as root: set mail_owner")

    @unittest.skipUnless(ROOT and nobody(), "needs root and the user nobody")
    def test_started_as_other_user_does_not_try(self):
        pw = nobody()
        self.daemon = Daemon(self.config("mail_owner = nobody\n"))
        os.chmod(self.daemon.dir, 0o777)
        self.daemon.extra_args = []
        # Start convoyd as nobody (setpriv), as a unit with User= does.
        import convoy
        saved = convoy.WRAPPER
        convoy.WRAPPER = ["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid,
                          "--clear-groups"] + saved
        try:
            self.daemon.start()
        finally:
            convoy.WRAPPER = saved
        self.assertEqual(proc_ids(self.daemon.proc.pid)["Uid"], [pw.pw_uid] * 4)
        self.send()
        self.sink.wait_messages(1)
        self.assertNotIn("running as nobody", self.daemon.log_text())

    @unittest.skipUnless(ROOT and nobody(), "needs root and the user nobody")
    def test_convoyctl_as_root_leaves_no_root_files(self):
        """`sts refresh` before the daemon ever ran creates the state for
        mail_owner, not for root."""
        d = Daemon(self.config("mail_owner = nobody\n"))
        try:
            os.chmod(d.dir, 0o755)
            d.ctl("sts", "refresh", "dest.test")
            self.assertTrue(os.path.isdir(d.queue_dir))
            root_owned = [p for p in files_under(d.queue_dir) if os.lstat(p).st_uid == 0]
            self.assertEqual(root_owned, [])
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main()
