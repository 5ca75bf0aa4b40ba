#!/bin/sh
# make-dane-certs.sh OUTDIR - certificates for test_dane.c, and the TLSA data
# a zone would publish for them, computed here with the openssl CLI so the
# test checks tls/dane.c against an independent implementation.
#
# For each certificate NAME: NAME.der, NAME.spki (DER SubjectPublicKeyInfo),
# and NAME.{cert,spki}.{sha256,sha512} (hex digests).
#   ta        self-signed CA (RSA 2048: the 2 1 0 case decodes an RSA key)
#   inter     intermediate CA under ta
#   leaf      mx.dane.test under inter (chain: leaf, inter[, ta])
#   direct    mx.dane.test under ta
#   domain    SAN dane.test only, under ta (names the domain, not the MX)
#   wrongname SAN other.test, under ta
#   expired   mx.dane.test under ta, expired
#   ee        self-signed, not a CA, SAN unrelated.test (DANE-EE ignores it)
#   eeold     self-signed and expired (DANE-EE ignores dates)
#   rogue     an unrelated CA whose subject copies inter's name
set -eu

out=${1:?usage: make-dane-certs.sh OUTDIR}
rm -rf "$out"
mkdir -p "$out"
cd "$out"

ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ta.key 2>/dev/null
openssl req -new -x509 -key ta.key -out ta.pem -days 3650 -subj "/CN=DANE Test TA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' >ca.ext
ec inter
openssl req -new -key inter.key -out inter.csr -subj "/CN=DANE Test Intermediate"
openssl x509 -req -in inter.csr -CA ta.pem -CAkey ta.key -CAcreateserial -days 3650 \
    -extfile ca.ext -out inter.pem 2>/dev/null
ec rogue
openssl req -new -x509 -key rogue.key -out rogue.pem -days 3650 -subj "/CN=DANE Test Intermediate" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# leaf NAME SAN ISSUER [DAYS_OFFSET_START DAYS]
leaf() {
    name=$1 san=$2 issuer=$3
    ec "$name"
    openssl req -new -key "$name.key" -out "$name.csr" -subj "/CN=$name"
    printf 'basicConstraints=CA:FALSE\nsubjectAltName=%s\n' "$san" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial \
        -days 825 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
}
leaf leaf DNS:mx.dane.test inter
leaf direct DNS:mx.dane.test ta
leaf domain DNS:dane.test ta
leaf wrongname DNS:other.test ta

# Expired: valid for one day, two days ago (a private CA database lets us
# pick the dates).
ec expired
openssl req -new -key expired.key -out expired.csr -subj "/CN=expired"
printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:mx.dane.test\n' >expired.ext
mkdir -p db/new
: >db/index.txt
echo 1000 >db/serial
cat >db.cnf <<CNF
[ca]
default_ca = t
[t]
dir = db
database = db/index.txt
new_certs_dir = db/new
serial = db/serial
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
CNF
openssl ca -batch -config db.cnf -cert ta.pem -keyfile ta.key -in expired.csr -out expired.pem \
    -startdate 20200101000000Z -enddate 20200102000000Z -extfile expired.ext -notext 2>/dev/null

ec ee
openssl req -new -x509 -key ee.key -out ee.pem -days 30 -subj "/CN=ee" \
    -addext "subjectAltName=DNS:unrelated.test" -addext "basicConstraints=CA:FALSE"
ec eeold
openssl req -new -key eeold.key -out eeold.csr -subj "/CN=eeold"
openssl ca -batch -config db.cnf -selfsign -keyfile eeold.key -in eeold.csr -out eeold.pem \
    -startdate 20200101000000Z -enddate 20200102000000Z -notext 2>/dev/null

for n in ta inter rogue leaf direct domain wrongname expired ee eeold; do
    openssl x509 -in "$n.pem" -outform DER -out "$n.der"
    openssl x509 -in "$n.pem" -noout -pubkey | openssl pkey -pubin -outform DER -out "$n.spki"
    for sel in der spki; do
        tag=$sel
        [ "$sel" = der ] && tag=cert
        openssl dgst -sha256 -r "$n.$sel" | cut -d' ' -f1 >"$n.$tag.sha256"
        openssl dgst -sha512 -r "$n.$sel" | cut -d' ' -f1 >"$n.$tag.sha512"
    done
done
