"""The outside world for integration tests: real peers on loopback.

DnsServer is a real DNS server (dnsmasq, foreground, loopback only) that
serves the records a test gives as data, on a free port:

    dns = DnsServer([
        MX("example.test", 10, "mx1.example.test"),
        A("mx1.example.test", "127.0.0.11"),
        AAAA("mx1.example.test", "::1"),
        TXT("_mta-sts.example.test", "v=STSv1; ", "id=1"),   # one record, 2 strings
        CNAME("alias.example.test", "mx1.example.test"),
        NULL_MX("null.test"),
    ], servfail=["broken.example"]).start()
    ... dns.server   -> "127.0.0.1:PORT" (for dns_servers)
    dns.stop()       (or use it as a context manager)

What it answers:
  - names in local_zones (default: "test") are answered from the records
    only; a name there without records is NXDOMAIN, a name with records but
    none of the asked type is NODATA (NOERROR, empty answer);
  - names under a servfail domain get SERVFAIL: dnsmasq validates DNSSEC
    for them against an upstream that cannot prove anything (a second
    dnsmasq), which is exactly how a real resolver fails. Servfail domains
    must lie outside local_zones;
  - any other name is REFUSED.
  ttl is the TTL of every local record (dnsmasq --local-ttl). With
  ipv6=True it listens on ::1 as well (dns.server6).

SilentDnsServer is a UDP socket on loopback that reads queries and never
answers: a resolver that is down, for timeout tests.
"""

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

DNSMASQ = os.environ.get("DNSMASQ", "/usr/sbin/dnsmasq")
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")

# Under CI (CI=true, as CI services set it) the install script has put every
# tool there: a missing one is a failure, never a skip.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The reason of every skip for a missing tool starts with this, so
# run_suite.py can tell such a skip (the suite did not run: exit 77, which
# ctest shows as "Skipped", not "Passed") from a skip of one case.
TOOL_SKIP = "missing tool: "


def needs(*tools):
    """Class decorator for a suite that needs the named tools ("dnsmasq",
    "nginx"): runs it when they are there; otherwise skips it (reason
    TOOL_SKIP...), or under CI makes every case fail."""
    paths = {"dnsmasq": DNSMASQ, "nginx": NGINX}
    missing = [t for t in tools if shutil.which(paths.get(t, t)) is None]
    if not missing:
        return lambda cls: cls
    why = TOOL_SKIP + " and ".join(missing) + " not installed"
    if not CI:
        return unittest.skip(why)

    def fail(cls):
        def setUpClass(c):
            raise RuntimeError(why + " (CI=true: scripts/install-deps.sh installs it)")
        cls.setUpClass = classmethod(setUpClass)
        return cls
    return fail

# The root zone's KSK-2017 DS record: a trust anchor that nothing served here
# can chain to, so validation of forwarded names fails (SERVFAIL).
ROOT_DS = ".,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"


def MX(name, pref, host):
    return ("MX", name, pref, host)


def NULL_MX(name):
    """RFC 7505: MX 0 ."""
    return ("MX", name, 0, ".")


def A(name, *addrs):
    return ("A", name) + addrs


def AAAA(name, *addrs):
    return ("AAAA", name) + addrs


def TXT(name, *strings):
    """One TXT record made of the given character-strings."""
    return ("TXT", name) + strings


def CNAME(alias, target):
    return ("CNAME", alias, target)


def _port_free(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        try:
            with socket.socket(fam, kind) as s:
                s.bind((host, port))
        except OSError:
            return False
    return True


def free_udp_tcp_port(hosts=("127.0.0.1",)):
    """A port free for both UDP and TCP on every one of hosts right now."""
    fam = socket.AF_INET6 if ":" in hosts[0] else socket.AF_INET
    for _ in range(50):
        with socket.socket(fam, socket.SOCK_DGRAM) as u:
            u.bind((hosts[0], 0))
            port = u.getsockname()[1]
        if all(_port_free(h, port) for h in hosts):
            return port
    raise RuntimeError("no free port")


def _quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dns_query(port, name, qtype=1, host="127.0.0.1", timeout=0.5):
    """Send one query; return the rcode, or None without an answer."""
    qid = os.getpid() & 0xFFFF
    msg = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        msg += bytes([len(label)]) + label.encode()
    msg += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(msg, (host, port))
        try:
            data, _ = s.recvfrom(4096)
        except socket.timeout:
            return None
    return data[3] & 0xF if len(data) >= 12 else None


class _Dnsmasq:
    """One foreground dnsmasq with a config file of ours."""

    def __init__(self, workdir, tag, lines, listen=("127.0.0.1",)):
        self.listen = listen
        self.conf_path = os.path.join(workdir, tag + ".conf")
        self.log_path = os.path.join(workdir, tag + ".log")
        self.lines = lines
        self.proc = None
        self.port = None

    def start(self, probe_name, port=None):
        last = ""
        for _ in range(5):
            # A restart may keep its port (clients keep their configuration).
            self.port = port or free_udp_tcp_port(self.listen)
            port = None
            with open(self.conf_path, "w") as f:
                f.write("\n".join(self.lines) + "\n")
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [DNSMASQ, "--no-daemon", "--port=%d" % self.port] +
                ["--listen-address=" + a for a in self.listen] +
                ["--bind-interfaces", "--no-resolv",
                 "--no-hosts", "--conf-file=" + self.conf_path, "--pid-file=",
                 "--log-facility=-"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                if dns_query(self.port, probe_name, timeout=0.2) is not None:
                    return
            self.stop()
            with open(self.log_path, "rb") as f:
                last = f.read().decode(errors="replace")
        raise RuntimeError("dnsmasq did not start:\n" + last)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class DnsServer:
    def __init__(self, records=(), local_zones=("test",), servfail=(), ttl=60, workdir=None,
                 ipv6=False):
        self.ipv6 = ipv6
        self.records = list(records)
        self.local_zones = list(local_zones)
        self.servfail = list(servfail)
        self.ttl = ttl
        self.tmp = None
        if workdir is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="convoy-dns-")
            workdir = self.tmp.name
        self.dir = workdir
        self.front = None
        self.upstream = None
        for d in self.servfail:
            for z in self.local_zones:
                if d == z or d.endswith("." + z):
                    raise ValueError("servfail domain %s is inside local zone %s" % (d, z))

    def add(self, *records):
        """Add records; call before start() (or restart())."""
        self.records.extend(records)

    def config_lines(self):
        lines = ["local-ttl=%d" % self.ttl]
        for z in self.local_zones:
            lines.append("local=/%s/" % z)
        hosts = {}
        for r in self.records:
            kind = r[0]
            if kind in ("A", "AAAA"):
                hosts.setdefault(r[1], []).extend(r[2:])
            elif kind == "MX":
                lines.append("mx-host=%s,%s,%d" % (r[1], r[3], r[2]))
            elif kind == "TXT":
                lines.append("txt-record=%s,%s" % (r[1], ",".join(_quote(s) for s in r[2:])))
            elif kind == "CNAME":
                lines.append("cname=%s,%s" % (r[1], r[2]))
            else:
                raise ValueError("unknown record kind %r" % (kind,))
        for name, addrs in hosts.items():
            lines.append("host-record=%s,%s" % (name, ",".join(addrs)))
        return lines

    def start(self, port=None):
        lines = self.config_lines()
        if self.servfail:
            # The upstream answers every type for these names (so the
            # front has something to validate, and fails to).
            up_lines = []
            for d in self.servfail:
                up_lines += ["local=/%s/" % d, "address=/%s/127.0.0.1" % d,
                             "mx-host=%s,mx.%s,10" % (d, d), 'txt-record=%s,"x"' % d]
            self.upstream = _Dnsmasq(self.dir, "upstream", up_lines)
            self.upstream.start(self.servfail[0])
            lines += ["server=127.0.0.1#%d" % self.upstream.port, "dnssec",
                      "trust-anchor=" + ROOT_DS]
        listen = ("127.0.0.1", "::1") if self.ipv6 else ("127.0.0.1",)
        self.front = _Dnsmasq(self.dir, "dnsmasq", lines, listen)
        probe = self.local_zones[0] if self.local_zones else "probe.invalid"
        try:
            self.front.start(probe, port)
        except Exception:
            self.stop()
            raise
        return self

    def restart(self, keep_port=False):
        """Stop and start with the current records; keep_port: on the same
        port when it is still free (the clients' dns_servers stay valid)."""
        port = self.front.port if keep_port and self.front else None
        self.stop()
        return self.start(port=port)

    @property
    def port(self):
        return self.front.port

    @property
    def server(self):
        """The dns_servers value for this server."""
        return "127.0.0.1:%d" % self.front.port

    @property
    def server6(self):
        """The same server over IPv6 (needs ipv6=True)."""
        return "[::1]:%d" % self.front.port

    def log_text(self):
        with open(self.front.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        for m in (self.front, self.upstream):
            if m:
                m.stop()

    def close(self):
        self.stop()
        if self.tmp:
            self.tmp.cleanup()
            self.tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class SilentDnsServer:
    """Reads DNS queries on a loopback UDP port and never answers."""

    def __init__(self, host="127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.sock.recvfrom(4096)
                self.queries += 1
            except socket.timeout:
                continue
            except OSError:
                return

    @property
    def server(self):
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
