/*
 * test_smtp_client.c - the SMTP client side: reply parser, DATA writer and
 * the client session driven through a uv loop against a scripted peer on a
 * loopback socket (127.0.0.1, port chosen by the kernel).
 *
 * The peer is a few dozen lines of SMTP server whose answers each case sets
 * as data: greeting, EHLO answer, replies by recipient, holding replies until
 * DATA (to prove pipelining), stalling (to prove timeouts).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "smtp.h"

/* ---- reply parser ------------------------------------------------------ */

static int feed_all(struct smtp_reply *r, const char *const *lines)
{
    int rc = 1;
    for (size_t i = 0; lines[i]; i++) {
        rc = smtp_reply_feed(r, lines[i], strlen(lines[i]));
        if (rc <= 0)
            return lines[i + 1] && rc == 0 ? 99 : rc;
    }
    return rc;
}

static void test_reply_parser(void **state)
{
    (void)state;
    static const struct {
        const char *lines[5];
        int rc;
        int code;
        const char *status;
        const char *oneline;
    } cases[] = {
        {{"250 2.0.0 Ok: queued as ABC", NULL}, 0, 250, "2.0.0", "250 2.0.0 Ok: queued as ABC"},
        {{"250-mx.example", "250-PIPELINING", "250 SIZE 1000", NULL},
         0,
         250,
         "",
         "250 mx.example PIPELINING SIZE 1000"},
        {{"550-5.1.1 no such", "550 5.1.1 user", NULL},
         0,
         550,
         "5.1.1",
         "550 5.1.1 no such 5.1.1 user"},
        {{"354", NULL}, 0, 354, "", "354"},
        {{"451 4.3.0", NULL}, 0, 451, "4.3.0", "451 4.3.0"},
        /* class mismatch: not an enhanced code for this reply */
        {{"550 4.1.1 odd", NULL}, 0, 550, "", "550 4.1.1 odd"},
        {{"250 2.0.0x", NULL}, 0, 250, "", "250 2.0.0x"},
        {{"250 2.1000.0 x", NULL}, 0, 250, "", "250 2.1000.0 x"},
        {{"250-a", NULL}, 1, 250, "", NULL},
        {{"250-a", "251 b", NULL}, ERR_PROTO, 0, NULL, NULL},
        {{"25", NULL}, ERR_PROTO, 0, NULL, NULL},
        {{"2500 x", NULL}, ERR_PROTO, 0, NULL, NULL},
        {{"abc x", NULL}, ERR_PROTO, 0, NULL, NULL},
        {{"150 x", NULL}, ERR_PROTO, 0, NULL, NULL},
        {{"650 x", NULL}, ERR_PROTO, 0, NULL, NULL},
        {{"260 x", NULL}, ERR_PROTO, 0, NULL, NULL},
        {{"250_x", NULL}, ERR_PROTO, 0, NULL, NULL},
        {{"220 a\x01\x7f", NULL}, 0, 220, "", "220 a??"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct smtp_reply r;
        smtp_reply_init(&r);
        int rc = feed_all(&r, cases[i].lines);
        assert_int_equal(rc, cases[i].rc);
        if (rc == 0) {
            assert_int_equal(r.code, cases[i].code);
            assert_string_equal(r.status, cases[i].status);
            struct buf o;
            buf_init(&o, 4096);
            assert_int_equal(smtp_reply_oneline(&r, &o), 0);
            assert_string_equal(o.data, cases[i].oneline);
            buf_free(&o);
        }
        smtp_reply_free(&r);
    }
}

static void test_reply_bounds(void **state)
{
    (void)state;
    struct smtp_reply r;
    smtp_reply_init(&r);
    char line[SMTP_REPLY_LINE_MAX + 2];
    memset(line, 'a', sizeof(line));
    memcpy(line, "250 ", 4);
    assert_int_equal(smtp_reply_feed(&r, line, sizeof(line)), ERR_TOOBIG);
    smtp_reply_reset(&r);
    for (int i = 0; i < SMTP_REPLY_LINES_MAX; i++)
        assert_int_equal(smtp_reply_feed(&r, "250-x", 5), 1);
    assert_int_equal(smtp_reply_feed(&r, "250 x", 5), ERR_TOOBIG);
    smtp_reply_reset(&r);
    assert_int_equal(smtp_reply_feed(&r, "250 x", 5), 0);
    /* Feeding after the end is a caller error. */
    assert_int_equal(smtp_reply_feed(&r, "250 x", 5), ERR_INVAL);
    smtp_reply_free(&r);
}

/* ---- DATA writer --------------------------------------------------------- */

static char *stuff_all(const char *in, size_t n, size_t chunk)
{
    struct smtp_stuff s;
    struct buf out;
    smtp_stuff_init(&s);
    buf_init(&out, 16 * n + 64);
    for (size_t off = 0; off < n; off += chunk) {
        size_t k = n - off < chunk ? n - off : chunk;
        assert_int_equal(smtp_stuff_feed(&s, in + off, k, &out), 0);
    }
    assert_int_equal(smtp_stuff_finish(&s, &out), 0);
    char *r = strdup(out.data ? out.data : "");
    buf_free(&out);
    return r;
}

/* The wire rules: every CR is followed by LF, every LF preceded by CR, no
 * NUL, no line over 998 octets, ends with CRLF.CRLF and has no other. */
static void assert_wire_clean(const char *w, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(w[i] != '\0');
        if (w[i] == '\r') {
            assert_true(i + 1 < n && w[i + 1] == '\n');
        } else if (w[i] == '\n') {
            assert_true(i > 0 && w[i - 1] == '\r');
            col = 0;
            continue;
        } else {
            col++;
            assert_true(col <= SMTP_LINE_MAX);
        }
    }
    assert_true(n >= 3 && memcmp(w + n - 3, ".\r\n", 3) == 0);
    const char *end = strstr(w, "\r\n.\r\n");
    if (n > 3)
        assert_ptr_equal(end, w + n - 5);
    else
        assert_null(end);
}

static void test_stuff_table(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"", ".\r\n"},
        {"a", "a\r\n.\r\n"},
        {"a\r\n", "a\r\n.\r\n"},
        {"a\n", "a\r\n.\r\n"},
        {".\r\n", "..\r\n.\r\n"},
        {"a\r\n.\r\nb", "a\r\n..\r\nb\r\n.\r\n"},
        {"..x\n", "...x\r\n.\r\n"},
        {"a\rb", "a\r\nb\r\n.\r\n"},
        {"a\r", "a\r\n.\r\n"},
        {"a\r\r\nb", "a\r\n\r\nb\r\n.\r\n"},
        {"a\n.\nb", "a\r\n..\r\nb\r\n.\r\n"},
        {"a\r.b", "a\r\n..b\r\n.\r\n"},
        {"n\0ul", "nul\r\n.\r\n"},
        {" .x", " .x\r\n.\r\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = strlen(cases[i].in);
        if (strcmp(cases[i].out, "nul\r\n.\r\n") == 0)
            n = 4;
        for (size_t chunk = 1; chunk <= 4; chunk++) {
            char *o = stuff_all(cases[i].in, n ? n : 0, chunk);
            assert_string_equal(o, cases[i].out);
            assert_wire_clean(o, strlen(o));
            free(o);
        }
    }
}

static void test_stuff_fold(void **state)
{
    (void)state;
    /* 2500 octets on one line, starting with a dot. */
    size_t n = 2500;
    char *in = malloc(n + 1);
    memset(in, 'x', n);
    in[0] = '.';
    in[n] = '\0';
    char *o1 = stuff_all(in, n, n);
    char *o2 = stuff_all(in, n, 7);
    assert_string_equal(o1, o2);
    assert_wire_clean(o1, strlen(o1));
    /* First line: ".." + 996 x = 998; then CRLF SP + 997 x; then the rest. */
    assert_int_equal(strlen(o1), 998 + 2 + 998 + 2 + 1 + (2500 - 1 - 996 - 997) + 2 + 3);
    assert_memory_equal(o1 + 998, "\r\n x", 4);
    free(o1);
    free(o2);
    /* Exactly 998 octets: no fold. */
    memset(in, 'y', 998);
    char *o3 = stuff_all(in, 998, 100);
    assert_int_equal(strlen(o3), 998 + 2 + 3);
    free(o3);
    free(in);
}

static void test_stuff_random(void **state)
{
    (void)state;
    static const char alphabet[] = {'a', '.', '\r', '\n', '\0', ' ', 'x'};
    srand(7);
    for (int round = 0; round < 300; round++) {
        size_t n = (size_t)(rand() % 3000);
        char *in = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            in[i] = (rand() % 50 == 0) ? '\n' : alphabet[rand() % sizeof(alphabet)];
        char *a = stuff_all(in, n, n ? n : 1);
        char *b = stuff_all(in, n, (size_t)(rand() % 17) + 1);
        assert_string_equal(a, b);
        assert_wire_clean(a, strlen(a));
        free(a);
        free(b);
        free(in);
    }
}

/* ---- the scripted peer ----------------------------------------------------- */

struct peer {
    uv_loop_t *loop;
    uv_tcp_t srv;
    uv_tcp_t conn;
    bool conn_open;
    int connections;
    struct buf in;
    bool in_data;
    struct buf data; /* bytes of the last DATA, dot-unstuffed, CRLF kept */
    struct buf log;  /* every command line received, '\n'-joined */
    struct buf held; /* replies held back until DATA */
    /* The script. */
    const char *greeting; /* NULL: stall (send nothing) */
    const char *ehlo;     /* full EHLO answer with CRLFs; NULL: 502 */
    const char *mail_reply;
    const char *data_reply;
    const char *dot_reply;
    bool hold_until_data;      /* fails the test if the client waits for MAIL/RCPT */
    bool stall_at_dot;         /* never answer the final dot */
    int messages;              /* dots received */
    bool saw_pipelined_group;  /* MAIL, RCPT and DATA arrived before any reply */
    bool group_in_one_read;    /* one read held MAIL through DATA (one write) */
    bool body_end_in_one_read; /* one read held body octets and the final dot */
    struct tls_ctx *sctx;      /* set: STARTTLS is offered and served */
    bool starttls_garbage;     /* answer STARTTLS with 220, then junk, then close */
    struct tls_conn *tls;
    bool tls_done;
    const char *auth_reply; /* the final reply to AUTH; NULL: 235 */
    int auth_login_lines;   /* LOGIN: response lines still expected */
};

static void peer_line(struct peer *p, char *line, size_t n);
static void peer_close_conn(struct peer *p);

static void peer_wrote(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void peer_raw(struct peer *p, const void *data, size_t n)
{
    if (!p->conn_open || n == 0)
        return;
    uv_write_t *w = malloc(sizeof(*w) + n);
    memcpy(w + 1, data, n);
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
    assert_int_equal(uv_write(w, (uv_stream_t *)&p->conn, &b, 1, peer_wrote), 0);
}

static void peer_cipher_out(void *arg, const void *data, size_t n)
{
    peer_raw(arg, data, n);
}

static void peer_lines(struct peer *p)
{
    char *nl;
    while (p->conn_open && p->in.len && (nl = memchr(p->in.data, '\n', p->in.len))) {
        size_t n = (size_t)(nl - p->in.data);
        size_t used = n + 1;
        if (n > 0 && p->in.data[n - 1] == '\r')
            n--;
        char line[4096];
        size_t k = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
        memcpy(line, p->in.data, k);
        line[k] = '\0';
        buf_consume(&p->in, used);
        peer_line(p, line, k);
    }
}

static void peer_plain_in(void *arg, const void *data, size_t n)
{
    struct peer *p = arg;
    buf_append(&p->in, data, n);
    peer_lines(p);
}

static void peer_handshake(void *arg, int status, const struct tls_facts *f)
{
    struct peer *p = arg;
    (void)f;
    if (status == 0)
        p->tls_done = true;
}

static void peer_send(struct peer *p, const char *s)
{
    if (!p->conn_open)
        return;
    if (p->tls) {
        tls_conn_write(p->tls, s, strlen(s));
        return;
    }
    peer_raw(p, s, strlen(s));
}

static void peer_reply(struct peer *p, const char *s)
{
    if (p->hold_until_data) {
        buf_append_str(&p->held, s);
        return;
    }
    peer_send(p, s);
}

static void peer_line(struct peer *p, char *line, size_t n)
{
    if (p->in_data) {
        if (n == 1 && line[0] == '.') {
            p->in_data = false;
            p->messages++;
            if (!p->stall_at_dot)
                peer_send(p, p->dot_reply ? p->dot_reply : "250 2.0.0 Ok: queued as Q1\r\n");
            return;
        }
        /* RFC 5321 4.5.2: remove one leading dot. */
        if (n > 0 && line[0] == '.')
            buf_append(&p->data, line + 1, n - 1);
        else
            buf_append(&p->data, line, n);
        buf_append(&p->data, "\r\n", 2);
        return;
    }
    buf_append(&p->log, line, n);
    buf_append(&p->log, "\n", 1);
    if (p->auth_login_lines > 0) {
        /* RFC 4954 4: a response line of the LOGIN exchange. */
        if (--p->auth_login_lines > 0)
            peer_send(p, "334 UGFzc3dvcmQ6\r\n");
        else
            peer_send(p, p->auth_reply ? p->auth_reply : "235 2.7.0 Ok\r\n");
        return;
    }
    if (strncasecmp(line, "AUTH LOGIN", 10) == 0) {
        p->auth_login_lines = 2;
        peer_send(p, "334 VXNlcm5hbWU6\r\n");
    } else if (strncasecmp(line, "AUTH PLAIN ", 11) == 0) {
        peer_send(p, p->auth_reply ? p->auth_reply : "235 2.7.0 Ok\r\n");
    } else if (strncasecmp(line, "STARTTLS", 8) == 0 && p->starttls_garbage) {
        peer_send(p, "220 2.0.0 go ahead\r\n");
        peer_send(p, "HTTP/1.0 400 Bad Request\r\n\r\n");
        peer_close_conn(p);
    } else if (strncasecmp(line, "STARTTLS", 8) == 0 && p->sctx && !p->tls) {
        static const struct tls_callbacks cbs = {
            .on_cipher_out = peer_cipher_out,
            .on_plain_in = peer_plain_in,
            .on_handshake = peer_handshake,
        };
        peer_send(p, "220 2.0.0 go ahead\r\n");
        p->tls = tls_conn_server_new(p->sctx, &cbs, p);
        assert_non_null(p->tls);
        assert_int_equal(tls_conn_start(p->tls), 0);
    } else if (strncasecmp(line, "EHLO", 4) == 0) {
        peer_send(p, p->ehlo ? p->ehlo : "502 5.5.2 no\r\n");
    } else if (strncasecmp(line, "HELO", 4) == 0) {
        peer_send(p, "250 peer\r\n");
    } else if (strncasecmp(line, "MAIL", 4) == 0) {
        peer_reply(p, p->mail_reply ? p->mail_reply : "250 2.1.0 Ok\r\n");
    } else if (strncasecmp(line, "RCPT", 4) == 0) {
        if (strstr(line, "bad"))
            peer_reply(p, "550 5.1.1 <bad>: no such user\r\n");
        else if (strstr(line, "temp"))
            peer_reply(p, "451 4.3.0 try later\r\n");
        else
            peer_reply(p, "250 2.1.5 Ok\r\n");
    } else if (strncasecmp(line, "DATA", 4) == 0) {
        const char *r = p->data_reply ? p->data_reply : "354 go\r\n";
        if (p->hold_until_data) {
            p->saw_pipelined_group = true;
            p->hold_until_data = false;
            peer_send(p, p->held.data ? p->held.data : "");
            buf_reset(&p->held);
        }
        if (r[0] == '3') {
            p->in_data = true;
            buf_reset(&p->data);
        }
        peer_send(p, r);
    } else if (strncasecmp(line, "RSET", 4) == 0) {
        peer_send(p, "250 2.0.0 Ok\r\n");
    } else if (strncasecmp(line, "QUIT", 4) == 0) {
        peer_send(p, "221 2.0.0 Bye\r\n");
        peer_close_conn(p);
    } else {
        peer_send(p, "500 5.5.1 what\r\n");
    }
}

static void peer_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(sz);
    b->len = sz;
}

static void peer_conn_closed(uv_handle_t *h)
{
    (void)h;
}

static void peer_close_conn(struct peer *p)
{
    if (p->conn_open) {
        p->conn_open = false;
        uv_close((uv_handle_t *)&p->conn, peer_conn_closed);
    }
}

static void peer_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct peer *p = s->data;
    if (nread < 0) {
        peer_close_conn(p);
    } else if (nread > 0) {
        if (p->tls) {
            tls_conn_feed(p->tls, b->base, (size_t)nread);
        } else {
            /* On loopback one write of this size arrives in one read. */
            size_t n = (size_t)nread;
            if (memmem(b->base, n, "MAIL FROM:", 10) && memmem(b->base, n, "DATA\r\n", 6))
                p->group_in_one_read = true;
            if (p->in_data && n > 5 && memcmp(b->base + n - 5, "\r\n.\r\n", 5) == 0)
                p->body_end_in_one_read = true;
            buf_append(&p->in, b->base, n);
            peer_lines(p);
        }
    }
    free(b->base);
}

static void peer_accept(uv_stream_t *srv, int status)
{
    struct peer *p = srv->data;
    assert_int_equal(status, 0);
    assert_false(p->conn_open); /* one connection at a time in these cases */
    uv_tcp_init(p->loop, &p->conn);
    p->conn.data = p;
    assert_int_equal(uv_accept(srv, (uv_stream_t *)&p->conn), 0);
    p->conn_open = true;
    p->connections++;
    buf_reset(&p->in);
    if (p->greeting)
        peer_send(p, p->greeting);
    uv_read_start((uv_stream_t *)&p->conn, peer_alloc, peer_read);
}

static int peer_start(struct peer *p, uv_loop_t *loop)
{
    p->loop = loop;
    buf_init(&p->in, 1 << 20);
    buf_init(&p->data, 16 << 20);
    buf_init(&p->log, 1 << 20);
    buf_init(&p->held, 1 << 20);
    uv_tcp_init(loop, &p->srv);
    p->srv.data = p;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&p->srv, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&p->srv, 8, peer_accept), 0);
    struct sockaddr_in got;
    int len = sizeof(got);
    uv_tcp_getsockname(&p->srv, (struct sockaddr *)&got, &len);
    return ntohs(got.sin_port);
}

static void peer_stop(struct peer *p)
{
    peer_close_conn(p);
    uv_close((uv_handle_t *)&p->srv, NULL);
}

static void peer_free(struct peer *p)
{
    tls_conn_free(p->tls);
    tls_ctx_free(p->sctx);
    buf_free(&p->in);
    buf_free(&p->data);
    buf_free(&p->log);
    buf_free(&p->held);
}

/* ---- the driver ------------------------------------------------------------- */

struct run {
    struct peer *peer;
    struct smtp_msg *msgs;
    size_t nmsgs, next;
    int ready, done, closed;
    struct smtp_outcome result;
    bool established;
    bool no_quit; /* leave the session idle (the peer closes) */
    struct tls_facts facts;
};

static void on_event(struct smtp_client *c, enum smtp_event ev, void *arg)
{
    struct run *r = arg;
    switch (ev) {
    case SMTP_EV_READY:
    case SMTP_EV_DONE:
        if (ev == SMTP_EV_READY)
            r->ready++;
        else
            r->done++;
        if (!smtp_client_usable(c))
            break;
        if (r->next < r->nmsgs) {
            assert_int_equal(smtp_client_send(c, &r->msgs[r->next++]), 0);
            /* Not idle any more. */
            assert_int_equal(smtp_client_send(c, &r->msgs[0]), ERR_INVAL);
        } else if (!r->no_quit) {
            smtp_client_quit(c);
        }
        break;
    case SMTP_EV_CLOSED:
        r->closed++;
        if (smtp_client_tls(c))
            r->facts = *smtp_client_tls(c);
        r->result = *smtp_client_result(c);
        r->established = smtp_client_established(c);
        smtp_client_free(c);
        peer_stop(r->peer);
        break;
    }
}

static struct tls_ctx *run_cctx;
static const char *run_verify_host;
static smtp_tls_check_cb run_check;
static const char *run_auth_user, *run_auth_pass;
static bool run_auth_tls;

static void run_session(struct run *r, int port, enum smtp_tls_mode tls, uint32_t timeout_ms)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    int real_port = peer_start(r->peer, &loop);
    if (port == 0)
        port = real_port;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    struct smtp_client_opts o = {
        .helo_name = "client.test",
        .host = "peer.test",
        .addr = (struct sockaddr *)&a,
        .tls = tls,
        .tls_ctx = run_cctx,
        .verify_host = run_verify_host,
        .tls_check = run_check,
        .auth_user = run_auth_user,
        .auth_password = run_auth_pass,
        .auth_tls_required = run_auth_tls,
        .cb = on_event,
        .arg = r,
    };
    if (timeout_ms) {
        o.timeouts.greeting = o.timeouts.helo = o.timeouts.mail = o.timeouts.rcpt =
            o.timeouts.data_init = o.timeouts.data_block = o.timeouts.data_done = timeout_ms;
    }
    int err = 0;
    struct smtp_client *c = smtp_client_new(&loop, &o, &err);
    assert_non_null(c);
    assert_int_equal(err, 0);
    /* No event before new() returns. */
    assert_int_equal(r->ready + r->done + r->closed, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(r->closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

#define EHLO_FULL                                                                                  \
    "250-peer.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"       \
    "250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_PLAIN "250-peer.test\r\n250 8BITMIME\r\n"

static const char body1[] = "Subject: test\r\n"
                            "\r\n"
                            ".leading dot\r\n"
                            "..two dots\r\n"
                            "bare LF line\n"
                            "last line without end";
static const char body1_wire[] = "Subject: test\r\n"
                                 "\r\n"
                                 ".leading dot\r\n"
                                 "..two dots\r\n"
                                 "bare LF line\r\n"
                                 "last line without end\r\n";

static void test_pipelined_delivery(void **state)
{
    (void)state;
    struct peer p = {
        .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_FULL, .hold_until_data = true};
    struct smtp_rcpt rc[3] = {
        {.addr = "good@peer.test"}, {.addr = "bad@peer.test"}, {.addr = "temp@peer.test"}};
    struct smtp_msg m = {
        .sender = "s@client.test", .body = {body1, sizeof(body1) - 1}, .nrcpt = 3, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_true(p.saw_pipelined_group);
    /* RFC 2920: the group goes out as one write, the body with its dot as
     * another. */
    assert_true(p.group_in_one_read);
    assert_true(p.body_end_in_one_read);
    assert_int_equal(r.ready, 1);
    assert_int_equal(r.done, 1);
    assert_true(m.attempted);
    assert_int_equal(rc[0].out.action, SMTP_ACT_SENT);
    assert_int_equal(rc[0].out.code, 250);
    assert_string_equal(rc[0].out.status, "2.0.0");
    assert_string_equal(rc[0].out.text, "250 2.0.0 Ok: queued as Q1");
    assert_int_equal(rc[1].out.action, SMTP_ACT_BOUNCE);
    assert_string_equal(rc[1].out.status, "5.1.1");
    assert_string_equal(rc[1].out.text, "host peer.test[127.0.0.1] said: 550 5.1.1 <bad>: no such "
                                        "user (in reply to RCPT TO command)");
    assert_string_equal(rc[1].out.reply, "550 5.1.1 <bad>: no such user");
    assert_string_equal(rc[0].out.reply, "250 2.0.0 Ok: queued as Q1");
    assert_int_equal(rc[2].out.action, SMTP_ACT_DEFER);
    assert_string_equal(rc[2].out.status, "4.3.0");
    assert_string_equal(p.data.data, body1_wire);
    assert_non_null(strstr(p.log.data, "MAIL FROM:<s@client.test> SIZE="));
    assert_int_equal(r.result.action, SMTP_ACT_SENT); /* clean QUIT */
    assert_true(r.established);
    peer_free(&p);
}

static void test_plain_helo_fallback_and_reuse(void **state)
{
    (void)state;
    /* No EHLO: HELO, no pipelining, no extensions; two messages on one
     * connection. The first ended with 250 to its dot: no RSET between
     * (RFC 5321 4.1.1.4). */
    struct peer p = {.greeting = "220 peer.test\r\n", .ehlo = NULL};
    struct smtp_rcpt r1[2] = {{.addr = "a@peer.test"}, {.addr = "bad@peer.test"}};
    struct smtp_rcpt r2[1] = {{.addr = "b@peer.test"}};
    struct smtp_msg m[2] = {
        {.sender = "", .body = {"x\r\n", 3}, .nrcpt = 2, .rcpt = r1},
        {.sender = "s@client.test", .body = {"y\r\n", 3}, .nrcpt = 1, .rcpt = r2},
    };
    struct run r = {.peer = &p, .msgs = m, .nmsgs = 2};
    run_session(&r, 0, SMTP_TLS_MAY, 5000);
    assert_int_equal(p.connections, 1);
    assert_int_equal(p.messages, 2);
    assert_int_equal(r1[0].out.action, SMTP_ACT_SENT);
    assert_int_equal(r1[1].out.action, SMTP_ACT_BOUNCE);
    assert_int_equal(r2[0].out.action, SMTP_ACT_SENT);
    assert_string_equal(r1[1].out.status, "5.1.1");
    assert_non_null(strstr(p.log.data,
                           "HELO client.test\nMAIL FROM:<>\nRCPT TO:<a@peer.test>\n"
                           "RCPT TO:<bad@peer.test>\nDATA\nMAIL FROM:<s@client.test>\n"));
    assert_null(strstr(p.log.data, "RSET"));
    /* Without PIPELINING every command waits for its reply. */
    assert_false(p.group_in_one_read);
    /* No SIZE announced: no SIZE parameter. */
    assert_null(strstr(p.log.data, "SIZE="));
    assert_string_equal(p.data.data, "y\r\n");
    peer_free(&p);
}

/* Count the lines of the peer's command log equal to line. */
static int log_count(const struct peer *p, const char *line)
{
    int n = 0;
    size_t len = strlen(line);
    for (const char *s = p->log.data; s && (s = strstr(s, line)) != NULL; s += len)
        if ((s == p->log.data || s[-1] == '\n') && s[len] == '\n')
            n++;
    return n;
}

static void test_rset_only_after_aborted(void **state)
{
    (void)state;
    /* Pipelined, three messages on one connection: the first has every
     * RCPT refused (the 354 gets an empty end): the transaction was
     * aborted, RSET before the second. The second ends with 250: no RSET
     * before the third. */
    struct peer p = {.greeting = "220 peer.test\r\n", .ehlo = EHLO_FULL};
    static const char *const to[3] = {"bad@peer.test", "b@peer.test", "c@peer.test"};
    static const char *const from[3] = {"s1@client.test", "s2@client.test", "s3@client.test"};
    static const char *const body[3] = {"x\r\n", "y\r\n", "z\r\n"};
    struct smtp_rcpt rc[3];
    struct smtp_msg m[3];
    memset(rc, 0, sizeof(rc));
    memset(m, 0, sizeof(m));
    for (int i = 0; i < 3; i++) {
        rc[i].addr = to[i];
        m[i] =
            (struct smtp_msg){.sender = from[i], .body = {body[i], 3}, .nrcpt = 1, .rcpt = &rc[i]};
    }
    struct run r = {.peer = &p, .msgs = m, .nmsgs = 3};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_int_equal(log_count(&p, "RSET"), 1);
    assert_int_equal(p.connections * 10 + r.done, 13);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rc[i].out.action, i == 0 ? SMTP_ACT_BOUNCE : SMTP_ACT_SENT);
    assert_non_null(strstr(p.log.data, "RSET\nMAIL FROM:<s2@client.test> SIZE=3\n"));
    assert_non_null(strstr(p.log.data, "DATA\nMAIL FROM:<s3@client.test> SIZE=3\n"));
    assert_string_equal(p.data.data, "z\r\n");
    peer_free(&p);
}

static void test_all_rcpts_rejected_no_data(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 peer.test\r\n", .ehlo = EHLO_PLAIN};
    struct smtp_rcpt rc[2] = {{.addr = "bad1@x"}, {.addr = "temp@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 2, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_int_equal(rc[0].out.action, SMTP_ACT_BOUNCE);
    assert_int_equal(rc[1].out.action, SMTP_ACT_DEFER);
    assert_null(strstr(p.log.data, "DATA"));
    assert_int_equal(p.messages, 0);
    peer_free(&p);
}

static void test_mail_rejected_pipelined(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 peer.test\r\n",
                     .ehlo = EHLO_FULL,
                     .mail_reply = "553 5.7.1 sender rejected\r\n",
                     .data_reply = "503 5.5.1 no valid recipients\r\n"};
    struct smtp_rcpt rc[2] = {{.addr = "a@x"}, {.addr = "b@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 2, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(rc[i].out.action, SMTP_ACT_BOUNCE);
        assert_string_equal(rc[i].out.status, "5.7.1");
        assert_non_null(strstr(rc[i].out.text, "(in reply to MAIL FROM command)"));
    }
    peer_free(&p);
}

static void test_dot_tempfail(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 peer.test\r\n",
                     .ehlo = EHLO_FULL,
                     .dot_reply = "452 4.3.1 insufficient storage\r\n"};
    struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 1, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_int_equal(rc[0].out.action, SMTP_ACT_DEFER);
    assert_string_equal(rc[0].out.status, "4.3.1");
    assert_non_null(strstr(rc[0].out.text, "(in reply to end of DATA command)"));
    peer_free(&p);
}

static void test_unexpected_reply_classes(void **state)
{
    (void)state;
    /* A 3xx where 250 is due, and a 250 where 354 is due: deferred as
     * protocol errors with a valid status (RFC 3463 3.1: classes 2, 4, 5
     * only), never "3.0.0" nor a 2.X.X code on a deferral. */
    struct peer p = {
        .greeting = "220 peer.test\r\n", .ehlo = EHLO_PLAIN, .mail_reply = "354 go on\r\n"};
    struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 1, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_int_equal(rc[0].out.action, SMTP_ACT_DEFER);
    assert_int_equal(rc[0].out.code, 354);
    assert_string_equal(rc[0].out.status, "4.5.0");
    assert_non_null(strstr(rc[0].out.text, "(in reply to MAIL FROM command)"));
    peer_free(&p);

    struct peer p2 = {.greeting = "220 peer.test\r\n",
                      .ehlo = EHLO_PLAIN,
                      .data_reply = "250 2.0.0 ok without data\r\n"};
    struct smtp_rcpt rc2[1] = {{.addr = "a@x"}};
    struct smtp_msg m2 = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 1, .rcpt = rc2};
    struct run r2 = {.peer = &p2, .msgs = &m2, .nmsgs = 1};
    run_session(&r2, 0, SMTP_TLS_NONE, 5000);
    assert_int_equal(rc2[0].out.action, SMTP_ACT_DEFER);
    assert_string_equal(rc2[0].out.status, "4.5.0");
    assert_non_null(strstr(rc2[0].out.text, "(in reply to DATA command)"));
    assert_int_equal(p2.messages, 0);
    peer_free(&p2);
}

static void test_greeting_4xx(void **state)
{
    (void)state;
    struct peer p = {.greeting = "421 4.3.2 busy\r\n", .ehlo = EHLO_FULL};
    struct run r = {.peer = &p};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_int_equal(r.ready, 0);
    assert_false(r.established);
    assert_int_equal(r.result.action, SMTP_ACT_DEFER);
    assert_int_equal(r.result.code, 421);
    assert_string_equal(r.result.status, "4.3.2");
    assert_string_equal(r.result.text,
                        "host peer.test[127.0.0.1] refused to talk to me: 421 4.3.2 busy");
    assert_string_equal(r.result.reply, "421 4.3.2 busy");
    peer_free(&p);
}

static void test_greeting_timeout(void **state)
{
    (void)state;
    struct peer p = {.greeting = NULL};
    struct run r = {.peer = &p};
    run_session(&r, 0, SMTP_TLS_NONE, 200);
    assert_int_equal(r.result.action, SMTP_ACT_DEFER);
    assert_int_equal(r.result.err, ERR_TIMEOUT);
    assert_string_equal(r.result.status, "4.4.2");
    assert_string_equal(r.result.text, "conversation with peer.test[127.0.0.1] timed out while "
                                       "receiving the initial server greeting");
    assert_string_equal(r.result.reply, "");
    peer_free(&p);
}

static void test_dot_timeout(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_FULL, .stall_at_dot = true};
    struct smtp_rcpt rc[2] = {{.addr = "a@x"}, {.addr = "bad@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 2, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_NONE, 200);
    assert_int_equal(r.done, 1);
    assert_int_equal(rc[0].out.action, SMTP_ACT_DEFER);
    assert_int_equal(rc[0].out.err, ERR_TIMEOUT);
    assert_non_null(strstr(rc[0].out.text, "timed out while sending end of data"));
    /* The rejected recipient keeps its own outcome. */
    assert_int_equal(rc[1].out.action, SMTP_ACT_BOUNCE);
    peer_free(&p);
}

static void test_connect_refused(void **state)
{
    (void)state;
    /* Find a free port, then close it. */
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_tcp_t t;
    uv_tcp_init(&loop, &t);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_bind(&t, (struct sockaddr *)&a, 0);
    struct sockaddr_in got;
    int len = sizeof(got);
    uv_tcp_getsockname(&t, (struct sockaddr *)&got, &len);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);

    struct peer p = {.greeting = "220 p\r\n"};
    struct run r = {.peer = &p};
    run_session(&r, ntohs(got.sin_port), SMTP_TLS_NONE, 1000);
    assert_int_equal(p.connections, 0);
    assert_int_equal(r.result.action, SMTP_ACT_DEFER);
    assert_string_equal(r.result.status, "4.4.1");
    assert_non_null(strstr(r.result.text, "connect to peer.test[127.0.0.1]:"));
    assert_non_null(strstr(r.result.text, "refused"));
    peer_free(&p);
}

static void test_smtputf8_and_size(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n", .ehlo = "250-p\r\n250 SIZE 10\r\n"};
    struct smtp_rcpt r1[1] = {{.addr = "a@x"}};
    struct smtp_rcpt r2[1] = {{.addr = "b@x"}};
    struct smtp_rcpt r3[1] = {{.addr = "c@x"}};
    struct smtp_msg m[3] = {
        {.sender = "s@x", .body = {"x", 1}, .smtputf8 = true, .nrcpt = 1, .rcpt = r1},
        {.sender = "s@x", .body = {"0123456789ab", 12}, .nrcpt = 1, .rcpt = r2},
        {.sender = "s@x", .body = {"ok", 2}, .nrcpt = 1, .rcpt = r3},
    };
    struct run r = {.peer = &p, .msgs = m, .nmsgs = 3};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_false(m[0].attempted);
    assert_int_equal(r1[0].out.action, SMTP_ACT_BOUNCE);
    assert_string_equal(r1[0].out.status, "5.6.7");
    assert_false(m[1].attempted);
    assert_int_equal(r2[0].out.action, SMTP_ACT_BOUNCE);
    assert_string_equal(r2[0].out.status, "5.3.4");
    assert_true(m[2].attempted);
    assert_int_equal(r3[0].out.action, SMTP_ACT_SENT);
    /* Nothing was sent for the first two: no RSET needed before the third. */
    assert_null(strstr(p.log.data, "RSET"));
    assert_non_null(strstr(p.log.data, "MAIL FROM:<s@x> SIZE=2\n"));
    peer_free(&p);
}

static void test_verify_without_starttls(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_FULL};
    struct run r = {.peer = &p};
    run_session(&r, 0, SMTP_TLS_VERIFY, 5000);
    assert_int_equal(r.ready, 0);
    assert_int_equal(r.result.action, SMTP_ACT_DEFER);
    assert_string_equal(r.result.status, "4.7.4");
    assert_int_equal(r.result.err, ERR_TLS);
    peer_free(&p);
}

/* encrypt: STARTTLS required like verify (4.7.4 when not offered or
 * refused), never a plaintext session. */
static void test_encrypt_without_starttls(void **state)
{
    (void)state;
    char why[256];
    run_cctx = tls_ctx_client_new(NULL, why, sizeof(why));
    assert_non_null(run_cctx);
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_FULL};
    struct run r = {.peer = &p};
    run_session(&r, 0, SMTP_TLS_ENCRYPT, 5000);
    assert_int_equal(r.ready, 0);
    assert_int_equal(r.result.action, SMTP_ACT_DEFER);
    assert_string_equal(r.result.status, "4.7.4");
    assert_int_equal(r.result.err, ERR_TLS);
    assert_null(strstr(p.log.data, "MAIL"));
    peer_free(&p);
    tls_ctx_free(run_cctx);
    run_cctx = NULL;
}

/* ---- SMTP AUTH (RFC 4954) ---------------------------------------------------- */

#define EHLO_AUTH(mechs) "250-peer.test\r\n250-PIPELINING\r\n250-AUTH " mechs "\r\n250 8BITMIME\r\n"

static void auth_run(struct peer *p, struct run *r, const char *user, const char *pass, bool tls)
{
    run_auth_user = user;
    run_auth_pass = pass;
    run_auth_tls = tls;
    run_session(r, 0, SMTP_TLS_MAY, 5000);
    run_auth_user = run_auth_pass = NULL;
    run_auth_tls = false;
    (void)p;
}

static void test_auth_plain(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_AUTH("LOGIN PLAIN")};
    struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"b\r\n", 3}, .nrcpt = 1, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    auth_run(&p, &r, "user", "pass", false);
    /* RFC 4616 2: NUL user NUL pass, as the initial response. */
    assert_non_null(strstr(p.log.data, "AUTH PLAIN AHVzZXIAcGFzcw==\nMAIL FROM:<s@x>"));
    assert_int_equal(rc[0].out.action, SMTP_ACT_SENT);
    peer_free(&p);
}

static void test_auth_login(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_AUTH("LOGIN")};
    struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"b\r\n", 3}, .nrcpt = 1, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    auth_run(&p, &r, "user", "pass", false);
    assert_non_null(strstr(p.log.data, "AUTH LOGIN\ndXNlcg==\ncGFzcw==\nMAIL"));
    assert_int_equal(rc[0].out.action, SMTP_ACT_SENT);
    peer_free(&p);
}

static void test_auth_refused(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n",
                     .ehlo = EHLO_AUTH("PLAIN"),
                     .auth_reply = "535 5.7.8 bad credentials\r\n"};
    struct run r = {.peer = &p};
    auth_run(&p, &r, "user", "pass", false);
    assert_int_equal(r.ready, 0);
    assert_int_equal(r.result.stage, SMTP_ST_AUTH);
    assert_int_equal(r.result.code, 535);
    assert_string_equal(r.result.status, "5.7.8");
    assert_string_equal(r.result.reply, "535 5.7.8 bad credentials");
    assert_non_null(strstr(r.result.text, "SASL authentication failed; server peer.test"));
    assert_null(strstr(p.log.data, "MAIL"));
    peer_free(&p);
}

/* TLS required for the credentials and not there: nothing is sent. */
static void test_auth_needs_tls(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_AUTH("PLAIN LOGIN")};
    struct run r = {.peer = &p};
    auth_run(&p, &r, "user", "pass", true);
    assert_int_equal(r.ready, 0);
    assert_int_equal(r.result.stage, SMTP_ST_AUTH);
    assert_string_equal(r.result.status, "4.7.0");
    assert_int_equal(r.result.err, ERR_PERM);
    assert_null(strstr(p.log.data, "AUTH"));
    assert_null(strstr(p.log.data, "MAIL"));
    peer_free(&p);
}

/* A server that announces no AUTH gets none (as Postfix). */
static void test_auth_not_offered(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_FULL};
    struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"b\r\n", 3}, .nrcpt = 1, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    auth_run(&p, &r, "user", "pass", false);
    assert_null(strstr(p.log.data, "AUTH"));
    assert_int_equal(rc[0].out.action, SMTP_ACT_SENT);
    peer_free(&p);
}

static void test_bad_addresses(void **state)
{
    (void)state;
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_FULL};
    struct smtp_rcpt rc[2] = {{.addr = "a@x\r\nRSET"}, {.addr = "ok@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 2, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_int_equal(rc[0].out.action, SMTP_ACT_BOUNCE);
    assert_string_equal(rc[0].out.status, "5.1.3");
    assert_int_equal(rc[1].out.action, SMTP_ACT_SENT);
    assert_null(strstr(p.log.data, "RSET"));
    peer_free(&p);
}

static void test_large_body(void **state)
{
    (void)state;
    /* Several hundred kilobytes: exercises the bounded writer. */
    size_t n = 700 * 1024;
    char *body = malloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (i % 80 == 79) ? '\n' : (i % 80 == 0 ? '.' : (char)('a' + i % 26));
    struct peer p = {.greeting = "220 p\r\n", .ehlo = EHLO_PLAIN};
    struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {body, n}, .nrcpt = 1, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_NONE, 5000);
    assert_int_equal(rc[0].out.action, SMTP_ACT_SENT);
    /* The peer's unstuffed copy equals the input with LF made CRLF. */
    struct buf want;
    buf_init(&want, 4 * n);
    for (size_t i = 0; i < n; i++) {
        if (body[i] == '\n')
            buf_append(&want, "\r", 1);
        buf_append(&want, body + i, 1);
    }
    assert_int_equal(p.data.len, want.len);
    assert_memory_equal(p.data.data, want.data, want.len);
    buf_free(&want);
    free(body);
    peer_free(&p);
}

/* A reader that hands out at most 777 bytes at a time, and fails at
 * fail_at if set. */
struct reader {
    const char *data;
    size_t len;
    size_t fail_at;
    int calls;
};

static int read_piece(void *arg, uint64_t off, void *dst, size_t cap, size_t *got)
{
    struct reader *r = arg;
    r->calls++;
    if (r->fail_at && off >= r->fail_at)
        return ERR_IO;
    size_t n = r->len - (size_t)off;
    if (n > cap)
        n = cap;
    if (n > 777)
        n = 777;
    memcpy(dst, r->data + off, n);
    *got = n;
    return 0;
}

static void test_body_reader(void **state)
{
    (void)state;
    size_t n = 300 * 1024;
    char *body = malloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (i % 70 == 69) ? '\n' : (i % 70 == 0 ? '.' : (char)('A' + i % 26));
    for (int fail = 0; fail < 2; fail++) {
        struct peer p = {.greeting = "220 p\r\n", .ehlo = "250-p\r\n250 SIZE 1000000\r\n"};
        struct reader rd = {.data = body, .len = n, .fail_at = fail ? n / 2 : 0};
        struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
        struct smtp_msg m = {.sender = "s@x",
                             .read = read_piece,
                             .read_arg = &rd,
                             .size = n,
                             .nrcpt = 1,
                             .rcpt = rc};
        struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
        run_session(&r, 0, SMTP_TLS_NONE, 5000);
        char want_size[64];
        snprintf(want_size, sizeof(want_size), "SIZE=%zu", n);
        assert_non_null(strstr(p.log.data, want_size));
        assert_true(rd.calls > 1);
        if (!fail) {
            assert_int_equal(rc[0].out.action, SMTP_ACT_SENT);
            struct buf want;
            buf_init(&want, 4 * n);
            for (size_t i = 0; i < n; i++) {
                if (body[i] == '\n')
                    buf_append(&want, "\r", 1);
                buf_append(&want, body + i, 1);
            }
            if (body[n - 1] != '\n')
                buf_append(&want, "\r\n", 2); /* the writer ends the last line */
            assert_int_equal(p.data.len, want.len);
            assert_memory_equal(p.data.data, want.data, want.len);
            buf_free(&want);
        } else {
            /* No final dot for a message that could not be read whole. */
            assert_int_equal(p.messages, 0);
            assert_int_equal(rc[0].out.action, SMTP_ACT_DEFER);
            assert_string_equal(rc[0].out.status, "4.3.0");
        }
        peer_free(&p);
    }
    free(body);
}

/* ---- STARTTLS, with the tls module's test PKI (tests/unit/tls) -------- */

#ifdef SMTP_TLS_CERT_DIR
static const char *cert(const char *name)
{
    static char path[4][512];
    static int slot;
    slot = (slot + 1) % 4;
    snprintf(path[slot], sizeof(path[slot]), "%s/%s", SMTP_TLS_CERT_DIR, name);
    return path[slot];
}

static bool have_certs(void)
{
    FILE *f = fopen(cert("good.pem"), "r");
    if (f)
        fclose(f);
    return f != NULL;
}

struct tls_case {
    enum smtp_tls_mode mode;
    const char *verify_host;
    bool reject_by_check;
    enum smtp_action want; /* of the recipient */
    const char *want_status;
    bool want_verified;
};

static bool reject_check(struct smtp_client *c, const struct tls_facts *f, struct smtp_outcome *o,
                         void *arg)
{
    (void)c;
    (void)arg;
    assert_true(f->handshake_done);
    o->action = SMTP_ACT_DEFER;
    str_copy(o->status, "4.7.5", sizeof(o->status));
    str_copy(o->text, "policy says no", sizeof(o->text));
    return false;
}

static void test_starttls(void **state)
{
    (void)state;
    if (!have_certs())
        skip();
    static const struct tls_case cases[] = {
        {SMTP_TLS_MAY, NULL, false, SMTP_ACT_SENT, "2.0.0", true},
        {SMTP_TLS_VERIFY, "mx.example.com", false, SMTP_ACT_SENT, "2.0.0", true},
        {SMTP_TLS_VERIFY, "wrong.example.com", false, SMTP_ACT_DEFER, "4.7.5", false},
        {SMTP_TLS_MAY, "wrong.example.com", false, SMTP_ACT_SENT, "2.0.0", false},
        {SMTP_TLS_VERIFY, "mx.example.com", true, SMTP_ACT_DEFER, "4.7.5", true},
        {SMTP_TLS_NONE, NULL, false, SMTP_ACT_SENT, "2.0.0", false},
        /* encrypt: any certificate will do, a tls_check may still refuse. */
        {SMTP_TLS_ENCRYPT, "wrong.example.com", false, SMTP_ACT_SENT, "2.0.0", false},
        {SMTP_TLS_ENCRYPT, "mx.example.com", false, SMTP_ACT_SENT, "2.0.0", true},
        {SMTP_TLS_ENCRYPT, "wrong.example.com", true, SMTP_ACT_DEFER, "4.7.5", false},
    };
    char why[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct tls_case *tc = &cases[i];
        struct peer p = {.greeting = "220 p\r\n",
                         .ehlo = "250-p\r\n250-STARTTLS\r\n250 PIPELINING\r\n"};
        p.sctx = tls_ctx_server_new(cert("good.pem"), cert("good.key"), why, sizeof(why));
        assert_non_null(p.sctx);
        run_cctx = tls_ctx_client_new(cert("ca.pem"), why, sizeof(why));
        assert_non_null(run_cctx);
        run_verify_host = tc->verify_host ? tc->verify_host : "mx.example.com";
        run_check = tc->reject_by_check ? reject_check : NULL;
        struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
        struct smtp_msg m = {.sender = "s@x", .body = {"hi\r\n", 4}, .nrcpt = 1, .rcpt = rc};
        struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
        run_session(&r, 0, tc->mode, 5000);
        if (tc->want == SMTP_ACT_SENT) {
            assert_int_equal(rc[0].out.action, SMTP_ACT_SENT);
            assert_true(m.attempted);
        } else {
            /* The session failed before MAIL: the message was not tried. */
            assert_false(m.attempted);
            assert_int_equal(r.done, 0);
            assert_int_equal(r.result.action, tc->want);
            assert_string_equal(r.result.status, tc->want_status);
            assert_null(strstr(p.log.data ? p.log.data : "", "MAIL"));
        }
        if (tc->mode == SMTP_TLS_NONE) {
            assert_false(r.facts.handshake_done);
            assert_null(strstr(p.log.data, "STARTTLS"));
        } else {
            assert_int_equal(r.facts.verified, tc->want_verified);
            assert_true(r.facts.version[0] != '\0' || !tc->want_verified);
        }
        if (tc->want == SMTP_ACT_SENT && tc->mode != SMTP_TLS_NONE) {
            assert_true(p.tls_done);
            /* EHLO again after TLS (RFC 3207 4.2). */
            assert_non_null(strstr(p.log.data, "STARTTLS\nEHLO client.test\nMAIL"));
            assert_string_equal(p.data.data, "hi\r\n");
        }
        tls_ctx_free(run_cctx);
        run_cctx = NULL;
        run_check = NULL;
        run_verify_host = NULL;
        peer_free(&p);
    }
}
static void test_starttls_handshake_fails(void **state)
{
    (void)state;
    char why[256];
    struct peer p = {.greeting = "220 p\r\n",
                     .ehlo = "250-p\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
                     .starttls_garbage = true};
    run_cctx = tls_ctx_client_new(NULL, why, sizeof(why));
    assert_non_null(run_cctx);
    struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 1, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_MAY, 5000);
    /* The caller learns it was TLS (so it may retry in plaintext). */
    assert_int_equal(r.ready, 0);
    assert_false(m.attempted);
    assert_int_equal(r.result.action, SMTP_ACT_DEFER);
    assert_int_equal(r.result.err, ERR_TLS);
    assert_string_equal(r.result.status, "4.7.5");
    assert_false(r.facts.handshake_done);
    tls_ctx_free(run_cctx);
    run_cctx = NULL;
    peer_free(&p);
}

static void test_encrypt_handshake_fails(void **state)
{
    (void)state;
    char why[256];
    struct peer p = {.greeting = "220 p\r\n",
                     .ehlo = "250-p\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
                     .starttls_garbage = true};
    run_cctx = tls_ctx_client_new(NULL, why, sizeof(why));
    assert_non_null(run_cctx);
    struct smtp_rcpt rc[1] = {{.addr = "a@x"}};
    struct smtp_msg m = {.sender = "s@x", .body = {"x", 1}, .nrcpt = 1, .rcpt = rc};
    struct run r = {.peer = &p, .msgs = &m, .nmsgs = 1};
    run_session(&r, 0, SMTP_TLS_ENCRYPT, 5000);
    /* encrypt: the same failure; the caller never retries in plaintext. */
    assert_int_equal(r.ready, 0);
    assert_false(m.attempted);
    assert_int_equal(r.result.action, SMTP_ACT_DEFER);
    assert_int_equal(r.result.err, ERR_TLS);
    assert_string_equal(r.result.status, "4.7.5");
    assert_false(r.facts.handshake_done);
    tls_ctx_free(run_cctx);
    run_cctx = NULL;
    peer_free(&p);
}
#else
static void test_starttls_handshake_fails(void **state)
{
    (void)state;
    skip();
}

static void test_encrypt_handshake_fails(void **state)
{
    (void)state;
    skip();
}

static void test_starttls(void **state)
{
    (void)state;
    skip();
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_parser),
        cmocka_unit_test(test_reply_bounds),
        cmocka_unit_test(test_stuff_table),
        cmocka_unit_test(test_stuff_fold),
        cmocka_unit_test(test_stuff_random),
        cmocka_unit_test(test_pipelined_delivery),
        cmocka_unit_test(test_plain_helo_fallback_and_reuse),
        cmocka_unit_test(test_rset_only_after_aborted),
        cmocka_unit_test(test_all_rcpts_rejected_no_data),
        cmocka_unit_test(test_mail_rejected_pipelined),
        cmocka_unit_test(test_dot_tempfail),
        cmocka_unit_test(test_unexpected_reply_classes),
        cmocka_unit_test(test_greeting_4xx),
        cmocka_unit_test(test_greeting_timeout),
        cmocka_unit_test(test_dot_timeout),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_smtputf8_and_size),
        cmocka_unit_test(test_verify_without_starttls),
        cmocka_unit_test(test_encrypt_without_starttls),
        cmocka_unit_test(test_bad_addresses),
        cmocka_unit_test(test_auth_plain),
        cmocka_unit_test(test_auth_login),
        cmocka_unit_test(test_auth_refused),
        cmocka_unit_test(test_auth_needs_tls),
        cmocka_unit_test(test_auth_not_offered),
        cmocka_unit_test(test_large_body),
        cmocka_unit_test(test_body_reader),
        cmocka_unit_test(test_starttls),
        cmocka_unit_test(test_starttls_handshake_fails),
        cmocka_unit_test(test_encrypt_handshake_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
