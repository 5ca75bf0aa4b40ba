/*
 * dnsmsg.h - a tiny DNS message builder for the dns tests: handcrafted
 * answers in wire format (RFC 1035 4.1), with or without name compression.
 *
 * Invariant: a builder never writes past its 4096-byte array; an overflow
 * sets ok = false (tests assert it).
 */
#ifndef CONVOY_TEST_DNSMSG_H
#define CONVOY_TEST_DNSMSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mb {
    uint8_t b[4096];
    size_t n;
    bool ok;
};

/* Flags for mb_header. */
#define MB_QR 0x8000
#define MB_AA 0x0400
#define MB_TC 0x0200
#define MB_RD 0x0100
#define MB_RA 0x0080

void mb_init(struct mb *m);
void mb_u8(struct mb *m, unsigned v);
void mb_u16(struct mb *m, unsigned v);
void mb_u32(struct mb *m, uint32_t v);
void mb_bytes(struct mb *m, const void *p, size_t n);
/* A name from dotted text ("" or "." is the root), uncompressed. */
void mb_name(struct mb *m, const char *dotted);
/* A compression pointer to offset off. */
void mb_ptr(struct mb *m, unsigned off);
void mb_header(struct mb *m, unsigned id, unsigned flags, unsigned rcode, unsigned qd, unsigned an,
               unsigned ns, unsigned ar);
void mb_question(struct mb *m, const char *name, unsigned type);
/* Start an RR (class IN); returns the position of RDLENGTH for mb_rr_end. */
size_t mb_rr(struct mb *m, const char *name, unsigned type, uint32_t ttl);
void mb_rr_end(struct mb *m, size_t rdlen_pos);
/* Whole records. */
void mb_mx(struct mb *m, const char *owner, uint32_t ttl, unsigned pref, const char *host);
void mb_a(struct mb *m, const char *owner, uint32_t ttl, const char *ip);
void mb_aaaa(struct mb *m, const char *owner, uint32_t ttl, const char *ip);
void mb_cname(struct mb *m, const char *owner, uint32_t ttl, const char *target);
/* TXT with n character-strings. */
void mb_txt(struct mb *m, const char *owner, uint32_t ttl, const char *const *strs, size_t n);
void mb_soa(struct mb *m, const char *owner, uint32_t ttl, uint32_t minimum);

#endif
