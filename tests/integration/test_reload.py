"""Reloading the MTA-STS engine's settings (sts_*, smtp_tls_CAfile) while
convoyd runs: the real daemon, dnsmasq (world.py), nginx as the policy host
(web.py) and an aiosmtpd MX (sink.py).

Two domains publish the same kind of enforce policy, and both name one MX
that shows a certificate for another name. With a policy, Convoy must defer
their mail (4.7.5); when the policy cannot be fetched and none is cached,
it delivers as without MTA-STS (RFC 8461 3.3). So where the mail ends up
shows which sts_policy_https_port the engine used: before the reload it
points at a closed port (a.test's mail is delivered), after it at nginx
(b.test's mail is held back by its policy).

A reload that cannot be applied is refused with a message naming the
parameter, and the configuration in force stays.
"""

import json
import os
import shutil
import signal
import smtplib
import tempfile
import time
import unittest

from convoy import Daemon, free_port
from pki import CA
from sink import Sink
from web import Site, Web
import world
from world import A, MX, TXT, DnsServer

MX_IP = "127.0.0.91"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.{d}\r\nmax_age: 86400\r\n"


def message(subject):
    return ("From: <sender@src.test>\r\nTo: someone\r\nSubject: %s\r\n"
            "Message-ID: <%f@src.test>\r\n\r\nHello.\r\n" % (subject, time.time())).encode()


@world.needs("dnsmasq", "nginx")
class StsReloadTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="convoy-reload-")
        os.chmod(self.tmp, 0o755)  # nginx workers may run as another user
        self.web = self.dns = self.mx = self.daemon = None
        try:
            self.ca = CA(os.path.join(self.tmp, "pki"))
            domains = ("a.test", "b.test")
            self.web = Web(self.tmp, [
                Site(d, self.ca.issue("web-" + d, ["mta-sts." + d]), body=POLICY.format(d=d))
                for d in domains]).start()
            wrong = self.ca.issue("mx", ["mx.other.test"])
            self.mx_port = free_port(MX_IP)
            self.mx = Sink(MX_IP, self.mx_port, tls=(wrong.chain, wrong.key)).start()
            records = []
            for d in domains:
                records += [TXT("_mta-sts." + d, "v=STSv1; id=%s1" % d[0]),
                            A("mta-sts." + d, "127.0.0.1"), MX(d, 10, "mx." + d),
                            A("mx." + d, MX_IP)]
            os.makedirs(os.path.join(self.tmp, "dns"))
            self.dns = DnsServer(records, workdir=os.path.join(self.tmp, "dns")).start()
            self.sub_port = free_port()
            self.closed_port = free_port()  # nothing listens there
            self.daemon = Daemon(self.config(self.closed_port)).start()
            self.daemon.wait_log("delivery started", timeout=10)
        except BaseException:
            self.tearDown()
            raise

    def config(self, https_port, extra=""):
        return ("queue_directory = %s\n"
                "myhostname = relay.test\n"
                "smtpd_listen = 127.0.0.1:%d\n"
                "dns_servers = %s\n"
                "smtp_destination_port = %d\n"
                "smtp_tls_CAfile = %s\n"
                "sts_policy_https_port = %d\n"
                "minimal_backoff_time = 1h\n"
                "maximal_backoff_time = 2h\n%s"
                % (os.path.join(self.tmp, "queue"), self.sub_port, self.dns.server, self.mx_port,
                   self.ca.cert, https_port, extra))

    def tearDown(self):
        log = ""
        if self.daemon:
            try:
                self.daemon.stop()
            except Exception:
                pass
            log = self.daemon.log_text()
            self.daemon.close()
        if self.mx:
            self.mx.stop()
        if self.web:
            self.web.stop()
        if self.dns:
            self.dns.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        # Under the sanitizer build, the daemon reports here.
        self.assertNotIn("Sanitizer", log)
        self.assertNotIn("runtime error", log)

    def log(self):
        return self.daemon.log_text()

    def submit(self, rcpt):
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.sendmail("sender@src.test", [rcpt], message("to " + rcpt))

    def recipient(self, addr, timeout=30):
        """The queue's view of addr once it was tried, or None when it left
        the queue (delivered)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.daemon.ctl("queue", "list", "--json").stdout
            found = None
            for line in out.splitlines():
                for r in json.loads(line)["recipients"]:
                    if r["address"] == addr:
                        found = r
            if found is None or found["attempts"] > 0:
                return found
            time.sleep(0.2)
        self.fail("%s was not tried:\n%s" % (addr, self.log()[-3000:]))

    def reload(self, text, ok=True):
        self.daemon.write_config(text)
        r = self.daemon.ctl("reload")
        self.assertEqual(r.returncode, 0 if ok else 1, r.stderr + self.log()[-2000:])
        return r

    def test_https_port_reload(self):
        # Old setting: the policy host cannot be reached, no policy applies.
        self.submit("u@a.test")
        self.assertTrue(self.mx.wait_messages(1, timeout=30), self.log())
        self.assertIsNone(self.recipient("u@a.test"))
        # Log lines go out once per loop iteration, after the replies of that
        # iteration: wait for them rather than read the log at once.
        self.daemon.wait_log("policy fetch failed domain=a.test id=a1 "
                             "result=sts-policy-fetch-error reason=mta-sts.a.test: cannot "
                             "connect: connection refused", timeout=10)

        # New setting, applied by reload; the engine is not restarted.
        r = self.reload(self.config(self.web.port, "sts_fetch_timeout = 20s\n"))
        self.assertEqual(r.stdout, "Configuration reloaded.\n")
        # The log line is written at the end of the loop iteration that
        # answered the reload: wait for it.
        self.daemon.wait_log("MTA-STS: new settings in force (https port %d, fetch timeout 20s"
                             % self.web.port, timeout=10)
        self.submit("u@b.test")
        r = self.recipient("u@b.test")
        self.assertIsNotNone(r, "b.test's mail went out despite its policy:\n" + self.log())
        self.assertEqual(r["state"], "deferred")
        self.assertEqual(r["last_result"]["sts_mode"], "enforce")
        self.assertEqual(r["last_result"]["sts_id"], "b1")
        self.assertTrue(r["last_result"]["dsn"].startswith("4.7."), r)
        self.daemon.wait_log("policy fetched domain=b.test id=b1 mode=enforce", timeout=10)
        self.assertEqual(len(self.mx.messages), 1)
        # The cache kept what it had (a.test's failed attempt) and the new
        # policy; convoyctl reads both.
        show = self.daemon.ctl("sts", "show", "b.test")
        self.assertEqual(show.returncode, 0, show.stderr)
        self.assertIn("b1", show.stdout)
        self.assertEqual(self.daemon.ctl("sts", "show", "a.test").returncode, 0)

        # A trust store that cannot be read is refused, naming the parameter;
        # the settings in force stay (b.test's policy is still fetched
        # through them by a refresh).
        r = self.reload(self.config(self.web.port) +
                        "smtp_tls_CAfile = %s\n" % os.path.join(self.tmp, "missing.pem"), ok=False)
        self.assertIn("reload rejected, configuration unchanged", r.stderr)
        self.assertIn("smtp_tls_CAfile", r.stderr)
        st = json.loads(self.daemon.ctl("status", "--json").stdout)
        self.assertTrue(st["running"])
        # queue_directory cannot change under a running daemon (SIGHUP: a
        # convoyctl would read the new file and look for the daemon there).
        self.daemon.write_config(self.config(self.web.port).replace(
            os.path.join(self.tmp, "queue"), os.path.join(self.tmp, "elsewhere")))
        self.daemon.signal(signal.SIGHUP)
        self.daemon.wait_log("reload failed, configuration unchanged: queue_directory: cannot "
                             "change from %s to %s" % (os.path.join(self.tmp, "queue"),
                                                       os.path.join(self.tmp, "elsewhere")))
        self.daemon.write_config(self.config(self.web.port))
        st = json.loads(self.daemon.ctl("status", "--json").stdout)
        self.assertEqual(st["queue_directory"], os.path.join(self.tmp, "queue"))

        # Back to the closed port: new fetches fail again, while the cached
        # policy of b.test still applies (a failed fetch never removes it).
        self.reload(self.config(self.closed_port))
        before = self.recipient("u@b.test")["attempts"]
        self.daemon.ctl("queue", "retry", "--all", "--yes")
        deadline = time.time() + 20
        while time.time() < deadline:
            r = self.recipient("u@b.test")
            if r is None or r["attempts"] > before:
                break
            time.sleep(0.2)
        self.assertIsNotNone(r, "b.test's mail went out without its policy:\n" + self.log())
        self.assertGreater(r["attempts"], before)
        self.assertEqual(r["last_result"]["sts_mode"], "enforce")
        self.assertEqual(len(self.mx.messages), 1)


if __name__ == "__main__":
    unittest.main()
