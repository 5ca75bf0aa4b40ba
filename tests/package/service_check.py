"""service_check.py - inside the scratch root of test-package.sh: run the
installed convoyd as the package runs it and check that mail flows.

Two ways, each with the packaged /etc/convoy/convoy.conf (mail_owner =
convoy, smtpd_listen = 127.0.0.1:25, queue in /var/spool/convoy) plus a
relayhost pointing at an aiosmtpd sink:
  root: started as root, it binds port 25 and drops to convoy;
  unit: started as convoy with only CAP_NET_BIND_SERVICE (setpriv), as the
        systemd unit starts it.
Each checks /proc/PID/status, one message from submission to the sink, and
/metrics with promtool.
"""

import os
import pwd
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sink import Sink  # noqa: E402

PROMTOOL = "/usr/local/lib/convoy-tools/promtool"


def wait_ready(log_path, port, proc, timeout=20):
    """Until the log says the daemon started (after any change of user) and
    the port answers."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("convoyd exited with %s" % proc.returncode)
        with open(log_path, errors="replace") as f:
            started = "daemon started" in f.read()
        try:
            if started:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("convoyd did not start on port %d" % port)


def status_ids(pid):
    ids = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "CapEff"):
                ids[k] = v.split()
    return ids


def run(mode, sink):
    pw = pwd.getpwnam("convoy")
    cmd = ["/usr/sbin/convoyd", "-f", "-c", "/etc/convoy/convoy.conf",
           "-o", "relayhost=[127.0.0.1]:%d" % sink.port,
           "-o", "smtp_tls_security_level=none",
           "-o", "metrics_listen=127.0.0.1:9125",
           "-o", "dns_servers=127.0.0.1:53", "-o", "dns_timeout=1s", "-o", "dns_tries=1"]
    if mode == "unit":
        cmd = ["setpriv", "--reuid=convoy", "--regid=convoy", "--init-groups",
               "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"] + cmd
    log_path = "/tmp/convoyd-%s.log" % mode
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        wait_ready(log_path, 25, proc)
        ids = status_ids(proc.pid)
        assert ids["Uid"] == [str(pw.pw_uid)] * 4, ids
        assert ids["Gid"] == [str(pw.pw_gid)] * 4, ids
        before = len(sink.messages)
        with smtplib.SMTP("127.0.0.1", 25, timeout=10) as c:
            c.ehlo("app.test")
            c.sendmail("app@src.test", ["someone@dest.test"],
                       b"Subject: packaged\r\n\r\nFrom the package test (%s).\r\n" % mode.encode())
        sink.wait_messages(before + 1, timeout=30)
        assert sink.messages[-1].rcpt_tos == ["someone@dest.test"], sink.messages[-1]
        text = urllib.request.urlopen("http://127.0.0.1:9125/metrics", timeout=10).read().decode()
        assert "convoy_messages_accepted_total 1" in text, text[:2000]
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        # Nothing in the spool is root's.
        for d, _, files in os.walk("/var/spool/convoy"):
            for p in [d] + [os.path.join(d, f) for f in files]:
                assert os.lstat(p).st_uid == pw.pw_uid, p
        proc.terminate()
        assert proc.wait(30) == 0, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        with open("/tmp/convoyd-%s.log" % mode) as f:
            sys.stdout.write(f.read())
    print("service_check: %s: convoyd ran as convoy on port 25 and delivered" % mode)


def main():
    sink = Sink("127.0.0.1", 2526).start()
    try:
        for mode in sys.argv[1:] or ["root", "unit"]:
            run(mode, sink)
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
