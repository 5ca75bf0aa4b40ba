#!/bin/sh
# make-certs.sh OUTDIR - a throwaway test PKI for the tls unit tests.
#
# Makes a test CA (and an intermediate CA under it) and leaf certificates for
# the cases test_tls.c checks: good (SAN mx.example.com, mta-sts.example.com),
# wildcard (*.example.net), expired, not yet valid, self-signed, CN only
# (no SAN), localhost (a server reached by name on loopback: the shared
# tests), CN naming the host but a SAN naming another (the CN must be
# ignored), a leaf under the intermediate (served with its chain), and a
# leaf under an untrusted CA (served with that CA), and one under an
# expired intermediate.
# EC P-256 keys keep it fast. Everything is recreated on each run.
set -eu

out=${1:?usage: make-certs.sh OUTDIR}
rm -rf "$out"
mkdir -p "$out"
cd "$out"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }

# CA: self-signed, basicConstraints CA:true.
key ca
openssl req -new -x509 -key ca.key -out ca.pem -days 3650 -subj "/CN=Convoy Test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# Intermediate CA signed by the CA.
key inter
openssl req -new -key inter.key -out inter.csr -subj "/CN=Convoy Test Intermediate"
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >inter.ext
openssl x509 -req -in inter.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile inter.ext -out inter.pem 2>/dev/null

# leaf NAME CN SAN [ISSUER]: NAME.pem/NAME.key signed by ISSUER (default ca).
leaf() {
    name=$1 cn=$2 san=$3 issuer=${4:-ca}
    key "$name"
    openssl req -new -key "$name.key" -out "$name.csr" -subj "/CN=$cn"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=serverAuth"
        if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
    } >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial \
        -days 825 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
}

leaf good mx.example.com "DNS:mx.example.com,DNS:mta-sts.example.com"
leaf wild "*.example.net" "DNS:*.example.net"
leaf cnonly mx.example.com ""
leaf localhost localhost "DNS:localhost"
leaf cnignored mx.example.com "DNS:other.example.com"
leaf chained mx.example.org "DNS:mx.example.org" inter
cat chained.pem inter.pem >chained-chain.pem

# An untrusted root and an intermediate under it, both of which a hostile server
# sends along with its leaf: the overridden chain error must never make the
# intermediate trusted for later sessions of the same client context.
key evilca
openssl req -new -x509 -key evilca.key -out evilca.pem -days 3650 -subj "/CN=Evil CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
key evilinter
openssl req -new -key evilinter.key -out evilinter.csr -subj "/CN=Evil Intermediate"
openssl x509 -req -in evilinter.csr -CA evilca.pem -CAkey evilca.key -CAcreateserial -days 3650 \
    -extfile inter.ext -out evilinter.pem 2>/dev/null
leaf evil mx.example.com "DNS:mx.example.com" evilinter
cat evil.pem evilinter.pem evilca.pem >evil-chain.pem

# Self-signed leaf for mx.example.com, trusted by nobody.
key self
openssl req -new -x509 -key self.key -out self.pem -days 825 -subj "/CN=mx.example.com" \
    -addext "subjectAltName=DNS:mx.example.com"

# Expired and not-yet-valid leaves need explicit dates: openssl ca can set them.
mkdir -p ca.db
: >ca.db/index.txt
echo 1000 >ca.db/serial
cat >ca.cnf <<CNF
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = .
database = ca.db/index.txt
serial = ca.db/serial
new_certs_dir = ca.db
certificate = ca.pem
private_key = ca.key
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[ any ]
commonName = supplied
[ leaf_ext ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:mx.example.com
[ inter_ext ]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
CNF
dated() {
    name=$1 start=$2 end=$3
    key "$name"
    openssl req -new -key "$name.key" -out "$name.csr" -subj "/CN=mx.example.com"
    openssl ca -batch -config ca.cnf -extensions leaf_ext -notext -startdate "$start" \
        -enddate "$end" -in "$name.csr" -out "$name.pem" 2>/dev/null
}
dated expired 20200101000000Z 20210101000000Z
dated future 20990101000000Z 20991231000000Z

# An expired intermediate under the trusted CA, and a good leaf under it.
key oldinter
openssl req -new -key oldinter.key -out oldinter.csr -subj "/CN=Convoy Old Intermediate"
openssl ca -batch -config ca.cnf -extensions inter_ext -notext -startdate 20200101000000Z \
    -enddate 20210101000000Z -in oldinter.csr -out oldinter.pem 2>/dev/null
leaf underold mx.example.com "DNS:mx.example.com" oldinter
cat underold.pem oldinter.pem >underold-chain.pem
echo "test PKI in $out"
