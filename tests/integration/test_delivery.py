"""Integration tests of delivery: the real convoyd delivers to independent SMTP
servers (sink.py, python3-aiosmtpd) acting as MX hosts on distinct loopback
addresses, found through a real DNS server (world.py, dnsmasq), with a
throwaway PKI (pki.py) for STARTTLS.

Each case reads as data: DNS records, how each MX behaves, the configuration,
what is submitted, and what must come out (at the sinks and in the log).
Mail is submitted over SMTP to the daemon's own listener, as an application
would.
"""

import email
import os
import re
import smtplib
import socket
import tempfile
import time
import unittest

from convoy import Daemon, free_port
from pki import CA
from sink import Sink
import world
from world import DnsServer, MX, NULL_MX, A, AAAA

MX1 = "127.0.0.11"
MX2 = "127.0.0.12"
MX3 = "127.0.0.13"


def have_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = have_ipv6()


def message(subject="test", body="Hello.\r\n"):
    return ("From: Sender <sender@src.test>\r\n"
            "To: rcpt@dest.test\r\n"
            "Subject: %s\r\n"
            "Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
            "Message-ID: <%s@src.test>\r\n"
            "\r\n%s" % (subject, re.sub(r"\W", "", subject) + str(time.time()), body)).encode()


@world.needs("dnsmasq")
class DeliveryTest(unittest.TestCase):
    """One small world per test: DNS, sinks, the daemon."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="convoy-dlv-")
        self.ca = CA(self.tmp.name)
        # free_port: free on every test address and ::1 (the MX hosts
        # share smtp_destination_port)
        self.port = free_port(MX1)
        self.sinks = []
        self.dns = None
        self.daemon = None

    def tearDown(self):
        if self.daemon:
            try:
                self.daemon.stop()
            except Exception:
                pass
            self.daemon.close()
        for s in self.sinks:
            s.stop()
        if self.dns:
            self.dns.close()
        self.tmp.cleanup()

    # ---- the world -------------------------------------------------------

    def world(self, records, config=""):
        self.dns = DnsServer(records).start()
        self.sub_port = free_port()
        text = ("myhostname = relay.test\n"
                "smtpd_listen = 127.0.0.1:%d\n"
                "dns_servers = %s\n"
                "smtp_destination_port = %d\n"
                "smtp_tls_CAfile = %s\n"
                "smtp_helo_timeout = 5s\n"
                "smtp_data_done_timeout = 5s\n"
                "minimal_backoff_time = 1s\n"
                "maximal_backoff_time = 2s\n"
                "smtp_connection_cache_time_limit = 2s\n"
                "%s" % (self.sub_port, self.dns.server, self.port, self.ca.cert, config))
        self.daemon = Daemon(text).start()
        self.daemon.wait_log("delivery started", timeout=3)
        return self.daemon

    def sink(self, host, **kw):
        s = Sink(host, self.port, **kw).start()
        self.sinks.append(s)
        return s

    def submit(self, sender, rcpts, data):
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.ehlo("app.test")
            c.sendmail(sender, rcpts, data)

    def log(self):
        return self.daemon.log_text()

    def wait_log_re(self, pattern, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            time.sleep(0.1)
        self.fail("no log line matching %r:\n%s" % (pattern, self.log()))

    def assert_received_copy(self, got, sent):
        """The sink's copy is the submitted message with our Received: in front."""
        self.assertTrue(got.endswith(sent), "copy differs:\n%r\n%r" % (got[-300:], sent[-300:]))
        prefix = got[:len(got) - len(sent)]
        for line in prefix.split(b"\r\n")[:-1]:
            self.assertTrue(line.startswith(b"Received:") or line[:1] in (b" ", b"\t"), line)

    # ---- cases -------------------------------------------------------------

    def test_end_to_end_byte_for_byte(self):
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1)])
        mx = self.sink(MX1)
        long_line = "x" * 990
        body = ("Line one\r\n.starts with a dot\r\n..two dots\r\n.\r\n\r\n" + long_line +
                "\r\n\xe9t\xe9 in 8 bits\r\nlast\r\n")
        data = message("bytes", "").rstrip(b"\r\n") + b"\r\n\r\n" + body.encode("latin-1")
        self.submit("sender@src.test", ["rcpt@dest.test"], data)
        self.assertTrue(mx.wait_messages(1), self.log())
        m = mx.messages[0]
        self.assertEqual(m.mail_from, "sender@src.test")
        self.assertEqual(m.rcpt_tos, ["rcpt@dest.test"])
        self.assert_received_copy(m.content, data)
        self.wait_log_re(r": to=<rcpt@dest\.test>, relay=mx1\.dest\.test\[127\.0\.0\.11\]:%d, "
                         r"delay=[0-9.]+, delays=[0-9.]+/[0-9.]+/[0-9.]+/[0-9.]+, dsn=2\.0\.0, "
                         r"status=sent \(250 2\.0\.0 Ok: queued as S1\)" % self.port)

    def test_postmaster_and_long_lines_delivered(self):
        """Issue 13: RCPT TO:<postmaster> goes to postmaster@ the domain of
        myhostname (relay.test has two labels: itself) like any recipient,
        and a long line folded at acceptance goes out as it was queued."""
        self.world([MX("relay.test", 10, "mx1.relay.test"), A("mx1.relay.test", MX1)])
        mx = self.sink(MX1)
        body = b"<p>" + b"y" * 3000 + b"</p>\r\n"
        data = message("pm", "").rstrip(b"\r\n") + b"\r\n\r\n" + body
        self.submit("sender@src.test", ["postmaster"], data)
        self.assertTrue(mx.wait_messages(1), self.log())
        m = mx.messages[0]
        self.assertEqual(m.rcpt_tos, ["postmaster@relay.test"])
        for line in m.content.split(b"\r\n"):
            self.assertLessEqual(len(line), 998)
        self.assertTrue(m.content.replace(b"\r\n ", b"").endswith(data), m.content[-200:])
        self.wait_log_re(r": to=<postmaster@relay\.test>, relay=mx1\.relay\.test\[")

    def test_mx_failover(self):
        # mx1 (preferred) has no server: connection refused; mx2 takes it.
        self.world([MX("dest.test", 10, "mx1.dest.test"), MX("dest.test", 20, "mx2.dest.test"),
                    A("mx1.dest.test", MX1), A("mx2.dest.test", MX2)])
        mx2 = self.sink(MX2)
        self.submit("sender@src.test", ["rcpt@dest.test"], message("failover"))
        self.assertTrue(mx2.wait_messages(1), self.log())
        self.wait_log_re(r"to=<rcpt@dest\.test>, relay=mx2\.dest\.test\[127\.0\.0\.12\]:\d+, "
                         r".*status=sent")

    def test_4xx_greeting_goes_to_next_mx(self):
        self.world([MX("dest.test", 10, "mx1.dest.test"), MX("dest.test", 20, "mx2.dest.test"),
                    A("mx1.dest.test", MX1), A("mx2.dest.test", MX2)])
        mx1 = self.sink(MX1, greeting_code=421)
        mx2 = self.sink(MX2)
        self.submit("sender@src.test", ["rcpt@dest.test"], message("greeting"))
        self.assertTrue(mx2.wait_messages(1), self.log())
        self.assertGreaterEqual(mx1.connections, 1)
        self.assertEqual(mx1.messages, [])

    @unittest.skipUnless(IPV6, "no IPv6 loopback")
    def test_every_address_of_an_mx(self):
        # One MX host with an IPv4 address where nothing listens and an IPv6
        # address with the server: the second address of the same host.
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1),
                    AAAA("mx1.dest.test", "::1")])
        mx = self.sink("::1")
        self.submit("sender@src.test", ["rcpt@dest.test"], message("v6"))
        self.assertTrue(mx.wait_messages(1), self.log())
        self.wait_log_re(r"to=<rcpt@dest\.test>, relay=mx1\.dest\.test\[::1\]:\d+, .*status=sent")

    def test_tempfail_then_success(self):
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1)])
        mx = self.sink(MX1, tempfail_first=1)
        self.submit("sender@src.test", ["rcpt@dest.test"], message("retry"))
        self.wait_log_re(r"to=<rcpt@dest\.test>, .*dsn=4\.3\.0, status=deferred \(host "
                         r"mx1\.dest\.test\[127\.0\.0\.11\] said: 451 4\.3\.0 Temporary failure")
        self.assertTrue(mx.wait_messages(1, timeout=30), self.log())
        self.wait_log_re(r"to=<rcpt@dest\.test>, .*status=sent")

    def dsn_world(self, extra_records=(), config="", **mx_kw):
        """dest.test at MX1 (behaving as told), src.test (the sender's) at MX3."""
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1),
                    MX("src.test", 10, "mx.src.test"), A("mx.src.test", MX3)] +
                   list(extra_records), config)
        dest = self.sink(MX1, **mx_kw)
        src = self.sink(MX3)
        return dest, src

    def assert_dsn(self, dsn, status, rcpt, original_subject, diag=None):
        self.assertEqual(dsn.mail_from, "")
        self.assertEqual(dsn.rcpt_tos, ["sender@src.test"])
        text = dsn.content.decode("utf-8", "replace")
        self.assertIn("Content-Type: multipart/report; report-type=delivery-status;", text)
        self.assertIn("Content-Type: message/delivery-status", text)
        self.assertIn("Reporting-MTA: dns; relay.test", text)
        self.assertIn("Final-Recipient: rfc822; %s\r\n" % rcpt, text)
        self.assertIn("Action: failed\r\n", text)
        self.assertIn("Status: %s\r\n" % status, text)
        self.assertIn("Subject: %s\r\n" % original_subject, text)
        if diag:
            self.assertIn("Diagnostic-Code: smtp; " + diag, text)
        self.assertNotIn("\r\nHello.\r\n", text)  # headers only: no body

    def test_bounce_with_dsn(self):
        dest, src = self.dsn_world(reject=("nobody",))
        self.submit("sender@src.test", ["nobody@dest.test", "rcpt@dest.test"], message("bounce"))
        self.assertTrue(dest.wait_messages(1), self.log())
        self.assertTrue(src.wait_messages(1), self.log())
        self.assert_dsn(src.messages[0], "5.1.1", "nobody@dest.test", "bounce",
                        diag="550 5.1.1 <nobody@dest.test>: Recipient address rejected")
        self.assertEqual(dest.messages[0].rcpt_tos, ["rcpt@dest.test"])
        self.wait_log_re(r"to=<nobody@dest\.test>, .*dsn=5\.1\.1, status=bounced \(host "
                         r"mx1\.dest\.test\[127\.0\.0\.11\] said: 550 5\.1\.1")
        # The DSN itself goes out from the null sender and is never bounced back.
        self.wait_log_re(r"to=<sender@src\.test>, relay=mx\.src\.test.*status=sent")

    def test_no_dsn_to_null_sender(self):
        dest, src = self.dsn_world(reject=("nobody",))
        self.submit("", ["nobody@dest.test"], message("null"))
        self.wait_log_re(r"to=<nobody@dest\.test>, .*status=bounced")
        time.sleep(2)
        self.assertEqual(src.messages, [])

    def test_expiry_bounce(self):
        dest, src = self.dsn_world(config="maximal_queue_lifetime = 3s\n", tempfail_first=1000)
        self.submit("sender@src.test", ["rcpt@dest.test"], message("expire"))
        self.assertTrue(src.wait_messages(1, timeout=30), self.log())
        self.assert_dsn(src.messages[0], "4.4.7", "rcpt@dest.test", "expire")
        self.assertEqual(dest.messages, [])
        self.wait_log_re(r"to=<rcpt@dest\.test>, relay=none, .*dsn=4\.4\.7, status=bounced "
                         r"\(delivery time expired")

    def test_delay_warning_once_per_message(self):
        # delay_warning_time (RFC 3464 Action: delayed): one DSN per message,
        # for recipients with NOTIFY=DELAY or no NOTIFY; none for NEVER or
        # FAILURE, none to the null sender, and none again after a restart.
        dest, src = self.dsn_world(config="delay_warning_time = 2s\n"
                                          "maximal_queue_lifetime = 1d\n", tempfail_first=100000)
        rcpts = [("plain@dest.test", []), ("delay@dest.test", ["NOTIFY=DELAY"]),
                 ("never@dest.test", ["NOTIFY=NEVER"]), ("fail@dest.test", ["NOTIFY=FAILURE"])]
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.ehlo("app.test")
            self.assertTrue(c.has_extn("dsn"))
            for sender, to in (("sender@src.test", rcpts),
                               ("sender@src.test", rcpts[2:]),
                               ("", rcpts[:2])):
                self.assertEqual(c.mail(sender)[0], 250)
                for addr, opts in to:
                    self.assertEqual(c.rcpt(addr, opts)[0], 250)
                code, resp = c.data(message("delayed"))
                self.assertEqual(code, 250, resp)
        self.assertTrue(src.wait_messages(1, timeout=30), self.log())
        dsn = src.messages[0]
        self.assertEqual(dsn.mail_from, "")
        self.assertEqual(dsn.rcpt_tos, ["sender@src.test"])
        msg = email.message_from_bytes(dsn.content)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        status = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
        self.assertEqual(len(status), 1)
        blocks = status[0].get_payload()
        self.assertEqual(blocks[0]["Reporting-MTA"], "dns; relay.test")
        per_rcpt = blocks[1:]
        self.assertEqual(sorted(b["Final-Recipient"] for b in per_rcpt),
                         ["rfc822; delay@dest.test", "rfc822; plain@dest.test"])
        for b in per_rcpt:
            self.assertEqual(b["Action"], "delayed")
            self.assertEqual(b["Status"], "4.3.0")
            self.assertIn("451 4.3.0", b["Diagnostic-Code"])
            self.assertIsNotNone(b["Will-Retry-Until"])
        self.wait_log_re(r"sender delay notification: ")
        # More retries, then a restart: no second warning for any message.
        time.sleep(4)
        self.daemon.stop()
        self.daemon.start()
        self.daemon.wait_log("delivery started", timeout=5)
        retried = len(re.findall(r"to=<plain@dest\.test>, .*status=deferred", self.log()))
        deadline = time.time() + 20
        while time.time() < deadline and len(
                re.findall(r"to=<plain@dest\.test>, .*status=deferred", self.log())) < retried + 2:
            time.sleep(0.2)
        self.assertGreaterEqual(
            len(re.findall(r"to=<plain@dest\.test>, .*status=deferred", self.log())), retried + 2)
        time.sleep(1)
        self.assertEqual(len(src.messages), 1, [m.content[:300] for m in src.messages])
        self.assertEqual(dest.messages, [])

    def test_null_mx(self):
        dest, src = self.dsn_world(extra_records=[NULL_MX("null.test")])
        self.submit("sender@src.test", ["x@null.test"], message("nullmx"))
        self.assertTrue(src.wait_messages(1), self.log())
        self.assert_dsn(src.messages[0], "5.1.10", "x@null.test", "nullmx")
        self.wait_log_re(r"to=<x@null\.test>, relay=none, .*dsn=5\.1\.10, status=bounced "
                         r"\(Domain null\.test does not accept mail \(nullMX\)\)")

    def test_implicit_mx(self):
        self.world([A("implicit.test", MX2)])
        mx = self.sink(MX2)
        self.submit("sender@src.test", ["r@implicit.test"], message("implicit"))
        self.assertTrue(mx.wait_messages(1), self.log())
        self.wait_log_re(r"to=<r@implicit\.test>, relay=implicit\.test\[127\.0\.0\.12\]")

    def test_starttls_used_when_offered(self):
        leaf = self.ca.issue("mx1", ["mx1.dest.test"])
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1)])
        mx = self.sink(MX1, tls=(leaf.chain, leaf.key))
        self.submit("sender@src.test", ["rcpt@dest.test"], message("tls"))
        self.assertTrue(mx.wait_messages(1), self.log())
        self.assertTrue(mx.messages[0].tls)
        self.assertEqual(mx.starttls, 1)
        self.wait_log_re(r"TLS connection established to mx1\.dest\.test\[127\.0\.0\.11\]:\d+: "
                         r"TLSv1\.[23] with cipher \S+")

    def test_verified_tls(self):
        wrong = self.ca.issue("wrong", ["other.example"])
        good = self.ca.issue("good", ["mx2.dest.test"])
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1),
                    MX("ok.test", 10, "mx2.dest.test"), A("mx2.dest.test", MX2)],
                   "smtp_tls_security_level = verify\n")
        bad_mx = self.sink(MX1, tls=(wrong.chain, wrong.key))
        good_mx = self.sink(MX2, tls=(good.chain, good.key))
        self.submit("sender@src.test", ["rcpt@dest.test"], message("wrongname"))
        self.submit("sender@src.test", ["rcpt@ok.test"], message("rightname"))
        self.assertTrue(good_mx.wait_messages(1), self.log())
        self.wait_log_re(r"Verified TLS connection established to mx2\.dest\.test\[127\.0\.0\.12\]")
        self.wait_log_re(r"to=<rcpt@dest\.test>, .*dsn=4\.7\.5, status=deferred \(Server "
                         r"certificate not verified")
        self.assertEqual(bad_mx.messages, [])

    def test_pipelining(self):
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1)])
        mx = self.sink(MX1, pipelining=True)
        rcpts = ["a@dest.test", "b@dest.test", "c@dest.test"]
        self.submit("sender@src.test", rcpts, message("pipe"))
        self.assertTrue(mx.wait_messages(1), self.log())
        self.assertEqual(sorted(mx.messages[0].rcpt_tos), rcpts)
        self.assertGreaterEqual(mx.pipelined_groups, 1)

    def test_connection_reuse(self):
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1)],
                   "default_destination_concurrency_limit = 2\n")
        mx = self.sink(MX1)
        n = 20
        for i in range(n):
            self.submit("sender@src.test", ["r%d@dest.test" % i], message("reuse %d" % i))
        self.assertTrue(mx.wait_messages(n, timeout=60), self.log())
        # Many messages, few connections (at most 2 at a time, reused).
        self.assertLessEqual(mx.connections, 6, self.log())

    def test_stalling_server_defers(self):
        self.world([MX("dest.test", 10, "mx1.dest.test"), A("mx1.dest.test", MX1)],
                   "smtp_data_done_timeout = 2s\n")
        self.sink(MX1, stall="data")
        self.submit("sender@src.test", ["rcpt@dest.test"], message("stall"))
        self.wait_log_re(r"to=<rcpt@dest\.test>, .*dsn=4\.4\.2, status=deferred \(conversation "
                         r"with mx1\.dest\.test\[127\.0\.0\.11\] timed out while sending end of "
                         r"data")
        # Not lost: still in the queue, deferred.
        r = self.daemon.ctl("queue", "list")
        self.assertIn("rcpt@dest.test", r.stdout + r.stderr)

    def test_smtputf8_needed_but_not_offered(self):
        dest, src = self.dsn_world(smtputf8=False)
        data = message("utf8")
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.ehlo("app.test")
            if not c.has_extn("smtputf8"):
                self.skipTest("the submission server does not offer SMTPUTF8")
            c.sendmail("sender@src.test", ["j\u00f6rg@dest.test"], data,
                       mail_options=["SMTPUTF8"])
        self.wait_log_re(r"dsn=5\.6\.7, status=bounced \(SMTPUTF8 is required, but was not "
                         r"offered by host mx1\.dest\.test")
        self.assertEqual(dest.messages, [])


if __name__ == "__main__":
    unittest.main()
