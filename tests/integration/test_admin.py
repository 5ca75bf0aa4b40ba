"""Integration tests of queue administration: convoyctl queue list, summary,
show, retry, hold, release, delete, bounce, and pause/resume/status, against
the real convoyd with a queue built by the integration world: a DNS server
(world.py, dnsmasq), an MX that answers every RCPT with 451 (mail to
dest.test stays deferred), an MX that accepts (ok.test), and the sender's
own MX (src.test), where DSNs arrive.

PolicyDeferredTest adds a domain whose MTA-STS policy (served by nginx,
web.py) is in enforce mode while its MX shows a certificate for another
name: its mail is deferred by the policy, and list, summary and the filters
show the verdict (policy id and mode, which MX, what failed).
"""

import grp
import json
import os
import pwd
import re
import shutil
import smtplib
import stat
import subprocess
import tempfile
import threading
import time
import unittest

from convoy import CONVOYCTL, Daemon, free_port
from pki import CA
from sink import Sink
from web import Site, Web
import world
from world import DnsServer, MX, A, TXT

MX_FAIL = "127.0.0.21"
MX_OK = "127.0.0.22"
MX_SRC = "127.0.0.23"
MX_POL = "127.0.0.24"
SETPRIV = shutil.which("setpriv")
try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None
ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{16}$")


def message(subject, body="Hello.\r\n"):
    return ("From: Sender <sender@src.test>\r\n"
            "To: someone\r\n"
            "Subject: %s\r\n"
            "Message-ID: <%s.%f@src.test>\r\n"
            "\r\n%s" % (subject, re.sub(r"\W", "", subject), time.time(), body)).encode()


@world.needs("dnsmasq")
class AdminTest(unittest.TestCase):
    def setUp(self):
        # free_port: free on every test address (the MX hosts share
        # smtp_destination_port)
        self.port = free_port(MX_FAIL)
        self.dns = DnsServer([MX("dest.test", 10, "mx.dest.test"), A("mx.dest.test", MX_FAIL),
                              MX("ok.test", 10, "mx.ok.test"), A("mx.ok.test", MX_OK),
                              MX("src.test", 10, "mx.src.test"), A("mx.src.test", MX_SRC)]).start()
        self.fail_mx = Sink(MX_FAIL, self.port, tempfail_first=10 ** 9).start()
        self.ok_mx = Sink(MX_OK, self.port).start()
        self.src_mx = Sink(MX_SRC, self.port).start()
        self.sub_port = free_port()
        self.daemon = Daemon("myhostname = relay.test\n"
                             "smtpd_listen = 127.0.0.1:%d\n"
                             "dns_servers = %s\n"
                             "smtp_destination_port = %d\n"
                             "smtp_tls_security_level = none\n"
                             "minimal_backoff_time = 1h\n"
                             "maximal_backoff_time = 2h\n"
                             "smtp_connection_cache_time_limit = 1s\n"
                             % (self.sub_port, self.dns.server, self.port)).start()
        self.daemon.wait_log("delivery started", timeout=5)

    def tearDown(self):
        try:
            self.daemon.stop()
        except Exception:
            pass
        log = self.daemon.log_text()
        self.daemon.close()
        for s in (self.fail_mx, self.ok_mx, self.src_mx):
            s.stop()
        self.dns.close()
        # Under the sanitizer build, the daemon reports here.
        self.assertNotIn("Sanitizer", log)
        self.assertNotIn("runtime error", log)

    # ---- helpers ------------------------------------------------------------

    def log(self):
        return self.daemon.log_text()

    def submit(self, sender, rcpts, data):
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.ehlo("app.test")
            c.sendmail(sender, rcpts, data)

    def ctl(self, *args, code=0, input=None):
        r = self.daemon.ctl(*args, input=input)
        if code is not None:
            self.assertEqual(r.returncode, code, "convoyctl %s: %s%s\n%s" % (
                " ".join(args), r.stdout, r.stderr, self.log()[-3000:]))
        return r

    def listing(self, *filters):
        """list --json, parsed: {id: object}."""
        out = self.ctl("queue", "list", "--json", *filters).stdout
        objs = [json.loads(line) for line in out.splitlines() if line.strip()]
        for o in objs:
            self.assertEqual(o["version"], 1)
        return {o["id"]: o for o in objs}

    def states(self):
        return {i: [r["state"] for r in o["recipients"]] for i, o in self.listing().items()}

    def wait_for(self, cond, what, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.1)
        self.fail("%s did not happen:\n%s" % (what, self.log()[-4000:]))

    def deferred_queue(self, n=3):
        """n messages to dest.test, all deferred; returns their IDs."""
        for i in range(n):
            self.submit("sender@src.test", ["user%d@dest.test" % i], message("deferred %d" % i))
        self.wait_for(lambda: len(self.listing("--state", "deferred")) == n, "deferral")
        return sorted(self.listing("--state", "deferred"))

    # ---- looking --------------------------------------------------------------

    def test_list_filters_summary_show(self):
        ids = self.deferred_queue(3)
        self.ctl("queue", "hold", ids[0])
        # list: plain, JSON, count, filters.
        plain = self.ctl("queue", "list").stdout
        self.assertIn("-- 3 messages", plain)
        self.assertRegex(plain, r"user1@dest\.test:deferred\(4\.3\.0 host mx\.dest\.test"
                                r"\[127\.0\.0\.21\] said: 451 4\.3\.0 Temporary failure, try "
                                r"again later \(in reply to RCPT TO command\)\)")
        self.assertIn("user0@dest.test:held(", plain)
        objs = self.listing()
        self.assertEqual(sorted(objs), ids)
        r = objs[ids[1]]["recipients"][0]
        self.assertEqual(r["state"], "deferred")
        self.assertEqual(r["attempts"], 1)
        self.assertEqual(r["last_result"]["smtp_code"], 451)
        self.assertEqual(r["last_result"]["mx"], "mx.dest.test")
        self.assertEqual(objs[ids[1]]["sender"], "sender@src.test")
        self.assertEqual(self.ctl("queue", "list", "--count").stdout.strip(), "3")
        self.assertEqual(sorted(self.listing("--state", "held")), [ids[0]])
        self.assertEqual(sorted(self.listing("--state", "deferred")), ids[1:])
        self.assertEqual(sorted(self.listing("--to", "^USER2@")), [ids[2]])
        self.assertEqual(sorted(self.listing("--from", "sender@SRC")), ids)
        self.assertEqual(self.listing("--from", "^other@"), {})
        self.assertEqual(sorted(self.listing("--domain", "DEST.test")), ids)
        self.assertEqual(self.listing("--domain", "ok.test"), {})
        self.assertEqual(sorted(self.listing("--reason", "4\\.3\\.0 .*try again")), ids)
        self.assertEqual(self.listing("--reason", "certificate"), {})
        self.assertEqual(self.listing("--older", "1h"), {})
        self.assertEqual(sorted(self.listing("--younger", "1h")), ids)
        self.assertEqual(self.ctl("queue", "list", "--state", "nonsense", code=2).returncode, 2)
        self.assertEqual(self.ctl("queue", "list", "--to", "(", code=2).returncode, 2)
        self.assertEqual(self.ctl("queue", "list", "--older", "5x", code=2).returncode, 2)
        counted = json.loads(self.ctl("queue", "list", "--count", "--json").stdout)
        self.assertEqual(counted["messages"], 3)

        # summary: qshape columns, all three young.
        s = json.loads(self.ctl("queue", "summary", "--json").stdout)
        self.assertEqual(s["columns"], ["5", "10", "20", "40", "80", "160", "320", "640",
                                        "1280", "1280+"])
        self.assertEqual(s["total"]["total"], 3)
        self.assertEqual(s["total"]["buckets"][0], 3)
        self.assertEqual([(r["domain"], r["total"]) for r in s["rows"]], [("dest.test", 3)])
        self.assertEqual(s["top_deferral_reasons"][0]["recipients"], 2)
        self.assertIn("451 4.3.0", s["top_deferral_reasons"][0]["reason"])
        text = self.ctl("queue", "summary").stdout
        self.assertRegex(text, r"TOTAL +3 +3 +0")
        self.assertRegex(text, r"dest\.test +3 +3")
        self.assertIn("top deferral reasons", text)
        s = json.loads(self.ctl("queue", "summary", "--by", "reason", "--json").stdout)
        self.assertEqual(sum(r["total"] for r in s["rows"]), 3)

        # show: envelope, recipients, the message; headers or body alone.
        out = self.ctl("queue", "show", ids[1]).stdout
        self.assertIn("sender: <sender@src.test>", out)
        self.assertRegex(out, r"user1@dest\.test: deferred, 1 attempt, next attempt ")
        self.assertIn("451 4.3.0 Temporary failure", out)
        # (convoyctl writes the message's CRLFs; text mode reads them as \n.)
        self.assertIn("Subject: deferred 1\n", out)
        self.assertIn("\nHello.\n", out)
        hdrs = self.ctl("queue", "show", ids[1], "--headers").stdout
        self.assertIn("Subject: deferred 1", hdrs)
        self.assertNotIn("Hello.", hdrs)
        body = self.ctl("queue", "show", ids[1], "--body").stdout
        self.assertTrue(body.endswith("--- body ---\nHello.\n"), body)
        j = json.loads(self.ctl("queue", "show", ids[1], "--json").stdout)
        self.assertEqual(j["id"], ids[1])
        self.assertTrue(j["message"].endswith("\r\n\r\nHello.\r\n"))
        self.assertEqual(self.ctl("queue", "show", "0000000000000000", code=1).returncode, 1)
        self.assertEqual(self.ctl("queue", "show", "nonsense", code=2).returncode, 2)

    # ---- acting ---------------------------------------------------------------

    def test_hold_release_retry_dry_run_stdin(self):
        ids = self.deferred_queue(4)
        before = self.states()
        # --dry-run changes nothing.
        r = self.ctl("queue", "hold", "--domain", "dest.test", "--dry-run")
        self.assertIn("Would hold 4 messages.", r.stdout)
        self.assertEqual(self.states(), before)
        # --all without --yes is refused.
        r = self.ctl("queue", "hold", "--all", code=2)
        self.assertIn("--yes", r.stderr)
        self.assertEqual(self.states(), before)
        # IDs from standard input (queue list output piped in).
        listing = self.ctl("queue", "list", "--to", "user[01]@").stdout
        r = self.ctl("queue", "hold", "-", input=listing)
        self.assertEqual(r.stdout.strip(), "Held 2 messages.")
        self.assertEqual(sorted(self.listing("--state", "held")), ids[:2])
        # And JSON lines.
        r = self.ctl("queue", "hold", "-",
                     input=self.ctl("queue", "list", "--json", "--to", "user2@").stdout)
        self.assertEqual(r.stdout.strip(), "Held 1 message.")
        r = self.ctl("queue", "hold", "--all", "--yes")
        self.assertEqual(r.stdout.strip(), "Held 4 messages.")
        self.assertEqual(sorted(self.listing("--state", "held")), ids)
        r = self.ctl("queue", "release", ids[0], ids[1])
        self.assertEqual(r.stdout.strip(), "Released 2 messages.")
        self.assertEqual(sorted(self.listing("--state", "held")), ids[2:])
        r = self.ctl("queue", "release", "--state", "held")
        self.assertEqual(r.stdout.strip(), "Released 2 messages.")

        def settled(want):
            rc = self.listing()[ids[3]]["recipients"][0]
            return rc["attempts"] == want and rc["state"] == "deferred"

        # A message released from hold is due at once: its second attempt
        # must be over before the retry, or the retry would find it in
        # flight (or still due) and the count below would race it.
        self.wait_for(lambda: settled(2), "the attempt after release")
        # retry: a new attempt now (the backoff is an hour).
        r = self.ctl("queue", "retry", ids[3])
        self.assertEqual(r.stdout.strip(), "Scheduled 1 message for delivery now.")
        self.wait_for(lambda: settled(3), "retry")
        # show keeps the attempt history: the earlier result and the last.
        j = json.loads(self.ctl("queue", "show", ids[3], "--json").stdout)
        hist = j["recipients"][0]["history"]
        self.assertEqual(len(hist), j["recipients"][0]["attempts"] - 1)
        self.assertEqual(hist[0]["smtp_code"], 451)
        out = self.ctl("queue", "show", ids[3]).stdout
        attempts = int(re.search(r"deferred, (\d+) attempts", out).group(1))
        self.assertEqual(out.count("451 4.3.0 host mx.dest.test"), attempts, out)
        # An unknown ID is an error; a bad one a usage error.
        r = self.ctl("queue", "hold", "0000000000000000", code=1)
        self.assertIn("no such message", r.stderr)
        self.ctl("queue", "hold", "bogus", code=2)
        self.ctl("queue", "hold", code=2)

    def test_delete_and_bounce(self):
        ids = self.deferred_queue(3)
        r = self.ctl("queue", "delete", ids[0])
        self.assertEqual(r.stdout.strip(), "Deleted 1 message.")
        self.assertNotIn(ids[0], self.listing())
        r = self.ctl("queue", "bounce", ids[1], "--why", "recipient left the company")
        self.assertEqual(r.stdout.strip(), "Bounced 1 message (1 recipient).")
        self.assertTrue(self.src_mx.wait_messages(1), self.log())
        dsn = self.src_mx.messages[0]
        self.assertEqual(dsn.mail_from, "")
        self.assertEqual(dsn.rcpt_tos, ["sender@src.test"])
        text = dsn.content.decode("utf-8", "replace")
        self.assertIn("Final-Recipient: rfc822; user1@dest.test\r\n", text)
        self.assertIn("Action: failed\r\n", text)
        self.assertIn("Status: 5.0.0\r\n", text)
        self.assertIn("recipient left the company", text)
        self.assertIn("Subject: deferred 1\r\n", text)
        self.assertNotIn(ids[1], self.listing())
        self.assertRegex(self.log(), r"%s: to=<user1@dest\.test>, relay=none, .*dsn=5\.0\.0, "
                                     r"status=bounced \(bounced by the mail administrator: "
                                     r"recipient left the company\)" % ids[1])
        # Only the one DSN: delete sent none.
        time.sleep(1)
        self.assertEqual(len(self.src_mx.messages), 1)
        self.assertEqual(sorted(self.listing()), [ids[2]])

    def test_bounce_null_sender(self):
        # A bounce is never bounced: the recipient is marked bounced, no DSN.
        self.submit("", ["user@dest.test"], message("null sender"))
        self.wait_for(lambda: len(self.listing("--state", "deferred")) == 1, "deferral")
        (qid,) = self.listing()
        r = self.ctl("queue", "bounce", "--from", "^$")
        self.assertEqual(r.stdout.strip(), "Bounced 1 message (1 recipient).")
        self.assertEqual(self.listing(), {})
        time.sleep(1)
        self.assertEqual(self.src_mx.messages, [])

    def test_daemon_down(self):
        ids = self.deferred_queue(1)
        self.daemon.stop()
        self.assertEqual(sorted(self.listing()), ids)
        self.ctl("queue", "summary")
        self.ctl("queue", "show", ids[0])
        r = self.ctl("queue", "hold", ids[0], code=3)
        self.assertIn("convoyd is not running", r.stderr)
        self.assertIn("needs convoyd", r.stderr)
        self.ctl("queue", "hold", ids[0], "--dry-run")
        self.ctl("pause", "--reason", "x", code=3)
        self.ctl("status", code=3)

    def test_permissions(self):
        qdir = self.daemon.queue_dir
        mode = lambda p: stat.S_IMODE(os.stat(os.path.join(qdir, p)).st_mode)
        self.assertEqual(mode("."), 0o750)
        self.assertEqual(mode("control.sock"), 0o660)
        self.assertEqual(mode("queue.lmdb") & 0o040, 0o040)
        self.assertEqual(mode("queue.lmdb-lock") & 0o060, 0o060)

    # ---- pause, resume, status ---------------------------------------------------

    def test_pause_resume(self):
        r = self.ctl("pause", "--reason", "maintenance")
        self.assertIn("paused", r.stdout)
        self.submit("sender@src.test", ["a@ok.test"], message("paused"))
        time.sleep(2)
        self.assertEqual(self.ok_mx.messages, [])
        self.assertEqual([o["recipients"][0]["state"] for o in self.listing().values()],
                         ["queued"])
        st = json.loads(self.ctl("status", "--json").stdout)
        self.assertEqual(st["paused"][0]["reason"], "maintenance")
        self.assertIsNone(st["paused"][0]["domain"])
        self.assertEqual(st["queue"]["messages"], 1)
        # Kept across reload.
        self.ctl("reload")
        st = json.loads(self.ctl("status", "--json").stdout)
        self.assertEqual(len(st["paused"]), 1)
        r = self.ctl("resume")
        self.assertIn("Resumed 1 pause.", r.stdout)
        self.assertTrue(self.ok_mx.wait_messages(1, timeout=20), self.log())

        # One domain: ok.test waits, the sender's domain does not.
        self.ctl("pause", "--domain", "ok.test", "--reason", "their MX is moving")
        self.submit("sender@src.test", ["b@ok.test"], message("domain paused"))
        self.submit("sender@src.test", ["c@src.test"], message("not paused"))
        self.assertTrue(self.src_mx.wait_messages(1, timeout=20), self.log())
        time.sleep(1)
        self.assertEqual(len(self.ok_mx.messages), 1)
        only = list(self.listing().values())
        self.assertEqual(len(only), 1)
        self.assertEqual(only[0]["recipients"][0]["state"], "queued")
        self.assertEqual(only[0]["recipients"][0]["attempts"], 0)
        text = self.ctl("status").stdout
        self.assertIn("ok.test", text)
        self.assertIn("their MX is moving", text)
        r = self.ctl("resume", "--domain", "ok.test")
        self.assertIn("Resumed 1 pause.", r.stdout)
        self.assertTrue(self.ok_mx.wait_messages(2, timeout=20), self.log())

        # A pause with an end.
        self.ctl("pause", "--for", "2s", "--reason", "short")
        self.submit("sender@src.test", ["d@ok.test"], message("short pause"))
        time.sleep(1)
        self.assertEqual(len(self.ok_mx.messages), 2)
        self.assertTrue(self.ok_mx.wait_messages(3, timeout=20), self.log())
        self.ctl("pause", code=2)
        self.assertIn("was not paused", self.ctl("resume").stdout)

    # ---- pauses across restarts --------------------------------------------------

    def restart(self, crash=False):
        """Stop convoyd (SIGKILL with crash) and start it again on the same
        queue; returns the log written since."""
        if crash:
            self.daemon.proc.kill()
            self.daemon.proc.wait()
        else:
            self.assertEqual(self.daemon.stop(), 0)
        mark = len(self.log())
        self.daemon.start()
        self.daemon.wait_log("delivery started", timeout=5)
        return lambda: self.log()[mark:]

    def test_pause_survives_restart(self):
        pauses = os.path.join(self.daemon.queue_dir, "pauses")
        r = self.ctl("pause", "--domain", "ok.test", "--reason", "their MX is moving")
        self.assertEqual(r.stderr, "")
        self.ctl("pause", "--domain", "src.test", "--for", "2s", "--reason", "short one")
        paused_at = time.time()
        # On disk before convoyctl was answered, readable by the group.
        self.assertEqual(stat.S_IMODE(os.stat(pauses).st_mode), 0o640)
        with open(pauses) as f:
            text = f.read()
        self.assertTrue(text.startswith("convoy-pauses 1\n"), text)
        self.assertRegex(text, r"\nok\.test \d+ 0 their MX is moving\n")
        self.assertRegex(text, r"\nsrc\.test \d+ \d+ short one\n")
        self.submit("sender@src.test", ["a@ok.test"], message("held back"))
        self.wait_for(lambda: len(self.listing()) == 1, "queueing")

        # A crash: convoyd gets no chance to save anything now.
        time.sleep(max(0, paused_at + 2.5 - time.time()))
        since = self.restart(crash=True)
        self.assertIn("pause of src.test ended while convoyd was not running: short one",
                      since())
        self.assertIn("delivery to ok.test paused (restored from %s): their MX is moving"
                      % pauses, since())
        st = json.loads(self.ctl("status", "--json").stdout)
        self.assertEqual([(p["domain"], p["reason"], p["until"]) for p in st["paused"]],
                         [("ok.test", "their MX is moving", None)])

        def on_disk():
            with open(pauses) as f:
                return f.read()
        # The ended pause leaves the file too; the other stays.
        self.wait_for(lambda: "src.test" not in on_disk(), "rewrite without the ended pause")
        self.assertIn("\nok.test ", on_disk())
        self.assertIn("paused: ok.test until resumed: their MX is moving",
                      self.ctl("status").stdout)
        # The expired pause is gone: mail to src.test goes out at once.
        self.submit("sender@src.test", ["b@src.test"], message("not paused any more"))
        self.assertTrue(self.src_mx.wait_messages(1, timeout=20), since())
        # The paused domain's mail was not tried: nothing at its MX, no
        # attempt in the queue or the log.
        time.sleep(2)
        self.assertEqual(self.ok_mx.messages, [])
        (only,) = self.listing().values()
        self.assertEqual(only["recipients"][0]["address"], "a@ok.test")
        self.assertEqual(only["recipients"][0]["state"], "queued")
        self.assertEqual(only["recipients"][0]["attempts"], 0)
        self.assertNotIn("to=<a@ok.test>", self.log())

        # An orderly restart keeps it as well; resume lets the mail go.
        since = self.restart()
        self.assertIn("delivery to ok.test paused (restored from", since())
        time.sleep(1)
        self.assertEqual(self.ok_mx.messages, [])
        r = self.ctl("resume", "--domain", "ok.test")
        self.assertEqual(r.stdout.strip(), "Resumed 1 pause.")
        self.assertTrue(self.ok_mx.wait_messages(1, timeout=20), self.log())
        self.assertEqual(self.ok_mx.messages[0].rcpt_tos, ["a@ok.test"])
        with open(pauses) as f:
            self.assertNotIn("ok.test", f.read())
        since = self.restart()
        self.assertNotIn("restored from", since())
        self.assertEqual(json.loads(self.ctl("status", "--json").stdout)["paused"], [])

    def test_pause_file_damaged(self):
        pauses = os.path.join(self.daemon.queue_dir, "pauses")
        self.assertEqual(self.daemon.stop(), 0)
        now_ms = int(time.time() * 1000)
        with open(pauses, "w") as f:
            f.write("convoy-pauses 1\n"
                    "ok.test %d 0 kept\n"
                    "src.test yesterday 0 broken line\n"
                    "dest.test %d %d ends before it starts\n" % (now_ms, now_ms, now_ms - 5))
        mark = len(self.log())
        self.daemon.start()
        self.daemon.wait_log("delivery started", timeout=5)
        since = self.log()[mark:]
        self.assertIn("%s:3: bad start time" % pauses, since)
        self.assertIn("%s:4: the pause ends before it starts" % pauses, since)
        st = json.loads(self.ctl("status", "--json").stdout)
        self.assertEqual([p["domain"] for p in st["paused"]], ["ok.test"])
        # The damaged lines cost only their own pauses.
        self.submit("sender@src.test", ["c@src.test"], message("src not paused"))
        self.submit("sender@src.test", ["d@ok.test"], message("ok paused"))
        self.assertTrue(self.src_mx.wait_messages(1, timeout=20), self.log())
        time.sleep(1)
        self.assertEqual(self.ok_mx.messages, [])

        # Not a pause file at all: reported, ignored, convoyd runs.
        self.assertEqual(self.daemon.stop(), 0)
        with open(pauses, "wb") as f:
            f.write(b"\x00\xff garbage\n")
        mark = len(self.log())
        self.daemon.start()
        self.daemon.wait_log("delivery started", timeout=5)
        self.assertIn("%s:1: control character in the line" % pauses, self.log()[mark:])
        self.assertEqual(json.loads(self.ctl("status", "--json").stdout)["paused"], [])
        # (Mail given back during the pause waits for its recheck: now.)
        self.ctl("queue", "retry", "--all", "--yes")
        self.assertTrue(self.ok_mx.wait_messages(1, timeout=20), self.log())
        # The next change writes a good file again.
        self.ctl("pause", "--domain", "dest.test", "--reason", "fresh")
        with open(pauses) as f:
            self.assertRegex(f.read(), r"^convoy-pauses 1\n(#.*\n)*dest\.test \d+ 0 fresh\n$")
        self.ctl("pause", "--domain", "bad domain", "--reason", "x", code=1)

    # ---- who may use it -------------------------------------------------------

    def as_user(self, *args, groups=None):
        """convoyctl as nobody, without any group, or with the given ones."""
        cmd = [SETPRIV, "--reuid=%d" % NOBODY.pw_uid, "--regid=%d" % NOBODY.pw_gid]
        cmd += ["--groups=" + ",".join(str(g) for g in groups)] if groups else ["--clear-groups"]
        cmd += [CONVOYCTL, "-c", self.daemon.conf_path] + list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    @unittest.skipUnless(os.geteuid() == 0 and SETPRIV and NOBODY,
                         "needs root, setpriv(1) and the user nobody to switch users")
    def test_access_control(self):
        # Let nobody reach the configuration; queue_directory stays 0750.
        os.chmod(self.daemon.dir, 0o755)
        os.chmod(self.daemon.conf_path, 0o644)
        qdir = self.daemon.queue_dir
        sock = os.path.join(qdir, "control.sock")
        st = os.stat(sock)
        group = grp.getgrgid(st.st_gid).gr_name
        self.assertEqual(st.st_gid, os.stat(qdir).st_gid)
        self.submit("sender@src.test", ["x@dest.test"], message("for listing"))
        self.wait_for(lambda: len(self.listing("--state", "deferred")) == 1, "deferral")
        # The MTA-STS cache has the queue's modes.
        mode = lambda p: stat.S_IMODE(os.stat(os.path.join(qdir, p)).st_mode)
        self.assertEqual(mode("sts.lmdb"), 0o640)
        self.assertEqual(mode("sts.lmdb-lock"), 0o660)

        # Outside the group: a clear refusal, no raw errno.
        want = ("convoyctl: permission denied on %s: run as root or as a member of group %s "
                "(only they may control convoyd)\n" % (sock, group))
        for args in (("status",), ("pause", "--reason", "x"), ("reload",),
                     ("queue", "retry", "0000000000000000")):
            r = self.as_user(*args)
            self.assertEqual(r.returncode, 1, r)
            self.assertEqual(r.stderr, want)
        r = self.as_user("queue", "list")
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("only root and members of the daemon's group may read the queue", r.stderr)
        self.assertEqual(json.loads(self.ctl("status", "--json").stdout)["paused"], [])

        # A member of the group: control, the queue and the policy cache.
        r = self.as_user("status", "--json", groups=[st.st_gid])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(json.loads(r.stdout)["running"])
        r = self.as_user("pause", "--domain", "ok.test", "--reason", "by a member",
                         groups=[st.st_gid])
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        r = self.as_user("queue", "list", "--count", groups=[st.st_gid])
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "1"), r.stderr)
        r = self.as_user("sts", "list", groups=[st.st_gid])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.as_user("sts", "show", "dest.test", groups=[st.st_gid])
        self.assertNotIn("ermission denied", r.stderr)

    # ---- concurrency ------------------------------------------------------------

    def test_admin_while_mail_flows(self):
        n = 200
        errors = []

        def submit_all():
            try:
                with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=30) as c:
                    c.ehlo("app.test")
                    for i in range(n):
                        c.sendmail("sender@src.test", ["r%d@ok.test" % i],
                                   message("flow %d" % i))
            except Exception as e:  # reported below
                errors.append(e)

        t = threading.Thread(target=submit_all)
        t.start()
        rounds = 0
        while t.is_alive() or rounds < 3:
            for args in (("hold", "--domain", "ok.test"), ("release", "--state", "held"),
                         ("retry", "--all", "--yes"), ("hold", "--all", "--yes"),
                         ("release", "--all", "--yes")):
                r = self.ctl("queue", *args, code=None)
                self.assertIn(r.returncode, (0, 1), r.stderr)  # 1: none left to act on
            rounds += 1
        t.join()
        self.assertEqual(errors, [])
        self.ctl("queue", "release", "--all", "--yes")
        self.assertTrue(self.ok_mx.wait_messages(n, timeout=120),
                        "%d of %d delivered\n%s" % (len(self.ok_mx.messages), n,
                                                    self.log()[-3000:]))
        self.wait_for(lambda: self.ctl("queue", "list", "--count").stdout.strip() == "0",
                      "empty queue", timeout=30)
        time.sleep(1)
        got = sorted(m.rcpt_tos[0] for m in self.ok_mx.messages)
        self.assertEqual(got, sorted("r%d@ok.test" % i for i in range(n)))



@world.needs("dnsmasq", "nginx")
class PolicyDeferredTest(unittest.TestCase):
    """pol.test: MTA-STS enforce, id pol1; its MX presents a certificate for
    another name, so Convoy must not deliver and says why."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="convoy-adm-sts-")
        os.chmod(self.tmp, 0o755)  # nginx workers may run as another user
        self.web = self.dns = self.mx = self.daemon = None
        try:
            ca = CA(os.path.join(self.tmp, "pki"))
            policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.pol.test\r\nmax_age: 86400\r\n"
            self.web = Web(self.tmp, [Site("pol.test", ca.issue("web", ["mta-sts.pol.test"]),
                                           body=policy)]).start()
            wrong = ca.issue("mx", ["mx.other.test"])
            port = free_port(MX_POL)
            self.mx = Sink(MX_POL, port, tls=(wrong.chain, wrong.key)).start()
            os.makedirs(os.path.join(self.tmp, "dns"))
            self.dns = DnsServer([TXT("_mta-sts.pol.test", "v=STSv1; id=pol1"),
                                  A("mta-sts.pol.test", "127.0.0.1"),
                                  MX("pol.test", 10, "mx.pol.test"), A("mx.pol.test", MX_POL)],
                                 workdir=os.path.join(self.tmp, "dns")).start()
            self.sub_port = free_port()
            self.daemon = Daemon("myhostname = relay.test\n"
                                 "smtpd_listen = 127.0.0.1:%d\n"
                                 "dns_servers = %s\n"
                                 "smtp_destination_port = %d\n"
                                 "smtp_tls_CAfile = %s\n"
                                 "sts_policy_https_port = %d\n"
                                 "minimal_backoff_time = 1h\n"
                                 "maximal_backoff_time = 2h\n"
                                 % (self.sub_port, self.dns.server, port, ca.cert,
                                    self.web.port)).start()
        except BaseException:
            self.tearDown()
            raise

    def tearDown(self):
        if self.daemon:
            try:
                self.daemon.stop()
            except Exception:
                pass
            self.daemon.close()
        if self.mx:
            self.mx.stop()
        if self.web:
            self.web.stop()
        if self.dns:
            self.dns.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_policy_deferred_domain(self):
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=10) as c:
            c.sendmail("sender@src.test", ["user@pol.test"], message("policy"))
        deadline = time.time() + 30
        objs = {}
        while time.time() < deadline:
            out = self.daemon.ctl("queue", "list", "--json", "--state", "deferred").stdout
            objs = [json.loads(line) for line in out.splitlines() if line.strip()]
            if objs:
                break
            time.sleep(0.2)
        self.assertEqual(len(objs), 1, self.daemon.log_text())
        r = objs[0]["recipients"][0]
        last = r["last_result"]
        self.assertEqual(last["sts_mode"], "enforce")
        self.assertEqual(last["sts_id"], "pol1")
        self.assertEqual(last["mx"], "mx.pol.test")
        self.assertTrue(last["dsn"].startswith("4.7."), last)
        self.assertIn("sts=enforce id=pol1", r["reason"])
        self.assertEqual(self.mx.messages, [])
        # The filters and the summary see the verdict.
        sel = self.daemon.ctl("queue", "list", "--reason", "sts=enforce id=pol1", "--count")
        self.assertEqual(sel.stdout.strip(), "1")
        plain = self.daemon.ctl("queue", "list").stdout
        self.assertIn("user@pol.test:deferred(4.7.", plain)
        self.assertIn("sts=enforce id=pol1", plain)
        summary = json.loads(self.daemon.ctl("queue", "summary", "--json").stdout)
        self.assertIn("sts=enforce id=pol1", summary["top_deferral_reasons"][0]["reason"])
        show = self.daemon.ctl("queue", "show", objs[0]["id"]).stdout
        self.assertIn("mta-sts=enforce id=pol1", show)


if __name__ == "__main__":
    unittest.main()
