/*
 * wire.c - the DNS answer parser and classifier: a bounded reader of DNS
 * messages (RFC 1035 4.1) that turns an answer into a struct dns_result.
 *
 * Standards:
 *  - RFC 1035 4.1.1-4.1.4: header, question, resource records, name
 *    compression. RFC 1035 3.3.9 (MX), 3.3.14 (TXT), 3.4.1 (A), RFC 3596
 *    (AAAA), RFC 1035 3.3.13 (SOA).
 *  - RFC 2181 8: a TTL with the top bit set is taken as 0.
 *  - RFC 2308 5: negative TTL = min(SOA TTL, SOA MINIMUM); no SOA, no cache.
 *  - RFC 5321 5.1: CNAME chains followed from the question name; MX sorted
 *    by preference, equal preferences shuffled; no MX -> implicit MX.
 *  - RFC 7505 3: an MX whose exchange is the root is a null MX.
 *  - RFC 7208 3.3, RFC 8461 3.1: one TXT record's strings are concatenated.
 *  - RFC 4035 3.2.3 / RFC 6840 5.7: the AD bit of an answer is read (its
 *    trust is dns.c's business); queries carry AD, EDNS0 (RFC 6891) and DO
 *    (RFC 3225) when DNSSEC status is wanted.
 *  - RFC 6698 2.1: TLSA RDATA = usage, selector, matching type, data.
 *
 * Invariants: every read is checked against the message length before it is
 * made; a compression pointer must point strictly before the label sequence
 * that contains it, so every name decodes in bounded steps; a decoded name
 * is at most 255 octets on the wire and fits DNS_NAME_MAX in presentation
 * form; at most DNS_MAX_RECORDS records of the asked type are decoded and at
 * most MAX_SCAN records of a section are looked at.
 */
#include "dns_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "base.h"

/* Records of one section looked at; the rest of a huge answer is ignored. */
#define MAX_SCAN 512
/* CNAME links followed from the question name. */
#define MAX_CHAIN 16

enum {
    RCODE_NOERROR = 0,
    RCODE_FORMERR = 1,
    RCODE_SERVFAIL = 2,
    RCODE_NXDOMAIN = 3,
    RCODE_NOTIMP = 4,
    RCODE_REFUSED = 5
};

/* Header flags (RFC 1035 4.1.1, RFC 4035 3.2.3 for AD). */
#define FLAG_RD 0x0100
#define FLAG_AD 0x0020
/* EDNS0 (RFC 6891 6.1.2): the OPT pseudo-record and the DO bit (RFC 3225)
 * in its TTL field; 1232 octets avoid IP fragmentation (the DNS flag day
 * 2020 value). */
#define T_OPT 41
#define EDNS_UDP_SIZE 1232
#define EDNS_DO 0x8000

const char *dns_status_name(enum dns_status s)
{
    switch (s) {
    case DNS_OK:
        return "ok";
    case DNS_IMPLICIT_MX:
        return "implicit-mx";
    case DNS_NULL_MX:
        return "null-mx";
    case DNS_NXDOMAIN:
        return "nxdomain";
    case DNS_NODATA:
        return "nodata";
    case DNS_TEMPFAIL:
        return "tempfail";
    case DNS_INVALID:
        return "invalid";
    }
    return "unknown";
}

bool dns_status_permanent(enum dns_status s)
{
    return s == DNS_NULL_MX || s == DNS_NXDOMAIN || s == DNS_NODATA || s == DNS_INVALID;
}

void dns_addr_format(const struct dns_addr *a, char *out, size_t size)
{
    if (!size)
        return;
    if (!inet_ntop(a->family == AF_INET6 ? AF_INET6 : AF_INET, a->bytes, out, (socklen_t)size))
        out[0] = '\0';
}

bool dns_name_valid(const char *name)
{
    return host_name_ok(name, strlen(name), HOST_NAME_TRAILING_DOT | HOST_NAME_DNS);
}

bool dns_name_eq(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    if (na > 1 && a[na - 1] == '.')
        na--;
    if (nb > 1 && b[nb - 1] == '.')
        nb--;
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
            return false;
    return true;
}

bool dns_is_ip_literal(const char *s)
{
    char tmp[64];
    uint8_t bin[16];
    size_t n = strlen(s);
    if (n >= sizeof(tmp))
        return false;
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        memcpy(tmp, s + 1, n - 2);
        tmp[n - 2] = '\0';
        /* RFC 5321 4.1.3 "IPv6:" tag inside the brackets. */
        if (strncasecmp(tmp, "IPv6:", 5) == 0)
            memmove(tmp, tmp + 5, strlen(tmp + 5) + 1);
    } else {
        memcpy(tmp, s, n + 1);
    }
    return inet_pton(AF_INET, tmp, bin) == 1 || inet_pton(AF_INET6, tmp, bin) == 1;
}

void dns_result_fail(struct dns_result *r, enum dns_status status, int err, const char *why)
{
    r->status = status;
    r->err = err;
    r->why = why;
    r->ttl = 0;
}

void dns_result_clear(struct dns_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_mx; i++)
        free(r->mx[i].host);
    for (size_t i = 0; i < r->n_txt; i++)
        free(r->txt[i].text);
    free(r->mx);
    free(r->txt);
    free(r->tlsa);
    free(r->addr);
    free(r->rr);
    free(r->raw);
    free(r->name);
    free(r->cname);
    memset(r, 0, sizeof(*r));
}

/* ---- MX ordering ----------------------------------------------------------- */

void dns_mx_sort(struct dns_mx *mx, size_t n, uint32_t (*rnd)(void *), void *rnd_arg)
{
    /* RFC 5321 5.1: equal preferences in random order. Shuffle, then a
     * stable sort by preference keeps the shuffled order among equals. */
    for (size_t i = n; i > 1; i--) {
        size_t j = rnd(rnd_arg) % i;
        struct dns_mx t = mx[i - 1];
        mx[i - 1] = mx[j];
        mx[j] = t;
    }
    for (size_t i = 1; i < n; i++) {
        struct dns_mx t = mx[i];
        size_t j = i;
        while (j > 0 && mx[j - 1].pref > t.pref) {
            mx[j] = mx[j - 1];
            j--;
        }
        mx[j] = t;
    }
}

/* xorshift64*, seeded from the kernel per answer: only for shuffling. */
static uint32_t xs_next(void *arg)
{
    uint64_t *s = arg;
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

static uint64_t xs_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
        s = (uint64_t)time_mono_ms() ^ ((uint64_t)(uintptr_t)&s << 16);
    return s ? s : 0x9E3779B97F4A7C15ULL;
}

/* ---- the reader ------------------------------------------------------------ */

struct msg {
    const uint8_t *p;
    size_t len;
};

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* RFC 2181 8: the top bit set means 0. */
static uint32_t ttl_value(uint32_t t)
{
    return (t & 0x80000000u) ? 0 : t;
}

/*
 * Decode the name at *pos into presentation form in out (DNS_NAME_MAX + 1
 * bytes; may be NULL to only skip). *pos moves past the name as it stands at
 * *pos (a pointer counts two bytes). The root is ".".
 */
static int read_name(const struct msg *m, size_t *pos, char *out)
{
    size_t p = *pos, end = 0, limit = *pos, o = 0, wire = 1;
    bool jumped = false;
    for (;;) {
        if (p >= m->len)
            return ERR_PROTO;
        uint8_t l = m->p[p];
        if ((l & 0xC0) == 0xC0) {
            if (p + 1 >= m->len)
                return ERR_PROTO;
            size_t target = ((size_t)(l & 0x3F) << 8) | m->p[p + 1];
            if (!jumped) {
                end = p + 2;
                jumped = true;
            }
            /* Strictly backwards from the sequence being read: no loops. */
            if (target >= limit)
                return ERR_PROTO;
            limit = target;
            p = target;
            continue;
        }
        if (l & 0xC0) /* RFC 6891 extended label types: not in answers we use */
            return ERR_PROTO;
        p++;
        if (l == 0)
            break;
        if (l > m->len - p)
            return ERR_PROTO;
        wire += (size_t)l + 1;
        if (wire > 255)
            return ERR_PROTO;
        if (out) {
            if (o > 0)
                out[o++] = '.';
            for (size_t i = 0; i < l; i++) {
                unsigned char c = m->p[p + i];
                if (c == '.' || c == '\\') {
                    out[o++] = '\\';
                    out[o++] = (char)c;
                } else if (c <= ' ' || c >= 0x7f) {
                    out[o++] = '\\';
                    out[o++] = (char)('0' + c / 100);
                    out[o++] = (char)('0' + c / 10 % 10);
                    out[o++] = (char)('0' + c % 10);
                } else {
                    out[o++] = (char)c;
                }
            }
        }
        p += l;
    }
    if (!jumped)
        end = p;
    if (out) {
        if (o == 0)
            out[o++] = '.';
        out[o] = '\0';
    }
    *pos = end;
    return 0;
}

/* One resource record's position. */
struct rrpos {
    size_t owner; /* offset of the owner name */
    uint16_t type;
    uint16_t cls;
    uint32_t ttl;
    size_t rdata;
    uint16_t rdlen;
};

/* Read count records from *pos; keep the first MAX_SCAN in v (may be NULL). */
static int read_section(const struct msg *m, size_t *pos, unsigned count, struct rrpos *v,
                        size_t *nv)
{
    size_t kept = 0;
    for (unsigned i = 0; i < count; i++) {
        size_t owner = *pos;
        int rc = read_name(m, pos, NULL);
        if (rc)
            return rc;
        if (m->len - *pos < 10)
            return ERR_PROTO;
        const uint8_t *h = m->p + *pos;
        uint16_t rdlen = rd16(h + 8);
        if ((size_t)rdlen > m->len - *pos - 10)
            return ERR_PROTO;
        if (v && kept < MAX_SCAN) {
            v[kept].owner = owner;
            v[kept].type = rd16(h);
            v[kept].cls = rd16(h + 2);
            v[kept].ttl = ttl_value(rd32(h + 4));
            v[kept].rdata = *pos + 10;
            v[kept].rdlen = rdlen;
            kept++;
        }
        *pos += 10 + (size_t)rdlen;
    }
    if (nv)
        *nv = kept;
    return 0;
}

/* Read a name that must fill exactly [start, start + len) of the message
 * (names inside RDATA may still point elsewhere). */
static int read_rdata_name(const struct msg *m, size_t start, size_t len, char *out, size_t *after)
{
    /* Decode against a message cut at the end of the RDATA, so a name can
     * not run past its record; pointers still reach earlier bytes. */
    struct msg cut = {m->p, start + len};
    size_t pos = start;
    int rc = read_name(&cut, &pos, out);
    if (rc)
        return rc;
    if (after)
        *after = pos;
    else if (pos != start + len)
        return ERR_PROTO;
    return 0;
}

static int owner_is(const struct msg *m, const struct rrpos *r, const char *name, char *tmp)
{
    size_t pos = r->owner;
    if (read_name(m, &pos, tmp))
        return 0;
    return dns_name_eq(tmp, name);
}

/* RFC 2308 5: the negative TTL from the SOA in the authority section. */
static uint32_t negative_ttl(const struct msg *m, const struct rrpos *ns, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ns[i].type != DNS_T_SOA || ns[i].cls != 1)
            continue;
        size_t after;
        if (read_rdata_name(m, ns[i].rdata, ns[i].rdlen, NULL, &after))
            continue;
        if (read_rdata_name(m, after, ns[i].rdata + ns[i].rdlen - after, NULL, &after))
            continue;
        if (ns[i].rdata + ns[i].rdlen - after != 20)
            continue;
        uint32_t minimum = ttl_value(rd32(m->p + after + 16));
        return minimum < ns[i].ttl ? minimum : ns[i].ttl;
    }
    return 0;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

static void fail_proto(struct dns_result *r, const char *why)
{
    dns_result_fail(r, DNS_TEMPFAIL, ERR_PROTO, why);
}

/* Decode one record of the asked type into the result's lists. */
static int decode_record(const struct msg *m, const struct rrpos *rr, struct dns_result *out,
                         char *tmp)
{
    const uint8_t *rd = m->p + rr->rdata;
    switch (rr->type) {
    case DNS_T_A:
    case DNS_T_AAAA: {
        size_t want = rr->type == DNS_T_A ? 4 : 16;
        if (rr->rdlen != want)
            return ERR_PROTO;
        struct dns_addr *a = &out->addr[out->n_addr++];
        memset(a, 0, sizeof(*a));
        a->family = rr->type == DNS_T_A ? AF_INET : AF_INET6;
        memcpy(a->bytes, rd, want);
        return 0;
    }
    case DNS_T_MX: {
        if (rr->rdlen < 3)
            return ERR_PROTO;
        if (read_rdata_name(m, rr->rdata + 2, rr->rdlen - 2u, tmp, NULL))
            return ERR_PROTO;
        char *h = dup_str(tmp);
        if (!h)
            return ERR_NOMEM;
        out->mx[out->n_mx].pref = rd16(rd);
        out->mx[out->n_mx].host = h;
        out->n_mx++;
        return 0;
    }
    case DNS_T_TXT: {
        /* RFC 1035 3.3.14: one or more <character-string>s filling RDATA. */
        if (rr->rdlen == 0)
            return ERR_PROTO;
        size_t total = 0, i = 0;
        while (i < rr->rdlen) {
            size_t l = rd[i];
            if (l > (size_t)rr->rdlen - i - 1)
                return ERR_PROTO;
            total += l;
            i += 1 + l;
        }
        char *t = malloc(total + 1);
        if (!t)
            return ERR_NOMEM;
        size_t o = 0;
        for (i = 0; i < rr->rdlen; i += 1 + (size_t)rd[i]) {
            memcpy(t + o, rd + i + 1, rd[i]);
            o += rd[i];
        }
        t[o] = '\0';
        out->txt[out->n_txt].text = t;
        out->txt[out->n_txt].len = o;
        out->n_txt++;
        return 0;
    }
    case DNS_T_TLSA: {
        /* RFC 6698 2.1. A record too short for its fixed fields is kept as
         * unusable rather than failing the whole RRset: the other records
         * may still be usable (RFC 7671 4.1 treats such records alike). */
        struct dns_tlsa *t = &out->tlsa[out->n_tlsa++];
        if (rr->rdlen < 3) {
            t->usage = t->selector = t->mtype = 255;
            t->data = rd;
            t->len = 0;
            return 0;
        }
        t->usage = rd[0];
        t->selector = rd[1];
        t->mtype = rd[2];
        t->data = rd + 3;
        t->len = rr->rdlen - 3u;
        return 0;
    }
    default:
        return 0;
    }
}

static int alloc_lists(struct dns_result *out, uint16_t qtype, size_t n)
{
    if (n == 0)
        return 0;
    out->rr = calloc(n, sizeof(*out->rr));
    if (!out->rr)
        return ERR_NOMEM;
    if (qtype == DNS_T_MX)
        out->mx = calloc(n, sizeof(*out->mx));
    else if (qtype == DNS_T_A || qtype == DNS_T_AAAA)
        out->addr = calloc(n, sizeof(*out->addr));
    else if (qtype == DNS_T_TXT)
        out->txt = calloc(n, sizeof(*out->txt));
    else if (qtype == DNS_T_TLSA)
        out->tlsa = calloc(n, sizeof(*out->tlsa));
    else
        return 0;
    if (!out->mx && !out->addr && !out->txt && !out->tlsa)
        return ERR_NOMEM;
    return 0;
}

/* RFC 7505 and RFC 5321 5.1 on a decoded MX list. */
static int classify_mx(struct dns_result *out)
{
    size_t nulls = 0;
    for (size_t i = 0; i < out->n_mx; i++)
        if (strcmp(out->mx[i].host, ".") == 0)
            nulls++;
    if (nulls == out->n_mx) {
        /* RFC 7505 3: "MX 0 ." (a domain must publish no other MX). A lone
         * root exchange is taken as null MX whatever its preference. */
        out->status = DNS_NULL_MX;
        out->why = "null MX (RFC 7505)";
        return 0;
    }
    if (nulls) {
        /* A null MX among real ones breaks RFC 7505 3; the usable hosts
         * win, as they would for a sender that ignores the root target. */
        size_t k = 0;
        for (size_t i = 0; i < out->n_mx; i++) {
            if (strcmp(out->mx[i].host, ".") == 0)
                free(out->mx[i].host);
            else
                out->mx[k++] = out->mx[i];
        }
        out->n_mx = k;
    }
    uint64_t seed = xs_seed();
    dns_mx_sort(out->mx, out->n_mx, xs_next, &seed);
    return 0;
}

static int implicit_mx(struct dns_result *out)
{
    /* RFC 5321 5.1: no MX -> the name itself (after a CNAME, the canonical
     * name, "processed as if it were the initial name"), preference 0. */
    out->mx = calloc(1, sizeof(*out->mx));
    if (!out->mx)
        return ERR_NOMEM;
    out->mx[0].host = dup_str(out->cname ? out->cname : out->name);
    if (!out->mx[0].host)
        return ERR_NOMEM;
    size_t n = strlen(out->mx[0].host);
    if (n > 1 && out->mx[0].host[n - 1] == '.')
        out->mx[0].host[n - 1] = '\0';
    out->mx[0].pref = 0;
    out->n_mx = 1;
    out->status = DNS_IMPLICIT_MX;
    out->why = "no MX records: implicit MX (RFC 5321 5.1)";
    return 0;
}

int dns_parse_answer(const uint8_t *msgp, size_t len, const char *qname, uint16_t qtype,
                     struct dns_result *out)
{
    char tmp[DNS_NAME_MAX + 1], cur[DNS_NAME_MAX + 1];
    struct msg m = {msgp, len};
    out->qtype = qtype;
    out->status = DNS_TEMPFAIL;
    out->err = 0;
    if (qname && !(out->name = dup_str(qname)))
        return ERR_NOMEM;
    if (len) {
        out->raw = malloc(len);
        if (!out->raw)
            return ERR_NOMEM;
        memcpy(out->raw, msgp, len);
        out->raw_len = len;
        /* Every pointer into the message below refers to the copy. */
        m.p = out->raw;
    }

    if (len < 12) {
        fail_proto(out, "short DNS message");
        return 0;
    }
    uint16_t flags = rd16(m.p + 2);
    unsigned qd = rd16(m.p + 4), an = rd16(m.p + 6), ns = rd16(m.p + 8);
    /* RFC 4035 3.2.3: AD says the resolver validated every RRset in the
     * answer and authority sections. Whether to believe it is the
     * resolver's decision (dns.c). */
    out->ad = (flags & FLAG_AD) != 0;
    if (!(flags & 0x8000) || ((flags >> 11) & 0xF) != 0) {
        fail_proto(out, "not a DNS answer");
        return 0;
    }
    if (flags & 0x0200) {
        fail_proto(out, "truncated DNS answer");
        return 0;
    }
    if (qd != 1) {
        fail_proto(out, "DNS answer without one question");
        return 0;
    }
    size_t pos = 12;
    if (read_name(&m, &pos, tmp) || len - pos < 4) {
        fail_proto(out, "malformed DNS question");
        return 0;
    }
    if (rd16(m.p + pos) != qtype || rd16(m.p + pos + 2) != 1 ||
        (qname && !dns_name_eq(tmp, qname))) {
        fail_proto(out, "DNS answer to another question");
        return 0;
    }
    if (!out->name && !(out->name = dup_str(tmp)))
        return ERR_NOMEM;
    pos += 4;

    switch (flags & 0xF) {
    case RCODE_NOERROR:
    case RCODE_NXDOMAIN:
        break;
    case RCODE_SERVFAIL:
        dns_result_fail(out, DNS_TEMPFAIL, ERR_DNS, "SERVFAIL");
        out->servfail = true;
        return 0;
    case RCODE_REFUSED:
        dns_result_fail(out, DNS_TEMPFAIL, ERR_DNS, "REFUSED");
        return 0;
    case RCODE_FORMERR:
        dns_result_fail(out, DNS_TEMPFAIL, ERR_DNS, "FORMERR");
        return 0;
    case RCODE_NOTIMP:
        dns_result_fail(out, DNS_TEMPFAIL, ERR_DNS, "NOTIMP");
        return 0;
    default:
        dns_result_fail(out, DNS_TEMPFAIL, ERR_DNS, "DNS error rcode");
        return 0;
    }

    static _Thread_local struct rrpos ansv[MAX_SCAN], nsv[MAX_SCAN];
    size_t n_ans = 0, n_ns = 0;
    if (read_section(&m, &pos, an, ansv, &n_ans) || read_section(&m, &pos, ns, nsv, &n_ns)) {
        fail_proto(out, "malformed DNS answer");
        return 0;
    }

    /* Follow the CNAME chain from the question name (RFC 1034 3.6.2). */
    str_copy(cur, out->name, sizeof(cur));
    uint32_t ttl = UINT32_MAX;
    bool followed = false;
    for (int hop = 0; hop < MAX_CHAIN && qtype != DNS_T_CNAME; hop++) {
        bool found = false;
        for (size_t i = 0; i < n_ans; i++) {
            if (ansv[i].type != DNS_T_CNAME || ansv[i].cls != 1 ||
                !owner_is(&m, &ansv[i], cur, tmp))
                continue;
            if (read_rdata_name(&m, ansv[i].rdata, ansv[i].rdlen, tmp, NULL)) {
                fail_proto(out, "malformed CNAME record");
                return 0;
            }
            if (dns_name_eq(tmp, cur))
                break; /* a CNAME to itself: stop here */
            str_copy(cur, tmp, sizeof(cur));
            if (ansv[i].ttl < ttl)
                ttl = ansv[i].ttl;
            found = followed = true;
            break;
        }
        if (!found)
            break;
    }
    if (followed && !(out->cname = dup_str(cur)))
        return ERR_NOMEM;

    if ((flags & 0xF) == RCODE_NXDOMAIN) {
        out->status = DNS_NXDOMAIN;
        out->err = ERR_NOTFOUND;
        out->why = "NXDOMAIN";
        out->ttl = negative_ttl(&m, nsv, n_ns);
        return 0;
    }

    size_t n_match = 0;
    for (size_t i = 0; i < n_ans; i++)
        if (ansv[i].type == qtype && ansv[i].cls == 1 && owner_is(&m, &ansv[i], cur, tmp))
            n_match++;
    if (n_match > DNS_MAX_RECORDS)
        n_match = DNS_MAX_RECORDS;
    if (alloc_lists(out, qtype, n_match))
        return ERR_NOMEM;
    for (size_t i = 0; i < n_ans && out->n_rr < n_match; i++) {
        if (ansv[i].type != qtype || ansv[i].cls != 1 || !owner_is(&m, &ansv[i], cur, tmp))
            continue;
        int rc = decode_record(&m, &ansv[i], out, tmp);
        if (rc == ERR_NOMEM)
            return rc;
        if (rc) {
            fail_proto(out, "malformed DNS record");
            return 0;
        }
        struct dns_rr *r = &out->rr[out->n_rr++];
        r->type = ansv[i].type;
        r->ttl = ansv[i].ttl;
        r->rdata = m.p + ansv[i].rdata;
        r->rdlen = ansv[i].rdlen;
        if (r->ttl < ttl)
            ttl = r->ttl;
    }

    if (out->n_rr == 0) {
        out->ttl = negative_ttl(&m, nsv, n_ns);
        if (qtype == DNS_T_MX)
            return implicit_mx(out);
        out->status = DNS_NODATA;
        out->err = ERR_NOTFOUND;
        out->why = "no records of this type";
        return 0;
    }
    out->status = DNS_OK;
    out->why = "ok";
    out->ttl = ttl == UINT32_MAX ? 0 : ttl;
    if (qtype == DNS_T_MX)
        return classify_mx(out);
    return 0;
}

/* ---- queries ----------------------------------------------------------------- */

int dns_build_query(const char *name, uint16_t qtype, bool dnssec, uint8_t *out, size_t size,
                    size_t *len)
{
    if (!dns_name_valid(name))
        return ERR_INVAL;
    /* header 12 + name (at most 255) + 4, + OPT 11 */
    size_t need = 12 + strlen(name) + 2 + 4 + (dnssec ? 11 : 0);
    if (need > size)
        return ERR_TOOBIG;
    size_t o = 0;
    uint16_t flags = FLAG_RD | (dnssec ? FLAG_AD : 0);
    uint8_t hdr[12] = {0, 0, (uint8_t)(flags >> 8),    (uint8_t)flags, 0, 1, 0, 0, 0,
                       0, 0, (uint8_t)(dnssec ? 1 : 0)};
    memcpy(out, hdr, sizeof(hdr));
    o = sizeof(hdr);
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (l == 0)
            break; /* the final dot */
        out[o++] = (uint8_t)l;
        memcpy(out + o, p, l);
        o += l;
        p += l + (dot ? 1 : 0);
    }
    out[o++] = 0;
    out[o++] = (uint8_t)(qtype >> 8);
    out[o++] = (uint8_t)qtype;
    out[o++] = 0;
    out[o++] = 1; /* IN */
    if (dnssec) {
        const uint8_t opt[11] = {0, /* root owner */
                                 0,
                                 T_OPT,
                                 (uint8_t)(EDNS_UDP_SIZE >> 8),
                                 (uint8_t)EDNS_UDP_SIZE,
                                 0, /* extended rcode */
                                 0, /* version */
                                 (uint8_t)(EDNS_DO >> 8),
                                 (uint8_t)EDNS_DO,
                                 0,
                                 0 /* rdlen */};
        memcpy(out + o, opt, sizeof(opt));
        o += sizeof(opt);
    }
    *len = o;
    return 0;
}

int dns_cidr_parse(const char *s, int *family, uint8_t addr[16], unsigned *bits)
{
    char host[64];
    const char *slash = strrchr(s, '/');
    size_t hl = slash ? (size_t)(slash - s) : strlen(s);
    if (hl == 0 || hl >= sizeof(host))
        return ERR_INVAL;
    memcpy(host, s, hl);
    host[hl] = '\0';
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']')
            return ERR_INVAL;
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    memset(addr, 0, 16);
    unsigned max;
    if (inet_pton(AF_INET, host, addr) == 1) {
        *family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, host, addr) == 1) {
        *family = AF_INET6;
        max = 128;
    } else {
        return ERR_INVAL;
    }
    *bits = max;
    if (slash) {
        uint64_t b;
        if (str_to_u64(slash + 1, &b) || b > max)
            return ERR_INVAL;
        *bits = (unsigned)b;
    }
    return 0;
}

/* ---- TLSA -------------------------------------------------------------------- */

int dns_tlsa_qname(const char *host, uint16_t port, char *out, size_t size)
{
    size_t hl = strlen(host);
    if (hl > 0 && host[hl - 1] == '.')
        hl--;
    int n = snprintf(out, size, "_%u._tcp.%.*s", (unsigned)port, (int)hl, host);
    if (n < 0 || (size_t)n >= size || n > 253)
        return ERR_TOOBIG;
    return 0;
}

enum dns_tlsa_status dns_tlsa_classify(const struct dns_result *r)
{
    switch (r->status) {
    case DNS_OK:
        /* RFC 7672 2.2: only a validated TLSA RRset counts; records from an
         * unsigned zone (or read without DNSSEC) are as if absent. */
        return r->secure && r->n_tlsa ? DNS_TLSA_SECURE : DNS_TLSA_INSECURE;
    case DNS_NODATA:
    case DNS_IMPLICIT_MX:
    case DNS_NULL_MX:
        return DNS_TLSA_NODATA;
    case DNS_NXDOMAIN:
        return DNS_TLSA_NXDOMAIN;
    case DNS_TEMPFAIL:
        /* RFC 4035 5.5: a validating resolver answers SERVFAIL for bogus
         * data. Without trusted DNSSEC a SERVFAIL is just a failure. */
        return r->dnssec && r->servfail ? DNS_TLSA_BOGUS : DNS_TLSA_FAIL;
    case DNS_INVALID:
        return DNS_TLSA_FAIL;
    }
    return DNS_TLSA_FAIL;
}

const char *dns_tlsa_status_name(enum dns_tlsa_status s)
{
    switch (s) {
    case DNS_TLSA_SECURE:
        return "secure";
    case DNS_TLSA_INSECURE:
        return "insecure";
    case DNS_TLSA_NODATA:
        return "nodata";
    case DNS_TLSA_NXDOMAIN:
        return "nxdomain";
    case DNS_TLSA_BOGUS:
        return "bogus";
    case DNS_TLSA_FAIL:
        return "fail";
    }
    return "fail";
}
