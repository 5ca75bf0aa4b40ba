/*
 * fuzz_maps.c - libFuzzer driver for the routing tables' parser
 * (transport_maps, smtp_sasl_password_maps, smtpd_sender_login_maps,
 * destination_limits): any file loads or is refused with FILE:LINE errors,
 * never crashes; whatever loads answers lookups of its own keys.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("map", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (write(fd, data, size) != (ssize_t)size || fchmod(fd, 0600) != 0) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    struct buf err;
    buf_init(&err, 1 << 20);

    struct conf_map *m = conf_transport_load(path, &err);
    if (!m && err.len == 0)
        abort(); /* a refusal always says why */
    const char *matched = NULL;
    const struct conf_transport *t = conf_transport_find(m, "a.b.example.test", &matched);
    if (t && (!matched || (t->kind != CONF_TRANSPORT_SMTP && !t->text)))
        abort();
    conf_map_free(m);

    buf_reset(&err);
    m = conf_sasl_passwords_load(path, &err);
    const char *u, *p;
    if (m && conf_sasl_find(m, "example.test", 25, true, &u, &p) == 0 && (!u || !p))
        abort();
    conf_map_free(m);

    buf_reset(&err);
    m = conf_sender_logins_load(path, &err);
    (void)conf_sender_login_ok(m, "user@example.test", "user");
    conf_map_free(m);

    buf_reset(&err);
    m = conf_dest_limits_load(path, &err);
    const struct conf_dest_limit *l = conf_dest_limit_find(m, "x.example.test");
    if (l && l->concurrency == 0 && l->rate_per_s == 0 && l->recipients == 0)
        abort(); /* an entry sets at least one limit */
    conf_map_free(m);

    buf_free(&err);
    close(fd);
    return 0;
}
