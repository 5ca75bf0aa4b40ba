/*
 * dnsmsg.c - the DNS message builder of the dns tests (see dnsmsg.h).
 */
#include "dnsmsg.h"

#include <arpa/inet.h>
#include <string.h>

void mb_init(struct mb *m)
{
    m->n = 0;
    m->ok = true;
}

void mb_bytes(struct mb *m, const void *p, size_t n)
{
    if (n > sizeof(m->b) - m->n) {
        m->ok = false;
        return;
    }
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

void mb_u8(struct mb *m, unsigned v)
{
    uint8_t b = (uint8_t)v;
    mb_bytes(m, &b, 1);
}

void mb_u16(struct mb *m, unsigned v)
{
    uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    mb_bytes(m, b, 2);
}

void mb_u32(struct mb *m, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    mb_bytes(m, b, 4);
}

void mb_name(struct mb *m, const char *dotted)
{
    const char *p = dotted;
    while (*p && strcmp(p, ".") != 0) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        mb_u8(m, (unsigned)l);
        mb_bytes(m, p, l);
        p += l;
        if (*p == '.')
            p++;
    }
    mb_u8(m, 0);
}

void mb_ptr(struct mb *m, unsigned off)
{
    mb_u16(m, 0xC000u | off);
}

void mb_header(struct mb *m, unsigned id, unsigned flags, unsigned rcode, unsigned qd, unsigned an,
               unsigned ns, unsigned ar)
{
    mb_u16(m, id);
    mb_u16(m, flags | (rcode & 0xF));
    mb_u16(m, qd);
    mb_u16(m, an);
    mb_u16(m, ns);
    mb_u16(m, ar);
}

void mb_question(struct mb *m, const char *name, unsigned type)
{
    mb_name(m, name);
    mb_u16(m, type);
    mb_u16(m, 1);
}

size_t mb_rr(struct mb *m, const char *name, unsigned type, uint32_t ttl)
{
    mb_name(m, name);
    mb_u16(m, type);
    mb_u16(m, 1);
    mb_u32(m, ttl);
    size_t pos = m->n;
    mb_u16(m, 0);
    return pos;
}

void mb_rr_end(struct mb *m, size_t pos)
{
    size_t len = m->n - pos - 2;
    if (pos + 2 > m->n)
        return;
    m->b[pos] = (uint8_t)(len >> 8);
    m->b[pos + 1] = (uint8_t)len;
}

void mb_mx(struct mb *m, const char *owner, uint32_t ttl, unsigned pref, const char *host)
{
    size_t p = mb_rr(m, owner, 15, ttl);
    mb_u16(m, pref);
    mb_name(m, host);
    mb_rr_end(m, p);
}

void mb_a(struct mb *m, const char *owner, uint32_t ttl, const char *ip)
{
    uint8_t a[4];
    inet_pton(AF_INET, ip, a);
    size_t p = mb_rr(m, owner, 1, ttl);
    mb_bytes(m, a, 4);
    mb_rr_end(m, p);
}

void mb_aaaa(struct mb *m, const char *owner, uint32_t ttl, const char *ip)
{
    uint8_t a[16];
    inet_pton(AF_INET6, ip, a);
    size_t p = mb_rr(m, owner, 28, ttl);
    mb_bytes(m, a, 16);
    mb_rr_end(m, p);
}

void mb_cname(struct mb *m, const char *owner, uint32_t ttl, const char *target)
{
    size_t p = mb_rr(m, owner, 5, ttl);
    mb_name(m, target);
    mb_rr_end(m, p);
}

void mb_txt(struct mb *m, const char *owner, uint32_t ttl, const char *const *strs, size_t n)
{
    size_t p = mb_rr(m, owner, 16, ttl);
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(strs[i]);
        mb_u8(m, (unsigned)l);
        mb_bytes(m, strs[i], l);
    }
    mb_rr_end(m, p);
}

void mb_soa(struct mb *m, const char *owner, uint32_t ttl, uint32_t minimum)
{
    size_t p = mb_rr(m, owner, 6, ttl);
    mb_name(m, "ns.example");
    mb_name(m, "hostmaster.example");
    mb_u32(m, 1);
    mb_u32(m, 3600);
    mb_u32(m, 600);
    mb_u32(m, 86400);
    mb_u32(m, minimum);
    mb_rr_end(m, p);
}
