/*
 * fuzz_sts_overrides.c - libFuzzer driver for the tls_policy_file parser
 * (Postfix smtp_tls_policy_maps text syntax): any bytes load into a table
 * or give FILE:LINE errors, never a crash.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    struct buf err;
    buf_init(&err, 64 * 1024);
    struct policy_overrides *o = policy_overrides_load_mem("fuzz", text, size, &err);
    if (o) {
        struct tls_facts f;
        memset(&f, 0, sizeof(f));
        f.chain_ok = true;
        f.n_peer_names = f.n_peer_names_total = 1;
        str_copy(f.peer_names[0], "mx.example.com", sizeof(f.peer_names[0]));
        static const char *const doms[] = {"example.com", "a.example.com", "x.y.z"};
        for (size_t i = 0; i < 3; i++) {
            const struct policy_override *e = policy_override_find(o, doms[i]);
            if (e) {
                (void)policy_override_cert_ok(e, doms[i], "mx.example.com", &f);
                (void)policy_tls_requirement(NULL, e, "mx.example.com");
            }
        }
        policy_overrides_free(o);
    } else if (err.len == 0) {
        abort(); /* a refused table always says why */
    }
    buf_free(&err);
    free(text);
    return 0;
}
