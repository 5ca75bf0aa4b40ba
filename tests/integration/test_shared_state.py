"""shared_state: several convoyd share destination limits and MTA-STS
policies through a real redis-server (Debian's) on loopback.

- Three nodes, each with its own queue and port, relay to one sink whose
  destination has destination_limits rate=50/s: the sink sees the fleet's
  50 a second (plus the bucket's burst), not 150, and every message once.
- concurrency=2 for the destination: never more than two sessions at the
  sink from the whole fleet (leases in Redis); a node killed while it
  holds the only lease frees it within the lease's lifetime (15 s).
- Redis is killed in the middle of a run and started again: the nodes log
  that it went away, deliver under their fallback share (1/3 each), log
  that it is back; nothing is lost or delivered twice.
- An MTA-STS policy fetched by node A (nginx's access log shows the one
  GET) is used by node B from Redis without a fetch of its own.
- Malformed URLs are refused at start (exit 78); rediss:// is accepted
  (test_shared_tls.py runs it against a Redis with TLS).

The rate case sends 3 x 1,000 messages (a minute at 50/s), 3 x 200 in a
sanitizer build (convoy.SANITIZED); the Redis restart case 3 x 150.
"""
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import world
from convoy import CONVOYD, SANITIZED, Daemon, free_port
from sink import Sink

SINK_HOST = "127.0.0.14"
RATE = 50
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class Redis:
    """A private redis-server on 127.0.0.1:port: no persistence, no
    daemonizing; kill() is SIGKILL (a crash), start() again on the same
    port."""

    def __init__(self, workdir, port=None):
        self.dir = workdir
        self.port = port or free_port()
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes"],
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def ping(self):
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port


def stop_clean(test, nodes):
    """Stop every node (SIGTERM): each exits 0 (a sanitizer build exits
    otherwise on a report) and its log holds no sanitizer report. A node
    the test killed is only closed."""
    for n in nodes:
        killed = n.proc is not None and n.proc.poll() is not None
        try:
            rc = n.stop()
            log = n.log_text()
        finally:
            n.close()
        if killed:
            continue
        test.assertEqual(rc, 0, log[-3000:])
        for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
            test.assertNotIn(marker, log)


def message(subject):
    return ("From: <app@src.test>\r\nTo: <x@lim.test>\r\nSubject: %s\r\n"
            "Message-ID: <%s@src.test>\r\n\r\nHello.\r\n" % (subject, subject)).encode()


class FleetCase(unittest.TestCase):
    """Three-node fleet helpers (no cases of its own): a Redis (make_redis,
    plain by default), a sink with a rate limit, nodes with shared_state
    pointing at the Redis (node_extra added to each node's config)."""

    node_extra = ""

    def make_redis(self):
        return Redis(self.tmp.name).start()

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-shared-")
        self.redis = self.make_redis()
        self.sink = Sink(SINK_HOST, free_port(SINK_HOST)).start()
        self.limits = os.path.join(self.tmp.name, "limits")
        with open(self.limits, "w") as f:
            f.write("%s rate=%d/s\n" % (SINK_HOST, RATE))
        self.nodes = []

    def tearDown(self):
        try:
            stop_clean(self, self.nodes)
        finally:
            self.sink.stop()
            self.redis.kill()
            self.tmp.cleanup()

    def node(self, name, extra="", url=None):
        port = free_port()
        text = ("myhostname = %s.relay.test\n"
                "shared_state = %s\n"
                "shared_state_node = %s\n"
                "smtpd_listen = 127.0.0.1:%d\n"
                "relayhost = [%s]:%d\n"
                "destination_limits = %s\n"
                "minimal_backoff_time = 1s\n"
                "maximal_backoff_time = 2s\n"
                "smtp_connect_timeout = 2s\n"
                "metrics_listen = 127.0.0.1:%d\n%s"
                % (name, url or self.redis.url, name, port, SINK_HOST, self.sink.port,
                   self.limits, free_port(), self.node_extra + extra))
        d = Daemon(text).start()
        d.sub_port = port
        d.name = name
        self.nodes.append(d)
        return d

    def submit_many(self, d, n, tag):
        with smtplib.SMTP("127.0.0.1", d.sub_port, timeout=30) as c:
            c.ehlo("app.test")
            for i in range(n):
                c.sendmail("app@src.test", ["r@lim.test"], message("%s-%d" % (tag, i)))

    def submit_all(self, n, tag=""):
        threads = [threading.Thread(target=self.submit_many, args=(d, n, tag + d.name))
                   for d in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def status(self, d):
        r = d.ctl("status", "--json", check=True)
        return json.loads(r.stdout)

    def wait_fleet(self, size, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            sts = [self.status(d).get("shared_state", {}) for d in self.nodes]
            if all(s.get("state") == "up" and s.get("fleet_size") == size for s in sts):
                return sts
            time.sleep(0.2)
        self.fail("fleet of %d not seen: %r" % (size, sts))

    def subjects(self):
        with self.sink.lock:
            return [re.search(rb"Subject: (\S+)", m.content).group(1).decode()
                    for m in self.sink.messages]

    def assert_all_once(self, expected):
        got = self.subjects()
        dups = {s for s in got if got.count(s) > 1}
        self.assertFalse(dups, "delivered twice: %s" % sorted(dups)[:10])
        self.assertEqual(sorted(got), sorted(expected))

    def assert_rate(self, arrivals, rate, slack):
        """No window of the run holds more than rate * its length + slack
        (the bucket's burst and the grants in flight)."""
        a = sorted(arrivals)
        worst = 0.0
        # Every window that starts at an arrival.
        for i in range(len(a)):
            for w in (1.0, 2.0, 5.0):
                k = i
                while k < len(a) and a[k] - a[i] <= w:
                    k += 1
                excess = (k - i) - rate * w
                worst = max(worst, excess)
        self.assertLessEqual(worst, slack, "a window exceeded %d/s by %.0f" % (rate, worst))

    def limits_file(self, text):
        with open(self.limits, "w") as f:
            f.write(text)

    def run_fleet_rate(self, n):
        """n messages through each of the nodes: the sink sees at most RATE
        a second (after the burst) and every message exactly once."""
        start = time.time()
        self.submit_all(n)
        total = len(self.nodes) * n
        self.assertTrue(self.sink.wait_messages(total, timeout=60 + 2 * total / RATE),
                        "%d of %d delivered" % (len(self.sink.messages), total))
        took = max(self.sink.arrivals) - start
        sustained = (total - RATE) / (max(self.sink.arrivals) - sorted(self.sink.arrivals)[RATE])
        print("shared rate=%d/s (%s): %d messages in %.1f s, %.1f/s after the burst"
              % (RATE, getattr(self.redis, "shown", self.redis.url), total, took, sustained),
              file=sys.stderr)
        self.assertLess(sustained, RATE * 1.1)
        self.assertGreater(sustained, RATE * 0.6)
        self.assert_rate(self.sink.arrivals, RATE, RATE + 20)
        self.assert_all_once(["%s-%d" % (d.name, i) for d in self.nodes for i in range(n)])


@world.needs("redis-server")
class SharedStateTest(FleetCase):

    def test_fleet_shares_the_rate(self):
        """3 x 1,000 messages through three nodes (3 x 200 in a sanitizer
        build): the sink sees at most 50 a second (after the burst) and
        every message exactly once; status shows the shared state and the
        fleet."""
        for name in ("a", "b", "c"):
            self.node(name)
        sts = self.wait_fleet(3)
        self.assertEqual(sts[0]["url"], self.redis.url)
        self.assertFalse(sts[0]["tls"])
        self.assertEqual(sorted(n["node"] for n in sts[0]["fleet"]), ["a", "b", "c"])
        self.run_fleet_rate(200 if SANITIZED else 1000)
        # Text status and metrics.
        text = self.nodes[0].ctl("status", check=True).stdout
        self.assertIn("shared_state: %s up" % self.redis.url, text)
        self.assertIn("shared_state.tls: off", text)
        self.assertRegex(text, r"fleet: a \(seen")
        for d in self.nodes:
            self.assertNotIn("unreachable", d.log_text())

    def test_fleet_shares_concurrency(self):
        """concurrency=2 across three nodes: the sink never sees more than
        two sessions at once, and all mail arrives."""
        self.limits_file("%s concurrency=2\n" % SINK_HOST)
        self.sink.data_delay = 0.2
        for name in ("a", "b", "c"):
            self.node(name, "smtp_connection_cache_time_limit = 1s\n")
        self.wait_fleet(3)
        n = 8
        self.submit_all(n)
        self.assertTrue(self.sink.wait_messages(3 * n, timeout=90),
                        "%d of %d delivered" % (len(self.sink.messages), 3 * n))
        print("concurrency=2 over 3 nodes: at most %d sessions at the sink"
              % self.sink.max_active, file=sys.stderr)
        self.assertLessEqual(self.sink.max_active, 2)
        self.assertEqual(self.sink.max_active, 2)
        self.assert_all_once(["%s-%d" % (d.name, i) for d in self.nodes for i in range(n)])

    def test_dead_node_frees_its_lease(self):
        """concurrency=1: node a holds the lease with a cached connection
        (kept 5 minutes) and is killed; node b gets the lease once it
        expires in Redis (15 s), not after a's cache time."""
        self.limits_file("%s concurrency=1\n" % SINK_HOST)
        a = self.node("a", "smtp_connection_cache_time_limit = 5m\n")
        b = self.node("b")
        self.wait_fleet(2)
        self.submit_many(a, 1, "a")
        self.assertTrue(self.sink.wait_messages(1, timeout=20))
        time.sleep(0.5)
        self.assertEqual(self.status(a)["shared_state"]["leases"], 1)
        a.proc.kill()
        a.proc.wait()
        killed = time.time()
        self.submit_many(b, 1, "b")
        self.assertTrue(self.sink.wait_messages(2, timeout=40), b.log_text()[-3000:])
        waited = self.sink.arrivals[-1] - killed
        print("lease of a killed node freed after %.1f s" % waited, file=sys.stderr)
        self.assertLess(waited, 25)
        self.assertGreater(waited, 3, "b did not wait for a's lease")
        self.assertEqual(sorted(self.subjects()), ["a-0", "b-0"])

    def test_redis_killed_and_restarted(self):
        """Redis killed in the middle of a run: the nodes log it once, go on
        at their fallback share (1/3 of 50/s each), log its return once;
        nothing lost or delivered twice."""
        for name in ("a", "b", "c"):
            self.node(name)
        self.wait_fleet(3)
        n = 150
        self.submit_all(n)
        time.sleep(2)
        self.redis.kill()
        for d in self.nodes:
            d.wait_log("is unreachable", timeout=10)
        t0 = time.time()
        time.sleep(3)
        # Fallback: each node 1/3 of the rate with a local bucket (whose
        # burst, a third of a second's worth each, is spent in the first
        # second): after that the fleet stays near the rate.
        with self.sink.lock:
            moved = sum(1 for t in self.sink.arrivals if t0 < t <= t0 + 3)
            late = sum(1 for t in self.sink.arrivals if t0 + 1 < t <= t0 + 3)
        print("Redis away for 3 s: %d messages delivered meanwhile, %d in the last 2 s"
              % (moved, late), file=sys.stderr)
        self.assertGreater(moved, 0, "delivery stopped while Redis was away")
        self.assertLessEqual(late, RATE * 2 * 1.15 + 10)
        self.redis.start()
        for d in self.nodes:
            d.wait_log("limits are shared with the fleet again", timeout=15)
        self.assertTrue(self.sink.wait_messages(3 * n, timeout=90),
                        "%d of %d delivered" % (len(self.sink.messages), 3 * n))
        self.assert_all_once(["%s-%d" % (d.name, i) for d in self.nodes for i in range(n)])
        for d in self.nodes:
            log = d.log_text()
            self.assertEqual(log.count("is unreachable"), 1, log[-3000:])
            self.assertEqual(log.count("limits are shared with the fleet again"), 1)
        self.wait_fleet(3)


@world.needs("redis-server", "dnsmasq", "nginx")
class SharedPolicyTest(unittest.TestCase):
    """A policy fetched by one node is read by the other from Redis."""

    def setUp(self):
        from test_sts_delivery import World
        self.world = None
        self.nodes = []
        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-shared-")
        self.redis = Redis(self.tmp.name).start()
        self.world = World()

    def tearDown(self):
        try:
            stop_clean(self, self.nodes)
        finally:
            self._close_world()

    def _close_world(self):
        if self.world:
            self.world.close()
        self.redis.kill()
        self.tmp.cleanup()

    def node(self, name):
        d = Daemon(self.world.config("shared_state = %s\nshared_state_node = %s\n"
                                     % (self.redis.url, name))).start()
        d.wait_log("shared state %s is up" % self.redis.url, timeout=10)
        self.nodes.append(d)
        return d

    def send(self, d, rcpt):
        with open(d.conf_path) as f:
            port = int(re.search(r"smtpd_listen = 127\.0\.0\.1:(\d+)", f.read()).group(1))
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.sendmail("s@src.test", [rcpt], message(rcpt.replace("@", "-")))

    def wait_sent(self, d, rcpt, timeout=30):
        rx = re.compile(r"to=<%s>, .*status=sent.*sts=enforce" % re.escape(rcpt))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if rx.search(d.log_text()):
                return
            time.sleep(0.1)
        self.fail("%s not delivered under enforce:\n%s" % (rcpt, d.log_text()[-4000:]))

    def fetches(self):
        return self.world.web.access_log().count("GET /.well-known/mta-sts.txt")

    def test_policy_fetched_once_for_the_fleet(self):
        a, b = self.node("a"), self.node("b")
        self.send(a, "one@ok.test")
        self.wait_sent(a, "one@ok.test")
        self.assertIn("policy fetched domain=ok.test id=ok1", a.log_text())
        self.assertEqual(self.fetches(), 1, self.world.web.access_log())
        self.send(b, "two@ok.test")
        self.wait_sent(b, "two@ok.test")
        log = b.log_text()
        self.assertIn("policy from shared state domain=ok.test id=ok1 mode=enforce", log)
        self.assertNotIn("policy fetched domain=ok.test", log)
        self.assertEqual(self.fetches(), 1, self.world.web.access_log())


class SharedStateConfigTest(unittest.TestCase):

    def run_convoyd(self, url):
        with tempfile.TemporaryDirectory(prefix="convoy-shared-") as tmp:
            conf = os.path.join(tmp, "convoy.conf")
            with open(conf, "w") as f:
                f.write("queue_directory = %s/q\nsmtpd_listen = 127.0.0.1:%d\n"
                        "shared_state = %s\n" % (tmp, free_port(), url))
            return subprocess.run([CONVOYD, "--check-config", "-c", conf], capture_output=True,
                                  text=True, timeout=30)

    def test_rediss_is_accepted(self):
        r = self.run_convoyd("rediss://:pw@redis.example.net:6380/0")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_bad_urls(self):
        for url in ("http://127.0.0.1", "redis://", "redis://h:99999", "unix:relative",
                    "rediss://"):
            r = self.run_convoyd(url)
            self.assertEqual(r.returncode, 78, url + ": " + r.stderr)
            self.assertIn("shared_state", r.stderr)
        r = self.run_convoyd("rediss://h:6380/0\nshared_state_tls_CAfile = /nonexistent.pem")
        self.assertEqual(r.returncode, 78, r.stderr)
        self.assertIn("shared_state_tls_CAfile", r.stderr)
        # The TLS socket in queue_directory must fit a unix socket address.
        r = self.run_convoyd("rediss://h:6380/0\nqueue_directory = /tmp/%s" % ("q" * 90))
        self.assertEqual(r.returncode, 78, r.stderr)
        self.assertIn("too long", r.stderr)
        r = self.run_convoyd("unix:/run/redis/redis.sock?db=2")
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
