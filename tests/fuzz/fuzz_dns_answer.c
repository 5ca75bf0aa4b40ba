/*
 * fuzz_dns_answer.c - libFuzzer driver for the DNS answer parser
 * (dns_parse_answer, RFC 1035 4.1) and the answer cache.
 *
 * Input: byte 0 picks the question type (MX, A, AAAA, TXT, TLSA, CNAME),
 * byte 1 bit 0 whether the expected name is given ("example.test") or taken
 * from the question; the rest is the DNS message. Checks the parser's
 * promises: bounded lists, sorted MX preferences, names within
 * DNS_NAME_MAX, TLSA data inside the message, a failure is always
 * classified; and that a cached copy of the message parses the same.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dns_int.h"

static const uint16_t types[] = {DNS_T_MX, DNS_T_A, DNS_T_AAAA, DNS_T_TXT, DNS_T_TLSA, DNS_T_CNAME};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint16_t qtype = types[data[0] % (sizeof(types) / sizeof(types[0]))];
    const char *qname = (data[1] & 1) ? "example.test" : NULL;
    data += 2;
    size -= 2;

    struct dns_result r;
    memset(&r, 0, sizeof(r));
    if (dns_parse_answer(data, size, qname, qtype, &r) != 0)
        abort();
    if (r.n_rr > DNS_MAX_RECORDS || r.n_mx > DNS_MAX_RECORDS || r.n_txt > DNS_MAX_RECORDS ||
        r.n_addr > DNS_MAX_RECORDS)
        abort();
    if (r.status == DNS_TEMPFAIL && !r.why)
        abort();
    /* TLSA data lies inside the kept copy of the message. */
    if (r.n_tlsa > DNS_MAX_RECORDS)
        abort();
    for (size_t i = 0; i < r.n_tlsa; i++)
        if (r.tlsa[i].data < r.raw || r.tlsa[i].data + r.tlsa[i].len > r.raw + r.raw_len)
            abort();
    for (size_t i = 0; i < r.n_mx; i++) {
        if (strlen(r.mx[i].host) > DNS_NAME_MAX)
            abort();
        if (i && r.status == DNS_OK && r.mx[i - 1].pref > r.mx[i].pref)
            abort();
    }
    for (size_t i = 0; i < r.n_txt; i++)
        if (r.txt[i].text[r.txt[i].len] != '\0')
            abort();
    for (size_t i = 0; i < r.n_rr; i++)
        if (r.rr[i].rdata < r.raw || r.rr[i].rdata + r.rr[i].rdlen > r.raw + r.raw_len)
            abort();

    /* Through the cache and back: the same classification. */
    if (r.name && r.status != DNS_TEMPFAIL) {
        struct dns_cache *c = dns_cache_new(4);
        const uint8_t *msg;
        size_t len;
        uint32_t left;
        if (c && dns_cache_put(c, r.name, qtype, data, size, 60, 0) == 0 &&
            dns_cache_get(c, r.name, qtype, 1000, &msg, &len, &left)) {
            struct dns_result r2;
            memset(&r2, 0, sizeof(r2));
            if (dns_parse_answer(msg, len, r.name, qtype, &r2) != 0)
                abort();
            if (r2.status != r.status || r2.n_rr != r.n_rr)
                abort();
            dns_result_clear(&r2);
        }
        dns_cache_free(c);
    }
    dns_result_clear(&r);
    return 0;
}
