/*
 * fuzz_conf.c - libFuzzer driver for the configuration parser: any bytes as
 * a convoy.conf either build a snapshot or give errors, never a crash.
 */
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct buf errors;
    buf_init(&errors, 64 * 1024);
    struct conf *c = conf_load_mem("fuzz.conf", (const char *)data, size, &errors);
    if (c) {
        struct buf out;
        buf_init(&out, 1 << 20);
        for (size_t i = 0; i < CONF_NPARAMS; i++)
            conf_value_text(c, (enum conf_param_id)i, &out);
        buf_free(&out);
        conf_unref(c);
    }
    buf_free(&errors);
    return 0;
}
