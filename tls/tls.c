/*
 * tls.c - wolfSSL sessions over memory buffers (see tls.h for the contract).
 *
 * wolfSSL is given custom I/O callbacks per session: io_recv() reads from the
 * bytes of the current tls_conn_feed() call in place and returns WANT_READ
 * when they are used up; io_send() appends to a bounded buffer that is handed
 * to the owner (on_cipher_out) when it would overflow and at the end of every
 * public call. Nothing here touches a socket.
 *
 * Standards: RFC 8446 and RFC 5246 (through wolfSSL), RFC 6066 3 (SNI),
 * RFC 6125 6.4 as RFC 8461 4.2 uses it (tls_name_matches() in name.c),
 * RFC 8460 4.3 (failure classification).
 *
 * Verification: every client session runs wolfSSL's chain verification with
 * a verify callback that is called for every certificate (Debian's build has
 * WOLFSSL_ALWAYS_VERIFY_CB and WOLFSSL_VERIFY_CB_ALL_CERTS). The callback
 * records the first chain error, and at the leaf (depth 0) extracts the
 * subject CN and the SAN dNSNames and applies our own name rule. In
 * TLS_VERIFY_NONE it always accepts; in TLS_VERIFY_HOST it lets chain errors
 * above the leaf pass so that the leaf is still examined (and the reason is
 * the same in both modes), then refuses at the leaf if anything failed. After
 * a completed handshake in TLS_VERIFY_HOST the recorded result is checked
 * again, so a path on which the callback did not run cannot verify.
 *
 * Invariants:
 *  - on_handshake runs at most once; on_closed at most once and only after a
 *    successful on_handshake; nothing runs after tls_conn_free().
 *  - busy counts the public calls on the stack; a conn freed while busy is
 *    destroyed when the outermost call returns.
 *  - The outgoing buffer never holds more than TLS_CIPHER_OUT_MAX bytes.
 */
#include "tls.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/openssl/evp.h>
#include <wolfssl/openssl/pem.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/error-ssl.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base.h"

#define SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

/* Forward secret AEAD suites first, then CBC suites still met on old MTAs.
 * Debian's wolfSSL is built with NULL, RC4 and anonymous suites; naming the
 * list keeps them out.
 *
 * Without AES-NI (Debian's wolfSSL is built without it) AES-GCM is table
 * driven software: 128 MB/s on the project's machine against 306 MB/s for
 * ChaCha20-Poly1305 (1 KiB records), and table lookups indexed by key and
 * data are what cache-timing attacks read. So ChaCha20-Poly1305 comes first
 * then, as TLS libraries order it on CPUs without AES instructions; a
 * library with AES-NI keeps AES-GCM first. The same order serves as the
 * server's preference. */
#ifdef WOLFSSL_AESNI
#define AEAD_TLS13 "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:"
#define AEAD_ECDHE                                                                                 \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
#else
#define AEAD_TLS13 "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"
#define AEAD_ECDHE                                                                                 \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                                   \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
#endif
static const char CIPHER_LIST[] = AEAD_TLS13 AEAD_ECDHE "DHE-RSA-AES128-GCM-SHA256:"
                                                        "DHE-RSA-AES256-GCM-SHA384:"
                                                        "ECDHE-ECDSA-AES128-SHA256:"
                                                        "ECDHE-RSA-AES128-SHA256:"
                                                        "ECDHE-ECDSA-AES256-SHA384:"
                                                        "ECDHE-RSA-AES256-SHA384:"
                                                        "ECDHE-ECDSA-AES128-SHA:"
                                                        "ECDHE-RSA-AES128-SHA:"
                                                        "ECDHE-ECDSA-AES256-SHA:"
                                                        "ECDHE-RSA-AES256-SHA:"
                                                        "AES128-GCM-SHA256:"
                                                        "AES256-GCM-SHA384:"
                                                        "AES128-SHA:"
                                                        "AES256-SHA";

/* Key exchange groups in order of preference, as OpenSSL orders them: X25519
 * first, since Debian's wolfSSL computes it several times faster than P-256
 * (whose generic big-number code took most of a handshake's CPU in the
 * delivery profile), then the NIST curves and X448 for peers without it, and
 * the RFC 7919 finite-field groups last. A TLS 1.3 client sends its first key
 * share for the first group. */
static int GROUPS[] = {WOLFSSL_ECC_X25519,    WOLFSSL_ECC_SECP256R1, WOLFSSL_ECC_SECP384R1,
                       WOLFSSL_ECC_SECP521R1, WOLFSSL_ECC_X448,      WOLFSSL_FFDHE_2048,
                       WOLFSSL_FFDHE_3072};

struct tls_ctx {
    WOLFSSL_CTX *w;
    atomic_int refs;
    bool server;
};

struct tls_conn {
    struct tls_ctx *ctx;
    WOLFSSL *ssl;
    struct tls_callbacks cb;
    void *arg;
    struct tls_facts facts;

    /* The bytes of the current tls_conn_feed(), read in place. */
    const unsigned char *in;
    size_t in_len;

    struct buf out; /* ciphertext not yet given to on_cipher_out */

    int busy;          /* public calls on the stack */
    bool freed;        /* tls_conn_free() was called */
    bool in_cb;        /* inside on_plain_in / on_handshake / on_closed */
    bool in_out_cb;    /* inside on_cipher_out */
    bool started;      /* tls_conn_start() was called */
    bool hs_done;      /* handshake completed */
    bool failed;       /* handshake failed or the session died */
    bool ended;        /* on_closed has run (or the session ended) */
    bool sent_notify;  /* tls_conn_shutdown() ran */
    bool leaf_seen;    /* the verify callback examined the leaf */
    bool chain_failed; /* a chain error was recorded */
    enum tls_failure chain_fail;
    char chain_why[96];
};

/* ---- small helpers ---------------------------------------------------- */

static void set_why(char *why, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_why(char *why, size_t size, const char *fmt, ...)
{
    if (why == NULL || size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
}

/* The facts' human text; truncation of a very long host name is fine. */
static void set_text(struct tls_facts *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_text(struct tls_facts *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->text, sizeof f->text, fmt, ap);
    va_end(ap);
}

/* wolfSSL's text for one of its (negative) error codes, or the number. */
static const char *wolf_err_text(int e, char *tmp, size_t size)
{
    const char *r = wolfSSL_ERR_reason_error_string((unsigned long)e);
    if (r != NULL && *r != '\0' && strcmp(r, "unknown error number") != 0)
        return r;
    snprintf(tmp, size, "wolfSSL error %d", e);
    return tmp;
}

/* Copy a certificate string into the facts: printable ASCII only. */
static void copy_printable(char *dst, size_t size, const char *src, size_t len)
{
    bool ok = len < size;
    for (size_t i = 0; ok && i < len; i++)
        ok = (unsigned char)src[i] >= 0x20 && (unsigned char)src[i] < 0x7f;
    if (!ok) {
        str_copy(dst, "?", size);
        return;
    }
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* ---- failure names ------------------------------------------------------ */

const char *tls_failure_result_type(enum tls_failure f)
{
    switch (f) {
    case TLS_FAIL_NONE:
        return NULL;
    case TLS_FAIL_STARTTLS_NOT_SUPPORTED:
        return "starttls-not-supported";
    case TLS_FAIL_HOST_MISMATCH:
        return "certificate-host-mismatch";
    case TLS_FAIL_CERT_EXPIRED:
        return "certificate-expired";
    case TLS_FAIL_CERT_NOT_TRUSTED:
        return "certificate-not-trusted";
    case TLS_FAIL_VALIDATION:
    case TLS_FAIL_HANDSHAKE:
        return "validation-failure";
    }
    return "validation-failure";
}

const char *tls_failure_str(enum tls_failure f)
{
    switch (f) {
    case TLS_FAIL_NONE:
        return "ok";
    case TLS_FAIL_STARTTLS_NOT_SUPPORTED:
        return "STARTTLS not offered";
    case TLS_FAIL_HOST_MISMATCH:
        return "certificate does not name the host";
    case TLS_FAIL_CERT_EXPIRED:
        return "certificate has expired or is not yet valid";
    case TLS_FAIL_CERT_NOT_TRUSTED:
        return "certificate is not trusted";
    case TLS_FAIL_VALIDATION:
        return "certificate validation failed";
    case TLS_FAIL_HANDSHAKE:
        return "TLS handshake failed";
    }
    return "unknown failure";
}

/* ---- contexts ------------------------------------------------------------ */

static struct tls_ctx *ctx_alloc(bool server, char *why, size_t why_size)
{
    if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
        set_why(why, why_size, "cannot initialise wolfSSL");
        return NULL;
    }
    struct tls_ctx *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        wolfSSL_Cleanup();
        set_why(why, why_size, "out of memory");
        return NULL;
    }
    ctx->server = server;
    atomic_init(&ctx->refs, 1);
    ctx->w = wolfSSL_CTX_new(server ? wolfSSLv23_server_method() : wolfSSLv23_client_method());
    if (ctx->w == NULL) {
        free(ctx);
        wolfSSL_Cleanup();
        set_why(why, why_size, "cannot create a wolfSSL context");
        return NULL;
    }
    if (wolfSSL_CTX_set_cipher_list(ctx->w, CIPHER_LIST) != WOLFSSL_SUCCESS) {
        tls_ctx_free(ctx);
        set_why(why, why_size, "wolfSSL refuses the cipher list");
        return NULL;
    }
    if (wolfSSL_CTX_set_groups(ctx->w, GROUPS, (int)(sizeof GROUPS / sizeof GROUPS[0])) !=
        WOLFSSL_SUCCESS) {
        tls_ctx_free(ctx);
        set_why(why, why_size, "wolfSSL refuses the key exchange groups");
        return NULL;
    }
    return ctx;
}

/* A readable regular file? Gives the errno reason in why. */
static bool file_readable(const char *what, const char *path, char *why, size_t why_size)
{
    if (path == NULL || *path == '\0') {
        set_why(why, why_size, "no %s file given", what);
        return false;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        set_why(why, why_size, "%s file %s: %s", what, path, strerror(errno));
        return false;
    }
    fclose(f);
    return true;
}

/* Does the private key in key_file belong to the first certificate in
 * cert_file? wolfSSL_CTX_check_private_key() in Debian's wolfSSL 5.5 accepts
 * a mismatched EC key, so sign a test message with the key and verify it with
 * the certificate's public key. Returns false only on a definite mismatch; if
 * the key type cannot be used here, wolfSSL's own check stands. */
static bool key_matches_cert(const char *cert_file, const char *key_file)
{
    bool match = true;
    WOLFSSL_X509 *x = NULL;
    WOLFSSL_EVP_PKEY *key = NULL, *pub = NULL;
    WOLFSSL_EVP_MD_CTX *sctx = NULL, *vctx = NULL;
    static const char msg[] = "convoy key check";
    unsigned char sig[1024];
    size_t sig_len = sizeof sig;

    FILE *f = fopen(cert_file, "r");
    if (f != NULL) {
        x = wolfSSL_PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
    }
    f = fopen(key_file, "r");
    if (f != NULL) {
        key = wolfSSL_PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
    }
    if (x == NULL || key == NULL || (pub = wolfSSL_X509_get_pubkey(x)) == NULL)
        goto out;
    sctx = wolfSSL_EVP_MD_CTX_new();
    vctx = wolfSSL_EVP_MD_CTX_new();
    if (sctx == NULL || vctx == NULL)
        goto out;
    if (wolfSSL_EVP_DigestSignInit(sctx, NULL, wolfSSL_EVP_sha256(), NULL, key) != 1 ||
        wolfSSL_EVP_DigestSignUpdate(sctx, msg, sizeof msg) != 1 ||
        wolfSSL_EVP_DigestSignFinal(sctx, sig, &sig_len) != 1)
        goto out;
    if (wolfSSL_EVP_DigestVerifyInit(vctx, NULL, wolfSSL_EVP_sha256(), NULL, pub) != 1 ||
        wolfSSL_EVP_DigestVerifyUpdate(vctx, msg, sizeof msg) != 1)
        goto out;
    match = wolfSSL_EVP_DigestVerifyFinal(vctx, sig, sig_len) == 1;
out:
    wolfSSL_EVP_MD_CTX_free(sctx);
    wolfSSL_EVP_MD_CTX_free(vctx);
    wolfSSL_EVP_PKEY_free(pub);
    wolfSSL_EVP_PKEY_free(key);
    wolfSSL_X509_free(x);
    return match;
}

/* Server: record the host name the client asked for (SNI) in the facts. One
 * certificate serves every name, so the answer is always "go on". */
static int sni_cb(WOLFSSL *ssl, int *alert, void *arg)
{
    (void)alert;
    (void)arg;
    struct tls_conn *c = wolfSSL_get_app_data(ssl);
    const char *name = wolfSSL_get_servername(ssl, WOLFSSL_SNI_HOST_NAME);
    if (c != NULL && name != NULL)
        copy_printable(c->facts.host, sizeof c->facts.host, name, strlen(name));
    return 0; /* SSL_TLSEXT_ERR_OK */
}

struct tls_ctx *tls_ctx_server_new(const char *cert_file, const char *key_file, char *why,
                                   size_t why_size)
{
    if (!file_readable("certificate", cert_file, why, why_size) ||
        !file_readable("key", key_file, why, why_size))
        return NULL;
    struct tls_ctx *ctx = ctx_alloc(true, why, why_size);
    if (ctx == NULL)
        return NULL;
    char tmp[80];
    int r;
    if (wolfSSL_CTX_SetMinVersion(ctx->w, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS) {
        set_why(why, why_size, "cannot set the minimum TLS version");
        goto fail;
    }
    r = wolfSSL_CTX_use_certificate_chain_file(ctx->w, cert_file);
    if (r != WOLFSSL_SUCCESS) {
        set_why(why, why_size, "certificate file %s: not a usable PEM certificate chain (%s)",
                cert_file, wolf_err_text(r, tmp, sizeof tmp));
        goto fail;
    }
    r = wolfSSL_CTX_use_PrivateKey_file(ctx->w, key_file, WOLFSSL_FILETYPE_PEM);
    if (r != WOLFSSL_SUCCESS) {
        set_why(why, why_size, "key file %s: not a usable PEM private key (%s)", key_file,
                wolf_err_text(r, tmp, sizeof tmp));
        goto fail;
    }
    if (wolfSSL_CTX_check_private_key(ctx->w) != WOLFSSL_SUCCESS ||
        !key_matches_cert(cert_file, key_file)) {
        set_why(why, why_size, "key file %s: the key does not match the certificate in %s",
                key_file, cert_file);
        goto fail;
    }
    wolfSSL_CTX_set_servername_callback(ctx->w, sni_cb);
    log_debug("tls", "server context: certificate %s, key %s", cert_file, key_file);
    return ctx;
fail:
    tls_ctx_free(ctx);
    return NULL;
}

struct tls_ctx *tls_ctx_client_new(const char *ca_file, char *why, size_t why_size)
{
    struct tls_ctx *ctx = ctx_alloc(false, why, why_size);
    if (ctx == NULL)
        return NULL;
    char tmp[80];
    int r;
    if (ca_file == NULL) {
        /* The system store first; Debian's bundle file if that fails. */
        r = wolfSSL_CTX_load_system_CA_certs(ctx->w);
        if (r != WOLFSSL_SUCCESS) {
            r = wolfSSL_CTX_load_verify_locations(ctx->w, SYSTEM_CA_FILE, NULL);
            if (r != WOLFSSL_SUCCESS) {
                set_why(why, why_size, "cannot load the system trust store (%s): %s",
                        SYSTEM_CA_FILE, wolf_err_text(r, tmp, sizeof tmp));
                goto fail;
            }
        }
        log_debug("tls", "client context: system trust store");
        return ctx;
    }
    struct stat st;
    if (stat(ca_file, &st) != 0) {
        set_why(why, why_size, "CA file %s: %s", ca_file, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode))
        r = wolfSSL_CTX_load_verify_locations(ctx->w, NULL, ca_file);
    else if (file_readable("CA", ca_file, why, why_size))
        r = wolfSSL_CTX_load_verify_locations(ctx->w, ca_file, NULL);
    else
        goto fail;
    if (r != WOLFSSL_SUCCESS) {
        set_why(why, why_size, "CA %s %s: no usable PEM certificates (%s)",
                S_ISDIR(st.st_mode) ? "directory" : "file", ca_file,
                wolf_err_text(r, tmp, sizeof tmp));
        goto fail;
    }
    log_debug("tls", "client context: trust store %s", ca_file);
    return ctx;
fail:
    tls_ctx_free(ctx);
    return NULL;
}

struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx)
{
    if (ctx != NULL)
        atomic_fetch_add(&ctx->refs, 1);
    return ctx;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
    if (ctx == NULL)
        return;
    if (atomic_fetch_sub(&ctx->refs, 1) != 1)
        return;
    wolfSSL_CTX_free(ctx->w);
    free(ctx);
    wolfSSL_Cleanup();
}

/* ---- output ------------------------------------------------------------- */

static void emit(struct tls_conn *c, const void *data, size_t n)
{
    if (c->freed || n == 0)
        return;
    c->in_out_cb = true;
    c->cb.on_cipher_out(c->arg, data, n);
    c->in_out_cb = false;
}

static void flush(struct tls_conn *c)
{
    if (c->out.len == 0)
        return;
    emit(c, c->out.data, c->out.len);
    /* A large buffer left by a bulk write is given back, so that thousands
     * of idle sessions do not each keep one. */
    if (c->out.cap > 16 * 1024)
        buf_free(&c->out);
    else
        buf_reset(&c->out);
}

static int io_send(WOLFSSL *ssl, char *data, int sz, void *vc)
{
    (void)ssl;
    struct tls_conn *c = vc;
    if (sz <= 0)
        return 0;
    size_t n = (size_t)sz;
    if (c->out.len + n > TLS_CIPHER_OUT_MAX)
        flush(c);
    if (n > TLS_CIPHER_OUT_MAX) {
        /* Larger than the whole buffer (only a huge handshake flight of our
         * own): hand it over directly. */
        emit(c, data, n);
    } else if (buf_append(&c->out, data, n) != 0) {
        /* Out of memory: hand it over unbuffered rather than fail. */
        emit(c, data, n);
    }
    return sz;
}

static int io_recv(WOLFSSL *ssl, char *data, int sz, void *vc)
{
    (void)ssl;
    struct tls_conn *c = vc;
    if (c->in_len == 0)
        return WOLFSSL_CBIO_ERR_WANT_READ;
    size_t n = (size_t)sz < c->in_len ? (size_t)sz : c->in_len;
    memcpy(data, c->in, n);
    c->in += n;
    c->in_len -= n;
    return (int)n;
}

/* ---- verification --------------------------------------------------------- */

static enum tls_failure classify_verify_error(int e)
{
    switch (e) {
    case ASN_AFTER_DATE_E:
    case ASN_BEFORE_DATE_E:
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
    /* wolfSSL 5.5 reports date failures of the leaf with these two. */
    case X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD:
    case X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD:
        return TLS_FAIL_CERT_EXPIRED;
    case ASN_NO_SIGNER_E:
    case ASN_SELF_SIGNED_E:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
        return TLS_FAIL_CERT_NOT_TRUSTED;
    default:
        return TLS_FAIL_VALIDATION;
    }
}

static const char *verify_error_text(int e)
{
    switch (classify_verify_error(e)) {
    case TLS_FAIL_CERT_EXPIRED:
        if (e == ASN_BEFORE_DATE_E || e == X509_V_ERR_CERT_NOT_YET_VALID ||
            e == X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD)
            return "certificate is not yet valid";
        return "certificate has expired";
    case TLS_FAIL_CERT_NOT_TRUSTED:
        if (e == ASN_SELF_SIGNED_E || e == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
            e == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN)
            return "self-signed certificate not trusted";
        return "certificate does not chain to a trusted root";
    default:
        break;
    }
    const char *s = e > 0 ? wolfSSL_X509_verify_cert_error_string(e)
                          : wolfSSL_ERR_reason_error_string((unsigned long)e);
    return s != NULL && *s != '\0' ? s : "certificate validation failed";
}

static void name_text(char *out, size_t size, WOLFSSL_X509_NAME *name)
{
    out[0] = '\0';
    if (name == NULL)
        return;
    char tmp[TLS_FACTS_NAME_LEN];
    int n = wolfSSL_X509_NAME_get_text_by_NID(name, NID_commonName, tmp, sizeof tmp);
    if (n > 0 && (size_t)n < sizeof tmp)
        copy_printable(out, size, tmp, (size_t)n);
}

/* A DNS SAN as a C string, or NULL if it holds a NUL or is too long. */
static const char *san_string(WOLFSSL_GENERAL_NAME *gn, char *tmp, size_t size)
{
    if (gn == NULL || gn->type != ASN_DNS_TYPE || gn->d.dNSName == NULL)
        return NULL;
    int len = wolfSSL_ASN1_STRING_length(gn->d.dNSName);
    const unsigned char *p = wolfSSL_ASN1_STRING_get0_data(gn->d.dNSName);
    if (p == NULL || len <= 0 || (size_t)len >= size || memchr(p, '\0', (size_t)len) != NULL)
        return NULL;
    memcpy(tmp, p, (size_t)len);
    tmp[len] = '\0';
    return tmp;
}

/* The reference names of a leaf as RFC 6125 6.4.4 picks them, one call of
 * fn each: every DNS SAN (name NULL for one that cannot be read: it still
 * counts, as its presence means the CN must not be used), or the subject CN
 * when there is no DNS SAN at all (read raw, so that a CN with a NUL or other
 * junk gives NULL and cannot match). Returns the number of DNS SANs. Used by
 * the handshake's check and by tls_check_cert_file() alike. */
typedef void leaf_name_fn(void *arg, const char *name, bool is_cn);

static size_t leaf_names(WOLFSSL_X509 *x, leaf_name_fn *fn, void *arg)
{
    size_t dns = 0;
    WOLFSSL_STACK *sans = wolfSSL_X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int count = sans != NULL ? wolfSSL_sk_GENERAL_NAME_num(sans) : 0;
    for (int i = 0; i < count; i++) {
        WOLFSSL_GENERAL_NAME *gn = wolfSSL_sk_GENERAL_NAME_value(sans, i);
        if (gn == NULL || gn->type != ASN_DNS_TYPE)
            continue;
        dns++;
        char tmp[TLS_FACTS_NAME_LEN];
        fn(arg, san_string(gn, tmp, sizeof tmp), false);
    }
    if (sans != NULL)
        wolfSSL_sk_GENERAL_NAME_pop_free(sans, wolfSSL_GENERAL_NAME_free);
    if (dns == 0) {
        char cn[TLS_FACTS_NAME_LEN];
        WOLFSSL_X509_NAME *subj = wolfSSL_X509_get_subject_name(x);
        int n = subj != NULL
                    ? wolfSSL_X509_NAME_get_text_by_NID(subj, NID_commonName, cn, sizeof cn)
                    : -1;
        if (n > 0 && (size_t)n < sizeof cn && strlen(cn) == (size_t)n)
            fn(arg, cn, true);
        else if (n > 0)
            fn(arg, NULL, true);
    }
    return dns;
}

static void facts_name(void *arg, const char *name, bool is_cn)
{
    struct tls_facts *f = arg;
    if (!is_cn && f->n_peer_names < TLS_FACTS_NAMES_MAX) {
        char *slot = f->peer_names[f->n_peer_names++];
        if (name != NULL)
            copy_printable(slot, TLS_FACTS_NAME_LEN, name, strlen(name));
        else
            str_copy(slot, "?", TLS_FACTS_NAME_LEN);
    }
    if (name != NULL && f->host[0] != '\0' && tls_name_matches(name, f->host))
        f->name_ok = true;
}

/* Record the leaf's names in the facts and apply the name rule to all of
 * them: SAN dNSNames, or the CN when there is no DNS SAN at all. */
static void examine_leaf(struct tls_conn *c, WOLFSSL_X509 *x)
{
    struct tls_facts *f = &c->facts;
    f->peer_cert = true;
    name_text(f->peer_cn, sizeof f->peer_cn, wolfSSL_X509_get_subject_name(x));
    name_text(f->peer_issuer_cn, sizeof f->peer_issuer_cn, wolfSSL_X509_get_issuer_name(x));
    f->name_ok = false;
    f->n_peer_names_total = leaf_names(x, facts_name, f);
}

static struct tls_conn *conn_of_store(WOLFSSL_X509_STORE_CTX *store)
{
    WOLFSSL *ssl =
        wolfSSL_X509_STORE_CTX_get_ex_data(store, wolfSSL_get_ex_data_X509_STORE_CTX_idx());
    if (ssl != NULL)
        return wolfSSL_get_app_data(ssl);
    return store->userCtx;
}

static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store)
{
    struct tls_conn *c = conn_of_store(store);
    if (c == NULL)
        return 0; /* not ours: refuse rather than guess */
    int depth = wolfSSL_X509_STORE_CTX_get_error_depth(store);
    int e = wolfSSL_X509_STORE_CTX_get_error(store);
    WOLFSSL_X509 *cur = wolfSSL_X509_STORE_CTX_get_current_cert(store);
    char cn[TLS_FACTS_NAME_LEN] = "";
    if (cur != NULL)
        name_text(cn, sizeof cn, wolfSSL_X509_get_subject_name(cur));
    log_debug("tls", "verify: depth %d preverify %d error %d subject CN=%s", depth, preverify, e,
              cn);
    if (!preverify || e != 0) {
        if (!c->chain_failed) {
            c->chain_failed = true;
            c->chain_fail = classify_verify_error(e);
            str_copy(c->chain_why, verify_error_text(e), sizeof c->chain_why);
            log_debug("tls", "%s: certificate at depth %d: %s (%d)",
                      c->facts.host[0] ? c->facts.host : "(no host)", depth, c->chain_why, e);
        }
    }
    if (depth == 0 && !c->leaf_seen) {
        WOLFSSL_X509 *x = wolfSSL_X509_STORE_CTX_get_current_cert(store);
        if (x != NULL) {
            c->leaf_seen = true;
            examine_leaf(c, x);
        }
    }
    if (c->facts.mode == TLS_VERIFY_NONE)
        return 1;
    if (depth > 0)
        return 1; /* examine the leaf too; refuse there */
    return c->leaf_seen && !c->chain_failed && c->facts.name_ok;
}

/* Fill chain_ok / verified / failure / text from what the callback saw. */
static void settle_verification(struct tls_conn *c)
{
    struct tls_facts *f = &c->facts;
    f->chain_ok = c->leaf_seen && !c->chain_failed;
    if (!c->leaf_seen)
        f->name_ok = false;
    f->verified = f->chain_ok && f->name_ok;
    if (f->verified)
        return;
    const char *host = f->host[0] != '\0' ? f->host : "(no host)";
    if (!c->leaf_seen) {
        f->failure = TLS_FAIL_VALIDATION;
        set_text(f, "certificate verification failed for %s: no certificate examined", host);
    } else if (c->chain_failed) {
        f->failure = c->chain_fail;
        set_text(f, "certificate verification failed for %s: %s", host, c->chain_why);
    } else {
        f->failure = TLS_FAIL_HOST_MISMATCH;
        set_text(f, "certificate verification failed for %s: certificate names %s%s%s", host,
                 f->n_peer_names > 0 ? f->peer_names[0]
                 : f->peer_cn[0]     ? f->peer_cn
                                     : "no host",
                 f->n_peer_names_total > 1 ? " and others" : "",
                 f->n_peer_names_total == 0 && f->peer_cn[0] ? " (CN)" : "");
    }
}

/* ---- conns --------------------------------------------------------------- */

static struct tls_conn *conn_new(struct tls_ctx *ctx, const struct tls_callbacks *cb, void *arg)
{
    if (ctx == NULL || cb == NULL || cb->on_cipher_out == NULL || cb->on_plain_in == NULL ||
        cb->on_handshake == NULL)
        return NULL;
    struct tls_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->ssl = wolfSSL_new(ctx->w);
    if (c->ssl == NULL) {
        free(c);
        return NULL;
    }
    c->ctx = tls_ctx_ref(ctx);
    c->cb = *cb;
    c->arg = arg;
    buf_init(&c->out, TLS_CIPHER_OUT_MAX);
    wolfSSL_SSLSetIORecv(c->ssl, io_recv);
    wolfSSL_SSLSetIOSend(c->ssl, io_send);
    wolfSSL_SetIOReadCtx(c->ssl, c);
    wolfSSL_SetIOWriteCtx(c->ssl, c);
    wolfSSL_set_app_data(c->ssl, c);
    return c;
}

static void conn_destroy(struct tls_conn *c)
{
    wolfSSL_free(c->ssl);
    buf_free(&c->out);
    tls_ctx_free(c->ctx);
    free(c);
}

struct tls_conn *tls_conn_server_new(struct tls_ctx *ctx, const struct tls_callbacks *cb, void *arg)
{
    if (ctx == NULL || !ctx->server)
        return NULL;
    struct tls_conn *c = conn_new(ctx, cb, arg);
    if (c == NULL)
        return NULL;
    c->facts.is_server = true;
    return c;
}

static bool is_ip_literal(const char *host)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

struct tls_conn *tls_conn_client_new(struct tls_ctx *ctx, const char *host, enum tls_verify verify,
                                     const struct tls_callbacks *cb, void *arg)
{
    if (ctx == NULL || ctx->server)
        return NULL;
    if (verify != TLS_VERIFY_NONE && verify != TLS_VERIFY_HOST)
        return NULL;
    if (verify == TLS_VERIFY_HOST && (host == NULL || *host == '\0'))
        return NULL;
    size_t hlen = host != NULL ? strlen(host) : 0;
    if (hlen > 0 && host[hlen - 1] == '.')
        hlen--;
    if (hlen >= TLS_FACTS_NAME_LEN)
        return NULL;
    struct tls_conn *c = conn_new(ctx, cb, arg);
    if (c == NULL)
        return NULL;
    c->facts.mode = verify;
    memcpy(c->facts.host, host != NULL ? host : "", hlen);
    c->facts.host[hlen] = '\0';

    wolfSSL_set_verify(c->ssl, WOLFSSL_VERIFY_PEER, verify_cb);
    if (verify == TLS_VERIFY_HOST && wolfSSL_SetMinVersion(c->ssl, WOLFSSL_TLSV1_2) != 1)
        goto fail;
    if (hlen > 0 && !is_ip_literal(c->facts.host) &&
        wolfSSL_UseSNI(c->ssl, WOLFSSL_SNI_HOST_NAME, c->facts.host, (unsigned short)hlen) !=
            WOLFSSL_SUCCESS)
        goto fail;
    return c;
fail:
    conn_destroy(c);
    return NULL;
}

/* Enter and leave a public call; leave() destroys a conn freed meanwhile.
 * Returns true if the conn is gone. */
static void enter(struct tls_conn *c)
{
    c->busy++;
}

static bool leave(struct tls_conn *c)
{
    if (!c->freed)
        flush(c);
    if (--c->busy == 0 && c->freed) {
        conn_destroy(c);
        return true;
    }
    return false;
}

static void fill_session_facts(struct tls_conn *c)
{
    const char *v = wolfSSL_get_version(c->ssl);
    str_copy(c->facts.version, v != NULL ? v : "", sizeof c->facts.version);
    /* The IANA name ("TLS_AES_128_GCM_SHA256"); wolfSSL's own name if the
     * suite has none. */
    const char *ci = NULL;
    int suite = wolfSSL_get_current_cipher_suite(c->ssl);
    if (suite >= 0)
        ci = wolfSSL_get_cipher_name_iana_from_suite((unsigned char)(suite >> 8),
                                                     (unsigned char)(suite & 0xff));
    if (ci == NULL || *ci == '\0' || strcmp(ci, "None") == 0)
        ci = wolfSSL_CIPHER_get_name(wolfSSL_get_current_cipher(c->ssl));
    str_copy(c->facts.cipher, ci != NULL ? ci : "", sizeof c->facts.cipher);
    const char *g = wolfSSL_get_curve_name(c->ssl);
    str_copy(c->facts.group, g != NULL ? g : "", sizeof c->facts.group);
}

static void report_handshake(struct tls_conn *c, int status)
{
    flush(c);
    if (c->freed)
        return;
    c->in_cb = true;
    c->cb.on_handshake(c->arg, status, &c->facts);
    c->in_cb = false;
}

static void report_closed(struct tls_conn *c, int status)
{
    if (c->ended)
        return;
    c->ended = true;
    flush(c);
    if (c->freed || c->cb.on_closed == NULL)
        return;
    c->in_cb = true;
    c->cb.on_closed(c->arg, status);
    c->in_cb = false;
}

static void handshake_failed(struct tls_conn *c, int e)
{
    struct tls_facts *f = &c->facts;
    c->failed = true;
    fill_session_facts(c);
    if (!f->is_server)
        settle_verification(c);
    /* A certificate failure that stopped the handshake is the reason;
     * anything else is a handshake failure. */
    bool cert_reason = !f->is_server && f->mode == TLS_VERIFY_HOST && c->leaf_seen && !f->verified;
    if (!cert_reason) {
        char tmp[80];
        f->failure = TLS_FAIL_HANDSHAKE;
        if (f->is_server)
            set_text(f, "TLS handshake failed: %s", wolf_err_text(e, tmp, sizeof tmp));
        else
            set_text(f, "TLS handshake failed with %s: %s", f->host[0] ? f->host : "server",
                     wolf_err_text(e, tmp, sizeof tmp));
    }
    log_debug("tls", "%s", f->text);
    report_handshake(c, ERR_TLS);
}

static void handshake_succeeded(struct tls_conn *c)
{
    struct tls_facts *f = &c->facts;
    fill_session_facts(c);
    if (!f->is_server) {
        settle_verification(c);
        if (f->mode == TLS_VERIFY_HOST && !f->verified) {
            /* Defence in depth: wolfSSL completed a handshake the verify
             * callback did not accept (or never saw). */
            c->failed = true;
            log_debug("tls", "%s", f->text);
            report_handshake(c, ERR_TLS);
            return;
        }
    }
    c->hs_done = true;
    f->handshake_done = true;
    log_debug("tls", "%s handshake: %s %s%s%s%s", f->is_server ? "server" : "client", f->version,
              f->cipher,
              f->is_server  ? ""
              : f->verified ? ", verified"
                            : ", not verified",
              f->text[0] ? ": " : "", f->text);
    report_handshake(c, 0);
}

/* Run wolfSSL on whatever input there is until it wants more. */
static void pump(struct tls_conn *c)
{
    if (!c->hs_done) {
        int r = c->facts.is_server ? wolfSSL_accept(c->ssl) : wolfSSL_connect(c->ssl);
        if (r != WOLFSSL_SUCCESS) {
            int e = wolfSSL_get_error(c->ssl, r);
            if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
                return;
            handshake_failed(c, e);
            return;
        }
        handshake_succeeded(c);
        if (c->freed || c->failed)
            return;
    }
    /* Decrypt until wolfSSL wants more input. The stack buffer is one
     * maximum record: wolfSSL hands over a record at a time at most. */
    char plain[16384];
    while (!c->freed && !c->failed && !c->ended) {
        int r = wolfSSL_read(c->ssl, plain, sizeof plain);
        if (r > 0) {
            flush(c);
            if (c->freed)
                return;
            c->in_cb = true;
            c->cb.on_plain_in(c->arg, plain, (size_t)r);
            c->in_cb = false;
            continue;
        }
        int e = wolfSSL_get_error(c->ssl, r);
        if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
            return;
        if (e == WOLFSSL_ERROR_ZERO_RETURN) {
            log_debug("tls", "peer sent close_notify");
            report_closed(c, 0);
            return;
        }
        char tmp[80];
        c->failed = true;
        log_debug("tls", "session failed: %s", wolf_err_text(e, tmp, sizeof tmp));
        report_closed(c, ERR_TLS);
        return;
    }
}

int tls_conn_start(struct tls_conn *c)
{
    if (c == NULL || c->freed || c->started || c->in_cb || c->in_out_cb)
        return ERR_INVAL;
    c->started = true;
    enter(c);
    c->in = NULL;
    c->in_len = 0;
    pump(c);
    leave(c);
    return 0;
}

int tls_conn_feed(struct tls_conn *c, const void *data, size_t n)
{
    if (c == NULL || c->freed || !c->started || c->in_cb || c->in_out_cb)
        return ERR_INVAL;
    if (c->failed || c->ended)
        return ERR_CLOSED;
    if (n == 0)
        return 0;
    enter(c);
    c->in = data;
    c->in_len = n;
    pump(c);
    /* The rest (if the session ended mid-way) is dropped. */
    c->in = NULL;
    c->in_len = 0;
    leave(c);
    return 0;
}

int tls_conn_eof(struct tls_conn *c)
{
    if (c == NULL || c->freed || c->in_cb || c->in_out_cb)
        return ERR_INVAL;
    if (c->failed || c->ended || !c->started)
        return 0;
    enter(c);
    if (!c->hs_done) {
        struct tls_facts *f = &c->facts;
        c->failed = true;
        fill_session_facts(c);
        if (!f->is_server)
            settle_verification(c);
        f->failure = TLS_FAIL_HANDSHAKE;
        set_text(f, "TLS handshake failed%s%s: connection closed by peer",
                 f->host[0] ? " with " : "", f->host);
        log_debug("tls", "%s", f->text);
        report_handshake(c, ERR_TLS);
    } else {
        report_closed(c, ERR_CLOSED);
    }
    leave(c);
    return 0;
}

int tls_conn_write(struct tls_conn *c, const void *data, size_t n)
{
    if (c == NULL || c->freed || c->in_out_cb)
        return ERR_INVAL;
    if (c->failed || c->ended || c->sent_notify)
        return ERR_CLOSED;
    if (!c->hs_done)
        return ERR_AGAIN;
    if (n == 0)
        return 0;
    enter(c);
    int rc = 0;
    const char *p = data;
    while (n > 0 && !c->freed) {
        /* wolfSSL_write takes an int; feed it in slices. */
        int chunk = n > (1u << 20) ? (1 << 20) : (int)n;
        int r = wolfSSL_write(c->ssl, p, chunk);
        if (r <= 0) {
            int e = wolfSSL_get_error(c->ssl, r);
            char tmp[80];
            log_debug("tls", "write failed: %s", wolf_err_text(e, tmp, sizeof tmp));
            /* Our send callback never blocks, so WANT_WRITE cannot mean
             * "later": any failure here is final. */
            c->failed = true;
            c->ended = true;
            rc = ERR_TLS;
            break;
        }
        p += r;
        n -= (size_t)r;
    }
    leave(c);
    return rc;
}

int tls_conn_shutdown(struct tls_conn *c)
{
    if (c == NULL || c->freed || c->in_out_cb)
        return ERR_INVAL;
    if (c->sent_notify || !c->hs_done || c->failed)
        return 0;
    c->sent_notify = true;
    enter(c);
    /* Sends close_notify; the return value only says whether the peer's
     * close_notify was seen too, which we do not wait for. */
    (void)wolfSSL_shutdown(c->ssl);
    leave(c);
    return 0;
}

const struct tls_facts *tls_conn_facts(const struct tls_conn *c)
{
    return &c->facts;
}

bool tls_conn_established(const struct tls_conn *c)
{
    return c != NULL && c->hs_done && !c->failed && !c->ended;
}

void tls_conn_free(struct tls_conn *c)
{
    if (c == NULL || c->freed)
        return;
    c->freed = true;
    if (c->busy == 0)
        conn_destroy(c);
}

/* ---- an operator's certificate check ------------------------------------ */

#define CHECK_CHAIN_MAX 16

struct check_names {
    struct tls_cert_check *out;
    const char *host;
    char reasons[512];
};

static void check_name(void *arg, const char *name, bool is_cn)
{
    struct check_names *cn = arg;
    struct tls_cert_check *o = cn->out;
    o->names_from_cn = is_cn;
    if (o->n_names < TLS_CHECK_NAMES_MAX) {
        char *slot = o->names[o->n_names++];
        if (name != NULL)
            copy_printable(slot, TLS_FACTS_NAME_LEN, name, strlen(name));
        else
            str_copy(slot, "?", TLS_FACTS_NAME_LEN);
    }
    const char *why = name != NULL ? tls_name_mismatch(name, cn->host) : "unreadable name";
    if (why == NULL) {
        o->name_match = true;
        return;
    }
    size_t used = strlen(cn->reasons);
    snprintf(cn->reasons + used, sizeof cn->reasons - used, "%s%s%s: %s", used ? "; " : "",
             name != NULL ? name : "?", is_cn ? " (CN)" : "", why);
}

/* Is the certificate past its notAfter? */
static bool cert_expired(WOLFSSL_X509 *x)
{
    const WOLFSSL_ASN1_TIME *t = wolfSSL_X509_get_notAfter(x);
    return t != NULL && wolfSSL_X509_cmp_current_time(t) < 0;
}

/* Read a PEM file of at most 1 MiB, NUL-terminated. */
static int read_small_file(const char *path, char **text, size_t *len, char *why, size_t why_size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        set_why(why, why_size, "certificate file %s: %s", path, strerror(errno));
        return ERR_INVAL;
    }
    size_t cap = 1 << 20;
    char *b = malloc(cap + 1);
    if (b == NULL) {
        fclose(f);
        return ERR_NOMEM;
    }
    size_t n = fread(b, 1, cap + 1, f);
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad || n > cap) {
        free(b);
        set_why(why, why_size, "certificate file %s: %s", path,
                bad ? "read error" : "larger than 1 MiB");
        return ERR_INVAL;
    }
    b[n] = '\0';
    *text = b;
    *len = n;
    return 0;
}

static void add_error(struct tls_cert_check *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add_error(struct tls_cert_check *o, const char *fmt, ...)
{
    size_t used = strlen(o->error);
    if (used > 0 && used + 2 < sizeof o->error) {
        memcpy(o->error + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->error + used, sizeof o->error - used, fmt, ap);
    va_end(ap);
}

int tls_check_cert_file(const char *cert_file, const char *host, const char *ca_file,
                        struct tls_cert_check *out, char *why, size_t why_size)
{
    memset(out, 0, sizeof *out);
    if (host == NULL || *host == '\0') {
        set_why(why, why_size, "no host name given");
        return ERR_INVAL;
    }
    if (!file_readable("certificate", cert_file, why, why_size))
        return ERR_INVAL;
    WOLFSSL_X509 *certs[CHECK_CHAIN_MAX];
    size_t n = 0;
    char *text = NULL;
    size_t len = 0;
    int rc = read_small_file(cert_file, &text, &len, why, why_size);
    if (rc != 0)
        return rc;
    /* wolfSSL's PEM readers take the first certificate of a buffer, so cut
     * the file at each BEGIN line. */
    static const char begin[] = "-----BEGIN CERTIFICATE-----";
    char *p = strstr(text, begin);
    while (p != NULL && n < CHECK_CHAIN_MAX) {
        char *next = strstr(p + 1, begin);
        size_t plen = next != NULL ? (size_t)(next - p) : len - (size_t)(p - text);
        certs[n] = wolfSSL_X509_load_certificate_buffer((const unsigned char *)p, (int)plen,
                                                        WOLFSSL_FILETYPE_PEM);
        if (certs[n] == NULL) {
            set_why(why, why_size, "certificate file %s: certificate %zu is not valid PEM",
                    cert_file, n + 1);
            for (size_t i = 0; i < n; i++)
                wolfSSL_X509_free(certs[i]);
            free(text);
            return ERR_INVAL;
        }
        n++;
        p = next;
    }
    free(text);
    if (n == 0) {
        set_why(why, why_size, "certificate file %s: no PEM certificate", cert_file);
        return ERR_INVAL;
    }
    /* The trust store exactly as delivery loads it. */
    struct tls_ctx *ctx = tls_ctx_client_new(ca_file, why, why_size);
    if (ctx == NULL) {
        for (size_t i = 0; i < n; i++)
            wolfSSL_X509_free(certs[i]);
        return ERR_INVAL;
    }
    WOLFSSL_CERT_MANAGER *cm = wolfSSL_CTX_GetCertManager(ctx->w);

    /* The chain: as in a handshake, a certificate after the leaf is used as
     * an issuer once it verifies itself (against the trust store or an
     * intermediate that did), and only if it is a CA. Up to n rounds, so the
     * order in the file does not matter. Each verification is wolfSSL's own
     * (signature, dates, CA constraints). */
    bool used[CHECK_CHAIN_MAX] = {false};
    int first_err = 0;
    size_t err_at = 0;
    for (size_t round = 1; round < n; round++) {
        bool progress = false;
        for (size_t i = 1; i < n; i++) {
            if (used[i])
                continue;
            int sz = 0;
            const unsigned char *der = wolfSSL_X509_get_der(certs[i], &sz);
            if (der == NULL || sz <= 0 || wolfSSL_X509_get_isCA(certs[i]) != 1)
                continue;
            if (wolfSSL_CertManagerVerifyBuffer(cm, der, sz, WOLFSSL_FILETYPE_ASN1) !=
                WOLFSSL_SUCCESS)
                continue;
            if (wolfSSL_CertManagerLoadCABuffer(cm, der, sz, WOLFSSL_FILETYPE_ASN1) ==
                WOLFSSL_SUCCESS) {
                used[i] = true;
                progress = true;
            }
        }
        if (!progress)
            break;
    }
    int sz = 0;
    const unsigned char *der = wolfSSL_X509_get_der(certs[0], &sz);
    int r = der != NULL && sz > 0
                ? wolfSSL_CertManagerVerifyBuffer(cm, der, sz, WOLFSSL_FILETYPE_ASN1)
                : ASN_PARSE_E;
    if (r != WOLFSSL_SUCCESS) {
        first_err = r;
        err_at = 0;
    }
    out->chain_valid = first_err == 0;

    /* Dates, said separately: an expired certificate that also does not
     * chain reports the chain first, but the operator wants both facts. */
    for (size_t i = 0; i < n; i++) {
        if (!cert_expired(certs[i]))
            continue;
        out->expired = true;
        char cn[TLS_FACTS_NAME_LEN];
        name_text(cn, sizeof cn, wolfSSL_X509_get_subject_name(certs[i]));
        if (first_err == 0 || classify_verify_error(first_err) != TLS_FAIL_CERT_EXPIRED ||
            i != err_at)
            add_error(out, "%s certificate%s%s%s has expired", i == 0 ? "the" : "a chain",
                      cn[0] ? " (CN=" : "", cn, cn[0] ? ")" : "");
    }
    if (!out->chain_valid) {
        out->failure = classify_verify_error(first_err);
        add_error(out, "%s", verify_error_text(first_err));
    }

    struct check_names cn = {.out = out, .host = host};
    leaf_names(certs[0], check_name, &cn);
    if (!out->name_match) {
        if (out->failure == TLS_FAIL_NONE)
            out->failure = TLS_FAIL_HOST_MISMATCH;
        if (out->n_names == 0)
            add_error(out, "the certificate names no host (no DNS SAN, no CN)");
        else
            add_error(out, "no name matches %s (%s)", host, cn.reasons);
    }
    if (out->chain_valid && out->name_match)
        out->error[0] = '\0';

    tls_ctx_free(ctx);
    for (size_t i = 0; i < n; i++)
        wolfSSL_X509_free(certs[i]);
    return 0;
}

size_t tls_conn_peer_chain(const struct tls_conn *c, struct tls_der *out, size_t max)
{
    /* SESSION_CERTS (Debian's build) keeps the chain as received, leaf
     * first, for the life of the session. */
    if (c == NULL || c->ssl == NULL || !c->facts.handshake_done)
        return 0;
    WOLFSSL_X509_CHAIN *ch = wolfSSL_get_peer_chain(c->ssl);
    int n = ch != NULL ? wolfSSL_get_chain_count(ch) : 0;
    size_t k = 0;
    for (int i = 0; i < n && k < max; i++) {
        const unsigned char *der = wolfSSL_get_chain_cert(ch, i);
        int len = wolfSSL_get_chain_length(ch, i);
        if (der == NULL || len <= 0)
            break;
        out[k].data = der;
        out[k].len = (size_t)len;
        k++;
    }
    return k;
}
