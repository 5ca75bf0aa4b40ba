/*
 * test_dns_loop.c - the resolver on a real libuv loop against an in-process
 * DNS responder on 127.0.0.1 (a uv_udp_t answering from a table of
 * handcrafted answers). Checks the callback contract of dns.h: never
 * synchronous (also for cache hits and invalid names), exactly once,
 * never after dns_cancel() or dns_free(); sharing of identical queries in
 * flight; the cache; timeouts and SERVFAIL as temporary and not cached; the
 * full MX resolution (RFC 5321 5.1, RFC 7505). Each test ends with
 * uv_loop_close() == 0: every handle of the resolver was closed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <uv.h>

#include "base.h"
#include "dns.h"
#include "dnsmsg.h"

#define ANS (MB_QR | MB_RD | MB_RA | MB_AA)

struct fake {
    uv_udp_t udp;
    int port;
    int queries;
    int servfail_seen;
    char last[256];
    bool last_ad; /* the last query carried the AD bit */
    bool last_do; /* ... and an EDNS0 OPT record with the DO bit */
};

struct world {
    uv_loop_t loop;
    struct fake fk;
    struct dns *d;
};

/* Read the question of a query: name (dotted) and type. */
static bool read_question(const uint8_t *b, size_t n, char *name, size_t size, unsigned *type)
{
    size_t p = 12, o = 0;
    while (p < n && b[p]) {
        size_t l = b[p++];
        if (l > 63 || p + l > n || o + l + 2 > size)
            return false;
        if (o)
            name[o++] = '.';
        memcpy(name + o, b + p, l);
        o += l;
        p += l;
    }
    if (p + 5 > n)
        return false;
    name[o] = '\0';
    *type = (unsigned)(b[p + 1] << 8 | b[p + 2]);
    return true;
}

/* The zone this responder serves. false: drop the query. */
static bool answer(struct fake *fk, const char *q, unsigned type, struct mb *m, unsigned id)
{
#define HDR(rc, an, ns)                                                                            \
    do {                                                                                           \
        mb_header(m, id, ANS, rc, 1, an, ns, 0);                                                   \
        mb_question(m, q, type);                                                                   \
    } while (0)
    if (strcmp(q, "drop.test") == 0)
        return false;
    /* sec.test: a "validating resolver" that sets AD in answers for names
     * under sec.test when asked with AD (RFC 6840 5.7); bogus.sec.test
     * always gets SERVFAIL (RFC 4035 5.5); plain.sec.test never gets AD. */
    unsigned ad = fk->last_ad ? 0x0020 : 0;
    if (strcmp(q, "bogus.sec.test") == 0 || strcmp(q, "_25._tcp.bogus.sec.test") == 0) {
        HDR(2, 0, 0);
        return true;
    }
    if (strcmp(q, "sec.test") == 0 && type == DNS_T_MX) {
        mb_header(m, id, ANS | ad, 0, 1, 1, 0, 0);
        mb_question(m, q, type);
        mb_mx(m, q, 300, 10, "mx.sec.test");
        return true;
    }
    if (strcmp(q, "mx.sec.test") == 0 && type == DNS_T_A) {
        mb_header(m, id, ANS | ad, 0, 1, 1, 0, 0);
        mb_question(m, q, type);
        mb_a(m, q, 300, "127.0.0.30");
        return true;
    }
    if (strcmp(q, "mx.sec.test") == 0 && type == DNS_T_AAAA) {
        mb_header(m, id, ANS | ad, 0, 1, 0, 1, 0);
        mb_question(m, q, type);
        mb_soa(m, "sec.test", 60, 60);
        return true;
    }
    if (strcmp(q, "_25._tcp.mx.sec.test") == 0 && type == DNS_T_TLSA) {
        mb_header(m, id, ANS | ad, 0, 1, 3, 0, 0);
        mb_question(m, q, type);
        size_t at = mb_rr(m, q, DNS_T_TLSA, 300);
        const uint8_t r1[] = {3, 1, 1, 0xAA, 0xBB};
        mb_bytes(m, r1, sizeof(r1));
        mb_rr_end(m, at);
        at = mb_rr(m, q, DNS_T_TLSA, 200);
        const uint8_t r2[] = {2, 0, 0};
        mb_bytes(m, r2, sizeof(r2));
        mb_rr_end(m, at);
        at = mb_rr(m, q, DNS_T_TLSA, 300);
        mb_u8(m, 3); /* too short: kept as unusable */
        mb_rr_end(m, at);
        return true;
    }
    if (strcmp(q, "_25._tcp.plain.sec.test") == 0 && type == DNS_T_TLSA) {
        HDR(0, 1, 0);
        size_t at = mb_rr(m, q, DNS_T_TLSA, 300);
        const uint8_t r1[] = {3, 1, 1, 0xCC};
        mb_bytes(m, r1, sizeof(r1));
        mb_rr_end(m, at);
        return true;
    }
    if (strcmp(q, "_25._tcp.none.sec.test") == 0) {
        mb_header(m, id, ANS | ad, 0, 1, 0, 1, 0);
        mb_question(m, q, type);
        mb_soa(m, "sec.test", 60, 60);
        return true;
    }
    if (strcmp(q, "servfail.test") == 0 && fk->servfail_seen++ == 0) {
        HDR(2, 0, 0);
        return true;
    }
    if (strcmp(q, "servfail.test") == 0 && type == DNS_T_A) {
        HDR(0, 1, 0);
        mb_a(m, q, 60, "127.0.0.20");
        return true;
    }
    if (strcmp(q, "example.test") == 0 && type == DNS_T_MX) {
        HDR(0, 3, 0);
        mb_mx(m, q, 300, 20, "mx2.example.test");
        mb_mx(m, q, 300, 10, "mx1.example.test");
        mb_mx(m, q, 300, 30, "127.0.0.9");
        return true;
    }
    if (strcmp(q, "mx1.example.test") == 0 && type == DNS_T_A) {
        HDR(0, 1, 0);
        mb_a(m, q, 300, "127.0.0.11");
        return true;
    }
    if (strcmp(q, "mx1.example.test") == 0 && type == DNS_T_AAAA) {
        HDR(0, 1, 0);
        mb_aaaa(m, q, 300, "::1");
        return true;
    }
    if (strcmp(q, "null.test") == 0 && type == DNS_T_MX) {
        HDR(0, 1, 0);
        mb_mx(m, q, 300, 0, ".");
        return true;
    }
    if (strcmp(q, "implicit.test") == 0 && type == DNS_T_A) {
        HDR(0, 1, 0);
        mb_a(m, q, 300, "127.0.0.12");
        return true;
    }
    if (strcmp(q, "implicit.test") == 0) {
        HDR(0, 0, 1);
        mb_soa(m, "test", 60, 60);
        return true;
    }
    HDR(3, 0, 1);
    mb_soa(m, "test", 60, 60);
    return true;
#undef HDR
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char mem[4096];
    buf->base = mem;
    buf->len = sizeof(mem);
}

static void recv_cb(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags)
{
    (void)flags;
    struct fake *fk = h->data;
    unsigned type;
    if (nread < 12 || !addr)
        return;
    if (!read_question((const uint8_t *)buf->base, (size_t)nread, fk->last, sizeof(fk->last),
                       &type))
        return;
    fk->queries++;
    const uint8_t *qb = (const uint8_t *)buf->base;
    fk->last_ad = (qb[3] & 0x20) != 0;
    /* The OPT record follows the question: root name, type 41, class =
     * payload size, TTL with DO in its third octet. */
    size_t qend = 12 + strlen(fk->last) + 2 + 4;
    fk->last_do = (qb[11] == 1) && (size_t)nread >= qend + 11 && qb[qend] == 0 &&
                  qb[qend + 2] == 41 && (qb[qend + 7] & 0x80);
    struct mb m;
    mb_init(&m);
    unsigned id = (unsigned)((uint8_t)buf->base[0] << 8 | (uint8_t)buf->base[1]);
    if (!answer(fk, fk->last, type, &m, id))
        return;
    uv_buf_t out = uv_buf_init((char *)m.b, (unsigned)m.n);
    uv_udp_try_send(h, &out, 1, addr);
}

static void world_start(struct world *w, struct dns_options *o)
{
    memset(w, 0, sizeof(*w));
    assert_int_equal(uv_loop_init(&w->loop), 0);
    assert_int_equal(uv_udp_init(&w->loop, &w->fk.udp), 0);
    w->fk.udp.data = &w->fk;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_udp_bind(&w->fk.udp, (const struct sockaddr *)&sa, 0), 0);
    int len = sizeof(sa);
    uv_udp_getsockname(&w->fk.udp, (struct sockaddr *)&sa, &len);
    w->fk.port = ntohs(sa.sin_port);
    uv_udp_recv_start(&w->fk.udp, alloc_cb, recv_cb);
    /* The responder alone does not keep the loop running: uv_run returns
     * when the resolver has nothing pending. */
    uv_unref((uv_handle_t *)&w->fk.udp);

    static char server[64];
    static const char *servers[1] = {server};
    snprintf(server, sizeof(server), "127.0.0.1:%d", w->fk.port);
    o->servers = servers;
    o->n_servers = 1;
    assert_int_equal(dns_new(&w->loop, o, &w->d), 0);
}

static void world_stop(struct world *w)
{
    dns_free(w->d);
    uv_close((uv_handle_t *)&w->fk.udp, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
}

static void short_options(struct dns_options *o)
{
    dns_options_default(o);
    o->timeout_ms = 200;
    o->tries = 1;
}

/* ---- single lookups ------------------------------------------------------- */

struct seen {
    int calls;
    enum dns_status status;
    int err;
    bool from_cache;
    size_t n;
    char first[64];
    struct world *w;
    struct dns_query *other;
};

static void record(void *arg, const struct dns_result *r)
{
    struct seen *s = arg;
    s->calls++;
    s->status = r->status;
    s->err = r->err;
    s->from_cache = r->from_cache;
    s->n = r->n_mx + r->n_addr + r->n_txt;
    s->first[0] = '\0';
    if (r->n_mx)
        str_copy(s->first, r->mx[0].host, sizeof(s->first));
    else if (r->n_addr)
        dns_addr_format(&r->addr[0], s->first, sizeof(s->first));
}

static void test_async_and_cache(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    world_start(&w, &o);
    struct seen s = {0};
    struct dns_query *q = NULL;
    assert_int_equal(dns_lookup(w.d, "example.test", DNS_T_MX, record, &s, &q), 0);
    assert_non_null(q);
    assert_int_equal(s.calls, 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.status, DNS_OK);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.first, "mx1.example.test");
    assert_false(s.from_cache);
    assert_int_equal(w.fk.queries, 1);

    /* A cache hit: no query, and still not before the call returns. */
    struct seen s2 = {0};
    assert_int_equal(dns_lookup(w.d, "EXAMPLE.test.", DNS_T_MX, record, &s2, NULL), 0);
    assert_int_equal(s2.calls, 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(s2.calls, 1);
    assert_true(s2.from_cache);
    assert_int_equal(s2.status, DNS_OK);
    assert_int_equal(w.fk.queries, 1);

    /* A negative answer with an SOA is cached too (RFC 2308). */
    struct seen s3 = {0}, s4 = {0};
    dns_lookup(w.d, "nope.test", DNS_T_A, record, &s3, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    dns_lookup(w.d, "nope.test", DNS_T_A, record, &s4, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(s3.status, DNS_NXDOMAIN);
    assert_int_equal(s4.status, DNS_NXDOMAIN);
    assert_true(s4.from_cache);
    assert_int_equal(w.fk.queries, 2);

    /* After a flush the server is asked again. */
    dns_cache_flush(w.d);
    struct seen s5 = {0};
    dns_lookup(w.d, "example.test", DNS_T_MX, record, &s5, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(w.fk.queries, 3);
    world_stop(&w);
}

static void test_shared_flight(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    o.cache_size = 0;
    world_start(&w, &o);
    struct seen s[5] = {{0}};
    for (int i = 0; i < 5; i++)
        assert_int_equal(dns_lookup(w.d, "mx1.example.test", DNS_T_A, record, &s[i], NULL), 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_int_equal(s[i].status, DNS_OK);
        assert_string_equal(s[i].first, "127.0.0.11");
    }
    assert_int_equal(w.fk.queries, 1);
    world_stop(&w);
}

static void test_timeout_and_servfail(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    world_start(&w, &o);
    struct seen s = {0};
    uint64_t t0 = uv_now(&w.loop);
    dns_lookup(w.d, "drop.test", DNS_T_MX, record, &s, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    uv_update_time(&w.loop);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.status, DNS_TEMPFAIL);
    assert_int_equal(s.err, ERR_TIMEOUT);
    assert_true(uv_now(&w.loop) - t0 >= 150);
    assert_true(uv_now(&w.loop) - t0 < 3000);

    /* Three tries of 200 ms each: the wait does not double per round. */
    world_stop(&w);
    short_options(&o);
    o.tries = 3;
    world_start(&w, &o);
    struct seen s0 = {0};
    uv_update_time(&w.loop);
    t0 = uv_now(&w.loop);
    dns_lookup(w.d, "drop.test", DNS_T_A, record, &s0, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    uv_update_time(&w.loop);
    assert_int_equal(s0.status, DNS_TEMPFAIL);
    assert_int_equal(s0.err, ERR_TIMEOUT);
    assert_int_equal(w.fk.queries, 3);
    assert_true(uv_now(&w.loop) - t0 >= 550);
    assert_true(uv_now(&w.loop) - t0 < 1300);
    world_stop(&w);
    short_options(&o);
    world_start(&w, &o);

    /* SERVFAIL is temporary and not cached: the next lookup asks again. */
    struct seen s1 = {0}, s2 = {0};
    dns_lookup(w.d, "servfail.test", DNS_T_A, record, &s1, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(s1.status, DNS_TEMPFAIL);
    assert_false(dns_status_permanent(s1.status));
    dns_lookup(w.d, "servfail.test", DNS_T_A, record, &s2, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(s2.status, DNS_OK);
    assert_string_equal(s2.first, "127.0.0.20");
    world_stop(&w);
}

static void test_invalid_name(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    world_start(&w, &o);
    struct seen s = {0}, s2 = {0};
    assert_int_equal(dns_lookup(w.d, "a..b", DNS_T_A, record, &s, NULL), 0);
    assert_int_equal(dns_addrs(w.d, "127.0.0.1", record, &s2, NULL), 0);
    assert_int_equal(s.calls, 0);
    assert_int_equal(s2.calls, 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.status, DNS_INVALID);
    assert_int_equal(s2.calls, 1);
    assert_int_equal(s2.status, DNS_INVALID);
    assert_int_equal(w.fk.queries, 0);
    world_stop(&w);
}

static void test_cancel(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    world_start(&w, &o);
    struct seen s = {0}, s2 = {0}, s3 = {0};
    struct dns_query *q, *q2, *q3;
    dns_lookup(w.d, "mx1.example.test", DNS_T_A, record, &s, &q);
    dns_mx_resolve(w.d, "example.test", NULL, &s2, &q2);
    dns_lookup(w.d, "mx1.example.test", DNS_T_A, record, &s3, &q3);
    dns_cancel(q);
    dns_cancel(q2);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(s.calls, 0);
    assert_int_equal(s2.calls, 0);
    assert_int_equal(s3.calls, 1); /* the same flight, not cancelled */
    assert_int_equal(s3.status, DNS_OK);
    world_stop(&w);
}

static void test_free_pending(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    dns_options_default(&o); /* 5 s timeout: freeing must not wait for it */
    world_start(&w, &o);
    struct seen s = {0}, s2 = {0};
    dns_lookup(w.d, "drop.test", DNS_T_A, record, &s, NULL);
    dns_mx_resolve(w.d, "example.test", NULL, &s2, NULL);
    /* Let the queries leave, then free with them in flight. */
    uv_run(&w.loop, UV_RUN_NOWAIT);
    uv_update_time(&w.loop);
    uint64_t t0 = uv_now(&w.loop);
    world_stop(&w);
    uv_update_time(&w.loop);
    assert_true(uv_now(&w.loop) - t0 < 1000);
    assert_int_equal(s.calls, 0);
    assert_int_equal(s2.calls, 0);
}

static void free_in_cb_simple(void *arg, const struct dns_result *r)
{
    struct seen *s = arg;
    record(arg, r);
    dns_free(s->w->d);
    s->w->d = NULL;
}

static void test_free_in_callback(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    o.timeout_ms = 5000;
    world_start(&w, &o);
    struct seen s = {0}, s2 = {0};
    s.w = &w;
    dns_lookup(w.d, "mx1.example.test", DNS_T_A, free_in_cb_simple, &s, NULL);
    dns_lookup(w.d, "drop.test", DNS_T_A, record, &s2, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s2.calls, 0);
    assert_null(w.d);
    world_stop(&w);
}

/* ---- MX resolution ------------------------------------------------------------ */

struct mxseen {
    int calls;
    enum dns_status status;
    size_t n_hosts;
    char names[4][64];
    enum dns_status st[4];
    size_t n_addr[4];
    char addr0[4][64];
};

static void mx_record(void *arg, const struct dns_mx_result *r)
{
    struct mxseen *s = arg;
    s->calls++;
    s->status = r->status;
    s->n_hosts = r->n_hosts;
    for (size_t i = 0; i < r->n_hosts && i < 4; i++) {
        str_copy(s->names[i], r->hosts[i].name, sizeof(s->names[i]));
        s->st[i] = r->hosts[i].status;
        s->n_addr[i] = r->hosts[i].n_addr;
        if (r->hosts[i].n_addr)
            dns_addr_format(&r->hosts[i].addr[0], s->addr0[i], sizeof(s->addr0[i]));
    }
}

static void test_mx_resolve(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    world_start(&w, &o);
    struct mxseen s = {0}, nul = {0}, nx = {0}, imp = {0}, bad = {0};
    dns_mx_resolve(w.d, "example.test", mx_record, &s, NULL);
    dns_mx_resolve(w.d, "null.test", mx_record, &nul, NULL);
    dns_mx_resolve(w.d, "nope.test", mx_record, &nx, NULL);
    dns_mx_resolve(w.d, "implicit.test", mx_record, &imp, NULL);
    dns_mx_resolve(w.d, "bad..name", mx_record, &bad, NULL);
    assert_int_equal(s.calls + nul.calls + nx.calls + imp.calls + bad.calls, 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);

    assert_int_equal(s.calls, 1);
    assert_int_equal(s.status, DNS_OK);
    assert_int_equal(s.n_hosts, 3);
    assert_string_equal(s.names[0], "mx1.example.test");
    assert_int_equal(s.st[0], DNS_OK);
    assert_int_equal(s.n_addr[0], 2);
    assert_string_equal(s.addr0[0], "127.0.0.11"); /* IPv4 preferred by default */
    assert_string_equal(s.names[1], "mx2.example.test");
    assert_int_equal(s.st[1], DNS_NXDOMAIN);
    assert_string_equal(s.names[2], "127.0.0.9");
    assert_int_equal(s.st[2], DNS_INVALID); /* RFC 5321 5.1: MX data is a name */

    assert_int_equal(nul.status, DNS_NULL_MX);
    assert_int_equal(nul.n_hosts, 0);
    assert_int_equal(nx.status, DNS_NXDOMAIN);
    assert_int_equal(imp.status, DNS_IMPLICIT_MX);
    assert_int_equal(imp.n_hosts, 1);
    assert_string_equal(imp.names[0], "implicit.test");
    assert_string_equal(imp.addr0[0], "127.0.0.12");
    assert_int_equal(bad.status, DNS_INVALID);
    world_stop(&w);
}

static void test_mx_prefer_v6_and_tempfail(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    o.prefer_ipv6 = true;
    world_start(&w, &o);
    struct mxseen s = {0}, t = {0};
    struct seen a = {0};
    dns_mx_resolve(w.d, "example.test", mx_record, &s, NULL);
    dns_mx_resolve(w.d, "drop.test", mx_record, &t, NULL);
    dns_addrs(w.d, "mx1.example.test", record, &a, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_string_equal(s.addr0[0], "::1");
    assert_int_equal(t.status, DNS_TEMPFAIL);
    assert_int_equal(a.status, DNS_OK);
    assert_int_equal(a.n, 2);
    assert_string_equal(a.first, "::1");
    world_stop(&w);

    /* IPv6 off: A only. */
    short_options(&o);
    o.ipv6 = false;
    o.prefer_ipv6 = true;
    world_start(&w, &o);
    struct seen b = {0};
    dns_addrs(w.d, "mx1.example.test", record, &b, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(b.n, 1);
    assert_string_equal(b.first, "127.0.0.11");
    world_stop(&w);
}

/* ---- DNSSEC status ---------------------------------------------------------- */

struct secseen {
    int calls;
    enum dns_status status;
    bool secure, dnssec, servfail;
    enum dns_tlsa_status tlsa;
    size_t n_tlsa;
    struct dns_tlsa t[4];
    uint8_t first_data[8];
    char name[128];
};

static void sec_record(void *arg, const struct dns_result *r)
{
    struct secseen *s = arg;
    s->calls++;
    s->status = r->status;
    s->secure = r->secure;
    s->dnssec = r->dnssec;
    s->servfail = r->servfail;
    s->n_tlsa = r->n_tlsa;
    str_copy(s->name, r->name ? r->name : "", sizeof(s->name));
    for (size_t i = 0; i < r->n_tlsa && i < 4; i++)
        s->t[i] = r->tlsa[i];
    if (r->n_tlsa && r->tlsa[0].len <= sizeof(s->first_data))
        memcpy(s->first_data, r->tlsa[0].data, r->tlsa[0].len);
    if (r->qtype == DNS_T_TLSA)
        s->tlsa = dns_tlsa_classify(r);
}

struct mxsec {
    int calls;
    bool secure, dnssec, host_secure;
    enum dns_status status;
};

static void mx_sec_record(void *arg, const struct dns_mx_result *r)
{
    struct mxsec *s = arg;
    s->calls++;
    s->status = r->status;
    s->secure = r->secure;
    s->dnssec = r->dnssec;
    s->host_secure = r->n_hosts == 1 && r->hosts[0].secure;
}

static void test_dnssec_status(void **state)
{
    (void)state;
    struct world w;
    struct dns_options o;
    short_options(&o);
    o.dnssec = true; /* the responder is on 127.0.0.1: trusted by default */
    world_start(&w, &o);
    assert_true(dns_dnssec_trusted(w.d));

    struct secseen a = {0}, t = {0}, plain = {0}, none = {0}, bog = {0}, lit = {0};
    dns_lookup(w.d, "mx.sec.test", DNS_T_A, sec_record, &a, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_true(w.fk.last_ad); /* RFC 6840 5.7: AD in the query */
    assert_true(w.fk.last_do); /* and EDNS0 with DO */
    assert_int_equal(a.status, DNS_OK);
    assert_true(a.dnssec);
    assert_true(a.secure);

    assert_int_equal(dns_tlsa_lookup(w.d, "mx.sec.test", 25, sec_record, &t, NULL), 0);
    dns_tlsa_lookup(w.d, "plain.sec.test", 25, sec_record, &plain, NULL);
    dns_tlsa_lookup(w.d, "none.sec.test", 25, sec_record, &none, NULL);
    dns_tlsa_lookup(w.d, "bogus.sec.test", 25, sec_record, &bog, NULL);
    dns_tlsa_lookup(w.d, "127.0.0.1", 25, sec_record, &lit, NULL);
    assert_int_equal(t.calls + plain.calls + none.calls + bog.calls + lit.calls, 0);
    uv_run(&w.loop, UV_RUN_DEFAULT);

    assert_string_equal(t.name, "_25._tcp.mx.sec.test");
    assert_int_equal(t.tlsa, DNS_TLSA_SECURE);
    assert_int_equal(t.n_tlsa, 3);
    assert_int_equal(t.t[0].usage, 3);
    assert_int_equal(t.t[0].selector, 1);
    assert_int_equal(t.t[0].mtype, 1);
    assert_int_equal(t.t[0].len, 2);
    assert_int_equal(t.first_data[0], 0xAA);
    assert_int_equal(t.first_data[1], 0xBB);
    assert_int_equal(t.t[1].usage, 2);
    assert_int_equal(t.t[1].len, 0);
    assert_int_equal(t.t[2].usage, 255); /* the short record */

    assert_int_equal(plain.status, DNS_OK);
    assert_false(plain.secure);
    assert_int_equal(plain.tlsa, DNS_TLSA_INSECURE);
    assert_int_equal(none.tlsa, DNS_TLSA_NODATA);
    assert_true(none.secure); /* a validated denial */
    assert_int_equal(bog.status, DNS_TEMPFAIL);
    assert_true(bog.servfail);
    assert_int_equal(bog.tlsa, DNS_TLSA_BOGUS);
    assert_int_equal(lit.status, DNS_INVALID);
    assert_int_equal(lit.tlsa, DNS_TLSA_FAIL);

    /* A cached answer keeps its security. */
    struct secseen t2 = {0};
    int before = w.fk.queries;
    dns_tlsa_lookup(w.d, "mx.sec.test.", 25, sec_record, &t2, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(w.fk.queries, before);
    assert_int_equal(t2.tlsa, DNS_TLSA_SECURE);

    /* The full MX resolution carries the MX answer's and the host's
     * addresses' security (RFC 7672 2.2.1, 2.2.2). */
    struct mxsec m = {0};
    dns_mx_resolve(w.d, "sec.test", mx_sec_record, &m, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(m.status, DNS_OK);
    assert_true(m.dnssec);
    assert_true(m.secure);
    assert_true(m.host_secure);
    world_stop(&w);

    /* DNSSEC off (smtp_dns_support_level = enabled): no AD, no EDNS in the
     * query, and an AD in the answer is ignored. */
    short_options(&o);
    world_start(&w, &o);
    assert_false(dns_dnssec_trusted(w.d));
    struct secseen off = {0}, offb = {0};
    dns_tlsa_lookup(w.d, "mx.sec.test", 25, sec_record, &off, NULL);
    dns_tlsa_lookup(w.d, "bogus.sec.test", 25, sec_record, &offb, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_false(w.fk.last_ad);
    assert_false(w.fk.last_do);
    assert_false(off.dnssec);
    assert_false(off.secure);
    assert_int_equal(off.tlsa, DNS_TLSA_INSECURE);
    assert_int_equal(offb.tlsa, DNS_TLSA_FAIL); /* a SERVFAIL, not "bogus" */
    world_stop(&w);

    /* DNSSEC asked for, but the server is not declared validating: the AD
     * bit it sends is not believed. */
    short_options(&o);
    o.dnssec = true;
    const char *validating[] = {"10.0.0.0/8", "[2001:db8::]/32"};
    o.validating = validating;
    o.n_validating = 2;
    world_start(&w, &o);
    assert_false(dns_dnssec_trusted(w.d));
    struct secseen un = {0};
    dns_tlsa_lookup(w.d, "mx.sec.test", 25, sec_record, &un, NULL);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_true(w.fk.last_ad);
    assert_false(un.secure);
    assert_int_equal(un.tlsa, DNS_TLSA_INSECURE);
    world_stop(&w);

    /* Declared by its exact address: trusted. */
    short_options(&o);
    o.dnssec = true;
    const char *exact[] = {"127.0.0.1"};
    o.validating = exact;
    o.n_validating = 1;
    world_start(&w, &o);
    assert_true(dns_dnssec_trusted(w.d));
    world_stop(&w);
}

static void test_bad_options(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct dns_options o;
    dns_options_default(&o);
    const char *servers[] = {"127.0.0.1:53", "resolver.example"};
    o.servers = servers;
    o.n_servers = 2;
    struct dns *d = NULL;
    assert_int_equal(dns_new(&loop, &o, &d), ERR_INVAL);
    assert_null(d);
    dns_options_default(&o);
    o.tries = 0;
    assert_int_equal(dns_new(&loop, &o, &d), ERR_INVAL);
    dns_options_default(&o);
    const char *one[] = {"127.0.0.1:53"};
    const char *bad_valid[] = {"127.0.0.1/33"};
    o.servers = one;
    o.n_servers = 1;
    o.validating = bad_valid;
    o.n_validating = 1;
    assert_int_equal(dns_new(&loop, &o, &d), ERR_INVAL);
    dns_free(NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    log_setup("convoy-test", "mail", LOG_TO_STDERR, getenv("DNS_TEST_DEBUG") != NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_async_and_cache),
        cmocka_unit_test(test_shared_flight),
        cmocka_unit_test(test_timeout_and_servfail),
        cmocka_unit_test(test_invalid_name),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_free_pending),
        cmocka_unit_test(test_free_in_callback),
        cmocka_unit_test(test_mx_resolve),
        cmocka_unit_test(test_mx_prefer_v6_and_tempfail),
        cmocka_unit_test(test_dnssec_status),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
