/*
 * test_queue.c - the queue on temporary directories with a fake clock:
 * submit, read, list, lease, defer (backoff), deliver, bounce, expire, hold
 * and release, retry, remove, lease recovery after a restart, ID order,
 * large bodies, map growth from a small map, a full map, a full disk (as
 * root, on a private tmpfs), layout version refusal, read-only opens,
 * damaged records, and the record codec's length checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "queue.h"
#include "queue_int.h"

#define T0 1800000000000LL /* a fixed "now" for the fake clock */

static char self_path[4096]; /* this program, for the read-only child */

struct fx {
    uv_loop_t loop;
    struct queue *q;
    char dir[64];
    int64_t now;
    int new_work;
    struct queue_options opt;
};

static int64_t fake_clock(void *arg)
{
    return *(int64_t *)arg;
}

static void on_new_work(void *arg)
{
    ((struct fx *)arg)->new_work++;
}

static void rm_queue_dir(const char *dir)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/queue.lmdb", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/queue.lmdb-lock", dir);
    unlink(p);
    rmdir(dir);
}

static int fx_open(struct fx *f)
{
    return queue_open(&f->loop, &f->opt, &f->q, NULL);
}

static void fx_close(struct fx *f)
{
    queue_close(f->q);
    f->q = NULL;
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    uv_loop_init(&f->loop);
    str_copy(f->dir, "/tmp/convoy-qtest-XXXXXX", sizeof(f->dir));
    assert_non_null(mkdtemp(f->dir));
    f->now = T0;
    queue_options_default(&f->opt);
    f->opt.directory = f->dir;
    f->opt.clock_ms = fake_clock;
    f->opt.clock_arg = &f->now;
    f->opt.on_new_work = on_new_work;
    f->opt.on_new_work_arg = f;
    f->opt.initial_map_size = 1 << 20;
    assert_int_equal(fx_open(f), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    fx_close(f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    rm_queue_dir(f->dir);
    free(f);
    return 0;
}

/* ---- synchronous helpers ------------------------------------------------- */

struct done {
    int fired;
    int status;
    char id[QUEUE_ID_LEN + 1];
    struct queue_due *due;
    size_t n;
};

static void on_submit(void *arg, int status, const char *id)
{
    struct done *d = arg;
    d->fired++;
    d->status = status;
    if (id)
        str_copy(d->id, id, sizeof(d->id));
}

static void on_done(void *arg, int status)
{
    struct done *d = arg;
    d->fired++;
    d->status = status;
}

static void on_lease(void *arg, int status, struct queue_due *due, size_t n)
{
    struct done *d = arg;
    d->fired++;
    d->status = status;
    d->due = due;
    d->n = n;
}

static void wait_for(struct fx *f, struct done *d)
{
    while (!d->fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(d->fired, 1);
}

static int submit(struct fx *f, const char *sender, const char *const *rcpts, size_t n,
                  const void *body, size_t len, char *id)
{
    struct queue_rcpt_in in[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++)
        in[i] = (struct queue_rcpt_in){rcpts[i], NULL, 0};
    struct queue_envelope env = {.sender = sender, .client_addr = "192.0.2.1", .helo = "client"};
    struct done d = {0};
    int rc = queue_submit(f->q, &env, in, n, body, len, on_submit, &d);
    if (rc)
        return rc;
    assert_int_equal(d.fired, 0); /* never before the call returns */
    wait_for(f, &d);
    if (id && d.status == 0)
        str_copy(id, d.id, QUEUE_ID_LEN + 1);
    return d.status;
}

static size_t lease(struct fx *f, size_t max, struct queue_due **due)
{
    struct done d = {0};
    assert_int_equal(queue_lease(f->q, max, on_lease, &d), 0);
    wait_for(f, &d);
    assert_int_equal(d.status, 0);
    if (due)
        *due = d.due;
    else
        queue_due_free(d.due);
    return d.n;
}

typedef int (*report_fn)(struct queue *, const char *, uint32_t, const struct queue_result *,
                         queue_done_cb, void *);

static int report(struct fx *f, report_fn fn, const char *id, uint32_t rcpt,
                  const struct queue_result *res)
{
    struct done d = {0};
    int rc = fn(f->q, id, rcpt, res, on_done, &d);
    if (rc)
        return rc;
    wait_for(f, &d);
    return d.status;
}

typedef int (*msg_fn)(struct queue *, const char *, queue_done_cb, void *);

static int msg_op(struct fx *f, msg_fn fn, const char *id)
{
    struct done d = {0};
    int rc = fn(f->q, id, on_done, &d);
    if (rc)
        return rc;
    wait_for(f, &d);
    return d.status;
}

static enum queue_rcpt_state rcpt_state(struct fx *f, const char *id, uint32_t i)
{
    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), 0);
    assert_true(i < m->n_rcpts);
    enum queue_rcpt_state s = m->rcpts[i].state;
    queue_message_free(m);
    return s;
}

static const char *const two[] = {"a@example.org", "b@example.net"};
static const char *const one[] = {"c@example.com"};

/* ---- tests ---------------------------------------------------------------- */

static void test_submit_read(void **state)
{
    struct fx *f = *state;
    struct queue_rcpt_in in[2] = {
        {"a@example.org", "rfc822;a@example.org", QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY},
        {"b@example.net", NULL, 0}};
    struct queue_envelope env = {.sender = "s@example.com",
                                 .client_name = "mail.example.com",
                                 .client_addr = "192.0.2.7",
                                 .helo = "mail.example.com",
                                 .auth_user = "alice",
                                 .tls = "TLSv1.3 TLS_AES_128_GCM_SHA256",
                                 .envid = "QQ314159",
                                 .ret = QUEUE_RET_HDRS,
                                 .flags = QUEUE_F_8BITMIME | QUEUE_F_TLS};
    static const char body[] = "Subject: hi\r\n\r\nhello\r\n";
    struct done d = {0};
    assert_int_equal(queue_submit(f->q, &env, in, 2, body, sizeof(body) - 1, on_submit, &d), 0);
    wait_for(f, &d);
    assert_int_equal(d.status, 0);
    assert_true(queue_id_valid(d.id));
    assert_int_equal(f->new_work, 1);

    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, d.id, &m), 0);
    assert_string_equal(m->id, d.id);
    assert_string_equal(m->env.sender, "s@example.com");
    assert_string_equal(m->env.client_name, "mail.example.com");
    assert_string_equal(m->env.client_addr, "192.0.2.7");
    assert_string_equal(m->env.auth_user, "alice");
    assert_string_equal(m->env.tls, "TLSv1.3 TLS_AES_128_GCM_SHA256");
    assert_string_equal(m->env.envid, "QQ314159");
    assert_int_equal(m->env.ret, QUEUE_RET_HDRS);
    assert_int_equal(m->env.flags, QUEUE_F_8BITMIME | QUEUE_F_TLS);
    assert_int_equal(m->env.arrival_ms, T0);
    assert_int_equal(m->env.size, sizeof(body) - 1);
    assert_int_equal(m->n_rcpts, 2);
    assert_string_equal(m->rcpts[0].addr, "a@example.org");
    assert_string_equal(m->rcpts[0].orcpt, "rfc822;a@example.org");
    assert_int_equal(m->rcpts[0].notify, QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY);
    assert_int_equal(m->rcpts[0].state, QUEUE_RCPT_QUEUED);
    assert_false(m->rcpts[0].has_result);
    assert_string_equal(m->rcpts[1].orcpt, "");
    queue_message_free(m);

    char out[64];
    size_t got;
    assert_int_equal(queue_body_read(f->q, d.id, 0, out, sizeof(out), &got), 0);
    assert_int_equal(got, sizeof(body) - 1);
    assert_memory_equal(out, body, got);
    assert_int_equal(queue_body_read(f->q, d.id, 9, out, 4, &got), 0);
    assert_int_equal(got, 4);
    assert_memory_equal(out, body + 9, 4);

    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_int_equal(st.messages, 1);
    assert_int_equal(st.rcpts[QUEUE_RCPT_QUEUED], 2);
    int64_t due;
    assert_int_equal(queue_next_due(f->q, &due), 0);
    assert_int_equal(due, T0);

    /* Errors returned at once never call back. */
    struct done bad = {0};
    assert_int_equal(queue_submit(f->q, &env, in, 0, body, 3, on_submit, &bad), ERR_INVAL);
    struct queue_rcpt_in nul = {NULL, NULL, 0};
    assert_int_equal(queue_submit(f->q, &env, &nul, 1, body, 3, on_submit, &bad), ERR_INVAL);
    assert_int_equal(queue_message_read(f->q, "0000000000000000", &m), ERR_NOTFOUND);
    assert_int_equal(queue_message_read(f->q, "short", &m), ERR_INVAL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(bad.fired, 0);
}

static void test_lease_defer_deliver(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", two, 2, "x", 1, id), 0);

    struct queue_due *due;
    assert_int_equal(lease(f, 10, &due), 2);
    assert_string_equal(due[0].id, id);
    assert_int_equal(due[0].rcpt, 0);
    assert_string_equal(due[0].addr, "a@example.org");
    assert_string_equal(due[0].sender, "s@example.com");
    assert_int_equal(due[1].rcpt, 1);
    assert_false(due[0].expired);
    queue_due_free(due);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_ACTIVE);
    assert_int_equal(lease(f, 10, NULL), 0); /* leased: not due again */

    struct queue_result res = {.smtp_code = 451,
                               .dsn = "4.7.5",
                               .text = "451 4.7.5 try later",
                               .mx = "mx1.example.org",
                               .ip = "198.51.100.1",
                               .tls = "TLSv1.3",
                               .sts_mode = "enforce",
                               .sts_id = "20260101"};
    assert_int_equal(report(f, queue_defer, id, 0, &res), 0);
    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), 0);
    struct queue_rcpt *r = &m->rcpts[0];
    assert_int_equal(r->state, QUEUE_RCPT_DEFERRED);
    assert_int_equal(r->attempts, 1);
    assert_true(r->has_result);
    assert_int_equal(r->last.smtp_code, 451);
    assert_string_equal(r->last.dsn, "4.7.5");
    assert_string_equal(r->last.mx, "mx1.example.org");
    assert_string_equal(r->last.ip, "198.51.100.1");
    assert_string_equal(r->last.sts_mode, "enforce");
    assert_string_equal(r->last.sts_id, "20260101");
    assert_int_equal(r->last.when_ms, T0);
    /* 300 s less up to a quarter of jitter. */
    assert_true(r->next_ms >= T0 + 225000 && r->next_ms <= T0 + 300000);
    assert_true(r->next_ms >= T0 + 300000 - 75000);
    int64_t next = r->next_ms;
    queue_message_free(m);

    assert_int_equal(lease(f, 10, NULL), 0);
    f->now = next;
    assert_int_equal(lease(f, 10, &due), 1);
    assert_int_equal(due[0].rcpt, 0);
    assert_int_equal(due[0].attempts, 1);
    queue_due_free(due);

    assert_int_equal(report(f, queue_delivered, id, 0, &res), 0);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_DELIVERED);
    assert_int_equal(report(f, queue_delivered, id, 0, NULL), ERR_INVAL); /* already final */
    assert_int_equal(report(f, queue_delivered, id, 7, NULL), ERR_NOTFOUND);
    assert_int_equal(report(f, queue_bounce, id, 1, &res), 0);
    /* No recipient left: the message is gone. */
    assert_int_equal(queue_message_read(f->q, id, &m), ERR_NOTFOUND);
    int64_t when;
    assert_int_equal(queue_next_due(f->q, &when), ERR_NOTFOUND);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_int_equal(st.messages, 0);
}

static void test_backoff(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", one, 1, "x", 1, id), 0);
    int64_t expect[] = {300, 600, 1200, 2400, 4000, 4000, 4000};
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        assert_int_equal(lease(f, 1, NULL), 1);
        assert_int_equal(report(f, queue_defer, id, 0, NULL), 0);
        struct queue_message *m;
        assert_int_equal(queue_message_read(f->q, id, &m), 0);
        int64_t d = m->rcpts[0].next_ms - f->now;
        assert_true(d <= expect[i] * 1000);
        assert_true(d >= expect[i] * 1000 * 3 / 4 && d >= 300000);
        assert_int_equal(m->rcpts[0].attempts, i + 1);
        f->now = m->rcpts[0].next_ms;
        queue_message_free(m);
    }
}

static void test_expire(void **state)
{
    struct fx *f = *state;
    fx_close(f);
    f->opt.maximal_lifetime = 1000; /* seconds */
    f->opt.bounce_lifetime = 100;
    assert_int_equal(fx_open(f), 0);
    char id[QUEUE_ID_LEN + 1], id2[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", one, 1, "x", 1, id), 0);
    assert_int_equal(submit(f, "", one, 1, "x", 1, id2), 0); /* a bounce */
    assert_int_equal(lease(f, 10, NULL), 2);
    assert_int_equal(report(f, queue_defer, id2, 0, NULL), 0);
    f->now = T0 + 900 * 1000;
    assert_int_equal(report(f, queue_defer, id, 0, NULL), 0);
    /* The next attempt is capped at the end of the lifetime... */
    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), 0);
    assert_int_equal(m->rcpts[0].next_ms, T0 + 1000 * 1000);
    queue_message_free(m);
    /* ...where it is leased as expired; the bounce expired long ago. */
    f->now = T0 + 1000 * 1000;
    struct queue_due *due;
    assert_int_equal(lease(f, 10, &due), 2);
    assert_string_equal(due[0].id, id2);
    assert_true(due[0].expired);
    assert_string_equal(due[1].id, id);
    assert_true(due[1].expired);
    queue_due_free(due);
    struct queue_result res = {.dsn = "4.4.7", .text = "delivery time expired"};
    assert_int_equal(report(f, queue_bounce, id, 0, &res), 0);
    assert_int_equal(report(f, queue_bounce, id2, 0, &res), 0);
    assert_int_equal(queue_message_read(f->q, id, &m), ERR_NOTFOUND);
}

static void test_hold_release_retry_remove(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1], id2[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", two, 2, "x", 1, id), 0);
    assert_int_equal(submit(f, "s@example.com", one, 1, "y", 1, id2), 0);
    assert_int_equal(msg_op(f, queue_hold, id), 0);
    assert_int_equal(rcpt_state(f, id, 1), QUEUE_RCPT_HELD);
    struct queue_due *due;
    assert_int_equal(lease(f, 10, &due), 1); /* only id2 */
    assert_string_equal(due[0].id, id2);
    queue_due_free(due);
    int nw = f->new_work;
    assert_int_equal(msg_op(f, queue_release, id), 0);
    assert_int_equal(f->new_work, nw + 1);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_QUEUED);
    assert_int_equal(lease(f, 10, NULL), 2);
    assert_int_equal(report(f, queue_defer, id, 0, NULL), 0);
    assert_int_equal(report(f, queue_defer, id, 1, NULL), 0);
    assert_int_equal(report(f, queue_defer, id2, 0, NULL), 0);
    assert_int_equal(lease(f, 10, NULL), 0);
    assert_int_equal(msg_op(f, queue_retry, id), 0);
    assert_int_equal(lease(f, 10, NULL), 2);
    assert_int_equal(msg_op(f, queue_retry, NULL), 0); /* every message */
    assert_int_equal(lease(f, 10, NULL), 1);
    assert_int_equal(msg_op(f, queue_remove, id), 0);
    assert_int_equal(msg_op(f, queue_remove, id), ERR_NOTFOUND);
    assert_int_equal(msg_op(f, queue_hold, "0000000000000000"), ERR_NOTFOUND);
    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), ERR_NOTFOUND);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_int_equal(st.messages, 1);
    assert_int_equal(st.rcpts[QUEUE_RCPT_ACTIVE], 1);
    assert_int_equal(report(f, queue_delivered, id2, 0, NULL), 0);
    assert_int_equal(queue_message_read(f->q, id2, &m), ERR_NOTFOUND);
}

/* delay_warning_time: the one warning of a message is recorded in its
 * flags (QUEUE_F_DELAY_WARNED); a submission cannot set it, the recipients
 * are untouched, the mark survives a reopen, a lease carries it, and a
 * MSG record written before the flag existed (flags without it) reads as
 * not warned. */
static void test_delay_warned(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", two, 2, "x", 1, id), 0);
    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), 0);
    assert_false(m->env.flags & QUEUE_F_DELAY_WARNED);
    queue_message_free(m);
    assert_int_equal(lease(f, 10, NULL), 2);
    assert_int_equal(report(f, queue_defer, id, 0, NULL), 0);
    assert_int_equal(msg_op(f, queue_delay_warned, id), 0);
    assert_int_equal(msg_op(f, queue_delay_warned, id), 0); /* again: no change */
    assert_int_equal(msg_op(f, queue_delay_warned, "0000000000000000"), ERR_NOTFOUND);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_DEFERRED);
    assert_int_equal(rcpt_state(f, id, 1), QUEUE_RCPT_ACTIVE);
    fx_close(f);
    assert_int_equal(fx_open(f), 0);
    assert_int_equal(queue_message_read(f->q, id, &m), 0);
    assert_true(m->env.flags & QUEUE_F_DELAY_WARNED);
    queue_message_free(m);
    f->now += 3600 * 1000;
    struct queue_due *due;
    assert_int_equal(lease(f, 10, &due), 2);
    assert_true(due[0].flags & QUEUE_F_DELAY_WARNED);
    queue_due_free(due);
    /* The record as written before the flag: the same layout, bit clear. */
    struct qrec_msg old = {.arrival_ms = T0,
                           .size = 1,
                           .n_chunks = 1,
                           .n_rcpts = 1,
                           .n_open = 1,
                           .flags = QUEUE_F_8BITMIME,
                           .sender = qrec_view("s@example.com")};
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(qrec_msg_encode(&old, &b), 0);
    struct qrec_msg back;
    assert_int_equal(qrec_msg_decode(b.data, b.len, &back), 0);
    assert_int_equal(back.flags & QUEUE_F_DELAY_WARNED, 0);
    buf_free(&b);
    /* A submission cannot claim a warning was sent. */
    char id2[QUEUE_ID_LEN + 1];
    struct queue_envelope env = {.sender = "s@example.com", .flags = QUEUE_F_DELAY_WARNED};
    struct done d = {0};
    struct queue_rcpt_in r1 = {.addr = one[0]};
    assert_int_equal(queue_submit(f->q, &env, &r1, 1, "y", 1, on_submit, &d), 0);
    wait_for(f, &d);
    assert_int_equal(d.status, 0);
    str_copy(id2, d.id, sizeof(id2));
    assert_int_equal(queue_message_read(f->q, id2, &m), 0);
    assert_false(m->env.flags & QUEUE_F_DELAY_WARNED);
    queue_message_free(m);
    /* TLS-Required: No (QUEUE_F_TLS_OPTIONAL) is kept by a submission,
     * survives a warning mark and a reopen, and a lease carries it. */
    char id3[QUEUE_ID_LEN + 1];
    struct queue_envelope env3 = {.sender = "s@example.com", .flags = QUEUE_F_TLS_OPTIONAL};
    struct done d3 = {0};
    assert_int_equal(queue_submit(f->q, &env3, &r1, 1, "z", 1, on_submit, &d3), 0);
    wait_for(f, &d3);
    assert_int_equal(d3.status, 0);
    str_copy(id3, d3.id, sizeof(id3));
    assert_int_equal(msg_op(f, queue_delay_warned, id3), 0);
    fx_close(f);
    assert_int_equal(fx_open(f), 0);
    assert_int_equal(queue_message_read(f->q, id3, &m), 0);
    assert_int_equal(m->env.flags & (QUEUE_F_TLS_OPTIONAL | QUEUE_F_DELAY_WARNED),
                     QUEUE_F_TLS_OPTIONAL | QUEUE_F_DELAY_WARNED);
    queue_message_free(m);
}

/* Hold while in flight: the attempt goes on; a release gives the lease back
 * instead of making the recipient due, so it is never leased twice. */
static void test_hold_in_flight(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", two, 2, "x", 1, id), 0);
    assert_int_equal(lease(f, 10, NULL), 2);
    assert_int_equal(msg_op(f, queue_hold, id), 0);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_HELD);
    assert_int_equal(msg_op(f, queue_release, id), 0);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_ACTIVE);
    assert_int_equal(lease(f, 10, NULL), 0); /* still leased: nothing due */
    assert_int_equal(msg_op(f, queue_hold, id), 0);
    /* The attempt reports: delivered is final, a deferral stays held. */
    assert_int_equal(report(f, queue_delivered, id, 0, NULL), 0);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_DELIVERED);
    assert_int_equal(report(f, queue_defer, id, 1, NULL), 0);
    assert_int_equal(rcpt_state(f, id, 1), QUEUE_RCPT_HELD);
    assert_int_equal(msg_op(f, queue_release, id), 0);
    assert_int_equal(rcpt_state(f, id, 1), QUEUE_RCPT_DEFERRED);
    assert_int_equal(lease(f, 10, NULL), 1); /* due now */
    /* Held in flight, then given back without an attempt: release makes it
     * due now. */
    assert_int_equal(msg_op(f, queue_hold, id), 0);
    struct done d = {0};
    assert_int_equal(queue_unlease(f->q, id, 1, on_done, &d), 0);
    wait_for(f, &d);
    assert_int_equal(rcpt_state(f, id, 1), QUEUE_RCPT_HELD);
    assert_int_equal(msg_op(f, queue_release, id), 0);
    assert_int_equal(lease(f, 10, NULL), 1);
    /* Held in flight when the process stops: after a restart the attempt
     * is known to be over, so a release makes it due at once. */
    assert_int_equal(msg_op(f, queue_hold, id), 0);
    fx_close(f);
    assert_int_equal(fx_open(f), 0);
    assert_int_equal(rcpt_state(f, id, 1), QUEUE_RCPT_HELD);
    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), 0);
    assert_int_equal(m->rcpts[1].next_ms, 0);
    queue_message_free(m);
    assert_int_equal(msg_op(f, queue_release, id), 0);
    assert_int_equal(lease(f, 10, NULL), 1);
}

/* Postpone: the lease goes back, due at the time given, no attempt. */
static void test_postpone(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", one, 1, "x", 1, id), 0);
    assert_int_equal(lease(f, 10, NULL), 1);
    struct done d = {0};
    assert_int_equal(queue_postpone(f->q, id, 0, f->now + 60000, on_done, &d), 0);
    wait_for(f, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_QUEUED);
    assert_int_equal(lease(f, 10, NULL), 0);
    f->now += 60000;
    struct queue_due *due;
    assert_int_equal(lease(f, 10, &due), 1);
    assert_int_equal(due[0].attempts, 0);
    queue_due_free(due);
    assert_int_equal(queue_postpone(f->q, "bogus", 0, 0, on_done, &d), ERR_INVAL);
}

static void test_unlease_and_recovery(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", two, 2, "x", 1, id), 0);
    assert_int_equal(lease(f, 10, NULL), 2);
    struct done d = {0};
    assert_int_equal(queue_unlease(f->q, id, 0, on_done, &d), 0);
    wait_for(f, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_QUEUED);
    assert_int_equal(lease(f, 10, NULL), 1);
    /* Both are leased now; a restart makes them due again. */
    fx_close(f);
    f->now += 1000;
    assert_int_equal(fx_open(f), 0);
    assert_int_equal(rcpt_state(f, id, 0), QUEUE_RCPT_QUEUED);
    assert_int_equal(rcpt_state(f, id, 1), QUEUE_RCPT_QUEUED);
    assert_int_equal(lease(f, 10, NULL), 2);
    /* A lease that runs out makes the recipient due again in-process. */
    f->now += f->opt.lease_time * 1000;
    assert_int_equal(lease(f, 10, NULL), 2);
}

static void test_ids(void **state)
{
    struct fx *f = *state;
    /* 200 submissions in flight at once share commits; IDs come back in
     * commit order and strictly increase, even within one millisecond. */
    enum { N = 200 };
    struct done d[N];
    memset(d, 0, sizeof(d));
    struct queue_rcpt_in in = {"r@example.org", NULL, 0};
    struct queue_envelope env = {.sender = "s@example.com"};
    for (int i = 0; i < N; i++)
        assert_int_equal(queue_submit(f->q, &env, &in, 1, "b", 1, on_submit, &d[i]), 0);
    for (int i = 0; i < N; i++)
        wait_for(f, &d[i]);
    for (int i = 0; i < N; i++) {
        assert_int_equal(d[i].status, 0);
        assert_true(queue_id_valid(d[i].id));
        if (i)
            assert_true(strcmp(d[i - 1].id, d[i].id) < 0);
    }
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_true(st.commits < N); /* grouped */

    /* A clock stepping back never reuses an ID, across a restart too. */
    char a[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@x", one, 1, "x", 1, a), 0);
    fx_close(f);
    f->now -= 3600 * 1000;
    assert_int_equal(fx_open(f), 0);
    assert_int_equal(submit(f, "s@x", one, 1, "x", 1, b), 0);
    assert_true(strcmp(a, b) < 0);

    /* Encoding round trip and order. */
    uint64_t ms = 0;
    uint32_t ctr = 0;
    char p[QUEUE_ID_LEN + 1] = "", c[QUEUE_ID_LEN + 1];
    for (int i = 0; i < 1000; i++) {
        ms += (uint64_t)(rand() % 3);
        ctr = ms == 0 ? ctr + 1 : (uint32_t)rand();
        if (i % 7 == 0)
            ms += 1;
        qid_encode(ms, ctr, c);
        uint64_t ms2;
        uint32_t ctr2;
        assert_int_equal(qid_decode(c, QUEUE_ID_LEN, &ms2, &ctr2), 0);
        assert_int_equal(ms2, ms);
        assert_int_equal(ctr2, ctr);
    }
    qid_encode(0xffffffffffffull, UINT32_MAX, c);
    assert_string_equal(c, "ZZZZZZZZZZZZZZZZ");
    qid_encode(1, 0, p);
    qid_encode(0, UINT32_MAX, c);
    assert_true(strcmp(c, p) < 0);
    assert_false(queue_id_valid("0000000000000O00")); /* O is not in the alphabet */
    assert_false(queue_id_valid("000000000000000"));
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
}

static void test_large_body_map_growth(void **state)
{
    struct fx *f = *state;
    /* The map starts at 1 MiB and must grow several times. */
    size_t n = 20u << 20;
    unsigned char *body = malloc(n), *back = malloc(n);
    assert_non_null(body);
    assert_non_null(back);
    fill(body, n, 7);
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", one, 1, body, n, id), 0);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_true(st.map_size >= n);
    fx_close(f);
    assert_int_equal(fx_open(f), 0);
    /* Read it back in odd-sized pieces across chunk boundaries. */
    size_t off = 0, got;
    while (off < n) {
        size_t want = 100000;
        assert_int_equal(queue_body_read(f->q, id, off, back + off, want, &got), 0);
        assert_true(got > 0);
        off += got;
    }
    assert_int_equal(queue_body_read(f->q, id, n, back, 10, &got), 0);
    assert_int_equal(got, 0);
    assert_memory_equal(body, back, n);
    /* Too big for message_size_limit: refused at once. */
    fx_close(f);
    f->opt.message_size_limit = 1000;
    assert_int_equal(fx_open(f), 0);
    struct queue_rcpt_in in = {"r@x", NULL, 0};
    struct queue_envelope env = {.sender = "s@x"};
    assert_int_equal(queue_submit(f->q, &env, &in, 1, body, 1001, on_submit, NULL), ERR_TOOBIG);
    fx_close(f);
    f->opt.message_size_limit = 50u << 20;
    assert_int_equal(fx_open(f), 0);
    /* Space is reused after removal. LMDB reuses pages freed by a
     * transaction from the second transaction after it on, so at most two
     * copies are ever in the file, however often the cycle runs. */
    assert_int_equal(queue_stats(f->q, &st), 0);
    uint64_t used = st.map_used;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(msg_op(f, queue_remove, id), 0);
        assert_int_equal(submit(f, "s@example.com", one, 1, body, n, id), 0);
    }
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_true(st.map_used < used * 5 / 2);
    free(body);
    free(back);
}

/* A restart after a crash must not depend on the map size of the process
 * that died: the data may fill the map this process asks for, and the lease
 * recovery rewrites every recipient that was in flight. queue_open() grows
 * the map for it as the writer would. */
static void test_recovery_grows_map(void **state)
{
    struct fx *f = *state;
    static const char *const three[] = {"a@example.org", "b@example.net", "c@example.com"};
    char body[600];
    memset(body, 'x', sizeof(body));
    size_t n = 0;
    for (int i = 0; i < 1500; i++) {
        assert_int_equal(submit(f, "s@example.com", three, 3, body, sizeof(body), NULL), 0);
        n += 3;
    }
    size_t leased = 0, got;
    while ((got = lease(f, 1000, NULL)) > 0)
        leased += got;
    assert_int_equal(leased, n);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    uint64_t used = st.map_used;
    fx_close(f);
    /* Ask for the least map there is: LMDB makes it exactly what the data
     * fills, and the recovery does not fit in it. */
    f->opt.initial_map_size = 1 << 20;
    assert_true(used > f->opt.initial_map_size);
    f->now += 1000;
    struct buf why;
    buf_init(&why, 256);
    assert_int_equal(queue_open(&f->loop, &f->opt, &f->q, &why), 0);
    buf_free(&why);
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_int_equal(st.rcpts[QUEUE_RCPT_ACTIVE], 0);
    assert_int_equal(st.rcpts[QUEUE_RCPT_QUEUED], n);
    assert_true(st.map_size > used);
}

static void test_map_full(void **state)
{
    struct fx *f = *state;
    fx_close(f);
    f->opt.initial_map_size = 1 << 20;
    f->opt.max_map_size = 4 << 20;
    assert_int_equal(fx_open(f), 0);
    size_t n = 6u << 20;
    unsigned char *body = calloc(1, n);
    assert_non_null(body);
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", one, 1, body, n, id), ERR_FULL);
    /* Other messages still fit, and the failed one left nothing behind. */
    assert_int_equal(submit(f, "s@example.com", one, 1, body, 1u << 20, id), 0);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_int_equal(st.messages, 1);
    free(body);
}

static void test_version_refused(void **state)
{
    struct fx *f = *state;
    fx_close(f);
    /* Rewrite the layout record as a future version 99. */
    char path[128];
    snprintf(path, sizeof(path), "%s/queue.lmdb", f->dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    struct qrec_meta meta = {.layout = 99};
    struct buf b;
    buf_init(&b, 256);
    assert_int_equal(qrec_meta_encode(&meta, &b), 0);
    MDB_val k = {6, "layout"}, v = {b.len, b.data};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    buf_free(&b);

    struct buf why;
    buf_init(&why, 1024);
    assert_int_equal(queue_open(&f->loop, &f->opt, &f->q, &why), ERR_VERSION);
    assert_null(f->q);
    assert_non_null(strstr(why.data, "version 99"));
    buf_reset(&why);
    f->opt.read_only = true;
    assert_int_equal(queue_open(NULL, &f->opt, &f->q, &why), ERR_VERSION);
    f->opt.read_only = false;
    buf_free(&why);
    /* Start over so teardown has a queue to close. */
    rm_queue_dir(f->dir);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    assert_int_equal(fx_open(f), 0);
}

/* Overwrite one value in database name of the closed queue in f. */
static void poke(struct fx *f, const char *name, const void *key, size_t klen, const void *val,
                 size_t vlen)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/queue.lmdb", f->dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, name, 0, &dbi), 0);
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static int list_count(void *arg, const struct queue_message *m);

static void test_corrupt_values(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1], id2[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", two, 2, "body", 4, id), 0);
    assert_int_equal(submit(f, "s@example.com", one, 1, "body", 4, id2), 0);
    fx_close(f);
    uint8_t rk[QKEY_RCPT_LEN];
    memcpy(rk, id, QUEUE_ID_LEN);
    qkey_put_u32(rk + QUEUE_ID_LEN, 0);
    poke(f, "rcpt", rk, sizeof(rk), "\x01\x03junk", 6);
    poke(f, "msg", id2, QUEUE_ID_LEN, "\x01\x02", 2);
    assert_int_equal(fx_open(f), 0);

    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), ERR_CORRUPT);
    assert_int_equal(queue_message_read(f->q, id2, &m), ERR_CORRUPT);
    int n = 0;
    assert_int_equal(queue_list(f->q, NULL, list_count, &n), ERR_CORRUPT);
    assert_int_equal(n, 0);
    char buf[8];
    size_t got;
    assert_int_equal(queue_body_read(f->q, id2, 0, buf, sizeof(buf), &got), ERR_CORRUPT);
    /* The good recipient of id is still leased; the broken one is taken off
     * the schedule, and so is id2's, which cannot be routed without its
     * envelope. Leasing goes on for everything else. */
    struct done d = {0};
    assert_int_equal(queue_lease(f->q, 10, on_lease, &d), 0);
    wait_for(f, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.due[0].id, id);
    assert_int_equal(d.due[0].rcpt, 1);
    queue_due_free(d.due);
    /* The operator can still remove both. */
    assert_int_equal(msg_op(f, queue_remove, id), 0);
    assert_int_equal(msg_op(f, queue_remove, id2), 0);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_int_equal(st.messages, 0);
    assert_int_equal(st.rcpts[QUEUE_RCPT_QUEUED] + st.rcpts[QUEUE_RCPT_ACTIVE], 0);
    assert_int_equal(lease(f, 10, NULL), 0);
    int64_t when;
    assert_int_equal(queue_next_due(f->q, &when), ERR_NOTFOUND);
}

static void on_count(void *arg, int status, const char *id)
{
    (void)id;
    if (status == 0)
        (*(int *)arg)++;
}

static void test_close_outstanding(void **state)
{
    struct fx *f = *state;
    /* Requests accepted before queue_close() are committed and called back
     * inside it. */
    int fired = 0;
    struct queue_rcpt_in in = {"r@example.org", NULL, 0};
    struct queue_envelope env = {.sender = "s@example.com"};
    for (int i = 0; i < 20; i++)
        assert_int_equal(queue_submit(f->q, &env, &in, 1, "b", 1, on_count, &fired), 0);
    fx_close(f);
    assert_int_equal(fired, 20);
    assert_int_equal(fx_open(f), 0);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st), 0);
    assert_int_equal(st.messages, 20);
}

static int list_count(void *arg, const struct queue_message *m)
{
    (void)m;
    (*(int *)arg)++;
    return 0;
}

static void test_read_only(void **state)
{
    struct fx *f = *state;
    struct queue_options o = f->opt;
    struct queue *ro = NULL;
    struct buf why;
    buf_init(&why, 1024);
    o.read_only = true;
    o.directory = "/nonexistent/convoy-queue";
    assert_int_equal(queue_open(NULL, &o, &ro, &why), ERR_NOTFOUND);
    assert_non_null(strstr(why.data, "no queue in /nonexistent/convoy-queue"));

    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", two, 2, "x", 1, id), 0);
    /* A second read-write opener is refused. */
    struct queue *q2;
    buf_reset(&why);
    assert_int_equal(queue_open(&f->loop, &f->opt, &q2, &why), ERR_AGAIN);
    assert_non_null(strstr(why.data, "in use"));
    buf_free(&why);

    /* LMDB forbids opening one environment twice in a process, so the
     * read-only reader is this program run again (exec, so it shares no
     * state with the parent), beside the read-write parent. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(self_path, "test_queue", "--ro-child", f->dir, id, (char *)NULL);
        _exit(20);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static int list_ids(void *arg, const struct queue_message *m)
{
    char(*ids)[QUEUE_ID_LEN + 1] = arg;
    int i = 0;
    while (ids[i][0])
        i++;
    str_copy(ids[i], m->id, QUEUE_ID_LEN + 1);
    return i == 1 ? 5 : 0; /* stop after the second */
}

static void test_list(void **state)
{
    struct fx *f = *state;
    char id[3][QUEUE_ID_LEN + 1];
    for (int i = 0; i < 3; i++)
        assert_int_equal(submit(f, "s@example.com", one, 1, "x", 1, id[i]), 0);
    char seen[4][QUEUE_ID_LEN + 1];
    memset(seen, 0, sizeof(seen));
    assert_int_equal(queue_list(f->q, NULL, list_ids, seen), 5);
    assert_string_equal(seen[0], id[0]);
    assert_string_equal(seen[1], id[1]);
    memset(seen, 0, sizeof(seen));
    assert_int_equal(queue_list(f->q, id[0], list_ids, seen), 5);
    assert_string_equal(seen[0], id[1]);
    assert_string_equal(seen[1], id[2]);
}

/* RCPT records: version 1 (no history) still reads and round-trips; the
 * history is bounded and keeps the newest; texts are cut. */
static void test_codec_history(void **state)
{
    (void)state;
    /* A version 1 record, as written before the history existed. */
    static const uint8_t v1[] = {1,   QREC_RCPT, QUEUE_RCPT_DEFERRED,
                                 0,   0,         0,
                                 0,   2,         0,
                                 0,   0,         0,
                                 0,   0,         0,
                                 5,   0,         0,
                                 0,   3,         'a',
                                 '@', 'b',       0,
                                 0,   0,         0,
                                 0};
    struct qrec_rcpt d;
    assert_int_equal(qrec_rcpt_decode(v1, sizeof(v1), &d), 0);
    assert_int_equal(d.version, 1);
    assert_int_equal(d.attempts, 2);
    assert_int_equal(d.n_hist, 0);
    struct buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(qrec_rcpt_encode(&d, &b), 0);
    assert_int_equal(b.len, sizeof(v1));
    assert_memory_equal(b.data, v1, sizeof(v1));

    /* Push 12 results: 9 kept before last, the newest ones. */
    char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    big[QREC_HIST_TEXT_MAX - 1] = (char)0xc3; /* a 2-byte character across the cut */
    big[QREC_HIST_TEXT_MAX] = (char)0xa9;
    struct buf h[2];
    buf_init(&h[0], 1 << 20);
    buf_init(&h[1], 1 << 20);
    for (int i = 0; i < 12; i++) {
        struct qrec_result add = {.code = 400 + i, .text = qrec_view(big)};
        struct buf *out = &h[i % 2];
        buf_reset(out);
        assert_int_equal(qrec_hist_push(&d, &add, out, &d.n_hist), 0);
        d.hist.ptr = out->data;
        d.hist.len = out->len;
    }
    assert_int_equal(d.n_hist, QREC_HIST_MAX);
    struct qrec_result r;
    assert_int_equal(qrec_hist_get(&d, 0, &r), 0);
    assert_int_equal(r.code, 403);
    assert_int_equal(r.text.len, QREC_HIST_TEXT_MAX - 1);
    assert_int_equal(qrec_hist_get(&d, QREC_HIST_MAX - 1, &r), 0);
    assert_int_equal(r.code, 411);
    assert_int_equal(qrec_hist_get(&d, QREC_HIST_MAX, &r), ERR_INVAL);
    /* Written as version 2; decodes to the same; every truncation fails. */
    buf_reset(&b);
    assert_int_equal(qrec_rcpt_encode(&d, &b), 0);
    assert_int_equal((uint8_t)b.data[0], QREC_RCPT_VERSION);
    struct qrec_rcpt e;
    assert_int_equal(qrec_rcpt_decode(b.data, b.len, &e), 0);
    assert_int_equal(e.n_hist, QREC_HIST_MAX);
    assert_int_equal(qrec_hist_get(&e, 8, &r), 0);
    assert_int_equal(r.code, 411);
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(qrec_rcpt_decode(b.data, n, &e), ERR_CORRUPT);
    /* A count over the maximum is refused. */
    b.data[b.len - d.hist.len - 1] = QREC_HIST_MAX + 1;
    assert_int_equal(qrec_rcpt_decode(b.data, b.len, &e), ERR_CORRUPT);
    buf_free(&h[0]);
    buf_free(&h[1]);
    buf_free(&b);
}

/* Each report keeps the previous result in the history. */
static void test_history(void **state)
{
    struct fx *f = *state;
    char id[QUEUE_ID_LEN + 1];
    assert_int_equal(submit(f, "s@example.com", one, 1, "x", 1, id), 0);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(msg_op(f, queue_retry, id), 0);
        f->now += 1000;
        assert_int_equal(lease(f, 10, NULL), 1);
        char text[32];
        snprintf(text, sizeof(text), "try %d", i);
        struct queue_result res = {.smtp_code = 451, .dsn = "4.3.0", .text = text};
        assert_int_equal(report(f, queue_defer, id, 0, &res), 0);
    }
    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), 0);
    const struct queue_rcpt *r = &m->rcpts[0];
    assert_int_equal(r->attempts, 12);
    assert_string_equal(r->last.text, "try 11");
    assert_int_equal(r->n_history, QUEUE_HISTORY_MAX - 1);
    assert_string_equal(r->history[0].text, "try 2");
    assert_string_equal(r->history[8].text, "try 10");
    assert_int_equal(r->history[8].smtp_code, 451);
    queue_message_free(m);
}

static void test_codec(void **state)
{
    (void)state;
    struct qrec_rcpt r = {.state = QUEUE_RCPT_DEFERRED,
                          .notify = QUEUE_NOTIFY_FAILURE,
                          .attempts = 3,
                          .next_ms = T0,
                          .addr = VIEW_LIT("a@example.org"),
                          .orcpt = VIEW_LIT("rfc822;a@example.org"),
                          .has_result = true,
                          .last = {.code = 451, .when_ms = T0, .dsn = VIEW_LIT("4.4.1")}};
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(qrec_rcpt_encode(&r, &b), 0);
    struct qrec_rcpt d;
    assert_int_equal(qrec_rcpt_decode(b.data, b.len, &d), 0);
    assert_int_equal(d.attempts, 3);
    assert_int_equal(d.last.code, 451);
    assert_int_equal(d.addr.len, strlen("a@example.org"));
    /* Every truncation, and one byte more, is ERR_CORRUPT. */
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(qrec_rcpt_decode(b.data, n, &d), ERR_CORRUPT);
    assert_int_equal(buf_append(&b, "", 1), 0);
    assert_int_equal(qrec_rcpt_decode(b.data, b.len, &d), ERR_CORRUPT);
    b.len--;
    /* Wrong version byte, wrong type, bad state. */
    b.data[0] = 3;
    assert_int_equal(qrec_rcpt_decode(b.data, b.len, &d), ERR_CORRUPT);
    b.data[0] = QREC_VERSION; /* version 1 has no history count */
    assert_int_equal(qrec_rcpt_decode(b.data, b.len, &d), ERR_CORRUPT);
    b.data[0] = QREC_RCPT_VERSION;
    struct qrec_msg m;
    assert_int_equal(qrec_msg_decode(b.data, b.len, &m), ERR_CORRUPT);
    b.data[2] = 9;
    assert_int_equal(qrec_rcpt_decode(b.data, b.len, &d), ERR_CORRUPT);
    /* A string with a NUL is refused on encode. */
    buf_reset(&b);
    r.addr = (struct view){"a\0b", 3};
    assert_int_equal(qrec_rcpt_encode(&r, &b), ERR_INVAL);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

/*
 * The disk-full check, run as a separate process (exec'd by test_disk_full)
 * in its own mount namespace with a 4 MiB tmpfs on dir: it needs root, and
 * the mount disappears with the process whatever happens. Exit 77: cannot
 * set that up here (skip).
 */
static void full_submitted(void *arg, int status, const char *id)
{
    struct done *d = arg;
    d->fired++;
    d->status = status;
    if (id)
        str_copy(d->id, id, sizeof(d->id));
}

static int full_submit(uv_loop_t *loop, struct queue *q, const void *body, size_t n, char *id)
{
    struct queue_rcpt_in in = {"r@example.org", NULL, 0};
    struct queue_envelope env = {.sender = "s@example.com"};
    struct done d = {0};
    if (queue_submit(q, &env, &in, 1, body, n, full_submitted, &d) != 0)
        return -100;
    while (!d.fired)
        uv_run(loop, UV_RUN_ONCE);
    if (d.status == 0)
        str_copy(id, d.id, QUEUE_ID_LEN + 1);
    return d.status;
}

static void full_removed(void *arg, int status)
{
    *(int *)arg = status + 1000;
}

static int full_child(const char *dir)
{
    if (unshare(CLONE_NEWNS) != 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", dir, "tmpfs", 0, "size=4m") != 0)
        return 77;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct queue_options o;
    queue_options_default(&o);
    o.directory = dir;
    o.initial_map_size = 1 << 20;
    struct queue *q;
    if (queue_open(&loop, &o, &q, NULL) != 0)
        return 10;
    size_t n = 300000;
    char *body = malloc(n), *back = malloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (char)i;
    char ids[64][QUEUE_ID_LEN + 1];
    int ok = 0, rc = 0;
    while (ok < 64 && (rc = full_submit(&loop, q, body, n, ids[ok])) == 0)
        ok++;
    if (rc != ERR_FULL || ok < 3)
        return 11; /* the disk filled: storage full, not an I/O error */
    /* Make room; mail is accepted again. */
    for (int i = 0; i < 2; i++) {
        int st = 0;
        queue_remove(q, ids[i], full_removed, &st);
        while (!st)
            uv_run(&loop, UV_RUN_ONCE);
        if (st != 1000)
            return 12;
    }
    char id[QUEUE_ID_LEN + 1];
    if (full_submit(&loop, q, body, n, id) != 0)
        return 13;
    queue_close(q);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* Everything acknowledged is intact after a reopen. */
    if (queue_open(&loop, &o, &q, NULL) != 0)
        return 14;
    for (int i = 2; i < ok; i++) {
        size_t got;
        if (queue_body_read(q, ids[i], 0, back, n, &got) != 0 || got != n ||
            memcmp(body, back, n) != 0)
            return 15;
    }
    queue_close(q);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(body);
    free(back);
    return 0;
}

static void test_disk_full(void **state)
{
    struct fx *f = *state;
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/small", f->dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(self_path, "test_queue", "--full-child", dir, (char *)NULL);
        _exit(20);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    rmdir(dir);
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st) == 77)
        skip(); /* needs root (a private tmpfs) */
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* The read-only side of test_read_only. */
static int ro_child(const char *dir, const char *id)
{
    struct queue_options o;
    queue_options_default(&o);
    o.directory = dir;
    o.read_only = true;
    struct queue *ro;
    if (queue_open(NULL, &o, &ro, NULL) != 0)
        return 10;
    int n = 0, rc = 0;
    struct queue_message *m = NULL;
    struct queue_rcpt_in in = {"r@x", NULL, 0};
    struct queue_envelope env = {.sender = "s@x"};
    if (queue_list(ro, NULL, list_count, &n) != 0 || n != 1)
        rc = 11;
    else if (queue_message_read(ro, id, &m) != 0 || m->n_rcpts != 2)
        rc = 12;
    else if (queue_submit(ro, &env, &in, 1, "x", 1, on_submit, NULL) != ERR_PERM)
        rc = 13;
    queue_message_free(m);
    queue_close(ro);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--ro-child") == 0)
        return ro_child(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "--full-child") == 0)
        return full_child(argv[2]);
    if (!realpath(argv[0], self_path))
        str_copy(self_path, argv[0], sizeof(self_path));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec),
        cmocka_unit_test(test_codec_history),
        cmocka_unit_test_setup_teardown(test_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_defer_deliver, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_release_retry_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delay_warned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_postpone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unlease_and_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_body_map_growth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovery_grows_map, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_outstanding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
