"""test_pki.py - the test PKI helper makes what it promises (checked with
openssl verify), so the integration tests that rely on it can trust it."""

import os
import subprocess
import tempfile
import unittest

from pki import CA, self_signed


def verify(ca, cert, untrusted=None, name=None):
    cmd = ["openssl", "verify", "-CAfile", ca]
    if untrusted:
        cmd += ["-untrusted", untrusted]
    if name:
        cmd += ["-verify_hostname", name]
    cmd.append(cert)
    return subprocess.run(cmd, capture_output=True, text=True).returncode == 0


class PkiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        cls.ca = CA(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_good_and_wildcard(self):
        good = self.ca.issue("good", ["mx.example.com", "mta-sts.example.com"])
        self.assertTrue(verify(self.ca.cert, good.cert, name="mta-sts.example.com"))
        self.assertFalse(verify(self.ca.cert, good.cert, name="other.example.com"))
        wild = self.ca.issue("wild", ["*.example.net"])
        self.assertTrue(verify(self.ca.cert, wild.cert, name="mx.example.net"))
        self.assertFalse(verify(self.ca.cert, wild.cert, name="a.b.example.net"))

    def test_dates(self):
        old = self.ca.issue("old", ["mx.example.com"], expired=True)
        soon = self.ca.issue("soon", ["mx.example.com"], not_yet_valid=True)
        self.assertFalse(verify(self.ca.cert, old.cert))
        self.assertFalse(verify(self.ca.cert, soon.cert))

    def test_self_signed(self):
        s = self_signed(self.dir, "self", ["mx.example.com"])
        self.assertFalse(verify(self.ca.cert, s.cert))
        self.assertTrue(verify(s.cert, s.cert, name="mx.example.com"))
        old = self_signed(self.dir, "selfold", ["mx.example.com"], expired=True)
        self.assertFalse(verify(old.cert, old.cert))

    def test_intermediate_chain(self):
        sub = self.ca.intermediate("sub")
        leaf = sub.issue("leaf", ["mx.example.org"])
        self.assertFalse(verify(self.ca.cert, leaf.cert))
        self.assertTrue(verify(self.ca.cert, leaf.cert, untrusted=sub.cert, name="mx.example.org"))
        with open(leaf.chain) as f:
            self.assertEqual(f.read().count("BEGIN CERTIFICATE"), 2)

    def test_cn_only_and_rsa(self):
        cn = self.ca.issue("cn", [], cn="mx.example.com")
        self.assertTrue(verify(self.ca.cert, cn.cert))
        rsa = self.ca.issue("rsa", ["mx.example.com"], key_type="rsa:2048")
        self.assertTrue(verify(self.ca.cert, rsa.cert, name="mx.example.com"))
        self.assertTrue(os.path.exists(rsa.key))


if __name__ == "__main__":
    unittest.main()
