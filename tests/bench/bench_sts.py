"""bench_sts.py - delivery throughput of convoyd with and without an MTA-STS
enforce policy, end to end on loopback, and the number of policy fetches a
burst costs.

usage: /usr/bin/python3 tests/bench/bench_sts.py BUILD_DIR [MESSAGES] [RESULTS_FILE]

The world is the integration tests' (tests/integration): dnsmasq answers the
MX, A and _mta-sts TXT records, nginx serves the policy of enforce.test over
HTTPS, and one aiosmtpd sink (STARTTLS with a certificate from the test CA
naming mx.enforce.test and mx.plain.test) is the MX of both domains:

  plain.test    no policy: opportunistic TLS (STARTTLS, certificate not checked)
  enforce.test  mode enforce, mx.enforce.test: verified TLS on every connection

smtp-source (postfix package) submits MESSAGES messages (default 10000) of
1 KiB over 20 sessions to a fresh convoyd for each domain (ROUNDS=N in the
environment: N rounds, alternating which domain goes first); the rate is
messages delivered ("status=sent" lines) over the time from the first
submission to the last delivery. Both runs use the same sink, so they differ
only by the policy (lookup, TXT check, certificate verification).
"""

import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from convoy import Daemon, free_port  # noqa: E402
from pki import CA  # noqa: E402
from sink import Sink  # noqa: E402
from web import Site, Web  # noqa: E402
from world import A, MX, TXT, DnsServer, free_udp_tcp_port  # noqa: E402

MX_IP = "127.0.0.90"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.enforce.test\r\nmax_age: 86400\r\n"


def run(daemon, port, domain, n, timeout=600):
    log = daemon.log_path
    start = time.time()
    subprocess.run(["smtp-source", "-c", "-l", "1024", "-s", "20", "-m", str(n),
                    "-f", "bench@src.test", "-t", "rcpt@" + domain, "127.0.0.1:%d" % port],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    deadline = start + timeout
    got = 0
    while time.time() < deadline:
        with open(log, "rb") as f:
            got = f.read().count(b"status=sent")
        if got >= n:
            break
        time.sleep(0.1)
    return time.time() - start, got


def main(argv):
    build = argv[1]
    n = int(argv[2]) if len(argv) > 2 else 10000
    out = argv[3] if len(argv) > 3 else None
    os.environ["CONVOY_BIN"] = os.path.join(os.path.abspath(build), "bin")
    import convoy
    convoy.CONVOYD = os.path.join(os.environ["CONVOY_BIN"], "convoyd")
    convoy.CONVOYCTL = os.path.join(os.environ["CONVOY_BIN"], "convoyctl")
    tmp = tempfile.mkdtemp(prefix="convoy-bench-sts-")
    os.chmod(tmp, 0o755)
    web = dns = sink = None
    rows = []
    try:
        ca = CA(os.path.join(tmp, "pki"))
        web = Web(tmp, [Site("enforce.test", ca.issue("web", ["mta-sts.enforce.test"]),
                             body=POLICY)]).start()
        smtp_port = free_udp_tcp_port((MX_IP,))
        leaf = ca.issue("mx", ["mx.enforce.test", "mx.plain.test"])
        sink = Sink(MX_IP, smtp_port, tls=(leaf.chain, leaf.key), hostname="mx.enforce.test")
        sink.start()
        os.makedirs(os.path.join(tmp, "dns"))
        dns = DnsServer([MX("enforce.test", 10, "mx.enforce.test"), A("mx.enforce.test", MX_IP),
                         MX("plain.test", 10, "mx.plain.test"), A("mx.plain.test", MX_IP),
                         TXT("_mta-sts.enforce.test", "v=STSv1; id=bench1"),
                         A("mta-sts.enforce.test", "127.0.0.1")],
                        workdir=os.path.join(tmp, "dns")).start()
        rounds = int(os.environ.get("ROUNDS", "1"))
        order = []
        for r in range(rounds):
            # Alternate the order, so neither run always goes first.
            order += ["plain.test", "enforce.test"] if r % 2 == 0 else ["enforce.test",
                                                                         "plain.test"]
        for domain in order:
            port = free_port()
            conf = ("myhostname = bench.test\nsmtpd_listen = 127.0.0.1:%d\n"
                    "dns_servers = %s\nsmtp_destination_port = %d\nsmtp_tls_CAfile = %s\n"
                    "sts_policy_https_port = %d\ndefault_destination_concurrency_limit = 20\n"
                    % (port, dns.server, smtp_port, ca.cert, web.port))
            with Daemon(conf) as d:
                d.start()
                d.wait_log("delivery started")
                secs, got = run(d, port, domain, n)
                text = d.log_text()
                fetches = len(re.findall(r"policy fetched domain=" + re.escape(domain), text))
                verified = len(re.findall(r"Verified TLS connection established", text))
                sessions = len(re.findall(r"TLS connection established", text))
                d.stop()
            rows.append((domain, n, got, secs, fetches, verified, sessions))
    finally:
        if sink:
            sink.stop()
        if web:
            web.stop()
        if dns:
            dns.close()
        subprocess.run(["rm", "-rf", tmp], check=False)
    lines = ["| destination | messages | delivered | msg/s | policy fetches | TLS sessions "
             "(verified) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for domain, n, got, secs, fetches, verified, sessions in rows:
        lines.append("| %s | %d | %d | %.0f | %d | %d (%d) |" % (
            domain, n, got, got / secs if secs else 0, fetches, sessions, verified))
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "a") as f:
            f.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
