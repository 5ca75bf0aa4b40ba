"""shared_state = rediss://: the fleet's state through Debian's
redis-server with TLS only (--port 0 --tls-port P, a certificate for
localhost from the tests' CA, pki.py) and a password (AUTH goes over the
TLS bridge).

- Three nodes share the destination's rate (50/s) over TLS: the sink sees
  the fleet's rate and every message once; status says tls on, TLSv1.3.
- A node with the wrong CA, and one that names Redis by an address the
  certificate does not carry, never come up: status shows the
  certificate error, the log says so once, and each still delivers under
  its fallback share.
- Redis (TLS) killed and started again: the nodes fall back, then
  reconnect over TLS by themselves; nothing lost or delivered twice.
- The TLS socket: queue_directory/shared-tls is 0700, redis.sock 0600.
"""
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import unittest

import pki
import world
from test_shared_state import REDIS, FleetCase, Redis

PASSWORD = "s3cret-tls"


class TlsRedis(Redis):
    """redis-server speaking only TLS on 127.0.0.1:port with a password;
    url names it as localhost (the certificate's name)."""

    def __init__(self, workdir, leaf, ca):
        super().__init__(workdir)
        self.leaf = leaf
        self.ca = ca

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", self.leaf.cert, "--tls-key-file", self.leaf.key,
             "--tls-ca-cert-file", self.ca.cert, "--tls-auth-clients", "no",
             "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.ping():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("redis-server (TLS) did not start")

    def ping(self):
        ctx = ssl.create_default_context(cafile=self.ca.cert)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"AUTH %s\r\nPING\r\n" % PASSWORD.encode())
                    got = b""
                    while b"PONG" not in got:
                        chunk = s.recv(64)
                        if not chunk:
                            return False
                        got += chunk
                    return True
        except OSError:
            return False

    @property
    def url(self):
        return "rediss://:%s@localhost:%d/0" % (PASSWORD, self.port)

    @property
    def shown(self):
        return "rediss://:***@localhost:%d/0" % self.port


@world.needs("redis-server")
class SharedTlsTest(FleetCase):

    def make_redis(self):
        pkidir = os.path.join(self.tmp.name, "pki")
        self.ca = pki.CA(pkidir)
        self.other_ca = pki.CA(pkidir, prefix="other", cn="Another CA")
        leaf = self.ca.issue("redis", ["localhost"])
        self.node_extra = "shared_state_tls_CAfile = %s\n" % self.ca.cert
        return TlsRedis(self.tmp.name, leaf, self.ca).start()

    def wait_state(self, d, state, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.status(d).get("shared_state", {})
            if st.get("state") == state:
                return st
            time.sleep(0.2)
        self.fail("%s not %s: %r\n%s" % (d.name, state, st, d.log_text()[-3000:]))

    def test_fleet_shares_the_rate_over_tls(self):
        """3 x 200 messages over three nodes whose shared state is Redis
        over TLS: the sink sees at most 50 a second, every message once."""
        for name in ("a", "b", "c"):
            self.node(name)
        sts = self.wait_fleet(3)
        self.assertEqual(sts[0]["url"], self.redis.shown)
        self.assertTrue(sts[0]["tls"])
        self.assertEqual(sts[0]["tls_version"], "TLSv1.3")
        self.assertNotIn(PASSWORD, str(sts))
        self.run_fleet_rate(200)
        text = self.nodes[0].ctl("status", check=True).stdout
        self.assertIn("shared_state: %s up" % self.redis.shown, text)
        self.assertIn("shared_state.tls: on TLSv1.3", text)
        for d in self.nodes:
            log = d.log_text()
            self.assertIn("shared state %s is up" % self.redis.shown, log)
            self.assertNotIn("unreachable", log)
            self.assertNotIn(PASSWORD, log)
        # The private socket hiredis reaches the bridge through.
        sockdir = os.path.join(self.nodes[0].queue_dir, "shared-tls")
        self.assertEqual(stat.S_IMODE(os.stat(sockdir).st_mode), 0o700)
        sock = os.path.join(sockdir, "redis.sock")
        self.assertTrue(stat.S_ISSOCK(os.lstat(sock).st_mode))
        self.assertEqual(stat.S_IMODE(os.lstat(sock).st_mode), 0o600)

    def refused_node(self, name, text, extra="", url=None):
        d = self.node(name, extra, url=url)
        st = self.wait_state(d, "down")
        d.wait_log("is unreachable", timeout=10)
        deadline = time.time() + 10
        while "certificate" not in st.get("last_error", "") and time.time() < deadline:
            time.sleep(0.2)
            st = self.status(d)["shared_state"]
        self.assertIn(text, st.get("last_error", ""), st)
        self.assertTrue(st["tls"])
        status_text = d.ctl("status", check=True).stdout
        self.assertIn("shared_state.last_error: ", status_text)
        return d

    def test_wrong_ca_and_wrong_name_are_refused(self):
        """The certificate does not chain to shared_state_tls_CAfile, or
        does not name the host of the URL: never up, the reason in status
        and once in the log, and mail still goes out (fallback)."""
        bad_ca = self.refused_node("badca", "certificate",
                                   "shared_state_tls_CAfile = %s\n" % self.other_ca.cert)
        bad_name = self.refused_node(
            "badname", "certificate names localhost",
            url="rediss://:%s@127.0.0.1:%d/0" % (PASSWORD, self.redis.port))
        # Several reconnects later: still one line each, and still down.
        time.sleep(3)
        for d in (bad_ca, bad_name):
            self.assertEqual(self.status(d)["shared_state"]["state"], "down")
            log = d.log_text()
            self.assertEqual(log.count("is unreachable"), 1, log[-3000:])
            lines = [x for x in log.splitlines() if "certificate" in x]
            self.assertEqual(len(lines), 1, log[-3000:])
        for d in (bad_ca, bad_name):
            self.submit_many(d, 5, d.name)
        self.assertTrue(self.sink.wait_messages(10, timeout=30),
                        "%d of 10 delivered" % len(self.sink.messages))
        self.assert_all_once(["%s-%d" % (d.name, i) for d in (bad_ca, bad_name)
                              for i in range(5)])

    def test_redis_restart_reconnects_over_tls(self):
        """Redis (TLS) killed and started again on the same port: the nodes
        log the loss once, deliver under their share, come back by
        themselves; nothing lost or delivered twice."""
        for name in ("a", "b"):
            self.node(name)
        self.wait_fleet(2)
        n = 100
        self.submit_all(n)
        time.sleep(1)
        self.redis.kill()
        for d in self.nodes:
            d.wait_log("is unreachable", timeout=10)
        time.sleep(2)
        self.redis.start()
        for d in self.nodes:
            d.wait_log("limits are shared with the fleet again", timeout=20)
        self.assertTrue(self.sink.wait_messages(2 * n, timeout=90),
                        "%d of %d delivered" % (len(self.sink.messages), 2 * n))
        self.assert_all_once(["%s-%d" % (d.name, i) for d in self.nodes for i in range(n)])
        sts = self.wait_fleet(2)
        self.assertTrue(all(s["tls"] and s["tls_version"] == "TLSv1.3" for s in sts))
        for d in self.nodes:
            log = d.log_text()
            shared = "\n".join(x for x in log.splitlines() if "convoy/shared" in x)
            self.assertEqual(log.count("is unreachable"), 1, shared)
            self.assertEqual(log.count("limits are shared with the fleet again"), 1, shared)
        print("Redis (TLS) restarted: both nodes reconnected", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
