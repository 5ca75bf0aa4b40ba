/*
 * http.c - the HTTP/1.1 response of an MTA-STS policy fetch, read with
 * http-parser (RFC 9112 framing: Content-Length, chunked, or until close).
 *
 * RFC 8461 3.3: only status 200 counts; a redirect (3xx) is never followed
 * and is a failure; the media type must be text/plain; the body is bounded
 * (64 KiB suggested); no HTTP caching is used (the fetcher sends no
 * conditional headers and this reader ignores caching headers).
 *
 * Invariants:
 *  - Memory is bounded: header names and values are capped (8 KiB each;
 *    only Content-Type is kept), the body by max_body.
 *  - Once a response fails, it stays failed; no callback of http-parser
 *    runs after a failure is recorded (each returns non-zero).
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>

#include "policy.h"

#define HDR_MAX 8192

struct policy_http {
    http_parser parser;
    http_parser_settings settings;
    size_t max_body;
    struct buf body;
    struct buf field; /* header name being read */
    struct buf value; /* header value being read */
    bool in_value;
    bool have_ct;
    char content_type[256];
    bool headers_done;
    bool post; /* the answer to a POST: any 2xx, any media type, body ignored */
    bool complete;
    int result; /* 0 running, 1 complete, < 0 failed */
    enum policy_failure failure;
    char why[256];
};

static int fail(struct policy_http *h, int rc, enum policy_failure f, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct policy_http *h, int rc, enum policy_failure f, const char *fmt, ...)
{
    if (h->result >= 0) {
        h->result = rc;
        h->failure = f;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(h->why, sizeof(h->why), fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A finished header line: keep only Content-Type (the first one). */
static int end_header(struct policy_http *h)
{
    if (h->field.len == 12 && view_eq_ci((struct view){h->field.data, 12}, "content-type")) {
        if (h->have_ct)
            return fail(h, ERR_INVAL, POLICY_FAIL_INVALID, "more than one Content-Type");
        h->have_ct = true;
        str_copy(h->content_type, h->value.data ? h->value.data : "", sizeof(h->content_type));
    }
    buf_reset(&h->field);
    buf_reset(&h->value);
    h->in_value = false;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct policy_http *h = p->data;
    if (h->in_value && end_header(h) != 0)
        return -1;
    if (buf_append(&h->field, at, n) != 0)
        return fail(h, ERR_PROTO, POLICY_FAIL_FETCH, "header name too long");
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct policy_http *h = p->data;
    h->in_value = true;
    if (buf_append(&h->value, at, n) != 0)
        return fail(h, ERR_PROTO, POLICY_FAIL_FETCH, "header value too long");
    return 0;
}

/* Is the media type text/plain? RFC 9110 8.3.1: type/subtype, optional
 * parameters after ';', case-insensitive, optional whitespace. */
static bool media_type_ok(const char *ct)
{
    const char *s = ct;
    while (*s == ' ' || *s == '\t')
        s++;
    const char *e = s;
    while (*e && *e != ';' && *e != ' ' && *e != '\t')
        e++;
    if (!view_eq_ci((struct view){s, (size_t)(e - s)}, "text/plain"))
        return false;
    while (*e == ' ' || *e == '\t')
        e++;
    return *e == '\0' || *e == ';';
}

static int on_headers_complete(http_parser *p)
{
    struct policy_http *h = p->data;
    if (h->in_value && end_header(h) != 0)
        return -1;
    h->headers_done = true;
    unsigned st = p->status_code;
    if (h->post) {
        /* RFC 8460 5.2: any 2xx is success. */
        if (st < 200 || st >= 300)
            return fail(h, ERR_PROTO, POLICY_FAIL_FETCH, "HTTP status %u", st);
        return 0;
    }
    if (st >= 300 && st < 400)
        /* RFC 8461 3.3: "HTTP 3xx redirects MUST NOT be followed". */
        return fail(h, ERR_PROTO, POLICY_FAIL_FETCH, "HTTP status %u (redirects are not followed)",
                    st);
    if (st != 200)
        return fail(h, ERR_PROTO, POLICY_FAIL_FETCH, "HTTP status %u", st);
    if (!h->have_ct)
        return fail(h, ERR_INVAL, POLICY_FAIL_INVALID, "no Content-Type (text/plain required)");
    if (!media_type_ok(h->content_type))
        return fail(h, ERR_INVAL, POLICY_FAIL_INVALID, "Content-Type \"%.100s\" is not text/plain",
                    h->content_type);
    /* A declared length over the bound fails before any body byte. */
    if ((p->flags & F_CHUNKED) == 0 && p->content_length != ULLONG_MAX &&
        p->content_length > h->max_body)
        return fail(h, ERR_TOOBIG, POLICY_FAIL_FETCH, "policy larger than %zu bytes", h->max_body);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct policy_http *h = p->data;
    if (h->post)
        return 0;
    if (buf_append(&h->body, at, n) != 0)
        return fail(h, ERR_TOOBIG, POLICY_FAIL_FETCH, "policy larger than %zu bytes", h->max_body);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct policy_http *h = p->data;
    h->complete = true;
    if (h->result == 0)
        h->result = 1;
    /* Stop here: anything after the response is ignored. */
    http_parser_pause(p, 1);
    return 0;
}

struct policy_http *policy_http_new(size_t max_body)
{
    struct policy_http *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    http_parser_init(&h->parser, HTTP_RESPONSE);
    h->parser.data = h;
    http_parser_settings_init(&h->settings);
    h->settings.on_header_field = on_header_field;
    h->settings.on_header_value = on_header_value;
    h->settings.on_headers_complete = on_headers_complete;
    h->settings.on_body = on_body;
    h->settings.on_message_complete = on_message_complete;
    h->max_body = max_body;
    buf_init(&h->body, max_body);
    buf_init(&h->field, HDR_MAX);
    buf_init(&h->value, HDR_MAX);
    return h;
}

struct policy_http *policy_http_new_post(void)
{
    struct policy_http *h = policy_http_new(1);
    if (h)
        h->post = true;
    return h;
}

void policy_http_free(struct policy_http *h)
{
    if (!h)
        return;
    buf_free(&h->body);
    buf_free(&h->field);
    buf_free(&h->value);
    free(h);
}

int policy_http_feed(struct policy_http *h, const char *data, size_t n)
{
    if (h->result != 0)
        return h->result;
    if (n == 0)
        return 0;
    size_t used = http_parser_execute(&h->parser, &h->settings, data, n);
    (void)used;
    if (h->result != 0)
        return h->result;
    enum http_errno e = HTTP_PARSER_ERRNO(&h->parser);
    if (e != HPE_OK && e != HPE_PAUSED) {
        fail(h, ERR_PROTO, POLICY_FAIL_FETCH, "bad HTTP response: %s", http_errno_description(e));
        return h->result;
    }
    return 0;
}

int policy_http_eof(struct policy_http *h)
{
    if (h->result != 0)
        return h->result;
    /* A zero-length execute tells http-parser the connection ended: a body
     * delimited by the close completes, anything else is truncated. */
    http_parser_execute(&h->parser, &h->settings, NULL, 0);
    if (h->result != 0)
        return h->result;
    enum http_errno e = HTTP_PARSER_ERRNO(&h->parser);
    if (e != HPE_OK && e != HPE_PAUSED && e != HPE_INVALID_EOF_STATE)
        fail(h, ERR_PROTO, POLICY_FAIL_FETCH, "bad HTTP response: %s", http_errno_description(e));
    else
        fail(h, ERR_PROTO, POLICY_FAIL_FETCH, "connection closed before the end of the response");
    return h->result;
}

struct view policy_http_body(const struct policy_http *h)
{
    return (struct view){h->body.data ? h->body.data : "", h->body.len};
}

int policy_http_status(const struct policy_http *h)
{
    return h->headers_done || h->parser.status_code ? (int)h->parser.status_code : 0;
}

const char *policy_http_why(const struct policy_http *h)
{
    return h->why;
}

enum policy_failure policy_http_failure(const struct policy_http *h)
{
    return h->failure;
}

int policy_http_parse_all(const char *data, size_t n, size_t max_body, struct buf *body, char *why,
                          size_t why_size)
{
    struct policy_http *h = policy_http_new(max_body);
    if (!h)
        return ERR_NOMEM;
    int rc = policy_http_feed(h, data, n);
    if (rc == 0)
        rc = policy_http_eof(h);
    if (rc == 1 && body) {
        struct view v = policy_http_body(h);
        buf_reset(body);
        if (buf_append(body, v.ptr, v.len) != 0)
            rc = ERR_TOOBIG;
    }
    if (why && why_size)
        str_copy(why, h->why, why_size);
    policy_http_free(h);
    return rc;
}
