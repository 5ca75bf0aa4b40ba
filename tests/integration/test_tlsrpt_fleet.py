"""TLS-RPT across a fleet: three real convoyd share one real redis-server
(Debian's) on loopback (shared_state) and deliver to the same policy
domain, whose MX is an aiosmtpd sink with STARTTLS (sink.py) and whose
_smtp._tls record (dnsmasq, world.py) points at an HTTPS collector.

- Each node counts its sessions in its own store and publishes its record
  to Redis (redis-cli shows one hash field per node). `convoyctl tlsrpt
  send` on one node sends exactly one report, which the strict checker
  (tlsrpt_check.py) accepts and which holds the sum of the three nodes'
  sessions; the same command on the other two nodes sends nothing
  ("sent-by-fleet") and drops their records.
- Redis is killed (its data is lost: no persistence) while one node
  records more sessions, and started again: every node publishes its
  records again, and the report holds every session exactly once.
- Redis is away at report time: a node within its wait
  (CONVOY_TLSRPT_FLEET_WAIT) defers; a node past it reports its own
  sessions alone, with its name in the report-id, and publishes zero
  counts when Redis is back, so the fleet's report that follows holds only
  the other node's sessions.

The daemons' clock for sending is set a day on (CONVOY_TLSRPT_NOW), so
today's sessions form a completed day (a full report, with the fleet's
lock and sent marker); CONVOY_TLSRPT_DELAY keeps the automatic run away.
"""
import gzip
import json
import os
import shutil
import smtplib
import subprocess
import tempfile
import time
import unittest
import urllib.request

import test_tlsrpt_delivery as tld
import tlsrpt_check
import world
from convoy import Daemon, free_port
from pki import CA, mx_tls
from sink import Sink
from test_shared_state import Redis, stop_clean
from world import A, MX, TXT, DnsServer, free_udp_tcp_port

DOMAIN = "fleet.test"
MX_IP = "127.0.0.61"
COLLECTOR_IP = "127.0.0.62"
RUA = "https://collector.test/v1/report"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


@world.needs("dnsmasq", "redis-server", "redis-cli")
class TlsrptFleetTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="convoy-tlsrpt-fleet-")
        os.chmod(self.tmp, 0o755)
        self.nodes, self.sink, self.dns, self.collector, self.redis = [], None, None, None, None
        self.saved_env = {k: os.environ.get(k) for k in (
            "CONVOY_TLSRPT_NOW", "CONVOY_TLSRPT_DELAY", "CONVOY_TLSRPT_HTTPS_PORT",
            "CONVOY_TLSRPT_FLEET_WAIT")}
        try:
            self.build()
        except BaseException:
            self.tearDown()
            raise

    def build(self):
        pkidir = os.path.join(self.tmp, "pki")
        self.ca = ca = CA(pkidir)
        self.collector = tld.Collector(COLLECTOR_IP, ca.issue("collector", ["collector.test"]))
        self.redis = Redis(self.tmp).start()
        port = free_udp_tcp_port((MX_IP,))
        self.sink = Sink(MX_IP, port, tls=mx_tls(ca, pkidir, "good", "mx", "mx1." + DOMAIN),
                         hostname="mx1." + DOMAIN).start()
        os.makedirs(os.path.join(self.tmp, "dns"))
        self.dns = DnsServer([A("collector.test", COLLECTOR_IP), MX(DOMAIN, 10, "mx1." + DOMAIN),
                              A("mx1." + DOMAIN, MX_IP),
                              TXT("_smtp._tls." + DOMAIN, "v=TLSRPTv1; rua=" + RUA)],
                             ttl=1, workdir=os.path.join(self.tmp, "dns")).start()
        self.smtp_port = port
        os.environ["CONVOY_TLSRPT_HTTPS_PORT"] = str(self.collector.port)
        # Sending runs on tomorrow's clock: today is a completed day.
        os.environ["CONVOY_TLSRPT_NOW"] = str(int(time.time()) + 86400)
        os.environ["CONVOY_TLSRPT_DELAY"] = "1000000000"
        self.day = time.strftime("%Y-%m-%d", time.gmtime())

    def tearDown(self):
        try:
            stop_clean(self, self.nodes)
        finally:
            for x in (self.sink, self.collector):
                if x:
                    x.stop()
            if self.dns:
                self.dns.close()
            if self.redis:
                self.redis.kill()
            for k, v in self.saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(self.tmp, ignore_errors=True)

    def node(self, name):
        port, mport = free_port(), free_port()
        d = Daemon(
            "myhostname = %s.relay.test\n"
            "shared_state = %s\n"
            "shared_state_node = %s\n"
            "smtpd_listen = 127.0.0.1:%d\n"
            "dns_servers = %s\n"
            "smtp_destination_port = %d\n"
            "smtp_tls_CAfile = %s\n"
            "smtp_helo_timeout = 5s\n"
            "smtp_starttls_timeout = 5s\n"
            "minimal_backoff_time = 1s\n"
            "maximal_backoff_time = 2s\n"
            "smtp_connection_cache_time_limit = 1s\n"
            "tlsrpt_enable = yes\n"
            "tlsrpt_submitter = relay.test\n"
            "tlsrpt_organization_name = Relay Fleet\n"
            "tlsrpt_contact_info = postmaster@relay.test\n"
            "tlsrpt_sender = tlsrpt@relay.test\n"
            "metrics_listen = 127.0.0.1:%d\n"
            % (name, self.redis.url, name, port, self.dns.server, self.smtp_port,
               self.ca.cert, mport)).start()
        d.sub_port = port
        d.metrics_port = mport
        d.name = name
        self.nodes.append(d)
        return d

    def fleet(self):
        nodes = [self.node(n) for n in ("a", "b", "c")]
        self.wait_up(nodes)
        return nodes

    def wait_up(self, nodes, timeout=20):
        def up():
            for d in nodes:
                r = d.ctl("status", "--json")
                if r.returncode != 0:
                    return False
                if json.loads(r.stdout).get("shared_state", {}).get("state") != "up":
                    return False
            return True
        self.assertTrue(tld.wait_for(up, timeout), "the fleet's shared state is not up")

    def deliver(self, d, n):
        """n messages through node d, each waited for (n sessions or fewer:
        a cached connection may carry the next)."""
        for i in range(n):
            before = len(self.sink.messages)
            data = ("From: app@src.test\r\nTo: user@%s\r\nSubject: %s-%d\r\n\r\nHello.\r\n"
                    % (DOMAIN, d.name, i)).encode()
            with smtplib.SMTP("127.0.0.1", d.sub_port, timeout=30) as c:
                c.sendmail("app@src.test", ["user@" + DOMAIN], data)
            self.assertTrue(self.sink.wait_messages(before + 1, 30), "not delivered")

    def local(self, d):
        """The node's own count of DOMAIN today: (successful, failed), or
        None when it has no record."""
        r = d.ctl("tlsrpt", "list", "--date", self.day, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        data = json.loads(r.stdout)
        rows = data if isinstance(data, list) else data.get("domains", data.get("days", []))
        for row in rows:
            if row.get("domain") == DOMAIN:
                return row["successful"], row["failed"]
        return None

    def wait_counted(self, d, at_least):
        got = tld.wait_for(lambda: (lambda c: c if c and sum(c) >= at_least else None)(
            self.local(d)), 20)
        self.assertTrue(got, "%s counted %r, expected at least %d" % (d.name, self.local(d),
                                                                       at_least))
        return got

    def published(self):
        """What Redis holds: node -> record (the node's field of the day's hash)."""
        r = subprocess.run([REDIS_CLI, "-p", str(self.redis.port), "--raw", "HGETALL",
                            "convoy:tlsrpt:%s:%s" % (self.day, DOMAIN)],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        return {lines[i]: json.loads(lines[i + 1]) for i in range(0, len(lines) - 1, 2)}

    def wait_published(self, counts):
        """Every node's published record matches its local count."""
        def same():
            pub = self.published()
            for name, (ok, fail) in counts.items():
                rec = pub.get(name)
                if not rec:
                    return False
                got = (sum(p["ok"] for p in rec["policies"]),
                       sum(p["fail"] for p in rec["policies"]))
                if got != (ok, fail):
                    return False
            return True
        self.assertTrue(tld.wait_for(same, 15), "published %r, counted %r"
                        % (self.published(), counts))

    def send(self, d):
        r = d.ctl("tlsrpt", "send", "--date", self.day)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        return r.stdout

    def the_report(self, n_before=0):
        posts = tld.wait_for(lambda: (lambda p: p if len(p) > n_before else None)(
            self.collector.ok_posts()), 30)
        self.assertTrue(posts, self.collector.posts)
        time.sleep(1)  # nothing else arrives
        posts = self.collector.ok_posts()
        self.assertEqual(len(posts), n_before + 1, [p["path"] for p in posts])
        self.assertEqual(posts[-1]["ctype"], "application/tlsrpt+gzip")
        rep = json.loads(gzip.decompress(posts[-1]["body"]))
        tlsrpt_check.assert_valid(rep, convoy=True)
        self.assertEqual(rep["organization-name"], "Relay Fleet")
        self.assertEqual(len(rep["policies"]), 1, rep)
        p = rep["policies"][0]
        self.assertEqual(p["policy"]["policy-domain"], DOMAIN)
        self.assertEqual(p["policy"]["policy-type"], "no-policy-found")
        s = p["summary"]
        return rep, (s["total-successful-session-count"], s["total-failure-session-count"])

    def test_one_report_for_the_fleet(self):
        a, b, c = self.fleet()
        for d, n in ((a, 1), (b, 2), (c, 3)):
            self.deliver(d, n)
        counts = {d.name: self.wait_counted(d, 1) for d in (a, b, c)}
        self.wait_published(counts)
        out = self.send(a)
        self.assertIn("%s %s sent rua=%s" % (self.day, DOMAIN, RUA), out)
        rep, got = self.the_report()
        want = tuple(sum(x) for x in zip(*counts.values()))
        self.assertEqual(got, want, "report %r, nodes counted %r" % (rep, counts))
        self.assertGreaterEqual(got[0], 3)
        self.assertRegex(rep["report-id"], r"^\d{8}\.0\.fleet\.test@relay\.test$")
        a.wait_log("fleet report number 0 sums 3 node(s)", timeout=10)
        # The other nodes send nothing: the fleet sent it.
        for d in (b, c):
            out = self.send(d)
            self.assertIn("%s %s sent-by-fleet (%s)" % (self.day, DOMAIN, rep["report-id"]), out)
            self.assertIsNone(self.local(d))
        time.sleep(1)
        self.assertEqual(len(self.collector.ok_posts()), 1)
        # And a itself, asked again: nothing (its record went with the report).
        self.assertIn("nothing to send", self.send(a))
        self.assertEqual(len(self.collector.ok_posts()), 1)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % b.metrics_port,
                                    timeout=10) as r:
            metrics = r.read().decode()
        self.assertIn('convoy_shared_tlsrpt_requests_total{request="claim",'
                      'result="sent-by-fleet"} 1', metrics)

    def test_redis_away_while_counting(self):
        a, b, c = self.fleet()
        for d in (a, b, c):
            self.deliver(d, 1)
        counts = {d.name: self.wait_counted(d, 1) for d in (a, b, c)}
        self.wait_published(counts)
        # Redis dies (and forgets everything); c keeps delivering and counting
        # (in new sessions: the cached connection is gone after 1 s).
        time.sleep(2)
        self.redis.kill()
        self.assertTrue(tld.wait_for(lambda: "is unreachable" in c.log_text(), 15))
        before = sum(counts["c"])
        self.deliver(c, 3)
        counts["c"] = self.wait_counted(c, before + 1)
        self.redis.start()
        self.wait_up([a, b, c])
        # Every node wrote its records again: c's include the outage's.
        self.wait_published(counts)
        out = self.send(b)
        self.assertIn("%s %s sent rua=%s" % (self.day, DOMAIN, RUA), out)
        rep, got = self.the_report()
        want = tuple(sum(x) for x in zip(*counts.values()))
        self.assertEqual(got, want, "report %r, nodes counted %r" % (rep, counts))
        for d in (a, c):
            self.assertIn("sent-by-fleet", self.send(d))
        time.sleep(1)
        self.assertEqual(len(self.collector.ok_posts()), 1)

    def test_redis_away_at_send(self):
        os.environ["CONVOY_TLSRPT_FLEET_WAIT"] = "1000000000"
        a = self.node("a")
        os.environ["CONVOY_TLSRPT_FLEET_WAIT"] = "0"
        b = self.node("b")
        self.wait_up([a, b])
        self.deliver(a, 1)
        self.deliver(b, 2)
        counts = {d.name: self.wait_counted(d, 1) for d in (a, b)}
        self.wait_published(counts)
        self.redis.kill()
        for d in (a, b):
            self.assertTrue(tld.wait_for(lambda: "is unreachable" in d.log_text(), 15))
        # a waits for the fleet: nothing sent.
        r = a.ctl("tlsrpt", "send", "--date", self.day)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("%s %s deferred" % (self.day, DOMAIN), r.stdout)
        a.wait_log("report deferred: the fleet's shared state is away", timeout=10)
        # b is past its wait: its own sessions, under its own report-id.
        self.assertIn("%s %s sent rua=%s" % (self.day, DOMAIN, RUA), self.send(b))
        rep, got = self.the_report()
        self.assertEqual(got, counts["b"])
        self.assertRegex(rep["report-id"], r"^\d{8}\.0\.b\.fleet\.test@relay\.test$")
        b.wait_log("this node reports its own sessions alone", timeout=10)
        self.assertEqual(self.local(b), (0, 0))
        # Redis is back: b publishes zero counts, a sends the fleet's report.
        self.redis.start()
        self.wait_up([a, b])
        self.wait_published({"a": counts["a"], "b": (0, 0)})
        self.assertIn("%s %s sent rua=%s" % (self.day, DOMAIN, RUA), self.send(a))
        rep, got = self.the_report(1)
        self.assertEqual(got, counts["a"])
        self.assertRegex(rep["report-id"], r"^\d{8}\.0\.fleet\.test@relay\.test$")
        self.assertIn("nothing to send", self.send(b))
        time.sleep(1)
        self.assertEqual(len(self.collector.ok_posts()), 2)


if __name__ == "__main__":
    unittest.main()
