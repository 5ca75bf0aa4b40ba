/*
 * fuzz_smtp_data.c - libFuzzer driver for the SMTP server's DATA/BDAT
 * reader. The first byte picks the mode (reject or normalize, DATA or
 * BDAT, whether the DATA command ended in CRLF) and a chunk size; the rest
 * is the client's bytes.
 *
 * Invariants checked (the SMTP smuggling rules):
 *  - the stored message has only CRLF line ends: no bare CR, no bare LF;
 *  - a message the reader accepts holds no NUL and no line over 998 octets;
 *  - DATA ends only right after "\r\n.\r\n" (or ".\r\n" at the very start
 *    when the DATA command ended in CRLF);
 *  - the result does not depend on how the input is cut into reads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server_parse.h"

struct result {
    long rc;
    size_t used;
    bool done;
    unsigned flags;
};

static struct result run(const char *p, size_t n, unsigned cfg, size_t step, struct buf *out)
{
    struct smtp_data *d = malloc(sizeof(*d));
    if (!d)
        abort();
    buf_reset(out);
    bool bdat = cfg & 2;
    smtp_data_init(d, (cfg & 1) ? SMTP_BARE_NORMALIZE : SMTP_BARE_REJECT, bdat, 1 << 16, !(cfg & 4),
                   out);
    d->fold = cfg & 0x80; /* fold long lines (the default of the server) */
    struct result r = {0, 0, false, 0};
    while (r.used < n && !d->done) {
        size_t k = n - r.used < step ? n - r.used : step;
        long got = smtp_data_feed(d, p + r.used, k);
        if (got < 0) {
            r.rc = got;
            break;
        }
        if ((size_t)got > k || ((size_t)got < k && !d->done))
            abort();
        r.used += (size_t)got;
    }
    if (bdat && r.rc == 0)
        r.rc = smtp_data_finish(d);
    r.done = d->done;
    r.flags = d->flags;
    free(d);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned cfg = data[0];
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    size_t step = 1 + ((cfg >> 3) % 17);
    struct buf a, b;
    buf_init(&a, 1 << 17);
    buf_init(&b, 1 << 17);
    struct result ra = run(p, n, cfg, n ? n : 1, &a);
    struct result rb = run(p, n, cfg, step, &b);
    /* After a bare CR/LF refusal the bytes consumed depend on the cut;
     * everything else must not. */
    if (ra.rc != rb.rc || (ra.rc == 0 && ra.used != rb.used) || ra.done != rb.done ||
        ra.flags != rb.flags || a.len != b.len || (a.len && memcmp(a.data, b.data, a.len) != 0))
        abort();
    /* Only CRLF line ends are ever stored. */
    for (size_t i = 0; i < a.len; i++) {
        if (a.data[i] == '\n' && (i == 0 || a.data[i - 1] != '\r'))
            abort();
        if (a.data[i] == '\r' && (i + 1 == a.len || a.data[i + 1] != '\n'))
            abort();
    }
    if (ra.rc == 0 && ra.flags == 0 && a.len && memchr(a.data, '\0', a.len))
        abort();
    /* Folding leaves no stored line longer than 998 octets. */
    if ((cfg & 0x80) && ra.flags == 0) {
        size_t col = 0;
        for (size_t i = 0; i < a.len; i++) {
            col = a.data[i] == '\n' ? 0 : col + 1;
            if (col > 999) /* 998 octets and the CR */
                abort();
        }
    }
    /* DATA ends only after CRLF . CRLF. */
    if (ra.done) {
        bool at_start = ra.used == 3 && !(cfg & 4);
        if (ra.used < 3 || memcmp(p + ra.used - 3, ".\r\n", 3) != 0)
            abort();
        if (!at_start && (ra.used < 5 || memcmp(p + ra.used - 5, "\r\n", 2) != 0))
            abort();
    }
    buf_free(&a);
    buf_free(&b);
    return 0;
}
