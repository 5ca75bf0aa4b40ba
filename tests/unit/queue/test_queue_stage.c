/*
 * test_queue_stage.c - staged submissions (queue_stage_*): a body appended
 * in uneven pieces reads back byte for byte behind its prefix; an abort
 * and a refused commit leave no chunk behind; a process that dies with a
 * stage open leaves a marker that the next read-write open purges; the
 * backlog falls as the writer commits; a stage and ordinary submissions
 * interleave.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "queue.h"

struct fx {
    uv_loop_t loop;
    struct queue *q;
    char dir[64];
    struct queue_options opt;
};

static void rm_queue_dir(const char *dir)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/queue.lmdb", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/queue.lmdb-lock", dir);
    unlink(p);
    rmdir(dir);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    uv_loop_init(&f->loop);
    str_copy(f->dir, "/tmp/convoy-stage-XXXXXX", sizeof(f->dir));
    assert_non_null(mkdtemp(f->dir));
    queue_options_default(&f->opt);
    f->opt.directory = f->dir;
    f->opt.initial_map_size = 1 << 20;
    f->opt.message_size_limit = 2u << 20;
    assert_int_equal(queue_open(&f->loop, &f->opt, &f->q, NULL), 0);
    *state = f;
    return 0;
}

static void fx_close(struct fx *f)
{
    queue_close(f->q);
    f->q = NULL;
    uv_run(&f->loop, UV_RUN_NOWAIT);
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

struct done {
    int fired;
    int status;
    char id[QUEUE_ID_LEN + 1];
};

static void on_submit(void *arg, int status, const char *id)
{
    struct done *d = arg;
    d->fired++;
    d->status = status;
    if (id)
        str_copy(d->id, id, sizeof(d->id));
}

static void on_progress(void *arg)
{
    (*(int *)arg)++;
}

static void wait_for(struct fx *f, struct done *d)
{
    while (!d->fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(d->fired, 1);
}

/* Run the loop until the stage has nothing at the writer. */
static void drain(struct fx *f, const struct queue_stage *st, size_t held)
{
    while (queue_stage_backlog(st) > held)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static struct queue_stats stats(struct fx *f)
{
    struct queue_stats s;
    assert_int_equal(queue_stats(f->q, &s), 0);
    return s;
}

/* A body with a pattern that shows any misplaced octet. */
static char *pattern(size_t n, unsigned seed)
{
    char *b = malloc(n ? n : 1);
    assert_non_null(b);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        b[i] = (char)(x >> 16);
    }
    return b;
}

/* Append body in pieces of pseudo-random sizes up to 3 chunks. */
static void append_uneven(struct queue_stage *st, const char *body, size_t n, unsigned seed)
{
    size_t off = 0;
    uint32_t x = seed;
    while (off < n) {
        x = x * 1103515245u + 12345u;
        size_t k = (x >> 8) % (3 * QUEUE_CHUNK) + 1;
        if (k > n - off)
            k = n - off;
        assert_int_equal(queue_stage_append(st, body + off, k), 0);
        off += k;
    }
}

static void check_body(struct fx *f, const char *id, const char *prefix, const char *body, size_t n)
{
    size_t plen = strlen(prefix), total = plen + n;
    char *want = malloc(total + 1);
    assert_non_null(want);
    memcpy(want, prefix, plen);
    memcpy(want + plen, body, n);
    struct queue_message *m;
    assert_int_equal(queue_message_read(f->q, id, &m), 0);
    assert_int_equal(m->env.size, total);
    assert_int_equal(m->env.flags, QUEUE_F_8BITMIME); /* the prefix bit is not shown */
    queue_message_free(m);
    /* Whole, and in reads of odd sizes from odd offsets across the prefix
     * and chunk boundaries. */
    char *got = malloc(total + 1);
    assert_non_null(got);
    size_t g = 0;
    assert_int_equal(queue_body_read(f->q, id, 0, got, total + 1, &g), 0);
    assert_int_equal(g, total);
    assert_memory_equal(got, want, total);
    size_t step = 7777;
    for (uint64_t off = 0; off < total; off += g) {
        assert_int_equal(queue_body_read(f->q, id, off, got, step, &g), 0);
        assert_true(g > 0);
        assert_memory_equal(got, want + off, g);
    }
    assert_int_equal(queue_body_read(f->q, id, total, got, 10, &g), 0);
    assert_int_equal(g, 0);
    free(got);
    free(want);
}

static int commit(struct fx *f, struct queue_stage *st, const char *prefix, struct done *d)
{
    struct queue_rcpt_in rc = {"a@example.org", NULL, 0};
    struct queue_envelope env = {
        .sender = "s@example.com", .client_addr = "192.0.2.1", .flags = QUEUE_F_8BITMIME};
    int rc_c = queue_stage_commit(st, &env, &rc, 1, prefix, strlen(prefix), on_submit, d);
    if (rc_c == 0) {
        assert_int_equal(d->fired, 0);
        wait_for(f, d);
    }
    return rc_c;
}

static void test_commit(void **state)
{
    struct fx *f = *state;
    static const size_t sizes[] = {0,      1, QUEUE_CHUNK - 1, QUEUE_CHUNK, 3 * QUEUE_CHUNK + 5,
                                   1500000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t n = sizes[i];
        char *body = pattern(n, (unsigned)i);
        struct queue_stage *st;
        int progress = 0;
        assert_int_equal(queue_stage_open(f->q, on_progress, &progress, &st), 0);
        append_uneven(st, body, n, (unsigned)i + 1);
        /* An ordinary submission while the stage is open: its ID is newer,
         * and both must be stored (no key order assumption breaks). */
        struct queue_rcpt_in rc = {"b@example.net", NULL, 0};
        struct queue_envelope env = {.sender = "", .flags = QUEUE_F_8BITMIME};
        struct done ds = {0};
        assert_int_equal(queue_submit(f->q, &env, &rc, 1, "x\r\n", 3, on_submit, &ds), 0);
        wait_for(f, &ds);
        assert_int_equal(ds.status, 0);
        struct done d = {0};
        assert_int_equal(commit(f, st, "Received: from x\r\n", &d), 0);
        assert_int_equal(d.status, 0);
        if (n >= QUEUE_CHUNK)
            assert_true(strcmp(d.id, ds.id) < 0); /* issued with the first chunk */
        check_body(f, d.id, "Received: from x\r\n", body, n);
        check_body(f, ds.id, "", "x\r\n", 3);
        free(body);
        struct queue_stats s = stats(f);
        assert_int_equal(s.stages, 0);
        if (n > QUEUE_CHUNK)
            assert_true(progress > 0);
    }
    assert_int_equal(stats(f).messages, 2 * 6);
}

static void test_abort(void **state)
{
    struct fx *f = *state;
    char *body = pattern(5 * QUEUE_CHUNK + 3, 9);
    struct queue_stage *st;
    int progress = 0;
    assert_int_equal(queue_stage_open(f->q, on_progress, &progress, &st), 0);
    append_uneven(st, body, 5 * QUEUE_CHUNK + 3, 4);
    drain(f, st, 3);
    assert_true(progress >= 5);
    struct queue_stats s = stats(f);
    assert_int_equal(s.chunks, 5); /* written before the record exists */
    assert_int_equal(s.stages, 1);
    assert_int_equal(s.messages, 0);
    queue_stage_abort(st);
    int before = progress;
    /* The purge is a request like any other: wait for it with a submit. */
    struct queue_rcpt_in rc = {"b@example.net", NULL, 0};
    struct queue_envelope env = {.sender = ""};
    struct done ds = {0};
    assert_int_equal(queue_submit(f->q, &env, &rc, 1, "", 0, on_submit, &ds), 0);
    wait_for(f, &ds);
    s = stats(f);
    assert_int_equal(s.chunks, 0);
    assert_int_equal(s.stages, 0);
    assert_int_equal(s.messages, 1);
    assert_int_equal(progress, before); /* no progress after the abort */
    queue_stage_abort(NULL);
    free(body);
}

static void test_refused(void **state)
{
    struct fx *f = *state;
    /* Past message_size_limit: ERR_TOOBIG, and nothing stays. */
    struct queue_stage *st;
    assert_int_equal(queue_stage_open(f->q, NULL, NULL, &st), 0);
    char *body = pattern(QUEUE_CHUNK, 3);
    int rc = 0;
    for (int i = 0; i < 64 && rc == 0; i++)
        rc = queue_stage_append(st, body, QUEUE_CHUNK);
    assert_int_equal(rc, ERR_TOOBIG);
    assert_int_equal(queue_stage_append(st, body, 1), ERR_TOOBIG);
    struct done d = {0};
    assert_int_equal(commit(f, st, "", &d), ERR_TOOBIG);
    assert_int_equal(d.fired, 0);
    /* A refused commit (no recipients) also consumes the stage. */
    assert_int_equal(queue_stage_open(f->q, NULL, NULL, &st), 0);
    assert_int_equal(queue_stage_append(st, body, QUEUE_CHUNK), 0);
    struct queue_envelope env = {.sender = ""};
    assert_int_equal(queue_stage_commit(st, &env, NULL, 0, NULL, 0, on_submit, &d), ERR_INVAL);
    struct done ds = {0};
    struct queue_rcpt_in r1 = {"b@example.net", NULL, 0};
    assert_int_equal(queue_submit(f->q, &env, &r1, 1, "", 0, on_submit, &ds), 0);
    wait_for(f, &ds);
    struct queue_stats s = stats(f);
    assert_int_equal(s.chunks, 0);
    assert_int_equal(s.stages, 0);
    assert_int_equal(s.messages, 1);
    free(body);
}

/* The child: open, stream three chunks, wait until they are committed,
 * then die without a word. */
static void crash_child(const char *dir)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct queue_options o;
    queue_options_default(&o);
    o.directory = dir;
    struct queue *q;
    if (queue_open(&loop, &o, &q, NULL) != 0)
        _exit(2);
    struct queue_stage *st;
    if (queue_stage_open(q, NULL, NULL, &st) != 0)
        _exit(3);
    char *body = pattern(3 * QUEUE_CHUNK, 5);
    if (queue_stage_append(st, body, 3 * QUEUE_CHUNK) != 0)
        _exit(4);
    free(body);
    while (queue_stage_backlog(st) > 0)
        uv_run(&loop, UV_RUN_ONCE);
    _exit(0); /* the queue and the stage are left as a crash leaves them */
}

static void test_crash_purge(void **state)
{
    struct fx *f = *state;
    fx_close(f);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        crash_child(f->dir);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* A read-only opener sees the leftovers... */
    struct queue_options ro = f->opt;
    ro.read_only = true;
    struct queue *q;
    assert_int_equal(queue_open(NULL, &ro, &q, NULL), 0);
    struct queue_stats s;
    assert_int_equal(queue_stats(q, &s), 0);
    assert_int_equal(s.chunks, 3);
    assert_int_equal(s.stages, 1);
    assert_int_equal(s.messages, 0);
    queue_close(q);
    /* ...and the read-write open removes them. */
    assert_int_equal(queue_open(&f->loop, &f->opt, &f->q, NULL), 0);
    s = stats(f);
    assert_int_equal(s.chunks, 0);
    assert_int_equal(s.stages, 0);
}

static void test_backlog(void **state)
{
    struct fx *f = *state;
    struct queue_stage *st;
    int progress = 0;
    assert_int_equal(queue_stage_open(f->q, on_progress, &progress, &st), 0);
    char *body = pattern(QUEUE_CHUNK, 8);
    assert_int_equal(queue_stage_append(st, body, 100), 0);
    assert_int_equal(queue_stage_backlog(st), 100); /* held, not yet sent */
    assert_int_equal(queue_stage_append(st, body, QUEUE_CHUNK), 0);
    assert_int_equal(queue_stage_backlog(st), QUEUE_CHUNK + 100);
    assert_int_equal(progress, 0); /* never before the call returns */
    drain(f, st, 100);
    assert_int_equal(progress, 1);
    assert_int_equal(queue_stage_backlog(st), 100);
    struct done d = {0};
    assert_int_equal(commit(f, st, "P: 1\r\n", &d), 0);
    assert_int_equal(d.status, 0);
    char *want = malloc(QUEUE_CHUNK + 100);
    memcpy(want, body, 100);
    memcpy(want + 100, body, QUEUE_CHUNK);
    check_body(f, d.id, "P: 1\r\n", want, QUEUE_CHUNK + 100);
    assert_int_equal(stats(f).chunks, 3); /* prefix, one whole, one partial */
    free(want);
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_purge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backlog, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
