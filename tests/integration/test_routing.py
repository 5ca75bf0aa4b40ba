"""Integration tests of routing: transport_maps, destination_limits, dead
destinations and smtpd_sender_login_maps. The real convoyd delivers to
independent SMTP servers (sink.py, python3-aiosmtpd), one per transport
entry, on distinct loopback addresses; DNS (world.py, dnsmasq) gives the
sender's domain an MX for DSNs and the names that are looked up.

Each case reads as data: the table, where each recipient must arrive (or
what must happen to it), and what the log says.
"""

import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from convoy import Daemon, free_port
from pki import CA
from sink import Sink
from world import DnsServer, MX, A

HAVE_DNSMASQ = shutil.which(os.environ.get("DNSMASQ", "/usr/sbin/dnsmasq")) is not None

SENDER_MX = "127.0.0.11"  # src.test's MX: DSNs arrive here
MXHOST = "127.0.0.13"     # mxhost.test (looked up by "smtp:mxhost.test")
LIMITED = "127.0.0.14"    # lim.test's MX
PASSWORD = "correct horse"


def message(subject="test"):
    return ("From: Sender <sender@src.test>\r\n"
            "To: someone@dest.test\r\n"
            "Subject: %s\r\n"
            "Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
            "Message-ID: <%s.%f@src.test>\r\n"
            "\r\nHello.\r\n" % (subject, re.sub(r"\W", "", subject), time.time())).encode()


class Counter:
    """A TCP listener that accepts and closes at once, counting accepts: a
    destination whose every connection fails before the greeting."""

    def __init__(self, host, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.accepts = 0
        self.running = True
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepts += 1
            c.close()

    def stop(self):
        self.running = False
        self.t.join()
        self.sock.close()


@unittest.skipUnless(HAVE_DNSMASQ, "dnsmasq is not installed")
class RoutingTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-route-")
        self.port = free_port(SENDER_MX)
        self.sinks = []
        self.dns = None
        self.daemon = None

    def tearDown(self):
        if self.daemon:
            try:
                self.daemon.stop()
            except Exception:
                pass
            self.daemon.close()
        for s in self.sinks:
            s.stop()
        if self.dns:
            self.dns.close()
        self.tmp.cleanup()

    # ---- the world -------------------------------------------------------

    def path(self, name, text):
        p = os.path.join(self.tmp.name, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def world(self, config, records=()):
        recs = [MX("src.test", 10, "mx.src.test"), A("mx.src.test", SENDER_MX),
                MX("mxhost.test", 10, "mx1.mxhost.test"), A("mx1.mxhost.test", MXHOST),
                MX("lim.test", 10, "mx.lim.test"), A("mx.lim.test", LIMITED)] + list(records)
        self.dns = DnsServer(recs).start()
        self.sub_port = free_port()
        text = ("myhostname = relay.test\n"
                "smtpd_listen = 127.0.0.1:%d\n"
                "dns_servers = %s\n"
                "smtp_destination_port = %d\n"
                "smtp_helo_timeout = 5s\n"
                "smtp_connect_timeout = 2s\n"
                "minimal_backoff_time = 1s\n"
                "maximal_backoff_time = 2s\n"
                "smtp_connection_cache_time_limit = 1s\n"
                "%s" % (self.sub_port, self.dns.server, self.port, config))
        self.daemon = Daemon(text).start()
        self.daemon.wait_log("delivery started", timeout=5)
        return self.daemon

    def sink(self, host, port=None, **kw):
        s = Sink(host, port or self.port, **kw).start()
        self.sinks.append(s)
        return s

    def submit(self, rcpts, sender="sender@src.test", subject="test"):
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.ehlo("app.test")
            c.sendmail(sender, rcpts, message(subject))

    def log(self):
        return self.daemon.log_text()

    def wait_log_re(self, pattern, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            time.sleep(0.1)
        self.fail("no log line matching %r:\n%s" % (pattern, self.log()[-6000:]))

    def rcpts_at(self, sink):
        with sink.lock:
            return sorted(r for m in sink.messages for r in m.rcpt_tos)

    # ---- transport_maps --------------------------------------------------

    def test_transport_entries(self):
        """Exact, .parent, "smtp:host" (MX lookup of host), error: and
        defer: entries; domains without an entry keep their own MX."""
        pa, pb = free_port("127.0.0.21"), free_port("127.0.0.22")
        a = self.sink("127.0.0.21", pa)
        b = self.sink("127.0.0.22", pb)
        mxh = self.sink(MXHOST)
        src = self.sink(SENDER_MX)
        table = self.path("transport", "\n".join([
            "# routing for the test",
            "a.test smtp:[127.0.0.21]:%d" % pa,
            ".b.test relay:[127.0.0.22]:%d" % pb,
            "c.test smtp:mxhost.test",
            "bad.test error:5.1.1 no mail for this domain",
            "slow.test defer:4.3.2 not today",
            "",
        ]))
        self.world("transport_maps = %s\n" % table)
        self.submit(["x@a.test"], subject="to a")
        self.submit(["y@sub.b.test", "z@deep.sub.b.test"], subject="to b")
        self.submit(["w@c.test"], subject="to c")
        self.submit(["nobody@bad.test", "else@bad.test"], subject="to bad")
        self.submit(["later@slow.test"], subject="to slow")
        self.assertTrue(a.wait_messages(1), self.log())
        self.assertTrue(b.wait_messages(1), self.log())
        self.assertTrue(mxh.wait_messages(1), self.log())
        self.assertEqual(self.rcpts_at(a), ["x@a.test"])
        self.assertEqual(self.rcpts_at(b), ["y@sub.b.test", "z@deep.sub.b.test"])
        self.assertEqual(self.rcpts_at(mxh), ["w@c.test"])
        # The next hop is the operator's: no MTA-STS of the recipient domain.
        self.wait_log_re(r"to=<x@a\.test>, relay=127\.0\.0\.21\[127\.0\.0\.21\]:%d, .*"
                         r"status=sent .*tls_policy=transport" % pa)
        # b.test itself has no entry (".b.test" is for subdomains only) and
        # no MX: it is not routed to the b sink.
        # error: bounces at once, one log line, a DSN to the sender.
        self.wait_log_re(r"to=<nobody@bad\.test>, relay=none, .*dsn=5\.1\.1, "
                         r"status=bounced \(no mail for this domain\)")
        self.assertTrue(src.wait_messages(1), self.log())
        dsn = src.messages[0]
        self.assertEqual(dsn.mail_from, "")
        self.assertEqual(dsn.rcpt_tos, ["sender@src.test"])
        self.assertIn(b"Status: 5.1.1", dsn.content)
        self.assertIn(b"nobody@bad.test", dsn.content)
        # One DSN for both recipients of the message.
        self.assertIn(b"else@bad.test", dsn.content)
        # defer: defers with the status and text, without a connection.
        self.wait_log_re(r"to=<later@slow\.test>, relay=none, .*dsn=4\.3\.2, "
                         r"status=deferred \(not today\)")
        self.assertEqual(len(re.findall(r"to=<nobody@bad\.test>", self.log())), 1)
        self.assertEqual(len(re.findall(r"to=<else@bad\.test>, .*status=bounced", self.log())), 1)
        self.assertEqual(len(src.messages), 1)
        for s in (a, b, mxh):
            self.assertNotIn("later@slow.test", self.rcpts_at(s))

    def test_default_entry_and_reload_while_mail_flows(self):
        """"*" routes everything without an entry; a reload changes the table
        while mail flows and nothing is lost; a bad table refuses the reload
        (file:line) and the old one stays in force."""
        p1, p2 = free_port("127.0.0.23"), free_port("127.0.0.24")
        one = self.sink("127.0.0.23", p1)
        two = self.sink("127.0.0.24", p2)
        table = self.path("transport", "* smtp:[127.0.0.23]:%d\n" % p1)
        self.world("transport_maps = %s\n" % table)
        sent = []
        stop = threading.Event()
        errors = []

        def flow():
            i = 0
            while not stop.is_set() and i < 60:
                r = "r%d@any%d.test" % (i, i % 3)
                try:
                    self.submit([r], subject="flow %d" % i)
                    sent.append(r)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                i += 1
                time.sleep(0.05)

        t = threading.Thread(target=flow)
        t.start()
        time.sleep(1.0)
        self.path("transport", "* smtp:[127.0.0.24]:%d\n" % p2)
        r = self.daemon.ctl("reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        time.sleep(1.0)
        stop.set()
        t.join()
        self.assertEqual(errors, [])
        deadline = time.time() + 30
        while time.time() < deadline:
            got = self.rcpts_at(one) + self.rcpts_at(two)
            if len(got) >= len(sent):
                break
            time.sleep(0.1)
        self.assertEqual(sorted(self.rcpts_at(one) + self.rcpts_at(two)), sorted(sent))
        self.assertTrue(self.rcpts_at(one) and self.rcpts_at(two),
                        "both tables were used: %s / %s" % (self.rcpts_at(one),
                                                            self.rcpts_at(two)))
        # A bad line: the reload fails naming file:line; the table in force stays.
        self.path("transport", "x.test smtp:[127.0.0.23]:%d\ny.test bogus:thing\n" % p1)
        r = self.daemon.ctl("reload")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("transport:2", r.stderr + r.stdout)
        n2 = len(two.messages)
        self.submit(["after@else.test"], subject="after bad reload")
        self.assertTrue(two.wait_messages(n2 + 1), self.log())
        self.assertIn("after@else.test", self.rcpts_at(two))

    # ---- dead destinations -------------------------------------------------

    def test_relayhost_reload(self):
        """relayhost changes on reload: mail leased afterwards goes to the new
        smart host; one that cannot be parsed refuses the reload and the one
        in force stays; removing it sends mail to the domains' MX hosts."""
        p1, p2 = free_port("127.0.0.25"), free_port("127.0.0.26")
        one = self.sink("127.0.0.25", p1)
        two = self.sink("127.0.0.26", p2)
        mxh = self.sink(MXHOST)
        self.world("relayhost = [127.0.0.25]:%d\n" % p1)
        self.submit(["a@mxhost.test"], subject="before")
        self.assertTrue(one.wait_messages(1), self.log())

        def set_relayhost(line):
            with open(self.daemon.conf_path) as f:
                text = f.read()
            text = re.sub(r"(?m)^relayhost = .*\n", "", text) + line
            self.daemon.write_config(text)
            return self.daemon.ctl("reload")

        r = set_relayhost("relayhost = [127.0.0.26]:%d\n" % p2)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_log_re(r"relayhost: \[127\.0\.0\.26\]:%d" % p2)
        self.assertNotIn("relayhost changes take effect", self.log())
        self.submit(["b@mxhost.test"], subject="after")
        self.assertTrue(two.wait_messages(1), self.log())
        self.assertEqual(self.rcpts_at(two), ["b@mxhost.test"])
        self.assertEqual(self.rcpts_at(one), ["a@mxhost.test"])

        r = set_relayhost("relayhost = [127.0.0.26:%d\n" % p2)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("relayhost", r.stdout + r.stderr)
        self.submit(["c@mxhost.test"], subject="after bad reload")
        self.assertTrue(two.wait_messages(2), self.log())

        r = set_relayhost("")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_log_re(r"relayhost: none")
        self.submit(["d@mxhost.test"], subject="own MX")
        self.assertTrue(mxh.wait_messages(1), self.log())
        self.assertEqual(self.rcpts_at(mxh), ["d@mxhost.test"])
        self.assertEqual(len(one.messages) + len(two.messages), 3)

    def test_dead_destination_backlog(self):
        """A destination whose connections all fail is marked dead after
        smtp_destination_dead_threshold attempts: its backlog of 30 messages
        is deferred without connecting (one probe at a time), and it drains
        once the host is back."""
        host = "127.0.0.25"
        port = free_port(host)
        counter = Counter(host, port)
        table = self.path("transport", "dead.test smtp:[%s]:%d\n" % (host, port))
        self.world("transport_maps = %s\n"
                   "smtp_destination_dead_threshold = 3\n"
                   "smtp_destination_dead_time = 2s\n" % table)
        for i in range(30):
            self.submit(["u%d@dead.test" % i], subject="backlog %d" % i)
        self.wait_log_re(r"transport:\[127\.0\.0\.25\]:%d: destination is dead" % port)
        time.sleep(6)
        accepts = counter.accepts
        counter.stop()
        print("dead destination: %d connections in ~6 s for a backlog of 30" % accepts,
              file=sys.stderr)
        # Without the dead state every message walks the address on every
        # retry (30 at first, again each second of backoff): far more.
        self.assertLess(accepts, 15, "connections while dead: %d" % accepts)
        self.assertGreaterEqual(accepts, 3)
        self.assertIn("delivery temporarily suspended", self.log())
        st = self.daemon.ctl("status", "--json")
        self.assertEqual(st.returncode, 0, st.stderr)
        self.assertRegex(st.stdout, r'"destination": "transport:\[127\.0\.0\.25\]:%d"' % port)
        summ = self.daemon.ctl("queue", "summary")
        self.assertEqual(summ.returncode, 0, summ.stderr)
        self.assertIn("dead destinations", summ.stdout)
        self.assertIn("transport:[127.0.0.25]:%d" % port, summ.stdout)
        summ = self.daemon.ctl("queue", "summary", "--json")
        self.assertEqual(summ.returncode, 0, summ.stderr)
        dead = json.loads(summ.stdout)["dead"]
        self.assertEqual([d["destination"] for d in dead], ["transport:[127.0.0.25]:%d" % port])
        self.assertGreaterEqual(dead[0]["failures"], 3)
        # The host comes back: one probe revives it and the backlog drains.
        sink = self.sink(host, port)
        self.assertTrue(sink.wait_messages(30, timeout=60),
                        "%d of 30 delivered\n%s" % (len(sink.messages), self.log()[-4000:]))
        self.wait_log_re(r"destination is alive again")
        self.assertEqual(len(re.findall(r"destination is dead", self.log())), 1)

    # ---- destination_limits ------------------------------------------------

    def test_destination_limits(self):
        """concurrency=1: never two sessions at once at the sink;
        recipients=2: at most two RCPTs per transaction."""
        sink = self.sink(LIMITED, data_delay=0.3)
        limits = self.path("limits", "lim.test concurrency=1 recipients=2\n")
        self.world("destination_limits = %s\n" % limits)
        self.submit(["a%d@lim.test" % i for i in range(5)], subject="five")
        for i in range(6):
            self.submit(["m%d@lim.test" % i], subject="m%d" % i)
        self.assertTrue(sink.wait_messages(3 + 6, timeout=40), self.log())
        self.assertEqual(sink.max_active, 1)
        sizes = sorted(len(m.rcpt_tos) for m in sink.messages)
        self.assertEqual(max(sizes), 2)
        self.assertEqual(sum(sizes), 11)

    def test_destination_rate(self):
        """rate=2/s: eight messages take about three seconds (a burst of two,
        then two a second); without it they go out at once."""
        sink = self.sink(LIMITED)
        limits = self.path("limits", "lim.test rate=2/s\n")
        self.world("destination_limits = %s\n" % limits)
        start = time.time()
        for i in range(8):
            self.submit(["r%d@lim.test" % i], subject="r%d" % i)
        self.assertTrue(sink.wait_messages(8, timeout=40), self.log())
        took = time.time() - start
        print("rate=2/s: 8 messages in %.1f s" % took, file=sys.stderr)
        self.assertGreater(took, 2.4)
        self.assertLess(took, 15)

    def test_concurrency_without_limits(self):
        """The same load without destination_limits opens several sessions
        (initial_destination_concurrency): the test above can fail."""
        sink = self.sink(LIMITED, data_delay=0.5)
        self.world("")
        for i in range(6):
            self.submit(["m%d@lim.test" % i], subject="m%d" % i)
        self.assertTrue(sink.wait_messages(6, timeout=40), self.log())
        self.assertGreater(sink.max_active, 1)


# ---- smtpd_sender_login_maps -----------------------------------------------

def make_hash(password):
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, text=True,
                       capture_output=True, check=True)
    return r.stdout.strip()


class SenderLoginTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-login-")
        d = self.tmp.name
        ca = CA(d)
        leaf = ca.issue("mx", ["relay.test"])
        self.ca = ca.cert
        users = os.path.join(d, "users")
        with open(users, "w") as f:
            f.write("alice:%s\nbob:%s\n" % (make_hash(PASSWORD), make_hash(PASSWORD)))
        self.logins = os.path.join(d, "logins")
        with open(self.logins, "w") as f:
            f.write("alice@example.com alice\n@shared.example alice,bob\n")
        self.port = free_port()
        park = free_port()
        self.daemon = Daemon("\n".join([
            "myhostname = relay.test",
            "relayhost = [127.0.0.1]:%d" % park,
            "smtpd_listen = 127.0.0.1:%d" % self.port,
            "mynetworks = 127.0.0.0/8",
            "smtpd_tls_cert_file = " + leaf.chain,
            "smtpd_tls_key_file = " + leaf.key,
            "smtpd_auth_file = " + users,
            "smtpd_sender_login_maps = " + self.logins,
            "",
        ])).start()

    def tearDown(self):
        try:
            self.daemon.stop()
        finally:
            self.daemon.close()
            self.tmp.cleanup()

    def session(self, login=None):
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        c.ehlo("app.test")
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.check_hostname = False
        c.starttls(context=ctx)
        c.ehlo("app.test")
        if login:
            c.login(login, PASSWORD)
        return c

    def mail(self, c, sender):
        code, text = c.mail(sender)
        c.rset()
        return code, text.decode()

    def test_sender_login_map(self):
        c = self.session("alice")
        self.assertEqual(self.mail(c, "alice@example.com")[0], 250)
        self.assertEqual(self.mail(c, "anyone@shared.example")[0], 250)
        self.assertEqual(self.mail(c, "")[0], 250)  # the null sender
        code, text = self.mail(c, "bob@example.com")
        self.assertEqual(code, 553)
        self.assertIn("5.7.1 Sender address rejected: not owned by user alice", text)
        c.quit()
        c = self.session("bob")
        self.assertEqual(self.mail(c, "x@shared.example")[0], 250)
        self.assertEqual(self.mail(c, "alice@example.com")[0], 553)
        c.quit()
        self.daemon.wait_log("not owned by user bob")
        # Unauthenticated clients (here from mynetworks) are not affected.
        c = self.session()
        self.assertEqual(self.mail(c, "alice@example.com")[0], 250)
        c.quit()
        # Reloadable: bob now owns alice@example.com as well.
        with open(self.logins, "w") as f:
            f.write("alice@example.com alice,bob\n")
        r = self.daemon.ctl("reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        c = self.session("bob")
        self.assertEqual(self.mail(c, "alice@example.com")[0], 250)
        self.assertEqual(self.mail(c, "x@shared.example")[0], 553)
        c.quit()
        # A bad table refuses the reload; the one in force stays.
        with open(self.logins, "w") as f:
            f.write("alice@example.com\n")
        r = self.daemon.ctl("reload")
        self.assertNotEqual(r.returncode, 0)
        c = self.session("bob")
        self.assertEqual(self.mail(c, "alice@example.com")[0], 250)
        c.quit()


if __name__ == "__main__":
    unittest.main()
