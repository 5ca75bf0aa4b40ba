/*
 * fuzz_sts_txt.c - libFuzzer driver for the MTA-STS TXT record parser (RFC
 * 8461 3.1): the input is a TXT answer, one record per line; selection and
 * parsing either give an id of 1..32 letters and digits or an error, never
 * a crash or an overread.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_id(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > POLICY_ID_MAX)
        abort();
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
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
    char id[POLICY_ID_MAX + 1];
    char why[128];
    for (size_t i = 0; i < n; i++) {
        if (policy_txt_parse(recs[i], lens[i], id, why, sizeof(why)) == 0) {
            check_id(id);
            if (!policy_txt_is_sts(recs[i], lens[i]))
                abort();
        }
    }
    if (policy_txt_select(recs, lens, n, id, why, sizeof(why)) == 0)
        check_id(id);
    for (size_t i = 0; i < n; i++)
        free((void *)recs[i]);
    return 0;
}
