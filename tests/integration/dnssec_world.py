"""A DNSSEC world for integration tests: a validating resolver (unbound) in
front of an authoritative server (nsd) with zones signed at test time
(ldns-keygen, ldns-signzone), all on loopback, all in the foreground, all
gone when the test ends. Nothing here touches a system service.

    world = DnssecWorld([
        Zone("secure.test", [
            "@ MX 10 mx",
            "mx A 127.0.0.1",
            "_25._tcp.mx TLSA 3 1 1 " + sha256_hex,
        ]),                                          # signed, anchored: secure
        Zone("insecure.test", [...], signed=False),  # unsigned: insecure
        Zone("bogus.test", [...], tamper=["mx"]),    # signed, then the
                                                     # records of mx changed:
                                                     # bogus (SERVFAIL)
    ]).start()
    ... world.server   -> "127.0.0.1:PORT" of unbound (for dns_servers; on
                          loopback, so trusted as validating by default)
    ... world.nsd_port -> the authoritative server, for direct queries
    world.close()      (or use it as a context manager)

    tlsa_rdata("cert.pem", 3, 1, 1) -> "3 1 1 HEX", the record data to
    publish for a certificate (computed with openssl, not with Convoy).

How trust is set up: each signed zone gets a KSK and a ZSK; the KSK's DS
record goes into unbound's trust-anchor-file, so the zone itself is a
trust anchor (there is no signed root or .test here). Unsigned zones are
listed as domain-insecure. Every zone is a stub-zone of unbound pointing at
nsd. unbound's built-in local zone for "test." is switched off.

Records are zone-file lines relative to the zone's origin, with $TTL 300;
the SOA and NS records are added. tamper lists owner names (relative) whose
A, AAAA, MX and TLSA data is changed after signing, so their signatures no
longer verify.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from world import dns_query, free_udp_tcp_port

UNBOUND = os.environ.get("UNBOUND", "/usr/sbin/unbound")
NSD = os.environ.get("NSD", "/usr/sbin/nsd")
LDNS_KEYGEN = os.environ.get("LDNS_KEYGEN", "/usr/bin/ldns-keygen")
LDNS_SIGNZONE = os.environ.get("LDNS_SIGNZONE", "/usr/bin/ldns-signzone")


def tlsa_rdata(pem_path, usage=3, selector=1, mtype=1):
    """The TLSA record data ("3 1 1 HEX") a zone publishes for the first
    certificate in a PEM file (RFC 6698 2.1): selector 0 the certificate's
    DER, 1 its SubjectPublicKeyInfo; matching type 0 the bytes, 1 SHA-256,
    2 SHA-512. Computed with the openssl CLI and hashlib, independently of
    Convoy's own matching."""
    import hashlib
    der = subprocess.run(["openssl", "x509", "-in", pem_path, "-outform", "DER"],
                         capture_output=True, check=True).stdout
    if selector == 1:
        pub = subprocess.run(["openssl", "x509", "-in", pem_path, "-noout", "-pubkey"],
                             capture_output=True, check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                             capture_output=True, check=True).stdout
    data = {0: lambda b: b, 1: lambda b: hashlib.sha256(b).digest(),
            2: lambda b: hashlib.sha512(b).digest()}[mtype](der)
    return "%d %d %d %s" % (usage, selector, mtype, data.hex())


def available():
    """Are the programs of this world installed? (scripts/install-deps.sh)"""
    return all(os.access(p, os.X_OK) for p in (UNBOUND, NSD, LDNS_KEYGEN, LDNS_SIGNZONE))


class Zone:
    def __init__(self, name, records, signed=True, tamper=()):
        self.name = name.rstrip(".")
        self.records = list(records)
        self.signed = signed
        self.tamper = list(tamper)
        self.ds = None  # the KSK's DS record, once signed


def _tamper_line(line, owners, origin):
    """Change the data of an A, AAAA, MX or TLSA record of one of owners in
    a line of ldns-signzone output (absolute owner, TTL, class, type)."""
    parts = line.split()
    if len(parts) < 5 or parts[2] != "IN":
        return line
    owner = parts[0].rstrip(".")
    wanted = {(o + "." + origin) if o != "@" else origin for o in owners}
    if owner not in wanted:
        return line
    rtype = parts[3]
    if rtype == "A":
        parts[4] = "127.0.0.99"
    elif rtype == "AAAA":
        parts[4] = "::99"
    elif rtype == "MX":
        parts[4] = str(int(parts[4]) + 1)
    elif rtype == "TLSA":
        last = parts[-1]
        parts[-1] = last[:-1] + ("0" if last[-1] != "0" else "1")
    else:
        return line
    return "\t".join(parts)


def _run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("%s failed: %s%s" % (cmd[0], p.stdout, p.stderr))
    return p.stdout


class _Proc:
    def __init__(self, argv, log_path):
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class DnssecWorld:
    def __init__(self, zones):
        self.zones = zones
        self.dir = None
        self.nsd = None
        self.unbound = None
        self.nsd_port = None
        self.port = None

    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    # ---- zones -------------------------------------------------------------

    def _write_zone(self, z):
        origin = z.name
        lines = ["$ORIGIN %s." % origin, "$TTL 300",
                 "@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 86400 300" % (origin, origin),
                 "@ IN NS ns.%s." % origin,
                 "ns IN A 127.0.0.1"]
        lines += z.records
        path = os.path.join(self.dir, origin + ".zone")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        if not z.signed:
            return os.path.basename(path)
        # KSK and ZSK (ECDSA P-256, algorithm 13); ldns-keygen prints the
        # base name of the files it made.
        ksk = _run([LDNS_KEYGEN, "-a", "ECDSAP256SHA256", "-k", origin], self.dir).strip()
        zsk = _run([LDNS_KEYGEN, "-a", "ECDSAP256SHA256", origin], self.dir).strip()
        with open(os.path.join(self.dir, ksk + ".ds")) as f:
            z.ds = f.read().strip()
        # Signatures valid from yesterday for 30 days (-i / -e), so no clock
        # skew between here and unbound matters.
        now = time.time()
        inception = time.strftime("%Y%m%d", time.gmtime(now - 86400))
        expiry = time.strftime("%Y%m%d", time.gmtime(now + 30 * 86400))
        _run([LDNS_SIGNZONE, "-i", inception, "-e", expiry, "-o", origin,
              os.path.basename(path), zsk, ksk], self.dir)
        signed = path + ".signed"
        if z.tamper:
            with open(signed) as f:
                text = f.read().splitlines()
            with open(signed, "w") as f:
                f.write("\n".join(_tamper_line(line, z.tamper, origin) for line in text) + "\n")
        return os.path.basename(signed)

    # ---- servers -----------------------------------------------------------

    def _start_nsd(self, zonefiles):
        for _ in range(5):
            self.nsd_port = free_udp_tcp_port()
            conf = os.path.join(self.dir, "nsd.conf")
            with open(conf, "w") as f:
                f.write("server:\n"
                        "  ip-address: 127.0.0.1\n"
                        "  port: %d\n"
                        "  do-ip6: no\n"
                        "  username: \"\"\n"
                        "  chroot: \"\"\n"
                        "  zonesdir: \"%s\"\n"
                        "  database: \"\"\n"
                        "  zonelistfile: \"%s/zone.list\"\n"
                        "  xfrdfile: \"%s/xfrd.state\"\n"
                        "  xfrdir: \"%s\"\n"
                        "  pidfile: \"%s/nsd.pid\"\n"
                        "  logfile: \"%s/nsd.log\"\n"
                        "  server-count: 1\n"
                        "  reuseport: no\n"
                        "  verbosity: 1\n"
                        "remote-control:\n"
                        "  control-enable: no\n"
                        % ((self.nsd_port,) + (self.dir,) * 6))
                for z, zf in zip(self.zones, zonefiles):
                    f.write("zone:\n  name: \"%s\"\n  zonefile: \"%s\"\n" % (z.name, zf))
            self.nsd = _Proc([NSD, "-d", "-c", conf], os.path.join(self.dir, "nsd.out"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.nsd.alive():
                if dns_query(self.nsd_port, self.zones[0].name, qtype=6, timeout=0.2) == 0:
                    return
            self.nsd.stop()
        raise RuntimeError("nsd did not start:\n" + self._logs())

    def _start_unbound(self):
        anchors = os.path.join(self.dir, "anchors")
        with open(anchors, "w") as f:
            for z in self.zones:
                if z.signed:
                    f.write(z.ds + "\n")
        for _ in range(5):
            self.port = free_udp_tcp_port()
            conf = os.path.join(self.dir, "unbound.conf")
            with open(conf, "w") as f:
                f.write("server:\n"
                        "  interface: 127.0.0.1\n"
                        "  port: %d\n"
                        "  do-ip6: no\n"
                        "  username: \"\"\n"
                        "  chroot: \"\"\n"
                        "  directory: \"%s\"\n"
                        "  pidfile: \"\"\n"
                        "  use-syslog: no\n"
                        "  logfile: \"%s/unbound.log\"\n"
                        "  verbosity: 1\n"
                        "  val-log-level: 2\n"
                        "  num-threads: 1\n"
                        "  so-reuseport: no\n"
                        "  access-control: 127.0.0.0/8 allow\n"
                        "  do-not-query-localhost: no\n"
                        "  local-zone: \"test.\" nodefault\n"
                        "  module-config: \"validator iterator\"\n"
                        "  trust-anchor-file: \"%s\"\n"
                        "  qname-minimisation: no\n"
                        "  harden-referral-path: no\n"
                        % (self.port, self.dir, self.dir, anchors))
                for z in self.zones:
                    if not z.signed:
                        f.write("  domain-insecure: \"%s\"\n" % z.name)
                f.write("remote-control:\n  control-enable: no\n")
                for z in self.zones:
                    f.write("stub-zone:\n  name: \"%s\"\n  stub-addr: 127.0.0.1@%d\n"
                            % (z.name, self.nsd_port))
            self.unbound = _Proc([UNBOUND, "-d", "-c", conf],
                                 os.path.join(self.dir, "unbound.out"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.unbound.alive():
                if dns_query(self.port, self.zones[0].name, qtype=6, timeout=0.2) is not None:
                    return
            self.unbound.stop()
        raise RuntimeError("unbound did not start:\n" + self._logs())

    def _logs(self):
        out = []
        for name in ("nsd.out", "nsd.log", "unbound.out", "unbound.log"):
            p = os.path.join(self.dir, name)
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    out.append("--- %s\n%s" % (name, f.read()[-4000:]))
        return "\n".join(out)

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="convoy-dnssec-")
        try:
            zonefiles = [self._write_zone(z) for z in self.zones]
            self._start_nsd(zonefiles)
            self._start_unbound()
        except BaseException:
            self.close()
            raise
        return self

    def logs(self):
        return self._logs() if self.dir else ""

    def close(self):
        if self.unbound:
            self.unbound.stop()
        if self.nsd:
            self.nsd.stop()
        self.unbound = self.nsd = None
        if self.dir and not os.environ.get("CONVOY_KEEP_DNSSEC_WORLD"):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
