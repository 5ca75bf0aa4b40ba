"""convoyctl dns against a real DNS server (dnsmasq on loopback).

Each case is data: the records served, the command, the expected first line
(the classification), the records printed and the exit code. The resolver
is the daemon's (dns/), configured through convoyctl -o dns_servers=...,
exactly as convoyd maps the same parameters.
"""

import json
import os
import subprocess
import time
import unittest

from world import (A, AAAA, CNAME, MX, NULL_MX, TXT, DnsServer, SilentDnsServer)

BIN = os.environ.get("CONVOY_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin"))
CONVOYCTL = os.path.join(BIN, "convoyctl")

RECORDS = [
    # MX ordering: preference first; equal preferences in random order.
    MX("example.test", 20, "mx2.example.test"),
    MX("example.test", 5, "mx0.example.test"),
    MX("example.test", 10, "mx1.example.test"),
    MX("example.test", 30, "mxa.example.test"),
    MX("example.test", 30, "mxb.example.test"),
    A("mx0.example.test", "127.0.0.10"),
    A("mx1.example.test", "127.0.0.11"),
    AAAA("mx1.example.test", "::1"),
    AAAA("mx2.example.test", "::2"),
    A("mxa.example.test", "127.0.0.12"),
    A("mxb.example.test", "127.0.0.13"),
    # No MX: implicit MX (RFC 5321 5.1).
    A("implicit.test", "127.0.0.20"),
    # No MX and no address: nothing to deliver to.
    TXT("noaddr.test", "just text"),
    # RFC 7505 null MX.
    NULL_MX("null.test"),
    # An MX whose hosts do not exist.
    MX("dangling.test", 10, "gone.dangling.test"),
    # An MX target that is an alias: followed, the published name kept.
    MX("alias.test", 10, "mail.alias.test"),
    CNAME("mail.alias.test", "real.alias.test"),
    A("real.alias.test", "127.0.0.30"),
    MX("literal.test", 10, "127.0.0.9"),
    # An answer larger than 512 octets: truncated over UDP, fetched over TCP.
    TXT("big.test", *[("%d" % i) * 190 for i in range(1, 4)]),
    # TXT: one record of two strings, and a second record.
    TXT("_mta-sts.example.test", "v=STSv1; ", "id=20260101"),
    TXT("_mta-sts.example.test", "unrelated"),
]


def ctl(server, *args, timeout="1s", tries=1):
    cmd = [CONVOYCTL, "-c", "/dev/null", "-o", "dns_servers=" + server,
           "-o", "dns_timeout=" + timeout, "-o", "dns_tries=%d" % tries, "dns"] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout.splitlines(), p.stderr


class DnsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = DnsServer(RECORDS, servfail=["broken.example"], ipv6=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.dns.close()

    def run_ctl(self, *args, **kw):
        return ctl(self.dns.server, *args, **kw)

    def test_mx_ordering(self):
        rc, out, err = self.run_ctl("mx", "example.test")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out[0], "example.test MX: ok (ok)")
        self.assertEqual(out[1], "5 mx0.example.test [127.0.0.10]")
        self.assertEqual(out[2], "10 mx1.example.test [127.0.0.11, ::1]")
        self.assertEqual(out[3], "20 mx2.example.test [::2]")
        self.assertEqual(sorted(out[4:]), ["30 mxa.example.test [127.0.0.12]",
                                           "30 mxb.example.test [127.0.0.13]"])

    def test_mx_equal_preferences_shuffled(self):
        firsts = set()
        for _ in range(30):
            rc, out, _ = self.run_ctl("mx", "example.test")
            self.assertEqual(rc, 0)
            firsts.add(out[4].split()[1])
            if len(firsts) == 2:
                break
        self.assertEqual(firsts, {"mxa.example.test", "mxb.example.test"})

    def test_implicit_mx(self):
        rc, out, err = self.run_ctl("mx", "implicit.test")
        self.assertEqual(rc, 0, err)
        self.assertTrue(out[0].startswith("implicit.test MX: implicit-mx ("), out)
        self.assertEqual(out[1:], ["0 implicit.test [127.0.0.20]"])

    def test_implicit_mx_without_address(self):
        rc, out, _ = self.run_ctl("mx", "noaddr.test")
        self.assertEqual(rc, 1)
        self.assertTrue(out[0].startswith("noaddr.test MX: nodata ("), out)
        self.assertIn("permanent failure", out[0])

    def test_null_mx(self):
        rc, out, _ = self.run_ctl("mx", "null.test")
        self.assertEqual(rc, 1)
        self.assertEqual(out, ["null.test MX: null-mx (null MX (RFC 7505)): "
                               "permanent failure, 556 5.1.10"])

    def test_nxdomain_is_permanent(self):
        rc, out, _ = self.run_ctl("mx", "nowhere.test")
        self.assertEqual(rc, 1)
        self.assertEqual(out, ["nowhere.test MX: nxdomain (NXDOMAIN): permanent failure"])

    def test_mx_hosts_without_addresses(self):
        rc, out, _ = self.run_ctl("mx", "dangling.test")
        self.assertEqual(rc, 1)
        self.assertTrue(out[0].startswith("dangling.test MX: nodata ("), out)
        self.assertEqual(out[1], "10 gone.dangling.test [] nxdomain (NXDOMAIN)")

    def test_mx_target_cname(self):
        rc, out, err = self.run_ctl("mx", "alias.test")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out[1], "10 mail.alias.test [127.0.0.30] (CNAME)")

    def test_servfail_is_temporary(self):
        rc, out, _ = self.run_ctl("mx", "broken.example")
        self.assertEqual(rc, 1)
        self.assertTrue(out[0].startswith("broken.example MX: tempfail ("), out)
        self.assertTrue(out[0].endswith(": temporary failure"), out)
        rc, out, _ = self.run_ctl("a", "host.broken.example")
        self.assertEqual(rc, 1)
        self.assertIn("tempfail", out[0])

    def test_refused_is_temporary(self):
        rc, out, _ = self.run_ctl("a", "not-served.example")
        self.assertEqual(rc, 1)
        self.assertIn(": tempfail (", out[0])

    def test_txt_strings_joined_records_separate(self):
        rc, out, err = self.run_ctl("txt", "_mta-sts.example.test")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out[0], "_mta-sts.example.test TXT: ok (ok)")
        self.assertEqual(sorted(out[1:]), ["unrelated", "v=STSv1; id=20260101"])

    def test_large_answer_over_tcp(self):
        rc, out, err = self.run_ctl("txt", "big.test")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out[1:], ["".join(("%d" % i) * 190 for i in range(1, 4))])

    def test_a_and_aaaa(self):
        rc, out, _ = self.run_ctl("aaaa", "mx1.example.test")
        self.assertEqual((rc, out), (0, ["mx1.example.test AAAA: ok (ok)", "::1"]))
        rc, out, _ = self.run_ctl("a", "mx1.example.test")
        self.assertEqual((rc, out), (0, ["mx1.example.test A: ok (ok)", "127.0.0.11"]))
        rc, out, _ = self.run_ctl("aaaa", "mx0.example.test")
        self.assertEqual(rc, 1)
        self.assertTrue(out[0].startswith("mx0.example.test AAAA: nodata ("), out)

    def test_json(self):
        rc, out, err = self.run_ctl("mx", "example.test", "--json")
        self.assertEqual(rc, 0, err)
        doc = json.loads("\n".join(out))
        self.assertEqual(doc["status"], "ok")
        self.assertEqual(doc["ttl"], 60)
        self.assertEqual([h["pref"] for h in doc["hosts"]], [5, 10, 20, 30, 30])
        self.assertEqual(doc["hosts"][1]["addresses"], ["127.0.0.11", "::1"])
        rc, out, _ = self.run_ctl("txt", "_mta-sts.example.test", "--json")
        doc = json.loads("\n".join(out))
        self.assertIn("v=STSv1; id=20260101", doc["records"])

    def test_usage(self):
        for args in (["mx"], ["srv", "example.test"], ["mx", "a", "b"]):
            rc, _, err = self.run_ctl(*args)
            self.assertEqual(rc, 2, args)
            self.assertIn("usage", err)

    def test_bad_server_setting(self):
        # A host name as resolver would need DNS to find DNS: refused.
        rc, out, err = ctl("resolver.example", "mx", "example.test")
        self.assertEqual(rc, 1)
        self.assertEqual(out, [])
        self.assertIn("resolver.example", err)

    def test_ipv6_server_and_failover(self):
        rc, out, err = ctl(self.dns.server6, "a", "mx1.example.test")
        self.assertEqual((rc, out), (0, ["mx1.example.test A: ok (ok)", "127.0.0.11"]), err)
        # The first resolver never answers; the second one does.
        with SilentDnsServer() as silent:
            rc, out, err = ctl("%s, %s" % (silent.server, self.dns.server6), "mx",
                               "implicit.test", tries=1)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out[1:], ["0 implicit.test [127.0.0.20]"])
        self.assertGreaterEqual(silent.queries, 1)

    def test_mx_target_ip_literal(self):
        # RFC 5321 5.1: MX data must be a domain name; an address is unusable.
        rc, out, _ = self.run_ctl("mx", "literal.test")
        self.assertEqual(rc, 1)
        self.assertTrue(out[0].startswith("literal.test MX: nodata ("), out)
        self.assertEqual(out[1], "10 127.0.0.9 [] invalid (MX target is an IP address literal)")


class SilentServerTest(unittest.TestCase):
    def test_timeout_is_temporary(self):
        with SilentDnsServer() as silent:
            t0 = time.monotonic()
            rc, out, _ = ctl(silent.server, "mx", "example.test", timeout="1s", tries=2)
            elapsed = time.monotonic() - t0
        self.assertEqual(rc, 1)
        self.assertEqual(out, ["example.test MX: tempfail (timeout): temporary failure"])
        # Two tries of 1 s each (the wait does not double).
        self.assertGreaterEqual(elapsed, 1.9)
        self.assertLess(elapsed, 6)
        self.assertEqual(silent.queries, 2)


if __name__ == "__main__":
    unittest.main()
