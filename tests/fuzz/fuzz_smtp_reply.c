/*
 * fuzz_smtp_reply.c - libFuzzer driver for the SMTP reply parser and the
 * DATA writer (smtp/reply.c, smtp/stuff.c).
 *
 * The input is split into lines at LF (a CR before it dropped) and fed to
 * the reply parser as a client would; after each complete reply it is
 * rendered as a log line. The same bytes also go through the DATA writer in
 * two different chunkings, whose outputs must be equal and wire-clean.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp.h"

static void check_wire(const char *w, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i] == '\0')
            abort();
        if (w[i] == '\r' && (i + 1 >= n || w[i + 1] != '\n'))
            abort();
        if (w[i] == '\n') {
            if (i == 0 || w[i - 1] != '\r')
                abort();
            col = 0;
        } else if (w[i] != '\r' && ++col > SMTP_LINE_MAX) {
            abort();
        }
    }
}

static void stuff(const uint8_t *data, size_t size, size_t chunk, struct buf *out)
{
    struct smtp_stuff s;
    smtp_stuff_init(&s);
    for (size_t off = 0; off < size; off += chunk) {
        size_t k = size - off < chunk ? size - off : chunk;
        if (smtp_stuff_feed(&s, (const char *)data + off, k, out) != 0)
            abort();
    }
    if (smtp_stuff_finish(&s, out) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct smtp_reply r;
    smtp_reply_init(&r);
    const char *p = (const char *)data;
    const char *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        size_t ln = n > 0 && p[n - 1] == '\r' ? n - 1 : n;
        int rc = smtp_reply_feed(&r, p, ln);
        if (rc == 0) {
            if (r.code < 200 || r.code > 599)
                abort();
            struct buf o;
            buf_init(&o, SMTP_REPLY_TEXT_MAX + 16);
            if (smtp_reply_oneline(&r, &o) != 0)
                abort();
            buf_free(&o);
            smtp_reply_reset(&r);
        } else if (rc < 0) {
            smtp_reply_reset(&r);
        }
        p += n + (nl ? 1 : 0);
    }
    smtp_reply_free(&r);

    struct buf a, b;
    buf_init(&a, 2 * size + 16);
    buf_init(&b, 2 * size + 16);
    stuff(data, size, size ? size : 1, &a);
    stuff(data, size, 3, &b);
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0)
        abort();
    check_wire(a.data, a.len);
    buf_free(&a);
    buf_free(&b);
    return 0;
}
