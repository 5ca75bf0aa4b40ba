"""pki.py - a throwaway test PKI for integration tests, made with the openssl CLI.

A test makes a CA in a directory, issues leaf certificates for the DNS names
its servers should present (good, wildcard, wrong name, expired, not yet
valid), or self-signed ones, and gives the CA file to Convoy as its trust
store. Keys are EC P-256 unless asked otherwise (fast to make).

    from pki import CA, self_signed

    ca = CA(tmpdir)                                   # tmpdir/ca.pem, ca.key
    good = ca.issue("mx", ["mx.example.com"])         # .cert .key .chain
    wild = ca.issue("wild", ["*.example.com"])
    wrong = ca.issue("wrong", ["other.example.net"])
    old = ca.issue("old", ["mx.example.com"], expired=True)
    soon = ca.issue("soon", ["mx.example.com"], not_yet_valid=True)
    cn = ca.issue("cn", [], cn="mx.example.com")      # CN only, no SAN
    sub = ca.intermediate("sub")                      # a CA under ca
    leaf = sub.issue("leaf", ["mx.example.org"])      # leaf.chain has leaf+sub
    selfie = self_signed(tmpdir, "self", ["mx.example.com"])

Each Leaf has .cert (the leaf alone), .key, and .chain (leaf followed by any
intermediates: what a server should send). CA.cert is the trust anchor.

Command line, for poking at things by hand:
    python3 pki.py DIR NAME... (one leaf per NAME, signed by DIR/ca.pem)

Nothing here is secret or meant for anything but tests.
"""

import os
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

OPENSSL = "openssl"

# Fixed dates far in the past / future for expired and not-yet-valid leaves.
EXPIRED_DATES = ("20200101000000Z", "20210101000000Z")
FUTURE_DATES = ("20990101000000Z", "20991231000000Z")


def _run(args: Sequence[str], cwd: str) -> None:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            "%s failed (%d): %s" % (" ".join(args), proc.returncode, proc.stderr.strip())
        )


def _genkey(path: str, key_type: str, cwd: str) -> None:
    if key_type == "ec":
        _run([OPENSSL, "genpkey", "-algorithm", "EC", "-pkeyopt",
              "ec_paramgen_curve:P-256", "-out", path], cwd)
    elif key_type.startswith("rsa"):
        bits = key_type.partition(":")[2] or "2048"
        _run([OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt",
              "rsa_keygen_bits:" + bits, "-out", path], cwd)
    else:
        raise ValueError("key_type must be 'ec' or 'rsa[:BITS]', not %r" % key_type)


def _san(dns_names: Sequence[str]) -> Optional[str]:
    if not dns_names:
        return None
    return ",".join("DNS:" + n for n in dns_names)


@dataclass
class Leaf:
    name: str
    cert: str   # the leaf certificate (PEM)
    key: str    # its private key (PEM)
    chain: str  # leaf followed by intermediates (PEM), what a server sends


class CA:
    """A certificate authority in directory: <prefix>.pem and <prefix>.key.

    Issued leaves go to directory/<name>.pem and <name>.key (and
    <name>-chain.pem). An intermediate is a CA whose certificate is signed by
    its parent; leaves it issues carry the intermediate in their chain."""

    def __init__(self, directory: str, prefix: str = "ca", cn: str = "Convoy Test CA",
                 key_type: str = "ec", _parent: Optional["CA"] = None):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.prefix = prefix
        self.cert = os.path.join(self.directory, prefix + ".pem")
        self.key = os.path.join(self.directory, prefix + ".key")
        self.parent = _parent
        self._db = os.path.join(self.directory, prefix + ".db")
        os.makedirs(self._db, exist_ok=True)
        open(os.path.join(self._db, "index.txt"), "w").close()
        with open(os.path.join(self._db, "serial"), "w") as f:
            f.write("%02X%s\n" % (0x10 + os.urandom(1)[0] % 0x60, os.urandom(7).hex().upper()))
        self._cnf = os.path.join(self.directory, prefix + ".cnf")
        with open(self._cnf, "w") as f:
            f.write(
                "[ca]\ndefault_ca = this\n"
                "[this]\n"
                "database = %(db)s/index.txt\nserial = %(db)s/serial\n"
                "new_certs_dir = %(db)s\ncertificate = %(cert)s\nprivate_key = %(key)s\n"
                "default_md = sha256\npolicy = any\nunique_subject = no\n"
                "copy_extensions = none\n"
                "[any]\ncommonName = supplied\n" % {"db": self._db, "cert": self.cert,
                                                    "key": self.key}
            )
        _genkey(self.key, key_type, self.directory)
        if _parent is None:
            _run([OPENSSL, "req", "-new", "-x509", "-key", self.key, "-out", self.cert,
                  "-days", "3650", "-subj", "/CN=" + cn,
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], self.directory)
        else:
            ext = ("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                   "keyUsage=critical,keyCertSign,cRLSign\n")
            _parent._sign(prefix, self.key, cn, ext, self.cert, days=3650)

    def _sign(self, name: str, key: str, cn: str, ext: str, out: str, days: int = 825,
              dates: Optional[Sequence[str]] = None) -> None:
        csr = os.path.join(self.directory, name + ".csr")
        extfile = os.path.join(self.directory, name + ".ext")
        with open(extfile, "w") as f:
            f.write(ext)
        _run([OPENSSL, "req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + cn],
             self.directory)
        cmd = [OPENSSL, "ca", "-batch", "-config", self._cnf, "-notext", "-in", csr,
               "-out", out, "-extfile", extfile]
        if dates:
            cmd += ["-startdate", dates[0], "-enddate", dates[1]]
        else:
            cmd += ["-days", str(days)]
        _run(cmd, self.directory)

    def _chain_tail(self) -> List[str]:
        """Certificates a server sends after a leaf of this CA."""
        tail = []
        ca: Optional[CA] = self
        while ca is not None and ca.parent is not None:
            tail.append(ca.cert)
            ca = ca.parent
        return tail

    def issue(self, name: str, dns_names: Sequence[str], *, cn: Optional[str] = None,
              expired: bool = False, not_yet_valid: bool = False,
              key_type: str = "ec") -> Leaf:
        """A leaf for dns_names (SAN dNSName entries; none: no SAN at all).
        cn defaults to the first DNS name. expired / not_yet_valid give dates
        in 2020 / 2099."""
        if cn is None:
            if not dns_names:
                raise ValueError("a leaf needs DNS names or a cn")
            cn = dns_names[0]
        d = self.directory
        leaf = Leaf(name, os.path.join(d, name + ".pem"), os.path.join(d, name + ".key"),
                    os.path.join(d, name + "-chain.pem"))
        _genkey(leaf.key, key_type, d)
        ext = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=serverAuth\n")
        san = _san(dns_names)
        if san:
            ext += "subjectAltName=%s\n" % san
        dates = EXPIRED_DATES if expired else FUTURE_DATES if not_yet_valid else None
        self._sign(name, leaf.key, cn, ext, leaf.cert, dates=dates)
        with open(leaf.chain, "w") as out:
            for path in [leaf.cert] + self._chain_tail():
                with open(path) as f:
                    out.write(f.read())
        return leaf

    def intermediate(self, prefix: str, cn: Optional[str] = None) -> "CA":
        """A CA whose certificate this CA signs."""
        return CA(self.directory, prefix, cn or ("Convoy Test " + prefix), _parent=self)


def self_signed(directory: str, name: str, dns_names: Sequence[str], *,
                cn: Optional[str] = None, expired: bool = False,
                key_type: str = "ec") -> Leaf:
    """A self-signed leaf (trusted by nobody unless a test adds it)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    if cn is None:
        cn = dns_names[0] if dns_names else "self-signed.invalid"
    leaf = Leaf(name, os.path.join(directory, name + ".pem"),
                os.path.join(directory, name + ".key"),
                os.path.join(directory, name + ".pem"))
    _genkey(leaf.key, key_type, directory)
    cmd = [OPENSSL, "req", "-new", "-x509", "-key", leaf.key, "-out", leaf.cert,
           "-subj", "/CN=" + cn, "-days", "825"]
    san = _san(dns_names)
    if san:
        cmd += ["-addext", "subjectAltName=" + san]
    _run(cmd, directory)
    if expired:
        # openssl 3.0's req has no start/end date options: re-sign the
        # certificate with its own key and a validity that ended yesterday.
        csr = os.path.join(directory, name + ".csr")
        _run([OPENSSL, "x509", "-x509toreq", "-copy_extensions", "copy", "-in", leaf.cert,
              "-signkey", leaf.key, "-out", csr], directory)
        _run([OPENSSL, "x509", "-req", "-in", csr, "-signkey", leaf.key, "-days", "-1",
              "-copy_extensions", "copy", "-out", leaf.cert], directory)
    return leaf


def mx_tls(ca: "CA", directory: str, kind: Optional[str], name: str,
           host: str) -> Optional[Tuple[str, str]]:
    """The (chain, key) of a test MX host by kind: "good" (issued for host by
    ca), "other" (issued for mx1.other.test), "expired", "self" (self-signed
    for host); None for no TLS (kind None or empty)."""
    if kind == "good":
        leaf = ca.issue(name, [host])
    elif kind == "other":
        leaf = ca.issue(name, ["mx1.other.test"])
    elif kind == "expired":
        leaf = ca.issue(name, [host], expired=True)
    elif kind == "self":
        leaf = self_signed(directory, name, [host])
    else:
        return None
    return (leaf.chain, leaf.key)


def _main(argv: Sequence[str]) -> int:
    if len(argv) < 3:
        print("usage: pki.py DIR NAME...  (makes DIR/ca.pem and a leaf per NAME)")
        return 2
    ca = CA(argv[1])
    print("CA", ca.cert)
    for host in argv[2:]:
        leaf = ca.issue(host.replace("*", "star"), [host])
        print(host, leaf.chain, leaf.key)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv))
