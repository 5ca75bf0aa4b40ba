"""`convoyctl tls verify CERTFILE --host NAME [--CAfile FILE] [--json]` on
certificates made by a throwaway PKI (openssl), each case as data: the
certificate, the host, and what an MTA-STS delivery would say of it
(issue 13 item 7)."""

import json
import os
import subprocess
import tempfile
import unittest

import convoy
import pki

# (leaf name, DNS names, issue kwargs, host, chain_valid, name_match, expired,
#  substring of error or None)
CASES = [
    ("good", ["mx.example.com"], {}, "mx.example.com", True, True, False, None),
    ("good", ["mx.example.com"], {}, "MX.Example.COM.", True, True, False, None),
    ("wrong", ["other.example.net"], {}, "mx.example.com", True, False, False,
     "other.example.net: another name"),
    ("wild", ["*.example.com"], {}, "mx.example.com", True, True, False, None),
    ("wild", ["*.example.com"], {}, "a.b.example.com", True, False, False,
     "one label only"),
    ("wild", ["*.example.com"], {}, "example.com", True, False, False,
     "exactly one label in front"),
    ("partial", ["f*.example.com"], {}, "foo.example.com", True, False, False,
     "whole leftmost label"),
    ("tld", ["*.com"], {}, "example.com", True, False, False, "top-level domain"),
    ("two", ["a.example.com", "mx.example.com"], {}, "mx.example.com", True, True, False, None),
    ("cn", [], {"cn": "mx.example.com"}, "mx.example.com", True, True, False, None),
    ("old", ["mx.example.com"], {"expired": True}, "mx.example.com", False, True, True,
     "expired"),
    ("soon", ["mx.example.com"], {"not_yet_valid": True}, "mx.example.com", False, True, False,
     "not yet valid"),
    # IDNs: certificates carry A-labels, and so must the host.
    ("idn", ["xn--bcher-kva.example"], {}, "XN--BCHER-KVA.example", True, True, False, None),
    ("idnwild", ["*.xn--bcher-kva.example"], {}, "mx.xn--bcher-kva.example", True, True, False,
     None),
]


class TlsVerify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="convoy-tlsverify-")
        d = cls.tmp.name
        cls.ca = pki.CA(d)
        cls.leaves = {}
        for name, dns, kw, *_ in CASES:
            if name not in cls.leaves:
                cls.leaves[name] = cls.ca.issue(name, dns, **kw)
        cls.sub = cls.ca.intermediate("sub")
        cls.subleaf = cls.sub.issue("subleaf", ["mx.example.org"])
        cls.selfie = pki.self_signed(d, "self", ["mx.example.com"])
        cls.conf = os.path.join(d, "convoy.conf")
        with open(cls.conf, "w") as f:
            f.write("queue_directory = %s\n" % d)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_ctl(self, *args):
        return subprocess.run(convoy.CTL_WRAPPER + [convoy.CONVOYCTL, "-c", self.conf, "tls",
                                                    "verify"] + list(args),
                              capture_output=True, text=True, timeout=60)

    def verify(self, cert, host, ca=True):
        args = [cert, "--host", host, "--json"]
        if ca:
            args += ["--CAfile", self.ca.cert]
        r = self.run_ctl(*args)
        try:
            out = json.loads(r.stdout)
        except ValueError:
            raise AssertionError("not JSON (rc %d): %r %r" % (r.returncode, r.stdout, r.stderr))
        self.assertEqual(list(out), ["chain_valid", "name_match", "names", "expired", "error"])
        return r.returncode, out

    def test_cases(self):
        for name, dns, kw, host, chain, match, expired, err in CASES:
            with self.subTest(cert=name, host=host):
                rc, out = self.verify(self.leaves[name].cert, host)
                self.assertEqual(out["chain_valid"], chain, out)
                self.assertEqual(out["name_match"], match, out)
                self.assertEqual(out["expired"], expired, out)
                # (wolfSSL lists the SANs in its own order.)
                self.assertEqual(sorted(out["names"]), sorted(dns or [kw["cn"]]))
                self.assertEqual(rc, 0 if chain and match else 1, out)
                if err is None:
                    self.assertIsNone(out["error"])
                else:
                    self.assertIn(err, out["error"])

    def test_chain_in_file(self):
        # The file holds the leaf and its intermediate: verified.
        rc, out = self.verify(self.subleaf.chain, "mx.example.org")
        self.assertEqual((rc, out["chain_valid"], out["name_match"]), (0, True, True), out)
        # The leaf alone: the intermediate is missing.
        rc, out = self.verify(self.subleaf.cert, "mx.example.org")
        self.assertEqual((rc, out["chain_valid"], out["name_match"]), (1, False, True), out)
        self.assertIn("trusted root", out["error"])

    def test_self_signed(self):
        rc, out = self.verify(self.selfie.cert, "mx.example.com")
        self.assertEqual((rc, out["chain_valid"], out["name_match"]), (1, False, True), out)
        self.assertIn("self-signed", out["error"])

    def test_system_store_by_default(self):
        # Without --CAfile the test CA is not trusted, as in delivery.
        rc, out = self.verify(self.leaves["good"].cert, "mx.example.com", ca=False)
        self.assertEqual((rc, out["chain_valid"], out["name_match"]), (1, False, True), out)

    def test_text_output(self):
        r = self.run_ctl(self.leaves["wild"].cert, "--host", "a.b.example.com", "--CAfile",
                         self.ca.cert)
        self.assertEqual(r.returncode, 1)
        self.assertIn("chain: valid", r.stdout)
        self.assertIn("name: does not match", r.stdout)
        self.assertIn("*.example.com: a wildcard matches one label only", r.stdout)

    def test_usage_and_errors(self):
        self.assertEqual(self.run_ctl(self.leaves["good"].cert).returncode, 2)  # no --host
        self.assertEqual(self.run_ctl("--host", "mx.example.com").returncode, 2)  # no file
        r = self.run_ctl(self.leaves["good"].cert, "--host", "b\u00fccher.example")
        self.assertEqual(r.returncode, 2)
        self.assertIn("A-label", r.stderr)
        r = self.run_ctl(os.path.join(self.tmp.name, "missing.pem"), "--host", "mx.example.com",
                         "--json")
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing.pem", json.loads(r.stdout)["error"])


if __name__ == "__main__":
    unittest.main()
