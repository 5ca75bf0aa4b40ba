/*
 * fuzz_dkim_headers.c - libFuzzer driver for the header parsing the DKIM
 * signer does on every accepted message (dkim/): splitting the header
 * section into fields, the From domain, both header canonicalizations, the
 * body hash, and the DKIM-Signature tag parser of verification (with a key
 * record, so the tag checks run). The input is a message; the first line,
 * when it starts with "K:", is the key record instead.
 *
 * Checked: no crash or overread (the message is an exact-size copy), every
 * field lies inside the message, a From domain is lower-case and has no
 * '@', relaxed canonical fields end with CRLF and have no CRLF inside, and
 * a message the signer signs (RFC 8463's Ed25519 key) verifies with the
 * signature put on top, whatever its header and body hold.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dkim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char key_pem[] = "-----BEGIN PRIVATE KEY-----\n"
                              "MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n"
                              "-----END PRIVATE KEY-----\n";
static const char key_record[] =
    "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/* Sign as the daemon does, prepend, verify: must pass. */
static void round_trip(const char *msg, size_t size, const struct dkim_headers *h)
{
    static struct dkim_key *key;
    if (!key) {
        struct buf err;
        buf_init(&err, 256);
        key = dkim_key_from_pem(key_pem, sizeof(key_pem) - 1, &err);
        buf_free(&err);
        if (!key)
            abort();
    }
    struct dkim_sign_opts o = {
        .domain = "example.org", .selector = "s", .key = key, .t = 1700000000};
    struct buf out, why;
    buf_init(&out, (1 << 20) + size);
    buf_init(&why, 1024);
    if (dkim_sign(&o, msg, size, h, &out, &why) == 0) {
        size_t sig_len = out.len;
        if (buf_append(&out, msg, size) == 0) {
            struct dkim_headers h2;
            if (dkim_headers_parse(out.data, out.len, &h2) == 0) {
                struct dkim_check c;
                dkim_check_verify(out.data, out.len, &h2, 0, key_record, 0, &c);
                if (c.result != DKIM_PASS || sig_len != h2.v[0].raw.len)
                    abort();
            }
            dkim_headers_free(&h2);
        }
    }
    buf_free(&out);
    buf_free(&why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *record = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    char rec[512];
    if (size > 2 && data[0] == 'K' && data[1] == ':') {
        const uint8_t *nl = memchr(data, '\n', size);
        size_t n = nl ? (size_t)(nl - data) : size;
        if (n - 2 < sizeof(rec)) {
            memcpy(rec, data + 2, n - 2);
            rec[n - 2] = '\0';
            record = strlen(rec) == n - 2 ? rec : NULL;
        }
        data += nl ? n + 1 : n;
        size -= nl ? n + 1 : n;
    }
    char *msg = malloc(size ? size : 1);
    if (!msg)
        return 0;
    memcpy(msg, data, size);
    struct dkim_headers h;
    if (dkim_headers_parse(msg, size, &h) == 0) {
        if (h.body_off > size)
            abort();
        char dom[256];
        if (dkim_from_domain(msg, &h, dom, sizeof(dom)) == 0) {
            for (const char *p = dom; *p; p++)
                if (*p == '@' || (*p >= 'A' && *p <= 'Z'))
                    abort();
            round_trip(msg, size, &h);
        }
        struct buf b;
        buf_init(&b, 1 << 20);
        for (size_t i = 0; i < h.n; i++) {
            const struct dkim_field *f = &h.v[i];
            if (f->raw.ptr < msg || f->raw.ptr + f->raw.len > msg + size ||
                f->name.len > f->raw.len)
                abort();
            buf_reset(&b);
            if (dkim_canon_header(DKIM_CANON_RELAXED, f->raw, &b) == 0) {
                if (b.len < 2 || memcmp(b.data + b.len - 2, "\r\n", 2) != 0)
                    abort();
                for (size_t k = 0; k + 2 < b.len; k++)
                    if (b.data[k] == '\r' && b.data[k + 1] == '\n')
                        abort();
            }
            buf_reset(&b);
            dkim_canon_header(DKIM_CANON_SIMPLE, f->raw, &b);
            if (view_eq_ci(f->name, "DKIM-Signature")) {
                struct dkim_check c;
                dkim_check_parse(msg, &h, i, &c);
                dkim_check_verify(msg, size, &h, i, record, 0, &c);
            }
        }
        buf_free(&b);
        uint8_t digest[32];
        dkim_body_hash(DKIM_CANON_RELAXED, msg + h.body_off, size - h.body_off, -1, digest, NULL);
        dkim_body_hash(DKIM_CANON_SIMPLE, msg + h.body_off, size - h.body_off, 7, digest, NULL);
    }
    dkim_headers_free(&h);
    free(msg);
    return 0;
}
