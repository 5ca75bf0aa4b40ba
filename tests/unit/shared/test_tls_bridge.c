/*
 * test_tls_bridge.c - the rediss:// relay (shared/tls_bridge.c) against a
 * loopback TLS echo server made of tls_stream with the tls unit tests'
 * PKI (make-certs.sh: the localhost leaf, the test CA, the evil CA):
 * bytes written before the handshake arrive, a megabyte goes through
 * both ways with small bounded queues, a wrong host name, a wrong CA and
 * a refused connect are each reported once and close the client, the
 * server's end is reported and reaches the client, the client's end is
 * not reported, the directory and socket modes, a stale socket.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "tls.h"
#include "tls_bridge.h"

#ifndef TLS_CERT_DIR
#error "TLS_CERT_DIR must name the directory make-certs.sh fills"
#endif

static uv_loop_t loop;
static uv_tcp_t listener;
static int srv_port;
static struct tls_ctx *sctx;
static char dir[256];

/* The echo server: one connection at a time. */
static struct tls_stream *srv;
static size_t srv_echoed;
static bool srv_close_on_read; /* close as soon as anything arrives */
static int srv_ends;

/* The bridge's reports. */
static int errors, ups;
static char last_error[300];

/* The client on the unix socket. */
static uv_pipe_t cli;
static uv_connect_t cli_conn;
static bool cli_connected, cli_eof, cli_closed;
static struct buf cli_got;

static void srv_read(void *arg, const void *data, size_t n)
{
    (void)arg;
    if (srv_close_on_read) {
        tls_stream_close(srv);
        return;
    }
    assert_int_equal(tls_stream_write(srv, data, n), 0);
    srv_echoed += n;
    /* The bridge must keep the echo's queue bounded. */
    if (tls_stream_queued(srv) > 512 * 1024)
        tls_stream_read_stop(srv);
}

static void srv_written(void *arg, int status)
{
    (void)arg;
    assert_int_equal(status, 0);
    if (srv && tls_stream_queued(srv) < 64 * 1024)
        tls_stream_read_start(srv);
}

static void srv_handshake(void *arg, int status, const struct tls_facts *f)
{
    (void)arg;
    (void)f;
    if (status != 0 && srv)
        tls_stream_close(srv);
}

static void srv_end(void *arg, int status, int uv_status)
{
    (void)arg;
    (void)status;
    (void)uv_status;
    srv_ends++;
    tls_stream_close(srv);
}

static void srv_closed(void *arg)
{
    (void)arg;
    srv = NULL;
}

static const struct tls_stream_callbacks srv_cbs = {
    .on_read = srv_read,
    .on_handshake = srv_handshake,
    .on_end = srv_end,
    .on_written = srv_written,
    .on_close = srv_closed,
};

static void on_listen(uv_stream_t *l, int status)
{
    assert_int_equal(status, 0);
    assert_null(srv);
    struct tls_stream_opts o = {.write_max = 4 * 1024 * 1024};
    srv = tls_stream_new(&loop, &srv_cbs, NULL, &o);
    assert_non_null(srv);
    assert_int_equal(tls_stream_accept(srv, l), 0);
    assert_int_equal(tls_stream_start_tls(srv, sctx, NULL, TLS_VERIFY_NONE), 0);
    assert_int_equal(tls_stream_read_start(srv), 0);
}

static int handshake_errors;

static void on_error(void *arg, const char *why, bool handshake)
{
    (void)arg;
    errors++;
    handshake_errors += handshake;
    str_copy(last_error, why, sizeof(last_error));
}

static void on_up(void *arg, const char *version, const char *cipher)
{
    (void)arg;
    (void)cipher;
    assert_non_null(strstr(version, "TLS"));
    ups++;
}

static void tick(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until cond() holds; fail after 10 s. */
static void run_until(bool (*cond)(void))
{
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    uv_timer_start(&guard, tick, 10, 10);
    uint64_t end = uv_now(&loop) + 10000;
    while (!cond() && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(cond());
}

/* ---- the client -------------------------------------------------------- */

static void cli_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    static char rbuf[65536];
    (void)hint;
    *b = uv_buf_init(rbuf, sizeof(rbuf));
}

static void cli_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)s;
    if (n < 0)
        cli_eof = true;
    else if (n > 0)
        assert_int_equal(buf_append(&cli_got, b->base, (size_t)n), 0);
}

static void cli_on_connect(uv_connect_t *req, int status)
{
    (void)req;
    assert_int_equal(status, 0);
    cli_connected = true;
    assert_int_equal(uv_read_start((uv_stream_t *)&cli, cli_alloc, cli_read), 0);
}

static bool is_connected(void)
{
    return cli_connected;
}

static void cli_open(struct tls_bridge *b)
{
    cli_connected = cli_eof = cli_closed = false;
    buf_init(&cli_got, 4 * 1024 * 1024);
    uv_pipe_init(&loop, &cli, 0);
    uv_pipe_connect(&cli_conn, &cli, tls_bridge_path(b), cli_on_connect);
    run_until(is_connected);
}

static void cli_written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void cli_write(const void *data, size_t n)
{
    uv_write_t *w = malloc(sizeof(*w) + n);
    assert_non_null(w);
    memcpy(w + 1, data, n);
    uv_buf_t buf = uv_buf_init((char *)(w + 1), (unsigned)n);
    assert_int_equal(uv_write(w, (uv_stream_t *)&cli, &buf, 1, cli_written), 0);
}

static void cli_on_close(uv_handle_t *h)
{
    (void)h;
    cli_closed = true;
}

static bool is_cli_closed(void)
{
    return cli_closed;
}

static void cli_close(void)
{
    uv_close((uv_handle_t *)&cli, cli_on_close);
    run_until(is_cli_closed);
    buf_free(&cli_got);
}

/* ---- the bridge -------------------------------------------------------- */

static struct tls_bridge *bridge_new(const char *host, int port, const char *ca, size_t buf_max)
{
    struct tls_bridge_options o = {.loop = &loop,
                                   .dir = dir,
                                   .host = host,
                                   .port = (uint16_t)port,
                                   .ca_file = ca,
                                   .buf_max = buf_max,
                                   .on_error = on_error,
                                   .on_up = on_up};
    struct tls_bridge *b = NULL;
    struct buf err;
    buf_init(&err, 1024);
    int rc = tls_bridge_new(&o, &b, &err);
    if (rc != 0)
        fail_msg("tls_bridge_new: %s", err.data ? err.data : "?");
    buf_free(&err);
    errors = ups = handshake_errors = 0;
    last_error[0] = '\0';
    return b;
}

static bool no_server(void)
{
    return srv == NULL;
}

static void bridge_close(struct tls_bridge *b)
{
    tls_bridge_close(b);
    run_until(no_server);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* ---- fixtures ---------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN); /* as convoyd: a closed peer is an EPIPE */
    char why[256];
    sctx = tls_ctx_server_new(TLS_CERT_DIR "/localhost.pem", TLS_CERT_DIR "/localhost.key", why,
                              sizeof(why));
    if (!sctx)
        fail_msg("server ctx: %s", why);
    uv_loop_init(&loop);
    uv_tcp_init(&loop, &listener);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&listener, 16, on_listen), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&listener, (struct sockaddr *)&a, &len);
    srv_port = ntohs(a.sin_port);
    snprintf(dir, sizeof(dir), "/tmp/convoy-bridge-%d/shared-tls", (int)getpid());
    char parent[256];
    snprintf(parent, sizeof(parent), "/tmp/convoy-bridge-%d", (int)getpid());
    assert_int_equal(mkdir(parent, 0755), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    uv_close((uv_handle_t *)&listener, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    tls_ctx_free(sctx);
    char parent[256];
    snprintf(parent, sizeof(parent), "/tmp/convoy-bridge-%d", (int)getpid());
    rmdir(dir);
    rmdir(parent);
    return 0;
}

static int reset(void **state)
{
    (void)state;
    srv_echoed = 0;
    srv_close_on_read = false;
    srv_ends = 0;
    return 0;
}

/* ---- cases ------------------------------------------------------------- */

static const char *want;
static bool got_want(void)
{
    return cli_got.len >= strlen(want);
}

static bool got_all(void)
{
    return cli_got.len >= 1024 * 1024;
}

static void test_echo_and_modes(void **state)
{
    (void)state;
    struct tls_bridge *b = bridge_new("localhost", srv_port, TLS_CERT_DIR "/ca.pem", 16 * 1024);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(lstat(tls_bridge_path(b), &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    /* Written at once: it waits for the handshake, then goes through. */
    cli_open(b);
    cli_write("PING\r\n", 6);
    want = "PING\r\n";
    run_until(got_want);
    assert_memory_equal(cli_got.data, "PING\r\n", 6);
    assert_int_equal(ups, 1);
    assert_int_equal(tls_bridge_links(b), 1);

    /* A megabyte both ways through 16 KiB queues, in order. */
    buf_reset(&cli_got);
    static char big[1024 * 1024];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)('a' + (i * 7 + i / 1000) % 26);
    for (size_t off = 0; off < sizeof(big); off += 100000)
        cli_write(big + off, sizeof(big) - off < 100000 ? sizeof(big) - off : 100000);
    run_until(got_all);
    assert_int_equal(cli_got.len, sizeof(big));
    assert_memory_equal(cli_got.data, big, sizeof(big));

    /* A client that stops reading: the bridge stops reading Redis (and
     * then the client) instead of holding what Redis sends. */
    buf_reset(&cli_got);
    uv_read_stop((uv_stream_t *)&cli);
    for (size_t off = 0; off < sizeof(big); off += 100000)
        cli_write(big + off, sizeof(big) - off < 100000 ? sizeof(big) - off : 100000);
    size_t most = 0;
    for (int i = 0; i < 300; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
        size_t q = tls_bridge_queued(b);
        most = q > most ? q : most;
    }
    print_message("bridge held at most %zu bytes with a client that does not read\n", most);
    assert_true(most <= 2 * 16 * 1024 + 2 * 64 * 1024 + 32 * 1024);
    assert_int_equal(uv_read_start((uv_stream_t *)&cli, cli_alloc, cli_read), 0);
    run_until(got_all);
    assert_memory_equal(cli_got.data, big, sizeof(big));

    /* The client's end is not an error; the server sees the end. */
    cli_close();
    run_until(no_server);
    assert_int_equal(srv_ends, 1);
    assert_int_equal(errors, 0);
    bridge_close(b);
    assert_int_not_equal(access(dir, F_OK), -1);
    /* The socket is removed at close. */
    char path[300];
    snprintf(path, sizeof(path), "%s/%s", dir, TLS_BRIDGE_SOCKET);
    assert_int_equal(access(path, F_OK), -1);
}

static bool client_ended(void)
{
    return cli_eof;
}

/* One refused connection: error reported once, client closed. */
static void refused(const char *host, int port, const char *ca, const char *text, bool handshake)
{
    struct tls_bridge *b = bridge_new(host, port, ca, 0);
    cli_open(b);
    cli_write("PING\r\n", 6);
    run_until(client_ended);
    assert_int_equal(errors, 1);
    assert_int_equal(handshake_errors, handshake ? 1 : 0);
    assert_int_equal(ups, 0);
    if (!strstr(last_error, text))
        fail_msg("error \"%s\" does not say \"%s\"", last_error, text);
    assert_int_equal(cli_got.len, 0);
    cli_close();
    bridge_close(b);
    assert_int_equal(errors, 1);
}

static void test_wrong_name(void **state)
{
    (void)state;
    refused("127.0.0.1", srv_port, TLS_CERT_DIR "/ca.pem", "certificate", true);
}

static void test_wrong_ca(void **state)
{
    (void)state;
    refused("localhost", srv_port, TLS_CERT_DIR "/evilca.pem", "certificate", true);
}

static void test_connect_refused(void **state)
{
    (void)state;
    /* A port nobody listens on: bind one and close it. */
    uv_tcp_t t;
    uv_tcp_init(&loop, &t);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&t, (const struct sockaddr *)&a, 0), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&t, (struct sockaddr *)&a, &len);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    refused("127.0.0.1", ntohs(a.sin_port), TLS_CERT_DIR "/ca.pem", "connect to 127.0.0.1", false);
}

static void test_server_closes(void **state)
{
    (void)state;
    struct tls_bridge *b = bridge_new("localhost", srv_port, TLS_CERT_DIR "/ca.pem", 0);
    srv_close_on_read = true;
    cli_open(b);
    cli_write("QUIT\r\n", 6);
    run_until(client_ended);
    assert_int_equal(ups, 1);
    assert_int_equal(errors, 1);
    assert_non_null(strstr(last_error, "closed by the server"));
    assert_int_equal(handshake_errors, 0);
    cli_close();
    bridge_close(b);
}

static void test_stale_socket_and_bad_path(void **state)
{
    (void)state;
    /* A socket left behind by a crash is replaced. */
    mkdir(dir, 0700);
    char path[300];
    snprintf(path, sizeof(path), "%s/%s", dir, TLS_BRIDGE_SOCKET);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    str_copy(sun.sun_path, path, sizeof(sun.sun_path));
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    close(fd);
    chmod(dir, 0755);
    struct tls_bridge *b = bridge_new("localhost", srv_port, TLS_CERT_DIR "/ca.pem", 0);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    bridge_close(b);

    /* Anything else there is refused, as is a CA file that does not load. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    struct tls_bridge_options o = {
        .loop = &loop, .dir = dir, .host = "localhost", .port = 1, .ca_file = NULL};
    struct buf err;
    buf_init(&err, 1024);
    assert_int_equal(tls_bridge_new(&o, &b, &err), ERR_INVAL);
    assert_null(b);
    assert_non_null(strstr(err.data, "not a socket"));
    unlink(path);
    buf_reset(&err);
    o.ca_file = "/nonexistent/ca.pem";
    assert_int_equal(tls_bridge_new(&o, &b, &err), ERR_INVAL);
    assert_non_null(strstr(err.data, "shared_state_tls_CAfile"));
    buf_free(&err);
    uv_run(&loop, UV_RUN_NOWAIT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_echo_and_modes, reset),
        cmocka_unit_test_setup(test_wrong_name, reset),
        cmocka_unit_test_setup(test_wrong_ca, reset),
        cmocka_unit_test_setup(test_connect_refused, reset),
        cmocka_unit_test_setup(test_server_closes, reset),
        cmocka_unit_test_setup(test_stale_socket_and_bad_path, reset),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
