/*
 * test_stream.c - struct tls_stream over real TCP on 127.0.0.1: a client
 * stream connects to a listener whose accepted connection becomes a server
 * stream; certificates come from make-certs.sh (TLS_CERT_DIR).
 *
 * Cases: plaintext both ways; STARTTLS upgrade after a plaintext exchange;
 * implicit TLS from the first byte; the write queue bound; coalescing (the
 * writes of one loop iteration leave in one write(2), and under TLS in one
 * record); close with writes pending; a peer reset.
 *
 * Write syscalls are counted by interposing write() and writev(): libuv
 * (a shared library) resolves them to the definitions below, which count
 * calls per file descriptor and pass them on.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "base.h"
#include "tls.h"

#ifndef TLS_CERT_DIR
#error "TLS_CERT_DIR must name the directory make-certs.sh fills"
#endif

/* ---- counting write(2) --------------------------------------------------- */

static int watch_fd = -1;
static int watch_writes;  /* write()/writev() calls on watch_fd */
static int watch_records; /* TLS records in them (when parse_records) */
static bool parse_records;

static void count_records(const unsigned char *p, size_t n)
{
    /* Writes carry whole records here: walk the 5-byte headers. */
    size_t off = 0;
    while (off + 5 <= n) {
        size_t len = ((size_t)p[off + 3] << 8) | p[off + 4];
        watch_records++;
        off += 5 + len;
    }
}

ssize_t write(int fd, const void *buf, size_t n)
{
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (fd == watch_fd && fd >= 0) {
        watch_writes++;
        if (parse_records)
            count_records(buf, n);
    }
    return real(fd, buf, n);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    static ssize_t (*real)(int, const struct iovec *, int);
    if (!real)
        real = (ssize_t(*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    if (fd == watch_fd && fd >= 0) {
        watch_writes++;
        if (parse_records && cnt == 1)
            count_records(iov[0].iov_base, iov[0].iov_len);
    }
    return real(fd, iov, cnt);
}

static int watch_shutdowns; /* shutdown() calls on watch_fd */

int shutdown(int fd, int how)
{
    static int (*real)(int, int);
    if (!real)
        real = (int (*)(int, int))dlsym(RTLD_NEXT, "shutdown");
    if (fd == watch_fd && fd >= 0)
        watch_shutdowns++;
    return real(fd, how);
}

/* ---- the pair -------------------------------------------------------------- */

struct end {
    struct tls_stream *s;
    const char *name;
    struct buf got;
    int connects, connect_status;
    int handshakes, hs_status;
    int ends, end_status, end_uv;
    int written_ok, written_err;
    int closes;
    bool start_tls_on; /* client: start TLS when "220 go\r\n" arrives */
};

static uv_loop_t loop;
static uv_tcp_t listener;
static struct sockaddr_in laddr;
static struct end cli, srv;
static struct tls_ctx *sctx, *cctx;
static struct tls_stream_opts srv_opts, cli_opts;
static bool srv_tls_implicit;

static void cb_connect(void *arg, int status)
{
    struct end *e = arg;
    e->connects++;
    e->connect_status = status;
}

static void cb_read(void *arg, const void *data, size_t n)
{
    struct end *e = arg;
    assert_int_equal(buf_append(&e->got, data, n), 0);
    if (e->start_tls_on && strstr(e->got.data, "220 go\r\n")) {
        e->start_tls_on = false;
        buf_reset(&e->got);
        assert_int_equal(tls_stream_start_tls(e->s, cctx, "mx.example.com", TLS_VERIFY_HOST), 0);
    }
}

static void cb_handshake(void *arg, int status, const struct tls_facts *facts)
{
    struct end *e = arg;
    e->handshakes++;
    e->hs_status = status;
    assert_non_null(facts);
}

static void cb_end(void *arg, int status, int uv_status)
{
    struct end *e = arg;
    e->ends++;
    e->end_status = status;
    e->end_uv = uv_status;
}

static void cb_written(void *arg, int status)
{
    struct end *e = arg;
    if (status == 0)
        e->written_ok++;
    else
        e->written_err++;
}

static void cb_close(void *arg)
{
    struct end *e = arg;
    e->closes++;
    e->s = NULL;
}

static const struct tls_stream_callbacks cbs = {
    .on_connect = cb_connect,
    .on_read = cb_read,
    .on_handshake = cb_handshake,
    .on_end = cb_end,
    .on_written = cb_written,
    .on_close = cb_close,
};

static void on_listen(uv_stream_t *l, int status)
{
    assert_int_equal(status, 0);
    assert_null(srv.s);
    srv.s = tls_stream_new(&loop, &cbs, &srv, &srv_opts);
    assert_non_null(srv.s);
    assert_int_equal(tls_stream_accept(srv.s, l), 0);
    if (srv_tls_implicit)
        assert_int_equal(tls_stream_start_tls(srv.s, sctx, NULL, TLS_VERIFY_NONE), 0);
    assert_int_equal(tls_stream_read_start(srv.s), 0);
}

static void tick(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until cond() holds; fail after 5 s. */
static void run_until(bool (*cond)(void))
{
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    uv_timer_start(&guard, tick, 10, 10);
    uint64_t end = uv_now(&loop) + 5000;
    while (!cond() && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(cond());
}

static bool both_connected(void)
{
    return cli.connects == 1 && srv.s != NULL;
}

static void end_init(struct end *e, const char *name)
{
    memset(e, 0, sizeof(*e));
    e->name = name;
    buf_init(&e->got, 16 * 1024 * 1024);
}

/* Connect a fresh pair; the client reads from the start. */
static void pair(bool implicit_tls)
{
    end_init(&cli, "client");
    end_init(&srv, "server");
    srv_tls_implicit = implicit_tls;
    cli.s = tls_stream_new(&loop, &cbs, &cli, &cli_opts);
    assert_non_null(cli.s);
    assert_int_equal(tls_stream_connect(cli.s, (const struct sockaddr *)&laddr), 0);
    run_until(both_connected);
    assert_int_equal(cli.connect_status, 0);
    if (implicit_tls)
        assert_int_equal(tls_stream_start_tls(cli.s, cctx, "mx.example.com", TLS_VERIFY_HOST), 0);
    assert_int_equal(tls_stream_read_start(cli.s), 0);
}

static bool both_closed(void)
{
    return cli.s == NULL && srv.s == NULL;
}

static void unpair(void)
{
    if (cli.s)
        tls_stream_close(cli.s);
    if (srv.s)
        tls_stream_close(srv.s);
    run_until(both_closed);
    buf_free(&cli.got);
    buf_free(&srv.got);
}

static struct end *want_end;
static const char *want_text;
static bool got_text(void)
{
    return want_end->got.len >= strlen(want_text) &&
           memcmp(want_end->got.data, want_text, strlen(want_text)) == 0;
}

static void expect(struct end *e, const char *text)
{
    want_end = e;
    want_text = text;
    run_until(got_text);
    assert_int_equal(e->got.len, strlen(text));
    buf_reset(&e->got);
}

static bool srv_ended(void)
{
    return srv.ends > 0;
}

static bool cli_ended(void)
{
    return cli.ends > 0;
}

static bool cli_handshaken(void)
{
    return cli.handshakes > 0;
}

static bool cli_written(void)
{
    return cli.written_ok > 0;
}

static bool cli_closed(void)
{
    return cli.s == NULL;
}

static bool srv_closed(void)
{
    return srv.s == NULL;
}

static bool srv_has_1000(void)
{
    return srv.got.len >= 1000;
}

static bool srv_has_150(void)
{
    return srv.got.len >= 150;
}

static bool both_handshaken(void)
{
    return cli.handshakes == 1 && srv.handshakes == 1;
}

/* ---- fixtures -------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    char why[256];
    sctx = tls_ctx_server_new(TLS_CERT_DIR "/good.pem", TLS_CERT_DIR "/good.key", why, sizeof why);
    if (!sctx)
        fprintf(stderr, "server ctx: %s\n", why);
    cctx = tls_ctx_client_new(TLS_CERT_DIR "/ca.pem", why, sizeof why);
    if (!cctx)
        fprintf(stderr, "client ctx: %s\n", why);
    assert_non_null(sctx);
    assert_non_null(cctx);
    uv_loop_init(&loop);
    uv_tcp_init(&loop, &listener);
    uv_ip4_addr("127.0.0.1", 0, &laddr);
    assert_int_equal(uv_tcp_bind(&listener, (const struct sockaddr *)&laddr, 0), 0);
    int len = sizeof(laddr);
    uv_tcp_getsockname(&listener, (struct sockaddr *)&laddr, &len);
    assert_int_equal(uv_listen((uv_stream_t *)&listener, 16, on_listen), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    uv_close((uv_handle_t *)&listener, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    tls_ctx_free(sctx);
    tls_ctx_free(cctx);
    return 0;
}

static int reset_opts(void **state)
{
    (void)state;
    memset(&srv_opts, 0, sizeof(srv_opts));
    memset(&cli_opts, 0, sizeof(cli_opts));
    watch_fd = -1;
    parse_records = false;
    return 0;
}

static int fd_of(struct tls_stream *s)
{
    uv_os_fd_t fd;
    assert_int_equal(uv_fileno((uv_handle_t *)tls_stream_tcp(s), &fd), 0);
    return fd;
}

/* ---- cases ----------------------------------------------------------------- */

static void test_plaintext(void **state)
{
    (void)state;
    pair(false);
    assert_int_equal(tls_stream_write(cli.s, "EHLO x\r\n", 8), 0);
    /* Nothing is written inside the call: the queue holds it. */
    assert_int_equal(tls_stream_queued(cli.s), 8);
    expect(&srv, "EHLO x\r\n");
    assert_int_equal(tls_stream_write(srv.s, "250 ok\r\n", 8), 0);
    expect(&cli, "250 ok\r\n");
    assert_true(cli.written_ok >= 1);
    assert_null(tls_stream_facts(cli.s));
    assert_false(tls_stream_tls_active(cli.s));
    /* An orderly end from the client: the server sees the end once. */
    tls_stream_shutdown(cli.s);
    assert_int_equal(tls_stream_write(cli.s, "x", 1), ERR_CLOSED);
    run_until(srv_ended);
    assert_int_equal(srv.ends, 1);
    assert_int_equal(srv.end_status, ERR_CLOSED);
    assert_int_equal(srv.end_uv, UV_EOF);
    unpair();
    assert_int_equal(cli.closes, 1);
    assert_int_equal(srv.closes, 1);
}

static void test_starttls(void **state)
{
    (void)state;
    pair(false);
    assert_int_equal(tls_stream_write(cli.s, "STARTTLS\r\n", 10), 0);
    expect(&srv, "STARTTLS\r\n");
    /* The reply is queued in the clear, then TLS starts behind it. */
    cli.start_tls_on = true;
    assert_int_equal(tls_stream_write(srv.s, "220 go\r\n", 8), 0);
    assert_int_equal(tls_stream_start_tls(srv.s, sctx, NULL, TLS_VERIFY_NONE), 0);
    assert_int_equal(tls_stream_start_tls(srv.s, sctx, NULL, TLS_VERIFY_NONE), ERR_INVAL);
    /* During the handshake nothing can be written. */
    assert_int_equal(tls_stream_write(srv.s, "x", 1), ERR_AGAIN);
    run_until(both_handshaken);
    assert_int_equal(cli.hs_status, 0);
    assert_int_equal(srv.hs_status, 0);
    assert_true(tls_stream_tls_active(cli.s));
    assert_true(tls_stream_tls_active(srv.s));
    const struct tls_facts *f = tls_stream_facts(cli.s);
    assert_non_null(f);
    assert_true(f->verified);
    assert_true(f->handshake_done);
    assert_int_equal(tls_stream_write(cli.s, "EHLO again\r\n", 12), 0);
    expect(&srv, "EHLO again\r\n");
    assert_int_equal(tls_stream_write(srv.s, "250 secure\r\n", 12), 0);
    expect(&cli, "250 secure\r\n");
    /* close_notify from the server: the client's input ends with 0. */
    tls_stream_shutdown(srv.s);
    run_until(cli_ended);
    assert_int_equal(cli.ends, 1);
    assert_int_equal(cli.end_status, 0);
    unpair();
    assert_int_equal(cli.ends, 1);
}

static void test_implicit_tls(void **state)
{
    (void)state;
    pair(true);
    /* The client may queue before the handshake completes only after it. */
    assert_int_equal(tls_stream_write(cli.s, "x", 1), ERR_AGAIN);
    run_until(both_handshaken);
    assert_int_equal(cli.hs_status, 0);
    assert_int_equal(srv.hs_status, 0);
    static char big[200000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)('a' + i % 26);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(tls_stream_write(srv.s, big, sizeof(big) - 1), 0);
    expect(&cli, big);
    unpair();
}

static void test_implicit_tls_bad_name(void **state)
{
    (void)state;
    end_init(&cli, "client");
    end_init(&srv, "server");
    srv_tls_implicit = true;
    cli.s = tls_stream_new(&loop, &cbs, &cli, NULL);
    assert_int_equal(tls_stream_connect(cli.s, (const struct sockaddr *)&laddr), 0);
    run_until(both_connected);
    assert_int_equal(tls_stream_start_tls(cli.s, cctx, "wrong.example.org", TLS_VERIFY_HOST), 0);
    assert_int_equal(tls_stream_read_start(cli.s), 0);
    run_until(cli_handshaken);
    assert_int_equal(cli.hs_status, ERR_TLS);
    assert_int_equal(tls_stream_facts(cli.s)->failure, TLS_FAIL_HOST_MISMATCH);
    assert_int_equal(tls_stream_write(cli.s, "x", 1), ERR_CLOSED);
    unpair();
    assert_int_equal(cli.ends, 0);
}

static void test_write_bound(void **state)
{
    (void)state;
    cli_opts.write_max = 1000;
    pair(false);
    char b[600];
    memset(b, 'x', sizeof(b));
    assert_int_equal(tls_stream_write(cli.s, b, sizeof(b)), 0);
    assert_int_equal(tls_stream_write(cli.s, b, sizeof(b)), ERR_TOOBIG);
    assert_int_equal(tls_stream_queued(cli.s), 600);
    assert_int_equal(tls_stream_write(cli.s, b, 400), 0);
    assert_int_equal(tls_stream_write(cli.s, b, 1), ERR_TOOBIG);
    assert_int_equal(tls_stream_write(cli.s, b, 0), 0);
    want_end = &srv;
    run_until(srv_has_1000);
    assert_int_equal(srv.got.len, 1000);
    assert_int_equal(tls_stream_queued(cli.s), 0);
    unpair();
}

static void test_coalescing_plain(void **state)
{
    (void)state;
    pair(false);
    watch_fd = fd_of(cli.s);
    watch_writes = 0;
    for (int i = 0; i < 10; i++)
        assert_int_equal(tls_stream_write(cli.s, "RCPT TO:<a@b>\r\n", 15), 0);
    assert_int_equal(watch_writes, 0);
    want_end = &srv;
    run_until(srv_has_150);
    assert_int_equal(watch_writes, 1);
    watch_fd = -1;
    unpair();
}

static void test_coalescing_tls(void **state)
{
    (void)state;
    pair(true);
    run_until(both_handshaken);
    watch_fd = fd_of(cli.s);
    watch_writes = 0;
    watch_records = 0;
    parse_records = true;
    for (int i = 0; i < 10; i++)
        assert_int_equal(tls_stream_write(cli.s, "RCPT TO:<a@b>\r\n", 15), 0);
    want_end = &srv;
    run_until(srv_has_150);
    assert_int_equal(watch_writes, 1);
    assert_int_equal(watch_records, 1);
    watch_fd = -1;
    parse_records = false;
    unpair();
}

/* A plaintext pair where the client wrote n bytes the server does not
 * read: the kernel buffers fill and the rest waits in uv_write. */
static void pair_with_pending(size_t n)
{
    cli_opts.write_max = 64 * 1024 * 1024;
    pair(false);
    tls_stream_read_stop(srv.s);
    char *big = calloc(1, n);
    assert_non_null(big);
    assert_int_equal(tls_stream_write(cli.s, big, n), 0);
    free(big);
    run_until(cli_written);
    assert_true(tls_stream_queued(cli.s) > 0);
}

static void test_close_with_pending_writes(void **state)
{
    (void)state;
    pair_with_pending(16 * 1024 * 1024);
    int ok = cli.written_ok, err = cli.written_err;
    tls_stream_close(cli.s);
    tls_stream_close(cli.s); /* twice: nothing more */
    assert_int_equal(tls_stream_write(cli.s, "x", 1), ERR_CLOSED);
    run_until(cli_closed);
    /* No callback but on_close after the close. */
    assert_int_equal(cli.written_ok, ok);
    assert_int_equal(cli.written_err, err);
    assert_int_equal(cli.closes, 1);
    assert_int_equal(cli.ends, 0);
    unpair();
    assert_int_equal(srv.closes, 1);
}

#define PENDING_BIG (12 * 1024 * 1024) /* more than loopback's buffers take */

static bool srv_has_big(void)
{
    return srv.got.len >= PENDING_BIG;
}

static void test_shutdown_sent(void **state)
{
    (void)state;
    /* Everything is in the kernel when the end comes: close(2) alone sends
     * the FIN behind the data, no shutdown(2). */
    pair(false);
    watch_fd = fd_of(cli.s);
    watch_shutdowns = 0;
    assert_int_equal(tls_stream_write(cli.s, "QUIT\r\n", 6), 0);
    tls_stream_shutdown(cli.s);
    run_until(srv_ended);
    assert_int_equal(srv.got.len, 6);
    assert_memory_equal(srv.got.data, "QUIT\r\n", 6);
    assert_int_equal(srv.end_uv, UV_EOF);
    assert_int_equal(watch_shutdowns, 0);
    watch_fd = -1;
    unpair();
    assert_int_equal(cli.closes, 1);
}

static void test_shutdown_waits_for_writes(void **state)
{
    (void)state;
    /* Writes still waiting in libuv: the end waits for them
     * (shutdown(2) once they are out), and every byte arrives first. */
    pair_with_pending(PENDING_BIG);
    watch_fd = fd_of(cli.s);
    watch_shutdowns = 0;
    tls_stream_shutdown(cli.s);
    assert_int_equal(tls_stream_read_start(srv.s), 0);
    want_end = &srv;
    run_until(srv_has_big);
    run_until(srv_ended);
    assert_int_equal(srv.got.len, PENDING_BIG);
    assert_int_equal(srv.end_uv, UV_EOF);
    assert_int_equal(watch_shutdowns, 1);
    watch_fd = -1;
    unpair();
}

static void test_peer_reset(void **state)
{
    (void)state;
    /* Plaintext: over TLS the server's close would send close_notify
     * first, and whether it arrives before the RST is a race. */
    pair(false);
    assert_int_equal(tls_stream_write(cli.s, "NOOP\r\n", 6), 0);
    expect(&srv, "NOOP\r\n");
    /* SO_LINGER 0: closing the server's socket sends RST. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd_of(srv.s), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    tls_stream_close(srv.s);
    run_until(cli_ended);
    assert_int_equal(cli.ends, 1);
    assert_int_equal(cli.end_status, ERR_CLOSED);
    assert_true(cli.end_uv == UV_ECONNRESET || cli.end_uv == UV_EOF);
    unpair();
    assert_int_equal(cli.ends, 1);
}

static void test_close_before_connect(void **state)
{
    (void)state;
    end_init(&cli, "client");
    cli.s = tls_stream_new(&loop, &cbs, &cli, NULL);
    assert_non_null(cli.s);
    assert_int_equal(tls_stream_connect(cli.s, (const struct sockaddr *)&laddr), 0);
    tls_stream_close(cli.s);
    run_until(cli_closed);
    assert_int_equal(cli.connects, 0);
    assert_int_equal(cli.closes, 1);
    /* The listener may have accepted it meanwhile. */
    if (srv.s) {
        tls_stream_close(srv.s);
        run_until(srv_closed);
    }
    buf_free(&cli.got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_plaintext, reset_opts),
        cmocka_unit_test_setup(test_starttls, reset_opts),
        cmocka_unit_test_setup(test_implicit_tls, reset_opts),
        cmocka_unit_test_setup(test_implicit_tls_bad_name, reset_opts),
        cmocka_unit_test_setup(test_write_bound, reset_opts),
        cmocka_unit_test_setup(test_coalescing_plain, reset_opts),
        cmocka_unit_test_setup(test_coalescing_tls, reset_opts),
        cmocka_unit_test_setup(test_close_with_pending_writes, reset_opts),
        cmocka_unit_test_setup(test_shutdown_sent, reset_opts),
        cmocka_unit_test_setup(test_shutdown_waits_for_writes, reset_opts),
        cmocka_unit_test_setup(test_peer_reset, reset_opts),
        cmocka_unit_test_setup(test_close_before_connect, reset_opts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
