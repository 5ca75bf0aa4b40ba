"""DKIM signing end to end: the real convoyd with a dkim_key_table accepts
mail over SMTP (smtplib), delivers it to an MX host (sink.py, aiosmtpd) found
through a real DNS server (world.py, dnsmasq), and an independent verifier,
Debian's python3-dkim (dkimpy), checks every signature Convoy made on the
delivered copy.

The keys are made by `convoyctl dkim keygen`; its DNS record is what the
verifier is given (dkimpy's dnsfunc) and what dnsmasq serves to
`convoyctl dkim verify`.
"""

import json
import os
import re
import shutil
import smtplib
import stat
import subprocess
import tempfile
import time
import unittest

from convoy import CONVOYCTL, Daemon, free_port
from sink import Sink
from world import DnsServer, MX, A, TXT

try:
    import dkim
except ImportError:  # python3-dkim missing: scripts/install-deps.sh installs it
    dkim = None

MX1 = "127.0.0.11"
HAVE_DNSMASQ = shutil.which(os.environ.get("DNSMASQ", "/usr/sbin/dnsmasq")) is not None


def keygen(domain, selector, path, *args):
    r = subprocess.run([CONVOYCTL, "-c", "/dev/null", "dkim", "keygen", domain, selector,
                        "--out", path] + list(args), capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError("keygen failed: %s" % r.stderr)
    return r.stdout


def parse_record(line):
    """'NAME. IN TXT "a" "b"' -> (NAME without the dot, [strings])."""
    m = re.match(r'^(\S+)\. IN TXT((?: "[^"]*")+)\n$', line)
    assert m, line
    return m.group(1), re.findall(r'"([^"]*)"', m.group(2))


def dkim_fields(content):
    """The DKIM-Signature fields of a message, unfolded, top to bottom."""
    head = content.split(b"\r\n\r\n", 1)[0]
    fields = re.split(rb"\r\n(?![ \t])", head)
    return [f for f in fields if f.lower().startswith(b"dkim-signature:")]


def tag(field, name):
    m = re.search(rb"[;:\s]" + name.encode() + rb"=([^;]*)", field)
    return re.sub(rb"\s", b"", m.group(1)).decode() if m else None


@unittest.skipUnless(HAVE_DNSMASQ, "dnsmasq is not installed")
@unittest.skipUnless(dkim is not None, "python3-dkim is not installed")
class DkimTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-dkim-")
        d = self.tmp.name
        self.keys = os.path.join(d, "keys")
        os.mkdir(self.keys)
        # The records a receiver would find: name -> joined text.
        self.records = {}
        self.dns_records = []
        for domain, sel, alg in (("src.test", "rsa1", "rsa"), ("src.test", "ed1", "ed25519"),
                                 ("bücher.test", "s1", "ed25519"),
                                 ("other.test", "rsa2", "rsa")):
            path = os.path.join(self.keys, "%s.%s.pem" % (sel, alg))
            out = keygen(domain, sel, path, "--algorithm", alg)
            st = os.stat(path)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
            name, strings = parse_record(out)
            for s in strings:
                self.assertLessEqual(len(s), 255)
            self.records[name] = "".join(strings)
            self.dns_records.append(TXT(name, *strings))
        self.assertIn("s1._domainkey.xn--bcher-kva.test", self.records)
        self.assertTrue(self.records["rsa1._domainkey.src.test"].startswith(
            "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"))
        self.assertRegex(self.records["ed1._domainkey.src.test"],
                         r"^v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=$")
        self.table = os.path.join(d, "dkim.keys")
        self.write_table("# signing keys\n"
                         "SRC.test rsa1 keys/rsa1.rsa.pem\n"
                         "src.test  ed1 %s/ed1.ed25519.pem   # Ed25519 too\n"
                         "bücher.test s1 keys/s1.ed25519.pem\n" % self.keys)
        self.port = free_port(MX1)
        self.dns = DnsServer([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1)] +
                             self.dns_records).start()
        self.mx = Sink(MX1, self.port).start()
        self.sub_port = free_port()
        self.daemon = Daemon("myhostname = relay.test\n"
                             "smtpd_listen = 127.0.0.1:%d\n"
                             "dns_servers = %s\n"
                             "smtp_destination_port = %d\n"
                             "smtp_tls_security_level = may\n"
                             "minimal_backoff_time = 1s\n"
                             "maximal_backoff_time = 2s\n"
                             "dkim_key_table = %s\n"
                             % (self.sub_port, self.dns.server, self.port, self.table)).start()

    def tearDown(self):
        try:
            self.daemon.stop()
        finally:
            self.daemon.close()
            self.mx.stop()
            self.dns.close()
            self.tmp.cleanup()

    def write_table(self, text, mode=0o644):
        with open(self.table, "w") as f:
            f.write(text)
        os.chmod(self.table, mode)

    def dnsfunc(self, name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return self.records.get(name.rstrip("."), "").encode()

    def send(self, data, sender="app@src.test"):
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=30) as c:
            c.ehlo("app.test")
            c.sendmail(sender, ["rcpt@dest.test"], data)

    def delivered(self, n):
        self.assertTrue(self.mx.wait_messages(n, timeout=30), self.daemon.log_text())
        return self.mx.messages[n - 1].content

    def assert_signed(self, content, selectors):
        """Convoy's signatures are on top, one per key, and dkimpy verifies
        each of them."""
        fields = dkim_fields(content)
        self.assertGreaterEqual(len(fields), len(selectors), content[:2000])
        for i, sel in enumerate(selectors):
            f = fields[i]
            self.assertEqual(tag(f, "s"), sel, f)
            self.assertEqual(tag(f, "c"), "relaxed/relaxed", f)
            self.assertIsNotNone(tag(f, "t"), f)
            self.assertIsNone(tag(f, "l"), f)
            h = tag(f, "h").lower().split(":")
            self.assertEqual(h.count("from"), 2, f)  # over-signed
            self.assertNotIn("received", h)
            v = dkim.DKIM(content)
            ok = v.verify(idx=i, dnsfunc=self.dnsfunc)
            self.assertTrue(ok, "dkimpy: signature %d (%s) did not verify: %r\n%r"
                            % (i, sel, v.signature_fields, content[:3000]))
        return fields

    # ---- cases ------------------------------------------------------------

    CASES = [
        ("folded", b"From: Joe <app@src.test>\r\nTo: rcpt@dest.test\r\n"
                   b"Subject: a subject\r\n  folded over\r\n\tthree lines\r\n"
                   b"References: <a@x>\r\n <b@x>\r\n\r\nbody\r\n"),
        ("mixed-case", b"fRoM: app@src.test\r\nTO: rcpt@dest.test\r\nsUbJeCt: case\r\n"
                       b"mime-VERSION: 1.0\r\n\r\nbody\r\n"),
        ("whitespace", b"From:\tapp@src.test  \r\nTo: rcpt@dest.test\t\r\n"
                       b"Subject:   lots \t of   space   \r\n\r\n"
                       b"  leading\r\ntrailing  \t\r\nin   the\t\tmiddle\r\n \t\r\n"),
        ("empty-body", b"From: app@src.test\r\nTo: rcpt@dest.test\r\nSubject: empty\r\n\r\n"),
        ("trailing-empty", b"From: app@src.test\r\nSubject: trailing\r\n\r\nx\r\n\r\n\r\n\r\n"),
        ("dots", b"From: app@src.test\r\nSubject: dots\r\n\r\n.one dot\r\n..two\r\n.\r\n"
                 b"...\r\nend\r\n"),
        ("8bit", b"From: app@src.test\r\nSubject: 8bit\r\nContent-Type: text/plain; "
                 b"charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                 b"\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xff\xfe raw\r\n"),
        ("long-lines", b"From: app@src.test\r\nSubject: long\r\nX-Long: " + b"h" * 900 +
                       b"\r\n\r\n" + b"x" * 990 + b"\r\n" + b"y " * 490 + b"\r\n"),
        ("repeated", b"From: app@src.test\r\nTo: a@dest.test\r\nTo: b@dest.test\r\n"
                     b"Cc: c@dest.test\r\nSubject: first\r\nSubject: second\r\n"
                     b"Comments: not signed\r\nReply-To: r@src.test\r\n\r\nbody\r\n"),
        ("display-name", b'From: "Doe, Jane (Ops)" (the boss) <app@src.test> (home)\r\n'
                         b"Subject: display\r\n\r\nbody\r\n"),
        ("upper-domain", b"From: APP@SRC.TEST\r\nSubject: upper\r\n\r\nbody\r\n"),
    ]

    def test_signatures_verify_with_dkimpy(self):
        for i, (name, data) in enumerate(self.CASES, 1):
            with self.subTest(case=name):
                self.send(data)
                got = self.delivered(i)
                self.assertTrue(got.endswith(data.split(b"\r\n\r\n", 1)[1]) or
                                name == "empty-body", got[-300:])
                fields = self.assert_signed(got, ["rsa1", "ed1"])
                self.assertEqual(tag(fields[0], "a"), "rsa-sha256")
                self.assertEqual(tag(fields[1], "a"), "ed25519-sha256")
                self.assertEqual(tag(fields[0], "d"), "src.test")

    def test_large_streamed_bodies_verify(self):
        # Bodies far over the size a session holds in memory are stored as
        # they arrive and their body hash computed piece by piece: with
        # trailing white space, empty lines at the end (relaxed drops them)
        # and lines that straddle every chunk boundary, the signatures must
        # still verify and the copy must arrive byte for byte.
        line = b"relaxed  \t spaces\t \r\n" + b"x" * 700 + b" \r\n\r\n"
        bodies = [
            ("plain-4mb", line * (4 * 1024 * 1024 // len(line)) + b"end\r\n\r\n\r\n"),
            ("dots-3mb", (b".leading dot\r\n..two\r\n" + b"y" * 500 + b"\r\n") *
             (3 * 1024 * 1024 // 530) + b"\r\n \t\r\n"),
        ]
        for i, (name, body) in enumerate(bodies, 1):
            with self.subTest(case=name):
                head = (b"From: app@src.test\r\nTo: rcpt@dest.test\r\nSubject: %s\r\n\r\n"
                        % name.encode())
                self.send(head + body)
                got = self.delivered(i)
                self.assertTrue(got.endswith(head + body), got[-300:])
                self.assert_signed(got, ["rsa1", "ed1"])
        self.assertIn("DKIM-Signature field added", self.daemon.log_text())

    def test_added_date_and_message_id_are_signed(self):
        self.send(b"From: app@src.test\r\nSubject: bare\r\n\r\nbody\r\n")
        got = self.delivered(1)
        fields = self.assert_signed(got, ["rsa1", "ed1"])
        h = tag(fields[0], "h").lower().split(":")
        self.assertIn("date", h)
        self.assertIn("message-id", h)
        self.daemon.wait_log("DKIM-Signature field added (d=src.test, s=ed1, a=ed25519-sha256)")

    def test_foreign_signature_kept(self):
        foreign = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=other.test;\r\n"
                   b"\ts=rsa2; t=1700000000; h=From:Subject;\r\n"
                   b"\tbh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;\r\n\tb=AAAA\r\n")
        data = foreign + b"From: app@src.test\r\nSubject: foreign\r\n\r\nbody\r\n"
        self.send(data)
        got = self.delivered(1)
        fields = self.assert_signed(got, ["rsa1", "ed1"])
        self.assertEqual(len(fields), 3)
        self.assertIn(foreign, got)
        # The foreign signature is untouched, and still does not verify.
        try:
            ok = dkim.DKIM(got).verify(idx=2, dnsfunc=self.dnsfunc)
        except dkim.ValidationError:
            ok = False
        self.assertFalse(ok)

    def test_no_key_for_domain_is_unsigned(self):
        for i, frm in enumerate((b"app@nokey.test", b"app@sub.src.test",
                                 b"undisclosed-recipients:;"), 1):
            self.send(b"From: " + frm + b"\r\nSubject: nokey\r\n\r\nbody\r\n")
            got = self.delivered(i)
            self.assertEqual(dkim_fields(got), [], got[:500])
        # Two From fields: not signed either (RFC 6376 5.4).
        self.send(b"From: a@src.test\r\nFrom: b@src.test\r\nSubject: two\r\n\r\nbody\r\n")
        self.assertEqual(dkim_fields(self.delivered(4)), [])

    def test_idn_domain(self):
        data = "From: Ann <ann@bücher.test>\r\nSubject: idn\r\n\r\nbody\r\n".encode()
        self.send(data)
        got = self.delivered(1)
        fields = self.assert_signed(got, ["s1"])
        self.assertEqual(tag(fields[0], "d"), "xn--bcher-kva.test")

    def test_queued_copy_is_signed_and_ctl_verify(self):
        self.send(b"From: app@src.test\r\nTo: rcpt@dest.test\r\nSubject: ctl\r\n\r\nHello.\r\n")
        got = self.delivered(1)
        path = os.path.join(self.tmp.name, "msg.eml")
        with open(path, "wb") as f:
            f.write(got)
        r = self.daemon.ctl("dkim", "verify", path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("d=src.test s=rsa1 a=rsa-sha256: pass (signature verified)", r.stdout)
        self.assertIn("d=src.test s=ed1 a=ed25519-sha256: pass (signature verified)", r.stdout)
        # From standard input, LF line ends, as JSON.
        r = self.daemon.ctl("dkim", "verify", "-", "--json",
                            input=got.decode().replace("\r\n", "\n"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual([s["result"] for s in out["signatures"]], ["pass", "pass"])
        self.assertEqual(out["signatures"][1]["algorithm"], "ed25519-sha256")
        # A changed body, and a selector that has no record.
        with open(path, "wb") as f:
            f.write(got.replace(b"Hello.", b"Hullo."))
        r = self.daemon.ctl("dkim", "verify", path)
        self.assertEqual(r.returncode, 1)
        self.assertIn("s=rsa1 a=rsa-sha256: fail (body hash did not verify)", r.stdout)
        with open(path, "wb") as f:
            f.write(got.replace(b"s=ed1", b"s=nokey", 1))
        r = self.daemon.ctl("dkim", "verify", path)
        self.assertEqual(r.returncode, 1)
        self.assertIn("s=nokey a=ed25519-sha256: permerror (no key record at "
                      "nokey._domainkey.src.test)", r.stdout)

    def test_ctl_verify_signatures_made_by_dkimpy(self):
        # The other direction: signatures made by an independent signer, in
        # both canonicalizations, with l=, verified by `convoyctl dkim verify`
        # against the records in DNS.
        import base64
        with open(os.path.join(self.keys, "rsa1.rsa.pem"), "rb") as f:
            rsa_pem = f.read()
        with open(os.path.join(self.keys, "ed1.ed25519.pem"), "rb") as f:
            der = base64.b64decode(b"".join(f.read().split(b"\n")[1:-2]))
        ed_seed = base64.b64encode(der[-32:])
        msg = (b"From: App <app@src.test>\r\nTo: rcpt@dest.test\r\nSubject:  spaced \t out\r\n"
               b"Date: Sat, 05 Dec 2026 09:00:00 +0000\r\n\r\nline  one \r\n\r\nline two\r\n\r\n")
        path = os.path.join(self.tmp.name, "dkimpy.eml")
        for canon in (b"simple/simple", b"relaxed/simple", b"simple/relaxed", b"relaxed/relaxed"):
            hc, bc = canon.split(b"/")
            for sel, key, alg in ((b"rsa1", rsa_pem, b"rsa-sha256"), (b"ed1", ed_seed, b"ed25519-sha256")):
                for length in (False, True):
                    with self.subTest(canon=canon, alg=alg, length=length):
                        sig = dkim.sign(msg, sel, b"src.test", key, canonicalize=(hc, bc),
                                        signature_algorithm=alg, length=length,
                                        include_headers=[b"from", b"to", b"subject", b"date"])
                        with open(path, "wb") as f:
                            f.write(sig + msg + (b"appended\r\n" if length else b""))
                        r = self.daemon.ctl("dkim", "verify", path)
                        self.assertEqual(r.returncode, 0, sig.decode() + r.stdout + r.stderr)
                        self.assertIn(": pass (signature verified)", r.stdout)

    def test_reload_all_or_nothing(self):
        with open(self.table) as f:
            good = f.read()
        # A bad line: the reload is refused and names file:line; the old keys
        # stay in force.
        self.write_table(good + "src.test\n")
        r = self.daemon.ctl("reload")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("%s:5: expected" % self.table, r.stdout + r.stderr)
        # A key file others can read: refused.
        os.chmod(os.path.join(self.keys, "ed1.ed25519.pem"), 0o644)
        self.write_table(good)
        r = self.daemon.ctl("reload")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("readable or writable by others than its owner", r.stdout + r.stderr)
        self.send(b"From: app@src.test\r\nSubject: old keys\r\n\r\nbody\r\n")
        self.assert_signed(self.delivered(1), ["rsa1", "ed1"])
        # A good table with a new key for the domain: in force at once.
        os.chmod(os.path.join(self.keys, "ed1.ed25519.pem"), 0o600)
        path = os.path.join(self.keys, "ed2.pem")
        name, strings = parse_record(keygen("src.test", "ed2", path, "--algorithm", "ed25519"))
        self.records[name] = "".join(strings)
        self.write_table("src.test ed2 %s\n" % path)
        r = self.daemon.ctl("reload")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.send(b"From: app@src.test\r\nSubject: new keys\r\n\r\nbody\r\n")
        got = self.delivered(2)
        self.assert_signed(got, ["ed2"])
        self.assertEqual(len(dkim_fields(got)), 1)

    def test_many_sessions_rsa(self):
        # Signing on the thread pool with several sessions at once: every
        # message gets its answer and its signatures.
        import threading
        errors = []

        def worker(k):
            try:
                for j in range(5):
                    self.send(b"From: app@src.test\r\nSubject: load %d %d\r\n\r\nbody\r\n" % (k, j))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errors, [])
        self.assertTrue(self.mx.wait_messages(40, timeout=60), self.daemon.log_text())
        for m in self.mx.messages:
            self.assert_signed(m.content, ["rsa1", "ed1"])


if __name__ == "__main__":
    unittest.main()
