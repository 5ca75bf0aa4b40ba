/*
 * test_dkim.c - the dkim module against published examples: RFC 6376 3.4.5
 * (canonicalization), RFC 8463 Appendix A (an Ed25519 signature, signed
 * again with the RFC's key and verified); header selection and
 * over-signing; the From domain; keys and the key table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "dkim.h"

#ifndef KEYS_DIR
#error KEYS_DIR must name tests/unit/dkim/keys
#endif

static char *slurp(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", KEYS_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *p = malloc(65536);
    *len = fread(p, 1, 65535, f);
    p[*len] = '\0';
    fclose(f);
    return p;
}

static struct dkim_key *key_from(const char *name)
{
    size_t n;
    char *pem = slurp(name, &n);
    struct buf err;
    buf_init(&err, 1024);
    struct dkim_key *k = dkim_key_from_pem(pem, n, &err);
    if (!k)
        fprintf(stderr, "%s: %s\n", name, err.data);
    buf_free(&err);
    free(pem);
    return k;
}

/* ---- RFC 6376 3.4.5 ----------------------------------------------------------- */

static const char ex345[] = "A: X\r\n"
                            "B : Y\t\r\n"
                            "\tZ  \r\n"
                            "\r\n"
                            " C \r\n"
                            "D \t E\r\n"
                            "\r\n"
                            "\r\n";

static void test_canon_rfc6376_345(void **state)
{
    (void)state;
    struct dkim_headers h;
    assert_int_equal(dkim_headers_parse(ex345, strlen(ex345), &h), 0);
    assert_int_equal(h.n, 2);
    struct buf b;
    buf_init(&b, 4096);
    for (size_t i = 0; i < h.n; i++)
        assert_int_equal(dkim_canon_header(DKIM_CANON_RELAXED, h.v[i].raw, &b), 0);
    assert_string_equal(b.data, "a:X\r\nb:Y Z\r\n");
    buf_reset(&b);
    for (size_t i = 0; i < h.n; i++)
        assert_int_equal(dkim_canon_header(DKIM_CANON_SIMPLE, h.v[i].raw, &b), 0);
    assert_string_equal(b.data, "A: X\r\nB : Y\t\r\n\tZ  \r\n");
    const char *body = ex345 + h.body_off;
    size_t bl = strlen(body);
    buf_reset(&b);
    assert_int_equal(dkim_canon_body(DKIM_CANON_RELAXED, body, bl, &b), 0);
    assert_string_equal(b.data, " C\r\nD E\r\n");
    buf_reset(&b);
    assert_int_equal(dkim_canon_body(DKIM_CANON_SIMPLE, body, bl, &b), 0);
    assert_string_equal(b.data, " C \r\nD \t E\r\n");
    buf_free(&b);
    dkim_headers_free(&h);
}

static void test_canon_body_edges(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *simple;
        const char *relaxed;
    } cases[] = {
        {"", "\r\n", ""},                                        /* 3.4.3, 3.4.4: empty body */
        {"\r\n\r\n\r\n", "\r\n", ""},                            /* only empty lines */
        {"x", "x\r\n", "x\r\n"},                                 /* no final CRLF */
        {"a \t\r\n \r\n\t\r\n", "a \t\r\n \r\n\t\r\n", "a\r\n"}, /* WSP-only lines at the end */
        {"a\r\n\r\nb\r\n\r\n", "a\r\n\r\nb\r\n", "a\r\n\r\nb\r\n"},
        {"\xc3\xa9t\xc3\xa9  ok\r\n", "\xc3\xa9t\xc3\xa9  ok\r\n", "\xc3\xa9t\xc3\xa9 ok\r\n"},
        {"a\nb\r\n", "a\nb\r\n", "a\nb\r\n"}, /* a bare LF is not a line end */
    };
    struct buf b;
    buf_init(&b, 4096);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        buf_reset(&b);
        assert_int_equal(dkim_canon_body(DKIM_CANON_SIMPLE, cases[i].in, strlen(cases[i].in), &b),
                         0);
        assert_string_equal(b.data ? b.data : "", cases[i].simple);
        buf_reset(&b);
        assert_int_equal(dkim_canon_body(DKIM_CANON_RELAXED, cases[i].in, strlen(cases[i].in), &b),
                         0);
        assert_string_equal(b.data ? b.data : "", cases[i].relaxed);
    }
    /* The body hash with l= counts canonical octets. */
    uint8_t full[32], part[32], ref[32];
    uint64_t cl;
    assert_int_equal(dkim_body_hash(DKIM_CANON_RELAXED, "abc  def\r\n", 10, -1, full, &cl), 0);
    assert_int_equal(cl, 9);
    assert_int_equal(dkim_body_hash(DKIM_CANON_RELAXED, "abc  def\r\n", 10, 4, part, NULL), 0);
    assert_int_equal(dkim_body_hash(DKIM_CANON_RELAXED, "abc ", 4, -1, ref, NULL), 0);
    assert_memory_not_equal(full, part, 32);
    buf_free(&b);
}

/* ---- RFC 8463 Appendix A --------------------------------------------------------- */

static const char rfc8463_sig[] = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
                                  " d=football.example.com; i=@football.example.com;\r\n"
                                  " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
                                  " subject : date : message-id : from : subject : date;\r\n"
                                  " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
                                  " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
                                  " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n";
static const char rfc8463_msg[] = "From: Joe SixPack <joe@football.example.com>\r\n"
                                  "To: Suzie Q <suzie@shopping.example.net>\r\n"
                                  "Subject: Is dinner ready?\r\n"
                                  "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
                                  "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
                                  "\r\n"
                                  "Hi.\r\n"
                                  "\r\n"
                                  "We lost the game.  Are you hungry yet?\r\n"
                                  "\r\n"
                                  "Joe.\r\n";
static const char rfc8463_b[] =
    "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==";
static const char rfc8463_record[] =
    "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

static char *cat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 1);
    memcpy(p, a, la);
    memcpy(p + la, b, lb + 1);
    return p;
}

/* The body hash piece by piece equals the one-shot hash for every split:
 * random bodies made of the awkward octets (CR, LF, SP, TAB, empty lines,
 * trailing white space), both canonicalizations, with and without l=. */
static void test_body_hash_pieces(void **state)
{
    (void)state;
    static const char alphabet[] = "\r\n \tab.\r\n";
    static const char *const fixed[] = {
        "",        "\r\n",       "\r\n\r\n",
        "a",       "a\r",        "a\r\n \t\r\n\r\n",
        " \t\r\n", "x\n\r\ny\r", "abc  def \t\r\n\r\n\r\nghi\r\n \r\n",
    };
    uint32_t x = 12345;
    char body[600];
    for (int round = 0; round < 4000; round++) {
        size_t len;
        if (round < (int)(sizeof(fixed) / sizeof(fixed[0]))) {
            len = strlen(fixed[round]);
            memcpy(body, fixed[round], len);
        } else {
            x = x * 1103515245u + 12345u;
            len = (x >> 8) % sizeof(body);
            for (size_t i = 0; i < len; i++) {
                x = x * 1103515245u + 12345u;
                body[i] = alphabet[(x >> 16) % (sizeof(alphabet) - 1)];
            }
        }
        for (int c = 0; c < 2; c++) {
            enum dkim_canon canon = c ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
            int64_t limit = round % 3 == 0 ? (int64_t)(round % 50) : -1;
            uint8_t want[32], got[32];
            uint64_t want_len, got_len;
            assert_int_equal(dkim_body_hash(canon, body, len, limit, want, &want_len), 0);
            struct dkim_bh *b = dkim_bh_new(canon, limit);
            assert_non_null(b);
            size_t off = 0;
            while (off < len) {
                x = x * 1103515245u + 12345u;
                size_t k = (x >> 8) % 6; /* pieces of 0..5 octets */
                if (k > len - off)
                    k = len - off;
                assert_int_equal(dkim_bh_feed(b, body + off, k), 0);
                off += k;
            }
            assert_int_equal(dkim_bh_final(b, got, &got_len), 0);
            dkim_bh_free(b);
            assert_memory_equal(got, want, 32);
            assert_int_equal(got_len, want_len);
        }
    }
    dkim_bh_free(NULL);
}

static void test_rfc8463_sign_and_verify(void **state)
{
    (void)state;
    struct dkim_key *k = key_from("ed25519-rfc8463.pem");
    assert_non_null(k);
    assert_int_equal(dkim_key_alg(k), DKIM_ED25519_SHA256);
    struct buf rec;
    buf_init(&rec, 1024);
    assert_int_equal(dkim_key_record(k, &rec), 0);
    assert_string_equal(rec.data, rfc8463_record);
    buf_free(&rec);

    char *msg = cat(rfc8463_sig, rfc8463_msg);
    size_t len = strlen(msg);
    struct dkim_headers h;
    assert_int_equal(dkim_headers_parse(msg, len, &h), 0);
    uint8_t bh[32];
    assert_int_equal(
        dkim_body_hash(DKIM_CANON_RELAXED, msg + h.body_off, len - h.body_off, -1, bh, NULL), 0);
    /* Ed25519 is deterministic: signing the RFC's field again with its key
     * must give its b= exactly. */
    struct buf b, why;
    buf_init(&b, 1024);
    buf_init(&why, 1024);
    assert_int_equal(dkim_sign_field(k, msg, &h, h.v[0].raw, &b, &why), 0);
    assert_string_equal(b.data, rfc8463_b);

    struct dkim_check c;
    dkim_check_parse(msg, &h, 0, &c);
    assert_string_equal(c.query, "brisbane._domainkey.football.example.com");
    dkim_check_verify(msg, len, &h, 0, rfc8463_record, 0, &c);
    assert_int_equal(c.result, DKIM_PASS);
    /* No key, a wrong key type, a revoked key. */
    dkim_check_verify(msg, len, &h, 0, NULL, 0, &c);
    assert_int_equal(c.result, DKIM_PERMERROR);
    dkim_check_verify(msg, len, &h, 0, "v=DKIM1; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", 0,
                      &c);
    assert_int_equal(c.result, DKIM_PERMERROR);
    dkim_check_verify(msg, len, &h, 0, "v=DKIM1; k=ed25519; p=", 0, &c);
    assert_int_equal(c.result, DKIM_PERMERROR);
    assert_non_null(strstr(c.reason, "revoked"));
    dkim_headers_free(&h);
    free(msg);

    /* A changed Subject fails the signature, a changed body the body hash. */
    char *bad = cat(rfc8463_sig, rfc8463_msg);
    memcpy(strstr(bad, "dinner"), "supper", 6);
    assert_int_equal(dkim_headers_parse(bad, strlen(bad), &h), 0);
    dkim_check_verify(bad, strlen(bad), &h, 0, rfc8463_record, 0, &c);
    assert_int_equal(c.result, DKIM_FAIL);
    assert_string_equal(c.reason, "signature did not verify");
    dkim_headers_free(&h);
    memcpy(strstr(bad, "supper"), "dinner", 6);
    memcpy(strstr(bad, "hungry"), "thirst", 6);
    assert_int_equal(dkim_headers_parse(bad, strlen(bad), &h), 0);
    dkim_check_verify(bad, strlen(bad), &h, 0, rfc8463_record, 0, &c);
    assert_int_equal(c.result, DKIM_FAIL);
    assert_string_equal(c.reason, "body hash did not verify");
    dkim_headers_free(&h);
    free(bad);
    buf_free(&b);
    buf_free(&why);
    dkim_key_free(k);
}

/* ---- header selection ----------------------------------------------------------- */

static const char sel_msg[] = "Received: from a by b\r\n"
                              "from: Ann <ann@Example.ORG>\r\n"
                              "To: b@example.net\r\n"
                              "Subject: one\r\n"
                              "X-Mailer: not signed\r\n"
                              "SUBJECT: two\r\n"
                              "Date: Fri, 11 Jul 2003 21:00:37 -0700\r\n"
                              "\r\n"
                              "body\r\n";

/* Sign msg with k; return the new field and verify it (prepended). */
static char *sign_and_verify(struct dkim_key *k, const char *msg, const char *const *names,
                             size_t n, enum dkim_result *result)
{
    struct dkim_headers h;
    assert_int_equal(dkim_headers_parse(msg, strlen(msg), &h), 0);
    struct buf out, why;
    buf_init(&out, 65536);
    buf_init(&why, 1024);
    struct dkim_sign_opts o = {.domain = "example.org",
                               .selector = "sel",
                               .key = k,
                               .headers = names,
                               .n_headers = n,
                               .t = 1700000000};
    int rc = dkim_sign(&o, msg, strlen(msg), &h, &out, &why);
    if (rc)
        fprintf(stderr, "sign: %s\n", why.data);
    assert_int_equal(rc, 0);
    dkim_headers_free(&h);
    /* Lines stay within 78 octets. */
    for (const char *p = out.data; *p;) {
        const char *e = strstr(p, "\r\n");
        assert_non_null(e);
        assert_true(e - p <= 78);
        p = e + 2;
    }
    char *signed_msg = cat(out.data, msg);
    assert_int_equal(dkim_headers_parse(signed_msg, strlen(signed_msg), &h), 0);
    struct buf rec;
    buf_init(&rec, 4096);
    assert_int_equal(dkim_key_record(k, &rec), 0);
    struct dkim_check c;
    dkim_check_verify(signed_msg, strlen(signed_msg), &h, 0, rec.data, 1700000001, &c);
    if (c.result != DKIM_PASS)
        fprintf(stderr, "verify: %s\n%s", c.reason, signed_msg);
    *result = c.result;
    dkim_headers_free(&h);
    buf_free(&rec);
    free(signed_msg);
    buf_free(&why);
    char *field = strdup(out.data);
    buf_free(&out);
    return field;
}

/* The h= value of a signature field, unfolded. */
static void h_tag(const char *field, char *out, size_t size)
{
    const char *p = strstr(field, "\th=");
    assert_non_null(p);
    p += 3;
    size_t o = 0;
    for (; *p && *p != ';' && o + 1 < size; p++)
        if (*p != '\r' && *p != '\n' && *p != '\t' && *p != ' ')
            out[o++] = *p;
    out[o] = '\0';
}

static void test_header_selection(void **state)
{
    (void)state;
    struct dkim_key *k = key_from("ed25519-openssl.pem");
    assert_non_null(k);
    enum dkim_result r;
    char *f = sign_and_verify(k, sel_msg, NULL, 0, &r);
    assert_int_equal(r, DKIM_PASS);
    char h[512];
    h_tag(f, h, sizeof(h));
    /* From over-signed, Subject twice as it occurs twice, absent names and
     * Received/X-Mailer left out, in the order of the list. */
    assert_string_equal(h, "From:From:To:Subject:Subject:Date");
    assert_non_null(
        strstr(f, "a=ed25519-sha256; c=relaxed/relaxed;\r\n\td=example.org; s=sel; t=1700000000;"));
    assert_non_null(strstr(f, "t=1700000000;"));
    assert_null(strstr(f, " l="));
    free(f);

    /* dkim_signed_headers: From is added even when left out; duplicates and
     * names unusable in h= are dropped. */
    const char *const names[] = {"x-mailer", "Subject", "subject", "Received", "bad:name"};
    f = sign_and_verify(k, sel_msg, names, 5, &r);
    assert_int_equal(r, DKIM_PASS);
    h_tag(f, h, sizeof(h));
    assert_string_equal(h, "From:From:x-mailer:Subject:Subject:Received");

    /* A From field added after signing breaks the signature. */
    char *signed_msg = cat(f, sel_msg);
    char *forged = cat("From: evil@example.com\r\n", signed_msg);
    struct dkim_headers hd;
    assert_int_equal(dkim_headers_parse(forged, strlen(forged), &hd), 0);
    struct buf rec;
    buf_init(&rec, 4096);
    assert_int_equal(dkim_key_record(k, &rec), 0);
    struct dkim_check c;
    dkim_check_verify(forged, strlen(forged), &hd, 1, rec.data, 0, &c);
    assert_int_equal(c.result, DKIM_FAIL);
    dkim_headers_free(&hd);
    buf_free(&rec);
    free(forged);
    free(signed_msg);
    free(f);
    dkim_key_free(k);
}

static void test_rsa_sign_verify(void **state)
{
    (void)state;
    const char *files[] = {"rsa1024-pkcs8.pem", "rsa1024-trad.pem"};
    for (size_t i = 0; i < 2; i++) {
        struct dkim_key *k = key_from(files[i]);
        assert_non_null(k);
        assert_int_equal(dkim_key_alg(k), DKIM_RSA_SHA256);
        assert_int_equal(dkim_key_bits(k), 1024);
        enum dkim_result r;
        char *f = sign_and_verify(k, sel_msg, NULL, 0, &r);
        assert_int_equal(r, DKIM_PASS);
        assert_non_null(strstr(f, "a=rsa-sha256;"));
        free(f);
        /* An empty body and a message without a body at all. */
        f = sign_and_verify(k, "From: a@example.org\r\n\r\n", NULL, 0, &r);
        assert_int_equal(r, DKIM_PASS);
        free(f);
        f = sign_and_verify(k, "From: a@example.org\r\n", NULL, 0, &r);
        assert_int_equal(r, DKIM_PASS);
        free(f);
        dkim_key_free(k);
    }
}

/* Signing with a body hash computed piece by piece (a streamed body) over
 * only the header section gives the very field that signing the whole
 * message gives. */
static void test_sign_with_body_hash(void **state)
{
    (void)state;
    struct dkim_key *k = key_from("rsa1024-pkcs8.pem");
    assert_non_null(k);
    const char *msg = "From: a@example.org\r\nSubject: s\r\n\r\nline one  \r\n\tx\r\n\r\n";
    size_t len = strlen(msg);
    struct dkim_headers h = {0};
    assert_int_equal(dkim_headers_parse(msg, len, &h), 0);
    struct dkim_sign_opts o = {.domain = "example.org", .selector = "s", .key = k, .t = 1700000000};
    struct buf whole, split, why;
    buf_init(&whole, 1 << 16);
    buf_init(&split, 1 << 16);
    buf_init(&why, 1024);
    assert_int_equal(dkim_sign(&o, msg, len, &h, &whole, &why), 0);
    struct dkim_bh *b = dkim_bh_new(DKIM_CANON_RELAXED, -1);
    assert_non_null(b);
    for (size_t i = h.body_off; i < len; i++)
        assert_int_equal(dkim_bh_feed(b, msg + i, 1), 0);
    uint8_t bh[32];
    assert_int_equal(dkim_bh_final(b, bh, NULL), 0);
    dkim_bh_free(b);
    o.body_hash = bh;
    struct dkim_headers hh = {0};
    assert_int_equal(dkim_headers_parse(msg, h.body_off, &hh), 0);
    assert_int_equal(dkim_sign(&o, msg, h.body_off, &hh, &split, &why), 0);
    assert_int_equal(split.len, whole.len);
    assert_memory_equal(split.data, whole.data, whole.len);
    dkim_headers_free(&h);
    dkim_headers_free(&hh);
    buf_free(&whole);
    buf_free(&split);
    buf_free(&why);
    dkim_key_free(k);
}

static void test_keys(void **state)
{
    (void)state;
    struct buf err;
    buf_init(&err, 1024);
    size_t n;
    char *pem = slurp("rsa512.pem", &n);
    assert_null(dkim_key_from_pem(pem, n, &err));
    assert_non_null(strstr(err.data, "512 bits"));
    free(pem);
    buf_reset(&err);
    assert_null(dkim_key_from_pem("hello", 5, &err));
    assert_non_null(strstr(err.data, "no PEM"));

    /* Generated keys load again from their own PEM. */
    enum dkim_alg algs[] = {DKIM_ED25519_SHA256, DKIM_RSA_SHA256};
    for (size_t i = 0; i < 2; i++) {
        struct dkim_key *k = dkim_key_generate(algs[i], 1024, &err);
        assert_non_null(k);
        struct buf p, r1, r2;
        buf_init(&p, 65536);
        buf_init(&r1, 4096);
        buf_init(&r2, 4096);
        assert_int_equal(dkim_key_pem(k, &p), 0);
        struct dkim_key *k2 = dkim_key_from_pem(p.data, p.len, &err);
        assert_non_null(k2);
        assert_int_equal(dkim_key_record(k, &r1), 0);
        assert_int_equal(dkim_key_record(k2, &r2), 0);
        assert_string_equal(r1.data, r2.data);
        dkim_key_free(k2);
        dkim_key_free(k);
        buf_free(&p);
        buf_free(&r1);
        buf_free(&r2);
    }
    buf_free(&err);
}

/* Verification of what Convoy does not sign itself: simple/simple, l=,
 * and the reasons a signature cannot be used. */
static void test_verify_simple_and_errors(void **state)
{
    (void)state;
    struct dkim_key *k = key_from("ed25519-rfc8463.pem");
    assert_non_null(k);
    const char *body = "Hello  world\r\n\r\n";
    uint8_t bh[32];
    assert_int_equal(dkim_body_hash(DKIM_CANON_SIMPLE, body, strlen(body), 7, bh, NULL), 0);
    struct buf f, b, why;
    buf_init(&f, 8192);
    buf_init(&b, 1024);
    buf_init(&why, 1024);
    buf_append_str(&f, "DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; d=Example.org;\r\n"
                       " s=brisbane; h=From : Subject; l=7; i=joe@sub.example.org; bh=");
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 32; i += 3) {
        uint32_t v = (uint32_t)bh[i] << 16 | (i + 1 < 32 ? bh[i + 1] << 8 : 0) |
                     (i + 2 < 32 ? bh[i + 2] : 0);
        char q[5] = {b64[v >> 18], b64[(v >> 12) & 63], i + 1 < 32 ? b64[(v >> 6) & 63] : '=',
                     i + 2 < 32 ? b64[v & 63] : '=', 0};
        buf_append_str(&f, q);
    }
    buf_append_str(&f, ";\r\n b=\r\n");
    char *msg = malloc(65536);
    snprintf(msg, 65536, "%sFrom:  joe@example.org\r\nSubject: simple\r\n\r\n%s", f.data, body);
    struct dkim_headers h;
    assert_int_equal(dkim_headers_parse(msg, strlen(msg), &h), 0);
    assert_int_equal(dkim_sign_field(k, msg, &h, h.v[0].raw, &b, &why), 0);
    dkim_headers_free(&h);
    /* Put the signature in: "b=\r\n" becomes "b=SIG\r\n". */
    char *at = strstr(msg, " b=\r\n") + 3;
    size_t rest = strlen(at);
    memmove(at + b.len, at, rest + 1);
    memcpy(at, b.data, b.len);
    /* Text appended past l= does not matter. */
    strcat(msg, "appended\r\n");
    assert_int_equal(dkim_headers_parse(msg, strlen(msg), &h), 0);
    struct dkim_check c;
    dkim_check_verify(msg, strlen(msg), &h, 0, rfc8463_record, 0, &c);
    if (c.result != DKIM_PASS)
        fail_msg("%s\n%s", c.reason, msg);
    dkim_headers_free(&h);
    /* simple header canonicalization: a changed space in From breaks it. */
    char *sp = strstr(msg, "From:  joe");
    memmove(sp + 5, sp + 6, strlen(sp + 6) + 1);
    assert_int_equal(dkim_headers_parse(msg, strlen(msg), &h), 0);
    dkim_check_verify(msg, strlen(msg), &h, 0, rfc8463_record, 0, &c);
    assert_int_equal(c.result, DKIM_FAIL);
    dkim_headers_free(&h);
    free(msg);

    static const struct {
        const char *sig;
        const char *reason;
    } bad[] = {
        {"v=1; a=rsa-sha1; d=a.example; s=s; h=from; bh=AA==; b=AA==", "rsa-sha1"},
        {"v=1; a=rsa-sha256; d=a.example; s=s; h=from; b=AA==", "missing required tag bh="},
        {"v=2; a=rsa-sha256; d=a.example; s=s; h=from; bh=AA==; b=AA==", "incompatible version"},
        {"v=1; a=rsa-sha256; d=a.example; s=s; h=to; bh=AA==; b=AA==", "From field not signed"},
        {"v=1; a=rsa-sha256; d=a.example; s=s; h=from; bh=AA==; b=AA==; i=@b.example", "i= domain"},
        {"v=1; a=rsa-sha256; d=a.example; s=s; h=from; bh=AA==; b=AA==; t=5; x=4", "bad x="},
        {"v=1; a=rsa-sha256; d=a.example; s=s; h=from; bh=AA==; b=AA==; x=4", "expired"},
        {"v=1; a=rsa-sha256; d=a.example; s=s; h=from; bh=AA==; b=AA==; c=odd", "canonicalization"},
        {"v=1; a=rsa-sha256; a=rsa-sha256; d=a.example", "malformed"},
        {"v=1; a=rsa-sha256; d=a.example; s=s; h=from; bh=AA==; b=AA==",
         "k=ed25519 does not fit a=rsa-sha256"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char m[1024];
        snprintf(m, sizeof(m), "DKIM-Signature: %s\r\nFrom: a@a.example\r\n\r\n", bad[i].sig);
        assert_int_equal(dkim_headers_parse(m, strlen(m), &h), 0);
        /* An Ed25519 key record for an rsa-sha256 signature: the last case. */
        dkim_check_verify(m, strlen(m), &h, 0, "v=DKIM1; k=ed25519; p=AAAA", 100, &c);
        if (c.result != DKIM_PERMERROR || !strstr(c.reason, bad[i].reason))
            fail_msg("case %zu: %s: %s", i, dkim_result_name(c.result), c.reason);
        dkim_headers_free(&h);
    }
    buf_free(&f);
    buf_free(&b);
    buf_free(&why);
    dkim_key_free(k);
}

/* ---- the From domain ------------------------------------------------------------------ */

static void test_from_domain(void **state)
{
    (void)state;
    static const struct {
        const char *msg;
        int rc;
        const char *domain;
    } cases[] = {
        {"From: a@Example.COM\r\n\r\n", 0, "example.com"},
        {"From: \"Doe, John\" <j@x.example>\r\n\r\n", 0, "x.example"},
        {"From: John (the boss) <j@x.example> (home)\r\n\r\n", 0, "x.example"},
        {"FROM:j(comment <not@this.example>)@y.example\r\n\r\n", 0, "y.example"},
        {"From: \"a@b\"@z.example\r\n\r\n", 0, "z.example"},
        {"From: A <a@one.example>, B <b@two.example>\r\n\r\n", 0, "one.example"},
        {"From: Folded\r\n <f@fold.example>\r\n\r\n", 0, "fold.example"},
        {"From: a@dot.example.\r\n\r\n", 0, "dot.example"},
        {"From: \xc3\xa9@b\xc3\xbc.example\r\n\r\n", 0, "b\xc3\xbc.example"},
        {"To: a@b.example\r\n\r\n", ERR_NOTFOUND, ""},
        {"From: a@b.example\r\nFrom: c@d.example\r\n\r\n", ERR_INVAL, ""},
        {"From: undisclosed:;\r\n\r\n", ERR_INVAL, ""},
        {"From: a@[192.0.2.1]\r\n\r\n", ERR_INVAL, ""},
        {"From: nobody\r\n\r\n", ERR_INVAL, ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct dkim_headers h;
        assert_int_equal(dkim_headers_parse(cases[i].msg, strlen(cases[i].msg), &h), 0);
        char d[256] = "";
        int rc = dkim_from_domain(cases[i].msg, &h, d, sizeof(d));
        if (rc != cases[i].rc || (rc == 0 && strcmp(d, cases[i].domain) != 0))
            fail_msg("case %zu: rc %d domain \"%s\"", i, rc, d);
        dkim_headers_free(&h);
    }
}

/* ---- the key table -------------------------------------------------------------------- */

static char tmpdir[64];

static void put(const char *name, const char *text, mode_t mode)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static void put_key(const char *src, const char *name, mode_t mode)
{
    size_t n;
    char *p = slurp(src, &n);
    put(name, p, mode);
    free(p);
}

static void test_keytable(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_dkim.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    put_key("rsa1024-pkcs8.pem", "rsa.pem", 0600);
    put_key("ed25519-openssl.pem", "ed.pem", 0400);
    put_key("ed25519-openssl.pem", "open.pem", 0644);
    put_key("rsa512.pem", "weak.pem", 0600);
    put("good",
        "# keys\n\nExample.ORG  sel1 rsa.pem\nexample.org\tsel2 ed.pem # ed25519\n"
        "other.example s ed.pem\n",
        0644);
    char path[256];
    snprintf(path, sizeof(path), "%s/good", tmpdir);
    struct buf err;
    buf_init(&err, 8192);
    struct dkim_keytable *t = dkim_keytable_load(path, NULL, &err);
    assert_non_null(t);
    assert_int_equal(dkim_keytable_count(t), 3);
    const struct dkim_signer *s[4];
    assert_int_equal(dkim_keytable_find(t, "example.org", s, 4), 2);
    assert_string_equal(s[0]->selector, "sel1");
    assert_int_equal(dkim_key_alg(s[0]->key), DKIM_RSA_SHA256);
    assert_string_equal(s[1]->selector, "sel2");
    assert_int_equal(dkim_key_alg(s[1]->key), DKIM_ED25519_SHA256);
    assert_int_equal(dkim_keytable_find(t, "none.example", s, 4), 0);
    assert_ptr_equal(dkim_keytable_ref(t), t);
    dkim_keytable_free(t);
    dkim_keytable_free(t);

    put("bad",
        "example.org sel1 rsa.pem\n"
        "example.org sel1 ed.pem\n"
        "example.org sel3\n"
        "example.org sel4 open.pem\n"
        "example.org sel5 weak.pem\n"
        "example.org sel6 missing.pem\n"
        "exa mple.org\n"
        "bad_domain! s ed.pem\n"
        "example.org -s ed.pem\n",
        0644);
    snprintf(path, sizeof(path), "%s/bad", tmpdir);
    assert_null(dkim_keytable_load(path, NULL, &err));
    const char *want[] = {"bad:2: example.org sel1 is listed twice",
                          "bad:3: expected \"DOMAIN SELECTOR KEYFILE\"",
                          "bad:4: ",
                          "readable or writable by others",
                          "bad:5: ",
                          "512 bits",
                          "bad:6: ",
                          "missing.pem",
                          "bad:7: expected",
                          "bad:8: \"bad_domain!\" is not a domain name",
                          "bad:9: \"-s\" is not a selector"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(err.data, want[i]))
            fail_msg("missing \"%s\" in:\n%s", want[i], err.data);
    buf_free(&err);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_rfc6376_345),
        cmocka_unit_test(test_canon_body_edges),
        cmocka_unit_test(test_body_hash_pieces),
        cmocka_unit_test(test_rfc8463_sign_and_verify),
        cmocka_unit_test(test_header_selection),
        cmocka_unit_test(test_rsa_sign_verify),
        cmocka_unit_test(test_sign_with_body_hash),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_verify_simple_and_errors),
        cmocka_unit_test(test_from_domain),
        cmocka_unit_test(test_keytable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
