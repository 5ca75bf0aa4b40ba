"""DANE for SMTP (RFC 7672) enforced during real delivery, with its
precedence over MTA-STS (RFC 8461 2), end to end.

The DNSSEC world (dnssec_world.py: a validating unbound in front of nsd,
zones signed at test time) publishes MX, A and TLSA records; the real
convoyd (smtp_tls_security_level = dane, smtp_dns_support_level = dnssec)
delivers to aiosmtpd sinks with STARTTLS (sink.py) whose certificates (pki.py)
match the TLSA records or do not; nginx (web.py) serves MTA-STS policies for
the domains that mix both. Each case checks the sink (delivered, or nothing
received: never plaintext), the delivery log line (dane=verified 3 1 1,
dane=fail REASON, ...) and the queue. `convoyctl dane check` is run against
a good and a bad domain.
"""

import json
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
import unittest

import tlsrpt_check
from convoy import CONVOYCTL, Daemon, free_port
from dnssec_world import DnssecWorld, Zone, available, tlsa_rdata
from pki import CA, self_signed
from sink import Sink
from web import Site, Web
from world import free_udp_tcp_port

HAVE_TOOLS = available() and os.access("/usr/sbin/nginx", os.X_OK)

IPS = {
    "ee": "127.0.0.151",        # self-signed, wrong name; 3 1 1 matches
    "bad": "127.0.0.152",       # 3 1 1 of another key
    "ta": "127.0.0.153",        # leaf of an intermediate; 2 0 1 of the intermediate
    "unusable": "127.0.0.154",  # only 0 0 1 (PKIX-TA: unusable for SMTP)
    "none": "127.0.0.155",      # secure zone, no TLSA
    "bogus": "127.0.0.156",     # TLSA signature broken
    "plain": "127.0.0.157",     # unsigned zone, TLSA that matches nothing
    "c1dane": "127.0.0.158",    # combo: DANE host not listed in the STS policy
    "c2dane": "127.0.0.159",    # combo: DANE fails, STS would accept
    "c3sts": "127.0.0.160",     # combo: the STS-judged host
    "notls": "127.0.0.161",     # 3 1 1 published, no STARTTLS offered
}

STS_ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: %s\r\nmax_age: 86400\r\n"


class World:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="convoy-dane-")
        os.chmod(self.tmp, 0o755)
        self.sinks = {}
        self.dns = self.web = None
        pki = os.path.join(self.tmp, "pki")
        self.ca = ca = CA(pki)
        inter = ca.intermediate("inter")
        self.port = free_udp_tcp_port(tuple(IPS.values()))
        p = self.port
        ee = self_signed(pki, "ee", ["wrong.name.example"])
        other = self_signed(pki, "other", ["mx.bad.dane.test"])
        bad = ca.issue("bad", ["mx.bad.dane.test"])
        ta = inter.issue("ta", ["mx.ta.dane.test"])
        c1 = self_signed(pki, "c1", ["not.listed.example"])
        c2 = ca.issue("c2", ["mx1.combo2.dane.test"])
        c3 = ca.issue("c3", ["mx2.combo3.dane.test"])
        c3bad = ca.issue("c3bad", ["mx1.combo3.dane.test"])
        plain = self_signed(pki, "plain", ["mx.plain.test"])
        web_leaf = ca.issue("web", ["mta-sts.combo%d.dane.test" % i for i in (1, 2, 3)])
        self.ee, self.other = ee, other
        certs = {"ee": ee, "bad": bad, "ta": ta, "unusable": ee, "none": ee, "bogus": ee,
                 "plain": plain, "c1dane": c1, "c2dane": c2, "c3sts": c3, "notls": None}
        tlsa = "_%d._tcp." % p
        signed = [
            "ee MX 10 mx.ee", "mx.ee A " + IPS["ee"],
            tlsa + "mx.ee TLSA " + tlsa_rdata(ee.cert, 3, 1, 1),
            "bad MX 10 mx.bad", "mx.bad A " + IPS["bad"],
            tlsa + "mx.bad TLSA " + tlsa_rdata(other.cert, 3, 1, 1),
            "ta MX 10 mx.ta", "mx.ta A " + IPS["ta"],
            tlsa + "mx.ta TLSA " + tlsa_rdata(inter.cert, 2, 0, 1),
            "unusable MX 10 mx.unusable", "mx.unusable A " + IPS["unusable"],
            tlsa + "mx.unusable TLSA " + tlsa_rdata(ee.cert, 0, 0, 1),
            "none MX 10 mx.none", "mx.none A " + IPS["none"],
            "bogus MX 10 mx.bogus", "mx.bogus A " + IPS["bogus"],
            tlsa + "mx.bogus TLSA " + tlsa_rdata(ee.cert, 3, 1, 1),
            "notls MX 10 mx.notls", "mx.notls A " + IPS["notls"],
            tlsa + "mx.notls TLSA " + tlsa_rdata(ee.cert, 3, 1, 1),
            # An MX host that is an alias: TLSA at the CNAME target first
            # (RFC 7672 2.2.3).
            "cname MX 10 mail.cname", "mail.cname CNAME real.cname",
            "real.cname A " + IPS["ee"],
            tlsa + "real.cname TLSA " + tlsa_rdata(ee.cert, 3, 1, 1),
            # combo1: the DANE host (not in the policy) comes first.
            "combo1 MX 10 mx1.combo1", "mx1.combo1 A " + IPS["c1dane"],
            tlsa + "mx1.combo1 TLSA " + tlsa_rdata(c1.cert, 3, 1, 1),
            "_mta-sts.combo1 TXT \"v=STSv1; id=c1\"", "mta-sts.combo1 A 127.0.0.1",
            # combo2: DANE fails on a host the policy lists and whose
            # certificate is valid for its name.
            "combo2 MX 10 mx1.combo2", "mx1.combo2 A " + IPS["c2dane"],
            tlsa + "mx1.combo2 TLSA " + tlsa_rdata(other.cert, 3, 1, 1),
            "_mta-sts.combo2 TXT \"v=STSv1; id=c2\"", "mta-sts.combo2 A 127.0.0.1",
            # combo3: a DANE host that fails, then an STS-judged one.
            "combo3 MX 10 mx1.combo3", "combo3 MX 20 mx2.combo3",
            "mx1.combo3 A " + IPS["c2dane"], "mx2.combo3 A " + IPS["c3sts"],
            tlsa + "mx1.combo3 TLSA " + tlsa_rdata(other.cert, 3, 1, 1),
            "_mta-sts.combo3 TXT \"v=STSv1; id=c3\"", "mta-sts.combo3 A 127.0.0.1",
        ]
        del c3bad
        zones = [
            Zone("dane.test", signed, tamper=[tlsa + "mx.bogus"]),
            Zone("plain.test", ["@ MX 10 mx", "mx A " + IPS["plain"],
                                tlsa + "mx TLSA 3 1 1 " + "00" * 32], signed=False),
        ]
        try:
            self.dns = DnssecWorld(zones).start()
            sites = [Site("combo1.dane.test", web_leaf, body=STS_ENFORCE % "mx9.combo1.dane.test"),
                     Site("combo2.dane.test", web_leaf, body=STS_ENFORCE % "mx1.combo2.dane.test"),
                     Site("combo3.dane.test", web_leaf, body=STS_ENFORCE % "*.combo3.dane.test")]
            self.web = Web(self.tmp, sites, host="127.0.0.1").start()
            for name, ip in IPS.items():
                leaf = certs[name]
                self.sinks[name] = Sink(ip, p, tls=(leaf.chain, leaf.key) if leaf else None,
                                        hostname="mx.%s.test" % name).start()
        except BaseException:
            self.close()
            raise

    def config(self, level="dane"):
        return ("myhostname = relay.test\n"
                "smtpd_listen = 127.0.0.1:%d\n"
                "dns_servers = %s\n"
                "smtp_dns_support_level = dnssec\n"
                "smtp_tls_security_level = %s\n"
                "smtp_destination_port = %d\n"
                "smtp_tls_CAfile = %s\n"
                "sts_policy_https_port = %d\n"
                "sts_fetch_timeout = 5s\n"
                "smtp_helo_timeout = 5s\n"
                "smtp_starttls_timeout = 5s\n"
                "minimal_backoff_time = 60s\n"
                "smtp_connection_cache_time_limit = 1s\n"
                "tlsrpt_enable = yes\n"
                % (free_port(), self.dns.server, level, self.port, self.ca.cert, self.web.port))

    def close(self):
        for s in self.sinks.values():
            s.stop()
        if self.web:
            self.web.stop()
        if self.dns:
            self.dns.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def message(rcpt):
    return ("From: s@src.test\r\nTo: %s\r\nSubject: dane\r\nMessage-ID: <%s@src.test>\r\n"
            "\r\nHello %s.\r\n" % (rcpt, time.time(), rcpt)).encode()


@unittest.skipUnless(HAVE_TOOLS, "unbound, nsd, ldnsutils or nginx missing")
class DaneDeliveryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.world = cls.daemon = cls.only = None
        try:
            cls.world = World()
            cls.daemon = Daemon(cls.world.config()).start()
            cls.only = Daemon(cls.world.config("dane-only")).start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for d in (cls.daemon, cls.only):
            if d:
                try:
                    d.stop()
                except Exception:
                    pass
                d.close()
        if cls.world:
            cls.world.close()

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

    def log_line(self, rcpt, pattern, daemon=None, timeout=30):
        d = daemon or self.daemon
        rx = re.compile(r"to=<%s>, .*%s" % (re.escape(rcpt), pattern))
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in d.log_text().splitlines():
                if rx.search(line):
                    return line
            time.sleep(0.1)
        self.fail("no log line for %s matching %r:\n%s\n%s" % (
            rcpt, pattern, d.log_text()[-5000:], self.world.dns.logs()[-2000:]))

    def received(self, name, rcpt):
        s = self.world.sinks[name]
        with s.lock:
            return [m for m in s.messages if rcpt in m.rcpt_tos]

    def recipient(self, qid, daemon=None):
        d = daemon or self.daemon
        for line in d.ctl("queue", "list", "--json").stdout.splitlines():
            if line.strip():
                o = json.loads(line)
                if o["id"] == qid:
                    return o["recipients"][0]
        return None

    def delivered(self, rcpt, sink, label, tls, daemon=None):
        self.submit(rcpt, daemon)
        line = self.log_line(rcpt, r"status=sent .*, %s, tls=%s" % (re.escape(label), tls),
                             daemon)
        deadline = time.time() + 10
        while time.time() < deadline and not self.received(sink, rcpt):
            time.sleep(0.05)
        got = self.received(sink, rcpt)
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].tls, "delivered without TLS")
        return line

    def deferred(self, rcpt, sinks, text, label, daemon=None):
        qid = self.submit(rcpt, daemon)
        line = self.log_line(rcpt, r"dsn=4\.7\.5, status=deferred \(%s.*, %s" % (
            text, re.escape(label)), daemon)
        time.sleep(0.3)
        for s in sinks:
            self.assertEqual(self.received(s, rcpt), [], "delivered where DANE forbids it")
        r = self.recipient(qid, daemon)
        self.assertIsNotNone(r)
        self.assertEqual(r["last_result"]["dsn"], "4.7.5")
        self.assertIn(label, r["last_result"]["tls"])
        return line

    # ---- TLS-RPT (RFC 8460): "tlsa" policies ----------------------------------

    def tlsrpt(self, domain, daemon=None):
        """The domain's report so far as (policy, successes, {result-type:
        count}); (None, 0, {}) while there is nothing to report."""
        d = daemon or self.daemon
        r = d.ctl("tlsrpt", "show", domain, "--json")
        if r.returncode != 0:
            return None, 0, {}
        rep = json.loads(r.stdout)
        tlsrpt_check.assert_valid(rep, convoy=True)
        self.assertEqual(len(rep["policies"]), 1, rep)
        p = rep["policies"][0]
        fails = {}
        for row in p.get("failure-details", []):
            fails[row["result-type"]] = fails.get(row["result-type"], 0) + \
                row["failed-session-count"]
            self.assertEqual(row["receiving-mx-hostname"], "mx.%s" % domain, row)
        return p["policy"], p["summary"]["total-successful-session-count"], fails

    def tlsrpt_counted(self, domain, result, daemon=None):
        """Wait for one more session of the domain under result ("ok" or a
        result type); return the policy it was counted under. A session is
        counted once however many messages it carries: first let cached
        connections of earlier tests expire (smtp_connection_cache_time_limit
        = 1s), so the next message opens a session of its own."""
        time.sleep(2.5)
        _, ok0, f0 = self.tlsrpt(domain, daemon)
        before = ok0 if result == "ok" else f0.get(result, 0)
        yield
        deadline = time.time() + 15
        while time.time() < deadline:
            pol, ok, f = self.tlsrpt(domain, daemon)
            now = ok if result == "ok" else f.get(result, 0)
            if now > before:
                self.assertTrue(set(f) <= {result} or result == "ok", f)
                yield pol
                return
            time.sleep(0.2)
        self.fail("no %s session counted for %s: %r" % (result, domain, self.tlsrpt(domain, daemon)))

    def test_tlsrpt_tlsa(self):
        # Verified by its 3 1 1 record: a success under policy-type tlsa
        # with the host's TLSA records as policy-string.
        g = self.tlsrpt_counted("ee.dane.test", "ok")
        next(g)
        self.delivered("rpt@ee.dane.test", "ee", "dane=verified 3 1 1", "verified")
        pol = next(g)
        self.assertEqual(pol, {"policy-type": "tlsa", "policy-domain": "ee.dane.test",
                               "policy-string": [tlsa_rdata(self.world.ee.cert, 3, 1, 1)],
                               "mx-host": ["mx.ee.dane.test"]})
        # No record matches the chain: tlsa-invalid (RFC 8460 4.3.2).
        g = self.tlsrpt_counted("bad.dane.test", "tlsa-invalid")
        next(g)
        self.deferred("rpt@bad.dane.test", ["bad"], r"DANE: certificate", "dane=fail no-match")
        pol = next(g)
        self.assertEqual(pol["policy-type"], "tlsa")
        self.assertEqual(pol["policy-string"], [tlsa_rdata(self.world.other.cert, 3, 1, 1)])
        # A bogus TLSA RRset: the host is never used, counted as
        # dnssec-invalid.
        g = self.tlsrpt_counted("bogus.dane.test", "dnssec-invalid")
        next(g)
        self.deferred("rpt@bogus.dane.test", ["bogus"], r"DANE: TLSA lookup", "dane=fail")
        pol = next(g)
        self.assertEqual((pol["policy-type"], pol["mx-host"]), ("tlsa", ["mx.bogus.dane.test"]))
        # dane-only and no secure TLSA: dane-required.
        g = self.tlsrpt_counted("none.dane.test", "dane-required", self.only)
        next(g)
        self.deferred("rpt@none.dane.test", ["none"], r"DANE required", "dane=fail dane-required",
                      daemon=self.only)
        pol = next(g)
        self.assertEqual(pol["policy-type"], "tlsa")
        # Without DANE (no TLSA records) the session is no-policy-found.
        g = self.tlsrpt_counted("none.dane.test", "ok")
        next(g)
        self.submit("rpt2@none.dane.test")
        self.log_line("rpt2@none.dane.test", "status=sent")
        pol = next(g)
        self.assertEqual(pol["policy-type"], "no-policy-found")

    # ---- DANE alone ------------------------------------------------------

    def test_ee_match_delivered(self):
        # 3 1 1: self-signed, a name that is not the MX host's: still good
        # (RFC 7672 3.1.1).
        self.delivered("a@ee.dane.test", "ee", "dane=verified 3 1 1", "verified")

    def test_ee_mismatch_deferred(self):
        self.deferred("a@bad.dane.test", ["bad"], r"DANE: certificate of mx\.bad\.dane\.test: "
                      r"no-match", "dane=fail no-match")

    def test_ta_chain_delivered(self):
        self.delivered("a@ta.dane.test", "ta", "dane=verified 2 0 1", "verified")

    def test_unusable_only_encrypts(self):
        self.delivered("a@unusable.dane.test", "unusable", "dane=encrypt no-usable-tlsa",
                       "encrypted")

    def test_bogus_tlsa_deferred(self):
        self.deferred("a@bogus.dane.test", ["bogus"],
                      r"DANE: TLSA lookup for MX host mx\.bogus\.dane\.test failed: TLSA bogus",
                      "dane=fail dnssec-invalid")
        with self.world.sinks["bogus"].lock:
            self.assertEqual(self.world.sinks["bogus"].connections, 0)

    def test_no_starttls_deferred(self):
        self.deferred("a@notls.dane.test", ["notls"], r"DANE: mx\.notls\.dane\.test does not "
                      r"offer STARTTLS", "dane=fail starttls-not-offered")

    def test_cname_target_tlsa(self):
        self.delivered("a@cname.dane.test", "ee", "dane=verified 3 1 1", "verified")

    def test_reload_warns_dns_changes(self):
        d = self.only
        with open(d.conf_path) as f:
            text = f.read()
        d.write_config(text + "dns_validating_servers = 127.0.0.1/32\n")
        try:
            d.ctl("reload", check=True)
            d.wait_log("smtp_dns_support_level and dns_validating_servers changes take effect "
                       "at the next restart")
        finally:
            d.write_config(text)
            d.ctl("reload")

    def test_no_tlsa_is_may(self):
        self.delivered("a@none.dane.test", "none", "sts=none", "encrypted")

    def test_insecure_zone_is_may(self):
        # The TLSA record of an unsigned zone (which matches nothing) is
        # ignored (RFC 7672 2.2).
        self.delivered("a@plain.test", "plain", "sts=none", "encrypted")

    def test_dane_only(self):
        self.deferred("b@none.dane.test", ["none"], r"DANE required \(dane-only\), but it does "
                      r"not apply to MX host mx\.none\.dane\.test: TLSA nxdomain",
                      "dane=fail dane-required", daemon=self.only)
        self.delivered("b@ee.dane.test", "ee", "dane=verified 3 1 1", "verified",
                       daemon=self.only)

    # ---- DANE and MTA-STS on one domain ----------------------------------

    def test_dane_host_not_in_sts_policy_used(self):
        self.delivered("a@combo1.dane.test", "c1dane", "dane=verified 3 1 1", "verified")

    def test_dane_failure_defers_though_sts_accepts(self):
        self.deferred("a@combo2.dane.test", ["c2dane"], r"DANE: certificate of "
                      r"mx1\.combo2\.dane\.test: no-match", "dane=fail no-match")

    def test_dane_host_and_sts_host(self):
        line = self.delivered("a@combo3.dane.test", "c3sts", "sts=enforce id=c3", "verified")
        self.assertIn("mx2.combo3.dane.test", line)
        self.assertEqual(self.received("c2dane", "a@combo3.dane.test"), [])
        self.assertIn("DANE: certificate of mx1.combo3.dane.test", self.daemon.log_text())

    # ---- convoyctl dane check ---------------------------------------------

    def dane_check(self, domain, *extra):
        cmd = [CONVOYCTL, "-c", self.daemon.conf_path, "dane", "check", domain] + list(extra)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def test_dane_check_good(self):
        p = self.dane_check("ee.dane.test")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("MX: secure", p.stdout)
        self.assertRegex(p.stdout, r"mx\.ee\.dane\.test: TLSA secure, 1 of 1 usable")
        self.assertIn("matched 3 1 1", p.stdout)
        p = self.dane_check("ee.dane.test", "--json")
        self.assertEqual(p.returncode, 0)
        j = json.loads(p.stdout)
        self.assertTrue(j["mx_secure"])
        h = j["hosts"][0]
        self.assertEqual(h["host"], "mx.ee.dane.test")
        self.assertEqual(h["tlsa"], "secure")
        self.assertTrue(h["records"][0]["usable"])
        self.assertEqual(h["result"], "verified")
        self.assertTrue(j["ok"])

    def test_dane_check_bad(self):
        p = self.dane_check("bad.dane.test")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("no-match", p.stdout)
        p = self.dane_check("bogus.dane.test", "--json")
        self.assertEqual(p.returncode, 1)
        j = json.loads(p.stdout)
        self.assertEqual(j["hosts"][0]["tlsa"], "bogus")
        self.assertFalse(j["ok"])

    def test_sts_check_says_dane(self):
        cmd = [CONVOYCTL, "-c", self.daemon.conf_path, "sts", "check", "combo3.dane.test"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        out = p.stdout
        i1, i2 = out.index("mx mx1.combo3.dane.test"), out.index("mx mx2.combo3.dane.test")
        self.assertIn("dane: takes precedence over MTA-STS for this host", out[i1:i2])
        self.assertIn("dane: does not apply: MTA-STS decides (TLSA nxdomain)", out[i2:])


if __name__ == "__main__":
    unittest.main()
