/*
 * fuzz_dsn.c - libFuzzer driver for the DSN builder (delivery/bounce.c, RFC
 * 3464 / RFC 6522): the remote reply, the ORCPT and ENVID a client gave,
 * the reason text and the original message are what others control.
 *
 * Input: byte 0 holds flags (bit 0 RET=FULL, bit 1 a delay warning, bits
 * 2-3 the number of recipients less one, bit 4 a reporting host name of
 * the longest kind); then fields separated by 0xFF:
 * sender, envid, then per recipient addr, orcpt, status, remote MTA, diag,
 * reason; whatever follows is the original message. Addresses, ENVID,
 * ORCPT, the status and the MX name are made printable and cut to their
 * limits first (RFC 5321 4.5.3.1.3 paths, RFC 3461 xtext, a valid host
 * name), as the SMTP server and the resolver guarantee for them.
 *
 * Invariants checked: the DSN has CRLF line ends only and no NUL; every
 * line before the original part fits RFC 5322's 998 octets; the MIME
 * boundary (RFC 2046 5.1.1: at most 70 characters) does not occur in the
 * original.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deliver_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NFIELDS_MAX (2 + 4 * 6)
/* RFC 5321 4.5.3.1.3: a path is at most 256 octets with its brackets. */
#define ADDR_MAX 254

/* 253 octets, the longest name DNS allows (RFC 1035 2.3.4). */
#define LABEL63 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define LABEL61 "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define LONG_HOST LABEL63 "." LABEL63 "." LABEL63 "." LABEL61

/* The next field up to 0xFF (or the end), as a NUL-terminated copy of at
 * most max octets. */
static char *field(const uint8_t **p, const uint8_t *end, bool printable, size_t max)
{
    const uint8_t *ff = memchr(*p, 0xFF, (size_t)(end - *p));
    size_t n = (size_t)((ff ? ff : end) - *p);
    const uint8_t *next = ff ? ff + 1 : end;
    if (n > max)
        n = max;
    char *s = malloc(n + 1);
    if (!s)
        abort();
    for (size_t i = 0; i < n; i++) {
        char c = (char)(*p)[i];
        if (printable && ((unsigned char)c <= ' ' || (unsigned char)c >= 0x7f))
            c = 'x';
        s[i] = c;
    }
    s[n] = '\0';
    *p = next;
    return s;
}

static bool contains(const char *hay, size_t n, const char *needle, size_t k)
{
    for (size_t i = 0; k && i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0)
            return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    size_t nrcpt = 1 + ((flags >> 2) & 3);
    const uint8_t *p = data + 1, *end = data + size;

    char *fields[NFIELDS_MAX];
    size_t nf = 0;
    fields[nf++] = field(&p, end, true, ADDR_MAX); /* sender */
    fields[nf++] = field(&p, end, true, 100);      /* envid */
    struct dsn_rcpt rcpts[4];
    for (size_t i = 0; i < nrcpt; i++) {
        struct dsn_rcpt *r = &rcpts[i];
        memset(r, 0, sizeof(*r));
        r->addr = fields[nf++] = field(&p, end, true, ADDR_MAX);
        r->orcpt = fields[nf++] = field(&p, end, true, 500);
        r->status = fields[nf++] = field(&p, end, true, 11);
        r->remote_mta = fields[nf++] = field(&p, end, true, 253);
        r->diag = fields[nf++] = field(&p, end, false, SIZE_MAX);
        r->reason = fields[nf++] = field(&p, end, false, SIZE_MAX);
        r->last_attempt_ms = (int64_t)i * 1000;
    }
    struct dsn_msg d;
    memset(&d, 0, sizeof(d));
    d.reporting_mta = (flags & 16) ? LONG_HOST : "relay.example";
    d.queue_id = "06H2WTM4SMK9G6P1";
    d.sender = fields[0];
    d.envid = fields[1];
    d.arrival_ms = 1764500000000;
    d.now_ms = 1764500100000;
    d.ret_full = flags & 1;
    d.delayed = flags & 2;
    /* An exact-size copy of the original, so ASan sees any overread. */
    size_t olen = (size_t)(end - p);
    char *orig = malloc(olen ? olen : 1);
    if (!orig)
        abort();
    memcpy(orig, p, olen);
    d.original = (struct view){orig, olen};
    d.rcpts = rcpts;
    d.nrcpt = nrcpt;

    struct buf out;
    buf_init(&out, 1 << 20);
    int rc = dsn_build(&d, &out);
    if (!d.sender[0]) {
        if (rc != ERR_INVAL)
            abort();
    } else if (rc != 0 && rc != ERR_TOOBIG) {
        abort();
    }
    if (rc == 0) {
        const char *o = out.data;
        size_t n = out.len;
        /* The boundary, from the Content-Type parameter on its own line. */
        static const char key[] = "\r\n\tboundary=\"";
        const size_t kl = sizeof(key) - 1;
        const char *b = NULL;
        size_t bl = 0;
        for (size_t i = 0; i + kl <= n; i++) {
            if (memcmp(o + i, key, kl) == 0) {
                b = o + i + kl;
                const char *q = memchr(b, '"', n - i - kl);
                if (!q)
                    abort();
                bl = (size_t)(q - b);
                break;
            }
        }
        if (!b || bl == 0 || bl > 70 || contains(orig, olen, b, bl))
            abort();
        /* The original part starts after the third delimiter line. */
        size_t delims = 0, col = 0;
        for (size_t i = 0; i < n; i++) {
            if (o[i] == '\0')
                abort();
            if (o[i] == '\r' && (i + 1 >= n || o[i + 1] != '\n'))
                abort();
            if (o[i] == '\n') {
                if (i == 0 || o[i - 1] != '\r')
                    abort();
                col = 0;
                continue;
            }
            if (col == 0 && i + 2 + bl <= n && o[i] == '-' && o[i + 1] == '-' &&
                memcmp(o + i + 2, b, bl) == 0)
                delims++;
            if (o[i] != '\r' && ++col > 998 && delims < 3)
                abort();
        }
        if (delims != 4)
            abort();
    }
    buf_free(&out);
    free(orig);
    for (size_t i = 0; i < nf; i++)
        free(fields[i]);
    return 0;
}
