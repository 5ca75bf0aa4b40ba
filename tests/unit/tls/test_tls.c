/*
 * test_tls.c - the tls module over an in-memory pair: a client conn and a
 * server conn whose ciphertext is carried between them by the test, no
 * sockets. Certificates come from make-certs.sh (a ctest fixture) in
 * TLS_CERT_DIR.
 *
 * Covers: verified handshakes (good, mta-sts name, wildcard, CN-only, chain
 * through an intermediate), every failure reason (host mismatch, expired,
 * not yet valid, self-signed, missing intermediate, CN ignored beside a SAN),
 * opportunistic mode recording failures but completing, a TLS 1.1 client
 * refused by the server, 1 MB both ways through bounded buffers, byte-at-a-
 * time delivery, garbage ciphertext, close_notify, EOF, freeing inside
 * callbacks, context errors and reference counting.
 *
 * CMOCKA_TEST_ABORT / cmocka filters work as usual; CONVOY_TLS_DEBUG=1 turns on
 * the module's debug log. With CONVOY_TLS_SAVE_CLIENTHELLO=FILE set, the first client flight of the
 * first handshake is written to FILE (the fuzzer's seed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "base.h"
#include "tls.h"

#ifndef TLS_CERT_DIR
#error "TLS_CERT_DIR must name the directory make-certs.sh fills"
#endif

#define BIG (1024 * 1024)

struct pair;

struct side {
    struct pair *pair;
    struct tls_conn *conn;
    struct buf to_peer; /* ciphertext emitted, not yet delivered */
    struct buf plain;   /* plaintext received */
    int hs_calls, hs_status;
    struct tls_facts facts;
    int closed_calls, closed_status;
    size_t max_out; /* largest single on_cipher_out */
    size_t out_calls;
    bool free_in_handshake, free_in_plain, write_in_handshake;
};

struct pair {
    struct tls_ctx *sctx, *cctx;
    struct side c, s;
    size_t chunk; /* deliver at most this many bytes per feed (0: all) */
};

static char path_buf[4][512];

static const char *cert_path(int slot, const char *name)
{
    snprintf(path_buf[slot], sizeof path_buf[slot], "%s/%s", TLS_CERT_DIR, name);
    return path_buf[slot];
}

/* ---- callbacks ---------------------------------------------------------- */

static void on_cipher_out(void *arg, const void *data, size_t n)
{
    struct side *sd = arg;
    assert_true(n > 0);
    assert_true(n <= TLS_CIPHER_OUT_MAX);
    if (n > sd->max_out)
        sd->max_out = n;
    sd->out_calls++;
    assert_int_equal(buf_append(&sd->to_peer, data, n), 0);
}

static void on_plain_in(void *arg, const void *data, size_t n)
{
    struct side *sd = arg;
    assert_int_equal(buf_append(&sd->plain, data, n), 0);
    if (sd->free_in_plain) {
        tls_conn_free(sd->conn);
        sd->conn = NULL;
    }
}

static void on_handshake(void *arg, int status, const struct tls_facts *facts)
{
    struct side *sd = arg;
    sd->hs_calls++;
    sd->hs_status = status;
    sd->facts = *facts;
    if (status == 0 && sd->write_in_handshake)
        assert_int_equal(tls_conn_write(sd->conn, "EHLO x\r\n", 8), 0);
    if (sd->free_in_handshake) {
        tls_conn_free(sd->conn);
        sd->conn = NULL;
    }
}

static void on_closed(void *arg, int status)
{
    struct side *sd = arg;
    sd->closed_calls++;
    sd->closed_status = status;
}

static const struct tls_callbacks cbs = {
    .on_cipher_out = on_cipher_out,
    .on_plain_in = on_plain_in,
    .on_handshake = on_handshake,
    .on_closed = on_closed,
};

/* ---- the pair ------------------------------------------------------------- */

static void side_init(struct pair *p, struct side *sd)
{
    memset(sd, 0, sizeof *sd);
    sd->pair = p;
    sd->hs_status = 1; /* not called */
    buf_init(&sd->to_peer, 16 * BIG);
    buf_init(&sd->plain, 16 * BIG);
}

static void pair_setup(struct pair *p, const char *cert, const char *key, const char *host,
                       enum tls_verify mode)
{
    char why[512] = "";
    memset(p, 0, sizeof *p);
    side_init(p, &p->c);
    side_init(p, &p->s);
    p->sctx = tls_ctx_server_new(cert_path(0, cert), cert_path(1, key), why, sizeof why);
    if (p->sctx == NULL)
        fail_msg("server ctx: %s", why);
    p->cctx = tls_ctx_client_new(cert_path(2, "ca.pem"), why, sizeof why);
    if (p->cctx == NULL)
        fail_msg("client ctx: %s", why);
    p->s.conn = tls_conn_server_new(p->sctx, &cbs, &p->s);
    assert_non_null(p->s.conn);
    p->c.conn = tls_conn_client_new(p->cctx, host, mode, &cbs, &p->c);
    assert_non_null(p->c.conn);
}

static void pair_teardown(struct pair *p)
{
    tls_conn_free(p->c.conn);
    tls_conn_free(p->s.conn);
    tls_ctx_free(p->cctx);
    tls_ctx_free(p->sctx);
    buf_free(&p->c.to_peer);
    buf_free(&p->c.plain);
    buf_free(&p->s.to_peer);
    buf_free(&p->s.plain);
}

/* Move what from has emitted into to's conn. Returns whether anything moved. */
static bool carry(struct pair *p, struct side *from, struct side *to)
{
    if (from->to_peer.len == 0)
        return false;
    size_t n = from->to_peer.len;
    char *tmp = malloc(n);
    assert_non_null(tmp);
    memcpy(tmp, from->to_peer.data, n);
    buf_reset(&from->to_peer);
    size_t step = p->chunk ? p->chunk : n;
    for (size_t off = 0; off < n && to->conn != NULL; off += step) {
        size_t k = n - off < step ? n - off : step;
        int rc = tls_conn_feed(to->conn, tmp + off, k);
        if (rc == ERR_CLOSED)
            break;
        assert_int_equal(rc, 0);
    }
    free(tmp);
    return true;
}

static void run(struct pair *p)
{
    for (int i = 0; i < 1000; i++) {
        bool moved = carry(p, &p->c, &p->s);
        moved |= carry(p, &p->s, &p->c);
        if (!moved)
            return;
    }
    fail_msg("the pair never went quiet");
}

static void save_client_hello(const struct side *c)
{
    static bool saved;
    const char *file = getenv("CONVOY_TLS_SAVE_CLIENTHELLO");
    if (saved || file == NULL)
        return;
    FILE *f = fopen(file, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(c->to_peer.data, 1, c->to_peer.len, f), c->to_peer.len);
    fclose(f);
    saved = true;
}

static void handshake(struct pair *p)
{
    assert_int_equal(tls_conn_start(p->s.conn), 0);
    assert_int_equal(tls_conn_start(p->c.conn), 0);
    assert_true(p->c.to_peer.len > 0); /* the ClientHello went out at once */
    save_client_hello(&p->c);
    run(p);
}

static bool has_name(const struct tls_facts *f, const char *name)
{
    for (size_t i = 0; i < f->n_peer_names; i++)
        if (strcmp(f->peer_names[i], name) == 0)
            return true;
    return false;
}

/* A verified-mode handshake that must succeed. */
static void expect_verified(const char *cert, const char *key, const char *host)
{
    struct pair p;
    pair_setup(&p, cert, key, host, TLS_VERIFY_HOST);
    handshake(&p);
    if (p.c.hs_status != 0)
        fail_msg("%s for %s: %s", cert, host, p.c.facts.text);
    assert_int_equal(p.c.hs_calls, 1);
    assert_int_equal(p.s.hs_calls, 1);
    assert_int_equal(p.s.hs_status, 0);
    const struct tls_facts *f = &p.c.facts;
    assert_true(f->handshake_done);
    assert_true(f->verified);
    assert_true(f->chain_ok);
    assert_true(f->name_ok);
    assert_true(f->peer_cert);
    assert_int_equal(f->failure, TLS_FAIL_NONE);
    assert_string_equal(f->text, "");
    assert_true(tls_conn_established(p.c.conn));
    assert_true(tls_conn_established(p.s.conn));
    pair_teardown(&p);
}

/* A handshake that must end with a certificate failure. In TLS_VERIFY_HOST
 * the handshake fails; in TLS_VERIFY_NONE it completes with the same facts. */
static void expect_failure(const char *cert, const char *key, const char *host,
                           enum tls_failure want, const char *text_part)
{
    for (int m = 0; m < 2; m++) {
        enum tls_verify mode = m == 0 ? TLS_VERIFY_HOST : TLS_VERIFY_NONE;
        struct pair p;
        pair_setup(&p, cert, key, host, mode);
        handshake(&p);
        const struct tls_facts *f = &p.c.facts;
        assert_int_equal(p.c.hs_calls, 1);
        if (f->failure != want)
            fail_msg("%s for %s (mode %d): failure %d (%s), want %d", cert, host, mode, f->failure,
                     f->text, want);
        assert_false(f->verified);
        assert_non_null(strstr(f->text, text_part));
        assert_true(f->peer_cert);
        if (mode == TLS_VERIFY_HOST) {
            assert_int_equal(p.c.hs_status, ERR_TLS);
            assert_false(f->handshake_done);
            /* The server hears about it (an alert) and fails too. */
            assert_int_equal(p.s.hs_calls, 1);
            assert_int_equal(p.s.hs_status, ERR_TLS);
            assert_int_equal(tls_conn_write(p.c.conn, "x", 1), ERR_CLOSED);
            assert_int_equal(tls_conn_feed(p.c.conn, "x", 1), ERR_CLOSED);
        } else {
            assert_int_equal(p.c.hs_status, 0);
            assert_true(f->handshake_done);
            assert_int_equal(p.s.hs_status, 0);
            /* Opportunistic TLS still carries mail. */
            assert_int_equal(tls_conn_write(p.c.conn, "EHLO a\r\n", 8), 0);
            run(&p);
            assert_int_equal(p.s.plain.len, 8);
        }
        pair_teardown(&p);
    }
}

/* ---- tests: verification ---------------------------------------------------- */

static void test_good_verified(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com.", TLS_VERIFY_HOST);
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    assert_int_equal(p.s.hs_status, 0);
    const struct tls_facts *f = &p.c.facts;
    assert_false(f->is_server);
    assert_int_equal(f->mode, TLS_VERIFY_HOST);
    assert_true(f->verified);
    assert_string_equal(f->version, "TLSv1.3");
    assert_true(f->cipher[0] != '\0');
    assert_string_equal(f->host, "mx.example.com"); /* trailing dot dropped */
    assert_string_equal(f->peer_cn, "mx.example.com");
    assert_string_equal(f->peer_issuer_cn, "Convoy Test CA");
    assert_int_equal(f->n_peer_names_total, 2);
    assert_int_equal(f->n_peer_names, 2);
    assert_true(has_name(f, "mx.example.com"));
    assert_true(has_name(f, "mta-sts.example.com"));
    assert_int_equal(f->failure, TLS_FAIL_NONE);
    /* Server facts: version, cipher, and the SNI the client sent. */
    const struct tls_facts *sf = &p.s.facts;
    assert_true(sf->is_server);
    assert_string_equal(sf->version, "TLSv1.3");
    assert_string_equal(sf->cipher, f->cipher);
    assert_string_equal(sf->host, "mx.example.com");
    assert_false(sf->peer_cert);
    /* tls_conn_facts() is the same record. */
    assert_string_equal(tls_conn_facts(p.c.conn)->cipher, f->cipher);
    pair_teardown(&p);
}

static void test_mta_sts_host(void **state)
{
    (void)state;
    /* The policy fetcher verifies mta-sts.DOMAIN with SNI, nothing else. */
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "MTA-STS.example.com", TLS_VERIFY_HOST);
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    assert_true(p.c.facts.verified);
    assert_string_equal(p.s.facts.host, "MTA-STS.example.com");
    pair_teardown(&p);
}

static void test_wildcard(void **state)
{
    (void)state;
    expect_verified("wild.pem", "wild.key", "mx.example.net");
    expect_verified("wild.pem", "wild.key", "MX2.Example.Net");
    expect_failure("wild.pem", "wild.key", "a.b.example.net", TLS_FAIL_HOST_MISMATCH,
                   "certificate names *.example.net");
    expect_failure("wild.pem", "wild.key", "example.net", TLS_FAIL_HOST_MISMATCH,
                   "certificate verification failed for example.net");
}

static void test_wrong_name(void **state)
{
    (void)state;
    expect_failure("good.pem", "good.key", "other.example.com", TLS_FAIL_HOST_MISMATCH,
                   "certificate verification failed for other.example.com: certificate names ");
    expect_failure("good.pem", "good.key", "other.example.com", TLS_FAIL_HOST_MISMATCH,
                   "example.com and others");
}

static void test_expired(void **state)
{
    (void)state;
    expect_failure("expired.pem", "expired.key", "mx.example.com", TLS_FAIL_CERT_EXPIRED,
                   "certificate verification failed for mx.example.com: certificate has expired");
    expect_failure("future.pem", "future.key", "mx.example.com", TLS_FAIL_CERT_EXPIRED,
                   "not yet valid");
    /* Every certificate in the chain must be in date, not just the leaf. */
    expect_failure("underold-chain.pem", "underold.key", "mx.example.com", TLS_FAIL_CERT_EXPIRED,
                   "certificate has expired");
}

static void test_self_signed(void **state)
{
    (void)state;
    expect_failure("self.pem", "self.key", "mx.example.com", TLS_FAIL_CERT_NOT_TRUSTED,
                   "certificate verification failed for mx.example.com");
}

static void test_cn_only(void **state)
{
    (void)state;
    /* No DNS SAN at all: the CN is used. */
    expect_verified("cnonly.pem", "cnonly.key", "mx.example.com");
    expect_failure("cnonly.pem", "cnonly.key", "mx2.example.com", TLS_FAIL_HOST_MISMATCH,
                   "mx.example.com (CN)");
    /* A DNS SAN exists: the CN is ignored even though it names the host. */
    expect_failure("cnignored.pem", "cnignored.key", "mx.example.com", TLS_FAIL_HOST_MISMATCH,
                   "certificate names other.example.com");
}

static void test_chain(void **state)
{
    (void)state;
    expect_verified("chained-chain.pem", "chained.key", "mx.example.org");
    /* Without the intermediate the chain does not reach the root. */
    expect_failure("chained.pem", "chained.key", "mx.example.org", TLS_FAIL_CERT_NOT_TRUSTED,
                   "mx.example.org");
}

static void test_untrusted_ca_not_learned(void **state)
{
    (void)state;
    /* A server sends its own CA along with its leaf. Whatever the mode, the
     * client context must not learn that CA: a later session whose server
     * sends only the leaf must still find it untrusted. */
    for (int m = 0; m < 2; m++) {
        char why[512];
        struct tls_ctx *cctx = tls_ctx_client_new(cert_path(2, "ca.pem"), why, sizeof why);
        assert_non_null(cctx);
        for (int round = 0; round < 3; round++) {
            struct pair p;
            bool chain = round < 2;
            pair_setup(&p, chain ? "evil-chain.pem" : "evil.pem", "evil.key", "mx.example.com",
                       m == 0 ? TLS_VERIFY_NONE : TLS_VERIFY_HOST);
            /* Use the shared client ctx for every round. */
            tls_conn_free(p.c.conn);
            p.c.conn = tls_conn_client_new(cctx, "mx.example.com",
                                           round == 2 ? TLS_VERIFY_HOST
                                           : m == 0   ? TLS_VERIFY_NONE
                                                      : TLS_VERIFY_HOST,
                                           &cbs, &p.c);
            assert_non_null(p.c.conn);
            handshake(&p);
            assert_int_equal(p.c.hs_calls, 1);
            if (p.c.facts.failure != TLS_FAIL_CERT_NOT_TRUSTED)
                fail_msg("mode %d round %d: failure %d (%s)", m, round, p.c.facts.failure,
                         p.c.facts.text);
            assert_false(p.c.facts.verified);
            if (round == 2)
                assert_int_equal(p.c.hs_status, ERR_TLS);
            pair_teardown(&p);
        }
        tls_ctx_free(cctx);
    }
}

static void test_opportunistic_no_host(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "self.pem", "self.key", NULL, TLS_VERIFY_NONE);
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    assert_false(p.c.facts.verified);
    assert_false(p.c.facts.name_ok);
    assert_false(p.c.facts.chain_ok);
    assert_int_equal(p.c.facts.failure, TLS_FAIL_CERT_NOT_TRUSTED);
    assert_string_equal(p.s.facts.host, ""); /* no SNI */
    pair_teardown(&p);

    /* Opportunistic with a good certificate: verified is still reported. */
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_NONE);
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    assert_true(p.c.facts.verified);
    assert_int_equal(p.c.facts.failure, TLS_FAIL_NONE);
    pair_teardown(&p);
}

/* ---- tests: protocol ------------------------------------------------------- */

/* A raw wolfSSL TLS 1.1 client over memory, against our server conn. */
struct raw {
    struct buf in;
};

static int raw_recv(WOLFSSL *ssl, char *data, int sz, void *ctx)
{
    (void)ssl;
    struct raw *r = ctx;
    if (r->in.len == 0)
        return WOLFSSL_CBIO_ERR_WANT_READ;
    size_t n = (size_t)sz < r->in.len ? (size_t)sz : r->in.len;
    memcpy(data, r->in.data, n);
    buf_consume(&r->in, n);
    return (int)n;
}

struct raw_out {
    struct tls_conn *server;
};

static int raw_send(WOLFSSL *ssl, char *data, int sz, void *ctx)
{
    (void)ssl;
    struct raw_out *o = ctx;
    int rc = tls_conn_feed(o->server, data, (size_t)sz);
    assert_true(rc == 0 || rc == ERR_CLOSED);
    return sz;
}

/* Handshake a raw wolfSSL client of the given method with our server conn.
 * Returns wolfSSL_connect's last result. */
static int raw_handshake(struct pair *p, WOLFSSL_METHOD *method)
{
    assert_int_equal(tls_conn_start(p->s.conn), 0);
    WOLFSSL_CTX *wctx = wolfSSL_CTX_new(method);
    assert_non_null(wctx);
    wolfSSL_CTX_set_verify(wctx, WOLFSSL_VERIFY_NONE, NULL);
    WOLFSSL *ssl = wolfSSL_new(wctx);
    assert_non_null(ssl);
    struct raw r;
    buf_init(&r.in, BIG);
    struct raw_out o = {p->s.conn};
    wolfSSL_SSLSetIORecv(ssl, raw_recv);
    wolfSSL_SSLSetIOSend(ssl, raw_send);
    wolfSSL_SetIOReadCtx(ssl, &r);
    wolfSSL_SetIOWriteCtx(ssl, &o);
    int ret = WOLFSSL_FATAL_ERROR;
    for (int i = 0; i < 20; i++) {
        ret = wolfSSL_connect(ssl);
        if (ret == WOLFSSL_SUCCESS)
            break;
        int e = wolfSSL_get_error(ssl, ret);
        if (e != WOLFSSL_ERROR_WANT_READ || p->s.to_peer.len == 0)
            break;
        assert_int_equal(buf_append(&r.in, p->s.to_peer.data, p->s.to_peer.len), 0);
        buf_reset(&p->s.to_peer);
    }
    wolfSSL_free(ssl);
    wolfSSL_CTX_free(wctx);
    buf_free(&r.in);
    return ret;
}

static void test_tls11_refused(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_NONE);
    assert_int_not_equal(raw_handshake(&p, wolfTLSv1_1_client_method()), WOLFSSL_SUCCESS);
    assert_int_equal(p.s.hs_calls, 1);
    assert_int_equal(p.s.hs_status, ERR_TLS);
    assert_int_equal(p.s.facts.failure, TLS_FAIL_HANDSHAKE);
    assert_non_null(strstr(p.s.facts.text, "TLS handshake failed"));
    pair_teardown(&p);
}

static void test_tls12_accepted(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_NONE);
    assert_int_equal(raw_handshake(&p, wolfTLSv1_2_client_method()), WOLFSSL_SUCCESS);
    assert_int_equal(p.s.hs_calls, 1);
    assert_int_equal(p.s.hs_status, 0);
    assert_string_equal(p.s.facts.version, "TLSv1.2");
    assert_true(p.s.facts.cipher[0] != '\0');
    if (getenv("CONVOY_TLS_DEBUG") != NULL)
        fprintf(stderr, "wolfSSL's TLS 1.2 client got %s\n", p.s.facts.cipher);
    pair_teardown(&p);
}

/* A raw wolfSSL server of the given method over memory, against our client
 * conn. Returns wolfSSL_accept's last result. */
static int raw_bufsend(WOLFSSL *ssl, char *data, int sz, void *ctx)
{
    (void)ssl;
    assert_int_equal(buf_append(ctx, data, (size_t)sz), 0);
    return sz;
}

/* The key exchange groups the next raw_server() offers (none: wolfSSL's). */
static int *raw_groups;
static int raw_n_groups;

static int raw_server(struct pair *p, WOLFSSL_METHOD *method, const char *cert, const char *key)
{
    WOLFSSL_CTX *wctx = wolfSSL_CTX_new(method);
    assert_non_null(wctx);
    if (raw_n_groups > 0)
        assert_int_equal(wolfSSL_CTX_set_groups(wctx, raw_groups, raw_n_groups), WOLFSSL_SUCCESS);
    assert_int_equal(wolfSSL_CTX_use_certificate_chain_file(wctx, cert_path(0, cert)),
                     WOLFSSL_SUCCESS);
    assert_int_equal(wolfSSL_CTX_use_PrivateKey_file(wctx, cert_path(1, key), WOLFSSL_FILETYPE_PEM),
                     WOLFSSL_SUCCESS);
    WOLFSSL *ssl = wolfSSL_new(wctx);
    assert_non_null(ssl);
    struct raw r;
    struct buf out;
    buf_init(&r.in, BIG);
    buf_init(&out, BIG);
    wolfSSL_SSLSetIORecv(ssl, raw_recv);
    wolfSSL_SSLSetIOSend(ssl, raw_bufsend);
    wolfSSL_SetIOReadCtx(ssl, &r);
    wolfSSL_SetIOWriteCtx(ssl, &out);
    assert_int_equal(tls_conn_start(p->c.conn), 0);
    int ret = WOLFSSL_FATAL_ERROR;
    for (int i = 0; i < 20 && p->c.conn != NULL; i++) {
        assert_int_equal(buf_append(&r.in, p->c.to_peer.data, p->c.to_peer.len), 0);
        buf_reset(&p->c.to_peer);
        ret = wolfSSL_accept(ssl);
        if (out.len > 0) {
            int rc = tls_conn_feed(p->c.conn, out.data, out.len);
            assert_true(rc == 0 || rc == ERR_CLOSED);
            buf_reset(&out);
        }
        if (ret == WOLFSSL_SUCCESS || wolfSSL_get_error(ssl, ret) != WOLFSSL_ERROR_WANT_READ)
            break;
    }
    wolfSSL_free(ssl);
    wolfSSL_CTX_free(wctx);
    buf_free(&r.in);
    buf_free(&out);
    return ret;
}

static void test_tls12_server(void **state)
{
    (void)state;
    /* Many MX hosts still speak only TLS 1.2: verification is the same. */
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    assert_int_equal(raw_server(&p, wolfTLSv1_2_server_method(), "good.pem", "good.key"),
                     WOLFSSL_SUCCESS);
    assert_int_equal(p.c.hs_status, 0);
    assert_string_equal(p.c.facts.version, "TLSv1.2");
    assert_true(p.c.facts.verified);
    assert_non_null(strstr(p.c.facts.cipher, "TLS_ECDHE_ECDSA_WITH_"));
    pair_teardown(&p);

    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    assert_int_not_equal(raw_server(&p, wolfTLSv1_2_server_method(), "expired.pem", "expired.key"),
                         WOLFSSL_SUCCESS);
    assert_int_equal(p.c.hs_status, ERR_TLS);
    assert_int_equal(p.c.facts.failure, TLS_FAIL_CERT_EXPIRED);
    pair_teardown(&p);
}

/* Key exchange: X25519 first (our client's first key share); a TLS 1.3
 * server that has only P-256 still gets a handshake (after a
 * HelloRetryRequest), and so does a TLS 1.2 server. */
static void test_key_exchange_groups(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    assert_string_equal(p.c.facts.group, "X25519");
    assert_string_equal(p.s.facts.group, "X25519");
#ifndef WOLFSSL_AESNI
    /* Without AES instructions ChaCha20-Poly1305 is the first choice. */
    assert_string_equal(p.c.facts.cipher, "TLS_CHACHA20_POLY1305_SHA256");
#endif
    pair_teardown(&p);

    /* wolfSSL lets only a TLS 1.3 context choose groups. */
    int p256[] = {WOLFSSL_ECC_SECP256R1};
    raw_groups = p256;
    raw_n_groups = 1;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    int ret = raw_server(&p, wolfTLSv1_3_server_method(), "good.pem", "good.key");
    raw_groups = NULL;
    raw_n_groups = 0;
    assert_int_equal(ret, WOLFSSL_SUCCESS);
    assert_int_equal(p.c.hs_status, 0);
    assert_true(p.c.facts.verified);
    assert_string_equal(p.c.facts.version, "TLSv1.3");
    assert_string_equal(p.c.facts.group, "SECP256R1");
    pair_teardown(&p);

    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    assert_int_equal(raw_server(&p, wolfTLSv1_2_server_method(), "good.pem", "good.key"),
                     WOLFSSL_SUCCESS);
    assert_int_equal(p.c.hs_status, 0);
    assert_string_equal(p.c.facts.version, "TLSv1.2");
    assert_true(p.c.facts.group[0] != '\0');
    pair_teardown(&p);
}

static void test_tls11_server(void **state)
{
    (void)state;
    /* A verifying client refuses TLS 1.1 ... */
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    assert_int_not_equal(raw_server(&p, wolfTLSv1_1_server_method(), "good.pem", "good.key"),
                         WOLFSSL_SUCCESS);
    assert_int_equal(p.c.hs_status, ERR_TLS);
    assert_int_equal(p.c.facts.failure, TLS_FAIL_HANDSHAKE);
    pair_teardown(&p);

    /* ... an opportunistic one takes what wolfSSL allows (recorded either
     * way: success with "TLSv1.1", or a handshake failure). */
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_NONE);
    int ret = raw_server(&p, wolfTLSv1_1_server_method(), "good.pem", "good.key");
    if (ret == WOLFSSL_SUCCESS) {
        assert_int_equal(p.c.hs_status, 0);
        assert_string_equal(p.c.facts.version, "TLSv1.1");
    } else {
        assert_int_equal(p.c.hs_status, ERR_TLS);
        assert_int_equal(p.c.facts.failure, TLS_FAIL_HANDSHAKE);
    }
    if (getenv("CONVOY_TLS_DEBUG") != NULL)
        fprintf(stderr, "opportunistic client vs TLS 1.1 server: %s\n",
                ret == WOLFSSL_SUCCESS ? "TLSv1.1 accepted" : p.c.facts.text);
    pair_teardown(&p);
}

static void fill_pattern(char *d, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        d[i] = (char)((i * 131u + seed) % 251u);
}

static void test_big_both_ways(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    char *a = malloc(BIG), *b = malloc(BIG);
    assert_non_null(a);
    assert_non_null(b);
    fill_pattern(a, BIG, 7);
    fill_pattern(b, BIG, 11);
    p.c.max_out = p.s.max_out = 0;
    assert_int_equal(tls_conn_write(p.c.conn, a, BIG), 0);
    assert_int_equal(tls_conn_write(p.s.conn, b, BIG), 0);
    /* All ciphertext was handed over before the writes returned, in bounded
     * pieces. */
    assert_true(p.c.to_peer.len > BIG);
    assert_true(p.c.max_out <= TLS_CIPHER_OUT_MAX);
    assert_true(p.s.max_out <= TLS_CIPHER_OUT_MAX);
    assert_true(p.c.out_calls > BIG / TLS_CIPHER_OUT_MAX);
    run(&p);
    assert_int_equal(p.s.plain.len, BIG);
    assert_int_equal(p.c.plain.len, BIG);
    assert_memory_equal(p.s.plain.data, a, BIG);
    assert_memory_equal(p.c.plain.data, b, BIG);
    free(a);
    free(b);
    pair_teardown(&p);
}

static void test_byte_at_a_time(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "chained-chain.pem", "chained.key", "mx.example.org", TLS_VERIFY_HOST);
    p.chunk = 1;
    p.c.write_in_handshake = true; /* EHLO from inside on_handshake */
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    assert_int_equal(p.s.hs_status, 0);
    assert_int_equal(p.s.plain.len, 8);
    assert_memory_equal(p.s.plain.data, "EHLO x\r\n", 8);
    assert_int_equal(tls_conn_write(p.s.conn, "250 ok\r\n", 8), 0);
    run(&p);
    assert_int_equal(p.c.plain.len, 8);
    pair_teardown(&p);
}

/* tls_conn_peer_chain(): the chain as sent, leaf first, usable with
 * tls_dane_verify() after an opportunistic handshake. */
static void test_peer_chain(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "chained-chain.pem", "chained.key", "mx.example.org", TLS_VERIFY_NONE);
    struct tls_der ch[4];
    assert_int_equal(tls_conn_peer_chain(p.c.conn, ch, 4), 0);
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    size_t n = tls_conn_peer_chain(p.c.conn, ch, 4);
    assert_int_equal(n, 2);
    assert_int_equal(tls_conn_peer_chain(p.c.conn, ch, 1), 1);
    n = tls_conn_peer_chain(p.c.conn, ch, 4);
    /* The intermediate as a DANE-TA 2 0 0 anchor, the leaf as 3 0 0. */
    const char *names[] = {"mx.example.org"};
    struct tls_tlsa ta = {2, 0, 0, ch[1].data, ch[1].len};
    struct tls_dane_result res;
    assert_int_equal(tls_dane_verify(&ta, 1, ch, n, names, 1, &res), 0);
    assert_int_equal(res.depth, 1);
    struct tls_tlsa ee = {3, 0, 0, ch[0].data, ch[0].len};
    assert_int_equal(tls_dane_verify(&ee, 1, ch, n, NULL, 0, &res), 0);
    /* The intermediate is not the leaf. */
    struct tls_tlsa wrong = {3, 0, 0, ch[1].data, ch[1].len};
    assert_int_equal(tls_dane_verify(&wrong, 1, ch, n, NULL, 0, &res), ERR_TLS);
    pair_teardown(&p);
}

static void test_garbage_to_server(void **state)
{
    (void)state;
    static const char *inputs[] = {
        "EHLO example.com\r\n",      /* plaintext */
        "\x16\x03\x01\x00\x05hello", /* a bogus handshake */
        "\x16\x03\x03\xff\xff",      /* a huge record length */
        "\x17\x03\x03\x00\x10"
        "0123456789abcdef",             /* data before handshake */
        "\x15\x03\x03\x00\x02\x02\x28", /* a fatal alert */
    };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        struct pair p;
        pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_NONE);
        assert_int_equal(tls_conn_start(p.s.conn), 0);
        size_t n = strlen(inputs[i]);
        if (i == 4)
            n = 7;
        assert_int_equal(tls_conn_feed(p.s.conn, inputs[i], n), 0);
        /* Some of these only claim more to come: keep feeding full
         * handshake records of junk; the server must give up within a
         * bounded amount (wolfSSL caps a handshake message's size). */
        static char rec[5 + 16384];
        memcpy(rec, "\x16\x03\x03\x40\x00", 5);
        memset(rec + 5, 'A', sizeof rec - 5);
        size_t fed = 0;
        while (p.s.hs_calls == 0 && fed < 4 * BIG) {
            int rc = tls_conn_feed(p.s.conn, rec, sizeof rec);
            assert_true(rc == 0 || rc == ERR_CLOSED);
            fed += sizeof rec;
        }
        if (getenv("CONVOY_TLS_DEBUG") != NULL)
            fprintf(stderr, "garbage %zu: failed after %zu more bytes\n", i, fed);
        assert_int_equal(p.s.hs_calls, 1);
        assert_int_equal(p.s.hs_status, ERR_TLS);
        assert_int_equal(p.s.facts.failure, TLS_FAIL_HANDSHAKE);
        assert_int_equal(tls_conn_feed(p.s.conn, "x", 1), ERR_CLOSED);
        assert_int_equal(tls_conn_write(p.s.conn, "x", 1), ERR_CLOSED);
        pair_teardown(&p);
    }
}

static void test_garbage_after_handshake(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    static const char junk[] = "\x17\x03\x03\x00\x20"
                               "this is not an encrypted record.";
    assert_int_equal(tls_conn_feed(p.c.conn, junk, sizeof junk - 1), 0);
    assert_int_equal(p.c.closed_calls, 1);
    assert_int_equal(p.c.closed_status, ERR_TLS);
    assert_false(tls_conn_established(p.c.conn));
    assert_int_equal(tls_conn_feed(p.c.conn, junk, 5), ERR_CLOSED);
    assert_int_equal(tls_conn_write(p.c.conn, "x", 1), ERR_CLOSED);
    pair_teardown(&p);
}

static void test_close_notify(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    handshake(&p);
    assert_int_equal(tls_conn_write(p.c.conn, "QUIT\r\n", 6), 0);
    assert_int_equal(tls_conn_shutdown(p.c.conn), 0);
    assert_int_equal(tls_conn_shutdown(p.c.conn), 0);
    assert_int_equal(tls_conn_write(p.c.conn, "x", 1), ERR_CLOSED);
    run(&p);
    assert_int_equal(p.s.plain.len, 6);
    assert_int_equal(p.s.closed_calls, 1);
    assert_int_equal(p.s.closed_status, 0);
    assert_int_equal(tls_conn_feed(p.s.conn, "x", 1), ERR_CLOSED);
    /* The server answers with its own close_notify. */
    assert_int_equal(tls_conn_shutdown(p.s.conn), 0);
    run(&p);
    assert_int_equal(p.c.closed_calls, 1);
    assert_int_equal(p.c.closed_status, 0);
    pair_teardown(&p);
}

static void test_eof(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    assert_int_equal(tls_conn_start(p.c.conn), 0);
    assert_int_equal(tls_conn_eof(p.c.conn), 0);
    assert_int_equal(p.c.hs_calls, 1);
    assert_int_equal(p.c.hs_status, ERR_TLS);
    assert_int_equal(p.c.facts.failure, TLS_FAIL_HANDSHAKE);
    assert_non_null(strstr(p.c.facts.text, "connection closed"));
    assert_int_equal(tls_conn_eof(p.c.conn), 0);
    assert_int_equal(p.c.hs_calls, 1);
    pair_teardown(&p);

    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    handshake(&p);
    assert_int_equal(tls_conn_eof(p.s.conn), 0);
    assert_int_equal(p.s.closed_calls, 1);
    assert_int_equal(p.s.closed_status, ERR_CLOSED);
    assert_int_equal(tls_conn_eof(p.s.conn), 0);
    assert_int_equal(p.s.closed_calls, 1);
    pair_teardown(&p);
}

static void test_free_in_callbacks(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    p.c.free_in_handshake = true;
    handshake(&p);
    assert_int_equal(p.c.hs_calls, 1);
    assert_null(p.c.conn);
    pair_teardown(&p);

    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    handshake(&p);
    p.s.free_in_plain = true;
    assert_int_equal(tls_conn_write(p.c.conn, "one\r\n", 5), 0);
    assert_int_equal(tls_conn_write(p.c.conn, "two\r\n", 5), 0);
    run(&p);
    assert_null(p.s.conn);
    assert_int_equal(p.s.plain.len, 5); /* nothing after the free */
    pair_teardown(&p);

    /* Failing handshake, freed in the callback. */
    pair_setup(&p, "self.pem", "self.key", "mx.example.com", TLS_VERIFY_HOST);
    p.c.free_in_handshake = true;
    p.s.free_in_handshake = true;
    handshake(&p);
    assert_int_equal(p.c.hs_status, ERR_TLS);
    assert_null(p.c.conn);
    pair_teardown(&p);
}

static void test_api_misuse(void **state)
{
    (void)state;
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    assert_int_equal(tls_conn_feed(p.s.conn, "x", 1), ERR_INVAL); /* not started */
    assert_int_equal(tls_conn_write(p.c.conn, "x", 1), ERR_AGAIN);
    assert_int_equal(tls_conn_start(p.c.conn), 0);
    assert_int_equal(tls_conn_start(p.c.conn), ERR_INVAL);
    assert_int_equal(tls_conn_write(p.c.conn, "x", 1), ERR_AGAIN);
    assert_int_equal(tls_conn_shutdown(p.c.conn), 0); /* no-op before the handshake */
    assert_false(tls_conn_established(p.c.conn));
    assert_null(tls_conn_server_new(p.cctx, &cbs, NULL));
    assert_null(tls_conn_client_new(p.sctx, "mx.example.com", TLS_VERIFY_NONE, &cbs, NULL));
    assert_null(tls_conn_client_new(p.cctx, NULL, TLS_VERIFY_HOST, &cbs, NULL));
    assert_null(tls_conn_client_new(p.cctx, "", TLS_VERIFY_HOST, &cbs, NULL));
    struct tls_callbacks none = {0};
    assert_null(tls_conn_client_new(p.cctx, "a.example", TLS_VERIFY_NONE, &none, NULL));
    tls_conn_free(NULL);
    tls_ctx_free(NULL);
    pair_teardown(&p);
}

static void test_ctx_errors(void **state)
{
    (void)state;
    char why[512];
    why[0] = '\0';
    assert_null(
        tls_ctx_server_new(cert_path(0, "missing.pem"), cert_path(1, "good.key"), why, sizeof why));
    assert_non_null(strstr(why, "missing.pem"));
    assert_non_null(strstr(why, "No such file"));

    assert_null(
        tls_ctx_server_new(cert_path(0, "good.pem"), cert_path(1, "missing.key"), why, sizeof why));
    assert_non_null(strstr(why, "key file"));
    assert_non_null(strstr(why, "missing.key"));

    /* A key that is not a certificate, a certificate that is not a key. */
    assert_null(
        tls_ctx_server_new(cert_path(0, "good.key"), cert_path(1, "good.key"), why, sizeof why));
    assert_non_null(strstr(why, "certificate file"));
    assert_null(
        tls_ctx_server_new(cert_path(0, "good.pem"), cert_path(1, "good.pem"), why, sizeof why));
    assert_non_null(strstr(why, "key file"));

    /* The wrong key for the certificate. */
    assert_null(
        tls_ctx_server_new(cert_path(0, "good.pem"), cert_path(1, "self.key"), why, sizeof why));
    assert_non_null(strstr(why, "does not match"));

    assert_null(tls_ctx_client_new(cert_path(0, "missing-ca.pem"), why, sizeof why));
    assert_non_null(strstr(why, "missing-ca.pem"));
    assert_null(tls_ctx_client_new(cert_path(0, "good.key"), why, sizeof why));
    assert_non_null(strstr(why, "good.key"));

    /* NULL why is fine. */
    assert_null(tls_ctx_server_new(cert_path(0, "missing.pem"), cert_path(1, "x"), NULL, 0));

    /* The system store loads on Debian. */
    FILE *f = fopen("/etc/ssl/certs/ca-certificates.crt", "r");
    if (f != NULL) {
        fclose(f);
        struct tls_ctx *sys = tls_ctx_client_new(NULL, why, sizeof why);
        if (sys == NULL)
            fail_msg("system store: %s", why);
        tls_ctx_free(sys);
    }
}

static void test_ctx_refcount(void **state)
{
    (void)state;
    /* A reload drops the old contexts while conns made from them live on. */
    struct pair p;
    pair_setup(&p, "good.pem", "good.key", "mx.example.com", TLS_VERIFY_HOST);
    assert_ptr_equal(tls_ctx_ref(p.cctx), p.cctx);
    tls_ctx_free(p.cctx); /* the extra reference */
    tls_ctx_free(p.cctx);
    tls_ctx_free(p.sctx);
    p.cctx = p.sctx = NULL;
    handshake(&p);
    assert_int_equal(p.c.hs_status, 0);
    assert_true(p.c.facts.verified);
    assert_int_equal(tls_conn_write(p.c.conn, "hi", 2), 0);
    run(&p);
    assert_int_equal(p.s.plain.len, 2);
    pair_teardown(&p);
}

int main(void)
{
    /* CONVOY_TLS_DEBUG=1 shows the module's debug log on stderr. */
    if (getenv("CONVOY_TLS_DEBUG") != NULL)
        log_setup("test_tls", "mail", LOG_TO_STDERR, true);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_verified),
        cmocka_unit_test(test_mta_sts_host),
        cmocka_unit_test(test_wildcard),
        cmocka_unit_test(test_wrong_name),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_self_signed),
        cmocka_unit_test(test_cn_only),
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_peer_chain),
        cmocka_unit_test(test_untrusted_ca_not_learned),
        cmocka_unit_test(test_opportunistic_no_host),
        cmocka_unit_test(test_tls11_refused),
        cmocka_unit_test(test_tls12_accepted),
        cmocka_unit_test(test_tls12_server),
        cmocka_unit_test(test_key_exchange_groups),
        cmocka_unit_test(test_tls11_server),
        cmocka_unit_test(test_big_both_ways),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_garbage_to_server),
        cmocka_unit_test(test_garbage_after_handshake),
        cmocka_unit_test(test_close_notify),
        cmocka_unit_test(test_eof),
        cmocka_unit_test(test_free_in_callbacks),
        cmocka_unit_test(test_api_misuse),
        cmocka_unit_test(test_ctx_errors),
        cmocka_unit_test(test_ctx_refcount),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
