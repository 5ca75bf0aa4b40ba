"""TLS-RPT (RFC 8460) end to end: the real convoyd delivers to aiosmtpd sinks
(sink.py) as MX hosts under MTA-STS policies from nginx (web.py), found
through dnsmasq (world.py), counts every session in its store, and sends
the reports to the rua each domain publishes in _smtp._tls: an HTTPS
collector (a Python https server on loopback with a certificate of the
test CA) and an SMTP collector (a sink) whose own MX has a wrong-name
certificate under an enforce policy: the report still arrives, because it
carries TLS-Required: No (RFC 8689), and its delivery is not counted.

The reports that arrive are gunzipped, checked with the strict checker
(tlsrpt_check.py) and field by field; the mailed one is multipart/report,
DKIM-signed (verified with python3-dkim) and carries TLS-Required: No.
Then a restart with the daemon's clock set a day on (CONVOY_TLSRPT_NOW)
and no delay sends the completed day by itself; the first POST to one
collector URL fails with 503 and is retried.
"""

import gzip
import http.server
import json
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
from email import message_from_bytes, policy as email_policy

import tlsrpt_check
import world
from convoy import CONVOYCTL, Daemon, free_port
from pki import CA, mx_tls
from sink import Sink
from web import Site, Web
from world import A, MX, TXT, DnsServer, free_udp_tcp_port

try:
    import dkim
except ImportError:
    dkim = None

WEB_IP = "127.0.0.1"
COLLECTOR_IP = "127.0.0.96"
HTTPS_URL = "https://collector.test/v1/report"
FLAKY_URL = "https://collector.test/flaky"
MAILTO = "mailto:tlsrpt@reports.test"


def policy(mode, domain):
    lines = ["version: STSv1", "mode: " + mode, "mx: mx1." + domain, "max_age: 86400"]
    return "\r\n".join(lines) + "\r\n"


# domain -> mode (None: no policy), MX kind (None: no STARTTLS), rua
# (None: no _smtp._tls record), expected (result type or "ok").
DOMAINS = {
    "ok.test": ("enforce", "good", [FLAKY_URL], "ok"),
    "wrongname.test": ("enforce", "other", [MAILTO, HTTPS_URL], "certificate-host-mismatch"),
    "expired.test": ("enforce", "expired", [HTTPS_URL], "certificate-expired"),
    "selfsigned.test": ("testing", "self", [HTTPS_URL], "certificate-not-trusted"),
    "notls.test": ("enforce", None, [HTTPS_URL], "starttls-not-supported"),
    "nopolicy.test": (None, "self", [HTTPS_URL], "ok"),
    "norua.test": ("enforce", "good", None, "ok"),
    # The SMTP collector's own domain: its MX fails enforce.
    "reports.test": ("enforce", "other", None, None),
    # A domain with a rua that gets no mail: nothing to say, no report.
    "quiet.test": ("enforce", "good", [HTTPS_URL], None),
}
IPS = {d: "127.0.0.%d" % (100 + i) for i, d in enumerate(DOMAINS)}


class Collector:
    """An HTTPS server that records every POST (path, Content-Type, body)."""

    def __init__(self, ip, leaf):
        self.posts = []
        self.fail_next = {}  # path -> how many POSTs to answer with 503
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with outer.lock:
                    fail = outer.fail_next.get(self.path, 0)
                    if fail:
                        outer.fail_next[self.path] = fail - 1
                    outer.posts.append(dict(path=self.path, ctype=self.headers.get("Content-Type"),
                                            body=body, status=503 if fail else 200))
                self.send_response(503 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.port = free_port(ip)
        self.srv = http.server.ThreadingHTTPServer((ip, self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf.chain, leaf.key)
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def ok_posts(self, path=None):
        with self.lock:
            return [p for p in self.posts if p["status"] == 200 and (path is None or p["path"] == path)]

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def keygen(domain, selector, path):
    r = subprocess.run([CONVOYCTL, "-c", "/dev/null", "dkim", "keygen", domain, selector, "--out",
                        path, "--algorithm", "ed25519"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    m = re.match(r'^(\S+)\. IN TXT((?: "[^"]*")+)\n$', r.stdout)
    return m.group(1), "".join(re.findall(r'"([^"]*)"', m.group(2)))


def wait_for(pred, timeout=30, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


@world.needs("dnsmasq", "nginx")
@unittest.skipUnless(dkim is not None, "python3-dkim is not installed")
class TlsrptDeliveryTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="convoy-tlsrptd-")
        os.chmod(self.tmp, 0o755)
        self.sinks, self.web, self.dns, self.daemon, self.collector = {}, None, None, None, None
        self.saved_env = {k: os.environ.get(k) for k in (
            "CONVOY_TLSRPT_NOW", "CONVOY_TLSRPT_DELAY", "CONVOY_TLSRPT_RETRY",
            "CONVOY_TLSRPT_HTTPS_PORT")}
        try:
            self.build()
        except BaseException:
            self.tearDown()
            raise

    def build(self):
        pkidir = os.path.join(self.tmp, "pki")
        self.ca = ca = CA(pkidir)
        self.collector = Collector(COLLECTOR_IP, ca.issue("collector", ["collector.test"]))
        web_leaf = ca.issue("web", ["mta-sts." + d for d in DOMAINS])
        sites = [Site(d, web_leaf, body=policy(mode, d)) for d, (mode, _, _, _) in DOMAINS.items()
                 if mode]
        self.web = Web(self.tmp, sites, host=WEB_IP).start()
        self.smtp_port = free_udp_tcp_port(tuple(IPS.values()))
        keydir = os.path.join(self.tmp, "keys")
        os.mkdir(keydir)
        key = os.path.join(keydir, "relay.pem")
        name, text = keygen("relay.test", "rpt", key)
        self.dkim_records = {name: text}
        self.keytable = os.path.join(self.tmp, "dkim.keys")
        with open(self.keytable, "w") as f:
            f.write("relay.test rpt %s\n" % key)
        records = [A("collector.test", COLLECTOR_IP)]
        for d, (mode, kind, rua, _) in DOMAINS.items():
            mx = "mx1." + d
            ip = IPS[d]
            records += [MX(d, 10, mx), A(mx, ip)]
            if mode:
                records += [TXT("_mta-sts." + d, "v=STSv1; id=%s1" % d.split(".")[0]),
                            A("mta-sts." + d, WEB_IP)]
            if rua:
                records.append(TXT("_smtp._tls." + d, "v=TLSRPTv1; rua=" + ",".join(rua)))
            tls = mx_tls(ca, pkidir, kind, "mx-" + d, mx)
            self.sinks[d] = Sink(ip, self.smtp_port, tls=tls, hostname=mx).start()
        os.makedirs(os.path.join(self.tmp, "dns"))
        self.dns = DnsServer(records, ttl=1, workdir=os.path.join(self.tmp, "dns")).start()
        os.environ["CONVOY_TLSRPT_HTTPS_PORT"] = str(self.collector.port)
        self.sub_port = free_port()
        self.daemon = Daemon(
            "myhostname = relay.test\n"
            "smtpd_listen = 127.0.0.1:%d\n"
            "dns_servers = %s\n"
            "smtp_destination_port = %d\n"
            "smtp_tls_CAfile = %s\n"
            "sts_policy_https_port = %d\n"
            "sts_fetch_timeout = 5s\n"
            "smtp_helo_timeout = 5s\n"
            "smtp_starttls_timeout = 5s\n"
            "minimal_backoff_time = 1h\n"
            "maximal_backoff_time = 2h\n"
            "smtp_connection_cache_time_limit = 1s\n"
            "tlsrpt_enable = yes\n"
            "tlsrpt_organization_name = Relay Test\n"
            "tlsrpt_contact_info = postmaster@relay.test\n"
            "tlsrpt_sender = tlsrpt@relay.test\n"
            "dkim_key_table = %s\n"
            % (self.sub_port, self.dns.server, self.smtp_port, ca.cert, self.web.port,
               self.keytable)).start()

    def tearDown(self):
        if self.daemon:
            try:
                self.daemon.stop()
            except Exception:
                pass
            self.daemon.close()
        for s in self.sinks.values():
            s.stop()
        if self.collector:
            self.collector.stop()
        if self.web:
            self.web.stop()
        if self.dns:
            self.dns.close()
        for k, v in self.saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.tmp, ignore_errors=True)

    def send(self, rcpt, extra=""):
        data = ("From: app@src.test\r\nTo: %s\r\nSubject: hi\r\n%s\r\nHello.\r\n"
                % (rcpt, extra)).encode()
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=30) as c:
            c.sendmail("app@src.test", [rcpt], data)

    def listing(self, date="today"):
        r = self.daemon.ctl("tlsrpt", "list", "--date", date, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        data = json.loads(r.stdout)
        rows = data if isinstance(data, list) else data.get("domains", data.get("days", []))
        return {row.get("domain") or row.get("policy-domain"): row for row in rows}

    def check_report(self, raw, domain, expect_seq):
        rep = json.loads(gzip.decompress(raw))
        tlsrpt_check.assert_valid(rep, convoy=True)
        mode, kind, _, expected = DOMAINS[domain]
        self.assertEqual(rep["organization-name"], "Relay Test")
        self.assertEqual(rep["contact-info"], "postmaster@relay.test")
        self.assertRegex(rep["report-id"], r"^\d{8}\.%d\.%s@relay\.test$"
                         % (expect_seq, re.escape(domain)))
        self.assertEqual(len(rep["policies"]), 1, rep)
        p = rep["policies"][0]
        self.assertEqual(p["policy"]["policy-domain"], domain)
        if mode:
            self.assertEqual(p["policy"]["policy-type"], "sts", rep)
            self.assertEqual(p["policy"]["policy-string"],
                             ["version: STSv1", "mode: " + mode, "mx: mx1." + domain,
                              "max_age: 86400"])
            self.assertEqual(p["policy"]["mx-host"], ["mx1." + domain])
        else:
            self.assertEqual(p["policy"]["policy-type"], "no-policy-found")
        s = p["summary"]
        if expected == "ok":
            self.assertEqual((s["total-successful-session-count"],
                              s["total-failure-session-count"]), (1, 0), rep)
            self.assertEqual(p.get("failure-details", []), [], p)
        else:
            self.assertEqual((s["total-successful-session-count"],
                              s["total-failure-session-count"]), (0, 1), rep)
            fd = p["failure-details"]
            self.assertEqual(len(fd), 1, fd)
            self.assertEqual(fd[0]["result-type"], expected)
            self.assertEqual(fd[0]["failed-session-count"], 1)
            self.assertEqual(fd[0]["receiving-mx-hostname"], "mx1." + domain)
            self.assertEqual(fd[0]["receiving-ip"], IPS[domain])
            self.assertTrue(fd[0]["sending-mta-ip"].startswith("127."), fd[0])
        return rep

    def test_reports(self):
        d = self.daemon
        d.wait_log("delivery started", timeout=10)
        for dom in DOMAINS:
            if dom not in ("reports.test", "quiet.test"):
                self.send("user@" + dom)
        # TLS-Required: No on an ordinary message: delivered to a wrong-name
        # MX under enforce, logged, and not counted.
        # Lower case and folded (RFC 8689 5, RFC 5322 2.2.3).
        self.send("other@reports.test", "tls-required:\r\n  no\r\n")
        self.assertTrue(self.sinks["reports.test"].wait_messages(1, 30))
        self.assertTrue(wait_for(lambda: "tls_required=no" in d.log_text(), 10))
        # Every counted session is in the store.
        want = {dom for dom, spec in DOMAINS.items() if spec[3]}
        rows = wait_for(lambda: (lambda l: l if want <= set(l) else None)(self.listing()), 40)
        self.assertTrue(rows, self.listing())
        self.assertNotIn("reports.test", self.listing())
        self.assertNotIn("quiet.test", self.listing())
        # A restart between recording and sending counts nothing twice.
        before = self.listing()
        d.stop()
        d.start()
        self.assertEqual(self.listing(), before)

        # --dry-run: what would go, nothing sent.
        r = d.ctl("tlsrpt", "send", "--date", "today", "--dry-run")
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assertIn("wrongname.test dry-run rua=mailto:tlsrpt@reports.test report-id=", r.stdout)
        self.assertEqual(self.collector.posts, [])

        r = d.ctl("tlsrpt", "send", "--date", "today")
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assertIn("norua.test no-record", r.stdout)
        # https: one POST per domain with an https rua.
        https_domains = {dom for dom, spec in DOMAINS.items() if spec[2] and
                         spec[3] and any(u.startswith("https:") for u in spec[2])}
        posts = wait_for(lambda: (lambda p: p if len(p) >= len(https_domains) else None)(
            self.collector.ok_posts()), 30)
        self.assertTrue(posts, self.collector.posts)
        seen = {}
        for p in posts:
            self.assertEqual(p["ctype"], "application/tlsrpt+gzip")
            rep = json.loads(gzip.decompress(p["body"]))
            dom = rep["policies"][0]["policy"]["policy-domain"]
            seen[dom] = self.check_report(p["body"], dom, 0)
        self.assertEqual(set(seen), https_domains)
        self.assertNotIn("quiet.test", seen)
        # mailto: through the queue to reports.test, whose MX fails enforce.
        sink = self.sinks["reports.test"]
        self.assertTrue(sink.wait_messages(2, 30), "report mail did not arrive")
        msg = sink.messages[1]
        self.assertEqual(msg.rcpt_tos, ["tlsrpt@reports.test"])
        m = message_from_bytes(msg.content, policy=email_policy.default)
        self.assertEqual(m["TLS-Required"], "No")
        self.assertEqual(m["TLS-Report-Domain"], "wrongname.test")
        self.assertEqual(m["TLS-Report-Submitter"], "relay.test")
        self.assertTrue(m["Subject"].startswith("Report Domain: wrongname.test Submitter: "
                                                "relay.test Report-ID: <"), m["Subject"])
        self.assertEqual(m.get_content_type(), "multipart/report")
        self.assertEqual(m.get_param("report-type"), "tlsrpt")
        att = [part for part in m.iter_parts()
               if part.get_content_type() == "application/tlsrpt+gzip"]
        self.assertEqual(len(att), 1)
        self.assertRegex(att[0].get_filename(), r"^relay\.test!wrongname\.test!\d+!\d+\.json\.gz$")
        self.check_report(att[0].get_content(), "wrongname.test", 0)
        self.assertTrue(wait_for(lambda: d.log_text().count("tls_required=no") >= 2, 10),
                        "the report's delivery with TLS-Required: No is not logged")
        ok = dkim.verify(msg.content, dnsfunc=lambda n, timeout=5: self.dkim_records.get(
            (n.decode() if isinstance(n, bytes) else n).rstrip("."), "").encode())
        self.assertTrue(ok, "DKIM signature does not verify")
        # The delivery of the report was not counted.
        time.sleep(1)
        self.assertNotIn("reports.test", self.listing())
        self.assertEqual(len(self.collector.ok_posts()), len(https_domains), self.collector.posts)
        self.assertRegex(d.log_text(), r"report domain=expired\.test day=\S+ "
                         r"rua=https://collector\.test/v1/report report-id=\S+ size=\d+ result=sent")

        # The daemon by itself, a day later: the completed day goes out with
        # its own report-id; the first POST to the flaky URL fails and is
        # retried.
        n_before = len(self.collector.ok_posts())
        d.stop()
        self.collector.fail_next["/flaky"] = 1
        os.environ["CONVOY_TLSRPT_NOW"] = str(int(time.time()) + 86400)
        os.environ["CONVOY_TLSRPT_DELAY"] = "0"
        os.environ["CONVOY_TLSRPT_RETRY"] = "2"
        d.start()
        posts = wait_for(lambda: (lambda p: p if len(p) >= n_before + len(https_domains)
                                  else None)(self.collector.ok_posts()), 40)
        self.assertTrue(posts, self.collector.posts)
        new = posts[n_before:]
        seen = {}
        for p in new:
            rep = json.loads(gzip.decompress(p["body"]))
            dom = rep["policies"][0]["policy"]["policy-domain"]
            seen[dom] = self.check_report(p["body"], dom, 1)
            self.assertTrue(rep["date-range"]["end-datetime"].endswith("T23:59:59Z"))
        self.assertEqual(set(seen), https_domains)
        self.assertEqual([p["status"] for p in self.collector.posts if p["path"] == "/flaky"],
                         [200, 503, 200])
        self.assertIn("result=deferred", d.log_text())
        # Sent days are gone from the store.
        self.assertTrue(wait_for(lambda: not (set(self.listing()) & https_domains), 10),
                        self.listing())


if __name__ == "__main__":
    unittest.main()
