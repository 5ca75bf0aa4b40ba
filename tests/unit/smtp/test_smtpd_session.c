/*
 * test_smtpd_session.c - the SMTP server's sessions against a scripted
 * client over loopback TCP, with a fake owner in place of the queue.
 *
 * What it shows: the client's final reply to DATA/BDAT waits for the
 * owner's answer and maps it (0 -> 250 with the ID, ERR_FULL -> 452 4.3.1,
 * other errors -> 451 4.3.0); an owner that answers inside its callback
 * works; a client that vanishes while the owner holds its message does not
 * free the session under the owner; pipelined input survives the wait; a
 * client that never reads its replies cannot make the server buffer
 * without bound; the server frees itself once the loop has run; a
 * message over the streaming threshold reaches the owner's on_stream in
 * pieces (with pauses and resumes) that make up the message exactly, and
 * a transaction that ends without a message (size limit, a header section
 * too long, RSET between BDAT chunks) is aborted.
 *
 * The client runs on its own thread with blocking sockets; the server runs
 * on the test's loop. Each case is a script of (bytes to send, reply prefix
 * expected).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "smtp.h"

enum owner_mode { OWN_OK_LATER, OWN_OK_NOW, OWN_FULL, OWN_IO, OWN_HOLD };

static struct {
    uv_loop_t loop;
    struct smtpd *srv;
    uint16_t port;
    enum owner_mode mode;
    uv_timer_t later;
    struct smtpd_session *held;
    int messages;
    char last_body[4096];
    size_t last_rcpts;
    char last_sender[256];
    char msgid[2][128]; /* Message-ID lines the server added, by message */
    uv_async_t done;
    const char *const *script;
    char failure[512];
    bool hangup_after_script;
    /* streaming */
    struct buf streamed; /* what on_stream got */
    char head[2048];
    int starts, aborts, pauses;
    bool streamed_msg;
    size_t prefix_len;
    struct smtpd_session *paused;
    uv_timer_t resume;
} T;

/* ---- the fake owner --------------------------------------------------------- */

static void answer_later(uv_timer_t *t)
{
    (void)t;
    struct smtpd_session *s = T.held;
    T.held = NULL;
    smtpd_session_done(s, T.mode == OWN_IO ? ERR_IO : 0, "TESTID0000000001");
}

static void on_message(void *arg, struct smtpd_session *s, const struct smtpd_message *m)
{
    (void)arg;
    T.messages++;
    T.last_rcpts = m->n_rcpts;
    str_copy(T.last_sender, m->sender, sizeof(T.last_sender));
    size_t n = m->body.len < sizeof(T.last_body) - 1 ? m->body.len : sizeof(T.last_body) - 1;
    memcpy(T.last_body, m->body.ptr, n);
    T.last_body[n] = '\0';
    const char *id = strstr(T.last_body, "Message-ID: ");
    if (id && T.messages <= 2)
        snprintf(T.msgid[T.messages - 1], sizeof(T.msgid[0]), "%.*s", (int)strcspn(id, "\r"), id);
    switch (T.mode) {
    case OWN_OK_NOW:
        smtpd_session_done(s, 0, "TESTID0000000002");
        break;
    case OWN_FULL:
        smtpd_session_done(s, ERR_FULL, NULL);
        break;
    case OWN_HOLD:
        T.held = s;
        break;
    default:
        T.held = s;
        uv_timer_start(&T.later, answer_later, 50, 0);
        break;
    }
}

static void resume_later(uv_timer_t *t)
{
    (void)t;
    struct smtpd_session *s = T.paused;
    T.paused = NULL;
    smtpd_session_resume(s);
}

/* Keeps what it is given; asks for a pause every third piece. */
static int on_stream(void *arg, struct smtpd_session *s, enum smtpd_stream_ev ev, struct view bytes)
{
    (void)arg;
    if (ev == SMTPD_STREAM_START) {
        T.starts++;
        str_copy(T.head, bytes.ptr,
                 bytes.len + 1 < sizeof(T.head) ? bytes.len + 1 : sizeof(T.head));
        return 0;
    }
    if (ev == SMTPD_STREAM_ABORT) {
        T.aborts++;
        return 0;
    }
    assert_int_equal(buf_append(&T.streamed, bytes.ptr, bytes.len), 0);
    if (++T.pauses % 3 == 0) {
        T.paused = s;
        uv_timer_start(&T.resume, resume_later, 5, 0);
        return SMTPD_STREAM_PAUSE;
    }
    return 0;
}

static void on_message_streamed(void *arg, struct smtpd_session *s, const struct smtpd_message *m)
{
    T.streamed_msg = m->streamed;
    T.prefix_len = m->prefix_len;
    if (m->streamed)
        assert_int_equal(
            buf_append(&T.streamed, m->body.ptr + m->prefix_len, m->body.len - m->prefix_len), 0);
    on_message(arg, s, m);
}

/* ---- the client thread --------------------------------------------------------- */

static int read_reply(int fd, char *out, size_t size)
{
    /* One reply, possibly multiline; returns its last line in out. */
    char line[1024];
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        if (r <= 0)
            return -1;
        if (n < sizeof(line) - 1)
            line[n++] = c;
        if (c == '\n') {
            line[n] = '\0';
            if (n >= 4 && line[3] == ' ') {
                str_copy(out, line, size);
                return 0;
            }
            n = 0;
        }
    }
}

static void *client_main(void *arg)
{
    (void)arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(T.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char got[1024];
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || read_reply(fd, got, sizeof(got)) ||
        strncmp(got, "220 ", 4) != 0) {
        snprintf(T.failure, sizeof(T.failure), "no greeting");
        goto out;
    }
    for (const char *const *p = T.script; *p; p += 2) {
        const char *send_ = p[0], *want = p[1];
        if (*send_ && send(fd, send_, strlen(send_), MSG_NOSIGNAL) < 0) {
            snprintf(T.failure, sizeof(T.failure), "send failed before %.200s", want);
            goto out;
        }
        if (!want)
            break;
        if (!*want)
            continue;
        if (read_reply(fd, got, sizeof(got)) != 0) {
            snprintf(T.failure, sizeof(T.failure), "connection lost, wanted %.200s", want);
            goto out;
        }
        if (strncmp(got, want, strlen(want)) != 0) {
            snprintf(T.failure, sizeof(T.failure), "got %.200s wanted %.200s", got, want);
            goto out;
        }
    }
out:
    close(fd);
    uv_async_send(&T.done);
    return NULL;
}

static void on_done(uv_async_t *a)
{
    (void)a;
    uv_stop(&T.loop);
}

/* Run one script against a fresh server; returns after the client ends. */
static void run_script(enum owner_mode mode, const char *const *script)
{
    T.mode = mode;
    T.script = script;
    T.failure[0] = '\0';
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, client_main, NULL), 0);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    if (T.failure[0])
        fail_msg("%s", T.failure);
    /* Let the server notice the close. */
    for (int i = 0; i < 20; i++)
        uv_run(&T.loop, UV_RUN_NOWAIT), usleep(1000);
}

static bool relay_all(void *arg, const struct sockaddr *sa)
{
    (void)arg;
    (void)sa;
    return true;
}

static int setup_opts(bool streaming)
{
    memset(&T, 0, sizeof(T));
    uv_loop_init(&T.loop);
    uv_timer_init(&T.loop, &T.later);
    uv_timer_init(&T.loop, &T.resume);
    uv_async_init(&T.loop, &T.done, on_done);
    buf_init(&T.streamed, 1 << 20);
    struct smtpd_opts o = {
        .hostname = "mx.test.example",
        .message_size_limit = streaming ? 400000 : 100000,
        .recipient_limit = 100,
        .relay_allowed = relay_all,
        .on_message = streaming ? on_message_streamed : on_message,
        .on_stream = streaming ? on_stream : NULL,
        .stream_threshold = 1000,
    };
    struct buf err;
    buf_init(&err, 1024);
    T.srv = smtpd_new(&T.loop, &o, &err);
    assert_non_null(T.srv);
    /* Find a free port, then listen on it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    T.port = ntohs(a.sin_port);
    assert_int_equal(smtpd_listen(T.srv, (struct sockaddr *)&a, &err), 0);
    buf_free(&err);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    return setup_opts(false);
}

static int setup_streaming(void **state)
{
    (void)state;
    return setup_opts(true);
}

static void close_cb(uv_handle_t *h)
{
    (void)h;
}

static int teardown(void **state)
{
    (void)state;
    smtpd_free(T.srv);
    uv_close((uv_handle_t *)&T.later, close_cb);
    uv_close((uv_handle_t *)&T.resume, close_cb);
    uv_close((uv_handle_t *)&T.done, close_cb);
    buf_free(&T.streamed);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    /* Everything the server had is gone: the loop closes. */
    assert_int_equal(uv_loop_close(&T.loop), 0);
    return 0;
}

#define TXN "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"

static void test_ok_after_owner(void **state)
{
    (void)state;
    static const char *const script[] = {
        TXN,
        "250 ",
        "",
        "250 2.1.0",
        "",
        "250 2.1.5",
        "",
        "354 ",
        /* The next transaction is pipelined behind the dot: it must wait. */
        "hello\r\n.\r\nRSET\r\nNOOP\r\n",
        "250 2.0.0 Ok: queued as TESTID0000000001",
        "",
        "250 2.0.0 Ok",
        "",
        "250 2.0.0 Ok",
        "QUIT\r\n",
        "221 ",
        NULL,
        NULL,
    };
    run_script(OWN_OK_LATER, script);
    assert_int_equal(T.messages, 1);
    assert_string_equal(T.last_sender, "a@example.com");
    assert_non_null(strstr(T.last_body, "Received: from c (unknown [127.0.0.1])\r\n"));
    assert_true(strlen(T.last_body) > 7 &&
                strcmp(T.last_body + strlen(T.last_body) - 7, "hello\r\n") == 0);
}

static void test_ok_inside_callback(void **state)
{
    (void)state;
    static const char *const script[] = {
        TXN,    "250 ", "",     "250 ",       "",
        "250 ", "",     "354 ", "x\r\n.\r\n", "250 2.0.0 Ok: queued as TESTID0000000002",
        NULL,   NULL,
    };
    run_script(OWN_OK_NOW, script);
    assert_int_equal(T.messages, 1);
}

static void test_message_ids(void **state)
{
    (void)state;
    /* Two messages without a Message-ID in one session, the second
     * pipelined behind the first's dot: each gets one of its own (RFC 5322
     * 3.6.4: unique). Each step: (input, expected reply prefix). */
#define MSG2 "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
#define TXN_OK "250 ", "", "250 ", "", "354 " /* MAIL, RCPT, DATA answered */
    static const char *const script[] = {
        TXN,          "250 ",         "",   TXN_OK, "x\r\n.\r\n" MSG2, "250 2.0.0 Ok", "", TXN_OK,
        "y\r\n.\r\n", "250 2.0.0 Ok", NULL, NULL,
    };
#undef TXN_OK
#undef MSG2
    memset(T.msgid, 0, sizeof(T.msgid));
    run_script(OWN_OK_NOW, script);
    assert_int_equal(T.messages, 2);
    for (int i = 0; i < 2; i++) {
        /* Message-ID: <YYYYmmddHHMMSS.<16 hex digits>@host> */
        assert_int_equal(strspn(T.msgid[i] + 13, "0123456789"), 14);
        assert_int_equal(strspn(T.msgid[i] + 28, "0123456789abcdef"), 16);
        assert_int_equal(T.msgid[i][44], '@');
    }
    assert_string_not_equal(T.msgid[0] + 28, T.msgid[1] + 28);
}

static void test_full(void **state)
{
    (void)state;
    static const char *const script[] = {
        TXN,    "250 ",       "",          "250 ",     "",     "250 ", "",
        "354 ", "x\r\n.\r\n", "452 4.3.1", "NOOP\r\n", "250 ", NULL,   NULL,
    };
    run_script(OWN_FULL, script);
}

static void test_io_error(void **state)
{
    (void)state;
    static const char *const script[] = {
        TXN, "250 ", "", "250 ", "", "250 ", "", "354 ", "x\r\n.\r\n", "451 4.3.0", NULL, NULL,
    };
    run_script(OWN_IO, script);
}

static void test_bdat_waits_too(void **state)
{
    (void)state;
    static const char *const script[] = {
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 4 LAST\r\nab\r\n"
        "QUIT\r\n",
        "250 ",
        "",
        "250 ",
        "",
        "250 ",
        "",
        "250 2.0.0 Ok: queued as TESTID",
        "",
        "221 ",
        NULL,
        NULL,
    };
    run_script(OWN_OK_LATER, script);
    assert_true(strcmp(T.last_body + strlen(T.last_body) - 4, "ab\r\n") == 0);
}

/* The client goes away while the owner holds the message; the owner's
 * late answer must find the session still allocated. */
static void test_client_gone_while_held(void **state)
{
    (void)state;
    static const char *const script[] = {
        TXN, "250 ", "", "250 ", "", "250 ", "", "354 ", "x\r\n.\r\n", NULL, NULL,
    };
    run_script(OWN_HOLD, script);
    for (int i = 0; i < 50 && !T.held; i++)
        uv_run(&T.loop, UV_RUN_NOWAIT), usleep(2000);
    assert_non_null(T.held);
    assert_int_equal(smtpd_active(T.srv), 1);
    smtpd_session_done(T.held, 0, "TESTID0000000003");
    T.held = NULL;
    for (int i = 0; i < 20; i++)
        uv_run(&T.loop, UV_RUN_NOWAIT), usleep(1000);
    assert_int_equal(smtpd_active(T.srv), 0);
}

/* A client that pipelines a flood and never reads: the server stops
 * reading instead of buffering replies without bound. */
static void *flood_main(void *arg)
{
    (void)arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(T.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
        static char chunk[65536];
        for (size_t i = 0; i + 8 <= sizeof(chunk); i += 8)
            memcpy(chunk + i, "EHLO c\r\n", 8);
        size_t sent = 0;
        /* Stops when the server stops reading (the send times out). */
        while (sent < (64u << 20)) {
            ssize_t r = send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL);
            if (r <= 0)
                break;
            sent += (size_t)r;
        }
        if (sent >= (64u << 20))
            snprintf(T.failure, sizeof(T.failure), "server read 64 MiB without replies read");
    }
    close(fd);
    uv_async_send(&T.done);
    return NULL;
}

static void test_flood_is_bounded(void **state)
{
    (void)state;
    T.failure[0] = '\0';
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, flood_main, NULL), 0);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    if (T.failure[0])
        fail_msg("%s", T.failure);
    for (int i = 0; i < 20; i++)
        uv_run(&T.loop, UV_RUN_NOWAIT), usleep(1000);
}

/* A message of n lines of 78 octets (every seventh starting with a dot),
 * as sent (dot-stuffed, with the final dot) and as stored. */
static void big_message(size_t n, struct buf *sent, struct buf *stored)
{
    const char *head = "From: a@example.com\r\nSubject: big\r\n\r\n";
    buf_append_str(sent, head);
    buf_append_str(stored, head);
    for (size_t i = 0; i < n; i++) {
        char line[96];
        snprintf(line, sizeof(line),
                 "%s%06zu abcdefghijklmnopqrstuvwxyz0123456789 the quick brown fox\r\n",
                 i % 7 == 0 ? "." : "x", i);
        if (line[0] == '.')
            buf_append(sent, ".", 1);
        buf_append_str(sent, line);
        buf_append_str(stored, line);
    }
    buf_append_str(sent, ".\r\n");
}

static void test_streamed(void **state)
{
    (void)state;
    struct buf sent, stored;
    buf_init(&sent, 1 << 20);
    buf_init(&stored, 1 << 20);
    big_message(4000, &sent, &stored);
    const char *const script[] = {
        TXN,        "250", "",    "250",     "",
        "250",      "",    "354", sent.data, "250 2.0.0 Ok: queued as TESTID0000000002",
        "QUIT\r\n", "221", NULL};
    run_script(OWN_OK_NOW, script);
    assert_int_equal(T.messages, 1);
    assert_true(T.streamed_msg);
    assert_true(T.prefix_len > 0);
    assert_int_equal(T.starts, 1);
    assert_int_equal(T.aborts, 0);
    assert_true(T.pauses >= 3);
    assert_string_equal(T.head, "From: a@example.com\r\nSubject: big\r\n\r\n");
    assert_int_equal(T.streamed.len, stored.len);
    assert_memory_equal(T.streamed.data, stored.data, stored.len);
    buf_free(&sent);
    buf_free(&stored);
}

static void test_streamed_refusals_abort(void **state)
{
    (void)state;
    struct buf big, stored, bighead;
    buf_init(&big, 1 << 20);
    buf_init(&stored, 1 << 20);
    buf_init(&bighead, 1 << 20);
    big_message(8000, &big, &stored); /* 528 KB: over message_size_limit */
    for (int i = 0; i < 40; i++)
        buf_printf(&bighead, "X-Filler-%d: %s\r\n", i, "ffffffffffffffffffffffffffffffffffffffff");
    buf_append_str(&bighead, "\r\n");
    for (int i = 0; i < 2000; i++)
        buf_append_str(&bighead, "a body line long enough to take the message past a slice\r\n");
    buf_append_str(&bighead, ".\r\n");
    /* One BDAT chunk of 2000 octets: a header section, then text. */
    static char bdat[3000];
    size_t h = (size_t)snprintf(bdat, sizeof(bdat), "BDAT 2000\r\nSubject: x\r\n\r\n");
    memset(bdat + h, 'b', 2011 - h);
    memcpy(bdat + 2009, "\r\n", 3);
    const char *const script[] = {
        TXN,
        "250",
        "",
        "250",
        "",
        "250",
        "",
        "354",
        big.data,
        "552 5.3.4 Message size exceeds fixed limit",
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
        "250",
        "",
        "250",
        "",
        "354",
        bighead.data,
        "552 5.3.4 Message header section exceeds fixed limit",
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n",
        "250",
        "",
        "250",
        bdat,
        "250 2.0.0 Ok: ",
        "RSET\r\n",
        "250",
        "QUIT\r\n",
        "221",
        NULL};
    run_script(OWN_OK_NOW, script);
    assert_int_equal(T.messages, 0);
    assert_int_equal(T.starts, 2); /* the size limit and BDAT; the long header never started */
    assert_int_equal(T.aborts, 2);
    buf_free(&big);
    buf_free(&stored);
    buf_free(&bighead);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ok_after_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ok_inside_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_io_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bdat_waits_too, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_gone_while_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streamed, setup_streaming, teardown),
        cmocka_unit_test_setup_teardown(test_streamed_refusals_abort, setup_streaming, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
