"""The TLS-RPT report checker (tlsrpt_check.py) itself.

RFC 8460 Appendix B's example report (testdata/rfc8460-appendix-b.json)
must pass; each broken variant of it, one defect at a time, must fail with
a message naming the defect. Pure Python: no daemon.
"""

import copy
import json
import os
import unittest

import tlsrpt_check

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "testdata", "rfc8460-appendix-b.json")


def load_example():
    with open(EXAMPLE) as f:
        return json.load(f)


def mutate(fn):
    r = load_example()
    fn(r)
    return r


def pol(r):
    return r["policies"][0]["policy"]


def det(r, i=0):
    return r["policies"][0]["failure-details"][i]


# (name, mutation, text expected in one of the errors)
BROKEN = [
    ("no organization-name", lambda r: r.pop("organization-name"), "organization-name missing"),
    ("empty organization-name", lambda r: r.update({"organization-name": ""}), "organization-name"),
    ("no date-range", lambda r: r.pop("date-range"), "date-range missing"),
    ("no end-datetime", lambda r: r["date-range"].pop("end-datetime"), "end-datetime missing"),
    ("date only", lambda r: r["date-range"].update({"start-datetime": "2016-04-01"}),
     "not an RFC 3339"),
    ("no time zone", lambda r: r["date-range"].update({"end-datetime": "2016-04-01T23:59:59"}),
     "not an RFC 3339"),
    ("month 13", lambda r: r["date-range"].update({"start-datetime": "2016-13-01T00:00:00Z"}),
     "not an RFC 3339"),
    ("epoch number", lambda r: r["date-range"].update({"start-datetime": 1459468800}),
     "not an RFC 3339"),
    ("start after end", lambda r: r["date-range"].update({"start-datetime": "2016-04-02T00:00:00Z"}),
     "start-datetime after end-datetime"),
    ("no contact-info", lambda r: r.pop("contact-info"), "contact-info missing"),
    ("contact not an address", lambda r: r.update({"contact-info": "call us"}), "contact-info"),
    ("no report-id", lambda r: r.pop("report-id"), "report-id missing"),
    ("report-id number", lambda r: r.update({"report-id": 5}), "report-id"),
    ("no policies", lambda r: r.pop("policies"), "policies missing"),
    ("empty policies", lambda r: r.update({"policies": []}), "policies: empty"),
    ("draft-era policy member", lambda r: r.update({"policy": {}}), "unknown member 'policy'"),
    ("no summary", lambda r: r["policies"][0].pop("summary"), "summary missing"),
    ("no policy", lambda r: r["policies"][0].pop("policy"), "policy missing"),
    ("bad policy-type", lambda r: pol(r).update({"policy-type": "STS"}), "policy-type"),
    ("no policy-domain", lambda r: pol(r).pop("policy-domain"), "policy-domain missing"),
    ("U-label policy-domain", lambda r: pol(r).update({"policy-domain": "bücher.example"}),
     "A-label"),
    ("sts without policy-string", lambda r: pol(r).pop("policy-string"), "policy-string missing"),
    ("policy-string a string", lambda r: pol(r).update({"policy-string": "version: STSv1"}),
     "not an array"),
    ("sts without version line", lambda r: pol(r)["policy-string"].pop(0), "version: STSv1"),
    ("mx-host a string (before erratum 6241)",
     lambda r: pol(r).update({"mx-host": "*.mail.company-y.example"}), "mx-host: not an array"),
    ("mx-host bad pattern", lambda r: pol(r).update({"mx-host": ["mx.*.example"]}),
     "MX host pattern"),
    ("sts without mx-host", lambda r: pol(r).pop("mx-host"), "mx-host missing"),
    ("draft-era summary names",
     lambda r: r["policies"][0].update({"summary": {"success-aggregate": 5326,
                                                    "failure-aggregate": 303}}),
     "total-successful-session-count missing"),
    ("negative count",
     lambda r: r["policies"][0]["summary"].update({"total-failure-session-count": -1}),
     "not an integer >= 0"),
    ("float count",
     lambda r: r["policies"][0]["summary"].update({"total-successful-session-count": 5326.0}),
     "not an integer >= 0"),
    ("boolean count",
     lambda r: r["policies"][0]["summary"].update({"total-successful-session-count": True}),
     "not an integer >= 0"),
    ("string count",
     lambda r: r["policies"][0]["summary"].update({"total-failure-session-count": "303"}),
     "not an integer >= 0"),
    ("failure-details an object",
     lambda r: r["policies"][0].update({"failure-details": {}}), "failure-details: not an array"),
    ("draft-era result type", lambda r: det(r).update({"result-type": "ExpiredCertificate"}),
     "not an RFC 8460 result type"),
    ("unknown result type", lambda r: det(r).update({"result-type": "certificate-revoked"}),
     "not an RFC 8460 result type"),
    ("no result-type", lambda r: det(r).pop("result-type"), "result-type missing"),
    ("no failed-session-count", lambda r: det(r).pop("failed-session-count"),
     "failed-session-count missing"),
    ("draft-era session-count",
     lambda r: det(r).update({"session-count": det(r).pop("failed-session-count")}),
     "unknown member 'session-count'"),
    ("bad sending-mta-ip", lambda r: det(r).update({"sending-mta-ip": "98.136.216.256"}),
     "not an IP address"),
    ("IPv4 leading zero", lambda r: det(r, 1).update({"receiving-ip": "203.0.113.056"}),
     "not an IP address"),
    ("host name as IP", lambda r: det(r, 1).update({"receiving-ip": "mx2.example"}),
     "not an IP address"),
    ("bad receiving-mx-hostname", lambda r: det(r).update({"receiving-mx-hostname": "mx 1"}),
     "not a host name"),
    ("reason code a number", lambda r: det(r, 2).update({"failure-reason-code": 42}),
     "not a string"),
    ("typo member", lambda r: det(r).update({"failure-session-count": 1}),
     "unknown member 'failure-session-count'"),
]


class AppendixB(unittest.TestCase):
    def test_example_passes(self):
        self.assertEqual(tlsrpt_check.check(load_example()), [])
        with open(EXAMPLE, "rb") as f:
            self.assertEqual(tlsrpt_check.check(f.read()), [])

    def test_example_meets_convoy_rules(self):
        # Appendix B counts every failure in one row (100+200+3 = 303) and
        # covers one UTC day, so it meets Convoy's own stricter rules too.
        self.assertEqual(tlsrpt_check.check(load_example(), convoy=True), [])

    def test_broken_variants_fail(self):
        for name, fn, expect in BROKEN:
            with self.subTest(name):
                errors = tlsrpt_check.check(mutate(fn))
                self.assertTrue(errors, "%s: accepted" % name)
                self.assertTrue(any(expect in e for e in errors),
                                "%s: %r not in %r" % (name, expect, errors))

    def test_json_level(self):
        with open(EXAMPLE) as f:
            text = f.read()
        self.assertIn("not JSON", tlsrpt_check.check(text[:-3])[0])
        dup = text.replace('"report-id":', '"report-id": "x", "report-id":', 1)
        self.assertIn("duplicate member", tlsrpt_check.check(dup)[0])
        nan = text.replace('"failed-session-count": 3', '"failed-session-count": NaN')
        self.assertIn("not JSON", tlsrpt_check.check(nan)[0])
        self.assertTrue(tlsrpt_check.check("[]"))

    def test_unknown_members_allowed_on_request(self):
        r = mutate(lambda r: r.update({"x-extension": 1}))
        self.assertTrue(tlsrpt_check.check(r))
        self.assertEqual(tlsrpt_check.check(r, allow_unknown=True), [])

    def test_convoy_rules(self):
        cases = [
            ("lower-case z", lambda r: r["date-range"].update({"end-datetime": "2016-04-01T23:59:59z"})),
            ("offset", lambda r: r["date-range"].update({"end-datetime": "2016-04-01T23:59:59+00:00"})),
            ("not midnight", lambda r: r["date-range"].update({"start-datetime": "2016-04-01T01:00:00Z"})),
            ("two days", lambda r: r["date-range"].update({"end-datetime": "2016-04-02T23:59:59Z"})),
            ("rows do not add up",
             lambda r: r["policies"][0]["summary"].update({"total-failure-session-count": 304})),
            ("empty reason", lambda r: det(r, 2).update({"failure-reason-code": ""})),
        ]
        for name, fn in cases:
            with self.subTest(name):
                r = mutate(fn)
                # RFC-valid, but not what Convoy sends.
                self.assertEqual(tlsrpt_check.check(r), [], name)
                self.assertTrue(tlsrpt_check.check(r, convoy=True), name)

    def test_datetime_parser(self):
        p = tlsrpt_check.parse_datetime
        self.assertIsNotNone(p("2016-04-01T00:00:00Z"))
        self.assertIsNotNone(p("2016-04-01t00:00:00.123z"))
        self.assertIsNotNone(p("2016-12-31T23:59:60Z"))
        self.assertIsNotNone(p("2016-04-01T00:00:00-08:00"))
        self.assertIsNone(p("2016-02-30T00:00:00Z"))
        self.assertIsNone(p("2016-04-01 00:00:00Z"))
        self.assertIsNone(p("2016-04-01T24:00:00Z"))
        self.assertIsNone(p("2016-04-01T00:00:00+24:00"))


if __name__ == "__main__":
    unittest.main()
