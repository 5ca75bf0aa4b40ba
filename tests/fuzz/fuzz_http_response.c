/*
 * fuzz_http_response.c - libFuzzer driver for the reader of MTA-STS policy
 * responses (RFC 8461 3.3 via http-parser): any bytes, fed whole or in
 * pieces, end in an accepted body of at most the bound or an error, never
 * a crash; feeding in pieces never changes whether and what it accepts
 * (the reason for a refusal may differ: the first problem seen can depend
 * on where the pieces end).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY 4096

static int run(const uint8_t *data, size_t size, size_t step, struct buf *body)
{
    struct policy_http *h = policy_http_new(MAX_BODY);
    if (!h)
        return ERR_NOMEM;
    int rc = 0;
    for (size_t off = 0; off < size && rc == 0; off += step) {
        size_t n = size - off < step ? size - off : step;
        char *piece = malloc(n);
        if (!piece)
            break;
        memcpy(piece, data + off, n);
        rc = policy_http_feed(h, piece, n);
        free(piece);
    }
    if (rc == 0)
        rc = policy_http_eof(h);
    if (rc == 1) {
        struct view v = policy_http_body(h);
        if (v.len > MAX_BODY || policy_http_status(h) != 200)
            abort();
        buf_append(body, v.ptr, v.len);
    }
    policy_http_free(h);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] % 17 + 1;
    data++;
    size--;
    struct buf a, b;
    buf_init(&a, MAX_BODY);
    buf_init(&b, MAX_BODY);
    int ra = run(data, size, size ? size : 1, &a);
    int rb = run(data, size, step, &b);
    if ((ra == 1) != (rb == 1) || ra == 0 || rb == 0 || a.len != b.len ||
        (a.len && memcmp(a.data, b.data, a.len) != 0))
        abort();
    buf_free(&a);
    buf_free(&b);
    return 0;
}
