/*
 * fuzz_pause_file.c - libFuzzer driver for the pause table's file
 * (<queue_directory>/pauses, read when convoyd starts): any input gives at
 * most max records, each with a domain that a pause may name (or "" for all
 * delivery), a start after 1970 and an end of 0 or after the start; and what
 * is read writes back and reads again to the same records.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deliver_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PAUSE_RECS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pause_rec r[PAUSE_RECS], again[PAUSE_RECS];
    size_t n = pause_file_parse((const char *)data, size, r, PAUSE_RECS, NULL, NULL);
    if (n > PAUSE_RECS)
        abort();
    for (size_t i = 0; i < n; i++) {
        if ((r[i].domain[0] && !pause_domain_ok(r[i].domain)) || r[i].since_ms <= 0 ||
            (r[i].until_ms && r[i].until_ms < r[i].since_ms))
            abort();
    }
    struct buf b;
    buf_init(&b, 1 << 20);
    if (pause_file_format(r, n, &b) != 0)
        abort();
    size_t m = pause_file_parse(b.data, b.len, again, PAUSE_RECS, NULL, NULL);
    if (m != n)
        abort();
    for (size_t i = 0; i < n; i++)
        if (strcmp(r[i].domain, again[i].domain) != 0 || r[i].since_ms != again[i].since_ms ||
            r[i].until_ms != again[i].until_ms)
            abort();
    buf_free(&b);
    return 0;
}
