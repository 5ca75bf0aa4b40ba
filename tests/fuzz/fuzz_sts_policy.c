/*
 * fuzz_sts_policy.c - libFuzzer driver for the MTA-STS policy parser (RFC
 * 8461 3.2) and the MX matcher (4.1): any bytes either parse into a policy
 * that keeps its invariants or give a reason, never a crash.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy so ASan catches any read past the end. */
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    struct sts_policy p;
    char why[256];
    if (policy_parse(text, size, &p, why, sizeof(why)) == 0) {
        if (p.max_age > 31557600 || p.n_mx > POLICY_MX_MAX)
            abort();
        if (p.mode != POLICY_MODE_NONE && p.n_mx == 0)
            abort();
        for (size_t i = 0; i < p.n_mx; i++) {
            const char *m = p.mx[i];
            /* A plain pattern names itself; a wildcard names "x." + rest. */
            if (m[0] == '*') {
                char host[POLICY_NAME_MAX + 4] = "x";
                strncat(host, m + 1, sizeof(host) - 2);
                if (!policy_mx_matches(&p, host))
                    abort();
            } else if (!policy_mx_matches(&p, m)) {
                abort();
            }
        }
        struct sts_policy q;
        if (policy_sts_copy(&q, &p) == 0)
            policy_sts_clear(&q);
        const char *hosts[] = {"mx.example.com", "a.b.example.com", text[0] ? "x" : "y"};
        size_t keep[3];
        bool matches[3];
        if (policy_filter_mx(&p, hosts, 3, keep, matches) > 3)
            abort();
        (void)policy_tls_requirement(&p, NULL, "mx.example.com");
        policy_sts_clear(&p);
    } else if (p.mx || p.n_mx) {
        abort();
    }
    /* The matcher alone: the input split in two at the first NUL or '|'. */
    char *pat = malloc(size + 1);
    if (pat) {
        memcpy(pat, data, size);
        pat[size] = '\0';
        char *bar = strchr(pat, '|');
        const char *host = "mx.example.com";
        if (bar) {
            *bar = '\0';
            host = bar + 1;
        }
        (void)policy_pattern_matches(pat, host);
        free(pat);
    }
    free(text);
    return 0;
}
