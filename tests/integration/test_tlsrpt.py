"""convoyctl tlsrpt record|show|list against the real convoyctl.

record: each case is an RRset (arguments, or lines on standard input with
"-") and the expected exit code, rua list and error.

show and list: a store in a fresh queue_directory is filled by tlsrpt_fill
(a small program that makes the same tlsrpt_record_session() call the
delivery engine makes); the report `convoyctl tlsrpt show --json` prints
must pass the strict RFC 8460 checker (tlsrpt_check.py, with Convoy's own
rules) and carry exactly the recorded counts, field by field. A writer
filling the store while show runs shows that readers need no daemon and
no lock.
"""

import datetime
import email
import email.policy
import gzip
import json
import re
import os
import subprocess
import tempfile
import time
import unittest

import tlsrpt_check
from convoy import CONVOYCTL, CTL_WRAPPER

BUILD = os.environ.get("CONVOY_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
FILL = os.path.join(BUILD, "tests", "integration", "tlsrpt_fill")

DAY = "2016-04-01"
T = 1459468800 + 12 * 3600  # 2016-04-01 12:00:00 UTC


def ctl(queue_dir, *args, input=None, extra=()):
    return subprocess.run(CTL_WRAPPER + [CONVOYCTL, "-o", "queue_directory=%s" % queue_dir]
                          + list(extra) + list(args),
                          capture_output=True, text=True, input=input, timeout=60)


# (name, args, stdin, exit code, rua, error substring or None)
RECORD_CASES = [
    ("RFC 8460 appendix A mailto", ["v=TLSRPTv1;rua=mailto:reports@example.com"], None, 0,
     ["mailto:reports@example.com"], None),
    ("mailto and https", ["v=TLSRPTv1; rua=mailto:a@example.com,https://r.example.com/v1"], None,
     0, ["mailto:a@example.com", "https://r.example.com/v1"], None),
    ("other TXT records discarded", ["v=spf1 -all", "v=TLSRPTv1; rua=https://r.example.com/",
                                     "google-site-verification=x"], None, 0,
     ["https://r.example.com/"], None),
    ("unknown extension ignored", ["v=TLSRPTv1; rua=mailto:a@example.com; x-ext=1"], None, 0,
     ["mailto:a@example.com"], None),
    ("other schemes ignored", ["v=TLSRPTv1; rua=ftp://x.example/,mailto:a@example.com"], None, 0,
     ["mailto:a@example.com"], None),
    ("only other schemes", ["v=TLSRPTv1; rua=http://r.example.com/"], None, 1, [],
     "no mailto: or https: URI"),
    ("two records", ["v=TLSRPTv1; rua=mailto:a@example.com",
                     "v=TLSRPTv1; rua=mailto:b@example.com"], None, 1, [], "exactly one"),
    ("no TLS-RPT record", ["v=spf1 -all"], None, 1, [], "no v=TLSRPTv1 record"),
    ("empty RRset", [], None, 1, [], "no v=TLSRPTv1 record"),
    ("rua missing", ["v=TLSRPTv1; x=1"], None, 1, [], "rua missing"),
    ("DMARC size suffix", ["v=TLSRPTv1; rua=mailto:a@example.com!10m"], None, 1, [],
     "invalid character"),
    ("stdin, one record per line", ["-"],
     "v=spf1 -all\nv=TLSRPTv1; rua=mailto:a@example.com\n", 0, ["mailto:a@example.com"], None),
    ("stdin, CRLF lines", ["-"], "v=TLSRPTv1; rua=mailto:a@example.com\r\n", 0,
     ["mailto:a@example.com"], None),
    ("stdin, two TLS-RPT lines", ["-"],
     "v=TLSRPTv1; rua=mailto:a@example.com\nv=TLSRPTv1; rua=mailto:a@example.com\n", 1, [],
     "exactly one"),
    ("stdin and an argument", ["v=TLSRPTv1; rua=mailto:a@example.com", "-"], "v=spf1 -all\n", 0,
     ["mailto:a@example.com"], None),
]


class Record(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-tlsrpt-")
        self.q = os.path.join(self.tmp.name, "queue")

    def tearDown(self):
        self.tmp.cleanup()

    def test_cases(self):
        for name, args, stdin, code, rua, error in RECORD_CASES:
            with self.subTest(name):
                r = ctl(self.q, "tlsrpt", "record", *args, "--json", input=stdin or "")
                self.assertEqual(r.returncode, code, "%s: %s %s" % (name, r.stdout, r.stderr))
                out = json.loads(r.stdout)
                self.assertEqual(sorted(out), ["error", "rua", "valid"])
                self.assertIs(out["valid"], code == 0)
                self.assertEqual(out["rua"], rua)
                if error is None:
                    self.assertIsNone(out["error"])
                else:
                    self.assertIn(error, out["error"])
                # The same verdict without --json.
                t = ctl(self.q, "tlsrpt", "record", *args, input=stdin or "")
                self.assertEqual(t.returncode, code)
                for u in rua:
                    self.assertIn("rua: %s" % u, t.stdout)

    def test_usage(self):
        self.assertEqual(ctl(self.q, "tlsrpt").returncode, 2)
        self.assertEqual(ctl(self.q, "tlsrpt", "frobnicate").returncode, 2)
        self.assertEqual(ctl(self.q, "tlsrpt", "record", "--bogus").returncode, 2)
        self.assertEqual(ctl(self.q, "tlsrpt", "show").returncode, 2)
        self.assertEqual(ctl(self.q, "tlsrpt", "show", "example.com", "--date", "2016-02-30")
                         .returncode, 2)
        self.assertEqual(ctl(self.q, "tlsrpt", "list", "--date", "yesterday-ish").returncode, 2)


SESSIONS = """\
# company-y.example under an MTA-STS policy in testing mode
domain=company-y.example time={T} result=success mode=testing pattern=*.mail.company-y.example max_age=86400 mx=mx1.mail.company-y.example rip=203.0.113.55 count=7
domain=company-y.example time={T} result=certificate-expired mode=testing pattern=*.mail.company-y.example max_age=86400 mx=mx1.mail.company-y.example rip=203.0.113.55 smi=192.0.2.10 count=3
domain=company-y.example time={T} result=starttls-not-supported mode=testing pattern=*.mail.company-y.example max_age=86400 mx=mx2.mail.company-y.example rip=203.0.113.56 smi=192.0.2.10 helo=mx2.example code=STARTTLS_not_offered
domain=company-y.example time={T} result=certificate-host-mismatch mode=testing pattern=*.mail.company-y.example max_age=86400 mx=mx2.mail.company-y.example rip=2001:db8::56 smi=2001:db8::10 id=s1
domain=company-y.example time={T} result=certificate-host-mismatch mode=testing pattern=*.mail.company-y.example max_age=86400 mx=mx2.mail.company-y.example rip=2001:db8::56 smi=2001:db8::10 id=s1
# the policy changed in the afternoon: a second policies[] entry
domain=company-y.example time={T2} result=success mode=enforce pattern=mx1.mail.company-y.example max_age=604800 mx=mx1.mail.company-y.example rip=203.0.113.55 count=2
# a domain without a policy, and an internationalised one
domain=plain.example time={T} result=success type=none count=4
domain=plain.example time={T} result=starttls-not-supported type=none mx=mx.plain.example rip=198.51.100.7 smi=192.0.2.10
domain=Bücher.example time={T} result=success type=none
# another day
domain=company-y.example time={T3} result=success mode=testing pattern=*.mail.company-y.example max_age=86400
"""


class Store(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(FILL):
            self.fail("tlsrpt_fill helper not built: %s" % FILL)
        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-tlsrpt-")
        self.q = os.path.join(self.tmp.name, "queue")
        os.mkdir(self.q)
        self.store = os.path.join(self.q, "tlsrpt.lmdb")

    def tearDown(self):
        self.tmp.cleanup()

    def fill(self, text):
        r = subprocess.run([FILL, self.store], input=text, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout.splitlines()

    def show(self, domain, date=None, extra=()):
        args = ["tlsrpt", "show", domain, "--json"] + (["--date", date] if date else [])
        r = ctl(self.q, *args, extra=extra)
        self.assertEqual(r.returncode, 0, r.stderr)
        errors = tlsrpt_check.check(r.stdout, convoy=True)
        self.assertEqual(errors, [], r.stdout)
        return json.loads(r.stdout)

    def test_show_full_day(self):
        out = self.fill(SESSIONS.format(T=T, T2=T + 3 * 3600, T3=T + 86400))
        self.assertIn("exists", out)  # the repeated session id s1 counted once
        rep = self.show("company-y.example", DAY,
                        extra=["-o", "tlsrpt_submitter=Reporter.Example",
                               "-o", "tlsrpt_organization_name=Example Org",
                               "-o", "tlsrpt_contact_info=tls-reports@reporter.example"])
        self.assertEqual(rep["organization-name"], "Example Org")
        self.assertEqual(rep["contact-info"], "tls-reports@reporter.example")
        self.assertEqual(rep["report-id"], "20160401.0.company-y.example@reporter.example")
        self.assertEqual(rep["date-range"], {"start-datetime": "2016-04-01T00:00:00Z",
                                             "end-datetime": "2016-04-01T23:59:59Z"})
        self.assertEqual(len(rep["policies"]), 2)
        p0, p1 = rep["policies"]
        self.assertEqual(p0["policy"], {
            "policy-type": "sts",
            "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.company-y.example",
                              "max_age: 86400"],
            "policy-domain": "company-y.example",
            "mx-host": ["*.mail.company-y.example"],
        })
        self.assertEqual(p0["summary"], {"total-successful-session-count": 7,
                                         "total-failure-session-count": 5})
        self.assertEqual(p0["failure-details"], [
            {"result-type": "certificate-expired", "sending-mta-ip": "192.0.2.10",
             "receiving-mx-hostname": "mx1.mail.company-y.example",
             "receiving-ip": "203.0.113.55", "failed-session-count": 3},
            {"result-type": "starttls-not-supported", "sending-mta-ip": "192.0.2.10",
             "receiving-mx-hostname": "mx2.mail.company-y.example",
             "receiving-mx-helo": "mx2.example", "receiving-ip": "203.0.113.56",
             "failed-session-count": 1, "failure-reason-code": "STARTTLS not offered"},
            {"result-type": "certificate-host-mismatch", "sending-mta-ip": "2001:db8::10",
             "receiving-mx-hostname": "mx2.mail.company-y.example",
             "receiving-ip": "2001:db8::56", "failed-session-count": 1},
        ])
        self.assertEqual(p1["policy"]["policy-string"],
                         ["version: STSv1", "mode: enforce", "mx: mx1.mail.company-y.example",
                          "max_age: 604800"])
        self.assertEqual(p1["summary"], {"total-successful-session-count": 2,
                                         "total-failure-session-count": 0})
        self.assertEqual(p1["failure-details"], [])

        plain = self.show("plain.example", DAY)
        self.assertEqual(plain["policies"][0]["policy"]["policy-type"], "no-policy-found")
        self.assertEqual(plain["policies"][0]["summary"],
                         {"total-successful-session-count": 4, "total-failure-session-count": 1})
        idn = self.show("bücher.example", DAY)
        self.assertEqual(idn["policies"][0]["policy"]["policy-domain"], "xn--bcher-kva.example")

        # The text form says the same.
        t = ctl(self.q, "tlsrpt", "show", "company-y.example", "--date", DAY)
        self.assertEqual(t.returncode, 0, t.stderr)
        self.assertIn("policy sts for company-y.example: 7 successful, 5 failed", t.stdout)
        self.assertIn("certificate-expired", t.stdout)

        # Nothing for another domain or day: exit 1.
        self.assertEqual(ctl(self.q, "tlsrpt", "show", "nobody.example", "--date", DAY)
                         .returncode, 1)
        self.assertEqual(ctl(self.q, "tlsrpt", "show", "plain.example", "--date", "2016-04-03")
                         .returncode, 1)

    def test_list(self):
        self.fill(SESSIONS.format(T=T, T2=T + 3 * 3600, T3=T + 86400))
        r = ctl(self.q, "tlsrpt", "list", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [(x["day"], x["domain"], x["successful"], x["failed"], x["policies"])
                for x in json.loads(r.stdout)]
        self.assertEqual(rows, [
            ("2016-04-01", "company-y.example", 9, 5, 2),
            ("2016-04-01", "plain.example", 4, 1, 1),
            ("2016-04-01", "xn--bcher-kva.example", 1, 0, 1),
            ("2016-04-02", "company-y.example", 1, 0, 1),
        ])
        r = ctl(self.q, "tlsrpt", "list", "--date", "2016-04-02", "--json")
        self.assertEqual([x["domain"] for x in json.loads(r.stdout)], ["company-y.example"])
        r = ctl(self.q, "tlsrpt", "list")
        self.assertIn("plain.example", r.stdout)

    def test_no_store(self):
        r = ctl(self.q, "tlsrpt", "list", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), [])
        self.assertEqual(ctl(self.q, "tlsrpt", "show", "example.com").returncode, 1)
        self.assertFalse(os.path.exists(self.store), "a reader must not create the store")

    def test_today_so_far(self):
        now = int(time.time())
        self.fill("domain=today.example time=%d result=success type=none count=2\n" % now)
        rep = self.show("today.example")
        start = tlsrpt_check.parse_datetime(rep["date-range"]["start-datetime"])
        end = tlsrpt_check.parse_datetime(rep["date-range"]["end-datetime"])
        today = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
        self.assertEqual(start.date(), today)
        self.assertTrue(now - 5 <= end.timestamp() <= time.time() + 1, rep["date-range"])
        self.assertEqual(rep["policies"][0]["summary"]["total-successful-session-count"], 2)

    def test_read_while_written(self):
        # A writer records sessions while show reads: every report read is
        # whole and valid, and the counts only grow.
        lines = ["domain=busy.example time=%d result=%s type=none mx=mx.busy.example "
                 "rip=192.0.2.%d\n" % (T, "success" if i % 4 else "certificate-not-trusted",
                                       i % 200 + 1)
                 for i in range(4000)]
        self.fill("".join(lines[:200]))
        writer = subprocess.Popen([FILL, self.store], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, text=True)
        try:
            writer.stdin.write("".join(lines))
            writer.stdin.close()
            seen = []
            while writer.poll() is None or len(seen) < 3:
                rep = self.show("busy.example", DAY)
                s = rep["policies"][0]["summary"]
                seen.append(s["total-successful-session-count"] + s["total-failure-session-count"])
                if len(seen) > 200:
                    break
        finally:
            writer.wait(60)
        self.assertEqual(writer.returncode, 0)
        self.assertEqual(seen, sorted(seen))
        rep = self.show("busy.example", DAY)
        s = rep["policies"][0]["summary"]
        self.assertEqual(s["total-successful-session-count"] + s["total-failure-session-count"],
                         4200)

    def mail(self, *args):
        r = subprocess.run([FILL, self.store, "--mail"] + list(args), capture_output=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_mail_message(self):
        # The message the daemon will queue for a mailto: rua, read back
        # with Python's own MIME parser (RFC 8460 5.3).
        self.fill(SESSIONS.format(T=T, T2=T + 3 * 3600, T3=T + 86400))
        raw = self.mail(DAY, "company-y.example", "reporter.example",
                        "noreply-tlsrpt@reporter.example", "tlsrpt@company-y.example")
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""), "bare LF")
        self.assertTrue(all(len(l) <= 78 for l in raw.split(b"\r\n")))
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(msg["From"], "noreply-tlsrpt@reporter.example")
        self.assertEqual(msg["To"], "tlsrpt@company-y.example")
        self.assertEqual(msg["TLS-Report-Domain"], "company-y.example")
        self.assertEqual(msg["TLS-Report-Submitter"], "reporter.example")
        self.assertEqual(msg["TLS-Required"], "No")
        rid = "20160401.0.company-y.example@reporter.example"
        self.assertEqual(" ".join(msg["Subject"].split()),
                         "Report Domain: company-y.example Submitter: reporter.example "
                         "Report-ID: <%s>" % rid)
        self.assertEqual(msg["Message-ID"], "<%s>" % rid)
        self.assertIsNotNone(msg["Date"].datetime)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "tlsrpt")
        # RFC 2046 5.1.1: 1 to 70 bcharsnospace.
        self.assertRegex(msg.get_boundary(), r"^[0-9A-Za-z'()+_,./:=?-]{1,70}$")
        parts = list(msg.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "application/tlsrpt+gzip"])
        self.assertIn("company-y.example", parts[0].get_content())
        att = parts[1]
        self.assertEqual(att.get_content_disposition(), "attachment")
        # RFC 8460 5.1: submitter!policy-domain!begin-timestamp!end-timestamp.json.gz
        self.assertEqual(att.get_filename(),
                         "reporter.example!company-y.example!1459468800!1459555199.json.gz")
        report = gzip.decompress(att.get_content())
        self.assertEqual(tlsrpt_check.check(report, convoy=True), [])
        rep = json.loads(report)
        self.assertEqual(rep["report-id"], rid)
        self.assertEqual(rep["contact-info"], "noreply-tlsrpt@reporter.example")
        # The attachment is the report `tlsrpt show` prints.
        shown = self.show("company-y.example", DAY,
                          extra=["-o", "tlsrpt_submitter=reporter.example",
                                 "-o", "tlsrpt_organization_name=Test Org"])
        self.assertEqual(rep, shown)

        # A second report of the same day gets its own id and file name.
        raw = self.mail(DAY, "company-y.example", "reporter.example",
                        "noreply-tlsrpt@reporter.example", "tlsrpt@company-y.example", "1")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        att = list(msg.iter_parts())[1]
        self.assertEqual(att.get_filename(),
                         "reporter.example!company-y.example!1459468800!1459555199!1.json.gz")
        self.assertEqual(json.loads(gzip.decompress(att.get_content()))["report-id"],
                         "20160401.1.company-y.example@reporter.example")
        self.assertTrue(re.search(r"Report-ID: <20160401\.1\.", str(msg["Subject"])))


if __name__ == "__main__":
    unittest.main()
