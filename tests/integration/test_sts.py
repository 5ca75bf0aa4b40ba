"""MTA-STS (RFC 8461) end to end: convoyctl sts against real servers on
loopback - dnsmasq for the TXT, A and MX records, nginx for the policy
hosts (certificates from a test CA), aiosmtpd sinks for the MX hosts.

Each case reads as data: the records and policy a domain publishes, how its
servers behave, and what Convoy must conclude.
"""

import json
import os
import shutil
import tempfile
import unittest

from convoy import Daemon
from pki import CA, self_signed
from sink import Sink
from web import Site, Web
from world import A, MX, TXT, DnsServer, free_udp_tcp_port

WEB_IP = "127.0.0.1"


def policy(mode="enforce", mx=("mx1.{d}",), max_age=86400, eol="\r\n"):
    lines = ["version: STSv1", "mode: " + mode] + ["mx: " + m for m in mx]
    lines.append("max_age: %d" % max_age)
    return eol.join(lines) + eol


# The domains, as data: (domain, TXT strings, Site kwargs, policy template).
# "{d}" in a policy stands for the domain.
GOOD = policy()
DOMAINS = {
    "good.test": dict(txt=[("v=STSv1; id=20260101",)], body=GOOD),
    "lf.test": dict(txt=[("v=STSv1; ", "id=lf1")], body=policy(eol="\n", mode="testing")),
    "chunked.test": dict(txt=[("v=STSv1; id=c1",)], body=GOOD, chunked=True),
    "notfound.test": dict(txt=[("v=STSv1; id=n1",)], status=404),
    "redirect.test": dict(txt=[("v=STSv1; id=r1",)],
                          redirect="https://mta-sts.good.test/.well-known/mta-sts.txt"),
    "ctype.test": dict(txt=[("v=STSv1; id=t1",)], body=GOOD, content_type="text/html"),
    "big.test": dict(txt=[("v=STSv1; id=b1",)], body=GOOD + "x: " + "y" * 70000 + "\r\n"),
    "syntax.test": dict(txt=[("v=STSv1; id=s1",)], body="version: STSv1\r\nmode: sometimes\r\n"),
    "twotxt.test": dict(txt=[("v=STSv1; id=a1",), ("v=STSv1; id=a2",)], body=GOOD),
    "badtxt.test": dict(txt=[("v=STSv1; id=this-is-not-alphanumeric",)], body=GOOD),
    # RFC 8461 3.1: records not beginning with exactly "v=STSv1;" are decoys,
    # discarded before counting; trailing spaces after the last field are
    # accepted (issue 13, items 3 and 4).
    "decoy.test": dict(txt=[("v=STSv1 is not a policy",), ("V=STSv1; id=up1",),
                            ("v=STSv1; id=d1   ",)], body=GOOD),
    "wrongcert.test": dict(txt=[("v=STSv1; id=w1",)], body=GOOD, cert="wrong"),
    "idchange.test": dict(txt=[("v=STSv1; id=old1",)], body=GOOD),
    # MX checks
    "badname.test": dict(txt=[("v=STSv1; id=m1",)], body=GOOD),
    "selfsigned.test": dict(txt=[("v=STSv1; id=m2",)], body=GOOD),
    "notls.test": dict(txt=[("v=STSv1; id=m3",)], body=GOOD),
    "nomatch.test": dict(txt=[("v=STSv1; id=m4",)], body=policy(mx=("mx.elsewhere.test",))),
    "none.test": dict(txt=[], body=None),
}

# MX host of each domain that has one, and how its server behaves.
MX_HOSTS = {
    "good.test": ("127.0.0.11", "good"),
    "badname.test": ("127.0.0.12", "wrongname"),
    "selfsigned.test": ("127.0.0.13", "selfsigned"),
    "notls.test": ("127.0.0.14", None),
    "nomatch.test": ("127.0.0.15", "nomatch"),
    "none.test": ("127.0.0.16", "none"),
}


class StsWorld(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.web = cls.dns = None
        cls.sinks = []
        try:
            cls._start_world()
        except BaseException:
            cls.tearDownClass()  # never leave servers behind
            raise

    @classmethod
    def _start_world(cls):
        cls.tmp = tempfile.mkdtemp(prefix="convoy-sts-")
        # nginx workers may run as another user (when the tests run as root):
        # they must be able to reach the document roots.
        os.chmod(cls.tmp, 0o755)
        ca = CA(os.path.join(cls.tmp, "pki"))
        cls.ca = ca
        names = ["mta-sts." + d for d in DOMAINS if d != "wrongcert.test"]
        web_leaf = ca.issue("web", names)
        wrong_leaf = ca.issue("webwrong", ["mta-sts.other.test"])
        sites = []
        for d, spec in DOMAINS.items():
            if spec.get("body") is None and "status" not in spec and "redirect" not in spec:
                continue
            kw = {k: v for k, v in spec.items() if k in ("body", "status", "content_type",
                                                       "redirect", "chunked")}
            if kw.get("body"):
                kw["body"] = kw["body"].replace("{d}", d)
            sites.append(Site(d, wrong_leaf if spec.get("cert") == "wrong" else web_leaf, **kw))
        cls.web = Web(cls.tmp, sites, host=WEB_IP).start()

        cls.smtp_port = free_udp_tcp_port(tuple(ip for ip, _ in MX_HOSTS.values()))
        leaves = {
            "good": ca.issue("mx-good", ["mx1.good.test"]),
            "wrongname": ca.issue("mx-wrongname", ["mx1.other.test"]),
            "selfsigned": self_signed(os.path.join(cls.tmp, "pki"), "mx-self",
                                      ["mx1.selfsigned.test"]),
            "nomatch": ca.issue("mx-nomatch", ["mx1.nomatch.test"]),
            "none": ca.issue("mx-none", ["mx1.none.test"]),
        }
        for d, (ip, kind) in MX_HOSTS.items():
            tls = (leaves[kind].chain, leaves[kind].key) if kind else None
            cls.sinks.append(Sink(ip, cls.smtp_port, tls=tls, hostname="mx1." + d).start())

        records = []
        for d, spec in DOMAINS.items():
            for strings in spec["txt"]:
                records.append(TXT("_mta-sts." + d, *strings))
            records.append(A("mta-sts." + d, WEB_IP))
        for d, (ip, _) in MX_HOSTS.items():
            records.append(MX(d, 10, "mx1." + d))
            records.append(A("mx1." + d, ip))
        cls.records = records
        os.makedirs(os.path.join(cls.tmp, "dns"))
        cls.dns = DnsServer(records, workdir=os.path.join(cls.tmp, "dns")).start()

    @classmethod
    def tearDownClass(cls):
        for s in cls.sinks:
            s.stop()
        if cls.web:
            cls.web.stop()
        if cls.dns:
            cls.dns.close()
        if getattr(cls, "tmp", None):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def conf_text(self):
        return "\n".join([
            "dns_servers = " + self.dns.server,
            "smtp_tls_CAfile = " + self.ca.cert,
            "sts_policy_https_port = %d" % self.web.port,
            "smtp_destination_port = %d" % self.smtp_port,
            "sts_fetch_timeout = 10s",
            "smtp_connect_timeout = 5s",
            "myhostname = client.test",
            "",
        ])

    def setUp(self):
        self.d = Daemon(self.conf_text())

    def restart_dns(self, records):
        """Serve other records; the server may come back on another port."""
        self.dns.records = list(records)
        self.dns.restart()
        self.d.write_config("queue_directory = %s\n%s" % (self.d.queue_dir, self.conf_text()))

    def tearDown(self):
        self.d.close()

    # ---- helpers ---------------------------------------------------------

    def ctl(self, *args, input=None):
        return self.d.ctl("sts", *args, input=input)

    def ctl_json(self, *args):
        r = self.ctl(*(args + ("--json",)))
        try:
            return r.returncode, json.loads(r.stdout)
        except ValueError:
            raise AssertionError("not JSON (rc %d): %r %r" % (r.returncode, r.stdout, r.stderr))

    def refresh(self, domain):
        return self.ctl_json("refresh", domain)

    def show(self, domain):
        return self.ctl_json("show", domain)

    # ---- fetch outcomes --------------------------------------------------

    def test_valid_enforce_policy_fetched_and_cached(self):
        rc, r = self.refresh("good.test")
        self.assertEqual(rc, 0, r)
        self.assertTrue(r["fetched"])
        self.assertEqual(r["mode"], "enforce")
        self.assertEqual(r["mx"], ["mx1.good.test"])
        self.assertEqual(r["id"], "20260101")
        # A new process reads the cache back.
        rc, s = self.show("good.test")
        self.assertEqual(rc, 0)
        self.assertTrue(s["valid"])
        self.assertEqual(s["id"], "20260101")
        self.assertEqual(s["max_age"], 86400)
        self.assertEqual(s["expires"] - s["fetched"], 86400)
        self.assertEqual(s["text"], GOOD.replace("{d}", "good.test"))
        out = self.ctl("show", "good.test").stdout
        self.assertIn("mode: enforce", out)
        self.assertIn("mx: mx1.good.test", out)
        self.assertIn("good.test", self.ctl("list").stdout)
        # forget removes it.
        self.assertEqual(self.ctl("forget", "good.test").returncode, 0)
        self.assertEqual(self.ctl("show", "good.test").returncode, 1)

    def test_lf_line_ends_and_split_txt_strings(self):
        rc, r = self.refresh("lf.test")
        self.assertEqual(rc, 0, r)
        self.assertEqual(r["mode"], "testing")
        self.assertEqual(r["id"], "lf1")

    def test_chunked_response(self):
        rc, r = self.refresh("chunked.test")
        self.assertEqual(rc, 0, r)
        self.assertEqual(r["mode"], "enforce")

    def assert_no_policy(self, domain, result, text):
        rc, r = self.refresh(domain)
        self.assertEqual(rc, 1, r)
        self.assertFalse(r["fetched"])
        self.assertFalse(r["have_policy"])
        self.assertEqual(r["result"], result, r)
        self.assertIn(text, r["error"] or "")
        return r

    def test_404_is_a_fetch_error(self):
        self.assert_no_policy("notfound.test", "sts-policy-fetch-error", "HTTP status 404")
        rc, s = self.show("notfound.test")
        self.assertEqual(rc, 0)
        self.assertFalse(s["have_policy"])
        self.assertTrue(s["attempt_failed"])
        self.assertEqual(s["attempt_id"], "n1")

    def test_redirect_is_not_followed(self):
        before = self.web.access_log().count("\n")
        self.assert_no_policy("redirect.test", "sts-policy-fetch-error", "301")
        # One request: the 301 itself; its Location is never fetched.
        self.assertEqual(self.web.access_log().count("\n") - before, 1)

    def test_wrong_content_type(self):
        self.assert_no_policy("ctype.test", "sts-policy-invalid", "text/html")

    def test_oversize_body(self):
        self.assert_no_policy("big.test", "sts-policy-fetch-error", "larger than 65536")

    def test_invalid_syntax(self):
        self.assert_no_policy("syntax.test", "sts-policy-invalid", "invalid mode")

    def test_two_txt_records_mean_no_policy(self):
        before = self.web.access_log()
        self.assert_no_policy("twotxt.test", "sts-policy-invalid", "2 v=STSv1 TXT records")
        self.assertEqual(self.web.access_log(), before)  # nothing was fetched

    def test_decoy_txt_records_do_not_count(self):
        rc, r = self.refresh("decoy.test")
        self.assertEqual(rc, 0, r)
        self.assertTrue(r["fetched"])
        self.assertEqual(r["mode"], "enforce")
        self.assertEqual(r["id"], "d1")

    def test_bad_txt_id_means_no_policy(self):
        self.assert_no_policy("badtxt.test", "sts-policy-invalid", "id may hold only")

    def test_policy_host_certificate_wrong_name(self):
        self.assert_no_policy("wrongcert.test", "sts-webpki-invalid", "mta-sts.wrongcert.test")

    def test_no_txt_record(self):
        rc, r = self.refresh("none.test")
        self.assertEqual(rc, 1)
        self.assertFalse(r["have_policy"])
        self.assertIsNone(r["result"])

    def test_id_change_with_failing_fetch_keeps_old_policy(self):
        rc, r = self.refresh("idchange.test")
        self.assertEqual(rc, 0, r)
        self.assertEqual(r["id"], "old1")
        # The domain publishes a new id, but its policy host now serves junk.
        self.web.set_body("idchange.test", "this is not a policy\r\n")
        recs = [x for x in self.records if x[1] != "_mta-sts.idchange.test"]
        recs.append(TXT("_mta-sts.idchange.test", "v=STSv1; id=new2"))
        self.restart_dns(recs)
        try:
            rc, r = self.refresh("idchange.test")
            self.assertEqual(rc, 1, r)
            self.assertTrue(r["have_policy"], r)
            self.assertEqual(r["id"], "old1")
            self.assertEqual(r["result"], "sts-policy-invalid")
            rc, s = self.show("idchange.test")
            self.assertTrue(s["valid"])
            self.assertEqual(s["id"], "old1")
            self.assertEqual(s["mode"], "enforce")
            self.assertEqual(s["attempt_id"], "new2")
            self.assertTrue(s["attempt_failed"])
            self.assertIn("line 1", s["last_error"])
        finally:
            self.web.set_body("idchange.test", GOOD.replace("{d}", "idchange.test"))
            self.restart_dns(self.records)

    # ---- the engine, as delivery uses it ----------------------------------

    def requests(self):
        return self.web.access_log().count("\n")

    def test_burst_costs_one_fetch(self):
        before = self.requests()
        rc, r = self.ctl_json("get", "lf.test", "--burst", "10000")
        self.assertEqual(rc, 0, r)
        self.assertEqual(r["lookups"], 10000)
        self.assertEqual(r["answered_by_fetch"], 10000)  # all shared the one fetch
        self.assertEqual(self.requests() - before, 1)
        # Cached and fresh: another process, another burst, no network at all.
        rc, r = self.ctl_json("get", "lf.test", "--burst", "10000")
        self.assertEqual(rc, 0, r)
        self.assertEqual(r["source"], "cache")
        self.assertEqual(r["answered_from_cache"], 10000)
        self.assertEqual(self.requests() - before, 1)

    def test_failed_fetch_backs_off(self):
        before = self.requests()
        rc, r = self.ctl_json("get", "notfound.test")
        self.assertEqual(rc, 1)
        self.assertEqual(r["result"], "sts-policy-fetch-error")
        self.assertEqual(self.requests() - before, 1)
        # Within five minutes the same id is not fetched again (RFC 8461 3.3),
        # not even by a new process.
        rc, r = self.ctl_json("get", "notfound.test")
        self.assertEqual(rc, 1)
        self.assertIn("backoff", r["error"])
        self.assertEqual(self.requests() - before, 1)

    def test_dns_failure_keeps_cached_policy(self):
        rc, r = self.ctl_json("get", "chunked.test")
        self.assertEqual(rc, 0, r)
        # The resolver goes away: a recheck cannot see the TXT record, and
        # the cached policy still applies (a DNS failure is not "no policy").
        dead = free_udp_tcp_port()
        self.d.write_config("queue_directory = %s\n%s" % (
            self.d.queue_dir,
            self.conf_text().replace(self.dns.server, "127.0.0.1:%d" % dead)
            + "dns_timeout = 1s\ndns_tries = 1\n"))
        rc, r = self.ctl_json("get", "chunked.test", "--recheck")
        self.assertEqual(rc, 0, r)
        self.assertTrue(r["have_policy"])
        self.assertEqual(r["source"], "cache")
        self.assertEqual(r["mode"], "enforce")
        self.assertIn("TXT lookup", r["error"])

    # ---- sts check -------------------------------------------------------

    def check(self, domain):
        return self.ctl_json("check", domain)

    def test_check_good_mx(self):
        rc, r = self.check("good.test")
        self.assertEqual(rc, 0, r)
        self.assertEqual(r["domain"], "good.test")
        self.assertEqual(r["txt"], {"found": True, "valid": True, "id": "20260101", "error": None})
        self.assertTrue(r["policy"]["fetched"])
        self.assertTrue(r["policy"]["valid"])
        self.assertEqual(r["policy"]["mode"], "enforce")
        mx = r["mx"][0]
        self.assertEqual(mx["host"], "mx1.good.test")
        self.assertEqual(mx["preference"], 10)
        self.assertTrue(mx["matches_policy"])
        self.assertTrue(mx["starttls"])
        self.assertTrue(mx["certificate_valid"])
        self.assertIsNone(mx["error"])
        self.assertEqual(r["verdict"], "deliverable")
        # check writes nothing.
        self.assertEqual(self.ctl("show", "good.test").returncode, 1)
        text = self.ctl("check", "good.test")
        self.assertEqual(text.returncode, 0, text.stdout + text.stderr)
        self.assertIn("txt: ok", text.stdout)
        self.assertIn("starttls: ok", text.stdout)
        self.assertIn("verdict: deliverable", text.stdout)

    def test_check_wrong_name_certificate(self):
        rc, r = self.check("badname.test")
        self.assertEqual(rc, 18, r)
        mx = r["mx"][0]
        self.assertTrue(mx["starttls"])
        self.assertFalse(mx["certificate_valid"])
        self.assertEqual(mx["result"], "certificate-host-mismatch")
        self.assertEqual(r["verdict"], "deferred")

    def test_check_self_signed_certificate(self):
        rc, r = self.check("selfsigned.test")
        self.assertEqual(rc, 18, r)
        self.assertFalse(r["mx"][0]["certificate_valid"])
        self.assertEqual(r["mx"][0]["result"], "certificate-not-trusted")
        self.assertEqual(r["verdict"], "deferred")

    def test_check_mx_without_starttls(self):
        rc, r = self.check("notls.test")
        self.assertEqual(rc, 17, r)
        self.assertFalse(r["mx"][0]["starttls"])
        self.assertEqual(r["mx"][0]["result"], "starttls-not-supported")
        self.assertEqual(r["verdict"], "deferred")

    def test_check_mx_not_matching_policy(self):
        rc, r = self.check("nomatch.test")
        self.assertEqual(rc, 15, r)
        self.assertFalse(r["mx"][0]["matches_policy"])
        self.assertTrue(r["mx"][0]["certificate_valid"])
        self.assertEqual(r["verdict"], "deferred")

    def test_check_no_policy(self):
        rc, r = self.check("none.test")
        self.assertEqual(rc, 10, r)
        self.assertFalse(r["txt"]["found"])
        self.assertEqual(r["verdict"], "no-policy")
        self.assertTrue(r["mx"][0]["certificate_valid"])

    def test_check_policy_fetch_failure(self):
        rc, r = self.check("notfound.test")
        self.assertEqual(rc, 11, r)
        self.assertFalse(r["policy"]["fetched"])
        self.assertIn("404", r["policy"]["error"])
        self.assertEqual(r["verdict"], "no-policy")

    # ---- parse -----------------------------------------------------------

    def test_parse(self):
        r = self.ctl("parse", "-", "--match", "mx1.good.test", "--match", "a.b.good.test",
                     "--json", input=GOOD.replace("{d}", "good.test"))
        self.assertEqual(r.returncode, 0, r.stderr)
        j = json.loads(r.stdout)
        self.assertEqual(j["match"], {"mx1.good.test": True, "a.b.good.test": False})
        r = self.ctl("parse", "-", "--json", input="version: STSv1\nmode: enforce\nmax_age: 1\n")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(json.loads(r.stdout), {"valid": False,
                                                "error": "mx missing (required in mode enforce)"})


    def test_overrides_file(self):
        path = os.path.join(self.d.dir, "tls_policy")
        with open(path, "w") as f:
            f.write("# overrides\nexample.com secure match=mx1.example.com:.example.net\n"
                    "example.net sometimes\nexample.org encrypt\n")
        r = self.ctl("overrides", path)
        self.assertEqual(r.returncode, 1)
        self.assertIn(path + ":3: unsupported TLS level \"sometimes\"", r.stderr)
        with open(path, "w") as f:
            f.write("example.com secure match=mx1.example.com:.example.net\n"
                    "example.net may\n.example.org   encrypt\nlegacy.test none\n")
        r = self.ctl("overrides", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("4 entries OK", r.stdout)

if __name__ == "__main__":
    unittest.main()
