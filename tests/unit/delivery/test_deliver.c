/*
 * test_deliver.c - the delivery engine end to end inside one process: a real
 * queue (LMDB in a temporary directory), the engine with relayhost pointing
 * at an in-test SMTP peer on 127.0.0.1 (an address literal: no DNS), and the
 * peer counting connections, transactions and what it received.
 *
 * Cases: many messages over few connections (reuse, concurrency limit);
 * per-recipient results with a DSN for the 5xx (delivered back through the
 * relayhost, from the null sender); a deferral left in the queue; the
 * recipient limit per transaction; expiry with a 4.4.7 DSN.
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
#include <uv.h>

#include "conf.h"
#include "delivery.h"
#include "mta.h"
#include "queue.h"

/* ---- a multi-connection peer ------------------------------------------------ */

#define PEER_MAX_CONNS 64

struct pconn {
    uv_tcp_t tcp;
    struct peer *p;
    struct buf in;
    bool in_data;
    bool open;
    struct buf data;
    bool null_sender;
};

struct peer {
    uv_loop_t *loop;
    uv_tcp_t srv;
    int connections;
    int open_now;
    int max_open;
    int transactions; /* final dots */
    int rcpts_max;    /* most RCPTs in one transaction */
    int rcpts_cur;
    int dsns; /* messages from the null sender */
    struct buf last_dsn;
    struct buf bodies; /* every non-DSN body, concatenated */
    struct pconn *conns[PEER_MAX_CONNS];
    bool starttls_garbage; /* offer STARTTLS, then break the handshake */
};

static void pc_send(struct pconn *c, const char *s)
{
    if (!c->open)
        return;
    uv_buf_t b = uv_buf_init((char *)s, (unsigned)strlen(s));
    uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
}

static void pc_closed(uv_handle_t *h)
{
    struct pconn *c = h->data;
    buf_free(&c->in);
    buf_free(&c->data);
    free(c);
}

static void pc_close(struct pconn *c)
{
    if (!c->open)
        return;
    c->open = false;
    c->p->open_now--;
    for (int i = 0; i < PEER_MAX_CONNS; i++)
        if (c->p->conns[i] == c)
            c->p->conns[i] = NULL;
    uv_close((uv_handle_t *)&c->tcp, pc_closed);
}

static void pc_line(struct pconn *c, const char *line, size_t n)
{
    struct peer *p = c->p;
    if (c->in_data) {
        if (n == 1 && line[0] == '.') {
            c->in_data = false;
            p->transactions++;
            if (c->null_sender) {
                p->dsns++;
                buf_reset(&p->last_dsn);
                buf_append(&p->last_dsn, c->data.data ? c->data.data : "", c->data.len);
            } else {
                buf_append(&p->bodies, c->data.data ? c->data.data : "", c->data.len);
            }
            pc_send(c, "250 2.0.0 Ok: queued\r\n");
            return;
        }
        if (n > 0 && line[0] == '.')
            buf_append(&c->data, line + 1, n - 1);
        else
            buf_append(&c->data, line, n);
        buf_append(&c->data, "\r\n", 2);
        return;
    }
    if (strncasecmp(line, "EHLO", 4) == 0) {
        pc_send(c, p->starttls_garbage ? "250-peer\r\n250-STARTTLS\r\n250 PIPELINING\r\n"
                                       : "250-peer\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
    } else if (strncasecmp(line, "STARTTLS", 8) == 0) {
        pc_send(c, "220 2.0.0 go ahead\r\n");
        pc_send(c, "this is not TLS\r\n");
        pc_close(c);
    } else if (strncasecmp(line, "MAIL", 4) == 0) {
        c->null_sender = strncasecmp(line, "MAIL FROM:<>", 12) == 0;
        p->rcpts_cur = 0;
        pc_send(c, "250 2.1.0 Ok\r\n");
    } else if (strncasecmp(line, "RCPT", 4) == 0) {
        p->rcpts_cur++;
        if (p->rcpts_cur > p->rcpts_max)
            p->rcpts_max = p->rcpts_cur;
        if (strstr(line, "bad"))
            pc_send(c, "550 5.1.1 <bad>: Recipient address rejected\r\n");
        else if (strstr(line, "temp"))
            pc_send(c, "451 4.3.0 try later\r\n");
        else
            pc_send(c, "250 2.1.5 Ok\r\n");
    } else if (strncasecmp(line, "DATA", 4) == 0) {
        c->in_data = true;
        buf_reset(&c->data);
        pc_send(c, "354 go\r\n");
    } else if (strncasecmp(line, "RSET", 4) == 0) {
        pc_send(c, "250 2.0.0 Ok\r\n");
    } else if (strncasecmp(line, "QUIT", 4) == 0) {
        pc_send(c, "221 2.0.0 Bye\r\n");
        pc_close(c);
    } else {
        pc_send(c, "502 5.5.2 no\r\n");
    }
}

static void pc_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(sz);
    b->len = sz;
}

static void pc_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct pconn *c = s->data;
    if (nread < 0) {
        pc_close(c);
    } else if (nread > 0) {
        buf_append(&c->in, b->base, (size_t)nread);
        char *nl;
        while (c->open && c->in.len && (nl = memchr(c->in.data, '\n', c->in.len))) {
            size_t n = (size_t)(nl - c->in.data);
            size_t used = n + 1;
            if (n > 0 && c->in.data[n - 1] == '\r')
                n--;
            char *line = strndup(c->in.data, n);
            buf_consume(&c->in, used);
            pc_line(c, line, n);
            free(line);
        }
    }
    free(b->base);
}

static void peer_accept(uv_stream_t *srv, int status)
{
    struct peer *p = srv->data;
    assert_int_equal(status, 0);
    struct pconn *c = calloc(1, sizeof(*c));
    c->p = p;
    buf_init(&c->in, 1 << 20);
    buf_init(&c->data, 1 << 24);
    uv_tcp_init(p->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(srv, (uv_stream_t *)&c->tcp), 0);
    c->open = true;
    p->connections++;
    p->open_now++;
    if (p->open_now > p->max_open)
        p->max_open = p->open_now;
    for (int i = 0; i < PEER_MAX_CONNS; i++)
        if (!p->conns[i]) {
            p->conns[i] = c;
            break;
        }
    pc_send(c, "220 peer ESMTP\r\n");
    uv_read_start((uv_stream_t *)&c->tcp, pc_alloc, pc_read);
}

static int peer_start(struct peer *p, uv_loop_t *loop)
{
    memset(p, 0, sizeof(*p));
    p->loop = loop;
    buf_init(&p->last_dsn, 1 << 20);
    buf_init(&p->bodies, 1 << 24);
    uv_tcp_init(loop, &p->srv);
    p->srv.data = p;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&p->srv, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&p->srv, 64, peer_accept), 0);
    struct sockaddr_in got;
    int len = sizeof(got);
    uv_tcp_getsockname(&p->srv, (struct sockaddr *)&got, &len);
    return ntohs(got.sin_port);
}

static void peer_stop(struct peer *p)
{
    for (int i = 0; i < PEER_MAX_CONNS; i++)
        if (p->conns[i])
            pc_close(p->conns[i]);
    uv_close((uv_handle_t *)&p->srv, NULL);
}

/* ---- the world ----------------------------------------------------------------- */

struct world {
    uv_loop_t loop;
    char dir[64];
    struct mta m;
    struct peer peer;
    int submitted;
};

static void world_start(struct world *w, const char *const *extra, size_t nextra)
{
    memset(w, 0, sizeof(*w));
    uv_loop_init(&w->loop);
    str_copy(w->dir, "/tmp/convoy-test-deliver-XXXXXX", sizeof(w->dir));
    assert_non_null(mkdtemp(w->dir));
    int port = peer_start(&w->peer, &w->loop);
    char relay[64], qdir[128];
    snprintf(relay, sizeof(relay), "relayhost=[127.0.0.1]:%d", port);
    snprintf(qdir, sizeof(qdir), "queue_directory=%s", w->dir);
    const char *ov[16] = {relay, qdir, "smtp_tls_security_level=none", "myhostname=relay.test",
                          "smtp_connection_cache_time_limit=1s"};
    size_t n = 5;
    for (size_t i = 0; i < nextra && n < 16; i++)
        ov[n++] = extra[i];
    struct buf err;
    buf_init(&err, 4096);
    w->m.loop = &w->loop;
    w->m.conf = conf_load(NULL, ov, n, &err);
    if (!w->m.conf)
        fail_msg("conf: %s", err.data);
    if (mta_queue_open(&w->m, &err) != 0)
        fail_msg("queue: %s", err.data);
    assert_int_equal(mta_delivery_start(&w->m, &err), 0);
    assert_non_null(w->m.on_new_work);
    buf_free(&err);
}

static void submitted(void *arg, int status, const char *id)
{
    struct world *w = arg;
    (void)id;
    assert_int_equal(status, 0);
    w->submitted++;
}

static void submit(struct world *w, const char *sender, const char *const *rcpts, size_t n,
                   const char *body)
{
    struct queue_envelope env = {.sender = sender,
                                 .client_name = "localhost",
                                 .client_addr = "127.0.0.1",
                                 .helo = "t",
                                 .auth_user = "",
                                 .tls = "",
                                 .envid = "",
                                 .ret = QUEUE_RET_NONE};
    struct queue_rcpt_in *r = calloc(n, sizeof(*r));
    for (size_t i = 0; i < n; i++)
        r[i].addr = rcpts[i];
    assert_int_equal(queue_submit(w->m.queue, &env, r, n, body, strlen(body), submitted, w), 0);
    free(r);
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
    assert_int_equal(queue_stats(w->m.queue, &st), 0);
    return st;
}

static bool idle_now(struct world *w)
{
    return delivery_active(w->m.delivery) == 0;
}

static void world_stop(struct world *w)
{
    delivery_stop(w->m.delivery);
    run_until(w, idle_now, 5000);
    mta_delivery_close(&w->m);
    mta_queue_close(&w->m);
    peer_stop(&w->peer);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    conf_unref(w->m.conf);
    buf_free(&w->peer.last_dsn);
    buf_free(&w->peer.bodies);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", w->dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- cases ------------------------------------------------------------------------ */

static bool queue_empty(struct world *w)
{
    return w->submitted > 0 && stats(w).messages == 0 && w->peer.open_now == 0;
}

static void test_many_messages_few_connections(void **state)
{
    (void)state;
    struct world w;
    const char *extra[] = {"default_destination_concurrency_limit=2"};
    world_start(&w, extra, 1);
    const char *to[] = {"a@dest.test"};
    for (int i = 0; i < 30; i++)
        submit(&w, "s@src.test", to, 1, "Subject: x\r\n\r\n.dot line\r\nbody\r\n");
    assert_true(run_until(&w, queue_empty, 15000));
    assert_int_equal(w.peer.transactions, 30);
    assert_true(w.peer.max_open <= 2);
    /* Reuse: far fewer connections than messages. */
    assert_true(w.peer.connections <= 4);
    assert_non_null(strstr(w.peer.bodies.data, "Subject: x\r\n\r\n.dot line\r\nbody\r\n"));
    world_stop(&w);
}

static bool one_deferred_left(struct world *w)
{
    struct queue_stats st = stats(w);
    return w->peer.dsns == 1 && st.messages == 1 && st.rcpts[QUEUE_RCPT_DEFERRED] == 1 &&
           st.rcpts[QUEUE_RCPT_ACTIVE] == 0;
}

static void test_per_recipient_results_and_dsn(void **state)
{
    (void)state;
    struct world w;
    world_start(&w, NULL, 0);
    const char *to[] = {"ok@dest.test", "bad@dest.test", "temp@dest.test"};
    submit(&w, "sender@src.test", to, 3, "Subject: hello\r\nX-Test: 1\r\n\r\nbody\r\n");
    assert_true(run_until(&w, one_deferred_left, 15000));
    const char *dsn = w.peer.last_dsn.data;
    assert_non_null(strstr(dsn, "To: <sender@src.test>"));
    assert_non_null(strstr(dsn, "Final-Recipient: rfc822; bad@dest.test\r\n"));
    assert_non_null(strstr(dsn, "Status: 5.1.1\r\n"));
    assert_non_null(strstr(dsn, "Diagnostic-Code: smtp; 550 5.1.1 <bad>: Recipient address "
                                "rejected"));
    assert_non_null(strstr(dsn, "Subject: hello\r\nX-Test: 1\r\n"));
    assert_null(strstr(dsn, "temp@dest.test"));
    assert_null(strstr(dsn, "ok@dest.test>"));
    world_stop(&w);
}

static bool three_transactions(struct world *w)
{
    return stats(w).messages == 0 && w->peer.transactions == 3;
}

static void test_recipient_limit(void **state)
{
    (void)state;
    struct world w;
    world_start(&w, NULL, 0);
    static char addrs[120][32];
    const char *to[120];
    for (int i = 0; i < 120; i++) {
        snprintf(addrs[i], sizeof(addrs[i]), "r%d@dest.test", i);
        to[i] = addrs[i];
    }
    submit(&w, "s@src.test", to, 120, "x\r\n");
    assert_true(run_until(&w, three_transactions, 15000));
    assert_int_equal(w.peer.rcpts_max, 50);
    world_stop(&w);
}

static bool expired_dsn(struct world *w)
{
    return w->peer.dsns == 1 && stats(w).messages == 0;
}

static void test_expiry(void **state)
{
    (void)state;
    struct world w;
    const char *extra[] = {"maximal_queue_lifetime=0"};
    world_start(&w, extra, 1);
    const char *to[] = {"late@dest.test"};
    submit(&w, "s@src.test", to, 1, "Subject: old\r\n\r\nx\r\n");
    assert_true(run_until(&w, expired_dsn, 15000));
    assert_int_equal(w.peer.transactions, 1); /* only the DSN went out */
    assert_non_null(strstr(w.peer.last_dsn.data, "Status: 4.4.7\r\n"));
    assert_non_null(strstr(w.peer.last_dsn.data, "Final-Recipient: rfc822; late@dest.test"));
    world_stop(&w);
}

static bool one_sent(struct world *w)
{
    return w->peer.transactions == 1 && stats(w).messages == 0 && w->peer.open_now == 0;
}

static void test_opportunistic_tls_falls_back(void **state)
{
    (void)state;
    struct world w;
    const char *extra[] = {"smtp_tls_security_level=may"};
    world_start(&w, extra, 1);
    w.peer.starttls_garbage = true;
    const char *to[] = {"a@dest.test"};
    submit(&w, "s@src.test", to, 1, "x\r\n");
    assert_true(run_until(&w, one_sent, 15000));
    /* First connection: TLS failed; second: plaintext, delivered. */
    assert_int_equal(w.peer.connections, 2);
    world_stop(&w);
}

int main(void)
{
    log_setup("convoy", "mail", LOG_TO_STDERR, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_messages_few_connections),
        cmocka_unit_test(test_per_recipient_results_and_dsn),
        cmocka_unit_test(test_recipient_limit),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_opportunistic_tls_falls_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
