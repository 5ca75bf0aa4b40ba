/*
 * key.c - DKIM private keys over wolfCrypt: loading from PEM, generating,
 * exporting the key record, signing a digest and verifying one.
 *
 * RFC 6376 3.3.1 (rsa-sha256: RSASSA-PKCS1-v1_5 over SHA-256), RFC 8301 3.2
 * (RSA keys of at least 1024 bits), RFC 8463 3 and 4 (ed25519-sha256: the
 * SHA-256 digest of the header data is signed with PureEdDSA Ed25519; the
 * key record's p= is the raw 32-octet public key).
 *
 * Invariants:
 *  - A struct dkim_key is immutable once made, except its pool of working
 *    copies, which a mutex guards: wolfCrypt key objects keep state during
 *    an operation, so two threads never share one.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/rsa.h>

#include "dkim.h"
#include "dkim_int.h"

#define MAX_KEY_FILE (64 * 1024)
#define MAX_DER 8192
#define RSA_MAX_BITS 8192

/* A working copy of a key with its own random generator (RSA blinding). */
struct key_inst {
    struct key_inst *next;
    WC_RNG rng;
    union {
        RsaKey rsa;
        ed25519_key ed;
    } u;
};

struct dkim_key {
    enum dkim_alg alg;
    unsigned bits;
    /* RSA: the traditional (PKCS#1) private key DER. Ed25519: the 32-octet
     * seed followed by the 32-octet public key. */
    uint8_t *der;
    size_t der_len;
    pthread_mutex_t mu;
    struct key_inst *pool;
};

const char *dkim_alg_name(enum dkim_alg a)
{
    return a == DKIM_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

/* ---- base64 (RFC 4648 4; encoding: base64_encode() in base) ------------ */

static int b64_value(char c)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = c ? strchr(tab, c) : NULL;
    return p ? (int)(p - tab) : -1;
}

int dkim_b64_decode(struct view in, uint8_t *out, size_t *out_len)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0, pad = 0;
    for (size_t i = 0; i < in.len; i++) {
        char c = in.ptr[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64_value(c);
        if (v < 0 || pad)
            return ERR_INVAL;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == *out_len)
                return ERR_TOOBIG;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (pad > 2 || bits >= 6)
        return ERR_INVAL;
    *out_len = o;
    return 0;
}

/* ---- working copies ---------------------------------------------------------- */

static void inst_free(const struct dkim_key *k, struct key_inst *in)
{
    if (!in)
        return;
    if (k->alg == DKIM_RSA_SHA256)
        wc_FreeRsaKey(&in->u.rsa);
    else
        wc_ed25519_free(&in->u.ed);
    wc_FreeRng(&in->rng);
    free(in);
}

static struct key_inst *inst_new(const struct dkim_key *k)
{
    struct key_inst *in = calloc(1, sizeof(*in));
    if (!in)
        return NULL;
    if (wc_InitRng(&in->rng) != 0) {
        free(in);
        return NULL;
    }
    int rc;
    if (k->alg == DKIM_RSA_SHA256) {
        rc = wc_InitRsaKey(&in->u.rsa, NULL);
        word32 idx = 0;
        if (rc == 0)
            rc = wc_RsaPrivateKeyDecode(k->der, &idx, &in->u.rsa, (word32)k->der_len);
        if (rc == 0)
            rc = wc_RsaSetRNG(&in->u.rsa, &in->rng);
    } else {
        rc = wc_ed25519_init(&in->u.ed);
        if (rc == 0)
            rc = wc_ed25519_import_private_key(k->der, 32, k->der + 32, 32, &in->u.ed);
    }
    if (rc != 0) {
        inst_free(k, in);
        return NULL;
    }
    return in;
}

static struct key_inst *inst_take(const struct dkim_key *kc)
{
    struct dkim_key *k = (struct dkim_key *)kc;
    pthread_mutex_lock(&k->mu);
    struct key_inst *in = k->pool;
    if (in)
        k->pool = in->next;
    pthread_mutex_unlock(&k->mu);
    return in ? in : inst_new(k);
}

static void inst_give(const struct dkim_key *kc, struct key_inst *in)
{
    struct dkim_key *k = (struct dkim_key *)kc;
    pthread_mutex_lock(&k->mu);
    in->next = k->pool;
    k->pool = in;
    pthread_mutex_unlock(&k->mu);
}

/* ---- making keys --------------------------------------------------------------- */

static struct dkim_key *key_new(enum dkim_alg alg, unsigned bits, const uint8_t *der, size_t n)
{
    struct dkim_key *k = calloc(1, sizeof(*k));
    if (!k || !(k->der = malloc(n))) {
        free(k);
        return NULL;
    }
    memcpy(k->der, der, n);
    k->der_len = n;
    k->alg = alg;
    k->bits = bits;
    pthread_mutex_init(&k->mu, NULL);
    return k;
}

void dkim_key_free(struct dkim_key *k)
{
    if (!k)
        return;
    while (k->pool) {
        struct key_inst *in = k->pool;
        k->pool = in->next;
        inst_free(k, in);
    }
    pthread_mutex_destroy(&k->mu);
    if (k->der)
        memset(k->der, 0, k->der_len);
    free(k->der);
    free(k);
}

enum dkim_alg dkim_key_alg(const struct dkim_key *k)
{
    return k->alg;
}

unsigned dkim_key_bits(const struct dkim_key *k)
{
    return k->bits;
}

/* An RSA key in DER (traditional or PKCS#8), kept in traditional form. */
static struct dkim_key *rsa_from_der(uint8_t *der, size_t n, struct buf *err, bool *not_rsa)
{
    RsaKey rsa;
    *not_rsa = false;
    if (wc_InitRsaKey(&rsa, NULL) != 0) {
        buf_printf(err, "cannot initialize an RSA key");
        return NULL;
    }
    word32 idx = 0;
    int rc = wc_RsaPrivateKeyDecode(der, &idx, &rsa, (word32)n);
    if (rc != 0) {
        word32 off = 0;
        if (wc_GetPkcs8TraditionalOffset(der, &off, (word32)n) > 0) {
            idx = off;
            rc = wc_RsaPrivateKeyDecode(der, &idx, &rsa, (word32)n);
        }
    }
    if (rc != 0) {
        wc_FreeRsaKey(&rsa);
        *not_rsa = true;
        return NULL;
    }
    unsigned bits = (unsigned)wc_RsaEncryptSize(&rsa) * 8;
    struct dkim_key *k = NULL;
    if (bits < DKIM_RSA_MIN_BITS || bits > RSA_MAX_BITS) {
        buf_printf(err, "RSA key of %u bits: DKIM needs %u to %u (2048 recommended)", bits,
                   DKIM_RSA_MIN_BITS, RSA_MAX_BITS);
    } else {
        uint8_t *out = malloc(MAX_DER);
        int len = out ? wc_RsaKeyToDer(&rsa, out, MAX_DER) : -1;
        if (len > 0)
            k = key_new(DKIM_RSA_SHA256, bits, out, (size_t)len);
        if (!k)
            buf_printf(err, "cannot store the RSA key");
        if (out)
            memset(out, 0, MAX_DER);
        free(out);
    }
    wc_FreeRsaKey(&rsa);
    return k;
}

static struct dkim_key *ed25519_from_der(const uint8_t *der, size_t n, struct buf *err)
{
    ed25519_key ed;
    if (wc_ed25519_init(&ed) != 0) {
        buf_printf(err, "cannot initialize an Ed25519 key");
        return NULL;
    }
    word32 idx = 0;
    uint8_t both[64];
    word32 priv_len = 32, pub_len = 32;
    struct dkim_key *k = NULL;
    if (wc_Ed25519PrivateKeyDecode(der, &idx, &ed, (word32)n) != 0) {
        buf_printf(err, "not an RSA or Ed25519 private key");
    } else if (wc_ed25519_make_public(&ed, both + 32, 32) != 0 ||
               wc_ed25519_export_private_only(&ed, both, &priv_len) != 0 || priv_len != 32 ||
               pub_len != 32) {
        buf_printf(err, "cannot use the Ed25519 key");
    } else if (!(k = key_new(DKIM_ED25519_SHA256, 256, both, sizeof(both)))) {
        buf_printf(err, "out of memory");
    }
    memset(both, 0, sizeof(both));
    wc_ed25519_free(&ed);
    return k;
}

struct dkim_key *dkim_key_from_pem(const char *pem, size_t len, struct buf *err)
{
    if (len > MAX_KEY_FILE || len > INT32_MAX) {
        buf_printf(err, "key file too large");
        return NULL;
    }
    uint8_t *der = malloc(MAX_DER);
    if (!der) {
        buf_printf(err, "out of memory");
        return NULL;
    }
    if (memmem(pem, len, "ENCRYPTED", 9)) {
        buf_printf(err, "encrypted private keys are not supported (convoyd has no passphrase)");
        free(der);
        return NULL;
    }
    int n = wc_KeyPemToDer((const unsigned char *)pem, (int)len, der, MAX_DER, NULL);
    struct dkim_key *k = NULL;
    if (n <= 0) {
        buf_printf(err, "no PEM private key found");
    } else {
        bool not_rsa;
        k = rsa_from_der(der, (size_t)n, err, &not_rsa);
        if (!k && not_rsa)
            k = ed25519_from_der(der, (size_t)n, err);
    }
    memset(der, 0, MAX_DER);
    free(der);
    return k;
}

struct dkim_key *dkim_key_load(const char *path, struct buf *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        buf_printf(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        buf_printf(err, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_mode & (S_IRGRP | S_IROTH | S_IWGRP | S_IWOTH)) {
        buf_printf(err,
                   "%s: private key is readable or writable by others than its owner "
                   "(mode %03o); chmod 600 it",
                   path, (unsigned)(st.st_mode & 0777));
        close(fd);
        return NULL;
    }
    if (st.st_size > MAX_KEY_FILE) {
        buf_printf(err, "%s: larger than %d bytes", path, MAX_KEY_FILE);
        close(fd);
        return NULL;
    }
    char *pem = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (pem && got < (size_t)st.st_size) {
        ssize_t r = read(fd, pem + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (!pem) {
        buf_printf(err, "%s: out of memory", path);
        return NULL;
    }
    struct buf why;
    buf_init(&why, 512);
    struct dkim_key *k = dkim_key_from_pem(pem, got, &why);
    if (!k)
        buf_printf(err, "%s: %s", path, why.data ? why.data : "cannot load");
    buf_free(&why);
    memset(pem, 0, got);
    free(pem);
    return k;
}

struct dkim_key *dkim_key_generate(enum dkim_alg alg, unsigned bits, struct buf *err)
{
    WC_RNG rng;
    if (wc_InitRng(&rng) != 0) {
        buf_printf(err, "cannot initialize the random generator");
        return NULL;
    }
    struct dkim_key *k = NULL;
    if (alg == DKIM_RSA_SHA256) {
        if (bits < DKIM_RSA_MIN_BITS || bits > RSA_MAX_BITS || bits % 8) {
            buf_printf(err, "RSA key size %u: use %u to %u bits", bits, DKIM_RSA_MIN_BITS,
                       RSA_MAX_BITS);
            wc_FreeRng(&rng);
            return NULL;
        }
        RsaKey rsa;
        uint8_t *der = malloc(MAX_DER);
        int n = -1;
        if (der && wc_InitRsaKey(&rsa, NULL) == 0) {
            if (wc_MakeRsaKey(&rsa, (int)bits, WC_RSA_EXPONENT, &rng) == 0)
                n = wc_RsaKeyToDer(&rsa, der, MAX_DER);
            wc_FreeRsaKey(&rsa);
        }
        if (n > 0)
            k = key_new(alg, bits, der, (size_t)n);
        if (der)
            memset(der, 0, MAX_DER);
        free(der);
    } else {
        ed25519_key ed;
        uint8_t both[64];
        word32 pl = 32, ql = 32;
        if (wc_ed25519_init(&ed) == 0) {
            if (wc_ed25519_make_key(&rng, ED25519_KEY_SIZE, &ed) == 0 &&
                wc_ed25519_export_private_only(&ed, both, &pl) == 0 &&
                wc_ed25519_export_public(&ed, both + 32, &ql) == 0 && pl == 32 && ql == 32)
                k = key_new(alg, 256, both, sizeof(both));
            wc_ed25519_free(&ed);
        }
        memset(both, 0, sizeof(both));
    }
    wc_FreeRng(&rng);
    if (!k)
        buf_printf(err, "key generation failed");
    return k;
}

/* PEM with 64-character lines (RFC 7468 2). */
static int pem_write(const char *label, const uint8_t *der, size_t n, struct buf *out)
{
    struct buf b64;
    buf_init(&b64, 64 * 1024);
    int rc = base64_encode(der, n, &b64);
    if (rc == 0)
        rc = buf_printf(out, "-----BEGIN %s-----\n", label);
    for (size_t i = 0; rc == 0 && i < b64.len; i += 64) {
        size_t m = b64.len - i < 64 ? b64.len - i : 64;
        rc = buf_printf(out, "%.*s\n", (int)m, b64.data + i);
    }
    if (rc == 0)
        rc = buf_printf(out, "-----END %s-----\n", label);
    if (b64.data)
        memset(b64.data, 0, b64.len);
    buf_free(&b64);
    return rc;
}

int dkim_key_pem(const struct dkim_key *k, struct buf *out)
{
    if (k->alg == DKIM_RSA_SHA256)
        return pem_write("RSA PRIVATE KEY", k->der, k->der_len, out);
    /* RFC 8410 7: OneAsymmetricKey with the id-Ed25519 OID (1.3.101.112)
     * and the seed as an OCTET STRING inside the privateKey OCTET STRING. */
    uint8_t der[48] = {0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06,
                       0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20};
    memcpy(der + 16, k->der, 32);
    int rc = pem_write("PRIVATE KEY", der, sizeof(der), out);
    memset(der, 0, sizeof(der));
    return rc;
}

int dkim_key_record(const struct dkim_key *k, struct buf *out)
{
    if (k->alg == DKIM_ED25519_SHA256) {
        int rc = buf_append_str(out, "v=DKIM1; k=ed25519; p=");
        return rc ? rc : base64_encode(k->der + 32, 32, out);
    }
    struct key_inst *in = inst_take(k);
    if (!in)
        return ERR_NOMEM;
    uint8_t *der = malloc(MAX_DER);
    /* RFC 6376 3.6.1: p= is the DER SubjectPublicKeyInfo. */
    int n = der ? wc_RsaKeyToPublicDer(&in->u.rsa, der, MAX_DER) : -1;
    inst_give(k, in);
    int rc = n > 0 ? buf_append_str(out, "v=DKIM1; k=rsa; p=") : ERR_INVAL;
    if (rc == 0)
        rc = base64_encode(der, (size_t)n, out);
    free(der);
    return rc;
}

/* ---- signing and verifying ------------------------------------------------------ */

int dkim_key_sign_digest(const struct dkim_key *k, const uint8_t digest[32], struct buf *out,
                         struct buf *why)
{
    struct key_inst *in = inst_take(k);
    if (!in) {
        buf_printf(why, "cannot prepare the private key");
        return ERR_NOMEM;
    }
    uint8_t sig[RSA_MAX_BITS / 8];
    int n;
    if (k->alg == DKIM_RSA_SHA256) {
        uint8_t info[64];
        word32 il = wc_EncodeSignature(info, digest, 32, wc_GetCTC_HashOID(WC_SHA256));
        n = il ? wc_RsaSSL_Sign(info, il, sig, sizeof(sig), &in->u.rsa, &in->rng) : -1;
    } else {
        word32 sl = sizeof(sig);
        /* RFC 8463 3: PureEdDSA over the SHA-256 digest, not over the
         * header data and not HashEdDSA. */
        n = wc_ed25519_sign_msg(digest, 32, sig, &sl, &in->u.ed) == 0 ? (int)sl : -1;
    }
    inst_give(k, in);
    if (n <= 0) {
        buf_printf(why, "signing failed (wolfCrypt error %d)", n);
        return ERR_INVAL;
    }
    return base64_encode(sig, (size_t)n, out);
}

int dkim_verify_digest(enum dkim_alg alg, const uint8_t *pub, size_t pub_len,
                       const uint8_t digest[32], const uint8_t *sig, size_t sig_len, char *why,
                       size_t why_size)
{
    if (alg == DKIM_ED25519_SHA256) {
        if (pub_len != ED25519_PUB_KEY_SIZE) {
            snprintf(why, why_size, "Ed25519 public key of %zu octets, not 32", pub_len);
            return ERR_PROTO;
        }
        ed25519_key ed;
        int res = 0;
        if (wc_ed25519_init(&ed) != 0 || wc_ed25519_import_public(pub, 32, &ed) != 0) {
            wc_ed25519_free(&ed);
            snprintf(why, why_size, "unusable Ed25519 public key");
            return ERR_PROTO;
        }
        int rc = wc_ed25519_verify_msg(sig, (word32)sig_len, digest, 32, &res, &ed);
        wc_ed25519_free(&ed);
        if (rc != 0 || res != 1) {
            snprintf(why, why_size, "signature did not verify");
            return ERR_INVAL;
        }
        return 0;
    }
    RsaKey rsa;
    if (wc_InitRsaKey(&rsa, NULL) != 0) {
        snprintf(why, why_size, "cannot initialize an RSA key");
        return ERR_PROTO;
    }
    word32 idx = 0;
    if (wc_RsaPublicKeyDecode(pub, &idx, &rsa, (word32)pub_len) != 0) {
        wc_FreeRsaKey(&rsa);
        snprintf(why, why_size, "unusable RSA public key");
        return ERR_PROTO;
    }
    unsigned bits = (unsigned)wc_RsaEncryptSize(&rsa) * 8;
    if (bits < DKIM_RSA_MIN_BITS) {
        wc_FreeRsaKey(&rsa);
        snprintf(why, why_size, "RSA key of %u bits is too short (RFC 8301 3.2)", bits);
        return ERR_PROTO;
    }
    uint8_t tmp[RSA_MAX_BITS / 8];
    int rc = ERR_INVAL;
    if (sig_len <= sizeof(tmp)) {
        uint8_t info[64];
        word32 il = wc_EncodeSignature(info, digest, 32, wc_GetCTC_HashOID(WC_SHA256));
        int n = wc_RsaSSL_Verify(sig, (word32)sig_len, tmp, sizeof(tmp), &rsa);
        if (n > 0 && (word32)n == il && memcmp(tmp, info, il) == 0)
            rc = 0;
    }
    wc_FreeRsaKey(&rsa);
    if (rc)
        snprintf(why, why_size, "signature did not verify");
    return rc;
}
