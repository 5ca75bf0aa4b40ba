"""The DNSSEC world (dnssec_world.py) seen through Convoy's own resolver.

A validating unbound in front of nsd serving three zones signed at test
time: secure.test (signed, its KSK a trust anchor), insecure.test
(unsigned, domain-insecure) and bogus.test (signed, then mx.bogus.test's
records changed so their signatures fail). `convoyctl dns ... --json` with
smtp_dns_support_level = dnssec must see secure, insecure and a failure
(bogus: SERVFAIL) respectively - for A, MX, TLSA and a CNAME chain - and
nothing secure when DNSSEC is off or the resolver is not declared
validating.
"""

import json
import os
import subprocess
import tempfile
import unittest

import world

from dnssec_world import DnssecWorld, Zone, available, tlsa_rdata

BIN = os.environ.get("CONVOY_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin"))
CONVOYCTL = os.path.join(BIN, "convoyctl")
CONVOYD = os.path.join(BIN, "convoyd")

TLSA_EE = "3 1 1 " + "5c" * 32
TLSA_TA = "2 0 2 " + "a7" * 64

ZONES = [
    Zone("secure.test", [
        "@ MX 10 mx",
        "mx A 127.0.0.1",
        "_25._tcp.mx TLSA " + TLSA_EE,
        "_25._tcp.mx TLSA " + TLSA_TA,
        "alias MX 10 mail.alias",
        "mail.alias CNAME real",
        "real A 127.0.0.2",
        "_25._tcp.real TLSA " + TLSA_EE,
        "notlsa A 127.0.0.3",
        "_25._tcp.nodata TXT \"no TLSA here\"",
    ]),
    Zone("insecure.test", [
        "@ MX 10 mx",
        "mx A 127.0.0.1",
        "_25._tcp.mx TLSA " + TLSA_EE,
    ], signed=False),
    Zone("bogus.test", [
        "@ MX 10 mx",
        "mx A 127.0.0.1",
        "_25._tcp.mx TLSA " + TLSA_EE,
        "fine A 127.0.0.4",
    ], tamper=["mx", "_25._tcp.mx"]),
]


@world.needs("unbound", "nsd", "ldns-signzone")
class DnssecWorldTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.world = DnssecWorld(ZONES).start()

    @classmethod
    def tearDownClass(cls):
        cls.world.close()

    def ctl(self, *args, level="dnssec", extra=()):
        cmd = [CONVOYCTL, "-c", "/dev/null", "-o", "dns_servers=" + self.world.server,
               "-o", "dns_timeout=3s", "-o", "dns_tries=2",
               "-o", "smtp_dns_support_level=" + level]
        for e in extra:
            cmd += ["-o", e]
        cmd += ["dns"] + list(args) + ["--json"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        try:
            return p.returncode, json.loads(p.stdout), p.stderr
        except ValueError:
            self.fail("no JSON from %s: %r %r\n%s" % (args, p.stdout, p.stderr,
                                                       self.world.logs()))

    # ---- secure ------------------------------------------------------------

    def test_secure_zone(self):
        rc, a, err = self.ctl("a", "mx.secure.test")
        self.assertEqual(rc, 0, err)
        self.assertTrue(a["dnssec"])
        self.assertTrue(a["secure"], self.world.logs())
        self.assertEqual(a["records"], ["127.0.0.1"])

        rc, mx, err = self.ctl("mx", "secure.test")
        self.assertEqual(rc, 0, err)
        self.assertTrue(mx["secure"])
        self.assertEqual(mx["hosts"][0]["host"], "mx.secure.test")
        self.assertTrue(mx["hosts"][0]["secure"])

        rc, t, err = self.ctl("tlsa", "mx.secure.test")
        self.assertEqual(rc, 0, err)
        self.assertEqual(t["name"], "_25._tcp.mx.secure.test")
        self.assertTrue(t["secure"])
        self.assertEqual(t["tlsa"], "secure")
        recs = sorted((r["usage"], r["selector"], r["mtype"], r["data"]) for r in t["records"])
        self.assertEqual(recs, [(2, 0, 2, "a7" * 64), (3, 1, 1, "5c" * 32)])

    def test_secure_denial(self):
        # NODATA and NXDOMAIN for TLSA, both with validated denial.
        rc, t, _ = self.ctl("tlsa", "notlsa.secure.test")
        self.assertEqual(rc, 1)
        self.assertEqual(t["status"], "nxdomain")
        self.assertEqual(t["tlsa"], "nxdomain")
        self.assertTrue(t["secure"])
        rc, t, _ = self.ctl("tlsa", "nodata.secure.test")
        self.assertEqual(rc, 1)
        self.assertEqual(t["status"], "nodata")
        self.assertEqual(t["tlsa"], "nodata")
        self.assertTrue(t["secure"])
        # A name starting with "_" is looked up as given.
        rc, t, _ = self.ctl("tlsa", "_25._tcp.mx.secure.test")
        self.assertEqual(rc, 0)
        self.assertEqual(t["tlsa"], "secure")
        rc, t, _ = self.ctl("aaaa", "mx.secure.test")
        self.assertEqual(rc, 1)
        self.assertEqual(t["status"], "nodata")
        self.assertTrue(t["secure"])

    def test_secure_cname_chain(self):
        # RFC 7672 2.2.3: the chain is validated with the data; the host
        # keeps its published name and learns the canonical one.
        rc, mx, err = self.ctl("mx", "alias.secure.test")
        self.assertEqual(rc, 0, err)
        h = mx["hosts"][0]
        self.assertEqual(h["host"], "mail.alias.secure.test")
        self.assertTrue(h["cname"])
        self.assertEqual(h["canonical"], "real.secure.test")
        self.assertTrue(h["secure"])
        rc, a, _ = self.ctl("a", "mail.alias.secure.test")
        self.assertEqual(a["cname"], "real.secure.test")
        self.assertTrue(a["secure"])

    # ---- insecure ----------------------------------------------------------

    def test_insecure_zone(self):
        rc, a, err = self.ctl("a", "mx.insecure.test")
        self.assertEqual(rc, 0, err)
        self.assertTrue(a["dnssec"])
        self.assertFalse(a["secure"])
        rc, mx, _ = self.ctl("mx", "insecure.test")
        self.assertFalse(mx["secure"])
        self.assertFalse(mx["hosts"][0]["secure"])
        # TLSA records in an unsigned zone do not count (RFC 7672 2.2).
        rc, t, _ = self.ctl("tlsa", "mx.insecure.test")
        self.assertEqual(rc, 0)
        self.assertEqual(len(t["records"]), 1)
        self.assertEqual(t["tlsa"], "insecure")

    # ---- bogus -------------------------------------------------------------

    def test_bogus_zone(self):
        rc, a, _ = self.ctl("a", "mx.bogus.test")
        self.assertEqual(rc, 1)
        self.assertEqual(a["status"], "tempfail")
        self.assertFalse(a["permanent"])
        self.assertEqual(a["why"], "SERVFAIL")
        rc, t, _ = self.ctl("tlsa", "mx.bogus.test")
        self.assertEqual(rc, 1)
        self.assertEqual(t["tlsa"], "bogus")
        self.assertEqual(t["records"], [])
        rc, mx, _ = self.ctl("mx", "bogus.test")
        self.assertEqual(mx["hosts"][0]["status"], "tempfail")
        # The rest of the zone validates.
        rc, a, _ = self.ctl("a", "fine.bogus.test")
        self.assertEqual(rc, 0)
        self.assertTrue(a["secure"])

    def test_bogus_text_output(self):
        cmd = [CONVOYCTL, "-c", "/dev/null", "-o", "dns_servers=" + self.world.server,
               "-o", "smtp_dns_support_level=dnssec", "dns", "tlsa", "mx.bogus.test"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout.splitlines()[0],
                         "_25._tcp.mx.bogus.test TLSA: tempfail (SERVFAIL): temporary failure, "
                         "DNSSEC bogus; TLSA bogus")

    # ---- when the AD bit is not believed ----------------------------------

    def test_dnssec_off(self):
        rc, a, _ = self.ctl("a", "mx.secure.test", level="enabled")
        self.assertEqual(rc, 0)
        self.assertFalse(a["dnssec"])
        self.assertFalse(a["secure"])
        rc, t, _ = self.ctl("tlsa", "mx.secure.test", level="enabled")
        self.assertEqual(t["tlsa"], "insecure")
        # Without DNSSEC a bogus answer is still a failure (unbound
        # validates), but only a plain one.
        rc, t, _ = self.ctl("tlsa", "mx.bogus.test", level="enabled")
        self.assertEqual(t["tlsa"], "fail")

    def test_resolver_not_declared_validating(self):
        rc, t, err = self.ctl("tlsa", "mx.secure.test",
                              extra=["dns_validating_servers=10.0.0.0/8"])
        self.assertEqual(rc, 0)
        self.assertFalse(t["dnssec"])
        self.assertFalse(t["secure"])
        self.assertEqual(t["tlsa"], "insecure")
        self.assertIn("is not declared validating", err)
        rc, t, err = self.ctl("tlsa", "mx.secure.test",
                              extra=["dns_validating_servers=127.0.0.1"])
        self.assertTrue(t["secure"])


class TlsaRdata(unittest.TestCase):
    def test_tlsa_rdata(self):
        with tempfile.TemporaryDirectory() as d:
            key, pem = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", pem,
                            "-days", "2", "-subj", "/CN=mx.secure.test"],
                           capture_output=True, check=True)
            ee = tlsa_rdata(pem)
            self.assertRegex(ee, r"^3 1 1 [0-9a-f]{64}$")
            self.assertRegex(tlsa_rdata(pem, 2, 0, 2), r"^2 0 2 [0-9a-f]{128}$")
            full = tlsa_rdata(pem, 3, 1, 0).split()[3]
            # An EC P-256 SubjectPublicKeyInfo is 91 octets.
            self.assertEqual(len(full), 182)


class DaneAccepted(unittest.TestCase):
    def test_convoyd_accepts_dane(self):
        # Delivery enforces DANE (test_dane_delivery.py): the levels start.
        for level in ("dane", "dane-only"):
            p = subprocess.run([CONVOYD, "-c", "/dev/null", "-o",
                                "smtp_tls_security_level=" + level, "-o",
                                "smtp_dns_support_level=dnssec", "--check-config"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)


if __name__ == "__main__":
    unittest.main()
