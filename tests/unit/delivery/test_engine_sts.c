/*
 * test_engine_sts.c - the delivery engine's MTA-STS paths without sleeping:
 * the engine (delivery_new(), no daemon) with a fake wall clock shared with
 * its MTA-STS engine, a real queue in a temporary directory, an in-test DNS
 * responder on a loopback UDP port (MX, A, TXT from a table), an in-test
 * SMTP peer on 127.0.0.1 without STARTTLS, and policies seeded into the
 * policy cache as if fetched at a fake time.
 *
 * Cases: enforce with no matching MX host defers with 4.7.5 and never
 * connects; testing delivers anyway and counts the failure; a cached
 * policy is refetched before it expires (only once the fake clock nears
 * the expiry), not before; a recipient an enforce policy kept until its
 * lifetime ran out gets a policy recheck before its bounce; a recipient an
 * enforce policy deferred gets a recheck (a refetch of the unchanged id)
 * on its next attempt, at most once per sts_fetch_retry_time. The queue
 * shares the fake clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>
#include <jansson.h>
#include <uv.h>

#include "conf.h"
#include "delivery.h"
#include "dns.h"
#include "dnsmsg.h"
#include "policy.h"
#include "queue.h"

#define DOMAIN "sts.test"
#define MXHOST "mx.sts.test"

static int64_t fake_now_ms;

static int64_t clock_ms(void *arg)
{
    (void)arg;
    return fake_now_ms;
}

static int64_t clock_s(void)
{
    return fake_now_ms / 1000;
}

/* ---- a DNS responder ---------------------------------------------------------- */

static unsigned q_txt, q_policy_host; /* TXT queries; A queries for mta-sts.DOMAIN */

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
    unsigned id = (unsigned)(q[0] << 8 | q[1]);
    unsigned qtype = (unsigned)(q[i + 1] << 8 | q[i + 2]);
    struct mb m;
    mb_init(&m);
    bool known = strcmp(name, DOMAIN) == 0 || strcmp(name, MXHOST) == 0 ||
                 strcmp(name, "_mta-sts." DOMAIN) == 0 || strcmp(name, "mta-sts." DOMAIN) == 0;
    unsigned an = 0;
    if (qtype == DNS_T_MX && strcmp(name, DOMAIN) == 0)
        an = 1;
    else if (qtype == DNS_T_A &&
             (strcmp(name, MXHOST) == 0 || strcmp(name, "mta-sts." DOMAIN) == 0))
        an = 1;
    else if (qtype == DNS_T_TXT && strcmp(name, "_mta-sts." DOMAIN) == 0)
        an = 1;
    if (qtype == DNS_T_TXT)
        q_txt++;
    if (qtype == DNS_T_A && strcmp(name, "mta-sts." DOMAIN) == 0)
        q_policy_host++;
    mb_header(&m, id, MB_QR | MB_AA | MB_RD | MB_RA, known ? 0 : 3, 1, an, 0, 0);
    mb_question(&m, name, qtype);
    if (an && qtype == DNS_T_MX)
        mb_mx(&m, name, 60, 10, MXHOST);
    else if (an && qtype == DNS_T_A)
        mb_a(&m, name, 60, "127.0.0.1");
    else if (an && qtype == DNS_T_TXT) {
        const char *rec[] = {"v=STSv1; id=pol1"};
        mb_txt(&m, name, 60, rec, 1);
    }
    uv_udp_send_t *req = malloc(sizeof(*req) + m.n);
    memcpy((char *)(req + 1), m.b, m.n);
    uv_buf_t sb = uv_buf_init((char *)(req + 1), (unsigned)m.n);
    if (uv_udp_send(req, h, &sb, 1, from, udp_sent) != 0)
        free(req);
}

/* ---- an SMTP peer without STARTTLS ---------------------------------------------- */

struct pconn {
    uv_tcp_t tcp;
    char in[4096];
    size_t len;
    bool data;
};

static int connections, transactions;

static void pc_send(struct pconn *c, const char *s)
{
    uv_buf_t b = uv_buf_init((char *)s, (unsigned)strlen(s));
    uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
}

static void pc_closed(uv_handle_t *h)
{
    free(h->data);
}

static void pc_line(struct pconn *c, const char *line)
{
    if (c->data) {
        if (strcmp(line, ".") == 0) {
            c->data = false;
            transactions++;
            pc_send(c, "250 2.0.0 Ok: queued\r\n");
        }
        return;
    }
    if (strncasecmp(line, "EHLO", 4) == 0)
        pc_send(c, "250-peer\r\n250 PIPELINING\r\n");
    else if (strncasecmp(line, "DATA", 4) == 0) {
        c->data = true;
        pc_send(c, "354 go on\r\n");
    } else if (strncasecmp(line, "QUIT", 4) == 0) {
        pc_send(c, "221 bye\r\n");
        uv_close((uv_handle_t *)&c->tcp, pc_closed);
    } else
        pc_send(c, "250 2.0.0 Ok\r\n");
}

static void pc_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)s;
    struct pconn *c = h->data;
    *b = uv_buf_init(c->in + c->len, (unsigned)(sizeof(c->in) - c->len - 1));
}

static void pc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    struct pconn *c = s->data;
    if (n < 0) {
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, pc_closed);
        return;
    }
    c->len += (size_t)n;
    char *nlp;
    while ((nlp = memchr(c->in, '\n', c->len))) {
        size_t l = (size_t)(nlp - c->in);
        char line[4096];
        memcpy(line, c->in, l);
        line[l] = '\0';
        if (l && line[l - 1] == '\r')
            line[l - 1] = '\0';
        memmove(c->in, nlp + 1, c->len - l - 1);
        c->len -= l + 1;
        pc_line(c, line);
        if (uv_is_closing((uv_handle_t *)s))
            return;
    }
}

static void peer_accept(uv_stream_t *srv, int status)
{
    if (status < 0)
        return;
    struct pconn *c = calloc(1, sizeof(*c));
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, pc_closed);
        return;
    }
    connections++;
    pc_send(c, "220 peer ESMTP\r\n");
    uv_read_start((uv_stream_t *)&c->tcp, pc_alloc, pc_read);
}

/* ---- the world ----------------------------------------------------------------------- */

struct world {
    uv_loop_t loop;
    char dir[64];
    uv_udp_t udp;
    uv_tcp_t peer;
    struct conf *conf;
    struct queue *q;
    struct delivery *dl;
    int submitted;
};

static uint16_t bound_port(uv_handle_t *h, bool udp)
{
    struct sockaddr_in a;
    int len = sizeof(a);
    if (udp)
        uv_udp_getsockname((uv_udp_t *)h, (struct sockaddr *)&a, &len);
    else
        uv_tcp_getsockname((uv_tcp_t *)h, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

/* The daemon's mapping of the configuration, as the test needs it. */
static void helo_name(const struct conf *c, char *out, size_t size)
{
    (void)c;
    str_copy(out, "relay.test", size);
}

static void dns_opts(const struct conf *c, struct dns_options *o)
{
    dns_options_default(o);
    o->servers = (const char *const *)c->dns_servers.v;
    o->n_servers = c->dns_servers.n;
    o->timeout_ms = 2000;
    o->tries = 1;
}

static void policy_opts(const struct conf *c, struct policy_options *o)
{
    policy_options_default(o);
    o->https_port = (uint16_t)c->sts_policy_https_port;
    o->connect_timeout_ms = 500;
    o->fetch_timeout_ms = 1000;
    o->txt_check_s = (uint32_t)c->sts_txt_check_interval;
    o->refresh_s = (uint32_t)c->sts_refresh_interval;
    o->retry_after_s = (uint32_t)c->sts_fetch_retry_time;
    o->now = clock_s;
}

/* Put a policy in the cache as if fetched at `fetched` (seconds). */
static void seed(struct world *w, const char *mode, const char *mx, uint32_t max_age,
                 int64_t fetched)
{
    char path[128], why[256], text[256];
    snprintf(path, sizeof(path), "%s/%s", w->dir, POLICY_CACHE_FILE);
    struct policy_cache *c;
    assert_int_equal(policy_cache_open(path, false, &c, why, sizeof(why)), 0);
    snprintf(text, sizeof(text), "version: STSv1\nmode: %s\nmx: %s\nmax_age: %u\n", mode, mx,
             max_age);
    struct sts_policy sp;
    assert_int_equal(policy_parse(text, strlen(text), &sp, NULL, 0), 0);
    struct policy_entry e;
    memset(&e, 0, sizeof(e));
    str_copy(e.domain, DOMAIN, sizeof(e.domain));
    assert_int_equal(policy_entry_success(&e, "pol1", text, strlen(text), &sp, fetched), 0);
    e.txt_checked = fetched;
    assert_int_equal(policy_cache_put(c, &e), 0);
    policy_entry_clear(&e);
    policy_sts_clear(&sp);
    policy_cache_close(c);
}

static void world_init(struct world *w)
{
    memset(w, 0, sizeof(*w));
    q_txt = q_policy_host = 0;
    connections = transactions = 0;
    fake_now_ms = time_now_ms(); /* moved by hand from here on */
    uv_loop_init(&w->loop);
    str_copy(w->dir, "/tmp/convoy-test-engine-sts-XXXXXX", sizeof(w->dir));
    assert_non_null(mkdtemp(w->dir));
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_udp_init(&w->loop, &w->udp);
    assert_int_equal(uv_udp_bind(&w->udp, (struct sockaddr *)&a, 0), 0);
    uv_udp_recv_start(&w->udp, udp_alloc, udp_recv);
    uv_tcp_init(&w->loop, &w->peer);
    assert_int_equal(uv_tcp_bind(&w->peer, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&w->peer, 16, peer_accept), 0);
}

/* The queue committed new work: the engine takes it at once. */
static void new_work(void *arg)
{
    struct world *w = arg;
    delivery_kick(w->dl);
}

/* Start the engine; the policy cache is seeded before. */
static void world_start(struct world *w)
{
    char qdir[128], dns[64], port[64], https[64];
    snprintf(qdir, sizeof(qdir), "queue_directory=%s", w->dir);
    snprintf(dns, sizeof(dns), "dns_servers=127.0.0.1:%u", bound_port((uv_handle_t *)&w->udp, 1));
    snprintf(port, sizeof(port), "smtp_destination_port=%u",
             bound_port((uv_handle_t *)&w->peer, 0));
    /* Policy hosts: a port where nothing listens (the UDP port's number). */
    snprintf(https, sizeof(https), "sts_policy_https_port=%u",
             bound_port((uv_handle_t *)&w->udp, 1));
    const char *ov[] = {qdir,
                        dns,
                        port,
                        https,
                        "smtp_tls_security_level=may",
                        "sts_refresh_interval=1h",
                        "smtp_connection_cache_time_limit=1s"};
    struct buf err;
    buf_init(&err, 4096);
    w->conf = conf_load(NULL, ov, sizeof(ov) / sizeof(ov[0]), &err);
    if (!w->conf)
        fail_msg("conf: %s", err.data);
    struct queue_options qo;
    queue_options_default(&qo);
    qo.directory = w->conf->queue_directory;
    qo.on_new_work = new_work;
    qo.on_new_work_arg = w;
    /* The queue shares the fake clock: expiry without waiting. */
    qo.clock_ms = clock_ms;
    qo.minimal_backoff = 60;
    qo.maximal_lifetime = 3600;
    if (queue_open(&w->loop, &qo, &w->q, &err) != 0)
        fail_msg("queue: %s", err.data);
    struct delivery_options o = {
        .loop = &w->loop,
        .conf = w->conf,
        .queue = w->q,
        .helo_name = helo_name,
        .dns_options = dns_opts,
        .policy_options = policy_opts,
        .clock_ms = clock_ms,
        .sts_refresh_tick_ms = 20,
    };
    if (delivery_new(&o, &w->dl, &err) != 0)
        fail_msg("delivery: %s", err.data);
    buf_free(&err);
}

static void submitted(void *arg, int status, const char *id)
{
    struct world *w = arg;
    (void)id;
    assert_int_equal(status, 0);
    w->submitted++;
}

static void submit(struct world *w)
{
    struct queue_envelope env = {.sender = "s@src.test",
                                 .client_name = "localhost",
                                 .client_addr = "127.0.0.1",
                                 .helo = "t",
                                 .auth_user = "",
                                 .tls = "",
                                 .envid = "",
                                 .ret = QUEUE_RET_NONE};
    struct queue_rcpt_in r = {.addr = "rcpt@" DOMAIN};
    assert_int_equal(queue_submit(w->q, &env, &r, 1, "Subject: x\r\n\r\nx\r\n", 17, submitted, w),
                     0);
}

typedef bool (*done_fn)(struct world *w);

struct waiter {
    struct world *w;
    done_fn done;
    int64_t deadline;
    bool ok;
};

static void on_check(uv_timer_t *t)
{
    struct waiter *wt = t->data;
    if (wt->done(wt->w)) {
        wt->ok = true;
        uv_stop(t->loop);
    } else if (time_mono_ms() > wt->deadline) {
        uv_stop(t->loop);
    }
}

/* Run the loop until done(w) (true) or ms of real time (false). */
static bool run_until(struct world *w, done_fn done, int64_t ms)
{
    struct waiter wt = {.w = w, .done = done, .deadline = time_mono_ms() + ms};
    uv_timer_t t;
    uv_timer_init(&w->loop, &t);
    t.data = &wt;
    uv_timer_start(&t, on_check, 20, 20);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    return wt.ok;
}

static struct queue_stats stats(struct world *w)
{
    struct queue_stats st;
    assert_int_equal(queue_stats(w->q, &st), 0);
    return st;
}

static bool idle_now(struct world *w)
{
    return delivery_active(w->dl) == 0;
}

static void world_stop(struct world *w)
{
    delivery_stop(w->dl);
    run_until(w, idle_now, 5000);
    delivery_close(w->dl);
    w->dl = NULL;
    uv_run(&w->loop, UV_RUN_NOWAIT);
    queue_close(w->q);
    uv_close((uv_handle_t *)&w->udp, NULL);
    uv_close((uv_handle_t *)&w->peer, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    conf_unref(w->conf);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", w->dir);
    assert_int_equal(system(cmd), 0);
}

/* The "sts" counters of status. */
static json_int_t sts_counter(struct world *w, const char *name)
{
    json_t *st = json_object();
    delivery_sts_status(w->dl, st);
    json_int_t v = json_integer_value(json_object_get(json_object_get(st, "sts"), name));
    json_decref(st);
    return v;
}

/* The last result of the only recipient of the only message. */
static int last_result(void *arg, const struct queue_message *qm)
{
    char *out = arg;
    if (qm->n_rcpts && qm->rcpts[0].has_result)
        snprintf(out, 64, "%s %s", qm->rcpts[0].last.dsn ? qm->rcpts[0].last.dsn : "",
                 qm->rcpts[0].last.sts_mode ? qm->rcpts[0].last.sts_mode : "");
    return 0;
}

/* ---- cases ------------------------------------------------------------------------------ */

static bool one_deferred(struct world *w)
{
    struct queue_stats st = stats(w);
    return w->submitted && st.rcpts[QUEUE_RCPT_DEFERRED] == 1 && st.rcpts[QUEUE_RCPT_ACTIVE] == 0;
}

/* enforce, and the only MX host matches no pattern: deferred with 4.7.5,
 * never a connection (RFC 8461 4.1, 5). */
static void test_enforce_defers(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    seed(&w, "enforce", "mx.elsewhere.test", 86400, fake_now_ms / 1000);
    world_start(&w);
    submit(&w);
    assert_true(run_until(&w, one_deferred, 10000));
    assert_int_equal(connections, 0);
    char res[64] = "";
    queue_list(w.q, NULL, last_result, res);
    assert_string_equal(res, "4.7.5 enforce");
    assert_int_equal(sts_counter(&w, "enforce_failures"), 1);
    /* The cached policy answered: no TXT lookup, no fetch. */
    assert_int_equal(q_policy_host, 0);
    world_stop(&w);
}

static bool one_sent(struct world *w)
{
    return w->submitted && stats(w).messages == 0 && transactions == 1;
}

/* testing: the same mismatch is reported and counted, and the mail goes
 * out (RFC 8461 5). */
static void test_testing_delivers(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    seed(&w, "testing", "mx.elsewhere.test", 86400, fake_now_ms / 1000);
    world_start(&w);
    submit(&w);
    assert_true(run_until(&w, one_sent, 10000));
    assert_int_equal(connections, 1);
    assert_int_equal(sts_counter(&w, "testing_failures"), 1);
    assert_int_equal(sts_counter(&w, "enforce_failures"), 0);
    world_stop(&w);
}

static bool policy_host_asked(struct world *w)
{
    (void)w;
    return q_policy_host > 0;
}

static bool never(struct world *w)
{
    (void)w;
    return false;
}

/* A cached policy is refetched before it expires (RFC 8461 5.1, 10.2):
 * not while it is young, but once the fake clock is within
 * sts_refresh_interval of its expiry. */
static void test_refetch_before_expiry(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    int64_t fetched = fake_now_ms / 1000;
    seed(&w, "enforce", MXHOST, 86400, fetched);
    world_start(&w);
    /* Young: many refresh ticks, nothing asked. */
    fake_now_ms += 600 * 1000;
    assert_false(run_until(&w, never, 300));
    assert_int_equal(q_txt, 0);
    assert_int_equal(q_policy_host, 0);
    /* Within an hour of its expiry: the TXT record and the policy host. */
    fake_now_ms = (fetched + 86400 - 1800) * 1000;
    assert_true(run_until(&w, policy_host_asked, 10000));
    assert_true(q_txt >= 1);
    world_stop(&w);
}

static bool recheck_done(struct world *w)
{
    return sts_counter(w, "rechecks") == 1 && stats(w).messages == 0;
}

/* A recipient that an enforce policy kept deferred until its lifetime ran
 * out gets a policy recheck before its bounce (RFC 8461 5): the TXT record
 * is asked again; the same policy id means the bounce (4.4.7). */
static void test_expiry_rechecks_policy(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    seed(&w, "enforce", "mx.elsewhere.test", 86400 * 7, fake_now_ms / 1000);
    world_start(&w);
    submit(&w);
    assert_true(run_until(&w, one_deferred, 10000));
    assert_int_equal(sts_counter(&w, "rechecks"), 0);
    unsigned txt_before = q_txt;
    /* Two hours later: past maximal_lifetime and the backoff. */
    fake_now_ms += 7200 * 1000;
    delivery_kick(w.dl);
    assert_true(run_until(&w, recheck_done, 10000));
    assert_true(q_txt > txt_before);
    assert_int_equal(connections, 0);
    world_stop(&w);
}

static int rcpt_attempts(void *arg, const struct queue_message *qm)
{
    uint32_t *out = arg;
    if (qm->n_rcpts)
        *out = qm->rcpts[0].attempts;
    return 0;
}

static uint32_t attempts_of(struct world *w)
{
    uint32_t n = 0;
    queue_list(w->q, NULL, rcpt_attempts, &n);
    return n;
}

static bool deferred_twice(struct world *w)
{
    return attempts_of(w) >= 2 && one_deferred(w);
}

static bool deferred_thrice(struct world *w)
{
    return attempts_of(w) >= 3 && one_deferred(w);
}

/* RFC 8461 5, not only at expiry: an enforce deferral makes the next
 * attempt look for a fixed policy - a TXT lookup and a refetch of the
 * unchanged id (the A lookup of mta-sts.DOMAIN is the fetch starting) -
 * but at most once per sts_fetch_retry_time (5 minutes) per domain. */
static void test_enforce_deferral_rechecks_next_attempt(void **state)
{
    (void)state;
    struct world w;
    world_init(&w);
    seed(&w, "enforce", "mx.elsewhere.test", 86400 * 7, fake_now_ms / 1000);
    world_start(&w);
    submit(&w);
    assert_true(run_until(&w, one_deferred, 10000));
    assert_int_equal(q_policy_host, 0);
    assert_int_equal(attempts_of(&w), 1);
    /* The next attempt, past the backoff: the policy is fetched again. */
    fake_now_ms += 120 * 1000;
    delivery_kick(w.dl);
    assert_true(run_until(&w, deferred_twice, 10000));
    assert_int_equal(q_policy_host, 1);
    assert_int_equal(connections, 0);
    assert_int_equal(sts_counter(&w, "rechecks"), 1);
    /* The attempt after, within sts_fetch_retry_time of the recheck: the
     * cached policy answers, no fetch. */
    fake_now_ms += 120 * 1000;
    delivery_kick(w.dl);
    assert_true(run_until(&w, deferred_thrice, 10000));
    assert_int_equal(q_policy_host, 1);
    assert_int_equal(connections, 0);
    world_stop(&w);
}

int main(void)
{
    log_setup("convoy", "mail", LOG_TO_STDERR, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enforce_defers),
        cmocka_unit_test(test_testing_delivers),
        cmocka_unit_test(test_refetch_before_expiry),
        cmocka_unit_test(test_expiry_rechecks_policy),
        cmocka_unit_test(test_enforce_deferral_rechecks_next_attempt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
