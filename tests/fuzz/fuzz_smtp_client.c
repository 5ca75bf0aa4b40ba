/*
 * fuzz_smtp_client.c - libFuzzer driver for the SMTP client session
 * (smtp/client.c): arbitrary bytes as everything a remote MX host says, over
 * a real loopback TCP connection driven by the libuv loop. This is the
 * delivery side's hostile input: greeting, EHLO answer (extensions, SIZE),
 * replies to MAIL, RCPT, DATA and the final dot, in any cut and order.
 *
 * Input: byte 0 picks the options (bit 0: the whole input is written at
 * once, else in pieces of the size in bits 1-4 plus one;
 * bit 5 TLS "may" with a client context, so STARTTLS meets garbage; bit 6
 * a body of long lines, bit 7 a third recipient); the rest is the server's
 * byte stream. The server side writes it, half-closes, and reads whatever
 * the client sends until the client closes.
 *
 * Invariants checked: the session ends with SMTP_EV_CLOSED; a message that
 * was given gets SMTP_EV_DONE first, with every recipient's outcome filled
 * in; a recipient is "sent" only when the server's bytes hold a 354 and
 * then a 2xx reply (RFC 5321 4.1.1.4: delivered only on the positive reply
 * after the final dot; CHUNKING is not used here); every outcome's status
 * is a well-formed X.Y.Z whose class agrees with the action.
 *
 * The certificate below (trusted as the CA) is the throwaway self-signed
 * test certificate of fuzz_tls_server.c; it protects nothing.
 */
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "smtp.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char FUZZ_CERT[] = "-----BEGIN CERTIFICATE-----\n"
                                "MIIBnTCCAUSgAwIBAgIUYzPcjFpJXLa63VNrnWv8Gb3sNjowCgYIKoZIzj0EAwIw\n"
                                "FzEVMBMGA1UEAwwMZnV6ei5pbnZhbGlkMCAXDTI2MTEzMDE2NTQ1NVoYDzIxMjYx\n"
                                "MTA2MTY1NDU1WjAXMRUwEwYDVQQDDAxmdXp6LmludmFsaWQwWTATBgcqhkjOPQIB\n"
                                "BggqhkjOPQMBBwNCAAT5P2d/V0RZTxIvsZKNPMKE2RvuJdi1UslGrDbxAEwx/cb0\n"
                                "ShsTjEFkbaXJ6OHkTVvTjwZ8yCfYiMHujwn+joM5o2wwajAdBgNVHQ4EFgQUprGT\n"
                                "5cAFzqyxIXdObkpTxyBoQfcwHwYDVR0jBBgwFoAUprGT5cAFzqyxIXdObkpTxyBo\n"
                                "QfcwDwYDVR0TAQH/BAUwAwEB/zAXBgNVHREEEDAOggxmdXp6LmludmFsaWQwCgYI\n"
                                "KoZIzj0EAwIDRwAwRAIgRZ0r1yMGLqfGpX42AnW0ElJtxaQfQTJjkmTmQ8+sAtkC\n"
                                "ICrMPsmHusZJey0Rv7yA8t0Z7XhWnU/2Le/BWJ6SfUGs\n"
                                "-----END CERTIFICATE-----\n";

static uv_loop_t loop;
static uv_tcp_t listener;
static struct sockaddr_in addr;
static struct tls_ctx *ctx;

/* One run: the server's connection and the client's state. */
static struct run {
    const uint8_t *data;
    size_t size, off, piece;
    uv_tcp_t conn;
    bool accepted, conn_closed, shut;
    uv_write_t wr;
    uv_shutdown_t sd;
    struct smtp_msg msg;
    struct smtp_rcpt rcpt[3];
    bool sent_msg, done, closed;
    char rbuf[4096];
} R;

static void conn_closed_cb(uv_handle_t *h)
{
    (void)h;
    R.conn_closed = true;
}

static void server_close(void)
{
    if (R.accepted && !uv_is_closing((uv_handle_t *)&R.conn))
        uv_close((uv_handle_t *)&R.conn, conn_closed_cb);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void write_next(void);

static void write_cb(uv_write_t *req, int status)
{
    (void)req;
    if (status != 0) {
        server_close();
        return;
    }
    write_next();
}

static void write_next(void)
{
    if (R.off >= R.size) {
        if (!R.shut) {
            R.shut = true;
            if (uv_shutdown(&R.sd, (uv_stream_t *)&R.conn, shutdown_cb) != 0)
                server_close();
        }
        return;
    }
    size_t n = R.size - R.off < R.piece ? R.size - R.off : R.piece;
    uv_buf_t b = uv_buf_init((char *)R.data + R.off, (unsigned)n);
    R.off += n;
    if (uv_write(&R.wr, (uv_stream_t *)&R.conn, &b, 1, write_cb) != 0)
        server_close();
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    *b = uv_buf_init(R.rbuf, sizeof(R.rbuf));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)s;
    (void)b;
    if (n < 0)
        server_close();
}

static void accept_cb(uv_stream_t *server, int status)
{
    if (status != 0 || R.accepted)
        return;
    uv_tcp_init(&loop, &R.conn);
    if (uv_accept(server, (uv_stream_t *)&R.conn) != 0) {
        uv_close((uv_handle_t *)&R.conn, NULL);
        return;
    }
    R.accepted = true;
    uv_read_start((uv_stream_t *)&R.conn, alloc_cb, read_cb);
    write_next();
}

/* Does the server's stream hold a 354 line and, after it, a 2xx line? */
static bool has_354_then_2xx(void)
{
    bool go = false;
    for (size_t i = 0; i + 3 <= R.size; i++) {
        if (i != 0 && R.data[i - 1] != '\n')
            continue;
        if (memcmp(R.data + i, "354", 3) == 0)
            go = true;
        else if (go && R.data[i] == '2' && R.data[i + 1] >= '0' && R.data[i + 1] <= '9' &&
                 R.data[i + 2] >= '0' && R.data[i + 2] <= '9')
            return true;
    }
    return false;
}

static void check_outcome(const struct smtp_outcome *o)
{
    size_t n = strnlen(o->status, sizeof(o->status));
    if (getenv("CONVOY_FUZZ_DEBUG"))
        fprintf(stderr, "outcome %d code %d status [%s] text [%s] reply [%s]\n", (int)o->action,
                o->code, o->status, o->text, o->reply);
    if (n == sizeof(o->status) || strnlen(o->text, sizeof(o->text)) == sizeof(o->text) ||
        strnlen(o->reply, sizeof(o->reply)) == sizeof(o->reply))
        abort();
    if (n && !smtp_status_parse(o->status, n, NULL))
        abort();
}

static void client_cb(struct smtp_client *c, enum smtp_event ev, void *arg)
{
    (void)arg;
    switch (ev) {
    case SMTP_EV_READY:
        if (R.sent_msg || R.closed)
            abort();
        R.sent_msg = true;
        if (smtp_client_send(c, &R.msg) != 0)
            abort();
        break;
    case SMTP_EV_DONE:
        if (!R.sent_msg || R.done || R.closed)
            abort();
        R.done = true;
        for (size_t i = 0; i < R.msg.nrcpt; i++) {
            const struct smtp_outcome *o = &R.rcpt[i].out;
            if (o->action == SMTP_ACT_NONE)
                abort();
            if (o->action == SMTP_ACT_SENT && !has_354_then_2xx())
                abort();
            /* The status class agrees with the action (RFC 3463 3.1). */
            static const char cls[] = {'?', '2', '4', '5'};
            if (o->status[0] != cls[o->action])
                abort();
            check_outcome(o);
        }
        smtp_client_quit(c);
        break;
    case SMTP_EV_CLOSED:
        if (R.closed || (R.sent_msg && !R.done))
            abort();
        R.closed = true;
        check_outcome(smtp_client_result(c));
        smtp_client_free(c);
        break;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (getenv("CONVOY_FUZZ_DEBUG") != NULL)
        log_setup("fuzz_smtp_client", "mail", LOG_TO_STDERR, true);
    /* As convoyd does: a peer that went away is an error return, not a
     * signal. */
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    uv_tcp_init(&loop, &listener);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    int alen = sizeof(addr);
    if (uv_tcp_bind(&listener, (const struct sockaddr *)&addr, 0) != 0 ||
        uv_tcp_getsockname(&listener, (struct sockaddr *)&addr, &alen) != 0 ||
        uv_listen((uv_stream_t *)&listener, 16, accept_cb) != 0) {
        fprintf(stderr, "fuzz_smtp_client: cannot listen on 127.0.0.1\n");
        abort();
    }
    char ca[] = "/tmp/fuzz_smtp_ca.XXXXXX";
    char why[256] = "";
    int fd = mkstemp(ca);
    if (fd >= 0) {
        size_t n = strlen(FUZZ_CERT);
        if (write(fd, FUZZ_CERT, n) == (ssize_t)n)
            ctx = tls_ctx_client_new(ca, why, sizeof why);
        close(fd);
        unlink(ca);
    }
    if (ctx == NULL) {
        fprintf(stderr, "fuzz_smtp_client: %s\n", why);
        abort();
    }
    return 0;
}

static char long_body[3 * 1500];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned cfg = data[0];
    memset(&R, 0, sizeof(R));
    R.data = data + 1;
    R.size = size - 1;
    R.piece = (cfg & 1) ? (R.size ? R.size : 1) : 1 + ((cfg >> 1) & 15);

    static const char short_body[] = "Subject: fuzz\r\n\r\nline\r\n.dot\r\n";
    if (!long_body[0]) {
        memset(long_body, 'x', sizeof(long_body));
        long_body[1499] = '\n';
        long_body[2999] = '\n';
    }
    R.rcpt[0].addr = "a@example.test";
    R.rcpt[1].addr = "b@example.test";
    R.rcpt[1].notify = "FAILURE,DELAY";
    R.rcpt[1].orcpt = "rfc822;b+2B@example.test";
    R.rcpt[2].addr = "c@example.test";
    R.msg.sender = "s@example.test";
    R.msg.body = (cfg & 64) ? (struct view){long_body, sizeof(long_body)}
                            : (struct view){short_body, sizeof(short_body) - 1};
    R.msg.eightbit = true;
    R.msg.envid = "fuzz";
    R.msg.ret = "HDRS";
    R.msg.rcpt = R.rcpt;
    R.msg.nrcpt = (cfg & 128) ? 3 : 2;

    struct smtp_client_opts o;
    memset(&o, 0, sizeof(o));
    o.helo_name = "relay.example.test";
    o.host = "fuzz.invalid";
    o.addr = (const struct sockaddr *)&addr;
    o.tls = (cfg & 32) ? SMTP_TLS_MAY : SMTP_TLS_NONE;
    o.tls_ctx = (cfg & 32) ? ctx : NULL;
    /* Every stage is bounded; the server always half-closes, so these only
     * matter if the client waits for something that never comes. */
    o.timeouts =
        (struct smtp_timeouts){2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000};
    o.cb = client_cb;
    int err = 0;
    struct smtp_client *c = smtp_client_new(&loop, &o, &err);
    if (!c)
        abort();
    while (!R.closed || (R.accepted && !R.conn_closed)) {
        if (R.closed)
            server_close();
        uv_run(&loop, UV_RUN_ONCE);
    }
    /* Let pending close callbacks run. */
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_NOWAIT);
    return 0;
}
