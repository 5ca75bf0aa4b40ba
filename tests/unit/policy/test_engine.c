/*
 * test_engine.c - the MTA-STS engine on a real libuv loop, hermetic: an
 * in-process DNS responder on a loopback UDP socket answers the TXT and A
 * lookups from a table, policy hosts refuse connections (a closed port), and
 * the clock is fake. Checks what the engine decides, and how much network
 * it uses: shared discoveries, back-off after a failed fetch, a cached
 * policy that survives DNS trouble and a failing fetch of a new id, the
 * background TXT check, recheck, proactive refresh and cancel.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "dns.h"
#include "policy.h"

/* ---- a tiny DNS responder ------------------------------------------------- */

struct zone_rec {
    const char *name;
    uint16_t type;
    const char *data; /* TXT text, or dotted IPv4 */
};

static struct zone_rec zone[32];
static size_t n_zone;
static unsigned queries[2][8]; /* [0]: TXT, [1]: A; per name slot (unused) */
static unsigned q_txt, q_a;

static void zone_add(const char *name, uint16_t type, const char *data)
{
    zone[n_zone++] = (struct zone_rec){name, type, data};
}

static void zone_del(const char *name)
{
    for (size_t i = 0; i < n_zone;)
        if (strcmp(zone[i].name, name) == 0)
            zone[i] = zone[--n_zone];
        else
            i++;
}

static uv_udp_t udp;

static void udp_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)h;
    (void)s;
    static char slab[2048];
    *b = uv_buf_init(slab, sizeof(slab));
}

static void udp_sent(uv_udp_send_t *req, int status)
{
    (void)status;
    free(req);
}

static void udp_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b, const struct sockaddr *from,
                     unsigned flags)
{
    (void)flags;
    if (n < 12 || !from)
        return;
    const uint8_t *q = (const uint8_t *)b->base;
    /* The question: labels, type, class. */
    char name[256];
    size_t nl = 0, i = 12;
    while (i < (size_t)n && q[i] != 0) {
        size_t l = q[i++];
        if (i + l > (size_t)n || nl + l + 1 >= sizeof(name))
            return;
        if (nl)
            name[nl++] = '.';
        for (size_t k = 0; k < l; k++)
            name[nl++] = (char)((q[i + k] >= 'A' && q[i + k] <= 'Z') ? q[i + k] + 32 : q[i + k]);
        i += l;
    }
    name[nl] = '\0';
    if (i + 5 > (size_t)n)
        return;
    size_t qend = i + 5;
    uint16_t qtype = (uint16_t)(q[i + 1] << 8 | q[i + 2]);
    if (qtype == DNS_T_TXT)
        q_txt++;
    if (qtype == DNS_T_A)
        q_a++;
    uint8_t *r = malloc(sizeof(uv_udp_send_t) + 2048);
    uv_udp_send_t *req = (uv_udp_send_t *)r;
    uint8_t *out = r + sizeof(uv_udp_send_t);
    memcpy(out, q, qend);
    size_t len = qend;
    bool exists = false;
    unsigned an = 0;
    for (size_t z = 0; z < n_zone; z++) {
        if (strcmp(zone[z].name, name) != 0)
            continue;
        exists = true;
        if (zone[z].type != qtype)
            continue;
        out[len++] = 0xc0;
        out[len++] = 12;
        out[len++] = 0;
        out[len++] = (uint8_t)qtype;
        out[len++] = 0;
        out[len++] = 1;
        out[len++] = 0;
        out[len++] = 0;
        out[len++] = 0;
        out[len++] = 60;
        if (qtype == DNS_T_TXT) {
            size_t tl = strlen(zone[z].data);
            out[len++] = 0;
            out[len++] = (uint8_t)(tl + 1);
            out[len++] = (uint8_t)tl;
            memcpy(out + len, zone[z].data, tl);
            len += tl;
        } else {
            unsigned a, b2, c, d;
            sscanf(zone[z].data, "%u.%u.%u.%u", &a, &b2, &c, &d);
            out[len++] = 0;
            out[len++] = 4;
            out[len++] = (uint8_t)a;
            out[len++] = (uint8_t)b2;
            out[len++] = (uint8_t)c;
            out[len++] = (uint8_t)d;
        }
        an++;
    }
    out[2] = 0x84 | (q[2] & 0x01); /* QR, AA, RD copied */
    out[3] = exists ? 0x80 : 0x83; /* RA; NXDOMAIN when the name is unknown */
    out[4] = 0;
    out[5] = 1;
    out[6] = 0;
    out[7] = (uint8_t)an;
    memset(out + 8, 0, 4);
    uv_buf_t sb = uv_buf_init((char *)out, (unsigned)len);
    if (uv_udp_send(req, h, &sb, 1, from, udp_sent) != 0)
        free(r);
}

/* ---- fixture ------------------------------------------------------------------- */

static uv_loop_t loop;
static struct dns *dns;
static int64_t fake_now;
static char dir[] = "/tmp/convoy-sts-engine-XXXXXX";
static char cache_file[256];
static uint16_t closed_port;

static int64_t clock_fn(void)
{
    return fake_now;
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(cache_file, sizeof(cache_file), "%s/%s", dir, POLICY_CACHE_FILE);
    uv_loop_init(&loop);
    uv_udp_init(&loop, &udp);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_udp_bind(&udp, (const struct sockaddr *)&sa, 0) != 0)
        return -1;
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    uv_udp_getsockname(&udp, (struct sockaddr *)&ss, &sl);
    uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_udp_recv_start(&udp, udp_alloc, udp_recv);

    /* A TCP port with nothing behind it: policy fetches are refused. */
    uv_tcp_t t;
    uv_tcp_init(&loop, &t);
    uv_tcp_bind(&t, (const struct sockaddr *)&sa, 0);
    int tl = sizeof(ss);
    uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &tl);
    closed_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);

    static char server[64];
    snprintf(server, sizeof(server), "127.0.0.1:%u", (unsigned)port);
    static const char *servers[1];
    servers[0] = server;
    struct dns_options o;
    dns_options_default(&o);
    o.servers = servers;
    o.n_servers = 1;
    o.timeout_ms = 1000;
    o.tries = 1;
    o.ipv6 = false;
    o.cache_size = 0;
    return dns_new(&loop, &o, &dns) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    dns_free(dns);
    uv_close((uv_handle_t *)&udp, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    char lock[300];
    snprintf(lock, sizeof(lock), "%s-lock", cache_file);
    unlink(cache_file);
    unlink(lock);
    rmdir(dir);
    return 0;
}

static struct policy *engine(void)
{
    struct policy_options o;
    policy_options_default(&o);
    o.cache_path = cache_file;
    o.https_port = closed_port;
    o.fetch_timeout_ms = 5000;
    o.connect_timeout_ms = 2000;
    o.now = clock_fn;
    struct policy *p;
    char why[256];
    if (policy_new(&loop, dns, &o, &p, why, sizeof(why)) != 0)
        fail_msg("policy_new: %s", why);
    return p;
}

static void engine_free(struct policy *p)
{
    policy_free(p);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* What the callbacks saw. */
struct seen {
    unsigned calls;
    bool have_policy;
    enum policy_source source;
    enum policy_failure failure;
    char id[POLICY_ID_MAX + 1];
    char error[256];
    enum policy_mode mode;
};

static void seen_cb(void *arg, const struct policy_result *r)
{
    struct seen *s = arg;
    s->calls++;
    s->have_policy = r->have_policy;
    s->source = r->source;
    s->failure = r->failure;
    str_copy(s->id, r->id ? r->id : "", sizeof(s->id));
    str_copy(s->error, r->error ? r->error : "", sizeof(s->error));
    if (r->have_policy)
        s->mode = r->policy->mode;
}

static void run_until_calls(struct seen *s, unsigned n)
{
    for (int i = 0; i < 100000 && s->calls < n; i++)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(s->calls, n);
}

static void run_idle(struct policy *p)
{
    for (int i = 0; i < 100000 && policy_active(p) > 0; i++)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(policy_active(p), 0);
}

/* Put a policy in the cache as if fetched at `fetched`. */
static void seed(const char *domain, const char *id, int64_t fetched, uint32_t max_age,
                 int64_t txt_checked)
{
    struct policy_cache *c;
    char why[256];
    assert_int_equal(policy_cache_open(cache_file, false, &c, why, sizeof(why)), 0);
    char text[256];
    snprintf(text, sizeof(text), "version: STSv1\nmode: enforce\nmx: mx.%s\nmax_age: %u\n", domain,
             max_age);
    struct sts_policy sp;
    assert_int_equal(policy_parse(text, strlen(text), &sp, NULL, 0), 0);
    struct policy_entry e;
    memset(&e, 0, sizeof(e));
    str_copy(e.domain, domain, sizeof(e.domain));
    assert_int_equal(policy_entry_success(&e, id, text, strlen(text), &sp, fetched), 0);
    e.txt_checked = txt_checked;
    assert_int_equal(policy_cache_put(c, &e), 0);
    policy_entry_clear(&e);
    policy_sts_clear(&sp);
    policy_cache_close(c);
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_shared_discovery_and_backoff(void **state)
{
    (void)state;
    fake_now = 1000000;
    zone_add("_mta-sts.a.test", DNS_T_TXT, "v=STSv1; id=1");
    zone_add("mta-sts.a.test", DNS_T_A, "127.0.0.1");
    struct policy *p = engine();
    unsigned t0 = q_txt, a0 = q_a;
    struct seen s = {0};
    for (int i = 0; i < 50; i++)
        assert_int_equal(policy_get(p, "A.Test.", seen_cb, &s, NULL), 0);
    assert_int_equal(s.calls, 0); /* never before policy_get returns */
    run_until_calls(&s, 50);
    assert_int_equal(q_txt - t0, 1); /* one discovery for 50 lookups */
    assert_int_equal(q_a - a0, 1);   /* one fetch */
    assert_false(s.have_policy);
    assert_int_equal(s.failure, POLICY_FAIL_FETCH);
    assert_non_null(strstr(s.error, "cannot connect"));

    /* Within the back-off: a TXT check, no fetch. */
    struct seen s2 = {0};
    assert_int_equal(policy_get(p, "a.test", seen_cb, &s2, NULL), 0);
    run_until_calls(&s2, 1);
    assert_int_equal(q_a - a0, 1);
    assert_non_null(strstr(s2.error, "backoff"));
    /* A new engine (a restart) remembers the attempt. */
    engine_free(p);
    p = engine();
    struct seen s3 = {0};
    assert_int_equal(policy_get(p, "a.test", seen_cb, &s3, NULL), 0);
    run_until_calls(&s3, 1);
    assert_int_equal(q_a - a0, 1);
    /* Five minutes later the same id is tried again. */
    fake_now += 300;
    struct seen s4 = {0};
    assert_int_equal(policy_get(p, "a.test", seen_cb, &s4, NULL), 0);
    run_until_calls(&s4, 1);
    assert_int_equal(q_a - a0, 2);
    run_idle(p);
    engine_free(p);
}

static void test_cached_policy_survives(void **state)
{
    (void)state;
    fake_now = 2000000;
    /* b.test: cached, fresh, TXT gone (NXDOMAIN). */
    seed("b.test", "7", fake_now - 100, 86400, fake_now - 1000);
    struct policy *p = engine();
    unsigned t0 = q_txt;
    struct seen s = {0};
    assert_int_equal(policy_get(p, "b.test", seen_cb, &s, NULL), 0);
    run_until_calls(&s, 1);
    assert_true(s.have_policy);
    assert_int_equal(s.source, POLICY_SRC_CACHE);
    assert_string_equal(s.id, "7");
    assert_int_equal(s.mode, POLICY_MODE_ENFORCE);
    /* The TXT check was due: it ran in the background. */
    run_idle(p);
    assert_int_equal(q_txt - t0, 1);
    /* Checked now: a burst costs no network at all. */
    struct seen s2 = {0};
    for (int i = 0; i < 1000; i++)
        policy_get(p, "b.test", seen_cb, &s2, NULL);
    run_until_calls(&s2, 1000);
    run_idle(p);
    assert_int_equal(q_txt - t0, 1);
    assert_true(s2.have_policy);

    /* c.test: a new id whose fetch fails: the old policy stays. */
    seed("c.test", "old", fake_now - 100, 86400, fake_now);
    zone_add("_mta-sts.c.test", DNS_T_TXT, "v=STSv1; id=new");
    zone_add("mta-sts.c.test", DNS_T_A, "127.0.0.1");
    struct seen s3 = {0};
    assert_int_equal(policy_recheck(p, "c.test", seen_cb, &s3, NULL), 0);
    run_until_calls(&s3, 1);
    assert_true(s3.have_policy);
    assert_string_equal(s3.id, "old");
    assert_int_equal(s3.failure, POLICY_FAIL_FETCH);
    struct policy_entry e;
    assert_int_equal(policy_cache_get(policy_cache(p), "c.test", &e), 0);
    assert_true(e.have_policy);
    assert_string_equal(e.id, "old");
    assert_string_equal(e.attempt_id, "new");
    assert_true(e.attempt_failed);
    policy_entry_clear(&e);

    /* DNS trouble (the name vanishes, then the server is unknown): the
     * cached policy still applies. */
    zone_del("_mta-sts.c.test");
    struct seen s4 = {0};
    assert_int_equal(policy_recheck(p, "c.test", seen_cb, &s4, NULL), 0);
    run_until_calls(&s4, 1);
    assert_true(s4.have_policy);
    assert_int_equal(s4.source, POLICY_SRC_CACHE);

    /* e.test: cached but expired, no TXT: no policy. */
    seed("e.test", "1", fake_now - 2000, 1000, fake_now - 2000);
    struct seen s5 = {0};
    assert_int_equal(policy_get(p, "e.test", seen_cb, &s5, NULL), 0);
    run_until_calls(&s5, 1);
    assert_false(s5.have_policy);
    assert_int_equal(s5.source, POLICY_SRC_NONE);
    run_idle(p);
    engine_free(p);
}

static void test_recheck_refresh_cancel(void **state)
{
    (void)state;
    fake_now = 3000000;
    /* d.test: cached, same id in DNS. A plain lookup uses the cache; a
     * recheck fetches again once even though the id did not change. */
    seed("d.test", "5", fake_now - 1000, 86400, fake_now);
    zone_add("_mta-sts.d.test", DNS_T_TXT, "v=STSv1; id=5");
    zone_add("mta-sts.d.test", DNS_T_A, "127.0.0.1");
    struct policy *p = engine();
    unsigned a0 = q_a;
    struct seen s = {0};
    policy_get(p, "d.test", seen_cb, &s, NULL);
    run_until_calls(&s, 1);
    assert_int_equal(q_a - a0, 0);
    struct seen s2 = {0};
    policy_recheck(p, "d.test", seen_cb, &s2, NULL);
    run_until_calls(&s2, 1);
    assert_int_equal(q_a - a0, 1);
    assert_true(s2.have_policy); /* the failed refetch changes nothing */
    /* A second recheck right away does not fetch again. */
    struct seen s3 = {0};
    policy_recheck(p, "d.test", seen_cb, &s3, NULL);
    run_until_calls(&s3, 1);
    assert_int_equal(q_a - a0, 1);

    /* Proactive refresh: a policy expiring within a day is refetched, a
     * recently checked one far from expiry is left alone. */
    fake_now += 1000;
    seed("f.test", "9", fake_now - 86000, 86400, fake_now - 10);
    zone_add("_mta-sts.f.test", DNS_T_TXT, "v=STSv1; id=9");
    zone_add("mta-sts.f.test", DNS_T_A, "127.0.0.1");
    seed("g.test", "3", fake_now, 31557600, fake_now);
    seed("old.test", "1", fake_now - 40 * 86400, 86400, fake_now - 40 * 86400);
    unsigned a1 = q_a;
    size_t started = policy_refresh_due(p, 10);
    run_idle(p);
    assert_int_equal(started, 1); /* expired and fresh entries are left alone */
    assert_int_equal(q_a - a1, 1);
    /* A record dead for a month is dropped. */
    struct policy_entry e;
    assert_int_equal(policy_cache_get(policy_cache(p), "old.test", &e), ERR_NOTFOUND);
    /* Called again at once: nothing is due (the attempt just happened). */
    assert_int_equal(policy_refresh_due(p, 10), 0);
    assert_int_equal(policy_cache_get(policy_cache(p), "g.test", &e), 0);
    assert_int_equal(e.last_attempt, fake_now); /* untouched */
    assert_false(e.attempt_failed);
    policy_entry_clear(&e);

    /* Cancel: the callback never runs. */
    zone_add("_mta-sts.h.test", DNS_T_TXT, "v=STSv1; id=1");
    struct seen s4 = {0};
    struct policy_req *req;
    assert_int_equal(policy_get(p, "h.test", seen_cb, &s4, &req), 0);
    policy_cancel(req);
    run_idle(p);
    assert_int_equal(s4.calls, 0);

    /* Bad names are refused at once. */
    assert_int_equal(policy_get(p, "bad name", seen_cb, &s4, NULL), ERR_INVAL);
    assert_int_equal(policy_get(p, "", seen_cb, &s4, NULL), ERR_INVAL);

    /* Freeing with work in flight: no callback, no leak. */
    struct seen s5 = {0};
    policy_get(p, "h.test", seen_cb, &s5, NULL);
    engine_free(p);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(s5.calls, 0);
}

/* A TCP listener that counts connections and closes each at once: the
 * fetch gets as far as its TLS handshake. */
struct counter {
    uv_tcp_t tcp;
    uint16_t port;
    unsigned accepted;
};

static void counter_closed(uv_handle_t *h)
{
    free(h);
}

static void counter_conn(uv_stream_t *s, int status)
{
    struct counter *c = s->data;
    if (status != 0)
        return;
    uv_tcp_t *t = malloc(sizeof(*t));
    uv_tcp_init(&loop, t);
    if (uv_accept(s, (uv_stream_t *)t) == 0)
        c->accepted++;
    uv_close((uv_handle_t *)t, counter_closed);
}

static void counter_start(struct counter *c)
{
    memset(c, 0, sizeof(*c));
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&c->tcp, (const struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&c->tcp, 8, counter_conn), 0);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &sl);
    c->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Reload: new settings apply to new fetches; a fetch in flight finishes
 * under the old ones with the TLS context it started with, though the
 * engine dropped that context (ASan would see a use after free); the cache
 * keeps its policies; a moved cache file is refused. */
static void test_update_in_flight(void **state)
{
    (void)state;
    fake_now = 6000000;
    zone_add("_mta-sts.u1.test", DNS_T_TXT, "v=STSv1; id=u1");
    zone_add("mta-sts.u1.test", DNS_T_A, "127.0.0.1");
    zone_add("_mta-sts.u2.test", DNS_T_TXT, "v=STSv1; id=u2");
    zone_add("mta-sts.u2.test", DNS_T_A, "127.0.0.1");
    seed("kept.test", "k1", fake_now, 86400, fake_now);
    struct counter old_host, new_host;
    counter_start(&old_host);
    counter_start(&new_host);
    struct policy_options o;
    policy_options_default(&o);
    o.cache_path = cache_file;
    o.https_port = old_host.port;
    o.fetch_timeout_ms = 5000;
    o.now = clock_fn;
    struct policy *p;
    char why[256];
    assert_int_equal(policy_new(&loop, dns, &o, &p, why, sizeof(why)), 0);

    /* Start a lookup and run until its fetch has asked for the policy
     * host's address: the fetch exists, its connection does not yet. */
    unsigned a0 = q_a;
    struct seen s1 = {0};
    assert_int_equal(policy_get(p, "u1.test", seen_cb, &s1, NULL), 0);
    for (int i = 0; i < 100000 && q_a == a0; i++)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(q_a, a0 + 1);
    assert_int_equal(s1.calls, 0);

    /* A cache elsewhere is refused and changes nothing. */
    struct policy_update *u = NULL;
    o.cache_path = "/nonexistent/other.lmdb";
    assert_int_equal(policy_update_prepare(p, &o, &u, why, sizeof(why)), ERR_INVAL);
    assert_null(u);
    assert_non_null(strstr(why, "cache"));
    /* So is a trust store that cannot be read. */
    o.cache_path = cache_file;
    o.ca_file = "/nonexistent/ca.pem";
    assert_int_equal(policy_update_prepare(p, &o, &u, why, sizeof(why)), ERR_TLS);
    assert_null(u);
    /* Prepared and dropped: nothing changes either. */
    o.ca_file = NULL;
    assert_int_equal(policy_update_prepare(p, &o, &u, why, sizeof(why)), 0);
    policy_update_free(u);
    /* Applied: the new port; the old context goes away now but for the
     * fetch's own reference. */
    o.https_port = new_host.port;
    o.retry_after_s = 600;
    assert_int_equal(policy_update_prepare(p, &o, &u, why, sizeof(why)), 0);
    policy_update_apply(p, u);

    run_until_calls(&s1, 1);
    assert_false(s1.have_policy);
    assert_int_equal(s1.failure, POLICY_FAIL_FETCH);
    assert_int_equal(old_host.accepted, 1); /* the old settings, to the end */
    assert_int_equal(new_host.accepted, 0);

    struct seen s2 = {0};
    assert_int_equal(policy_get(p, "u2.test", seen_cb, &s2, NULL), 0);
    run_until_calls(&s2, 1);
    assert_int_equal(new_host.accepted, 1);
    assert_int_equal(old_host.accepted, 1);

    /* The new back-off (600 s): five minutes after the failure of u1, the
     * same id is not fetched again. */
    fake_now += 400;
    struct seen s3 = {0};
    assert_int_equal(policy_get(p, "u1.test", seen_cb, &s3, NULL), 0);
    run_until_calls(&s3, 1);
    assert_int_equal(old_host.accepted + new_host.accepted, 2);

    /* The cached policy is still there and answers. */
    struct seen s4 = {0};
    assert_int_equal(policy_get(p, "kept.test", seen_cb, &s4, NULL), 0);
    run_until_calls(&s4, 1);
    assert_true(s4.have_policy);
    assert_string_equal(s4.id, "k1");
    run_idle(p);
    engine_free(p);
    uv_close((uv_handle_t *)&old_host.tcp, NULL);
    uv_close((uv_handle_t *)&new_host.tcp, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    zone_del("_mta-sts.u1.test");
    zone_del("mta-sts.u1.test");
    zone_del("_mta-sts.u2.test");
    zone_del("mta-sts.u2.test");
}

int main(void)
{
    (void)queries;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_discovery_and_backoff),
        cmocka_unit_test(test_cached_policy_survives),
        cmocka_unit_test(test_recheck_refresh_cancel),
        cmocka_unit_test(test_update_in_flight),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
