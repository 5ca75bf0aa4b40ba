/*
 * fuzz_dane.c - libFuzzer driver for TLSA matching (tls_dane_verify): the
 * DER walk to a certificate's SubjectPublicKeyInfo, wolfSSL's certificate
 * and key decoding, and the DANE-TA chain walk, on hostile certificates.
 *
 * Input: byte 0 the number of records (0..3, mod 4); each record is usage,
 * selector, matching type, a length byte and that many data bytes; then
 * certificates, each a 2-byte big-endian length and its bytes (at most 4).
 * Checks: no crash, the result's text is a string, the status agrees with
 * the return value, a verified result names a record that exists.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t k = data[0] % 4, p = 1;
    struct tls_tlsa recs[3];
    for (size_t i = 0; i < k; i++) {
        if (size - p < 4)
            return 0;
        recs[i].usage = data[p];
        recs[i].selector = data[p + 1];
        recs[i].mtype = data[p + 2];
        recs[i].len = data[p + 3];
        p += 4;
        if (size - p < recs[i].len)
            return 0;
        recs[i].data = data + p;
        p += recs[i].len;
    }
    struct tls_der chain[4];
    size_t n = 0;
    while (n < 4 && size - p >= 2) {
        size_t len = (size_t)data[p] << 8 | data[p + 1];
        p += 2;
        if (size - p < len)
            len = size - p;
        chain[n].data = data + p;
        chain[n].len = len;
        p += len;
        n++;
    }
    static const char *const names[] = {"mx.dane.test", "dane.test"};
    struct tls_dane_result res;
    int rc = tls_dane_verify(recs, k, chain, n, names, 2, &res);
    if (memchr(res.text, '\0', sizeof(res.text)) == NULL)
        abort();
    if ((rc == 0) != (res.status == TLS_DANE_VERIFIED))
        abort();
    if (rc == 0 && (res.record < 0 || (size_t)res.record >= k))
        abort();
    (void)tls_dane_usable_count(recs, k);
    return 0;
}
