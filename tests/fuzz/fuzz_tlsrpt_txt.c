/*
 * fuzz_tlsrpt_txt.c - libFuzzer driver for the TLS-RPT TXT record parser
 * (RFC 8460 3): the input is a TXT answer, one record per line. Selection
 * and parsing either give 1..TLSRPT_RUA_MAX mailto:/https: URIs, each
 * NUL-terminated, visible ASCII and unique, or an error; never a crash or
 * an overread. Every mailto: URI found goes through tlsrpt_mailto_address.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_record(const struct tlsrpt_record *r)
{
    if (r->n_rua < 1 || r->n_rua > TLSRPT_RUA_MAX)
        abort();
    for (size_t i = 0; i < r->n_rua; i++) {
        size_t n = strnlen(r->rua[i], TLSRPT_URI_MAX);
        if (n == TLSRPT_URI_MAX || n == 0)
            abort();
        if (strncasecmp(r->rua[i], "mailto:", 7) != 0 && strncasecmp(r->rua[i], "https://", 8) != 0)
            abort();
        for (size_t k = 0; k < n; k++)
            if ((unsigned char)r->rua[i][k] <= 0x20 || (unsigned char)r->rua[i][k] >= 0x7f ||
                r->rua[i][k] == ',' || r->rua[i][k] == ';' || r->rua[i][k] == '!')
                abort();
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->rua[i], r->rua[j]) == 0)
                abort();
        char addr[256];
        if (tlsrpt_mailto_address(r->rua[i], addr, sizeof(addr)) == 0 && !strchr(addr, '@'))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *recs[16];
    size_t lens[16];
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= size && n < 16; i++) {
        if (i == size || data[i] == '\n') {
            /* Each record gets its own exact-size copy so ASan sees overreads. */
            char *r = malloc(i - start ? i - start : 1);
            if (!r)
                break;
            memcpy(r, data + start, i - start);
            recs[n] = r;
            lens[n] = i - start;
            n++;
            start = i + 1;
        }
    }
    static struct tlsrpt_record rec;
    char why[128];
    for (size_t i = 0; i < n; i++) {
        if (tlsrpt_txt_parse(recs[i], lens[i], &rec, why, sizeof(why)) == 0) {
            check_record(&rec);
            if (!tlsrpt_txt_is_tlsrpt(recs[i], lens[i]))
                abort();
        }
    }
    if (tlsrpt_txt_select(recs, lens, n, &rec, why, sizeof(why)) == 0)
        check_record(&rec);
    for (size_t i = 0; i < n; i++)
        free((void *)recs[i]);
    return 0;
}
