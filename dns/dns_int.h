/*
 * dns_int.h - private to the dns module (and its white-box unit tests): the
 * answer cache and the helpers that dns.c and wire.c share.
 *
 * Invariants: the cache never holds more than its max entries nor an answer
 * larger than DNS_CACHE_MAX_ANSWER; an expired entry is never returned.
 */
#ifndef CONVOY_DNS_INT_H
#define CONVOY_DNS_INT_H

#include <stddef.h>
#include <stdint.h>

#include "dns.h"

/* ---- cache.c: an LRU of answer messages keyed by (name, type) ---------- */

struct dns_cache;

/* A cache holding at most max entries (max 0 is allowed: it holds nothing). */
struct dns_cache *dns_cache_new(size_t max);
void dns_cache_free(struct dns_cache *c);
/* Keep msg for ttl seconds from now_ms (monotonic). Replaces an entry for
 * the same key; evicts the least recently used entry when full. Names are
 * compared case-insensitively. ttl 0 or an oversized msg: nothing kept,
 * returns ERR_TOOBIG for the latter. */
int dns_cache_put(struct dns_cache *c, const char *name, uint16_t qtype, const uint8_t *msg,
                  size_t len, uint32_t ttl, int64_t now_ms);
/* Find a live entry. On a hit returns true with the message (valid until the
 * next call on the cache) and the seconds it has left (at least 1). Expired
 * entries are dropped. */
bool dns_cache_get(struct dns_cache *c, const char *name, uint16_t qtype, int64_t now_ms,
                   const uint8_t **msg, size_t *len, uint32_t *ttl_left);
size_t dns_cache_count(const struct dns_cache *c);
void dns_cache_clear(struct dns_cache *c);

/* ---- wire.c helpers ------------------------------------------------------ */

/* Sort MX entries by preference; entries of equal preference end in an
 * order decided by rnd (a source of random 32-bit values). */
void dns_mx_sort(struct dns_mx *mx, size_t n, uint32_t (*rnd)(void *), void *rnd_arg);
/* Is s an IPv4 or IPv6 address literal (optionally in brackets)? */
bool dns_is_ip_literal(const char *s);
/* ASCII case-insensitive equality of two names, ignoring one final dot. */
bool dns_name_eq(const char *a, const char *b);
/* Build the query c-ares sends (RFC 1035 4.1): id 0 (c-ares sets its own),
 * RD; with dnssec also AD (RFC 6840 5.7) and an EDNS0 OPT record (RFC 6891)
 * with the DO bit (RFC 3225) and a 1232-byte UDP payload size. name must
 * pass dns_name_valid(). 0 and *len, or ERR_TOOBIG / ERR_INVAL. */
int dns_build_query(const char *name, uint16_t qtype, bool dnssec, uint8_t *out, size_t size,
                    size_t *len);
/* Set r->status/err/why for a failure without an answer to parse. */
void dns_result_fail(struct dns_result *r, enum dns_status status, int err, const char *why);

#endif
