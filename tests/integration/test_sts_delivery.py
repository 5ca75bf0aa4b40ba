"""MTA-STS (RFC 8461 4 and 5) enforced during real delivery: the real convoyd
delivers to aiosmtpd sinks (sink.py) acting as MX hosts on their own
loopback addresses, finds them through dnsmasq (world.py), and fetches
policies from nginx (web.py), all with certificates from a test CA (pki.py).

Each case reads as data: what the domain publishes (TXT, policy, MX records),
what its MX presents (certificate, STARTTLS), and what must come out: the
messages at the sink, the recipient in `convoyctl queue list --json`
(state, last_result.dsn, sts_mode, sts_id) and the delivery log line.
"""

import json
import os
import re
import shutil
import smtplib
import tempfile
import time
import unittest

from convoy import Daemon, free_port
from pki import CA, mx_tls
from sink import Sink
from web import Site, Web
import world
from world import A, MX, TXT, DnsServer, free_udp_tcp_port

WEB_IP = "127.0.0.1"


def policy(mode="enforce", mx=("mx1.{d}",), max_age=86400):
    lines = ["version: STSv1", "mode: " + mode] + ["mx: " + m for m in mx]
    lines.append("max_age: %d" % max_age)
    return "\r\n".join(lines) + "\r\n"


ENFORCE = policy()

# domain -> what it publishes. txt: TXT strings (one tuple per record);
# site: Site keyword arguments (no site: no policy host); mx: [(name, pref,
# ip, certificate kind)], kind None = no STARTTLS.
DOMAINS = {
    "ok.test": dict(txt=[("v=STSv1; id=ok1",)], site=dict(body=ENFORCE),
                    mx=[("mx1.ok.test", 10, "127.0.0.71", "good")]),
    "wrongname.test": dict(txt=[("v=STSv1; id=wn1",)], site=dict(body=ENFORCE),
                           mx=[("mx1.wrongname.test", 10, "127.0.0.72", "other")]),
    "expired.test": dict(txt=[("v=STSv1; id=ex1",)], site=dict(body=ENFORCE),
                         mx=[("mx1.expired.test", 10, "127.0.0.73", "expired")]),
    "selfsigned.test": dict(txt=[("v=STSv1; id=ss1",)], site=dict(body=ENFORCE),
                            mx=[("mx1.selfsigned.test", 10, "127.0.0.74", "self")]),
    "notls.test": dict(txt=[("v=STSv1; id=nt1",)], site=dict(body=ENFORCE),
                       mx=[("mx1.notls.test", 10, "127.0.0.75", None)]),
    # The preferred MX is not in the policy: only the matching one gets mail.
    "partial.test": dict(txt=[("v=STSv1; id=pa1",)],
                         site=dict(body=policy(mx=("mx2.partial.test",))),
                         mx=[("mx1.partial.test", 10, "127.0.0.76", "good"),
                             ("mx2.partial.test", 20, "127.0.0.77", "good")]),
    "wild.test": dict(txt=[("v=STSv1; id=wi1",)], site=dict(body=policy(mx=("*.wild.test",))),
                      mx=[("mx5.wild.test", 10, "127.0.0.78", "good")]),
    "testing.test": dict(txt=[("v=STSv1; id=te1",)], site=dict(body=policy(mode="testing")),
                         mx=[("mx1.testing.test", 10, "127.0.0.79", "other")]),
    # Broken publications: no policy applies, opportunistic delivery to an
    # MX whose certificate would fail enforce.
    "notfound.test": dict(txt=[("v=STSv1; id=nf1",)], site=dict(status=404),
                          mx=[("mx1.notfound.test", 10, "127.0.0.80", "self")]),
    "redirect.test": dict(txt=[("v=STSv1; id=rd1",)],
                          site=dict(redirect="https://mta-sts.ok.test/.well-known/mta-sts.txt"),
                          mx=[("mx1.redirect.test", 10, "127.0.0.80", "self")]),
    "ctype.test": dict(txt=[("v=STSv1; id=ct1",)],
                       site=dict(body=ENFORCE, content_type="text/html"),
                       mx=[("mx1.ctype.test", 10, "127.0.0.80", "self")]),
    "big.test": dict(txt=[("v=STSv1; id=bg1",)],
                     site=dict(body=ENFORCE + "x: " + "y" * 70000 + "\r\n"),
                     mx=[("mx1.big.test", 10, "127.0.0.80", "self")]),
    "syntax.test": dict(txt=[("v=STSv1; id=sy1",)],
                        site=dict(body="version: STSv1\r\nmode: sometimes\r\n"),
                        mx=[("mx1.syntax.test", 10, "127.0.0.80", "self")]),
    "twotxt.test": dict(txt=[("v=STSv1; id=tt1",), ("v=STSv1; id=tt2",)],
                        site=dict(body=ENFORCE),
                        mx=[("mx1.twotxt.test", 10, "127.0.0.80", "self")]),
    # Overrides (tls_policy_file) against the policy.
    "ovsecure.test": dict(txt=[("v=STSv1; id=os1",)], site=dict(body=policy(mode="testing")),
                          mx=[("mx1.ovsecure.test", 10, "127.0.0.81", "other")]),
    "ovmay.test": dict(txt=[("v=STSv1; id=om1",)], site=dict(body=ENFORCE),
                       mx=[("mx1.ovmay.test", 10, "127.0.0.82", "self")]),
    # Published broken (its MX host not listed) and fixed later under the same
    # id: StsCacheTest.test_fixed_policy_same_id_delivers_on_next_retry.
    "fixed.test": dict(txt=[("v=STSv1; id=fx1",)],
                       site=dict(body=policy(mx=("mx9.elsewhere.test",))),
                       mx=[("mx1.fixed.test", 10, "127.0.0.83", "good")]),
}

OVERRIDES = "# test overrides\novsecure.test secure\novmay.test may\n"


class World:
    """DNS, policy hosts and MX sinks for every domain in DOMAINS."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="convoy-stsd-")
        os.chmod(self.tmp, 0o755)  # nginx workers may run as another user
        self.web = self.dns = None
        self.sinks = {}
        pkidir = os.path.join(self.tmp, "pki")
        self.ca = ca = CA(pkidir)
        web_leaf = ca.issue("web", ["mta-sts." + d for d in DOMAINS])
        sites = []
        for d, spec in DOMAINS.items():
            if "site" in spec:
                kw = dict(spec["site"])
                if kw.get("body"):
                    kw["body"] = kw["body"].replace("{d}", d)
                sites.append(Site(d, web_leaf, **kw))
        self.web = Web(self.tmp, sites, host=WEB_IP).start()
        ips = sorted({ip for spec in DOMAINS.values() for _, _, ip, _ in spec["mx"]})
        self.smtp_port = free_udp_tcp_port(tuple(ips))
        kinds = {}
        records = []
        for d, spec in DOMAINS.items():
            for strings in spec["txt"]:
                records.append(TXT("_mta-sts." + d, *strings))
            records.append(A("mta-sts." + d, WEB_IP))
            for name, pref, ip, kind in spec["mx"]:
                records.append(MX(d, pref, name))
                records.append(A(name, ip))
                kinds.setdefault(ip, (kind, name))
        for ip, (kind, name) in kinds.items():
            tls = mx_tls(ca, pkidir, kind, "mx-" + ip, name)
            self.sinks[ip] = Sink(ip, self.smtp_port, tls=tls, hostname=name).start()
        self.records = records
        os.makedirs(os.path.join(self.tmp, "dns"))
        # A short TTL: the resolver's cache must not hide a changed TXT record.
        self.dns = DnsServer(records, ttl=1, workdir=os.path.join(self.tmp, "dns")).start()

    def config(self, extra=""):
        return ("myhostname = relay.test\n"
                "smtpd_listen = 127.0.0.1:%d\n"
                "dns_servers = %s\n"
                "smtp_destination_port = %d\n"
                "smtp_tls_CAfile = %s\n"
                "sts_policy_https_port = %d\n"
                "sts_fetch_timeout = 5s\n"
                "sts_connect_timeout = 2s\n"
                "smtp_helo_timeout = 5s\n"
                "smtp_starttls_timeout = 5s\n"
                "smtp_data_done_timeout = 5s\n"
                "minimal_backoff_time = 1s\n"
                "maximal_backoff_time = 2s\n"
                "smtp_connection_cache_time_limit = 1s\n"
                "%s" % (free_port(), self.dns.server, self.smtp_port, self.ca.cert,
                        self.web.port, extra))

    def close(self):
        for s in self.sinks.values():
            s.stop()
        if self.web:
            self.web.stop()
        if self.dns:
            self.dns.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def message(rcpt):
    return ("From: s@src.test\r\nTo: %s\r\nSubject: sts %s\r\n"
            "Message-ID: <%s@src.test>\r\n\r\nHello %s.\r\n"
            % (rcpt, rcpt, time.time(), rcpt)).encode()


@world.needs("dnsmasq", "nginx")
class StsDeliveryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.world = None
        cls.daemon = None
        try:
            cls.world = World()
            cls.ovfile = os.path.join(cls.world.tmp, "tls_policy")
            with open(cls.ovfile, "w") as f:
                f.write(OVERRIDES)
            cls.daemon = Daemon(cls.world.config("tls_policy_file = %s\n" % cls.ovfile)).start()
            cls.daemon.wait_log("delivery started", timeout=5)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.daemon:
            try:
                cls.daemon.stop()
            except Exception:
                pass
            cls.daemon.close()
        if cls.world:
            cls.world.close()

    # ---- helpers ---------------------------------------------------------

    def submit(self, rcpt, daemon=None):
        d = daemon or self.daemon
        with open(d.conf_path) as f:
            port = int(re.search(r"smtpd_listen = 127\.0\.0\.1:(\d+)", f.read()).group(1))
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.ehlo("app.test")
            c.mail("s@src.test")
            c.rcpt(rcpt)
            code, resp = c.data(message(rcpt))
            self.assertEqual(code, 250, resp)
            return re.search(rb"queued as (\S+)", resp).group(1).decode()

    def log_line(self, rcpt, pattern, timeout=20, daemon=None):
        """Wait for a delivery log line of rcpt that matches pattern."""
        d = daemon or self.daemon
        rx = re.compile(r"to=<%s>, .*%s" % (re.escape(rcpt), pattern))
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in d.log_text().splitlines():
                if rx.search(line):
                    return line
            time.sleep(0.1)
        self.fail("no log line for %s matching %r:\n%s" % (rcpt, pattern, d.log_text()[-4000:]))

    def recipient(self, qid, daemon=None):
        """The recipient of message qid in queue list --json (None: gone)."""
        d = daemon or self.daemon
        out = d.ctl("queue", "list", "--json").stdout
        for line in out.splitlines():
            if line.strip():
                o = json.loads(line)
                if o["id"] == qid:
                    return o["recipients"][0]
        return None

    def received(self, ip, rcpt):
        sink = self.world.sinks[ip]
        with sink.lock:
            return [m for m in sink.messages if rcpt in m.rcpt_tos]

    def assert_delivered(self, rcpt, ip, qid, label, tls="verified", daemon=None):
        line = self.log_line(rcpt, r"status=sent .*, %s, tls=%s" % (re.escape(label), tls),
                             daemon=daemon)
        deadline = time.time() + 10
        while time.time() < deadline and not self.received(ip, rcpt):
            time.sleep(0.05)
        self.assertEqual(len(self.received(ip, rcpt)), 1, "nothing at %s for %s" % (ip, rcpt))
        # Delivered: the message leaves the queue.
        deadline = time.time() + 10
        while time.time() < deadline and self.recipient(qid, daemon) is not None:
            time.sleep(0.1)
        self.assertIsNone(self.recipient(qid, daemon))
        return line

    def assert_deferred(self, rcpt, ip, qid, text, sts_mode="enforce", sts_id=None):
        line = self.log_line(rcpt, r"dsn=4\.7\.5, status=deferred \(%s" % text)
        r = self.recipient(qid)
        deadline = time.time() + 10
        while time.time() < deadline and (r is None or r["last_result"] is None):
            time.sleep(0.1)
            r = self.recipient(qid)
        self.assertIsNotNone(r, "the message left the queue")
        self.assertIn(r["state"], ("deferred", "active", "queued"))
        self.assertEqual(r["last_result"]["dsn"], "4.7.5")
        self.assertEqual(r["last_result"]["sts_mode"], sts_mode)
        if sts_id is not None:
            self.assertEqual(r["last_result"]["sts_id"], sts_id)
        self.assertEqual(self.received(ip, rcpt), [], "mail reached a host the policy refuses")
        return line, r

    # ---- enforce ---------------------------------------------------------

    def test_enforce_valid_mx_delivers_over_verified_tls(self):
        qid = self.submit("a@ok.test")
        line = self.assert_delivered("a@ok.test", "127.0.0.71", qid, "sts=enforce id=ok1")
        self.assertIn("relay=mx1.ok.test[127.0.0.71]", line)
        self.assertIn("Verified TLS connection established to mx1.ok.test", self.daemon.log_text())

    def test_enforce_wrong_name_defers(self):
        qid = self.submit("a@wrongname.test")
        line, r = self.assert_deferred(
            "a@wrongname.test", "127.0.0.72", qid,
            r"MTA-STS enforce: certificate for mx1\.wrongname\.test: ", sts_id="wn1")
        self.assertIn("sts=enforce id=wn1", line)
        self.assertIn("MTA-STS enforce", r["last_result"]["text"])

    def test_enforce_expired_certificate_defers(self):
        qid = self.submit("a@expired.test")
        self.assert_deferred("a@expired.test", "127.0.0.73", qid,
                             r"MTA-STS enforce: certificate for mx1\.expired\.test: "
                             r"certificate has expired", sts_id="ex1")

    def test_enforce_untrusted_certificate_defers(self):
        qid = self.submit("a@selfsigned.test")
        self.assert_deferred("a@selfsigned.test", "127.0.0.74", qid,
                             r"MTA-STS enforce: certificate for mx1\.selfsigned\.test: ",
                             sts_id="ss1")

    def test_enforce_without_starttls_defers_never_plaintext(self):
        qid = self.submit("a@notls.test")
        self.assert_deferred("a@notls.test", "127.0.0.75", qid,
                             r"MTA-STS enforce: mx1\.notls\.test does not offer STARTTLS",
                             sts_id="nt1")

    def test_enforce_uses_only_matching_mx(self):
        qid = self.submit("a@partial.test")
        line = self.assert_delivered("a@partial.test", "127.0.0.77", qid, "sts=enforce id=pa1")
        self.assertIn("relay=mx2.partial.test[127.0.0.77]", line)
        self.assertEqual(self.received("127.0.0.76", "a@partial.test"), [])
        self.assertIn("MX host mx1.partial.test matches no pattern: skipped",
                      self.daemon.log_text())

    def test_enforce_wildcard_pattern(self):
        qid = self.submit("a@wild.test")
        self.assert_delivered("a@wild.test", "127.0.0.78", qid, "sts=enforce id=wi1")

    # ---- testing ---------------------------------------------------------

    def test_testing_mode_delivers_and_records_the_failure(self):
        qid = self.submit("a@testing.test")
        line = self.assert_delivered("a@testing.test", "127.0.0.79", qid, "sts=testing id=te1",
                                     tls="encrypted")
        self.assertIn("sts_failure=certificate-host-mismatch", line)
        self.assertRegex(self.daemon.log_text(),
                         r"sts: testing policy failure domain=testing\.test id=te1 "
                         r"mx=mx1\.testing\.test result=certificate-host-mismatch")

    # ---- broken publications: no policy ---------------------------------

    def test_broken_policies_mean_no_policy(self):
        cases = ["notfound.test", "redirect.test", "ctype.test", "big.test", "syntax.test",
                 "twotxt.test"]
        qids = {d: self.submit("a@" + d) for d in cases}
        for d, qid in qids.items():
            with self.subTest(domain=d):
                self.assert_delivered("a@" + d, "127.0.0.80", qid, "sts=none", tls="encrypted")

    # ---- overrides -------------------------------------------------------

    def test_override_secure_beats_testing_policy(self):
        qid = self.submit("a@ovsecure.test")
        line, r = self.assert_deferred("a@ovsecure.test", "127.0.0.81", qid,
                                       r"TLS policy secure: certificate for mx1\.ovsecure\.test",
                                       sts_mode="none", sts_id="")
        self.assertIn("tls_policy=secure", line)

    def test_override_may_exempts_from_enforce(self):
        qid = self.submit("a@ovmay.test")
        self.assert_delivered("a@ovmay.test", "127.0.0.82", qid, "tls_policy=may",
                              tls="encrypted")

    def test_status_reports_policy_cache(self):
        self.submit("b@ok.test")
        self.log_line("b@ok.test", "status=sent")
        r = self.daemon.ctl("status", "--json")
        if r.returncode != 0 or not r.stdout.strip().startswith("{"):
            r = self.daemon.ctl("status")
        self.assertIn("policy_cache_size", r.stdout)


@world.needs("dnsmasq", "nginx")
class StsCacheTest(unittest.TestCase):
    """The policy cache on the delivery path: one fetch for many messages,
    the cached policy after the policy host is gone, across a restart, and
    over an id change whose fetch fails; a broken override file on reload."""

    def setUp(self):
        self.world = World()
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            try:
                d.stop()
            except Exception:
                pass
            d.close()
        self.world.close()

    def start(self, extra="", workdir=None):
        d = Daemon(self.world.config(extra), workdir=workdir).start()
        d.wait_log("delivery started", timeout=5)
        self.daemons.append(d)
        return d

    def submit(self, d, rcpt):
        return StsDeliveryTest.submit(self, rcpt, daemon=d)

    def log_line(self, d, rcpt, pattern, timeout=20):
        return StsDeliveryTest.log_line(self, rcpt, pattern, timeout=timeout, daemon=d)

    def fetches(self, d, domain):
        return len(re.findall(r"policy fetched domain=%s " % re.escape(domain),
                              d.log_text()))

    def test_cache_outlives_policy_host_restart_and_id_change(self):
        wd = tempfile.mkdtemp(prefix="convoy-stsd-d-", dir=self.world.tmp)
        d = self.start("sts_txt_check_interval = 0\n", workdir=wd)
        # A burst to one domain: one fetch.
        for i in range(5):
            self.submit(d, "m%d@ok.test" % i)
        for i in range(5):
            self.log_line(d, "m%d@ok.test" % i, r"status=sent .*sts=enforce id=ok1, tls=verified")
        self.assertEqual(self.fetches(d, "ok.test"), 1)
        self.assertIn("ok.test", d.ctl("sts", "show", "ok.test").stdout)

        # The policy host goes away: the cached policy still applies.
        self.world.web.stop()
        self.submit(d, "after-web@ok.test")
        self.log_line(d, "after-web@ok.test", r"status=sent .*sts=enforce id=ok1")
        # The id changes and its fetch fails: the old policy stays.
        self.world.dns.records = [r for r in self.world.dns.records
                                  if not (r[0] == "TXT" and r[1] == "_mta-sts.ok.test")]
        self.world.dns.add(TXT("_mta-sts.ok.test", "v=STSv1; id=ok2"))
        self.world.dns.restart(keep_port=True)
        time.sleep(1.5)  # the idle session (smtp_connection_cache_time_limit) is gone
        self.submit(d, "idchange1@ok.test")
        self.log_line(d, "idchange1@ok.test", r"status=sent .*sts=enforce id=ok1")
        deadline = time.time() + 15
        while time.time() < deadline and "policy fetch failed domain=ok.test" not in d.log_text():
            time.sleep(0.1)
        self.submit(d, "idchange2@ok.test")
        self.log_line(d, "idchange2@ok.test", r"status=sent .*sts=enforce id=ok1")
        self.assertRegex(d.log_text(), r"policy fetch failed domain=ok\.test id=ok2")

        # A restart with the policy host still down: the cache survives.
        d.stop()
        d.start()
        d.wait_log("delivery started", timeout=5)
        self.submit(d, "restart@ok.test")
        self.log_line(d, "restart@ok.test", r"status=sent .*sts=enforce id=ok1")
        # An enforce domain whose MX fails is still refused after the restart.
        qid = self.submit(d, "restart@wrongname.test")
        self.assertIsNotNone(qid)

    def test_policy_recheck_before_expiry_bounce(self):
        # RFC 8461 5: before a policy-caused deferral becomes a bounce, look
        # for a newer policy (one refetch even with the same id).
        d = self.start("maximal_queue_lifetime = 3s\n")
        self.submit(d, "late@expired.test")
        self.log_line(d, "late@expired.test", r"dsn=4\.7\.5, status=deferred \(MTA-STS enforce")
        self.log_line(d, "late@expired.test", r"dsn=4\.4\.7, status=bounced", timeout=20)
        text = d.log_text()
        self.assertIn("MTA-STS recheck for late@expired.test: policy id=ex1 unchanged", text)
        # The recheck comes before the bounce. (Its refetch of the same id is
        # skipped here: the retry after the first deferral already rechecked
        # the policy seconds ago, within sts_fetch_retry_time.)
        self.assertLess(text.index("MTA-STS recheck for late@expired.test"),
                        text.index("status=bounced (delivery time expired"))
        self.assertEqual([m for s in self.world.sinks.values() for m in s.messages
                          if "late@expired.test" in m.rcpt_tos], [])

    def test_fixed_policy_same_id_delivers_on_next_retry(self):
        # RFC 8461 5, not only before an expiry bounce: an enforce deferral
        # makes the next attempt refetch the policy even though the TXT id
        # is unchanged, and the whole policy is compared, so a domain that
        # fixed its policy without a new id gets its mail on the next retry.
        d = self.start("minimal_backoff_time = 2s\nmaximal_backoff_time = 2s\n")
        qid = self.submit(d, "fix@fixed.test")
        self.log_line(d, "fix@fixed.test",
                      r"dsn=4\.7\.5, status=deferred \(MTA-STS enforce: MX host "
                      r"mx1\.fixed\.test matches no pattern")
        self.world.web.set_body("fixed.test", policy(mx=("mx1.fixed.test",)))
        line = self.log_line(d, "fix@fixed.test", r"status=sent ", timeout=20)
        self.assertIn("sts=enforce id=fx1, tls=verified", line)
        self.assertIn("relay=mx1.fixed.test[127.0.0.83]", line)
        text = d.log_text()
        self.assertIn("policy changed domain=fixed.test id=fx1: same id, new content", text)
        self.assertIn("MTA-STS recheck domain=fixed.test: policy changed (content) id=fx1 "
                      "mode=enforce", text)
        self.assertEqual(self.fetches(d, "fixed.test"), 2)
        with self.world.sinks["127.0.0.83"].lock:
            got = [m for m in self.world.sinks["127.0.0.83"].messages
                   if "fix@fixed.test" in m.rcpt_tos]
        self.assertEqual(len(got), 1)
        self.assertIsNotNone(qid)

    def test_broken_override_file_refuses_reload(self):
        ov = os.path.join(self.world.tmp, "tls_policy_reload")
        with open(ov, "w") as f:
            f.write("ovmay.test may\n")
        d = self.start("tls_policy_file = %s\n" % ov)
        with open(ov, "w") as f:
            f.write("ovmay.test may\nbad.test sometimes\n")
        r = d.ctl("reload")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("%s:2:" % ov, r.stdout + r.stderr)
        d.wait_log("reload failed, configuration unchanged", timeout=10)
        # The old table still applies: ovmay.test is exempt from its enforce policy.
        qid = self.submit(d, "r@ovmay.test")
        self.log_line(d, "r@ovmay.test", r"status=sent .*tls_policy=may")
        self.assertIsNotNone(qid)
        # A good file is taken.
        with open(ov, "w") as f:
            f.write("ovmay.test encrypt\n")
        r = d.ctl("reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.submit(d, "r2@ovmay.test")
        self.log_line(d, "r2@ovmay.test", r"status=sent .*tls_policy=encrypt, tls=encrypted")


if __name__ == "__main__":
    unittest.main()
