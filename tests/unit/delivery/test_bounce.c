/*
 * test_bounce.c - the DSN builder (RFC 3464 / 6522) and the delivery
 * engine's pure helpers (domain of an address, delay notation).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "deliver_int.h"

static const char original[] = "From: Sender <s@example.org>\r\n"
                               "To: r@example.com\r\n"
                               "Subject: hello\r\n"
                               "\r\n"
                               "Body line one\r\n"
                               "Body line two\r\n";

static void assert_crlf_only(const char *s, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(s[i] != '\0');
        if (s[i] == '\r')
            assert_true(i + 1 < n && s[i + 1] == '\n');
        if (s[i] == '\n') {
            assert_true(i > 0 && s[i - 1] == '\r');
            col = 0;
        } else if (s[i] != '\r') {
            col++;
            assert_true(col <= 998);
        }
    }
}

/* The text between "--boundary" lines, by index (0: the preamble). */
static char *part(const char *msg, const char *boundary, int index)
{
    char delim[256];
    snprintf(delim, sizeof(delim), "\r\n--%s", boundary);
    const char *p = msg;
    for (int i = 0; i < index; i++) {
        p = strstr(p, delim);
        if (!p)
            return NULL;
        p += strlen(delim);
    }
    const char *e = strstr(p, delim);
    if (!e)
        return NULL;
    return strndup(p, (size_t)(e - p));
}

static char *boundary_of(const char *msg)
{
    const char *b = strstr(msg, "boundary=\"");
    assert_non_null(b);
    b += strlen("boundary=\"");
    const char *e = strchr(b, '"');
    return strndup(b, (size_t)(e - b));
}

static void test_dsn_failed_headers_only(void **state)
{
    (void)state;
    struct dsn_rcpt r[2] = {
        {.addr = "bad@example.com",
         .orcpt = "rfc822;Bad@example.com",
         .status = "5.1.1",
         .remote_mta = "mx.example.com",
         .diag = "550 5.1.1 <bad@example.com>: Recipient address rejected",
         .reason = "host mx.example.com[192.0.2.1] said: 550 5.1.1 ... (in reply to RCPT TO "
                   "command)",
         .last_attempt_ms = 1764520000000},
        {.addr = "gone@example.com", .status = "5.4.7", .reason = "delivery time expired"},
    };
    struct dsn_msg d = {
        .reporting_mta = "relay.example.net",
        .queue_id = "0123456789ABCDEF",
        .sender = "s@example.org",
        .envid = "ENV123",
        .arrival_ms = 1764510000000,
        .now_ms = 1764520000000,
        .original = {original, sizeof(original) - 1},
        .rcpts = r,
        .nrcpt = 2,
    };
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(dsn_build(&d, &out), 0);
    assert_crlf_only(out.data, out.len);
    const char *m = out.data;
    assert_non_null(strstr(m, "From: Mail Delivery System <MAILER-DAEMON@relay.example.net>\r\n"));
    assert_non_null(strstr(m, "To: <s@example.org>\r\n"));
    assert_non_null(strstr(m, "Auto-Submitted: auto-replied\r\n"));
    assert_non_null(strstr(m, "Content-Type: multipart/report; report-type=delivery-status;"));
    char *b = boundary_of(m);
    /* Parts: 1 notification, 2 delivery-status, 3 headers; then the end. */
    char *p1 = part(m, b, 1);
    char *p2 = part(m, b, 2);
    char *p3 = part(m, b, 3);
    assert_non_null(p1);
    assert_non_null(p2);
    assert_non_null(p3);
    assert_non_null(strstr(p1, "Content-Type: text/plain"));
    assert_non_null(strstr(p1, "<bad@example.com>: host mx.example.com[192.0.2.1] said"));
    assert_non_null(strstr(p2, "Content-Type: message/delivery-status\r\n\r\n"
                               "Reporting-MTA: dns; relay.example.net\r\n"));
    assert_non_null(strstr(p2, "Original-Envelope-Id: ENV123\r\n"));
    assert_non_null(strstr(p2, "Arrival-Date: "));
    assert_non_null(strstr(p2, "\r\n\r\nFinal-Recipient: rfc822; bad@example.com\r\n"
                               "Original-Recipient: rfc822;Bad@example.com\r\n"
                               "Action: failed\r\nStatus: 5.1.1\r\n"
                               "Remote-MTA: dns; mx.example.com\r\n"
                               "Diagnostic-Code: smtp; 550 5.1.1 <bad@example.com>: Recipient"));
    assert_non_null(strstr(p2, "Last-Attempt-Date: "));
    assert_non_null(strstr(p2, "\r\n\r\nFinal-Recipient: rfc822; gone@example.com\r\n"
                               "Action: failed\r\nStatus: 5.4.7\r\n"));
    assert_non_null(strstr(p3, "Content-Type: text/rfc822-headers\r\n\r\n"
                               "From: Sender <s@example.org>\r\n"));
    assert_non_null(strstr(p3, "Subject: hello\r\n"));
    assert_null(strstr(p3, "Body line"));
    char end[256];
    snprintf(end, sizeof(end), "\r\n--%s--\r\n", b);
    assert_true(out.len > strlen(end));
    assert_string_equal(m + out.len - strlen(end), end);
    free(p1);
    free(p2);
    free(p3);
    free(b);
    buf_free(&out);
}

static void test_dsn_ret_full_and_boundary(void **state)
{
    (void)state;
    /* An original that contains the first boundary we would choose, with
     * bare LF line ends. */
    const char *qid = "QQQQQQQQQQQQQQQQ";
    int64_t now = 1764520000000;
    char orig[512];
    snprintf(orig, sizeof(orig), "Subject: x\n\n--%s.%lld.0/h.example\nbody\n", qid,
             (long long)(now / 1000));
    struct dsn_rcpt r = {.addr = "a@b", .status = "5.0.0", .reason = "no"};
    struct dsn_msg d = {.reporting_mta = "h.example",
                        .queue_id = qid,
                        .sender = "s@x",
                        .now_ms = now,
                        .ret_full = true,
                        .original = {orig, strlen(orig)},
                        .rcpts = &r,
                        .nrcpt = 1};
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(dsn_build(&d, &out), 0);
    assert_crlf_only(out.data, out.len);
    char *b = boundary_of(out.data);
    char want[128];
    snprintf(want, sizeof(want), "%s.%lld.1/h.example", qid, (long long)(now / 1000));
    assert_string_equal(b, want);
    char *p3 = part(out.data, b, 3);
    assert_non_null(strstr(p3, "Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\n--"));
    assert_non_null(strstr(p3, "\r\nbody\r\n"));
    free(p3);
    free(b);
    buf_free(&out);
}

static void test_dsn_boundary_length(void **state)
{
    (void)state;
    /* RFC 2046 5.1.1: at most 70 characters, even for the longest host
     * name (253 octets), and still unique against the original. */
    char host[254];
    memset(host, 'h', sizeof(host) - 1);
    for (size_t i = 63; i < sizeof(host) - 1; i += 64)
        host[i] = '.';
    host[sizeof(host) - 1] = '\0';
    const char *qid = "QQQQQQQQQQQQQQQQ";
    int64_t now = 1764520000000;
    char orig[512];
    int k =
        snprintf(orig, sizeof(orig), "Subject: x\n\n--%s.%lld.0/", qid, (long long)(now / 1000));
    snprintf(orig + k, sizeof(orig) - (size_t)k, "%s\nbody\n", host);
    struct dsn_rcpt r = {.addr = "a@b", .status = "5.0.0", .reason = "no"};
    struct dsn_msg d = {.reporting_mta = host,
                        .queue_id = qid,
                        .sender = "s@x",
                        .now_ms = now,
                        .ret_full = true,
                        .original = {orig, strlen(orig)},
                        .rcpts = &r,
                        .nrcpt = 1};
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(dsn_build(&d, &out), 0);
    assert_crlf_only(out.data, out.len);
    char *b = boundary_of(out.data);
    assert_int_equal(strlen(b), 70);
    char want[128];
    snprintf(want, sizeof(want), "%s.%lld.1/", qid, (long long)(now / 1000));
    assert_memory_equal(b, want, strlen(want));
    assert_null(strstr(orig, b));
    free(b);
    buf_free(&out);
}

static void test_dsn_refusals_and_folding(void **state)
{
    (void)state;
    struct dsn_rcpt r = {.addr = "a@b", .status = "5.0.0"};
    struct dsn_msg d = {.queue_id = "Q", .sender = "", .rcpts = &r, .nrcpt = 1};
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(dsn_build(&d, &out), ERR_INVAL); /* never to the null sender */
    d.sender = "s@x";
    d.nrcpt = 0;
    assert_int_equal(dsn_build(&d, &out), ERR_INVAL);
    d.nrcpt = 1;
    /* A long diagnostic without spaces, with a CR LF inside. */
    char diag[500];
    memset(diag, 'd', sizeof(diag) - 1);
    diag[sizeof(diag) - 1] = '\0';
    diag[100] = '\r';
    diag[101] = '\n';
    r.diag = diag;
    buf_reset(&out);
    assert_int_equal(dsn_build(&d, &out), 0);
    assert_crlf_only(out.data, out.len);
    assert_non_null(strstr(out.data, "Diagnostic-Code: smtp; ddd"));
    /* Too small an output buffer. */
    struct buf small;
    buf_init(&small, 100);
    assert_int_equal(dsn_build(&d, &small), ERR_TOOBIG);
    buf_free(&small);
    buf_free(&out);
}

static void test_header_len(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t want;
    } cases[] = {
        {"A: b\r\n\r\nbody", 8}, {"A: b\n\nbody", 6}, {"A: b\r\n", 6}, {"", 0}, {"\r\n\r\nx", 4},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(dsn_header_len((struct view){cases[i].in, strlen(cases[i].in)}),
                         cases[i].want);
}

/* A delay warning (RFC 3464): Action: delayed, the 4.X.X of the last
 * attempt, Will-Retry-Until (2.3.9, only with delayed). */
static void test_dsn_delayed(void **state)
{
    (void)state;
    struct dsn_rcpt r = {.addr = "slow@example.com",
                         .status = "4.3.0",
                         .remote_mta = "mx.example.com",
                         .diag = "451 4.3.0 Temporary failure, try again later",
                         .reason = "host mx.example.com[192.0.2.1] said: 451 4.3.0 ...",
                         .last_attempt_ms = 1764520000000,
                         .will_retry_until_ms = 1764942400000};
    struct dsn_msg d = {
        .reporting_mta = "relay.example.net",
        .queue_id = "0123456789ABCDEF",
        .sender = "s@example.org",
        .arrival_ms = 1764510000000,
        .now_ms = 1764520000000,
        .delayed = true,
        .original = {original, sizeof(original) - 1},
        .rcpts = &r,
        .nrcpt = 1,
    };
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(dsn_build(&d, &out), 0);
    assert_crlf_only(out.data, out.len);
    assert_non_null(strstr(out.data, "Subject: Delayed Mail (still being retried)\r\n"));
    assert_non_null(strstr(out.data, "Final-Recipient: rfc822; slow@example.com\r\n"
                                     "Action: delayed\r\nStatus: 4.3.0\r\n"));
    assert_non_null(strstr(out.data, "Will-Retry-Until: Fri, 5 Dec 2025 "));
    /* A failure DSN never says Will-Retry-Until. */
    d.delayed = false;
    r.action = "failed";
    buf_reset(&out);
    assert_int_equal(dsn_build(&d, &out), 0);
    assert_null(strstr(out.data, "Will-Retry-Until"));
    buf_free(&out);
    /* Who is told (RFC 3461 4.1): no NOTIFY means failures and delays. */
    static const struct {
        unsigned notify;
        bool failed, delayed;
    } rows[] = {
        {0, true, true},
        {QUEUE_NOTIFY_NEVER, false, false},
        {QUEUE_NOTIFY_FAILURE, true, false},
        {QUEUE_NOTIFY_DELAY, false, true},
        {QUEUE_NOTIFY_SUCCESS, false, false},
        {QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY, true, true},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        assert_int_equal(dsn_wanted(DSN_FAILED, rows[i].notify), rows[i].failed);
        assert_int_equal(dsn_wanted(DSN_DELAYED, rows[i].notify), rows[i].delayed);
    }
}

static void test_helpers(void **state)
{
    (void)state;
    char d[64];
    addr_domain("User@Example.COM", d, sizeof(d));
    assert_string_equal(d, "example.com");
    addr_domain("a@b@C.org.", d, sizeof(d));
    assert_string_equal(d, "c.org");
    addr_domain("postmaster", d, sizeof(d));
    assert_string_equal(d, "");
    static const struct {
        int64_t ms;
        const char *s;
    } delays[] = {{0, "0.00"},     {123, "0.12"},   {9999, "9.99"},
                  {12345, "12.3"}, {123456, "123"}, {-5, "0.00"}};
    for (size_t i = 0; i < sizeof(delays) / sizeof(delays[0]); i++) {
        deliver_format_delay(delays[i].ms, d, sizeof(d));
        assert_string_equal(d, delays[i].s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dsn_failed_headers_only),
        cmocka_unit_test(test_dsn_ret_full_and_boundary),
        cmocka_unit_test(test_dsn_boundary_length),
        cmocka_unit_test(test_dsn_refusals_and_folding),
        cmocka_unit_test(test_header_len),
        cmocka_unit_test(test_dsn_delayed),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
