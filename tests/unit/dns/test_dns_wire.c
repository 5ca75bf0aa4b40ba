/*
 * test_dns_wire.c - the dns module without a loop: classification of
 * handcrafted answers (RFC 5321 5.1, RFC 7505, RFC 2308), the bounded
 * parser (compression, truncation), TXT joining (RFC 7208 3.3), MX
 * ordering, the cache with a fake clock, and the option parsers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "base.h"
#include "dns_int.h"
#include "dnsmsg.h"

enum { RC_NOERROR = 0, RC_SERVFAIL = 2, RC_NXDOMAIN = 3, RC_REFUSED = 5 };
#define ANS (MB_QR | MB_RD | MB_RA)

static void parse(struct mb *m, const char *qname, uint16_t qtype, struct dns_result *r)
{
    assert_true(m->ok);
    memset(r, 0, sizeof(*r));
    assert_int_equal(dns_parse_answer(m->b, m->n, qname, qtype, r), 0);
}

static void test_mx_sorted(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 4, 0, 0);
    mb_question(&m, "example.test", DNS_T_MX);
    mb_mx(&m, "example.test", 300, 20, "mx3.example.test");
    mb_mx(&m, "example.test", 100, 10, "mx1.example.test");
    mb_mx(&m, "example.test", 300, 10, "mx2.example.test");
    mb_mx(&m, "other.test", 5, 0, "stray.example.test"); /* another owner: ignored */
    struct dns_result r;
    parse(&m, "example.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_int_equal(r.n_mx, 3);
    assert_int_equal(r.mx[0].pref, 10);
    assert_int_equal(r.mx[1].pref, 10);
    assert_int_equal(r.mx[2].pref, 20);
    assert_string_equal(r.mx[2].host, "mx3.example.test");
    assert_true(strcmp(r.mx[0].host, "mx1.example.test") == 0 ||
                strcmp(r.mx[0].host, "mx2.example.test") == 0);
    assert_int_equal(r.ttl, 100);
    assert_int_equal(r.n_rr, 3);
    assert_false(dns_status_permanent(r.status));
    dns_result_clear(&r);
}

/* Equal preferences come out in both orders over many parses. */
static void test_mx_equal_shuffled(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 2, 0, 0);
    mb_question(&m, "example.test", DNS_T_MX);
    mb_mx(&m, "example.test", 300, 10, "a.example.test");
    mb_mx(&m, "example.test", 300, 10, "b.example.test");
    int first_a = 0;
    for (int i = 0; i < 200; i++) {
        struct dns_result r;
        parse(&m, "example.test", DNS_T_MX, &r);
        if (strcmp(r.mx[0].host, "a.example.test") == 0)
            first_a++;
        dns_result_clear(&r);
    }
    assert_true(first_a > 20 && first_a < 180);
}

static uint32_t fixed_rnd(void *arg)
{
    uint32_t *v = arg;
    return (*v)++;
}

static void test_mx_sort_stable_prefs(void **state)
{
    (void)state;
    for (uint32_t seed = 0; seed < 20; seed++) {
        char n[6][8] = {"p5a", "p1a", "p5b", "p0", "p1b", "p9"};
        struct dns_mx mx[6] = {{5, n[0]}, {1, n[1]}, {5, n[2]}, {0, n[3]}, {1, n[4]}, {9, n[5]}};
        uint32_t s = seed;
        dns_mx_sort(mx, 6, fixed_rnd, &s);
        for (int i = 1; i < 6; i++)
            assert_true(mx[i - 1].pref <= mx[i].pref);
        assert_string_equal(mx[0].host, "p0");
        assert_string_equal(mx[5].host, "p9");
    }
}

static void test_null_mx(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 1, 0, 0);
    mb_question(&m, "null.test", DNS_T_MX);
    mb_mx(&m, "null.test", 3600, 0, ".");
    struct dns_result r;
    parse(&m, "null.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_NULL_MX);
    assert_true(dns_status_permanent(r.status));
    assert_int_equal(r.ttl, 3600);
    dns_result_clear(&r);

    /* A null MX among real ones: the real ones are used. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 2, 0, 0);
    mb_question(&m, "mixed.test", DNS_T_MX);
    mb_mx(&m, "mixed.test", 60, 0, ".");
    mb_mx(&m, "mixed.test", 60, 10, "mx.mixed.test");
    parse(&m, "mixed.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_int_equal(r.n_mx, 1);
    assert_string_equal(r.mx[0].host, "mx.mixed.test");
    dns_result_clear(&r);
}

static void test_implicit_mx_and_negative_ttl(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 0, 1, 0);
    mb_question(&m, "implicit.test", DNS_T_MX);
    mb_soa(&m, "test", 900, 300);
    struct dns_result r;
    parse(&m, "implicit.test.", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_IMPLICIT_MX);
    assert_int_equal(r.n_mx, 1);
    assert_string_equal(r.mx[0].host, "implicit.test");
    assert_int_equal(r.mx[0].pref, 0);
    assert_int_equal(r.ttl, 300); /* RFC 2308 5: min(SOA TTL, MINIMUM) */
    dns_result_clear(&r);

    /* NODATA for A, SOA TTL smaller than MINIMUM. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 0, 1, 0);
    mb_question(&m, "host.test", DNS_T_A);
    mb_soa(&m, "test", 30, 300);
    parse(&m, "host.test", DNS_T_A, &r);
    assert_int_equal(r.status, DNS_NODATA);
    assert_int_equal(r.ttl, 30);
    assert_true(dns_status_permanent(r.status));
    dns_result_clear(&r);
}

static void test_nxdomain(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NXDOMAIN, 1, 0, 1, 0);
    mb_question(&m, "nope.test", DNS_T_MX);
    mb_soa(&m, "test", 600, 60);
    struct dns_result r;
    parse(&m, "nope.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_NXDOMAIN);
    assert_int_equal(r.ttl, 60);
    dns_result_clear(&r);

    /* Without an SOA: not cacheable (RFC 2308 5). */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NXDOMAIN, 1, 0, 0, 0);
    mb_question(&m, "nope.test", DNS_T_A);
    parse(&m, "nope.test", DNS_T_A, &r);
    assert_int_equal(r.status, DNS_NXDOMAIN);
    assert_int_equal(r.ttl, 0);
    dns_result_clear(&r);
}

static void test_rcodes_temporary(void **state)
{
    (void)state;
    static const struct {
        unsigned rcode;
        const char *why;
    } cases[] = {{RC_SERVFAIL, "SERVFAIL"},
                 {RC_REFUSED, "REFUSED"},
                 {1, "FORMERR"},
                 {4, "NOTIMP"},
                 {9, "DNS error rcode"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct mb m;
        mb_init(&m);
        mb_header(&m, 1, ANS, cases[i].rcode, 1, 0, 0, 0);
        mb_question(&m, "x.test", DNS_T_MX);
        struct dns_result r;
        parse(&m, "x.test", DNS_T_MX, &r);
        assert_int_equal(r.status, DNS_TEMPFAIL);
        assert_string_equal(r.why, cases[i].why);
        assert_false(dns_status_permanent(r.status));
        dns_result_clear(&r);
    }
}

static void test_txt_join(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 2, 0, 0);
    mb_question(&m, "_mta-sts.example.test", DNS_T_TXT);
    const char *one[] = {"v=STSv1; ", "id=2024"};
    const char *two[] = {"other record"};
    mb_txt(&m, "_mta-sts.example.test", 120, one, 2);
    mb_txt(&m, "_mta-sts.example.test", 120, two, 1);
    struct dns_result r;
    parse(&m, "_mta-sts.example.test", DNS_T_TXT, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_int_equal(r.n_txt, 2);
    assert_string_equal(r.txt[0].text, "v=STSv1; id=2024");
    assert_int_equal(r.txt[0].len, 16);
    assert_string_equal(r.txt[1].text, "other record");
    dns_result_clear(&r);

    /* A character-string running past RDATA is malformed. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 1, 0, 0);
    mb_question(&m, "t.test", DNS_T_TXT);
    size_t p = mb_rr(&m, "t.test", DNS_T_TXT, 60);
    mb_u8(&m, 10);
    mb_bytes(&m, "abc", 3);
    mb_rr_end(&m, p);
    mb_txt(&m, "t.test", 60, two, 1);
    m.b[7] = 1; /* ANCOUNT 1 left the second record as trailing bytes */
    parse(&m, "t.test", DNS_T_TXT, &r);
    assert_int_equal(r.status, DNS_TEMPFAIL);
    assert_int_equal(r.err, ERR_PROTO);
    dns_result_clear(&r);

    /* Empty strings and a NUL byte inside are kept as they are. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 1, 0, 0);
    mb_question(&m, "t.test", DNS_T_TXT);
    p = mb_rr(&m, "t.test", DNS_T_TXT, 60);
    mb_u8(&m, 0);
    mb_u8(&m, 3);
    mb_bytes(&m, "a\0b", 3);
    mb_rr_end(&m, p);
    parse(&m, "t.test", DNS_T_TXT, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_int_equal(r.txt[0].len, 3);
    assert_memory_equal(r.txt[0].text, "a\0b", 3);
    dns_result_clear(&r);
}

static void test_addresses_and_cname(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 4, 0, 0);
    mb_question(&m, "alias.test", DNS_T_AAAA);
    mb_cname(&m, "alias.test", 50, "mid.test");
    mb_cname(&m, "MID.test", 500, "host.test");
    mb_aaaa(&m, "host.test", 400, "::1");
    mb_aaaa(&m, "elsewhere.test", 400, "::2");
    struct dns_result r;
    parse(&m, "alias.test", DNS_T_AAAA, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_string_equal(r.cname, "host.test");
    assert_int_equal(r.n_addr, 1);
    assert_int_equal(r.addr[0].family, AF_INET6);
    char txt[64];
    dns_addr_format(&r.addr[0], txt, sizeof(txt));
    assert_string_equal(txt, "::1");
    assert_int_equal(r.ttl, 50);
    dns_result_clear(&r);

    /* A CNAME loop ends; nothing of the type: NODATA. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 2, 0, 0);
    mb_question(&m, "a.test", DNS_T_A);
    mb_cname(&m, "a.test", 50, "b.test");
    mb_cname(&m, "b.test", 50, "a.test");
    parse(&m, "a.test", DNS_T_A, &r);
    assert_int_equal(r.status, DNS_NODATA);
    dns_result_clear(&r);

    /* An A record with a wrong length is malformed. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 1, 0, 0);
    mb_question(&m, "h.test", DNS_T_A);
    size_t p = mb_rr(&m, "h.test", DNS_T_A, 60);
    mb_bytes(&m, "\x7f\0\0", 3);
    mb_rr_end(&m, p);
    parse(&m, "h.test", DNS_T_A, &r);
    assert_int_equal(r.status, DNS_TEMPFAIL);
    dns_result_clear(&r);
}

static void test_compression(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 1, 0, 0);
    mb_question(&m, "example.test", DNS_T_MX); /* name at offset 12 */
    mb_ptr(&m, 12);                            /* owner */
    mb_u16(&m, DNS_T_MX);
    mb_u16(&m, 1);
    mb_u32(&m, 60);
    size_t p = m.n;
    mb_u16(&m, 0);
    mb_u16(&m, 5);
    mb_u8(&m, 3);
    mb_bytes(&m, "mx1", 3);
    mb_ptr(&m, 12);
    mb_rr_end(&m, p);
    struct dns_result r;
    parse(&m, "EXAMPLE.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_string_equal(r.mx[0].host, "mx1.example.test");
    dns_result_clear(&r);

    /* A pointer to itself, and a forward pointer, are refused. */
    for (int fwd = 0; fwd < 2; fwd++) {
        mb_init(&m);
        mb_header(&m, 1, ANS, RC_NOERROR, 1, 1, 0, 0);
        mb_question(&m, "example.test", DNS_T_MX);
        size_t here = m.n;
        mb_ptr(&m, fwd ? (unsigned)here + 2 : (unsigned)here);
        mb_u16(&m, DNS_T_MX);
        mb_u16(&m, 1);
        mb_u32(&m, 60);
        mb_u16(&m, 3);
        mb_u16(&m, 5);
        mb_u8(&m, 0);
        parse(&m, "example.test", DNS_T_MX, &r);
        assert_int_equal(r.status, DNS_TEMPFAIL);
        assert_int_equal(r.err, ERR_PROTO);
        dns_result_clear(&r);
    }

    /* Escapes: a dot and a space inside a label. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 1, 0, 0);
    mb_question(&m, "x.test", DNS_T_MX);
    p = mb_rr(&m, "x.test", DNS_T_MX, 60);
    mb_u16(&m, 1);
    mb_u8(&m, 3);
    mb_bytes(&m, "a.b", 3);
    mb_u8(&m, 2);
    mb_bytes(&m, "c ", 2);
    mb_u8(&m, 0);
    mb_rr_end(&m, p);
    parse(&m, "x.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_string_equal(r.mx[0].host, "a\\.b.c\\032");
    dns_result_clear(&r);
}

static void test_bad_messages(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 7, ANS, RC_NOERROR, 1, 2, 1, 0);
    mb_question(&m, "example.test", DNS_T_MX);
    mb_mx(&m, "example.test", 60, 10, "mx1.example.test");
    mb_mx(&m, "example.test", 60, 20, "mx2.example.test");
    mb_soa(&m, "test", 60, 60);
    assert_true(m.ok);
    /* Every prefix of a good answer is refused cleanly. */
    for (size_t n = 0; n < m.n; n++) {
        struct dns_result r;
        memset(&r, 0, sizeof(r));
        assert_int_equal(dns_parse_answer(m.b, n, "example.test", DNS_T_MX, &r), 0);
        assert_int_equal(r.status, DNS_TEMPFAIL);
        dns_result_clear(&r);
    }
    struct dns_result r;
    parse(&m, "example.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_OK);
    dns_result_clear(&r);

    /* An answer to another question, a query (QR clear), truncation. */
    parse(&m, "other.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_TEMPFAIL);
    dns_result_clear(&r);
    parse(&m, "example.test", DNS_T_A, &r);
    assert_int_equal(r.status, DNS_TEMPFAIL);
    dns_result_clear(&r);
    struct mb q = m;
    q.b[2] &= 0x7f;
    parse(&q, "example.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_TEMPFAIL);
    dns_result_clear(&r);
    q = m;
    q.b[2] |= 0x02;
    parse(&q, "example.test", DNS_T_MX, &r);
    assert_int_equal(r.status, DNS_TEMPFAIL);
    assert_string_equal(r.why, "truncated DNS answer");
    dns_result_clear(&r);
}

static void test_generic_rr(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 1, 0, 0);
    mb_question(&m, "_25._tcp.mx.test", DNS_T_TLSA);
    size_t p = mb_rr(&m, "_25._tcp.mx.test", DNS_T_TLSA, 77);
    mb_bytes(&m, "\x03\x01\x01\xaa\xbb", 5);
    mb_rr_end(&m, p);
    struct dns_result r;
    parse(&m, NULL, DNS_T_TLSA, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_string_equal(r.name, "_25._tcp.mx.test");
    assert_int_equal(r.n_rr, 1);
    assert_int_equal(r.rr[0].rdlen, 5);
    assert_memory_equal(r.rr[0].rdata, "\x03\x01\x01\xaa\xbb", 5);
    assert_int_equal(r.rr[0].ttl, 77);
    assert_int_equal(r.raw_len, m.n);
    dns_result_clear(&r);
}

static void test_cache(void **state)
{
    (void)state;
    struct dns_cache *c = dns_cache_new(2);
    const uint8_t *msg;
    size_t len;
    uint32_t left;
    assert_int_equal(dns_cache_put(c, "Example.Test.", DNS_T_MX, (const uint8_t *)"one", 3, 10, 0),
                     0);
    assert_true(dns_cache_get(c, "example.test", DNS_T_MX, 1500, &msg, &len, &left));
    assert_int_equal(len, 3);
    assert_memory_equal(msg, "one", 3);
    assert_int_equal(left, 9);
    assert_false(dns_cache_get(c, "example.test", DNS_T_A, 1500, &msg, &len, &left));
    /* Expiry with the fake clock. */
    assert_true(dns_cache_get(c, "example.test", DNS_T_MX, 9999, &msg, &len, &left));
    assert_int_equal(left, 1);
    assert_false(dns_cache_get(c, "example.test", DNS_T_MX, 10000, &msg, &len, &left));
    assert_int_equal(dns_cache_count(c), 0);
    /* TTL 0 is not kept; oversized answers are refused. */
    assert_int_equal(dns_cache_put(c, "a.test", DNS_T_A, (const uint8_t *)"x", 1, 0, 0), 0);
    assert_int_equal(dns_cache_count(c), 0);
    static uint8_t big[DNS_CACHE_MAX_ANSWER + 1];
    assert_int_equal(dns_cache_put(c, "a.test", DNS_T_A, big, sizeof(big), 60, 0), ERR_TOOBIG);
    /* LRU: a, b; touch a; c evicts b. */
    dns_cache_put(c, "a.test", DNS_T_A, (const uint8_t *)"a", 1, 60, 0);
    dns_cache_put(c, "b.test", DNS_T_A, (const uint8_t *)"b", 1, 60, 0);
    assert_true(dns_cache_get(c, "a.test", DNS_T_A, 1, &msg, &len, &left));
    dns_cache_put(c, "c.test", DNS_T_A, (const uint8_t *)"c", 1, 60, 0);
    assert_int_equal(dns_cache_count(c), 2);
    assert_true(dns_cache_get(c, "a.test", DNS_T_A, 1, &msg, &len, &left));
    assert_false(dns_cache_get(c, "b.test", DNS_T_A, 1, &msg, &len, &left));
    assert_true(dns_cache_get(c, "c.test", DNS_T_A, 1, &msg, &len, &left));
    /* Replacing an entry keeps one copy. */
    dns_cache_put(c, "c.test", DNS_T_A, (const uint8_t *)"C2", 2, 60, 0);
    assert_int_equal(dns_cache_count(c), 2);
    assert_true(dns_cache_get(c, "C.TEST", DNS_T_A, 1, &msg, &len, &left));
    assert_memory_equal(msg, "C2", 2);
    dns_cache_clear(c);
    assert_int_equal(dns_cache_count(c), 0);
    dns_cache_free(c);
    dns_cache_free(NULL);

    /* A cache of size 0 holds nothing. */
    c = dns_cache_new(0);
    dns_cache_put(c, "a.test", DNS_T_A, (const uint8_t *)"a", 1, 60, 0);
    assert_int_equal(dns_cache_count(c), 0);
    dns_cache_free(c);
}

static void test_cache_many(void **state)
{
    (void)state;
    struct dns_cache *c = dns_cache_new(100);
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "h%d.test", i);
        assert_int_equal(dns_cache_put(c, name, DNS_T_A, (const uint8_t *)name, 4, 60, 0), 0);
        assert_true(dns_cache_count(c) <= 100);
    }
    const uint8_t *msg;
    size_t len;
    uint32_t left;
    assert_true(dns_cache_get(c, "h999.test", DNS_T_A, 0, &msg, &len, &left));
    assert_false(dns_cache_get(c, "h0.test", DNS_T_A, 0, &msg, &len, &left));
    dns_cache_free(c);
}

static void test_status_table(void **state)
{
    (void)state;
    static const struct {
        enum dns_status s;
        const char *name;
        bool permanent;
    } t[] = {
        {DNS_OK, "ok", false},          {DNS_IMPLICIT_MX, "implicit-mx", false},
        {DNS_NULL_MX, "null-mx", true}, {DNS_NXDOMAIN, "nxdomain", true},
        {DNS_NODATA, "nodata", true},   {DNS_TEMPFAIL, "tempfail", false},
        {DNS_INVALID, "invalid", true},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        assert_string_equal(dns_status_name(t[i].s), t[i].name);
        assert_int_equal(dns_status_permanent(t[i].s), t[i].permanent);
    }
}

static void test_server_parse(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        int family;
        uint16_t port;
    } t[] = {
        {"127.0.0.1", 0, AF_INET, 53},
        {"127.0.0.1:5353", 0, AF_INET, 5353},
        {"[::1]:53", 0, AF_INET6, 53},
        {"[::1]", 0, AF_INET6, 53},
        {"::1", 0, AF_INET6, 53},
        {"[127.0.0.1]:53", ERR_INVAL, 0, 0},
        {"127.0.0.1:0", ERR_INVAL, 0, 0},
        {"127.0.0.1:65536", ERR_INVAL, 0, 0},
        {"127.0.0.1:", ERR_INVAL, 0, 0},
        {"ns.example.com", ERR_INVAL, 0, 0},
        {"", ERR_INVAL, 0, 0},
        {"[::1]x", ERR_INVAL, 0, 0},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        int family = 0;
        uint8_t a[16];
        uint16_t port = 0;
        int rc = dns_server_parse(t[i].in, &family, a, &port);
        assert_int_equal(rc, t[i].rc);
        if (rc == 0) {
            assert_int_equal(family, t[i].family);
            assert_int_equal(port, t[i].port);
        }
    }
}

static void test_name_valid(void **state)
{
    (void)state;
    char long_label[80], long_name[300];
    memset(long_label, 'a', 64);
    long_label[64] = '\0';
    memset(long_name, 'a', 254);
    for (int i = 50; i < 254; i += 50)
        long_name[i] = '.';
    long_name[254] = '\0';
    static const char *good[] = {"example.com", "example.com.", "_mta-sts.example.com", "a"};
    const char *bad[] = {"", ".", "a..b", ".a", "a b", "a\\b", long_label, long_name};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(dns_name_valid(good[i]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(dns_name_valid(bad[i]));
    assert_true(dns_is_ip_literal("192.0.2.1"));
    assert_true(dns_is_ip_literal("[192.0.2.1]"));
    assert_true(dns_is_ip_literal("[IPv6:2001:db8::1]"));
    assert_true(dns_is_ip_literal("::1"));
    assert_false(dns_is_ip_literal("mx.example.com"));
    assert_false(dns_is_ip_literal("1.2.3.4.example"));
    assert_true(dns_name_eq("A.Example.", "a.example"));
    assert_false(dns_name_eq("a.example", "b.example"));
}

/* ---- DNSSEC and TLSA ---------------------------------------------------------- */

static void test_build_query(void **state)
{
    (void)state;
    uint8_t q[512];
    size_t n;
    assert_int_equal(dns_build_query("a.example.", DNS_T_TLSA, false, q, sizeof(q), &n), 0);
    const uint8_t plain[] = {0, 0,   0x01, 0x00, 0,   1,   0,   0,   0, 0, 0,  0, 1, 'a',
                             7, 'e', 'x',  'a',  'm', 'p', 'l', 'e', 0, 0, 52, 0, 1};
    assert_int_equal(n, sizeof(plain));
    assert_memory_equal(q, plain, sizeof(plain));
    /* RFC 6840 5.7: AD in the header; RFC 6891 / RFC 3225: OPT with DO. */
    assert_int_equal(dns_build_query("a.example", DNS_T_A, true, q, sizeof(q), &n), 0);
    assert_int_equal(n, sizeof(plain) + 11);
    assert_int_equal(q[3], 0x20);
    assert_int_equal(q[11], 1); /* ARCOUNT */
    const uint8_t opt[] = {0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0};
    assert_memory_equal(q + sizeof(plain), opt, sizeof(opt));
    assert_int_equal(dns_build_query("bad..name", DNS_T_A, true, q, sizeof(q), &n), ERR_INVAL);
    assert_int_equal(dns_build_query("a.example", DNS_T_A, true, q, 20, &n), ERR_TOOBIG);
}

static void test_ad_and_tlsa(void **state)
{
    (void)state;
    struct mb m;
    const char *qn = "_25._tcp.mx.example.test";
    mb_init(&m);
    mb_header(&m, 1, ANS | 0x0020, RC_NOERROR, 1, 2, 0, 0);
    mb_question(&m, qn, DNS_T_TLSA);
    size_t at = mb_rr(&m, qn, DNS_T_TLSA, 600);
    const uint8_t r1[] = {2, 1, 2, 1, 2, 3, 4};
    mb_bytes(&m, r1, sizeof(r1));
    mb_rr_end(&m, at);
    at = mb_rr(&m, qn, DNS_T_TLSA, 300);
    const uint8_t r2[] = {3, 0};
    mb_bytes(&m, r2, sizeof(r2));
    mb_rr_end(&m, at);
    struct dns_result r;
    parse(&m, qn, DNS_T_TLSA, &r);
    assert_int_equal(r.status, DNS_OK);
    assert_true(r.ad);
    assert_false(r.secure); /* only the resolver makes it secure */
    assert_int_equal(r.n_tlsa, 2);
    assert_int_equal(r.tlsa[0].usage, 2);
    assert_int_equal(r.tlsa[0].selector, 1);
    assert_int_equal(r.tlsa[0].mtype, 2);
    assert_int_equal(r.tlsa[0].len, 4);
    assert_int_equal(r.tlsa[0].data[3], 4);
    assert_int_equal(r.tlsa[1].usage, 255);
    assert_int_equal(r.ttl, 300);
    /* Not secure: records are ignored for DANE (RFC 7672 2.2). */
    assert_int_equal(dns_tlsa_classify(&r), DNS_TLSA_INSECURE);
    r.dnssec = r.secure = true;
    assert_int_equal(dns_tlsa_classify(&r), DNS_TLSA_SECURE);
    dns_result_clear(&r);

    /* Without AD. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NOERROR, 1, 0, 1, 0);
    mb_question(&m, qn, DNS_T_TLSA);
    mb_soa(&m, "example.test", 60, 30);
    parse(&m, qn, DNS_T_TLSA, &r);
    assert_false(r.ad);
    assert_int_equal(r.status, DNS_NODATA);
    assert_int_equal(dns_tlsa_classify(&r), DNS_TLSA_NODATA);
    dns_result_clear(&r);

    mb_init(&m);
    mb_header(&m, 1, ANS, RC_NXDOMAIN, 1, 0, 1, 0);
    mb_question(&m, qn, DNS_T_TLSA);
    mb_soa(&m, "example.test", 60, 30);
    parse(&m, qn, DNS_T_TLSA, &r);
    assert_int_equal(dns_tlsa_classify(&r), DNS_TLSA_NXDOMAIN);
    dns_result_clear(&r);

    /* SERVFAIL: bogus only from trusted validating resolvers. */
    mb_init(&m);
    mb_header(&m, 1, ANS, RC_SERVFAIL, 1, 0, 0, 0);
    mb_question(&m, qn, DNS_T_TLSA);
    parse(&m, qn, DNS_T_TLSA, &r);
    assert_true(r.servfail);
    assert_int_equal(dns_tlsa_classify(&r), DNS_TLSA_FAIL);
    r.dnssec = true;
    assert_int_equal(dns_tlsa_classify(&r), DNS_TLSA_BOGUS);
    assert_string_equal(dns_tlsa_status_name(DNS_TLSA_BOGUS), "bogus");
    dns_result_clear(&r);
}

static void test_tlsa_qname_and_cidr(void **state)
{
    (void)state;
    char b[300];
    assert_int_equal(dns_tlsa_qname("mx.example.com.", 25, b, sizeof(b)), 0);
    assert_string_equal(b, "_25._tcp.mx.example.com");
    assert_int_equal(dns_tlsa_qname("mx.example.com", 25, b, 10), ERR_TOOBIG);
    char longname[260];
    memset(longname, 'a', sizeof(longname));
    for (int i = 60; i < 259; i += 61)
        longname[i] = '.';
    longname[250] = '\0'; /* 250 characters: with "_25._tcp." too long */
    assert_int_equal(dns_tlsa_qname(longname, 25, b, sizeof(b)), ERR_TOOBIG);

    int fam;
    uint8_t a[16];
    unsigned bits;
    assert_int_equal(dns_cidr_parse("127.0.0.0/8", &fam, a, &bits), 0);
    assert_int_equal(fam, AF_INET);
    assert_int_equal(bits, 8);
    assert_int_equal(dns_cidr_parse("[::1]/128", &fam, a, &bits), 0);
    assert_int_equal(fam, AF_INET6);
    assert_int_equal(a[15], 1);
    assert_int_equal(dns_cidr_parse("::1", &fam, a, &bits), 0);
    assert_int_equal(bits, 128);
    assert_int_equal(dns_cidr_parse("10.1.2.3", &fam, a, &bits), 0);
    assert_int_equal(bits, 32);
    assert_int_equal(dns_cidr_parse("10.1.2.3/33", &fam, a, &bits), ERR_INVAL);
    assert_int_equal(dns_cidr_parse("resolver/8", &fam, a, &bits), ERR_INVAL);
    assert_int_equal(dns_cidr_parse("", &fam, a, &bits), ERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_query),
        cmocka_unit_test(test_ad_and_tlsa),
        cmocka_unit_test(test_tlsa_qname_and_cidr),
        cmocka_unit_test(test_mx_sorted),
        cmocka_unit_test(test_mx_equal_shuffled),
        cmocka_unit_test(test_mx_sort_stable_prefs),
        cmocka_unit_test(test_null_mx),
        cmocka_unit_test(test_implicit_mx_and_negative_ttl),
        cmocka_unit_test(test_nxdomain),
        cmocka_unit_test(test_rcodes_temporary),
        cmocka_unit_test(test_txt_join),
        cmocka_unit_test(test_addresses_and_cname),
        cmocka_unit_test(test_compression),
        cmocka_unit_test(test_bad_messages),
        cmocka_unit_test(test_generic_rr),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_cache_many),
        cmocka_unit_test(test_status_table),
        cmocka_unit_test(test_server_parse),
        cmocka_unit_test(test_name_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
