/*
 * test_shared.c - the pure parts of shared/ (url.c): shared_state URLs
 * (redis://, rediss://, unix:), how many tokens one grant asks
 * for (shared_batch()) and the fallback share (shared_share()).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "shared.h"

struct url_case {
    const char *in;
    int rc;
    enum shared_url_kind kind;
    const char *host_or_path;
    unsigned port, db;
    const char *password;
    const char *shown;
};

static const struct url_case url_cases[] = {
    {"redis://127.0.0.1:6380/2", 0, SHARED_URL_TCP, "127.0.0.1", 6380, 2, "",
     "redis://127.0.0.1:6380/2"},
    {"redis://redis.example.net", 0, SHARED_URL_TCP, "redis.example.net", 6379, 0, "",
     "redis://redis.example.net:6379/0"},
    {"redis://[::1]:7000/1", 0, SHARED_URL_TCP, "::1", 7000, 1, "", "redis://[::1]:7000/1"},
    {"redis://:s3cret@10.0.0.5:6379/0", 0, SHARED_URL_TCP, "10.0.0.5", 6379, 0, "s3cret",
     "redis://:***@10.0.0.5:6379/0"},
    {"redis://convoy:pw@h:1/3", 0, SHARED_URL_TCP, "h", 1, 3, "pw", "redis://convoy:***@h:1/3"},
    {"redis://h/", 0, SHARED_URL_TCP, "h", 6379, 0, "", "redis://h:6379/0"},
    {"unix:/run/redis/redis.sock", 0, SHARED_URL_UNIX, "/run/redis/redis.sock", 0, 0, "",
     "unix:/run/redis/redis.sock"},
    {"unix:/tmp/r.sock?db=4", 0, SHARED_URL_UNIX, "/tmp/r.sock", 0, 4, "", "unix:/tmp/r.sock?db=4"},
    {"rediss://127.0.0.1:6380/0", 0, SHARED_URL_TCP, "127.0.0.1", 6380, 0, "",
     "rediss://127.0.0.1:6380/0"},
    {"rediss://:pw@redis.example.net/5", 0, SHARED_URL_TCP, "redis.example.net", 6379, 5, "pw",
     "rediss://:***@redis.example.net:6379/5"},
    {"rediss://", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redisss://h", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"http://127.0.0.1", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redis://", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redis://h:0", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redis://h:65536", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redis://h:12x", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redis://h/db1", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redis://[::1", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redis://user@h", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"redis://h o/0", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"unix:relative.sock", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
    {"unix:/s?timeout=1", ERR_INVAL, 0, NULL, 0, 0, NULL, NULL},
};

static void test_url(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(url_cases) / sizeof(url_cases[0]); i++) {
        const struct url_case *c = &url_cases[i];
        struct shared_url u;
        struct buf err;
        buf_init(&err, 1024);
        int rc = shared_url_parse(c->in, &u, &err);
        if (rc != c->rc)
            fail_msg("%s: rc %d, want %d (%s)", c->in, rc, c->rc, err.data ? err.data : "");
        if (rc != 0) {
            assert_non_null(err.data);
            assert_non_null(strstr(err.data, "shared_state"));
            buf_free(&err);
            continue;
        }
        buf_free(&err);
        assert_int_equal(u.kind, c->kind);
        assert_int_equal(u.tls, strncmp(c->in, "rediss:", 7) == 0);
        assert_string_equal(c->kind == SHARED_URL_TCP ? u.host : u.path, c->host_or_path);
        if (c->kind == SHARED_URL_TCP)
            assert_int_equal(u.port, c->port);
        assert_int_equal(u.db, c->db);
        assert_string_equal(u.password, c->password);
        assert_string_equal(u.shown, c->shown);
        /* The password is never shown. */
        if (c->password[0])
            assert_null(strstr(u.shown, c->password));
    }
}

/* A grant asks for what waits, at most a tenth of a second's worth of the
 * rate and at most 64, at least one. */
static void test_batch(void **state)
{
    (void)state;
    assert_int_equal(shared_batch(0, 50), 1);
    assert_int_equal(shared_batch(1, 50), 1);
    assert_int_equal(shared_batch(3, 50), 3);
    assert_int_equal(shared_batch(100, 50), 5);
    assert_int_equal(shared_batch(100, 2), 1);
    assert_int_equal(shared_batch(100, 0.5), 1);
    assert_int_equal(shared_batch(1000, 100000), 64);
    assert_int_equal(shared_batch(10, 100000), 10);
}

/* The configured share wins; else 1/N of the fleet last seen. */
static void test_share(void **state)
{
    (void)state;
    assert_float_equal(shared_share(0, 3), 1.0 / 3, 1e-9);
    assert_float_equal(shared_share(0, 0), 1.0, 1e-9);
    assert_float_equal(shared_share(0, 1), 1.0, 1e-9);
    assert_float_equal(shared_share(0.5, 3), 0.5, 1e-9);
    assert_float_equal(shared_share(1, 4), 1.0, 1e-9);
    /* Out of range: ignored. */
    assert_float_equal(shared_share(1.5, 4), 0.25, 1e-9);
    assert_float_equal(shared_share(-1, 2), 0.5, 1e-9);
}

/* Without Redis the client is down, its requests refused at once (their
 * callbacks never run), and it closes cleanly. */
static int called;
static void grant_cb(void *arg, int status, unsigned granted, int64_t wait_ms)
{
    (void)arg;
    (void)status;
    (void)granted;
    (void)wait_ms;
    called++;
}

static void stop_timer(uv_timer_t *t)
{
    uv_timer_stop(t);
}

static void test_client_down(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct shared *s = NULL;
    struct buf err;
    buf_init(&err, 1024);
    struct shared_options o = {.loop = &loop, .url = "unix:/nonexistent/redis.sock", .node = "n1"};
    assert_int_equal(shared_new(&o, &s, &err), 0);
    assert_non_null(s);
    assert_false(shared_up(s));
    assert_int_equal(shared_fleet_size(s), 1);
    assert_float_equal(shared_fallback_share(s), 1.0, 1e-9);
    assert_int_not_equal(shared_rate_take(s, "d", 10, 10, 1, grant_cb, NULL), 0);
    /* Let it try to connect a few times. */
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, stop_timer, 600, 0);
    uv_run(&loop, UV_RUN_ONCE);
    while (uv_is_active((uv_handle_t *)&t))
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(shared_state(s), SHARED_DOWN);
    shared_close(s);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(called, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    struct shared *bad = NULL;
    /* rediss:// needs the directory of its TLS socket, and a CA file that
     * loads. */
    o.url = "rediss://h:1/0";
    assert_int_equal(shared_new(&o, &bad, &err), ERR_INVAL);
    assert_null(bad);
    o.tls_dir = "/tmp";
    o.ca_file = "/nonexistent/ca.pem";
    buf_reset(&err);
    assert_int_equal(shared_new(&o, &bad, &err), ERR_INVAL);
    assert_null(bad);
    assert_non_null(strstr(err.data, "shared_state_tls_CAfile"));
    buf_free(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_share),
        cmocka_unit_test(test_client_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
